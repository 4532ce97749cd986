"""Policies, set through the control socket (as `hare ctl set_policy` does), seen by AMQP clients.

With HARE_TEST_URL pointing at a local RabbitMQ, the same tests set their policies with rabbitmqctl
instead (RabbitMQ applies a policy to its queues asynchronously, hence the waits); the ones about
hare's control interface, its tie-break and restarts run against hare only.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import ChannelClosedByBroker
from support import EXTERNAL, connect, drain, hare_only, wait_until

from hare.cli.ctl import request
from hare.server.control import SOCKET_NAME
from hare.testing import EmbeddedBroker

Ctl = Callable[..., dict[str, Any]]


def _ctl(data_dir: Path, made: list[tuple[str, str]]) -> Ctl:
    def call(command: str, **kw: Any) -> dict[str, Any]:
        reply = request(data_dir / SOCKET_NAME, {"command": command, **kw})
        if command == "set_policy" and reply["ok"]:
            made.append((kw.get("vhost", "/"), kw["name"]))
        return reply
    return call


def _rabbitmqctl(made: list[tuple[str, str]]) -> Ctl:
    """The same commands, through rabbitmqctl (the broker under test is a local RabbitMQ)."""
    def call(command: str, **kw: Any) -> dict[str, Any]:
        vhost = kw.get("vhost", "/")
        args = [command, "-p", vhost]
        if command == "set_policy":
            args += ["--priority", str(kw.get("priority", 0)), "--apply-to", kw.get("apply_to", "all"),
                     kw["name"], kw["pattern"], json.dumps(kw["definition"])]
        elif command == "clear_policy":
            args.append(kw["name"])
        else:
            args += ["name", "policy", "--formatter", "json"]
        done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
        if done.returncode:
            return {"ok": False, "error": done.stderr, "status": done.returncode}
        if command == "set_policy":
            made.append((vhost, kw["name"]))
        if command == "list_queues":
            return {"ok": True, "queues": json.loads(done.stdout)}
        return {"ok": True}
    return call


@pytest.fixture
def ctl(hare_broker: EmbeddedBroker | None) -> Iterator[Ctl]:
    """Send control commands to the test broker; the policies set are cleared afterwards."""
    made: list[tuple[str, str]] = []
    call = _ctl(hare_broker.data_dir, made) if hare_broker is not None else _rabbitmqctl(made)
    yield call
    for vhost, name in made:
        call("clear_policy", vhost=vhost, name=name)


@pytest.fixture
def tag() -> str:
    """A prefix for this test's queue, exchange and policy names (policies match by pattern)."""
    return f"pol-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def ch(connection: BlockingConnection, tag: str) -> Iterator[BlockingChannel]:
    channel = connection.channel()
    channel.confirm_delivery()
    yield channel
    if connection.is_open:
        c = connection.channel()
        for suffix in ("q", "dead", "a", "b"):  # the queue names the tests use
            c.queue_delete(f"{tag}-{suffix}")
        c.close()


def set_policy(ctl: Ctl, name: str, pattern: str, definition: dict[str, Any], priority: int = 0,
               apply_to: str = "all", vhost: str = "/") -> None:
    reply = ctl("set_policy", name=name, pattern=pattern, definition=definition, priority=priority,
                apply_to=apply_to, vhost=vhost)
    assert reply["ok"], reply
    _settle()


def clear_policy(ctl: Ctl, name: str) -> None:
    assert ctl("clear_policy", name=name)["ok"]
    _settle()


def _settle() -> None:
    if EXTERNAL:  # RabbitMQ tells its queues of a policy change asynchronously; hare applies it at once
        time.sleep(0.3)


def count(ch: BlockingChannel, queue: str) -> int:
    return ch.queue_declare(queue, passive=True).method.message_count


def publish(ch: BlockingChannel, queue: str, *bodies: bytes, exchange: str = "") -> None:
    for body in bodies:
        ch.basic_publish(exchange, queue, body)


def queue_policy(ctl: Ctl, queue: str) -> str:
    [row] = [q for q in ctl("list_queues")["queues"] if q["name"] == queue]
    return row["policy"]


# -- a policy changes queues that exist, at once --------------------------------------------------------


def test_max_length_policy_trims_an_existing_queue(ch: BlockingChannel, ctl: Ctl, tag: str) -> None:
    q = f"{tag}-q"
    ch.queue_declare(q)
    publish(ch, q, *(str(i).encode() for i in range(5)))
    set_policy(ctl, tag, f"^{tag}-", {"max-length": 2}, apply_to="queues")
    assert count(ch, q) == 2
    publish(ch, q, b"5")
    assert drain(ch, q) == [b"4", b"5"]  # drop-head: the oldest go
    assert queue_policy(ctl, q) == tag


