"""Message TTL, queue expiry, length limits and dead-lettering, as RabbitMQ 3.10 does them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import ChannelClosedByBroker
from support import drain, wait_until

Props = pika.BasicProperties


@pytest.fixture
def ch(connection: BlockingConnection) -> Iterator[BlockingChannel]:
    channel = connection.channel()
    names: list[str] = []
    channel.names = names  # type: ignore[attr-defined]
    yield channel
    if connection.is_open:
        c = connection.channel()
        for name in names:
            c.queue_delete(name)
            c.exchange_delete(name)
        c.close()


def name(ch: BlockingChannel, prefix: str) -> str:
    n = f"{prefix}-{uuid.uuid4().hex[:8]}"
    ch.names.append(n)  # type: ignore[attr-defined]
    return n


def count(ch: BlockingChannel, queue: str) -> int:
    return ch.queue_declare(queue, passive=True).method.message_count


def dlx_pair(ch: BlockingChannel) -> tuple[str, str]:
    """A fanout dead-letter exchange and the queue bound to it."""
    dlx, dead = name(ch, "dlx"), name(ch, "dead")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dead)
    ch.queue_bind(dead, dlx)
    return dlx, dead


# -- TTL -----------------------------------------------------------------------------------------

def test_queue_ttl_expires_messages_without_a_consumer(ch: BlockingChannel) -> None:
    q = name(ch, "ttl")
    ch.queue_declare(q, arguments={"x-message-ttl": 200})
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, b"%d" % i)
    assert count(ch, q) == 5
    wait_until(lambda: count(ch, q) == 0)  # removed although nobody asked for them
    assert drain(ch, q) == []


def test_per_message_expiration_and_the_shorter_of_the_two_wins(ch: BlockingChannel) -> None:
    q = name(ch, "ttl")
    ch.queue_declare(q, arguments={"x-message-ttl": 60000})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"short", Props(expiration="100"))
    ch.basic_publish("", q, b"long", Props(expiration="600000"))
    wait_until(lambda: count(ch, q) == 1)
    assert drain(ch, q) == [b"long"]


def test_expiration_applies_at_the_head_only(ch: BlockingChannel) -> None:
    q = name(ch, "ttl")
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"first", Props(expiration="60000"))
    ch.basic_publish("", q, b"second", Props(expiration="50"))
    time.sleep(0.3)
    assert count(ch, q) == 2  # the expired one waits behind a live head
    method, _props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"first"
    assert drain(ch, q) == []  # now at the head, it is dropped instead of delivered


def test_expired_messages_are_dead_lettered_with_x_death(ch: BlockingChannel) -> None:
    dlx, dead = dlx_pair(ch)
    q = name(ch, "ttl")
    ch.queue_declare(q, arguments={"x-message-ttl": 50, "x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"m", Props(expiration="20", headers={"h": 1}, priority=3,
                                         delivery_mode=2))
    wait_until(lambda: count(ch, dead) == 1)
    method, props, body = ch.basic_get(dead, auto_ack=True)
    assert (body, method.exchange, method.routing_key) == (b"m", dlx, q)
    assert props.expiration is None and props.priority == 3 and props.delivery_mode == 2
    [death] = props.headers["x-death"]
    assert {k: death[k] for k in ("count", "reason", "queue", "exchange", "routing-keys",
                                  "original-expiration")} == {
        "count": 1, "reason": "expired", "queue": q, "exchange": "", "routing-keys": [q],
        "original-expiration": "20"}
    assert abs(death["time"].timestamp() - time.time()) < 10
    assert props.headers["h"] == 1
    assert (props.headers["x-first-death-reason"], props.headers["x-first-death-queue"],
            props.headers["x-first-death-exchange"]) == ("expired", q, "")


def test_requeued_message_keeps_its_expiry(ch: BlockingChannel) -> None:
    q = name(ch, "ttl")
    ch.queue_declare(q, arguments={"x-message-ttl": 300})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"m")
    method, _props, _body = ch.basic_get(q)
    time.sleep(0.4)
    ch.basic_nack(method.delivery_tag, requeue=True)
    wait_until(lambda: count(ch, q) == 0)


# -- dead-lettering --------------------------------------------------------------------------------

def test_rejected_messages_are_dead_lettered_with_the_dead_letter_routing_key(ch: BlockingChannel) -> None:
    dlx, dead = dlx_pair(ch)
    q = name(ch, "src")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx,
                                   "x-dead-letter-routing-key": "new-key"})
    ch.confirm_delivery()
    for body in (b"a", b"b", b"c"):
        ch.basic_publish("", q, body)
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(3)]
    ch.basic_reject(tags[0], requeue=False)
    ch.basic_nack(tags[2], multiple=True, requeue=False)
    wait_until(lambda: count(ch, dead) == 3)
    got = []
    for _ in range(3):
        method, props, body = ch.basic_get(dead, auto_ack=True)
        got.append((body, method.routing_key, props.headers["x-death"][0]["reason"],
                    props.headers["x-death"][0]["routing-keys"]))
    assert got == [(b, "new-key", "rejected", [q]) for b in (b"a", b"b", b"c")]


def test_dead_lettering_twice_from_one_queue_counts_in_one_entry(ch: BlockingChannel) -> None:
    dlx, dead = dlx_pair(ch)
    q = name(ch, "src")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"m")
    method, _p, _b = ch.basic_get(q)
    ch.basic_reject(method.delivery_tag, requeue=False)
    wait_until(lambda: count(ch, dead) == 1)
    _m, props, body = ch.basic_get(dead, auto_ack=True)
    ch.basic_publish("", q, body, props)  # back into the same queue, then rejected again
    method, _p, _b = ch.basic_get(q)
    ch.basic_reject(method.delivery_tag, requeue=False)
    wait_until(lambda: count(ch, dead) == 1)
    _m, props, _b = ch.basic_get(dead, auto_ack=True)
    [death] = props.headers["x-death"]
    assert (death["count"], death["reason"], death["queue"]) == (2, "rejected", q)


def test_dead_letter_cycles_of_expiry_are_broken(ch: BlockingChannel) -> None:
    """Two queues dead-lettering into each other by TTL: the message is dropped, not looped."""
    a, b = name(ch, "cyc-a"), name(ch, "cyc-b")
    ch.queue_declare(a, arguments={"x-message-ttl": 20, "x-dead-letter-exchange": "",
                                   "x-dead-letter-routing-key": b})
    ch.queue_declare(b, arguments={"x-message-ttl": 20, "x-dead-letter-exchange": "",
                                   "x-dead-letter-routing-key": a})
    ch.confirm_delivery()
    ch.basic_publish("", a, b"loop")
    time.sleep(0.6)
    assert count(ch, a) == 0 and count(ch, b) == 0


def test_cc_header_routes_to_more_keys_and_bcc_is_hidden(ch: BlockingChannel) -> None:
    q1, q2, q3 = name(ch, "cc1"), name(ch, "cc2"), name(ch, "cc3")
    for q in (q1, q2, q3):
        ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q1, b"m", Props(headers={"CC": [q2], "BCC": [q3]}))
    got = {}
    for q in (q1, q2, q3):
        method, props, body = ch.basic_get(q, auto_ack=True)
        got[q] = (body, method.routing_key, sorted(props.headers or {}))
    assert got == {q: (b"m", q1, ["CC"]) for q in (q1, q2, q3)}


# -- length limits ---------------------------------------------------------------------------------

def test_max_length_drops_from_the_head_and_dead_letters_it(ch: BlockingChannel) -> None:
    dlx, dead = dlx_pair(ch)
    q = name(ch, "len")
    ch.queue_declare(q, arguments={"x-max-length": 2, "x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, b"%d" % i)
    assert drain(ch, q) == [b"3", b"4"]
    wait_until(lambda: count(ch, dead) == 3)
    _m, props, _b = ch.basic_get(dead, auto_ack=True)
    assert props.headers["x-death"][0]["reason"] == "maxlen"
    assert drain(ch, dead) == [b"1", b"2"]


def test_max_length_bytes_counts_bodies(ch: BlockingChannel) -> None:
    q = name(ch, "bytes")
    ch.queue_declare(q, arguments={"x-max-length-bytes": 10})
    ch.confirm_delivery()
    for body in (b"aaaa", b"bbbb", b"cccc"):
        ch.basic_publish("", q, body)
    assert drain(ch, q) == [b"bbbb", b"cccc"]


def test_unacked_messages_do_not_count_toward_the_limit(ch: BlockingChannel) -> None:
    q = name(ch, "len")
    ch.queue_declare(q, arguments={"x-max-length": 1})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"a")
    method, _p, _b = ch.basic_get(q)  # delivered, not acked
    ch.basic_publish("", q, b"b")
    assert count(ch, q) == 1
    ch.basic_nack(method.delivery_tag, requeue=True)  # back: two ready, over the limit of one
    ch.basic_publish("", q, b"c")
    assert drain(ch, q) == [b"c"]


def test_reject_publish_nacks_the_publisher(ch: BlockingChannel) -> None:
    q = name(ch, "rej")
    ch.queue_declare(q, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"1")
    ch.basic_publish("", q, b"2")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"3")
    assert drain(ch, q) == [b"1", b"2"]


def test_reject_publish_dlx_dead_letters_the_refused_message(ch: BlockingChannel) -> None:
    dlx, dead = dlx_pair(ch)
    q = name(ch, "rej")
    ch.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish-dlx",
                                   "x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"kept")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"refused")
    wait_until(lambda: count(ch, dead) == 1)
    _m, props, body = ch.basic_get(dead, auto_ack=True)
    assert body == b"refused" and props.headers["x-death"][0]["reason"] == "maxlen"
    assert drain(ch, q) == [b"kept"]


# -- queue expiry ------------------------------------------------------------------------------------

def test_unused_queue_is_deleted_after_x_expires(ch: BlockingChannel) -> None:
    q = name(ch, "exp")
    ch.queue_declare(q, arguments={"x-expires": 300})
    time.sleep(0.15)
    assert _exists(ch.connection, q)  # a passive declare is a use: the lease starts again
    time.sleep(0.25)
    assert _exists(ch.connection, q)
    time.sleep(0.8)  # (passive declares would renew it: look only once it must be gone)
    assert not _exists(ch.connection, q)


def test_a_queue_with_a_consumer_does_not_expire(ch: BlockingChannel) -> None:
    q = name(ch, "exp")
    ch.queue_declare(q, arguments={"x-expires": 200})
    tag = ch.basic_consume(q, lambda *a: None)
    time.sleep(0.5)
    assert _exists(ch.connection, q)
    ch.basic_cancel(tag)
    time.sleep(0.8)
    assert not _exists(ch.connection, q)


def _exists(conn: BlockingConnection, queue: str) -> bool:
    c = conn.channel()
    try:
        c.queue_declare(queue, passive=True)
    except ChannelClosedByBroker:
        return False
    c.close()
    return True
