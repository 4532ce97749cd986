"""Connection-level behaviour: handshake, tuning, authentication, heartbeats, shutdown."""

from __future__ import annotations

import logging
import time

import pika
import pytest
from rawamqp import RawClient
from support import hare_only, wait_until

from hare.amqp import spec
from hare.broker.broker import BrokerConfig


def test_start_advertises_rabbitmq_capabilities(hare_url: str) -> None:
    with RawClient.from_url(hare_url) as c:
        c.send(spec.PROTOCOL_HEADER)
        start = c.expect(spec.ConnectionStart)
        assert isinstance(start, spec.ConnectionStart)
        assert (start.version_major, start.version_minor) == (0, 9)
        caps = start.server_properties["capabilities"]
        for cap in ("publisher_confirms", "exchange_exchange_bindings", "basic.nack",
                    "consumer_cancel_notify", "connection.blocked", "consumer_priorities",
                    "authentication_failure_close", "per_consumer_qos", "direct_reply_to"):
            assert caps[cap] is True, cap
        assert b"PLAIN" in start.mechanisms.split() and b"AMQPLAIN" in start.mechanisms.split()
        assert start.locales == b"en_US"
        # clients pick RabbitMQ's semantics by these (kombu/Celery: product RabbitMQ, 3.3 <= v < 4)
        props = start.server_properties
        assert props["product"] == "RabbitMQ" and props["version"].startswith("3.")


def test_tune_offers_rabbitmq_defaults(hare_url: str) -> None:
    with RawClient.from_url(hare_url) as c:
        tune = c.handshake()
        assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (2047, 131072, 60)


def test_wrong_protocol_header_gets_ours_back_and_close(hare_url: str) -> None:
    with RawClient.from_url(hare_url) as c:
        c.send(b"AMQP\x00\x00\x08\x00")
        assert c.read_raw(8) == b"AMQP\x00\x00\x09\x01"
        assert c.is_closed()


def test_http_request_on_amqp_port_gets_protocol_header(hare_url: str) -> None:
    with RawClient.from_url(hare_url) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.read_raw(8) == b"AMQP\x00\x00\x09\x01"
        assert c.is_closed()


def test_bad_password_is_refused_with_403(hare_url: str) -> None:
    with RawClient.from_url(hare_url) as c:
        c.send(spec.PROTOCOL_HEADER)
        c.expect(spec.ConnectionStart)
        c.send_method(0, spec.ConnectionStartOk(
            client_properties={"capabilities": {"authentication_failure_close": True}},
            mechanism="PLAIN", response=b"\x00guest\x00wrong"))
        close = c.expect(spec.ConnectionClose)
        assert close.reply_code == 403
        assert close.reply_text.startswith("ACCESS_REFUSED - Login was refused using authentication "
                                           "mechanism PLAIN")


def test_pika_bad_password_raises_probable_authentication_error(hare_url: str) -> None:
    params = pika.URLParameters(hare_url.replace("guest:guest", "guest:nope"))
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(params)


def test_amqplain_login_works(hare_url: str) -> None:
    from hare.amqp.table import encode_table

    with RawClient.from_url(hare_url) as c:
        c.send(spec.PROTOCOL_HEADER)
        c.expect(spec.ConnectionStart)
        response = encode_table({"LOGIN": "guest", "PASSWORD": "guest"})[4:]
        c.send_method(0, spec.ConnectionStartOk(client_properties={}, mechanism="AMQPLAIN",
                                                response=response))
        c.expect(spec.ConnectionTune)


def test_unknown_vhost_is_530(hare_url: str) -> None:
    with RawClient.from_url(hare_url) as c:
        c.send(spec.PROTOCOL_HEADER)
        c.expect(spec.ConnectionStart)
        c.send_method(0, spec.ConnectionStartOk(client_properties={}, mechanism="PLAIN",
                                                response=b"\x00guest\x00guest"))
        tune = c.expect(spec.ConnectionTune)
        c.send_method(0, spec.ConnectionTuneOk(channel_max=tune.channel_max, frame_max=tune.frame_max,
                                               heartbeat=0))
        c.send_method(0, spec.ConnectionOpen(virtual_host="no-such-vhost"))
        close = c.expect(spec.ConnectionClose)
        assert close.reply_code == 530
        assert close.reply_text.startswith("NOT_ALLOWED")


