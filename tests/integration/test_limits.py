"""Connection limits: handshake_timeout, connection_max, channel_max, frame_max and
max_message_size. Each limit reached gets its protocol error (or a closed socket) on the
connection that reached it, and never harms the others."""

from __future__ import annotations

import os
import threading
import time

import pika
import pytest
from rawamqp import Closed, RawClient
from support import wait_until

from hare.amqp import spec
from hare.amqp.frames import pack_header
from hare.broker.broker import BrokerConfig
from hare.testing import EmbeddedBroker

pytestmark = pytest.mark.skipif(bool(os.environ.get("HARE_TEST_URL")), reason="configures a private hare")

REFUSED = "NOT_ALLOWED - connection refused: node connection limit (2) is reached"


def raw(broker: EmbeddedBroker, channels: int = 1, frame_max: int = 131072) -> RawClient:
    c = RawClient("127.0.0.1", broker.port)
    c.handshake(frame_max=frame_max)
    for n in range(1, channels + 1):
        c.open_channel(n)
    return c


def ping(c: RawClient, ch: int = 1) -> None:
    c.send_method(ch, spec.ExchangeDeclare(exchange="amq.direct", type="direct", passive=True))
    c.expect(spec.ExchangeDeclareOk)


def start_ok(c: RawClient) -> spec.ConnectionTune:
    """Up to connection.tune: the protocol header and start-ok."""
    c.send(spec.PROTOCOL_HEADER)
    c.expect(spec.ConnectionStart)
    c.send_method(0, spec.ConnectionStartOk(client_properties={}, mechanism="PLAIN",
                                            response=b"\x00guest\x00guest", locale="en_US"))
    return c.expect(spec.ConnectionTune)  # type: ignore[return-value]


def expect_close(c: RawClient, code: int, text: str) -> None:
    """connection.close with that reply, then (after our close-ok) the socket closes."""
    close = c.expect(spec.ConnectionClose)
    assert (close.reply_code, close.reply_text) == (code, text)
    c.send_method(0, spec.ConnectionCloseOk())
    assert c.is_closed(2)


def test_handshake_timeout_drops_sockets_that_do_not_complete_it(hare_broker_factory) -> None:
    broker = hare_broker_factory(config=BrokerConfig(handshake_timeout=600))
    opened = raw(broker)  # a full handshake: the timeout no longer applies
    silent = RawClient("127.0.0.1", broker.port)  # sends nothing
    header = RawClient("127.0.0.1", broker.port)
    header.send(spec.PROTOCOL_HEADER)
    header.expect(spec.ConnectionStart)
    tuning = RawClient("127.0.0.1", broker.port)  # start-ok, but no tune-ok
    start_ok(tuning)
    started = time.monotonic()
    assert not silent.is_closed(0.3)  # not before its time
    for c in (silent, header, tuning):
        assert c.is_closed(3)
    assert 0.5 < time.monotonic() - started < 3
    time.sleep(0.3)
    ping(opened)  # the open connection is not touched, past the timeout too
    late = raw(broker)  # and new ones get the full timeout
    ping(late)
    for c in (opened, silent, header, tuning, late):
        c.close()


def test_handshake_timeout_infinity_keeps_a_silent_socket(hare_broker_factory) -> None:
    broker = hare_broker_factory(config=BrokerConfig(handshake_timeout=None))
    silent = RawClient("127.0.0.1", broker.port)
    assert not silent.is_closed(1)
    silent.send(spec.PROTOCOL_HEADER)
    silent.expect(spec.ConnectionStart)
    silent.close()


def test_connection_max_refuses_connection_open_and_spares_open_connections(hare_broker_factory) -> None:
    broker = hare_broker_factory(config=BrokerConfig(connection_max=2))
    first, second = raw(broker), raw(broker)
    third = RawClient("127.0.0.1", broker.port)
    start_ok(third)
    third.send_method(0, spec.ConnectionTuneOk(channel_max=2047, frame_max=131072, heartbeat=0))
    third.send_method(0, spec.ConnectionOpen(virtual_host="/"))
    expect_close(third, 530, REFUSED)
    with pytest.raises(pika.exceptions.AMQPConnectionError):  # pika: refused, the reason logged
        pika.BlockingConnection(pika.URLParameters(broker.url))
    ping(first)
    ping(second)
    second.send_method(0, spec.ConnectionClose(reply_code=200))
    second.expect(spec.ConnectionCloseOk)
    second.close()
    wait_until(lambda: broker.call(lambda: len(broker.broker.connections)) == 1)
    again = raw(broker)  # a place is free again
    ping(again)
    ping(first)
    first.close()
    again.close()