def test_message_ttl_policy_applies_to_messages_published_after_it(ch: BlockingChannel, ctl: Ctl,
                                                                   tag: str) -> None:
    q = f"{tag}-q"
    ch.queue_declare(q)
    set_policy(ctl, tag, f"^{tag}-q$", {"message-ttl": 50})
    publish(ch, q, b"a", b"b")
    wait_until(lambda: count(ch, q) == 0)
    # as in RabbitMQ, a message's expiry is fixed when it is enqueued
    clear_policy(ctl, tag)
    publish(ch, q, b"kept")
    set_policy(ctl, tag, f"^{tag}-q$", {"message-ttl": 50})
    time.sleep(0.2)
    assert drain(ch, q) == [b"kept"]


def test_dead_letter_policy(ch: BlockingChannel, ctl: Ctl, tag: str) -> None:
    dlx, dead, q = f"{tag}-dlx", f"{tag}-dead", f"{tag}-q"
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dead)
    ch.queue_bind(dead, dlx)
    ch.queue_declare(q)
    publish(ch, q, b"1", b"2", b"3")
    set_policy(ctl, tag, f"^{tag}-q$", {"dead-letter-exchange": dlx, "max-length": 1}, apply_to="queues")
    wait_until(lambda: count(ch, dead) == 2)
    method, props, body = ch.basic_get(dead, auto_ack=True)
    assert body == b"1" and props.headers["x-death"][0]["reason"] == "maxlen"
    # rejected messages follow the policy's dead-letter exchange too
    method, _props, body = ch.basic_get(q)
    ch.basic_reject(method.delivery_tag, requeue=False)
    wait_until(lambda: count(ch, dead) == 2)
    ch.exchange_delete(dlx)


def test_expires_policy_deletes_an_unused_queue(ch: BlockingChannel, ctl: Ctl, tag: str) -> None:
    q = f"{tag}-q"
    ch.queue_declare(q)
    set_policy(ctl, tag, f"^{tag}-q$", {"expires": 200})

    def gone() -> bool:
        return q not in [row["name"] for row in ctl("list_queues")["queues"]]

    wait_until(gone)


def test_new_queues_get_the_policy(ch: BlockingChannel, ctl: Ctl, tag: str) -> None:
    set_policy(ctl, tag, f"^{tag}-", {"max-length": 1})
    q = f"{tag}-q"
    ch.queue_declare(q)
    publish(ch, q, b"a", b"b")
    assert drain(ch, q) == [b"b"]
    ch.queue_declare(q)  # redeclaring with the same arguments: still equivalent
    assert queue_policy(ctl, q) == tag


def test_server_named_and_exclusive_queues_get_policies_too(ch: BlockingChannel, ctl: Ctl, tag: str) -> None:
    q = ch.queue_declare("", exclusive=True).method.queue
    set_policy(ctl, tag, f"^{q}$", {"max-length": 1})
    publish(ch, q, b"a", b"b")
    assert drain(ch, q) == [b"b"]


# -- arguments and policy --------------------------------------------------------------------------


def test_the_lower_limit_of_argument_and_policy_wins(ch: BlockingChannel, ctl: Ctl, tag: str) -> None:
    q = f"{tag}-q"
    ch.queue_declare(q, arguments={"x-max-length": 3})
    set_policy(ctl, tag, f"^{tag}-q$", {"max-length": 10})
    publish(ch, q, *(str(i).encode() for i in range(5)))
    assert count(ch, q) == 3
    set_policy(ctl, tag, f"^{tag}-q$", {"max-length": 1})
    assert count(ch, q) == 1
    clear_policy(ctl, tag)
    publish(ch, q, b"x", b"y")
    assert count(ch, q) == 3  # back to the argument


def test_the_argument_wins_for_dead_letter_exchange(ch: BlockingChannel, ctl: Ctl, tag: str) -> None:
    by_arg, by_policy = f"{tag}-a", f"{tag}-b"
    for ex in (by_arg, by_policy):
        ch.exchange_declare(ex, "fanout")
        ch.queue_declare(ex)
        ch.queue_bind(ex, ex)
    q = f"{tag}-q"
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": by_arg})
    set_policy(ctl, tag, f"^{tag}-q$", {"dead-letter-exchange": by_policy, "max-length": 0})
    publish(ch, q, b"m")
    wait_until(lambda: count(ch, by_arg) == 1)
    assert count(ch, by_policy) == 0
    for ex in (by_arg, by_policy):
        ch.exchange_delete(ex)