@hare_only
def test_guest_is_refused_from_a_non_loopback_address(hare_broker_factory) -> None:
    """RabbitMQ's loopback_users: guest may only log in over loopback."""
    import socket

    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
        own = s.getsockname()[0]
        s.close()
    except OSError:
        pytest.skip("no non-loopback address")
    if own.startswith("127."):
        pytest.skip("no non-loopback address")
    broker = hare_broker_factory(host="0.0.0.0")
    with RawClient(own, broker.port) as c:
        c.send(spec.PROTOCOL_HEADER)
        c.expect(spec.ConnectionStart)
        c.send_method(0, spec.ConnectionStartOk(
            client_properties={"capabilities": {"authentication_failure_close": True}},
            mechanism="PLAIN", response=b"\x00guest\x00guest"))
        close = c.expect(spec.ConnectionClose)
        assert close.reply_code == 403
        # RabbitMQ 3.10 gives the reason ("can only connect via localhost") in its log only
        assert close.reply_text == ("ACCESS_REFUSED - Login was refused using authentication "
                                    "mechanism PLAIN. For details see the broker logfile.")


@hare_only
def test_silent_client_is_dropped_after_two_heartbeat_intervals(hare_broker_factory, caplog) -> None:
    caplog.set_level(logging.INFO, logger="hare.connection")  # whatever the root's level (Celery sets it)
    broker = hare_broker_factory()
    with RawClient("127.0.0.1", broker.port) as c:
        c.handshake(heartbeat=1)
        start = time.monotonic()
        heartbeats = 0
        while True:
            try:
                ftype, channel, _ = c.read_frame(timeout=5)
            except Exception:
                break
            if ftype == 8:
                heartbeats += 1
        elapsed = time.monotonic() - start
        assert heartbeats >= 1  # the broker sends heartbeats while it is silent
        assert 1.5 <= elapsed <= 4.5  # and drops us after about two intervals of our silence

    def closing() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("closing AMQP")]

    wait_until(lambda: bool(closing()))
    assert len(closing()) == 1 and closing()[0].endswith(  # says why; not "client unexpectedly closed"
        "vhost: '/', user: 'guest'): missed heartbeats from client, timeout: 1s")
    assert [r.levelname for r in caplog.records if r.getMessage() == closing()[0]] == ["WARNING"]


@hare_only
def test_client_that_sends_heartbeats_stays_connected(hare_broker_factory) -> None:
    broker = hare_broker_factory()
    with RawClient("127.0.0.1", broker.port) as c:
        c.handshake(heartbeat=1)
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            c.send(b"\x08\x00\x00\x00\x00\x00\x00\xce")
            try:
                c.read_frame(timeout=0.4)
            except TimeoutError:
                pass
        c.open_channel(1)  # still served


@hare_only
def test_broker_stop_sends_connection_forced(hare_broker_factory) -> None:
    broker = hare_broker_factory()
    with RawClient("127.0.0.1", broker.port) as c:
        c.handshake()
        broker.stop()
        close = c.expect(spec.ConnectionClose)
        assert close.reply_code == 320
        assert close.reply_text == ("CONNECTION_FORCED - broker forced connection closure with "
                                    "reason 'shutdown'")


def test_client_close_gets_close_ok_and_the_client_closes_the_socket(hare_url: str) -> None:
    """As RabbitMQ: after close-ok the broker leaves the socket to the client (amqpstorm logs a
    warning when the broker closes it first)."""
    with RawClient.from_url(hare_url) as c:
        c.handshake()
        c.send_method(0, spec.ConnectionClose(reply_code=200, reply_text="bye"))
        c.expect(spec.ConnectionCloseOk)
        assert not c.is_closed(timeout=0.5)


@hare_only  # RabbitMQ waits 30 s
def test_a_client_that_does_not_close_its_socket_after_close_ok_is_dropped(hare_url: str) -> None:
    with RawClient.from_url(hare_url) as c:
        c.handshake()
        c.send_method(0, spec.ConnectionClose(reply_code=200, reply_text="bye"))
        c.expect(spec.ConnectionCloseOk)
        assert c.is_closed(timeout=3)


def test_many_channels_on_one_connection(connection: pika.BlockingConnection, qname: str) -> None:
    channels = [connection.channel() for _ in range(50)]
    channels[0].queue_declare(queue=qname, auto_delete=True)
    for i, ch in enumerate(channels):
        ch.basic_publish(exchange="", routing_key=qname, body=str(i).encode())
    got = sorted(int(channels[-1].basic_get(qname, auto_ack=True)[2]) for _ in range(50))
    assert got == list(range(50))


@hare_only
def test_custom_config_frame_max_is_offered(hare_broker_factory) -> None:
    broker = hare_broker_factory(config=BrokerConfig(frame_max=65536, heartbeat=30))
    with RawClient("127.0.0.1", broker.port) as c:
        tune = c.handshake(frame_max=65536)
        assert (tune.frame_max, tune.heartbeat) == (65536, 30)
