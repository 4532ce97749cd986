"""AMQPS: a TLS listener beside the plain one (certificates from tests/tlscerts.py, made at test
time), peer verification as RabbitMQ's ssl_options set it, TLS versions and ciphers, and SASL
EXTERNAL (the user named by the client certificate). Real sockets, real clients."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable

import aio_pika
import pika
import pika.credentials
import pika.exceptions
import pytest
from kombu import Connection as KombuConnection
from kombu import Exchange
from kombu import Queue as KombuQueue
from rawamqp import RawClient
from support import hare_only, run, unique_name
from tlscerts import Certs

from hare.amqp import spec
from hare.broker.broker import BrokerConfig
from hare.testing import EmbeddedBroker

pytestmark = hare_only

Factory = Callable[..., EmbeddedBroker]
REFUSED_EXTERNAL = ("ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL. "
                    "For details see the broker logfile.")


def tls_params(broker: EmbeddedBroker, ctx: ssl.SSLContext,
               credentials: pika.credentials.ExternalCredentials | None = None) -> pika.URLParameters:
    params = pika.URLParameters(broker.amqps_url)
    params.ssl_options = pika.SSLOptions(ctx, "localhost")
    if credentials is not None:
        params.credentials = credentials
    return params


def round_trip_pika(conn: pika.BlockingConnection) -> None:
    """Declare, publish with a confirm, consume and ack over ``conn``."""
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(3):
        ch.basic_publish("", q, b"secret-%d" % i)
    got = []
    for method, _props, body in ch.consume(q, inactivity_timeout=5):
        assert method is not None, "no delivery over TLS"
        got.append(body)
        ch.basic_ack(method.delivery_tag)
        if len(got) == 3:
            break
    ch.cancel()
    assert got == [b"secret-0", b"secret-1", b"secret-2"]
    big = bytes(range(256)) * 8192  # 2 MiB: many frames, many TLS records
    ch.basic_publish("", q, big)
    method, _props, body = ch.basic_get(q, auto_ack=True)
    assert body == big


def tls_socket(broker: EmbeddedBroker, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", broker.tls_port), timeout=5)
    return ctx.wrap_socket(sock, server_hostname="localhost")


def refused_in_tls_handshake(broker: EmbeddedBroker, ctx: ssl.SSLContext) -> ssl.SSLError:
    """Connect and send the AMQP header: the TLS layer must fail (at the handshake with TLS 1.2,
    at the first read with TLS 1.3, where the server checks the client's certificate after the
    client finished), before any AMQP frame arrives."""
    with pytest.raises(ssl.SSLError) as info:
        with tls_socket(broker, ctx) as s:
            s.sendall(spec.PROTOCOL_HEADER)
            data = s.recv(4096)
            assert not data, f"the broker answered {data[:20]!r} over a refused TLS connection"
            raise AssertionError("closed without a TLS alert")
    return info.value


def mechanisms(sock: socket.socket) -> bytes:
    """Send the protocol header on ``sock``; connection.start's mechanisms."""
    c = RawClient.__new__(RawClient)
    c.sock, c.buf = sock, b""
    c.send(spec.PROTOCOL_HEADER)
    start = c.expect(spec.ConnectionStart)
    assert isinstance(start, spec.ConnectionStart)
    return start.mechanisms


def raw_over(sock: socket.socket) -> RawClient:
    c = RawClient.__new__(RawClient)
    c.sock, c.buf = sock, b""
    return c


# -- a good certificate: the clients work as over TCP --------------------------------------------


def test_pika_over_tls_with_a_verified_client_certificate(hare_broker_factory: Factory,
                                                          tls_certs: Certs) -> None:
    broker = hare_broker_factory(tls=tls_certs.options(verify="verify_peer", fail_if_no_peer_cert=True))
    assert broker.amqps_url.startswith("amqps://guest:guest@127.0.0.1:")
    assert broker.tls_port != broker.port
    conn = pika.BlockingConnection(tls_params(broker, tls_certs.client_context(tls_certs.client)))
    try:
        round_trip_pika(conn)
        # the broker saw a TLS connection with the client's certificate
        certs = broker.call(lambda: [c.peer_cert for c in broker.broker.connections if c.tls])
        assert len(certs) == 1
        assert (("commonName", "app"),) in certs[0]["subject"]
    finally:
        conn.close()
    # the plain listener is still there, and still plain
    plain = pika.BlockingConnection(pika.URLParameters(broker.url))
    round_trip_pika(plain)
    plain.close()