def test_reject_publish_overflow_keeps_what_is_there(ch: BlockingChannel, ctl: Ctl, tag: str) -> None:
    q = f"{tag}-q"
    ch.queue_declare(q, arguments={"x-overflow": "reject-publish"})
    publish(ch, q, *(str(i).encode() for i in range(5)))
    set_policy(ctl, tag, f"^{tag}-q$", {"max-length": 2})
    assert count(ch, q) == 5  # RabbitMQ does not drop under reject-publish...
    with pytest.raises(pika.exceptions.NackError):
        publish(ch, q, b"refused")  # ...but refuses more


def test_policy_overflow_applies_after_its_max_length(ch: BlockingChannel, ctl: Ctl, tag: str) -> None:
    # RabbitMQ sets a new max-length before a new overflow mode: this trims, then rejects
    q = f"{tag}-q"
    ch.queue_declare(q)
    publish(ch, q, *(str(i).encode() for i in range(5)))
    set_policy(ctl, tag, f"^{tag}-q$", {"max-length": 2, "overflow": "reject-publish"})
    assert count(ch, q) == 2
    with pytest.raises(pika.exceptions.NackError):
        publish(ch, q, b"refused")


# -- which policy applies ---------------------------------------------------------------------------


def test_the_highest_priority_applies(ch: BlockingChannel, ctl: Ctl, tag: str) -> None:
    q = f"{tag}-q"
    ch.queue_declare(q)
    set_policy(ctl, f"{tag}-low", f"^{tag}-", {"max-length": 4}, priority=1)
    set_policy(ctl, f"{tag}-high", f"^{tag}-q$", {"max-length": 2}, priority=5)
    set_policy(ctl, f"{tag}-other", f"^{tag}-nomatch", {"max-length": 0}, priority=9)
    assert queue_policy(ctl, q) == f"{tag}-high"
    publish(ch, q, *(str(i).encode() for i in range(5)))
    assert count(ch, q) == 2
    clear_policy(ctl, f"{tag}-high")  # the next one takes over
    assert queue_policy(ctl, q) == f"{tag}-low"
    publish(ch, q, *(str(i).encode() for i in range(5)))
    assert count(ch, q) == 4


@hare_only  # RabbitMQ breaks ties in the order of its internal table (unspecified)
def test_a_priority_tie_goes_to_the_first_name(ch: BlockingChannel, ctl: Ctl, tag: str) -> None:
    q = f"{tag}-q"
    ch.queue_declare(q)
    set_policy(ctl, f"{tag}-b", f"^{tag}-q$", {"max-length": 3}, priority=1)
    set_policy(ctl, f"{tag}-c", f"^{tag}-q$", {"max-length": 3}, priority=1)
    assert queue_policy(ctl, q) == f"{tag}-b"
    set_policy(ctl, f"{tag}-a", f"^{tag}-q$", {"max-length": 3}, priority=1)
    assert queue_policy(ctl, q) == f"{tag}-a"


def test_apply_to(ch: BlockingChannel, ctl: Ctl, tag: str) -> None:
    q, x, ae = f"{tag}-q", f"{tag}-x", f"{tag}-ae"
    ch.queue_declare(q)
    ch.exchange_declare(x, "direct")
    ch.exchange_declare(ae, "fanout")
    ch.queue_bind(q, ae)
    set_policy(ctl, tag, f"^{tag}-", {"max-length": 0, "alternate-exchange": ae}, apply_to="exchanges")
    publish(ch, q, b"kept")  # the queue is not limited by an exchanges-only policy
    assert count(ch, q) == 1
    publish(ch, "unbound", b"via-ae", exchange=x)
    assert count(ch, q) == 2
    set_policy(ctl, tag, f"^{tag}-", {"max-length": 0, "alternate-exchange": ae}, apply_to="queues")
    assert count(ch, q) == 0
    ch.basic_publish(x, "unbound", b"lost")  # no alternate exchange any more
    assert count(ch, q) == 0
    set_policy(ctl, tag, f"^{tag}-", {"max-length": 5, "alternate-exchange": ae}, apply_to="all")
    publish(ch, "unbound", b"via-ae", exchange=x)
    assert count(ch, q) == 1
    for ex in (x, ae):
        ch.exchange_delete(ex)


