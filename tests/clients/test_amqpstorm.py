"""amqpstorm, the thread-based client with its own frame codec (pamqp), unchanged: Connection and
UriConnection, declarations and channel errors, publish/get with every property, consumers with
prefetch, reject/nack and dead-lettering, publisher confirms and returns, transactions, the exchange
types and exchange-to-exchange bindings, purge/delete counts, a 2 MB body, RPC and heartbeats."""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import pytest
from amqpstorm import (
    AMQPChannelError,
    AMQPConnectionError,
    AMQPMessageError,
    Channel,
    Connection,
    Message,
    UriConnection,
)
from support import unique_name

TIMEOUT = 5.0


class Target:
    """The broker URL taken apart the way amqpstorm.Connection wants it."""

    def __init__(self, url: str) -> None:
        u = urlsplit(url)
        self.url = url
        self.host = u.hostname or "localhost"
        self.port = u.port or 5672
        self.user = unquote(u.username or "guest")
        self.password = unquote(u.password or "guest")
        self.vhost = unquote(u.path[1:]) or "/"

    def connection(self, **kwargs: Any) -> Connection:
        kwargs.setdefault("virtual_host", self.vhost)
        return Connection(self.host, self.user, kwargs.pop("password", self.password), port=self.port,
                          **kwargs)

    def uri(self, **query: Any) -> str:
        """The URL with ``query`` options added (UriConnection reads heartbeat, timeout, ... there)."""
        u = urlsplit(self.url)
        extra = "&".join(f"{k}={v}" for k, v in query.items())
        joined = "&".join(part for part in (u.query, extra) if part)
        return urlunsplit((u.scheme, u.netloc, u.path or "/", joined, u.fragment))


@pytest.fixture
def target(hare_url: str) -> Target:
    return Target(hare_url)


@pytest.fixture
def conn(hare_url: str) -> Iterator[UriConnection]:
    c = UriConnection(hare_url)
    yield c
    c.close()


@pytest.fixture
def ch(conn: UriConnection) -> Channel:
    return conn.channel()


@pytest.fixture
def pub(conn: UriConnection) -> Channel:
    """A publisher channel in confirm mode: each message is in its queues when publish returns."""
    c = conn.channel()
    c.confirm_deliveries()
    return c


def temp_queue(ch: Channel, arguments: dict[str, Any] | None = None) -> str:
    return ch.queue.declare("", exclusive=True, arguments=arguments)["queue"]


def counts(conn: Connection, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) of a queue, by a passive declare on a channel of its own."""
    c = conn.channel()
    try:
        ok = c.queue.declare(queue, passive=True)
    finally:
        c.close()
    return ok["message_count"], ok["consumer_count"]


def ready(conn: Connection, queue: str) -> int:
    return counts(conn, queue)[0]


def wait_until(cond: Callable[[], Any], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def pump_until(ch: Channel, got: list[Any], n: int, timeout: float = TIMEOUT,
               auto_decode: bool = True) -> None:
    """Run the channel's consumer callbacks until ``got`` holds at least ``n`` items."""
    deadline = time.monotonic() + timeout
    while len(got) < n:
        assert time.monotonic() < deadline, f"got {len(got)} messages, expected {n}"
        ch.process_data_events(auto_decode=auto_decode)