def test_aio_pika_over_tls(hare_broker_factory: Factory, tls_certs: Certs) -> None:
    broker = hare_broker_factory(tls=tls_certs.options(verify="verify_peer", fail_if_no_peer_cert=True))
    ctx = tls_certs.client_context(tls_certs.client)
    qn = unique_name("aiopika-tls")

    async def main() -> None:
        conn = await aio_pika.connect(broker.amqps_url.replace("127.0.0.1", "localhost"), ssl_context=ctx)
        async with conn:
            ch = await conn.channel()
            q = await ch.declare_queue(qn, exclusive=True)
            for i in range(3):
                await ch.default_exchange.publish(aio_pika.Message(b"m%d" % i), qn)
            got = []
            async with q.iterator() as it:
                async for message in it:
                    async with message.process():
                        got.append(message.body)
                    if len(got) == 3:
                        break
            assert got == [b"m0", b"m1", b"m2"]

    run(main)


def test_kombu_over_tls(hare_broker_factory: Factory, tls_certs: Certs) -> None:
    broker = hare_broker_factory(tls=tls_certs.options(verify="verify_peer", fail_if_no_peer_cert=True))
    # py-amqp's ssl options: ssl.SSLContext.wrap_socket's, and the files
    options = {"ca_certs": str(tls_certs.cacert), "certfile": str(tls_certs.client_pem),
               "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": "localhost"}
    url = broker.amqps_url.replace("amqps://", "amqp://")
    with KombuConnection(url, ssl=options) as conn:
        name = unique_name("kombu-tls")
        q = KombuQueue(name, Exchange(name, auto_delete=True), routing_key=name, exclusive=True)
        simple = conn.SimpleQueue(q)
        simple.put({"n": 1})
        simple.put({"n": 2})
        got = []
        for _ in range(2):
            message = simple.get(timeout=5)
            got.append(message.payload)
            message.ack()
        simple.close()
        assert got == [{"n": 1}, {"n": 2}]
        assert conn.connection.transport.sock.version() in ("TLSv1.2", "TLSv1.3")


# -- peer verification ----------------------------------------------------------------------------


def test_an_untrusted_client_certificate_is_refused_in_the_tls_handshake(
        hare_broker_factory: Factory, tls_certs: Certs) -> None:
    broker = hare_broker_factory(tls=tls_certs.options(verify="verify_peer"))
    for maximum in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        err = refused_in_tls_handshake(broker, tls_certs.client_context(tls_certs.untrusted, maximum))
        assert "UNKNOWN_CA" in str(err), err
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(tls_params(broker, tls_certs.client_context(tls_certs.untrusted)))
    # the same listener takes the trusted certificate
    conn = pika.BlockingConnection(tls_params(broker, tls_certs.client_context(tls_certs.client)))
    conn.close()


def test_no_client_certificate_is_refused_when_one_is_required(hare_broker_factory: Factory,
                                                                tls_certs: Certs) -> None:
    broker = hare_broker_factory(tls=tls_certs.options(verify="verify_peer", fail_if_no_peer_cert=True))
    err = refused_in_tls_handshake(broker, tls_certs.client_context(maximum=ssl.TLSVersion.TLSv1_2))
    assert "HANDSHAKE_FAILURE" in str(err), err
    err = refused_in_tls_handshake(broker, tls_certs.client_context())
    assert "CERTIFICATE_REQUIRED" in str(err), err
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(tls_params(broker, tls_certs.client_context()))


def test_no_client_certificate_is_accepted_when_not_required(hare_broker_factory: Factory,
                                                              tls_certs: Certs) -> None:
    broker = hare_broker_factory(tls=tls_certs.options(verify="verify_peer", fail_if_no_peer_cert=False))
    conn = pika.BlockingConnection(tls_params(broker, tls_certs.client_context()))
    round_trip_pika(conn)
    assert broker.call(lambda: [c.peer_cert for c in broker.broker.connections]) == [None]
    conn.close()
    # but one it is shown must be good
    err = refused_in_tls_handshake(broker, tls_certs.client_context(tls_certs.untrusted))
    assert "UNKNOWN_CA" in str(err), err


def test_verify_none_asks_for_no_certificate(hare_broker_factory: Factory, tls_certs: Certs) -> None:
    broker = hare_broker_factory(tls=tls_certs.options(verify="verify_none"))
    # an untrusted certificate is not even requested, so it cannot be refused
    conn = pika.BlockingConnection(tls_params(broker, tls_certs.client_context(tls_certs.untrusted)))
    round_trip_pika(conn)
    assert broker.call(lambda: [c.peer_cert for c in broker.broker.connections]) == [None]
    conn.close()


def test_plain_amqp_on_the_tls_port_is_dropped(hare_broker_factory: Factory, tls_certs: Certs) -> None:
    broker = hare_broker_factory(tls=tls_certs.options())
    with RawClient("127.0.0.1", broker.tls_port) as c:
        c.send(spec.PROTOCOL_HEADER)  # not a TLS ClientHello
        c.sock.settimeout(3)
        assert c.sock.recv(100) == b""  # closed: no connection.start, nothing in clear