def test_alternate_exchange_policy(ch: BlockingChannel, ctl: Ctl, tag: str) -> None:
    x, ae, own_ae = f"{tag}-x", f"{tag}-ae", f"{tag}-own"
    ae_q, own_q = f"{tag}-a", f"{tag}-b"
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(own_ae, "fanout")
    for queue, ex in ((ae_q, ae), (own_q, own_ae)):
        ch.queue_declare(queue)
        ch.queue_bind(queue, ex)
    ch.exchange_declare(x, "direct")
    set_policy(ctl, tag, f"^{tag}-x", {"alternate-exchange": ae}, apply_to="exchanges")
    ch.basic_publish(x, "nowhere", b"m", mandatory=True)
    assert drain(ch, ae_q) == [b"m"]
    # the exchange's own argument wins over the policy's
    x2 = f"{tag}-x2"
    ch.exchange_declare(x2, "direct", arguments={"alternate-exchange": own_ae})
    ch.basic_publish(x2, "nowhere", b"m2")
    assert (drain(ch, own_q), drain(ch, ae_q)) == ([b"m2"], [])
    clear_policy(ctl, tag)
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish(x, "nowhere", b"back", mandatory=True)  # returned: no alternate any more
    assert drain(ch, ae_q) == []
    for ex in (x, x2, ae, own_ae):
        ch.exchange_delete(ex)


# -- errors ---------------------------------------------------------------------------------------


@hare_only
def test_invalid_policies_are_refused_with_rabbitmq_texts(ctl: Ctl, tag: str) -> None:
    reply = ctl("set_policy", name=tag, pattern="^x", definition={"max-length": "x"})
    assert reply == {"ok": False, "status": 69,
                     "error": 'Error:\nValidation failed\n\n<<"x">> is not a valid maximum length\n'}
    reply = ctl("set_policy", name=tag, pattern="^x", definition={"foo": 1})
    assert '[{<<"foo">>,1}] are not recognised policy settings' in reply["error"]
    assert ctl("clear_policy", name=tag) == {"ok": False, "status": 69,
                                             "error": "Error:\nParameter does not exist"}
    assert ctl("list_policies", vhost="nosuch") == {"ok": False, "status": 65,
                                                     "error": "Virtual host 'nosuch' does not exist"}
    assert not [p for p in ctl("list_policies")["policies"] if p["name"] == tag]


# -- durability -----------------------------------------------------------------------------------


@hare_only
def test_policies_survive_a_restart(hare_broker_factory: Callable[..., EmbeddedBroker],
                                    tmp_path: Path) -> None:
    data = tmp_path / "d"
    broker = hare_broker_factory(data_dir=data)
    ctl = _ctl(data, [])
    conn = connect(broker.url)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("dq", durable=True)
    ch.exchange_declare("dx", "direct", durable=True)
    ch.exchange_declare("dae", "fanout", durable=True)
    ch.queue_declare("aeq", durable=True)
    ch.queue_bind("aeq", "dae")
    set_policy(ctl, "limit", "^dq$", {"max-length": 2}, priority=3, apply_to="queues")
    set_policy(ctl, "ae", "^dx$", {"alternate-exchange": "dae"}, apply_to="exchanges")
    set_policy(ctl, "gone", "^nothing$", {"max-length": 2})
    assert ctl("clear_policy", name="gone")["ok"]
    conn.close()
    broker.stop()

    broker = hare_broker_factory(data_dir=data)
    listed = ctl("list_policies")["policies"]
    assert listed == [
        {"vhost": "/", "name": "ae", "pattern": "^dx$", "apply-to": "exchanges",
         "definition": {"alternate-exchange": "dae"}, "priority": 0},
        {"vhost": "/", "name": "limit", "pattern": "^dq$", "apply-to": "queues",
         "definition": {"max-length": 2}, "priority": 3}]
    conn = connect(broker.url)
    ch = conn.channel()
    ch.confirm_delivery()
    publish(ch, "dq", b"1", b"2", b"3")
    assert drain(ch, "dq") == [b"2", b"3"]
    ch.basic_publish("dx", "unbound", b"to-ae")
    assert drain(ch, "aeq") == [b"to-ae"]
    conn.close()


def test_passive_declare_of_a_queue_with_a_policy_keeps_working(ch: BlockingChannel, ctl: Ctl,
                                                                 tag: str) -> None:
    q = f"{tag}-q"
    ch.queue_declare(q, arguments={"x-max-length": 5})
    set_policy(ctl, tag, f"^{tag}-q$", {"max-length": 1, "message-ttl": 1000})
    # equivalence is checked against the declared arguments only, as RabbitMQ does
    ch.queue_declare(q, arguments={"x-max-length": 5})
    with pytest.raises(ChannelClosedByBroker) as info:
        ch.queue_declare(q, arguments={"x-max-length": 1})
    assert info.value.reply_code == 406