def test_configured_channel_max_and_frame_max_are_offered_and_enforced(hare_broker_factory) -> None:
    broker = hare_broker_factory(config=BrokerConfig(channel_max=3, frame_max=8192))
    bystander = raw(broker, frame_max=8192)
    c = RawClient("127.0.0.1", broker.port)
    tune = c.handshake(frame_max=8192)
    assert (tune.channel_max, tune.frame_max) == (3, 8192)
    for n in (1, 2, 3):
        c.open_channel(n)
    c.send_method(4, spec.ChannelOpen())
    expect_close(c, 530, "NOT_ALLOWED - number of channels opened (3) has reached the negotiated "
                         "channel_max (3)")
    big = raw(broker, frame_max=8192)
    big.send(pack_header(3, 1, 8193) + bytes(8193) + b"\xce")  # one octet over frame_max
    expect_close(big, 501, "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,8193,8184}")
    ok = raw(broker, frame_max=8192)
    ok.send_method(1, spec.QueueDeclare(queue="fm"))
    ok.expect(spec.QueueDeclareOk)
    ok.send_method(1, spec.BasicPublish(exchange="", routing_key="fm"))
    ok.send(pack_header(2, 1, 14) + b"\x00\x3c\x00\x00" + (8192).to_bytes(8, "big") + b"\x00\x00\xce")
    ok.send(pack_header(3, 1, 8192) + bytes(8192) + b"\xce")  # a payload of frame_max is taken
    ping(ok)
    for bad in (4095, 8193, 0):  # under 4096, over the offer, or no limit: the socket just closes
        t = RawClient("127.0.0.1", broker.port)
        start_ok(t)
        t.send_method(0, spec.ConnectionTuneOk(channel_max=3, frame_max=bad, heartbeat=0))
        t.send_method(0, spec.ConnectionOpen(virtual_host="/"))
        with pytest.raises(Closed):
            t.read_method(timeout=3)
        t.close()
    ping(bystander)
    for x in (bystander, c, big, ok):
        x.close()


def test_limits_reached_never_harm_a_healthy_client(hare_broker_factory) -> None:
    """While a pika client publishes and gets, other sockets hit every limit in turn."""
    broker = hare_broker_factory(config=BrokerConfig(
        handshake_timeout=500, connection_max=4, channel_max=3, frame_max=8192, max_message_size=10000))
    errors: list[BaseException] = []
    rounds = [0]
    stop = threading.Event()

    def healthy() -> None:
        try:
            conn = pika.BlockingConnection(pika.URLParameters(broker.url))
            ch = conn.channel()
            ch.confirm_delivery()
            q = ch.queue_declare("", exclusive=True).method.queue
            while not stop.is_set():
                body = b"%d" % rounds[0]
                ch.basic_publish("", q, body)
                method, _props, got = ch.basic_get(q, auto_ack=True)
                assert method is not None and got == body
                rounds[0] += 1
            conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    t = threading.Thread(target=healthy, daemon=True)
    t.start()
    wait_until(lambda: rounds[0] > 0 or bool(errors))

    def progress() -> None:  # the healthy client keeps going after each limit
        before = rounds[0]
        wait_until(lambda: rounds[0] > before + 5 or bool(errors))
        assert not errors, errors

    idle = [RawClient("127.0.0.1", broker.port) for _ in range(2)]  # handshake timeout
    for c in idle:
        assert c.is_closed(3)
    progress()
    others = [raw(broker, frame_max=8192), raw(broker, frame_max=8192)]
    c = raw(broker, frame_max=8192)  # with the healthy one: 4 of 4
    over = RawClient("127.0.0.1", broker.port)  # the fifth connection: refused
    start_ok(over)
    over.send_method(0, spec.ConnectionTuneOk(channel_max=3, frame_max=8192, heartbeat=0))
    over.send_method(0, spec.ConnectionOpen(virtual_host="/"))
    expect_close(over, 530, "NOT_ALLOWED - connection refused: node connection limit (4) is reached")
    progress()
    for n in (2, 3):
        c.open_channel(n)
    c.send_method(4, spec.ChannelOpen())  # channel_max
    expect_close(c, 530, "NOT_ALLOWED - number of channels opened (3) has reached the negotiated "
                         "channel_max (3)")
    progress()
    big = others.pop()
    big.send(pack_header(1, 1, 9000) + bytes(9000) + b"\xce")  # frame_max
    expect_close(big, 501, "FRAME_ERROR - type 1, all octets = <<>>: {frame_too_large,9000,8184}")
    progress()
    sized = others.pop()  # max_message_size: the channel closes, the connection stays
    sized.send_method(1, spec.BasicPublish(exchange="", routing_key="nowhere"))
    sized.send_content(1, bytes(10001), frame_max=8192)
    close = sized.expect(spec.ChannelClose)
    assert (close.reply_code, close.reply_text) == (
        406, "PRECONDITION_FAILED - message size 10001 is larger than configured max size 10000")
    sized.send_method(1, spec.ChannelCloseOk())
    sized.open_channel(1)
    ping(sized)
    progress()
    tune = RawClient("127.0.0.1", broker.port)  # a tune-ok the broker cannot take
    start_ok(tune)
    tune.send_method(0, spec.ConnectionTuneOk(channel_max=3, frame_max=4095, heartbeat=0))
    assert tune.is_closed(3)
    progress()
    stop.set()
    t.join(10)
    assert not errors and not t.is_alive()
    for x in (*idle, c, over, big, sized, tune):
        x.close()