# -- TLS versions and ciphers ---------------------------------------------------------------------


def test_versions_limit_what_the_listener_negotiates(hare_broker_factory: Factory, tls_certs: Certs) -> None:
    only13 = hare_broker_factory(tls=tls_certs.options(versions=("tlsv1.3",)))
    err = refused_in_tls_handshake(only13, tls_certs.client_context(maximum=ssl.TLSVersion.TLSv1_2))
    assert "VERSION" in str(err), err
    with tls_socket(only13, tls_certs.client_context()) as s:
        assert s.version() == "TLSv1.3"
        assert b"AMQPLAIN PLAIN" == mechanisms(s)
    only12 = hare_broker_factory(tls=tls_certs.options(versions=("tlsv1.2",)))
    with tls_socket(only12, tls_certs.client_context()) as s:
        assert s.version() == "TLSv1.2"
        assert b"AMQPLAIN PLAIN" == mechanisms(s)
    conn = pika.BlockingConnection(tls_params(only12, tls_certs.client_context()))
    round_trip_pika(conn)
    conn.close()


def test_ciphers_limit_the_tls12_cipher_suites(hare_broker_factory: Factory, tls_certs: Certs) -> None:
    # trustme's keys are ECDSA ones
    broker = hare_broker_factory(tls=tls_certs.options(versions=("tlsv1.2",),
                                                       ciphers=("ECDHE-ECDSA-AES128-GCM-SHA256",)))
    with tls_socket(broker, tls_certs.client_context()) as s:
        assert s.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
    ctx = tls_certs.client_context()
    ctx.set_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384")  # not one the broker takes
    err = refused_in_tls_handshake(broker, ctx)
    assert "HANDSHAKE_FAILURE" in str(err) or "NO_SHARED_CIPHER" in str(err), err


# -- SASL EXTERNAL --------------------------------------------------------------------------------


def external_broker(factory: Factory, certs: Certs, login_from: str = "common_name",
                    mechanisms: tuple[str, ...] = ("PLAIN", "AMQPLAIN", "EXTERNAL"),
                    **tls: object) -> EmbeddedBroker:
    config = BrokerConfig(auth_mechanisms=mechanisms, ssl_cert_login_from=login_from)
    return factory(config=config, tls=certs.options(verify="verify_peer", **tls))


def test_external_logs_in_as_the_certificates_common_name(hare_broker_factory: Factory,
                                                          tls_certs: Certs) -> None:
    broker = external_broker(hare_broker_factory, tls_certs)
    broker.call(lambda: broker.broker.users.add("app", "unused-password", vhosts={"/"}))
    ctx = tls_certs.client_context(tls_certs.client)
    conn = pika.BlockingConnection(tls_params(broker, ctx, pika.credentials.ExternalCredentials()))
    try:
        assert broker.call(lambda: [c.username for c in broker.broker.connections]) == ["app"]
        round_trip_pika(conn)
    finally:
        conn.close()


def test_external_by_default_takes_the_distinguished_name(hare_broker_factory: Factory,
                                                          tls_certs: Certs) -> None:
    """RabbitMQ's default ssl_cert_login_from is distinguished_name: the subject in RFC 4514
    form, most specific first, with RFC 4514's escapes (here cross-checked with cryptography's)."""
    from cryptography import x509

    config = BrokerConfig(auth_mechanisms=("EXTERNAL",))
    assert config.ssl_cert_login_from == "distinguished_name"
    broker = hare_broker_factory(config=config, tls=tls_certs.options(verify="verify_peer"))
    subject = x509.load_pem_x509_certificate(tls_certs.special.cert_chain_pems[0].bytes()).subject
    dn = subject.rfc4514_string()
    assert dn.startswith("CN=ops\\+dev\\, eu,OU=Apps,O=Example")
    broker.call(lambda: broker.broker.users.add(dn, "x", vhosts={"/"}))
    ctx = tls_certs.client_context(tls_certs.special)
    conn = pika.BlockingConnection(tls_params(broker, ctx, pika.credentials.ExternalCredentials()))
    assert broker.call(lambda: [c.username for c in broker.broker.connections]) == [dn]
    conn.close()
    # the common name alone is not a user here
    broker.call(lambda: broker.broker.users.add("ops+dev, eu", "x", vhosts={"/"}))
    broker.call(lambda: broker.broker.users.users.pop(dn))
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(tls_params(broker, ctx, pika.credentials.ExternalCredentials()))


def start_ok_external(c: RawClient) -> None:
    c.send_method(0, spec.ConnectionStartOk(
        client_properties={"product": "rawamqp", "capabilities": {"authentication_failure_close": True}},
        mechanism="EXTERNAL", response=b"", locale="en_US"))


