"""The x-delayed-message exchange type, as RabbitMQ's delayed message exchange plugin has it, with
hare's own guarantees on top (delayed messages on disk: restarts, confirms after sync, bounded
memory). The tests that do not restart or look inside hare also run against RabbitMQ with the
plugin (HARE_TEST_URL); they are skipped where the broker lacks the type."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingConnection
from pika.exceptions import ConnectionClosedByBroker
from support import EXTERNAL, Inbox, closed_with, connect, hare_only, unique_name

from hare.store import message_store
from hare.testing import EmbeddedBroker

DELAYED = "x-delayed-message"


def props(delay: Any = None, persistent: bool = False, **headers: Any) -> pika.BasicProperties:
    if delay is not None:
        headers["x-delay"] = delay
    return pika.BasicProperties(headers=headers or None, delivery_mode=2 if persistent else None)


class Env:
    """A channel with the exchanges and queues a test declares, deleted afterwards."""

    def __init__(self, conn: BlockingConnection) -> None:
        self.conn = conn
        self.ch = conn.channel()
        self.exchanges: list[str] = []
        self.queues: list[str] = []

    def exchange(self, routing_type: str = "direct", **kwargs: Any) -> str:
        name = unique_name("delayed")
        args = {"x-delayed-type": routing_type, **kwargs.pop("arguments", {})}
        self.ch.exchange_declare(name, DELAYED, arguments=args, **kwargs)
        self.exchanges.append(name)
        return name

    def queue(self, exchange: str | None = None, routing_key: str = "", **bind_args: Any) -> str:
        name = self.ch.queue_declare(unique_name("q")).method.queue
        self.queues.append(name)
        if exchange is not None:
            self.ch.queue_bind(name, exchange, routing_key, arguments=bind_args or None)
        return name

    def consume(self, queue: str) -> Inbox:
        inbox = Inbox(self.conn)
        self.ch.basic_consume(queue, inbox, auto_ack=True)
        return inbox


@pytest.fixture
def env(hare_url: str) -> Iterator[Env]:
    conn = connect(hare_url)
    if EXTERNAL:  # RabbitMQ without the plugin: nothing to test
        try:
            probe = conn.channel()
            probe.exchange_declare(unique_name("probe"), DELAYED, auto_delete=True,
                                   arguments={"x-delayed-type": "direct"})
            probe.close()
        except ConnectionClosedByBroker:
            pytest.skip("the broker has no x-delayed-message exchange type")
    e = Env(conn)
    yield e
    if conn.is_open:
        ch = conn.channel()
        for q in e.queues:
            ch.queue_delete(q)
        for x in e.exchanges:
            ch.exchange_delete(x)
        conn.close()


# -- declaring ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arguments", [{}, {"x-delayed-type": 5}])
def test_declare_needs_a_delayed_type(env: Env, arguments: dict[str, Any]) -> None:
    err = closed_with(env.ch, env.ch.exchange_declare, unique_name("delayed"), DELAYED,
                      arguments=arguments)
    assert err.reply_code == 406
    # the plugin's text, typos included
    assert err.reply_text == ("PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must bean "
                              "existing exchnage type")


def test_declare_with_an_unknown_delayed_type_is_a_connection_error(env: Env) -> None:
    with pytest.raises(ConnectionClosedByBroker) as info:
        env.ch.exchange_declare(unique_name("delayed"), DELAYED, arguments={"x-delayed-type": "nope"})
    assert info.value.reply_code == 503
    assert info.value.reply_text == "COMMAND_INVALID - unknown exchange type 'nope'"


def test_redeclare_and_passive_declare(env: Env) -> None:
    name = env.exchange("topic", durable=False)
    env.ch.exchange_declare(name, DELAYED, arguments={"x-delayed-type": "topic"})
    env.ch.exchange_declare(name, passive=True)
    err = closed_with(env.ch, env.ch.exchange_declare, name, "topic")
    assert err.reply_code == 406
    assert "inequivalent arg 'type'" in err.reply_text and "'x-delayed-message'" in err.reply_text


# -- delaying -------------------------------------------------------------------------------------


def test_messages_come_out_by_due_time(env: Env) -> None:
    x = env.exchange()
    inbox = env.consume(env.queue(x, "k"))
    start = time.monotonic()
    for delay, body in ((900, b"900"), (600, b"600"), (300, b"300"), (None, b"now")):
        env.ch.basic_publish(x, "k", body, props(delay))
    got = inbox.wait_for(4, timeout=10)
    assert [d.body for d in got] == [b"now", b"300", b"600", b"900"]
    assert time.monotonic() - start >= 0.85


def test_message_is_held_for_its_delay(env: Env) -> None:
    x = env.exchange()
    q = env.queue(x, "k")
    inbox = env.consume(q)
    start = time.monotonic()
    env.ch.basic_publish(x, "k", b"m", props(700))
    assert inbox.quiet(0.4) == []
    inbox.wait_for(1, timeout=5)
    assert time.monotonic() - start >= 0.68


def test_released_message_has_x_delay_negated_and_its_other_headers(env: Env) -> None:
    x = env.exchange()
    inbox = env.consume(env.queue(x, "k"))
    p = pika.BasicProperties(headers={"zz": "last", "x-delay": 200, "aa": 7}, content_type="text/plain",
                             correlation_id="c-1", priority=3)
    env.ch.basic_publish(x, "k", b"body", p)
    d = inbox.wait_for(1)[0]
    assert d.body == b"body"
    assert d.properties.headers == {"aa": 7, "x-delay": -200, "zz": "last"}
    assert list(d.properties.headers) == ["aa", "x-delay", "zz"]  # sorted by key, as the plugin does
    assert (d.properties.content_type, d.properties.correlation_id, d.properties.priority) == (
        "text/plain", "c-1", 3)
    assert d.method.exchange == x and d.method.routing_key == "k"


def test_string_x_delay_is_converted(env: Env) -> None:
    x = env.exchange()
    inbox = env.consume(env.queue(x, "k"))
    start = time.monotonic()
    env.ch.basic_publish(x, "k", b"s", props("400"))
    d = inbox.wait_for(1)[0]
    assert time.monotonic() - start >= 0.38
    assert d.properties.headers == {"x-delay": -400}


@pytest.mark.parametrize("delay", [None, 0, -500, True, b"300"])
def test_no_positive_delay_routes_at_once_unchanged(env: Env, delay: Any) -> None:
    x = env.exchange()
    inbox = env.consume(env.queue(x, "k"))
    p = props(delay, other="x")
    env.ch.basic_publish(x, "k", b"now", p)
    d = inbox.wait_for(1, timeout=0.5)[0]
    assert d.properties.headers == p.headers


def test_too_long_a_delay_routes_at_once(env: Env) -> None:
    """The plugin delays only up to 2^32 - 1 ms (Erlang's longest timer)."""
    x = env.exchange()
    inbox = env.consume(env.queue(x, "k"))
    env.ch.basic_publish(x, "k", b"far", props(2**32))
    assert inbox.wait_for(1, timeout=0.5)[0].properties.headers == {"x-delay": 2**32}


@pytest.mark.parametrize("routing_type", ["direct", "fanout", "topic", "headers"])
def test_each_delayed_type_routes_by_its_rules(env: Env, routing_type: str) -> None:
    x = env.exchange(routing_type)
    if routing_type == "headers":
        hit = env.queue(x, "", **{"x-match": "all", "kind": "a"})
        miss = env.queue(x, "", **{"x-match": "all", "kind": "b"})
        key = "any"
    elif routing_type == "topic":
        hit = env.queue(x, "a.*.c")
        miss = env.queue(x, "a.#.d")
        key = "a.b.c"
    elif routing_type == "fanout":
        hit = env.queue(x, "whatever")
        miss = env.queue()
        key = "k"
    else:
        hit = env.queue(x, "k")
        miss = env.queue(x, "other")
        key = "k"
    hits, misses = env.consume(hit), env.consume(miss)
    start = time.monotonic()
    env.ch.basic_publish(x, key, b"late", props(300, kind="a"))
    env.ch.basic_publish(x, key, b"early", props(kind="a"))
    got = hits.wait_for(2)
    assert [d.body for d in got] == [b"early", b"late"]
    assert time.monotonic() - start >= 0.28
    assert misses.quiet(0.1) == []


def test_exchange_to_exchange_binding_after_the_delay(env: Env) -> None:
    """A delayed exchange can route to another exchange; the negated x-delay is not delayed again
    by a second delayed exchange on the way."""
    first = env.exchange("fanout")
    second = env.exchange("direct")
    env.ch.exchange_bind(second, first, "")
    inbox = env.consume(env.queue(second, "k"))
    start = time.monotonic()
    env.ch.basic_publish(first, "k", b"m", props(500))
    d = inbox.wait_for(1)[0]
    elapsed = time.monotonic() - start
    assert 0.48 <= elapsed < 0.95  # delayed once, not twice
    assert d.properties.headers == {"x-delay": -500}


def test_mandatory_delayed_message_is_returned_and_still_delivered(env: Env) -> None:
    """The plugin does not support mandatory: a delayed message reaches no queue when published."""
    x = env.exchange()
    inbox = env.consume(env.queue(x, "k"))
    returned: list[tuple[Any, bytes]] = []
    env.ch.add_on_return_callback(lambda _ch, method, _p, body: returned.append((method, body)))
    env.ch.basic_publish(x, "k", b"m", props(200), mandatory=True)
    d = inbox.wait_for(1)[0]
    assert d.body == b"m"
    assert [(m.reply_code, m.reply_text, b) for m, b in returned] == [(312, "NO_ROUTE", b"m")]


def test_alternate_exchange_gets_a_delayed_message_at_once(env: Env) -> None:
    """As with the plugin (its issue #36): the delayed message reaches no queue at publish time, so
    the alternate exchange takes it then, and the bound queue gets it after the delay."""
    ae = unique_name("ae")
    env.ch.exchange_declare(ae, "fanout")
    env.exchanges.append(ae)
    x = env.exchange(arguments={"alternate-exchange": ae})
    bound, alt = env.consume(env.queue(x, "k")), env.consume(env.queue(ae))
    env.ch.basic_publish(x, "k", b"m", props(300))
    assert [d.body for d in alt.wait_for(1, timeout=0.25)] == [b"m"]
    assert [d.body for d in bound.wait_for(1)] == [b"m"]


def test_confirmed_in_confirm_mode(env: Env) -> None:
    x = env.exchange()
    inbox = env.consume(env.queue(x, "k"))
    pub = env.conn.channel()
    pub.confirm_delivery()
    pub.basic_publish(x, "k", b"p", props(200, persistent=True))  # raises unless acked
    pub.basic_publish(x, "k", b"t", props(100))
    assert [d.body for d in inbox.wait_for(2)] == [b"t", b"p"]


def test_deleting_the_exchange_drops_its_delayed_messages(env: Env) -> None:
    x = env.exchange("fanout")
    q = env.queue(x)
    inbox = env.consume(q)
    env.ch.basic_publish(x, "", b"gone", props(300))
    env.ch.exchange_delete(x)
    env.exchanges.remove(x)
    assert inbox.quiet(0.5) == []


# -- hare only: disk, restarts, confirms, memory ----------------------------------------------------


def exchange_of(broker: EmbeddedBroker, name: str) -> Any:
    return broker.broker.vhosts["/"].exchanges[name]


@hare_only
def test_persistent_delayed_messages_survive_a_restart(hare_broker_factory: Callable[..., EmbeddedBroker],
                                                       tmp_path: Path) -> None:
    data = tmp_path / "data"
    broker = hare_broker_factory(data_dir=data)
    conn = connect(broker.url)
    ch = conn.channel()
    ch.exchange_declare("dx", DELAYED, durable=True, arguments={"x-delayed-type": "direct"})
    ch.exchange_declare("tx", DELAYED, durable=False, arguments={"x-delayed-type": "direct"})
    ch.queue_declare("dq", durable=True)
    ch.queue_bind("dq", "dx", "k")
    ch.confirm_delivery()
    ch.basic_publish("dx", "k", b"persistent-soon", props(1500, persistent=True))
    ch.basic_publish("dx", "k", b"persistent-later", props(150_000, persistent=True))  # a coarse bucket
    ch.basic_publish("dx", "k", b"transient", props(1500))
    ch.basic_publish("tx", "k", b"non-durable exchange", props(1500, persistent=True))
    assert broker.call(lambda: exchange_of(broker, "dx").delayed_count) == 3
    conn.close()
    broker.stop()

    broker = hare_broker_factory(data_dir=data)
    assert broker.call(lambda: exchange_of(broker, "dx").delayed_count) == 2
    conn = connect(broker.url)
    ch = conn.channel()
    assert "tx" not in broker.broker.vhosts["/"].exchanges
    inbox = Inbox(conn)
    ch.basic_consume("dq", inbox, auto_ack=True)
    got = inbox.wait_for(1, timeout=5)
    assert [d.body for d in got] == [b"persistent-soon"]
    assert got[0].properties.headers == {"x-delay": -1500}
    assert inbox.quiet(0.3) == got
    assert broker.call(lambda: exchange_of(broker, "dx").delayed_count) == 1
    conn.close()
    broker.stop()

    # released messages are not released again after another restart; the later one still waits
    broker = hare_broker_factory(data_dir=data)
    assert broker.call(lambda: exchange_of(broker, "dx").delayed_count) == 1
    transient = data / "transient" / "delayed"
    assert not transient.exists() or not any(transient.iterdir())


@hare_only
def test_deleted_durable_exchange_leaves_nothing_on_disk(hare_broker_factory: Callable[..., EmbeddedBroker],
                                                         tmp_path: Path) -> None:
    data = tmp_path / "data"
    broker = hare_broker_factory(data_dir=data)
    conn = connect(broker.url)
    ch = conn.channel()
    ch.exchange_declare("dx", DELAYED, durable=True, arguments={"x-delayed-type": "fanout"})
    ch.confirm_delivery()
    ch.basic_publish("dx", "", b"m", props(60_000, persistent=True))
    assert any((data / "delayed").iterdir())
    ch.exchange_delete("dx")
    conn.close()
    assert not any((data / "delayed").iterdir())
    broker.stop()
    broker = hare_broker_factory(data_dir=data)
    assert "dx" not in broker.broker.vhosts["/"].exchanges


@hare_only
def test_confirm_of_a_persistent_delayed_message_waits_for_the_sync(
        hare_broker_factory: Callable[..., EmbeddedBroker], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a kill -9: hold every fdatasync of the broker's store; a persistent delayed message
    of a durable exchange is not confirmed until the sync has run, a transient one at once."""
    gate = threading.Event()
    synced: list[int] = []
    real_run = message_store.SyncJob.run

    def held_run(job: message_store.SyncJob) -> None:
        gate.wait(10)
        synced.append(len(job.fds))
        real_run(job)

    monkeypatch.setattr(message_store.SyncJob, "run", held_run)
    broker = hare_broker_factory(data_dir=tmp_path / "data")
    conn = connect(broker.url)
    ch = conn.channel()
    ch.exchange_declare("dx", DELAYED, durable=True, arguments={"x-delayed-type": "direct"})
    ch.confirm_delivery()
    ch.basic_publish("dx", "k", b"transient", props(60_000))  # confirmed with no sync
    assert synced == []

    done = threading.Event()

    def publish() -> None:
        c = connect(broker.url)
        pch = c.channel()
        pch.confirm_delivery()
        pch.basic_publish("dx", "k", b"persistent", props(60_000, persistent=True))
        done.set()
        c.close()

    t = threading.Thread(target=publish)
    t.start()
    assert not done.wait(0.5), "confirmed before the store synced"
    gate.set()
    assert done.wait(5)
    t.join()
    assert synced and synced[-1] >= 1  # the sync that let the confirm go covered the bucket's file
    segments = list((tmp_path / "data" / "delayed").rglob("*.seg"))
    assert any(b"persistent" in s.read_bytes() for s in segments)
    conn.close()


@hare_only
def test_a_large_delayed_backlog_keeps_little_in_memory(
        hare_broker_factory: Callable[..., EmbeddedBroker], tmp_path: Path) -> None:
    """100k delayed messages due over the next hour: on disk, with memory holding a few entries per
    time bucket, not per message."""
    n = 100_000
    broker = hare_broker_factory(data_dir=tmp_path / "data")
    conn = connect(broker.url)
    ch = conn.channel()
    ch.exchange_declare("big", DELAYED, durable=True, arguments={"x-delayed-type": "direct"})
    ch.queue_declare("bigq", durable=True)
    ch.queue_bind("bigq", "big", "k")
    body = b"x" * 100
    for i in range(n):
        ch.basic_publish("big", "k", body, props(60_000 + (i * 37) % 3_540_000, persistent=True))
    ch.confirm_delivery()  # a round trip: every publish before it has been routed
    ex = exchange_of(broker, "big")
    count, entries, heap = broker.call(lambda: (ex.delayed_count, ex.delayed.memory_entries(),
                                                len(ex.delayed.heap)))
    assert count == n
    assert heap == 0
    assert entries < 200  # the buckets: a few numbers each
    assert ch.queue_declare("bigq", passive=True).method.message_count == 0
    conn.close()


def test_many_messages_due_together_all_arrive(env: Env) -> None:
    x = env.exchange()
    q = env.queue(x, "k")
    inbox = env.consume(q)
    n = 3000
    for i in range(n):  # the later half of the messages published first
        env.ch.basic_publish(x, "k", str(i).encode(), props(1300 if i % 2 else 300))
    got = inbox.wait_for(n, timeout=15)
    assert sorted(int(d.body) for d in got) == list(range(n))
    delays = [-d.properties.headers["x-delay"] for d in got]
    assert delays == [300] * (n // 2) + [1300] * (n // 2)
    for parity in (0, 1):  # same delay: in publish order
        bodies = [int(d.body) for d in got if int(d.body) % 2 == parity]
        assert bodies == sorted(bodies)


def test_cc_keys_route_the_delayed_message(env: Env) -> None:
    x = env.exchange()
    a, b = env.consume(env.queue(x, "a")), env.consume(env.queue(x, "b"))
    env.ch.basic_publish(x, "a", b"m", props(200, CC=["b"]))
    assert [d.body for d in a.wait_for(1)] == [b"m"]
    assert [d.body for d in b.wait_for(1)] == [b"m"]


def test_headers_type_binding_arguments_are_checked(env: Env) -> None:
    x = env.exchange("headers")
    q = env.queue()
    err = closed_with(env.ch, env.ch.queue_bind, q, x, "", arguments={"x-match": "some"})
    assert err.reply_code == 406
