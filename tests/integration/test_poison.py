"""One message the broker cannot handle as usual (a "poison" message) never escapes a broker-wide
loop and never punishes other clients.

Two poisons get past publish: a header table nested 600 deep (RabbitMQ accepts it; hare's codec
must handle it everywhere: expiry, dead-lettering, the headers exchange, x-delivery-count), and a
content_type property whose length runs past the properties (RabbitMQ's channel crashes on it;
hare does not decode the properties of every publish, so it stores the message and must cope
when a feature needs them later). Before, either one stopped every timer of the broker once its
TTL passed, closed an innocent publisher's or a rejecting consumer's connection with 502, or
vanished when its consumer dropped.

The poisons are sent on raw sockets (pika cannot encode them, nor decode them: the test reads
them back raw). Each test runs its own broker in a child process (``tests/hare_node.py``), so a
broker whose timers died does not spoil the next test.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from hare_node import HareNode
from pika.adapters.blocking_connection import BlockingConnection
from pika.exceptions import ChannelClosedByBroker
from rawamqp import RawClient, ping, raw_client
from support import unique_name, wait_until

from hare.amqp import spec
from hare.amqp.frames import pack_header
from hare.amqp.properties import decode_properties

pytestmark = pytest.mark.skipif(bool(os.environ.get("HARE_TEST_URL")), reason="runs a private hare")

DEPTH = 600


def deep_props(depth: int = DEPTH) -> bytes:
    """Properties whose headers hold {"deep": {"d": {"d": ... }}} nested ``depth`` tables deep, and
    a plain header beside it ("k": 1)."""
    table = b"\x00\x00\x00\x00"
    for _ in range(depth - 1):
        entry = b"\x01dF" + table
        table = struct.pack(">I", len(entry)) + entry
    entries = b"\x04deepF" + table + b"\x01kI\x00\x00\x00\x01"
    return b"\x20\x00" + struct.pack(">I", len(entries)) + entries


def depth_of(value: Any) -> int:
    n = 0
    while isinstance(value, dict) and value:
        n += 1
        value = next(iter(value.values()))
    return n + isinstance(value, dict)


def bad_content_type_props() -> bytes:
    """content_type announced 16 octets long, 3 present: the properties do not decode."""
    return b"\x80\x00\x10abc"


POISONS: dict[str, Callable[[], bytes]] = {"deep": deep_props, "bad-content-type": bad_content_type_props}


def publish_raw(c: RawClient, exchange: str, routing_key: str, props: bytes, body: bytes = b"poison",
                channel: int = 1) -> None:
    c.send_method(channel, spec.BasicPublish(exchange=exchange, routing_key=routing_key))
    payload = struct.pack(">HHQ", 60, 0, len(body)) + props
    c.send(pack_header(2, channel, len(payload)) + payload + b"\xce"
           + pack_header(3, channel, len(body)) + body + b"\xce")
    ping(c, channel)  # the broker took it (a refusal would close the connection instead)


def get_raw(c: RawClient, queue: str, no_ack: bool = True, channel: int = 1
            ) -> tuple[spec.BasicGetOk, bytes, bytes]:
    c.send_method(channel, spec.BasicGet(queue=queue, no_ack=no_ack))
    m = c.expect(spec.BasicGetOk)
    assert isinstance(m, spec.BasicGetOk)
    props, body = c.read_content()
    return m, props, body


@pytest.fixture
def node(tmp_path: Path) -> Iterator[HareNode]:
    n = HareNode(tmp_path / "data", tmp_path / "hare.log").start()
    yield n
    n.stop()


@pytest.fixture
def admin(node: HareNode) -> Iterator[BlockingConnection]:
    conn = pika.BlockingConnection(pika.URLParameters(node.url))
    yield conn
    if conn.is_open:
        conn.close()


@pytest.fixture
def raw(node: HareNode) -> Iterator[RawClient]:
    c = raw_client(node.url)
    yield c
    c.close()


def count(conn: BlockingConnection, queue: str) -> int:
    ch = conn.channel()
    try:
        return ch.queue_declare(queue, passive=True).method.message_count
    finally:
        ch.close()


def exists(conn: BlockingConnection, queue: str) -> bool:
    ch = conn.channel()
    try:
        ch.queue_declare(queue, passive=True)
    except ChannelClosedByBroker as exc:
        assert exc.reply_code == 404
        return False
    ch.close()
    return True


def dlx_queue(conn: BlockingConnection, **arguments: Any) -> tuple[str, str]:
    """A queue with ``arguments`` whose dead letters go (fanout) to a second queue: (queue, dead)."""
    ch = conn.channel()
    q, dlx, dead = unique_name("q"), unique_name("dlx"), unique_name("dead")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dead)
    ch.queue_bind(dead, dlx)
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx, **arguments})
    ch.close()
    return q, dead


def check_dead_letter(c: RawClient, dead: str, poison: str, queue: str, reason: str) -> None:
    """The poison message is in ``dead``: the deep one with its headers intact and an x-death
    entry, the undecodable one with its properties as published."""
    _, props, body = get_raw(c, dead)
    assert body == b"poison"
    if poison == "bad-content-type":
        assert props == bad_content_type_props()
        return
    headers = decode_properties(props)["headers"]
    assert depth_of(headers["deep"]) == DEPTH
    assert headers["k"] == 1
    death = headers["x-death"][0]
    assert (death["queue"], death["reason"], death["count"]) == (queue, reason, 1)


# -- publish ----------------------------------------------------------------------------------------

def test_an_unknown_field_type_in_headers_is_refused_at_publish_as_rabbitmq_does(
        node: HareNode, admin: BlockingConnection, raw: RawClient) -> None:
    q, dead = dlx_queue(admin, **{"x-message-ttl": 50})
    table = b"\x01aA\x00\x00\x00\x05I\x00\x00\x00\x01" + b"\x01kZ\x00"  # Z: no such type
    props = b"\x20\x00" + struct.pack(">I", len(table)) + table
    raw.send_method(1, spec.BasicPublish(exchange="", routing_key=q))
    payload = struct.pack(">HHQ", 60, 0, 1) + props
    raw.send(pack_header(2, 1, len(payload)) + payload + b"\xce" + pack_header(3, 1, 1) + b"x\xce")
    close = raw.expect(spec.ConnectionClose)
    assert isinstance(close, spec.ConnectionClose)
    # RabbitMQ 3.10's channel crashes decoding the properties: the connection gets 541
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == (
        541, "INTERNAL_ERROR", 0, 0)
    assert count(admin, q) == 0


# -- a deep message is handled everywhere ----------------------------------------------------------

def test_a_600_deep_message_through_ttl_and_dlx_arrives_dead_lettered(
        admin: BlockingConnection, raw: RawClient) -> None:
    q, dead = dlx_queue(admin, **{"x-message-ttl": 50})
    publish_raw(raw, "", q, deep_props())
    wait_until(lambda: count(admin, dead) == 1, timeout=5)
    assert count(admin, q) == 0
    check_dead_letter(raw, dead, "deep", q, "expired")


def test_a_600_deep_message_routes_through_a_headers_exchange(
        admin: BlockingConnection, raw: RawClient) -> None:
    ch = admin.channel()
    q = unique_name("hq")
    ch.queue_declare(q)
    ch.queue_bind(q, "amq.headers", arguments={"x-match": "all", "k": 1})
    publish_raw(raw, "amq.headers", "", deep_props())
    assert count(admin, q) == 1
    _, props, _ = get_raw(raw, q)
    assert props == deep_props()  # delivered as published


# -- the broker's timers outlive a poison message ---------------------------------------------------

@pytest.mark.parametrize("poison", POISONS)
def test_timers_keep_working_after_a_poison_message_expires(
        node: HareNode, admin: BlockingConnection, raw: RawClient, poison: str) -> None:
    q, dead = dlx_queue(admin, **{"x-message-ttl": 20})
    publish_raw(raw, "", q, POISONS[poison]())
    wait_until(lambda: count(admin, q) == 0, timeout=5)  # expired...
    wait_until(lambda: count(admin, dead) == 1, timeout=5)  # ... and dead-lettered, not lost
    check_dead_letter(raw, dead, poison, q, "expired")
    if poison == "bad-content-type":
        log = node.log.read_text()
        assert "ERROR" in log and f"queue '{q}'" in log, log

    ch = admin.channel()
    # TTL on another queue
    ttl = unique_name("ttl")
    ch.queue_declare(ttl, arguments={"x-message-ttl": 100})
    ch.basic_publish("", ttl, b"m")
    assert count(admin, ttl) == 1
    # an unused queue with x-expires
    gone = unique_name("expires")
    ch.queue_declare(gone, arguments={"x-expires": 200})
    # a consumer that never acks, on a queue with a consumer timeout
    slow = unique_name("slow")
    ch.queue_declare(slow, arguments={"x-consumer-timeout": 300})
    ch.basic_publish("", slow, b"m")
    raw.send_method(1, spec.BasicConsume(queue=slow, consumer_tag="never-acks"))
    raw.expect(spec.BasicConsumeOk)
    raw.expect(spec.BasicDeliver)
    raw.read_content()

    wait_until(lambda: count(admin, ttl) == 0, timeout=5)
    deadline = time.monotonic() + 5
    while exists(admin, gone):
        assert time.monotonic() < deadline, "the x-expires queue was not deleted"
        time.sleep(0.5)  # (longer than x-expires: a passive declare counts as a use)
    close = raw.expect(spec.ChannelClose, timeout=5)
    assert isinstance(close, spec.ChannelClose) and close.reply_code == 406
    assert "delivery acknowledgement on channel 1 timed out" in close.reply_text


# -- the poison punishes no other client ------------------------------------------------------------

@pytest.mark.parametrize("poison", POISONS)
def test_drop_head_of_a_poison_message_does_not_close_the_innocent_publisher(
        admin: BlockingConnection, raw: RawClient, node: HareNode, poison: str) -> None:
    q, dead = dlx_queue(admin, **{"x-max-length": 1})
    publish_raw(raw, "", q, POISONS[poison]())
    innocent = pika.BlockingConnection(pika.URLParameters(node.url))
    try:
        ch = innocent.channel()
        ch.confirm_delivery()
        ch.basic_publish("", q, b"innocent")  # drops the poison from the head
        assert innocent.is_open and ch.is_open
        method, _, body = ch.basic_get(q, auto_ack=True)
        assert body == b"innocent"
    finally:
        if innocent.is_open:
            innocent.close()
    wait_until(lambda: count(admin, dead) == 1)
    check_dead_letter(raw, dead, poison, q, "maxlen")


@pytest.mark.parametrize("poison", POISONS)
def test_rejecting_a_poison_message_to_a_dlx_does_not_close_the_consumer(
        admin: BlockingConnection, raw: RawClient, node: HareNode, poison: str) -> None:
    q, dead = dlx_queue(admin)
    publish_raw(raw, "", q, POISONS[poison]())
    with raw_client(node.url) as consumer:
        m, _, _ = get_raw(consumer, q, no_ack=False)
        consumer.send_method(1, spec.BasicReject(delivery_tag=m.delivery_tag, requeue=False))
        ping(consumer, 1)  # still open: no connection.close
    wait_until(lambda: count(admin, dead) == 1)
    check_dead_letter(raw, dead, poison, q, "rejected")


@pytest.mark.parametrize("poison", POISONS)
def test_a_poison_message_is_redelivered_when_its_consumer_drops(
        admin: BlockingConnection, raw: RawClient, node: HareNode, poison: str) -> None:
    ch = admin.channel()
    q = unique_name("limited")
    ch.queue_declare(q, arguments={"x-delivery-limit": 5})
    publish_raw(raw, "", q, POISONS[poison]())
    holder = raw_client(node.url)
    get_raw(holder, q, no_ack=False)
    with raw_client(node.url) as next_one:
        next_one.send_method(1, spec.BasicConsume(queue=q, consumer_tag="next"))
        next_one.expect(spec.BasicConsumeOk)
        holder.close()  # drops with the message unacked: it goes to the next consumer
        deliver = next_one.expect(spec.BasicDeliver)
        assert isinstance(deliver, spec.BasicDeliver) and deliver.redelivered
        props, body = next_one.read_content()
        assert body == b"poison"
        if poison == "deep":
            headers = decode_properties(props)["headers"]
            assert headers["x-delivery-count"] == 1 and depth_of(headers["deep"]) == DEPTH
        else:
            assert props == bad_content_type_props()  # cannot carry the header: as published
        ping(next_one, 1)
    holder.close()


@pytest.mark.parametrize("poison", POISONS)
def test_a_poison_message_over_its_delivery_limit_is_dead_lettered_when_its_consumer_drops(
        admin: BlockingConnection, raw: RawClient, node: HareNode, poison: str) -> None:
    q, dead = dlx_queue(admin, **{"x-delivery-limit": 0})
    publish_raw(raw, "", q, POISONS[poison]())
    with raw_client(node.url) as holder:
        get_raw(holder, q, no_ack=False)
    wait_until(lambda: count(admin, dead) == 1)  # its one return was over the limit
    assert count(admin, q) == 0
    check_dead_letter(raw, dead, poison, q, "delivery_limit")
    ping(raw, 1)