def test_external_is_refused_for_an_unknown_user(hare_broker_factory: Factory, tls_certs: Certs) -> None:
    broker = external_broker(hare_broker_factory, tls_certs)  # no user "app"
    with raw_over(tls_socket(broker, tls_certs.client_context(tls_certs.client))) as c:
        assert mechanisms(c.sock) == b"AMQPLAIN PLAIN EXTERNAL"
        start_ok_external(c)
        close = c.expect(spec.ConnectionClose)
        assert isinstance(close, spec.ConnectionClose)
        assert (close.reply_code, close.reply_text) == (403, REFUSED_EXTERNAL)
        assert c.is_closed()
    ctx = tls_certs.client_context(tls_certs.client)
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(tls_params(broker, ctx, pika.credentials.ExternalCredentials()))


def test_external_without_a_client_certificate_is_offered_then_refused(hare_broker_factory: Factory,
                                                                       tls_certs: Certs) -> None:
    """As RabbitMQ: EXTERNAL is offered on every TLS connection, and a client that presented no
    certificate is refused at start-ok (403), not left without a mechanism."""
    broker = external_broker(hare_broker_factory, tls_certs)
    broker.call(lambda: broker.broker.users.add("app", "x", vhosts={"/"}))
    with raw_over(tls_socket(broker, tls_certs.client_context())) as c:
        assert mechanisms(c.sock) == b"AMQPLAIN PLAIN EXTERNAL"
        start_ok_external(c)
        close = c.expect(spec.ConnectionClose)
        assert (close.reply_code, close.reply_text) == (403, REFUSED_EXTERNAL)  # type: ignore[attr-defined]
        assert c.is_closed()


def test_external_is_not_offered_or_taken_on_plain_tcp(hare_broker_factory: Factory,
                                                       tls_certs: Certs) -> None:
    broker = external_broker(hare_broker_factory, tls_certs)
    broker.call(lambda: broker.broker.users.add("app", "x", vhosts={"/"}))
    with RawClient("127.0.0.1", broker.port) as c:
        assert mechanisms(c.sock) == b"AMQPLAIN PLAIN"
        start_ok_external(c)
        assert c.is_closed()  # an error before tune-ok: the socket closes without a word
        assert c.buf == b""


def test_auth_mechanisms_choose_what_connection_start_offers(hare_broker_factory: Factory,
                                                             tls_certs: Certs) -> None:
    broker = external_broker(hare_broker_factory, tls_certs, mechanisms=("EXTERNAL",))
    broker.call(lambda: broker.broker.users.add("app", "x", vhosts={"/"}))
    with raw_over(tls_socket(broker, tls_certs.client_context())) as c:
        assert mechanisms(c.sock) == b"EXTERNAL"
    with RawClient("127.0.0.1", broker.port) as c:
        assert mechanisms(c.sock) == b""  # nothing a plain TCP client can use
    # PLAIN is not offered, so guest's password does not get in, over TLS or TCP
    for params in (tls_params(broker, tls_certs.client_context(tls_certs.client)),
                   pika.URLParameters(broker.url)):
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            pika.BlockingConnection(params)
    ctx = tls_certs.client_context(tls_certs.client)
    conn = pika.BlockingConnection(tls_params(broker, ctx, pika.credentials.ExternalCredentials()))
    conn.close()


def test_amqplain_only(hare_broker_factory: Factory) -> None:
    broker = hare_broker_factory(config=BrokerConfig(auth_mechanisms=("AMQPLAIN",)))
    with RawClient("127.0.0.1", broker.port) as c:
        assert mechanisms(c.sock) == b"AMQPLAIN"
        c.send_method(0, spec.ConnectionStartOk(
            client_properties={}, mechanism="PLAIN", response=b"\x00guest\x00guest", locale="en_US"))
        assert c.is_closed()
        assert c.buf == b""
    with RawClient("127.0.0.1", broker.port) as c:
        assert mechanisms(c.sock) == b"AMQPLAIN"
        # LOGIN and PASSWORD as a field table's contents (longstr values)
        response = b"\x05LOGINS\x00\x00\x00\x05guest\x08PASSWORDS\x00\x00\x00\x05guest"
        c.send_method(0, spec.ConnectionStartOk(client_properties={}, mechanism="AMQPLAIN",
                                                response=response, locale="en_US"))
        c.expect(spec.ConnectionTune)


def test_a_client_silent_in_the_tls_handshake_is_dropped_after_ssl_handshake_timeout(
        hare_broker_factory: Factory, tls_certs: Certs) -> None:
    broker = hare_broker_factory(tls=tls_certs.options(handshake_timeout=0.5))
    with socket.create_connection(("127.0.0.1", broker.tls_port), timeout=5) as s:
        started = time.monotonic()
        assert s.recv(100) == b""  # no ClientHello: closed without a byte
        assert 0.4 < time.monotonic() - started < 3
