"""The delivery acknowledgement timeout (``consumer_timeout``): a channel that keeps a delivery
unacknowledged too long is closed with 406 and its unacked messages are requeued, with RabbitMQ
3.10's reply text. RabbitMQ checks every minute (channel_tick_interval), so these tests use a
private hare with a short timeout; the per-queue timeout (x-consumer-timeout, the consumer-timeout
policy key) is RabbitMQ 3.12's, which 3.10 lacks."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from rawamqp import RawClient, raw_client, raw_deliveries
from support import Inbox, closed_with, connect, hare_only, publish, unique_name

from hare.amqp import spec
from hare.broker.broker import BrokerConfig
from hare.cli.config import ServeOptions, load_config
from hare.testing import EmbeddedBroker

pytestmark = hare_only

TIMEOUT = 300  # ms


def timeout_text(channel: int, timeout: int) -> str:
    return (f"PRECONDITION_FAILED - delivery acknowledgement on channel {channel} timed out. Timeout "
            f"value used: {timeout} ms. This timeout value can be configured, see consumers doc guide "
            "to learn more")


@pytest.fixture
def broker(hare_broker_factory: Callable[..., EmbeddedBroker]) -> EmbeddedBroker:
    """A private hare whose consumer timeout is TIMEOUT ms."""
    return hare_broker_factory(config=BrokerConfig(consumer_timeout=TIMEOUT))


@pytest.fixture
def conn(broker: EmbeddedBroker) -> Iterator[BlockingConnection]:
    c = connect(broker.url)
    yield c
    if c.is_open:
        c.close()


def pump_until_closed(conn: BlockingConnection, ch: BlockingChannel, timeout: float = 3.0) -> float:
    """Pump ``conn`` until the broker closed ``ch``: the seconds it took."""
    start = time.monotonic()
    while ch.is_open:
        assert time.monotonic() - start < timeout, "the channel is still open"
        conn.process_data_events(time_limit=0.02)
    return time.monotonic() - start


def stays_open(conn: BlockingConnection, ch: BlockingChannel, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.02)
    return ch.is_open


def expect_timeout_close(c: RawClient, channel: int, timeout: int) -> float:
    """Read until the broker's channel.close; check it is the timeout's; answer close-ok."""
    start = time.monotonic()
    while True:
        ch, m = c.read_method(timeout=5)
        if isinstance(m, spec.ChannelClose):
            break
        if isinstance(m, spec.BasicDeliver):
            c.read_content()
    assert ch == channel
    assert (m.reply_code, m.reply_text, m.class_id, m.method_id) == (
        406, timeout_text(channel, timeout), 0, 0)
    c.send_method(channel, spec.ChannelCloseOk())
    return time.monotonic() - start


def test_a_consumer_that_does_not_ack_has_its_channel_closed(broker: EmbeddedBroker,
                                                             conn: BlockingConnection) -> None:
    q = unique_name()
    admin = conn.channel()
    admin.queue_declare(q)
    with raw_client(broker.url, channels=2) as c:
        c.send_method(2, spec.BasicConsume(queue=q, consumer_tag="slow"))
        c.expect(spec.BasicConsumeOk)
        started = time.monotonic()
        publish(admin, q, b"m0", b"m1")
        assert [body for _, body in raw_deliveries(c, 2)] == [b"m0", b"m1"]
        expect_timeout_close(c, 2, TIMEOUT)
        held = time.monotonic() - started
        assert TIMEOUT / 1000 <= held < TIMEOUT / 1000 + 1.5
        # only that channel: channel 1 of the same connection still works
        c.send_method(1, spec.QueueDeclare(queue=q, passive=True))
        assert c.expect(spec.QueueDeclareOk).message_count == 2
    got = [admin.basic_get(q, auto_ack=True) for _ in range(2)]
    assert [(body, method.redelivered) for method, _, body in got] == [(b"m0", True), (b"m1", True)]


def test_basic_get_deliveries_count_too(conn: BlockingConnection) -> None:
    """As in RabbitMQ 3.10, a message taken with basic.get and not acked times out the same way."""
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish(ch, q, b"m0")
    method, _props, _body = ch.basic_get(q)
    assert method is not None
    assert pump_until_closed(conn, ch) >= 0
    other = conn.channel()
    assert other.queue_declare(q, passive=True).method.message_count == 1


def test_the_close_on_the_wire_after_basic_get(broker: EmbeddedBroker) -> None:
    q = unique_name()
    with raw_client(broker.url) as c:
        c.send_method(1, spec.QueueDeclare(queue=q, exclusive=True))
        c.expect(spec.QueueDeclareOk)
        c.publish(1, "", q, b"x")
        c.send_method(1, spec.BasicGet(queue=q))
        c.expect(spec.BasicGetOk)
        c.read_content()
        assert expect_timeout_close(c, 1, TIMEOUT) >= TIMEOUT / 1000 - 0.05


def test_acking_in_time_keeps_the_channel_open(conn: BlockingConnection) -> None:
    """Each delivery is acked within the timeout though the whole run takes several timeouts."""
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_qos(prefetch_count=1)
    acked: list[bytes] = []

    def slow_worker(chan: BlockingChannel, method: object, _props: object, body: bytes) -> None:
        time.sleep(TIMEOUT / 3000)
        chan.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]
        acked.append(body)

    ch.basic_consume(q, slow_worker)
    pub = conn.channel()
    pub.confirm_delivery()
    publish(pub, q, *[b"m%d" % i for i in range(8)])
    deadline = time.monotonic() + 5
    while len(acked) < 8:
        assert time.monotonic() < deadline
        conn.process_data_events(time_limit=0.02)
    assert ch.is_open and acked == [b"m%d" % i for i in range(8)]
    assert stays_open(conn, ch, 2 * TIMEOUT / 1000)  # a consumer that has nothing to ack is fine


def test_the_next_single_active_consumer_gets_the_requeued_messages_in_order(
        conn: BlockingConnection) -> None:
    admin = conn.channel()
    q = unique_name()
    admin.queue_declare(q, arguments={"x-single-active-consumer": True})
    stuck_ch = conn.channel()
    stuck = Inbox(conn)
    stuck_ch.basic_consume(q, stuck)
    worker_ch = conn.channel()
    worker = Inbox(conn)
    worker_ch.basic_consume(q, worker, auto_ack=True)
    publish(admin, q, b"m0", b"m1", b"m2")
    stuck.wait_for(3)
    pump_until_closed(conn, stuck_ch)
    worker.wait_for(3)
    assert [(d.body, d.method.redelivered) for d in worker.got] == [
        (b"m0", True), (b"m1", True), (b"m2", True)]
    assert worker_ch.is_open


def test_the_warning_says_where_and_how_to_change_it(conn: BlockingConnection,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish(ch, q, b"m0")
    ch.basic_consume(q, lambda *a: None)
    with caplog.at_level(logging.WARNING, logger="hare.channel"):
        pump_until_closed(conn, ch)
    [record] = [r for r in caplog.records if r.name == "hare.channel"]
    text = record.getMessage()
    assert record.levelno == logging.WARNING
    for part in (f"channel {ch.channel_number}", f"queue '{q}'", "vhost '/'", f"{TIMEOUT} ms",
                 "consumer_timeout", "x-consumer-timeout", "consumer-timeout", "docs/configuration.md"):
        assert part in text, part


def test_no_timeout_when_the_broker_has_none(hare_broker_factory: Callable[..., EmbeddedBroker]) -> None:
    b = hare_broker_factory(config=BrokerConfig(consumer_timeout=None))
    with connect(b.url) as c:
        ch = c.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        publish(ch, q, b"m0")
        inbox = Inbox(c)
        ch.basic_consume(q, inbox)
        inbox.wait_for(1)
        assert stays_open(c, ch, 0.6)


# -- per queue: x-consumer-timeout, the consumer-timeout policy key (RabbitMQ 3.12) ----------------


def test_x_consumer_timeout_sets_a_queue_s_timeout(hare_url: str) -> None:
    """On the shared broker (default 30 minutes): only the queue with the argument times out."""
    with connect(hare_url) as c:
        admin = c.channel()
        short, plain = unique_name(), unique_name()
        admin.queue_declare(short, exclusive=True, arguments={"x-consumer-timeout": 200})
        admin.queue_declare(plain, exclusive=True)
        publish(admin, short, b"s")
        publish(admin, plain, b"p")
        plain_ch, short_ch = c.channel(), c.channel()
        plain_ch.basic_consume(plain, lambda *a: None)
        short_ch.basic_consume(short, lambda *a: None)
        pump_until_closed(c, short_ch)
        assert plain_ch.is_open
        assert stays_open(c, plain_ch, 0.4)
    with raw_client(hare_url) as r:
        q = unique_name()
        r.send_method(1, spec.QueueDeclare(queue=q, exclusive=True, arguments={"x-consumer-timeout": 150}))
        r.expect(spec.QueueDeclareOk)
        r.publish(1, "", q, b"x")
        r.send_method(1, spec.BasicGet(queue=q))
        r.expect(spec.BasicGetOk)
        r.read_content()
        expect_timeout_close(r, 1, 150)


# 0 means no timeout; a longer queue timeout overrides the broker's
@pytest.mark.parametrize("timeout", [0, 3000], ids=["zero-means-none", "longer-than-the-broker-s"])
def test_x_consumer_timeout_keeps_the_channel_open(conn: BlockingConnection, timeout: int) -> None:
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True, arguments={"x-consumer-timeout": timeout}).method.queue
    publish(ch, q, b"m0")
    inbox = Inbox(conn)
    ch.basic_consume(q, inbox)
    inbox.wait_for(1)
    assert stays_open(conn, ch, 3 * TIMEOUT / 1000)


def test_the_consumer_timeout_policy_key(broker: EmbeddedBroker, conn: BlockingConnection) -> None:
    vhost = broker.broker.vhosts["/"]
    broker.call(vhost.set_policy, "ct", "^ct-", {"consumer-timeout": 150}, 0, "queues")
    with raw_client(broker.url) as r:
        q = unique_name("ct")
        r.send_method(1, spec.QueueDeclare(queue=q, exclusive=True))
        r.expect(spec.QueueDeclareOk)
        r.publish(1, "", q, b"x")
        r.send_method(1, spec.BasicGet(queue=q))
        r.expect(spec.BasicGetOk)
        r.read_content()
        expect_timeout_close(r, 1, 150)


@pytest.mark.parametrize("value", [-1, "60000", True])
def test_x_consumer_timeout_must_be_a_non_negative_integer(channel: BlockingChannel, value: object) -> None:
    q = unique_name()
    err = closed_with(channel, channel.queue_declare, q, arguments={"x-consumer-timeout": value})
    assert err.reply_code == 406
    assert err.reply_text.startswith(
        f"PRECONDITION_FAILED - invalid arg 'x-consumer-timeout' for queue '{q}' in vhost '/': ")
    if value == -1:
        assert err.reply_text.endswith(": {value_negative,-1}")


# -- configuration ----------------------------------------------------------------------------------


def test_the_default_is_rabbitmq_s_30_minutes() -> None:
    assert BrokerConfig().consumer_timeout == 1_800_000


@pytest.mark.parametrize(("line", "value"), [
    ("consumer_timeout = 3600000", 3_600_000),
    ("consumer_timeout = 1", 1),
    ("consumer_timeout = false", None),
])
def test_consumer_timeout_in_the_config_file(tmp_path: Path, line: str, value: int | None) -> None:
    f = tmp_path / "hare.conf"
    f.write_text(line + "\n")
    assert load_config(f, ServeOptions()).broker.consumer_timeout == value


@pytest.mark.parametrize("value", ["0", "-5", "30m", ""])
def test_consumer_timeout_must_be_positive_as_in_rabbitmq(tmp_path: Path, value: str) -> None:
    f = tmp_path / "hare.conf"
    f.write_text(f"consumer_timeout = {value}\n")
    with pytest.raises(ValueError, match="consumer_timeout"):
        load_config(f, ServeOptions())


def test_a_dropped_socket_after_a_timeout_is_fine(broker: EmbeddedBroker, conn: BlockingConnection) -> None:
    """The connection goes away right after its channel timed out: nothing is lost."""
    admin = conn.channel()
    q = unique_name()
    admin.queue_declare(q)
    c = raw_client(broker.url)
    c.send_method(1, spec.BasicConsume(queue=q, consumer_tag="t"))
    c.expect(spec.BasicConsumeOk)
    publish(admin, q, b"m0")
    raw_deliveries(c, 1)
    c.expect(spec.ChannelClose)
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    method, _props, body = admin.basic_get(q, auto_ack=True)
    assert (body, method.redelivered) == (b"m0", True)
    admin.queue_delete(q)