def pump_for(ch: Channel, seconds: float = 0.3) -> None:
    """Run the consumer callbacks for a while (to see that nothing more arrives)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ch.process_data_events()


def closed_text(ch: Channel, text: str) -> str:
    return f"Channel {ch.channel_id} was closed by remote server: {text}"


# -- connections -----------------------------------------------------------------------------------


def test_connection_and_uri_connection_open_and_close(target: Target) -> None:
    conn = target.connection()
    try:
        assert conn.is_open and not conn.is_closed
        props = conn.server_properties
        assert props["product"] == "RabbitMQ"
        caps = props["capabilities"]
        for cap in ("publisher_confirms", "basic.nack", "consumer_cancel_notify",
                    "exchange_exchange_bindings", "authentication_failure_close", "per_consumer_qos",
                    "direct_reply_to"):
            assert caps[cap] is True, cap
        assert (conn.max_frame_size, conn.max_allowed_channels) == (131072, 2047)
        first, second = conn.channel(), conn.channel()
        assert (first.channel_id, second.channel_id) == (1, 2)
        assert first.is_open and second.is_open
        first.close()
        assert first.is_closed and second.is_open and conn.is_open
        assert second.queue.declare("", exclusive=True)["queue"].startswith("amq.gen-")
    finally:
        conn.close()
    assert conn.is_closed and second.is_closed
    with pytest.raises(AMQPConnectionError, match="connection closed"):
        conn.channel()

    with UriConnection(target.uri(heartbeat=30, timeout=5)) as uri_conn:
        assert uri_conn.is_open
        assert (uri_conn.parameters["heartbeat"], uri_conn.parameters["timeout"]) == (30, 5)
        assert uri_conn.parameters["virtual_host"] == target.vhost
        with uri_conn.channel() as c:
            q = temp_queue(c)
            assert c.basic.publish("via-uri", q) is None
            wait_until(lambda: ready(uri_conn, q) == 1)
            assert c.basic.get(q, no_ack=True).body == "via-uri"
        assert c.is_closed and uri_conn.is_open
    assert uri_conn.is_closed


def test_clean_close_logs_no_warning(target: Target, caplog: pytest.LogCaptureFixture) -> None:
    # amqpstorm sends connection.close, waits for close-ok, then closes the socket itself; a broker
    # that drops the socket first makes its reader thread log "Stopping inbound thread due to
    # connection closed by server" (with a traceback) on every close. RabbitMQ waits for the client.
    caplog.set_level(logging.WARNING, logger="amqpstorm")
    for make in (target.connection, lambda: UriConnection(target.url)) * 3:
        c = make()
        temp_queue(c.channel())
        c.close()
        assert c.is_closed
    assert [r.getMessage() for r in caplog.records] == []


def test_bad_credentials_and_missing_vhost_are_refused(target: Target) -> None:
    with pytest.raises(AMQPConnectionError) as info:
        target.connection(password=target.password + "-wrong", timeout=5)
    assert info.value.error_code == 403 and info.value.error_type == "ACCESS-REFUSED"
    assert str(info.value).startswith("Connection was closed by remote server: ACCESS_REFUSED - Login was "
                                      "refused using authentication mechanism PLAIN")
    vhost = unique_name("vhost")
    with pytest.raises(AMQPConnectionError) as info:
        target.connection(virtual_host=vhost, timeout=5)
    assert info.value.error_code == 530 and info.value.error_type == "NOT-ALLOWED"
    assert str(info.value) == f"Connection was closed by remote server: NOT_ALLOWED - vhost {vhost} not found"


# -- queues ----------------------------------------------------------------------------------------


def test_queue_declare_server_named_and_passive_missing(target: Target, conn: UriConnection,
                                                         ch: Channel) -> None:
    ok = ch.queue.declare("", exclusive=True)
    assert ok["queue"].startswith("amq.gen-") and len(ok["queue"]) == len("amq.gen-") + 22
    assert (ok["message_count"], ok["consumer_count"]) == (0, 0)
    assert ch.queue.declare(ok["queue"], passive=True) == ok

    missing = unique_name("missing")
    with pytest.raises(AMQPChannelError) as info:
        ch.queue.declare(missing, passive=True)
    assert info.value.error_code == 404 and info.value.error_type == "NOT-FOUND"
    assert str(info.value) == closed_text(ch, f"NOT_FOUND - no queue '{missing}' in vhost '{target.vhost}'")
    assert ch.is_closed and conn.is_open
    with pytest.raises(AMQPChannelError):
        ch.basic.publish("on a closed channel", missing)

    # the connection stays usable: a new channel, a named queue, an inequivalent redeclare
    c = conn.channel()
    name = unique_name("storm")
    try:
        assert c.queue.declare(name) == {"queue": name, "message_count": 0, "consumer_count": 0}
        assert c.queue.declare(name, passive=True) == {"queue": name, "message_count": 0, "consumer_count": 0}
        assert ch.queue is not c.queue and counts(conn, ok["queue"]) == (0, 0)
        with pytest.raises(AMQPChannelError) as info:
            c.queue.declare(name, durable=True)
        assert info.value.error_code == 406 and info.value.error_type == "PRECONDITION-FAILED"
        assert str(info.value) == closed_text(
            c, f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{name}' in vhost "
               f"'{target.vhost}': received 'true' but current is 'false'")
        assert c.is_closed and conn.is_open
    finally:
        conn.channel().queue.delete(name)
    with pytest.raises(AMQPChannelError) as info:
        conn.channel().queue.declare(name, passive=True)
    assert info.value.error_code == 404


def test_queue_purge_and_delete_report_counts(target: Target, conn: UriConnection, pub: Channel) -> None:
    name = unique_name("storm")
    ch = conn.channel()
    ch.queue.declare(name)
    try:
        for i in range(3):
            assert pub.basic.publish(f"p{i}", name) is True
        assert ch.queue.purge(name) == {"message_count": 3}
        assert ch.queue.purge(name) == {"message_count": 0}
        for i in range(2):
            assert pub.basic.publish(f"d{i}", name) is True
        with pytest.raises(AMQPChannelError) as info:
            ch.queue.delete(name, if_empty=True)
        assert info.value.error_code == 406
        assert str(info.value) == closed_text(
            ch, f"PRECONDITION_FAILED - queue '{name}' in vhost '{target.vhost}' not empty")

        consumer = conn.channel()
        consumer.basic.qos(prefetch_count=1)
        tag = consumer.basic.consume(lambda message: None, name, consumer_tag="storm-consumer")
        assert tag == "storm-consumer" and consumer.consumer_tags == [tag]
        wait_until(lambda: counts(conn, name) == (1, 1))  # one message went to the consumer, unacked
        ch = conn.channel()
        with pytest.raises(AMQPChannelError) as info:
            ch.queue.delete(name, if_unused=True)
        assert info.value.error_code == 406
        assert str(info.value) == closed_text(
            ch, f"PRECONDITION_FAILED - queue '{name}' in vhost '{target.vhost}' in use")

        # deleting under a consumer: the count is the ready messages; the consumer is cancelled
        ch = conn.channel()
        assert ch.queue.delete(name) == {"message_count": 1}
        wait_until(lambda: consumer.consumer_tags == [])
        assert consumer.is_open
    finally:
        conn.channel().queue.delete(name)
    with pytest.raises(AMQPChannelError) as info:
        ch.queue.declare(name, passive=True)
    assert info.value.error_code == 404


# -- publish and get -------------------------------------------------------------------------------

HEADERS: dict[str, Any] = {
    "str": "value",
    "empty": "",
    "unicode": "gr\u00fc\u00dfe \u2713",
    "byte": 7,
    "short": -300,
    "ushort": 40000,
    "int": -70000,
    "uint": 3_000_000_000,
    "long": 2**40,
    "negative_long": -(2**40),
    "float": 1.5,
    "decimal": Decimal("3.14"),
    "true": True,
    "false": False,
    "void": None,
    "when": datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC),
    "bytes": bytearray(b"\x00\x01\xfe\xff"),
    "nested": {"level": 2, "inner": {"list": [1, "two", True, {"deep": [3.5, None, -1]}]}},
    "array": [1, -2, 2**33, "three", False, [4, [5]], {"k": "v"}],
    "empty_table": {},
    "empty_array": [],
}


def test_publish_and_get_round_trip_body_and_properties(target: Target, conn: UriConnection, ch: Channel,
                                                        pub: Channel) -> None:
    q = temp_queue(ch)
    body = '{"order": 17, "note": "h\u00e9llo \u2603"}'
    props = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "headers": HEADERS,
        "delivery_mode": 2,
        "priority": 7,
        "correlation_id": "corr-17",
        "reply_to": "replies",
        "expiration": "60000",
        "message_id": "msg-17",
        "timestamp": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        "message_type": "order.created",
        "user_id": target.user,
        "app_id": "amqpstorm-test",
    }
    assert pub.basic.publish(body, q, properties=dict(props)) is True
    assert pub.basic.publish(b"\x00\xffraw", q) is True
    assert counts(conn, q) == (2, 0)

    m = ch.basic.get(q, auto_decode=False)
    assert isinstance(m, Message)
    assert m.body == body.encode()
    assert m.method == {"delivery_tag": 1, "redelivered": False, "exchange": "", "routing_key": q,
                        "message_count": 1}
    got = {k: v for k, v in m.properties.items() if v not in (None, "")}
    assert got == props
    assert m.properties["headers"] == HEADERS
    assert type(m.properties["headers"]["bytes"]) is bytearray
    assert type(m.properties["headers"]["decimal"]) is Decimal
    assert (m.correlation_id, m.message_id, m.priority, m.delivery_mode, m.expiration) == (
        "corr-17", "msg-17", 7, 2, "60000")
    assert (m.delivery_tag, m.redelivered) == (1, False)
    m.ack()

    raw = ch.basic.get(q)  # auto_decode: bodies that are not UTF-8 stay bytes
    assert raw.body == b"\x00\xffraw" and raw.content_encoding == "utf-8"  # amqpstorm's default
    assert raw.method["message_count"] == 0 and raw.delivery_tag == 2
    raw.ack()
    assert ch.basic.get(q) is None
    assert counts(conn, q) == (0, 0)

    # Message.create fills in correlation_id, message_id and timestamp; Message.publish sends it
    created = Message.create(pub, "made by Message.create", {"content_type": "text/plain"})
    assert created.publish(q) is True
    m = ch.basic.get(q, no_ack=True)
    assert m.body == "made by Message.create" and m.content_type == "text/plain"
    assert (m.correlation_id, m.message_id) == (created.correlation_id, created.message_id)
    assert m.timestamp == created.timestamp.replace(microsecond=0)
    assert m.to_dict()["method"]["delivery_tag"] == 3


def test_message_expiration_property_is_honoured(conn: UriConnection, ch: Channel, pub: Channel) -> None:
    q = temp_queue(ch)
    assert pub.basic.publish("short-lived", q, properties={"expiration": "50"}) is True
    assert pub.basic.publish("long-lived", q, properties={"expiration": "60000"}) is True
    time.sleep(0.2)
    m = ch.basic.get(q, no_ack=True)
    assert (m.body, m.expiration) == ("long-lived", "60000")
    assert ch.basic.get(q) is None


# -- consumers -------------------------------------------------------------------------------------


def test_consume_with_prefetch_and_manual_ack(conn: UriConnection, ch: Channel, pub: Channel) -> None:
    q = temp_queue(ch)
    bodies = [f"m{i}" for i in range(20)]
    for b in bodies:
        assert pub.basic.publish(b, q) is True
    ch.basic.qos(prefetch_count=5)
    got: list[Message] = []
    tag = ch.basic.consume(got.append, q)
    assert ch.consumer_tags == [tag] and tag.startswith("amq.ctag-")
    pump_until(ch, got, 5)
    pump_for(ch, 0.3)
    assert len(got) == 5  # the prefetch window holds the rest back
    assert counts(conn, q) == (15, 1)

    acked = 0
    deadline = time.monotonic() + TIMEOUT
    while acked < len(bodies):
        assert time.monotonic() < deadline, f"{len(got)} of {len(bodies)} delivered"
        assert len(got) - acked <= 5
        for m in got[acked:]:
            m.ack()
        acked = len(got)
        ch.process_data_events()
    pump_for(ch, 0.3)
    assert [m.body for m in got] == bodies  # each once, in order
    assert [m.delivery_tag for m in got] == list(range(1, 21))
    assert {m.method["consumer_tag"] for m in got} == {tag}
    assert not any(m.redelivered for m in got)
    assert ch.basic.cancel(tag) == {"consumer_tag": tag}
    assert ch.consumer_tags == []
    assert counts(conn, q) == (0, 0)


def test_start_consuming_until_the_callback_stops_it(conn: UriConnection, ch: Channel, pub: Channel) -> None:
    q = temp_queue(ch)
    for i in range(6):
        pub.basic.publish(f"s{i}", q)
    got: list[str] = []

    def on_message(message: Message) -> None:
        got.append(message.body)
        message.ack()
        if len(got) == 6:
            message.channel.stop_consuming()

    ch.basic.qos(prefetch_count=2)
    ch.basic.consume(on_message, q)
    ch.start_consuming()  # returns once stop_consuming cancelled the consumer
    assert got == [f"s{i}" for i in range(6)]
    assert ch.consumer_tags == [] and ch.is_open
    assert counts(conn, q) == (0, 0)


def test_build_inbound_messages_generator(conn: UriConnection, ch: Channel, pub: Channel) -> None:
    q = temp_queue(ch)
    for i in range(8):
        pub.basic.publish(f"g{i}", q, properties={"headers": {"i": i}})
    ch.basic.qos(prefetch_count=3)
    tag = ch.basic.consume(queue=q)  # no callback: messages are read off the generator
    got = []
    for message in ch.build_inbound_messages(break_on_empty=True, empty_timeout=0.5):
        got.append((message.body, message.properties["headers"]["i"], message.delivery_tag))
        message.ack()
    assert got == [(f"g{i}", i, i + 1) for i in range(8)]
    ch.basic.cancel(tag)
    assert counts(conn, q) == (0, 0)
    # to_tuple: (body, channel, method, properties)
    pub.basic.publish("as-tuple", q)
    ch.basic.consume(queue=q, no_ack=True)
    body, channel, method, properties = next(ch.build_inbound_messages(to_tuple=True))
    assert (body, channel, method["routing_key"], properties["content_encoding"]) == (b"as-tuple", ch, q,
                                                                                    "utf-8")


def test_reject_and_nack_requeue_then_dead_letter(conn: UriConnection, ch: Channel, pub: Channel) -> None:
    dlx = unique_name("dlx")
    ch.exchange.declare(dlx, "fanout")
    try:
        dlq = temp_queue(ch)
        ch.queue.bind(dlq, dlx)
        work = temp_queue(ch, {"x-dead-letter-exchange": dlx})
        for body in ("a", "b", "c", "d"):
            assert pub.basic.publish(body, work, properties={"headers": {"origin": body}}) is True

        a = ch.basic.get(work)
        assert (a.body, a.redelivered) == ("a", False)
        a.reject(requeue=True)
        a = ch.basic.get(work)
        assert (a.body, a.redelivered) == ("a", True)
        b = ch.basic.get(work)
        assert (b.body, b.redelivered) == ("b", False)
        b.nack(requeue=True)
        b = ch.basic.get(work)
        assert (b.body, b.redelivered) == ("b", True)

        # nack with multiple: every unacked message up to d comes back, in queue order
        c, d = ch.basic.get(work), ch.basic.get(work)
        assert [(c.body, c.redelivered), (d.body, d.redelivered)] == [("c", False), ("d", False)]
        ch.basic.nack(d.delivery_tag, multiple=True, requeue=True)
        a, b, c, d = (ch.basic.get(work) for _ in range(4))
        assert [(m.body, m.redelivered) for m in (a, b, c, d)] == [("a", True), ("b", True), ("c", True),
                                                                   ("d", True)]
        assert ch.basic.get(work) is None

        # without requeue: into the dead-letter exchange, with an x-death record
        before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        a.reject(requeue=False)
        b.nack(requeue=False)
        ch.basic.nack(d.delivery_tag, multiple=True, requeue=False)  # c and d
        wait_until(lambda: ready(conn, dlq) == 4)
        assert counts(conn, work) == (0, 0)
        dead = [ch.basic.get(dlq, no_ack=True) for _ in range(4)]
        assert [m.body for m in dead] == ["a", "b", "c", "d"]
        for m in dead:
            assert (m.method["exchange"], m.method["routing_key"], m.redelivered) == (dlx, work, False)
            headers = m.properties["headers"]
            (death,) = headers["x-death"]
            when = death.pop("time")
            assert isinstance(when, datetime.datetime)
            assert before - datetime.timedelta(seconds=1) <= when <= datetime.datetime.now(datetime.UTC)
            assert death == {"count": 1, "reason": "rejected", "queue": work, "exchange": "",
                             "routing-keys": [work]}
            assert headers["origin"] == m.body
            assert (headers["x-first-death-reason"], headers["x-first-death-queue"],
                    headers["x-first-death-exchange"]) == ("rejected", work, "")
    finally:
        conn.channel().exchange.delete(dlx)


# -- confirms, returns, transactions ---------------------------------------------------------------


def test_publisher_confirms_and_mandatory_returns(target: Target, conn: UriConnection, ch: Channel) -> None:
    q = temp_queue(ch)
    assert ch.confirm_deliveries() == {}
    assert ch.confirming_deliveries is True
    assert ch.basic.publish("one", q) is True
    assert ch.basic.publish("two", q, mandatory=True) is True
    assert ch.basic.publish("dropped", unique_name("nowhere")) is True  # unroutable, not mandatory: acked

    # mandatory and unroutable: basic.return then basic.ack; amqpstorm raises the return
    key = unique_name("nowhere")
    with pytest.raises(AMQPMessageError) as info:
        ch.basic.publish("returned", key, exchange="amq.direct", mandatory=True)
    assert info.value.error_code == 312 and info.value.error_type == "NO-ROUTE"
    assert str(info.value) == (f"Message not delivered: NO_ROUTE (312) to queue '{key}' from exchange "
                               "'amq.direct'")
    assert ch.is_open
    assert ch.basic.publish("three", q) is True
    assert counts(conn, q) == (3, 0)

    # without confirms the return comes back on its own: amqpstorm raises it on the next channel call
    plain = conn.channel()
    assert plain.basic.publish("returned", key, exchange="amq.direct", mandatory=True) is None
    wait_until(lambda: plain.exceptions)  # the basic.return arrived
    with pytest.raises(AMQPMessageError) as info:
        plain.basic.publish("not sent", q)
    assert info.value.error_code == 312
    assert plain.is_open
    assert plain.basic.publish("four", q) is None
    wait_until(lambda: ready(conn, q) == 4)
    assert [ch.basic.get(q, no_ack=True).body for _ in range(4)] == ["one", "two", "three", "four"]

    # publishing to a missing exchange: the channel closes with 404 while amqpstorm waits for the ack
    missing = unique_name("x")
    with pytest.raises(AMQPChannelError) as info:
        ch.basic.publish("x", "k", exchange=missing)
    assert info.value.error_code == 404
    assert str(info.value) == closed_text(ch, f"NOT_FOUND - no exchange '{missing}' in vhost "
                                              f"'{target.vhost}'")
    assert ch.is_closed and conn.is_open


def test_transactions_commit_and_rollback(conn: UriConnection, ch: Channel) -> None:
    q = temp_queue(ch)
    assert ch.tx.select() == {}
    ch.basic.publish("t1", q)
    ch.basic.publish("t2", q)
    assert ready(conn, q) == 0  # held until the commit
    assert ch.tx.commit() == {}
    assert ready(conn, q) == 2
    ch.basic.publish("rolled-back", q)
    assert ch.tx.rollback() == {}
    assert ready(conn, q) == 2

    with ch.tx:  # select, and commit on leaving the block
        ch.basic.publish("t3", q)
        assert ready(conn, q) == 2
    assert ready(conn, q) == 3
    with pytest.raises(RuntimeError), ch.tx:  # rolled back on an exception
        ch.basic.publish("rolled-back-too", q)
        raise RuntimeError("abandon")
    assert ready(conn, q) == 3

    # acks are transactional too: a rolled-back ack leaves the message unacked
    m = ch.basic.get(q)
    assert m.body == "t1"
    m.ack()
    ch.tx.rollback()
    assert counts(conn, q) == (2, 0)
    ch.basic.recover(requeue=True)
    wait_until(lambda: ready(conn, q) == 3)
    m = ch.basic.get(q)
    assert (m.body, m.redelivered) == ("t1", True)
    m.ack()
    ch.tx.commit()
    rest = [ch.basic.get(q) for _ in range(2)]
    assert [r.body for r in rest] == ["t2", "t3"]
    ch.basic.ack(rest[-1].delivery_tag, multiple=True)
    ch.tx.commit()
    assert ch.basic.get(q) is None
    assert counts(conn, q) == (0, 0)


# -- exchanges -------------------------------------------------------------------------------------


def test_exchange_types_bindings_and_exchange_to_exchange(target: Target, conn: UriConnection, ch: Channel,
                                                          pub: Channel) -> None:
    direct, topic, fanout, headers = (unique_name(k) for k in ("direct", "topic", "fanout", "headers"))
    exchanges = {direct: "direct", topic: "topic", fanout: "fanout", headers: "headers"}
    try:
        for name, kind in exchanges.items():
            assert ch.exchange.declare(name, kind) == {}
            assert ch.exchange.declare(name, kind, passive=True) == {}
        qs = {k: temp_queue(ch) for k in ("direct", "topic", "fanout", "all", "any")}
        ch.queue.bind(qs["direct"], direct, "info")
        ch.queue.bind(qs["direct"], direct, "warn")
        ch.queue.bind(qs["topic"], topic, "log.*.error")
        ch.queue.bind(qs["topic"], topic, "audit.#")
        ch.queue.bind(qs["fanout"], fanout, "ignored")
        match = {"format": "pdf", "type": "report"}
        ch.queue.bind(qs["all"], headers, arguments={"x-match": "all", **match})
        ch.queue.bind(qs["any"], headers, arguments={"x-match": "any", **match})
        assert ch.exchange.bind(fanout, topic, "log.#") == {}  # topic --log.#--> fanout

        def send(exchange: str, key: str, body: str, hdrs: dict[str, Any] | None = None) -> None:
            assert pub.basic.publish(body, key, exchange=exchange, properties={"headers": hdrs or {}}) is True

        def drain() -> dict[str, list[str]]:
            out = {}
            for label, q in qs.items():
                out[label] = []
                while (m := ch.basic.get(q, no_ack=True)) is not None:
                    out[label].append(m.body)
            return out

        send(direct, "info", "d-info")
        send(direct, "warn", "d-warn")
        send(direct, "debug", "d-debug")
        for key in ("log.db.error", "log.db.info", "log.error", "audit", "audit.a.b", "other"):
            send(topic, key, f"t-{key}")
        send(fanout, "anything", "f-direct")
        send(headers, "", "h-both", {"format": "pdf", "type": "report", "extra": 1})
        send(headers, "", "h-one", {"format": "pdf", "type": "invoice"})
        send(headers, "", "h-none", {"format": "zip"})
        assert drain() == {
            "direct": ["d-info", "d-warn"],
            "topic": ["t-log.db.error", "t-audit", "t-audit.a.b"],
            "fanout": ["t-log.db.error", "t-log.db.info", "t-log.error", "f-direct"],
            "all": ["h-both"],
            "any": ["h-both", "h-one"],
        }

        assert ch.queue.unbind(qs["direct"], direct, "warn") == {}
        assert ch.queue.unbind(qs["topic"], topic, "audit.#") == {}
        assert ch.queue.unbind(qs["any"], headers, arguments={"x-match": "any", **match}) == {}
        assert ch.exchange.unbind(fanout, topic, "log.#") == {}
        send(direct, "info", "d-info")
        send(direct, "warn", "d-warn")
        send(topic, "log.x.error", "t-log.x.error")
        send(topic, "audit.x", "t-audit.x")
        send(headers, "", "h-both", {"format": "pdf", "type": "report"})
        send(headers, "", "h-one", {"format": "pdf"})
        assert drain() == {"direct": ["d-info"], "topic": ["t-log.x.error"], "fanout": [], "all": ["h-both"],
                           "any": []}

        # an exchange of another type under the same name: 406
        with pytest.raises(AMQPChannelError) as info:
            ch.exchange.declare(direct, "topic")
        assert info.value.error_code == 406
        assert str(info.value) == closed_text(
            ch, f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{direct}' in vhost "
                f"'{target.vhost}': received 'topic' but current is 'direct'")
    finally:
        cleanup = conn.channel()
        for name in exchanges:
            assert cleanup.exchange.delete(name) == {}
    with pytest.raises(AMQPChannelError) as info:
        cleanup.exchange.declare(topic, "topic", passive=True)
    assert info.value.error_code == 404
    assert str(info.value) == closed_text(cleanup, f"NOT_FOUND - no exchange '{topic}' in vhost "
                                                   f"'{target.vhost}'")


# -- large bodies ----------------------------------------------------------------------------------


def test_two_megabyte_body_round_trips(conn: UriConnection, ch: Channel, pub: Channel) -> None:
    size = 2 * 1024 * 1024
    body = (bytes(range(251)) * (size // 251 + 1))[:size]  # 251: no period that lines up with frames
    q = temp_queue(ch)
    assert pub.basic.publish(body, q, properties={"content_type": "application/octet-stream"}) is True
    assert pub.basic.publish(body[::-1], q) is True
    m = ch.basic.get(q, no_ack=True, auto_decode=False)
    assert len(m.body) == size and m.body == body
    assert m.content_type == "application/octet-stream"
    got: list[Message] = []
    ch.basic.consume(got.append, q, no_ack=True)
    pump_until(ch, got, 1, auto_decode=False)
    assert got[0].body == body[::-1]


# -- RPC -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reply_mode", ["reply-queue", "direct-reply-to"])
def test_rpc_request_reply_with_correlation_id(target: Target, conn: UriConnection, reply_mode: str) -> None:
    rpc_queue = unique_name("rpc")
    n = 5
    server = target.connection()
    server_ready = threading.Event()
    server_errors: list[BaseException] = []
    seen_reply_to: list[str] = []

    def serve() -> None:
        try:
            sch = server.channel()
            sch.queue.declare(rpc_queue, auto_delete=True)
            sch.basic.qos(prefetch_count=1)
            handled = 0

            def on_request(request: Message) -> None:
                nonlocal handled
                seen_reply_to.append(request.reply_to)
                reply = Message.create(request.channel, request.body.upper(),
                                       {"correlation_id": request.correlation_id})
                reply.publish(request.reply_to)
                request.ack()
                handled += 1
                if handled == n:
                    request.channel.stop_consuming()

            sch.basic.consume(on_request, rpc_queue)
            server_ready.set()
            sch.start_consuming()
        except BaseException as exc:  # handed to the test thread
            server_errors.append(exc)
            server_ready.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert server_ready.wait(TIMEOUT) and not server_errors
        ch = conn.channel()
        replies: dict[str, str] = {}
        if reply_mode == "direct-reply-to":
            reply_to = "amq.rabbitmq.reply-to"
            ch.basic.consume(lambda m: replies.__setitem__(m.correlation_id, m.body), reply_to, no_ack=True)
        else:
            reply_to = temp_queue(ch)
            ch.basic.consume(lambda m: (replies.__setitem__(m.correlation_id, m.body), m.ack()), reply_to)
        requests = {}
        for i in range(n):
            request = Message.create(ch, f"request-{i}", {"reply_to": reply_to})
            request.publish(rpc_queue)
            requests[request.correlation_id] = f"REQUEST-{i}"
        assert len(requests) == n
        deadline = time.monotonic() + TIMEOUT
        while len(replies) < n:
            assert time.monotonic() < deadline, f"{len(replies)} of {n} replies"
            ch.process_data_events()
        assert replies == requests
        thread.join(TIMEOUT)
        assert not thread.is_alive() and not server_errors
        if reply_mode == "direct-reply-to":
            assert all(r.startswith("amq.rabbitmq.reply-to.") for r in seen_reply_to)
            assert len(set(seen_reply_to)) == 1
        else:
            assert seen_reply_to == [reply_to] * n
    finally:
        server.close()
        thread.join(TIMEOUT)
        cleanup = conn.channel()
        cleanup.queue.delete(rpc_queue)


# -- heartbeats ------------------------------------------------------------------------------------


def test_heartbeat_of_two_seconds_keeps_an_idle_connection_open(target: Target) -> None:
    # amqpstorm sends its own heartbeat value in tune-ok and counts the connection dead when two
    # one-second checks in a row saw nothing from the broker: the broker must send heartbeats
    by_uri = UriConnection(target.uri(heartbeat=2))
    by_args = target.connection(heartbeat=2)
    try:
        channels = []
        for c in (by_uri, by_args):
            assert c.parameters["heartbeat"] == 2
            ch = c.channel()
            channels.append((ch, temp_queue(ch)))
        time.sleep(5)
        for c, (ch, q) in zip((by_uri, by_args), channels, strict=True):
            assert c.is_open and not c.exceptions
            c.check_for_errors()
            ch.check_for_errors()
            ch.basic.publish("after-idle", q)
            wait_until(lambda c=c, q=q: ready(c, q) == 1)
            assert ch.basic.get(q, no_ack=True).body == "after-idle"
    finally:
        by_uri.close()
        by_args.close()
