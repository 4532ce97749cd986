"""Delivery limits (x-delivery-limit) and the x-delivery-count header, as RabbitMQ 3.10's quorum
queues have them: a message that comes back (nack/reject with requeue, its channel closing,
basic.recover) more often than the limit is dead-lettered with reason ``delivery_limit``.

The queues here are declared as quorum queues so that the tests run against RabbitMQ too (hare
takes ``x-queue-type: quorum`` and makes a classic queue of it); hare also takes the limit on a
classic queue, which RabbitMQ 3.10 refuses (those tests are hare-only)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.compat
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from support import Inbox, deleted_after, hare_only, unique_name, wait_ready

from hare.testing import EmbeddedBroker

Props = pika.BasicProperties


@pytest.fixture
def declare(admin: BlockingConnection) -> Iterator[Callable[..., str]]:
    """Declare a quorum queue with a delivery limit (and more arguments); deleted after the test."""
    with deleted_after(admin, "queue") as names:

        def make(limit: int | None, quorum: bool = True, **arguments: Any) -> str:
            name = unique_name("dlim")
            args = {k.replace("_", "-"): v for k, v in arguments.items()}
            if quorum:
                args["x-queue-type"] = "quorum"
            if limit is not None:
                args["x-delivery-limit"] = limit
            ch = admin.channel()
            ch.queue_declare(name, durable=True, arguments=args)
            ch.close()
            names.append(name)
            return name

        yield make


@pytest.fixture
def dlx(admin: BlockingConnection) -> Iterator[tuple[str, str]]:
    """A fanout dead-letter exchange and a (classic) queue bound to it."""
    ex, dead = unique_name("dlx"), unique_name("dead")
    ch = admin.channel()
    ch.exchange_declare(ex, "fanout")
    ch.queue_declare(dead)
    ch.queue_bind(dead, ex)
    yield ex, dead
    if admin.is_open:
        ch = admin.channel()
        ch.queue_delete(dead)
        ch.exchange_delete(ex)


def count_of(props: Props) -> Any:
    return (props.headers or {}).get("x-delivery-count")


def dead_letters(ch: BlockingChannel, queue: str, n: int) -> list[tuple[bytes, Props]]:
    """Wait for ``n`` messages in ``queue``, then take them."""
    deadline = time.monotonic() + 5
    out: list[tuple[bytes, Props]] = []
    while len(out) < n:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            assert time.monotonic() < deadline, f"{len(out)} dead-lettered messages, expected {n}"
            time.sleep(0.02)
            continue
        out.append((body, props))
    return out


def test_over_the_limit_a_message_is_dead_lettered(pub: BlockingChannel, declare: Callable[..., str],
                                                   dlx: tuple[str, str]) -> None:
    ex, dead = dlx
    q = declare(2, x_dead_letter_exchange=ex)
    pub.basic_publish("", q, b"m", Props(headers={"x-delivery-count": 77, "a": 1}))
    seen = []
    for _ in range(3):
        method, props, body = pub.basic_get(q)
        assert body == b"m"
        seen.append((count_of(props), method.redelivered, props.headers["a"]))
        # a long ('l'), as RabbitMQ sends it (pika decodes it as pika.compat.long)
        assert isinstance(count_of(props), pika.compat.long)
        pub.basic_nack(method.delivery_tag, requeue=True)
    # the publisher's own x-delivery-count is replaced on delivery; 2 returns are allowed, not 3
    assert seen == [(0, False, 1), (1, True, 1), (2, True, 1)]
    [(body, props)] = dead_letters(pub, dead, 1)
    assert pub.basic_get(q)[0] is None
    assert body == b"m"
    headers = props.headers
    # dead-lettered as it was published: the publisher's header, none of the broker's counting
    assert headers["x-delivery-count"] == 77 and headers["a"] == 1
    assert headers["x-first-death-reason"] == "delivery_limit"
    assert headers["x-first-death-queue"] == q
    [death] = headers["x-death"]
    assert (death["reason"], death["queue"], death["count"], death["routing-keys"]) == (
        "delivery_limit", q, 1, [q])


def test_a_limit_of_0_allows_no_return(pub: BlockingChannel, declare: Callable[..., str],
                                       dlx: tuple[str, str]) -> None:
    ex, dead = dlx
    q = declare(0, x_dead_letter_exchange=ex)
    pub.basic_publish("", q, b"once")
    method, props, _ = pub.basic_get(q)
    assert count_of(props) == 0
    pub.basic_reject(method.delivery_tag, requeue=True)
    [(body, props)] = dead_letters(pub, dead, 1)
    assert body == b"once" and props.headers["x-first-death-reason"] == "delivery_limit"
    assert "x-delivery-count" not in props.headers
    assert pub.basic_get(q)[0] is None


def test_without_a_dead_letter_exchange_the_message_is_dropped(pub: BlockingChannel,
                                                              declare: Callable[..., str]) -> None:
    q = declare(1)
    pub.basic_publish("", q, b"m")
    for _ in range(2):
        method, _, _ = pub.basic_get(q)
        pub.basic_nack(method.delivery_tag, requeue=True)
    assert pub.basic_get(q)[0] is None
    assert pub.queue_declare(q, passive=True).method.message_count == 0


def test_a_consumer_sees_the_count_grow(pub: BlockingChannel, declare: Callable[..., str],
                                        dlx: tuple[str, str], connection: BlockingConnection) -> None:
    ex, dead = dlx
    q = declare(3, x_dead_letter_exchange=ex)
    ch = connection.channel()
    inbox = Inbox(connection)

    def on_message(c: BlockingChannel, method: Any, props: Props, body: bytes) -> None:
        inbox(c, method, props, body)
        c.basic_nack(method.delivery_tag, requeue=True)

    ch.basic_consume(q, on_message)
    pub.basic_publish("", q, b"loop")
    pub.basic_publish("", q, b"own", Props(headers={"x-delivery-count": 77}))
    inbox.wait_for(8)
    inbox.quiet(0.2)
    got = [(d.body, count_of(d.properties), d.method.redelivered) for d in inbox.got]
    # a first delivery to a consumer is left as published (unlike basic.get, which shows 0)
    for body, first in ((b"loop", None), (b"own", 77)):
        assert [g[1:] for g in got if g[0] == body] == [(first, False), (1, True), (2, True), (3, True)]
    assert sorted(body for body, _ in dead_letters(pub, dead, 2)) == [b"loop", b"own"]


def test_a_closed_channel_and_basic_recover_count_as_returns(pub: BlockingChannel,
                                                             declare: Callable[..., str],
                                                             connection: BlockingConnection,
                                                             admin: BlockingConnection) -> None:
    q = declare(2)
    pub.basic_publish("", q, b"m")
    counts = []
    ch = connection.channel()
    _, props, _ = ch.basic_get(q)
    counts.append(count_of(props))
    ch.close()  # return 1
    ch = connection.channel()
    _, props, _ = ch.basic_get(q)
    counts.append(count_of(props))
    ch.basic_recover(requeue=True)  # return 2
    method, props, _ = ch.basic_get(q)
    counts.append(count_of(props))
    assert counts == [0, 1, 2]
    assert method.redelivered
    connection.close()  # return 3: over the limit
    wait_ready(admin, q, 0)


def test_acked_and_rejected_messages_are_not_counted(pub: BlockingChannel, declare: Callable[..., str],
                                                     dlx: tuple[str, str]) -> None:
    ex, dead = dlx
    q = declare(5, x_dead_letter_exchange=ex)
    for body in (b"a", b"b"):
        pub.basic_publish("", q, body)
    method, props, body = pub.basic_get(q)
    assert body == b"a"
    pub.basic_nack(method.delivery_tag, requeue=True)
    method, props, body = pub.basic_get(q)
    assert (body, count_of(props)) == (b"a", 1)
    pub.basic_reject(method.delivery_tag, requeue=False)  # dead-lettered as rejected, as published
    [(body, props)] = dead_letters(pub, dead, 1)
    assert body == b"a" and props.headers["x-first-death-reason"] == "rejected"
    assert "x-delivery-count" not in props.headers
    method, props, body = pub.basic_get(q)
    assert (body, count_of(props)) == (b"b", 0)
    pub.basic_ack(method.delivery_tag)
    assert pub.queue_declare(q, passive=True).method.message_count == 0


# -- hare only --------------------------------------------------------------------------------------


@hare_only
def test_hare_takes_a_delivery_limit_on_a_classic_queue(pub: BlockingChannel, declare: Callable[..., str],
                                                        dlx: tuple[str, str]) -> None:
    # RabbitMQ 3.10 refuses x-delivery-limit on a classic queue (406 "... of queue type
    # rabbit_classic_queue"); hare enforces it on any queue
    ex, dead = dlx
    q = declare(1, quorum=False, x_dead_letter_exchange=ex, x_max_priority=3)
    pub.basic_publish("", q, b"low", Props(priority=0))
    pub.basic_publish("", q, b"high", Props(priority=3))
    got = []
    for _ in range(2):
        method, props, body = pub.basic_get(q)
        got.append((body, count_of(props)))
        pub.basic_nack(method.delivery_tag, requeue=True)
    assert got == [(b"high", 0), (b"high", 1)]
    [(body, props)] = dead_letters(pub, dead, 1)
    assert body == b"high" and props.headers["x-first-death-reason"] == "delivery_limit"
    method, props, body = pub.basic_get(q, auto_ack=True)
    assert (body, count_of(props)) == (b"low", 0)


@hare_only
def test_a_queue_without_a_limit_adds_no_header(pub: BlockingChannel, declare: Callable[..., str],
                                                hare_broker: EmbeddedBroker) -> None:
    # unlike a RabbitMQ quorum queue, which counts (and adds the header) even without a limit
    q = declare(None)
    pub.basic_publish("", q, b"m")
    method, props, _ = pub.basic_get(q)
    pub.basic_nack(method.delivery_tag, requeue=True)
    method, props, _ = pub.basic_get(q, auto_ack=True)
    assert method.redelivered and props.headers is None
    assert hare_broker.call(lambda: hare_broker.broker.vhosts["/"].queues[q].counter) is None


@hare_only
def test_a_policy_sets_and_lifts_the_limit(pub: BlockingChannel, declare: Callable[..., str],
                                           hare_broker: EmbeddedBroker) -> None:
    q = declare(None, quorum=False)

    def apply(policy: dict[str, Any] | None) -> None:
        hare_broker.call(lambda: hare_broker.broker.vhosts["/"].queues[q].apply_policy(policy))

    apply({"delivery-limit": 1})
    pub.basic_publish("", q, b"m")
    for want in (0, 1):
        method, props, _ = pub.basic_get(q)
        assert count_of(props) == want
        pub.basic_nack(method.delivery_tag, requeue=True)
    assert pub.basic_get(q)[0] is None  # dropped: no dead-letter exchange
    apply(None)
    pub.basic_publish("", q, b"n")
    for _ in range(3):
        method, props, _ = pub.basic_get(q)
        assert props.headers is None
        pub.basic_nack(method.delivery_tag, requeue=True)
    assert pub.queue_declare(q, passive=True).method.message_count == 1