def test_a_body_over_max_message_size_is_not_kept_while_it_arrives(hare_broker_factory) -> None:
    """RabbitMQ refuses such a publish (406) once its body is complete; hare gives the same answer
    but drops the body's frames as they come, so a huge declared size takes no memory."""
    broker = hare_broker_factory(config=BrokerConfig(max_message_size=1 << 20))
    c = raw(broker, channels=4)  # 4: for round trips while the others await their content
    c.send_method(1, spec.QueueDeclare(queue="big"))
    c.expect(spec.QueueDeclareOk)

    def start(ch: int, size: int, immediate: bool = False) -> None:
        c.send_method(ch, spec.BasicPublish(exchange="", routing_key="big", immediate=immediate))
        c.send(pack_header(2, ch, 14) + b"\x00\x3c\x00\x00" + size.to_bytes(8, "big") + b"\x00\x00\xce")

    def send_body(ch: int, n: int, round_trip: bool = True) -> None:
        for _ in range(n // 65536):
            c.send(pack_header(3, ch, 65536) + bytes(65536) + b"\xce")
        if round_trip:
            ping(c, 4)

    def held(ch: int) -> int:
        def count() -> int:
            (conn,) = broker.broker.connections
            return sum(len(p) for p in conn.channels[ch].pub_body)
        return broker.call(count)

    start(1, 1 << 20)  # at the limit: kept as it arrives
    send_body(1, 512 << 10)
    assert held(1) == 512 << 10
    start(2, 1 << 40)  # a TiB declared: nothing kept
    send_body(2, 4 << 20)
    assert held(2) == 0
    send_body(1, 512 << 10)  # the first completes and is routed
    c.send_method(3, spec.QueueDeclare(queue="big", passive=True))
    assert c.expect(spec.QueueDeclareOk).message_count == 1
    start(3, (1 << 20) + 1)
    send_body(3, 1 << 20)
    assert held(3) == 0
    c.send(pack_header(3, 3, 1) + b"x\xce")  # complete: refused as RabbitMQ refuses it
    close = c.expect(spec.ChannelClose)
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == (
        406, f"PRECONDITION_FAILED - message size {(1 << 20) + 1} is larger than configured max size "
             f"{1 << 20}", 60, 40)
    c.send_method(3, spec.ChannelCloseOk())
    c.open_channel(3)
    start(3, (1 << 20) + 65536, immediate=True)  # immediate is checked first, as RabbitMQ does
    send_body(3, (1 << 20) + 65536, round_trip=False)
    close = c.expect(spec.ConnectionClose)
    assert (close.reply_code, close.reply_text) == (540, "NOT_IMPLEMENTED - immediate=true")
    c.close()


def test_max_message_size_is_capped_at_512_mib_as_in_rabbitmq(hare_broker_factory) -> None:
    """A configured max_message_size over 512 MiB counts as 512 MiB: a body declared one octet
    over it is already known to be refused (not kept), one of 512 MiB is kept as it arrives."""
    broker = hare_broker_factory(config=BrokerConfig(max_message_size=1 << 30))
    c = raw(broker, channels=3)
    for ch, size in ((1, (512 << 20) + 1), (2, 512 << 20)):
        c.send_method(ch, spec.BasicPublish(exchange="", routing_key="nowhere"))
        c.send(pack_header(2, ch, 14) + b"\x00\x3c\x00\x00" + size.to_bytes(8, "big") + b"\x00\x00\xce")
        c.send(pack_header(3, ch, 65536) + bytes(65536) + b"\xce")
    ping(c, 3)

    def held() -> list[int]:
        (conn,) = broker.broker.connections
        return [sum(len(p) for p in conn.channels[ch].pub_body) for ch in (1, 2)]

    assert broker.call(held) == [0, 65536]
    c.close()
