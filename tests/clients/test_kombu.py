"""kombu over ``amqp://`` (the py-amqp transport, as Celery uses it), unchanged: declarations,
Producer/Consumer with serializers, SimpleQueue, retry policies, maybe_declare, confirm_publish,
heartbeats and a topic exchange fanning out to several queues."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import amqp
import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.common import maybe_declare
from kombu.message import Message
from support import unique_name

TIMEOUT = 5.0


@pytest.fixture
def conn(hare_url: str) -> Iterator[Connection]:
    with Connection(hare_url) as c:
        c.connect()
        yield c


def drain_until(conn: Connection, got: list[Any], n: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while len(got) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"got {len(got)} of {n} messages")
        try:
            conn.drain_events(timeout=remaining)
        except TimeoutError:
            pass


def message_count(conn: Connection, queue: str, expect: int | None = None) -> int:
    """The queue's ready count; with ``expect``, wait for it a little: without confirms RabbitMQ's
    queues count a publish a moment after the channel took it."""
    ch = conn.default_channel
    deadline = time.monotonic() + TIMEOUT
    while True:
        n = ch.queue_declare(queue, passive=True).message_count
        if expect is None or n == expect or time.monotonic() > deadline:
            return n
        time.sleep(0.01)


def test_producer_consumer_json_and_pickle(conn: Connection) -> None:
    ex = Exchange(unique_name("x"), type="direct", auto_delete=True)
    q = Queue(unique_name("kombu"), exchange=ex, routing_key="work", exclusive=True)
    producer = Producer(conn.default_channel, exchange=ex)
    producer.publish({"n": 1, "items": ["a", "b"], "ok": True}, routing_key="work", serializer="json",
                     declare=[q], headers={"h": "v"}, correlation_id="c-1", priority=3)
    producer.publish({"n": 2, "when": (1, 2)}, routing_key="work", serializer="pickle")
    producer.publish(b"raw-bytes", routing_key="work", content_type="application/x-raw",
                     content_encoding="binary")
    got: list[tuple[Any, Message]] = []

    def on_message(body: Any, message: Message) -> None:
        got.append((body, message))
        message.ack()

    with Consumer(conn, [q], callbacks=[on_message], accept=["json", "pickle", "application/x-raw"]):
        drain_until(conn, got, 3)
        assert message_count(conn, q.name) == 0
    (b1, m1), (b2, m2), (b3, m3) = got
    assert b1 == {"n": 1, "items": ["a", "b"], "ok": True}
    assert m1.content_type == "application/json" and m1.content_encoding == "utf-8"
    assert m1.headers == {"h": "v"}
    assert m1.properties["correlation_id"] == "c-1" and m1.properties["priority"] == 3
    assert m1.delivery_info["routing_key"] == "work" and m1.delivery_info["exchange"] == ex.name
    assert m1.delivery_info["redelivered"] is False
    assert b2 == {"n": 2, "when": (1, 2)} and m2.content_type == "application/x-python-serialize"
    assert b3 == b"raw-bytes" and m3.body == b"raw-bytes"
    assert [m.delivery_tag for _, m in got] == [1, 2, 3]
    # kombu's exclusive queues are auto-delete: gone with their consumer
    with pytest.raises(amqp.exceptions.NotFound):
        conn.channel().queue_declare(q.name, passive=True)


def test_consumer_requeue_and_reject(conn: Connection) -> None:
    q = Queue(unique_name("kombu"), exclusive=True)
    producer = Producer(conn.default_channel)
    producer.publish("first", routing_key=q.name, declare=[q], serializer="json")
    got: list[Message] = []

    def on_message(_body: Any, message: Message) -> None:
        got.append(message)
        if len(got) == 1:
            message.requeue()
        else:
            message.reject()

    with Consumer(conn, [q], callbacks=[on_message], accept=["json"]):
        drain_until(conn, got, 2)
        assert message_count(conn, q.name) == 0
    assert [m.payload for m in got] == ["first", "first"]
    assert [m.delivery_info["redelivered"] for m in got] == [False, True]


def test_simple_queue_put_get(conn: Connection) -> None:
    qn = unique_name("kombu")
    with conn.SimpleQueue(qn, queue_opts={"exclusive": True}) as sq:
        sq.put("to-clear")
        sq.put("to-clear")
        assert message_count(conn, qn, expect=2) == 2
        assert sq.clear() == 2
        for i in range(3):
            sq.put({"i": i})
        assert message_count(conn, qn, expect=3) == 3
        assert sq.qsize() == 3
        first = sq.get(block=True, timeout=TIMEOUT)
        assert first.payload == {"i": 0}
        first.ack()
        rest = [sq.get(block=True, timeout=TIMEOUT) for _ in range(2)]
        for m in rest:
            m.ack()
        assert [m.payload for m in rest] == [{"i": 1}, {"i": 2}]
        with pytest.raises(sq.Empty):
            sq.get_nowait()
        assert sq.qsize() == 0


def test_publish_with_retry_policy_and_ensure(conn: Connection) -> None:
    q = Queue(unique_name("kombu"), exclusive=True)
    producer = conn.Producer(serializer="json")
    policy = {"max_retries": 3, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.2}
    producer.publish({"try": 1}, routing_key=q.name, declare=[q], retry=True, retry_policy=policy)
    safe_publish = conn.ensure(producer, producer.publish, **policy)
    safe_publish({"try": 2}, routing_key=q.name)
    assert message_count(conn, q.name, expect=2) == 2
    bound = q(conn.default_channel)
    bodies = []
    for _ in range(2):
        m = bound.get(no_ack=True)
        assert m is not None
        bodies.append(m.payload)
    assert bodies == [{"try": 1}, {"try": 2}]
    assert bound.get() is None


def test_maybe_declare_caches_declarations(conn: Connection) -> None:
    # kombu caches only entities that are not auto-delete
    ex = Exchange(unique_name("x"), type="fanout", durable=False)
    q = Queue(unique_name("kombu"), exchange=ex, durable=False)
    ch = conn.default_channel
    try:
        assert maybe_declare(q, ch) is True  # declares the exchange, the queue and the binding
        assert maybe_declare(q, ch) is False  # cached
        ch.exchange_declare(ex.name, "fanout", passive=True)
        assert ch.queue_declare(q.name, passive=True).queue == q.name
        Producer(ch, exchange=ex).publish("via-fanout", serializer="json")
        assert message_count(conn, q.name, expect=1) == 1
        # an exchange of another type under the same name: 406 closes the channel
        other = conn.channel()
        with pytest.raises(amqp.exceptions.PreconditionFailed) as info:
            Exchange(ex.name, type="direct", durable=False).declare(channel=other)
        assert info.value.reply_code == 406
        assert info.value.reply_text == (f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange "
                                         f"'{ex.name}' in vhost '/': received 'direct' but current is "
                                         "'fanout'")
    finally:
        cleanup = conn.channel()
        cleanup.queue_delete(q.name)
        cleanup.exchange_delete(ex.name)


def test_confirm_publish_transport_option(hare_url: str) -> None:
    qn = unique_name("kombu")
    with Connection(hare_url, transport_options={"confirm_publish": True}) as c:
        ch = c.channel()
        q = Queue(qn, exclusive=True)
        producer = Producer(ch, serializer="json")
        for i in range(5):
            producer.publish({"i": i}, routing_key=qn, declare=[q])  # each waits for its ack
        assert ch.queue_declare(qn, passive=True).message_count == 5
        # publishing to a missing exchange: the wait for the confirm sees the channel close
        missing = unique_name("missing")
        with pytest.raises(amqp.exceptions.NotFound) as info:
            producer.publish({"i": 99}, exchange=missing, routing_key=qn)
        assert info.value.reply_code == 404
        assert info.value.reply_text == f"NOT_FOUND - no exchange '{missing}' in vhost '/'"
        assert info.value.method_name == "Basic.publish"


def test_heartbeats_keep_connection_alive(hare_url: str) -> None:
    with Connection(hare_url, heartbeat=1) as c:
        c.connect()
        opened = time.monotonic()
        raw: amqp.Connection = c.connection
        assert (raw.server_heartbeat, raw.heartbeat) == (60, 1)
        frames_before = raw.bytes_recv  # py-amqp counts frames here
        while raw.bytes_recv == frames_before and time.monotonic() - opened < 2:
            try:
                c.drain_events(timeout=0.02)
            except TimeoutError:
                pass
        # the first heartbeat comes half an interval after the handshake, not a whole one
        assert raw.bytes_recv > frames_before and time.monotonic() - opened < 0.8
        q = Queue(unique_name("kombu"), exclusive=True)
        bound = q(c.default_channel)
        bound.declare()
        frames_before = raw.bytes_recv  # py-amqp counts frames here
        deadline = time.monotonic() + 3.2  # past the 2-3 intervals a silent client is dropped after
        while time.monotonic() < deadline:
            c.heartbeat_check(rate=2)  # raises if the broker's heartbeats stopped
            try:
                c.drain_events(timeout=0.2)
            except TimeoutError:
                pass
        # the broker sent a heartbeat every half interval while it had nothing else to say
        assert raw.bytes_recv - frames_before >= 5
        Producer(c.default_channel).publish("still-alive", routing_key=q.name, serializer="json")
        m = bound.get(no_ack=True)
        assert m is not None and m.payload == "still-alive"


def test_silent_client_is_dropped(hare_url: str) -> None:
    with Connection(hare_url, heartbeat=1) as c:
        c.connect()
        ch = c.channel()
        time.sleep(3.5)  # no heartbeat_check: we stay silent for more than 3 intervals
        with pytest.raises(c.connection_errors):
            ch.queue_declare("", exclusive=True)
            c.drain_events(timeout=1)


def test_topic_exchange_fans_out_to_several_queues(conn: Connection) -> None:
    ex = Exchange(unique_name("topic"), type="topic", auto_delete=True)
    patterns = {"stock": "stock.#", "stock_usd": "stock.*.usd", "all": "#", "nyse": "*.nyse.*"}
    queues = {k: Queue(unique_name(k), exchange=ex, routing_key=p, exclusive=True)
              for k, p in patterns.items()}
    ch = conn.default_channel
    for q in queues.values():
        maybe_declare(q, ch)
    producer = Producer(ch, exchange=ex, serializer="json")
    keys = ["stock.nyse.usd", "stock.lse.gbp", "stock", "bond.nyse.usd", "weather"]
    for key in keys:
        producer.publish({"key": key}, routing_key=key)
    got: dict[str, list[str]] = {}
    for label, q in queues.items():
        bound = q(ch)
        got[label] = []
        while (m := bound.get(no_ack=True)) is not None:
            got[label].append(m.payload["key"])
    assert got == {
        "stock": ["stock.nyse.usd", "stock.lse.gbp", "stock"],
        "stock_usd": ["stock.nyse.usd"],
        "all": keys,
        "nyse": ["stock.nyse.usd", "bond.nyse.usd"],
    }
