"""Listeners: IPv6, every interface (IPv4 and IPv6) by default, several at once, plain and TLS,
as `hare serve` opens them from the config file and logs them."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aio_pika
import pika
from support import hare_only, run
from tlscerts import Certs

from hare.broker.broker import Broker
from hare.server.listeners import Listener
from hare.server.server import Server
from hare.testing import EmbeddedBroker

pytestmark = hare_only


def round_trip(params: pika.ConnectionParameters) -> None:
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"hello")
        method, _props, body = ch.basic_get(q, auto_ack=True)
        assert body == b"hello"
    finally:
        conn.close()


def test_pika_over_ipv6(hare_broker_factory: Callable[..., EmbeddedBroker]) -> None:
    broker = hare_broker_factory(host="::1")
    assert broker.url == f"amqp://guest:guest@[::1]:{broker.port}/"
    round_trip(pika.URLParameters(broker.url))
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    peers = broker.call(lambda: [c.peer[0] for c in broker.broker.connections])
    conn.close()
    assert peers == ["::1"]  # and guest, loopback-only, is at home on ::1


def test_a_port_alone_listens_on_ipv4_and_ipv6() -> None:
    """Listener(None, port): what ``listeners.tcp.default = 5672`` means, as in RabbitMQ."""

    async def main() -> None:
        server = Server(Broker(), listeners=[Listener(None, 0)])
        await server.start()
        try:
            (listener, addrs), = server.bound
            assert {a[0] for a in addrs} in ({"::"}, {"0.0.0.0", "::"})
            for host in ("127.0.0.1", "[::1]"):
                conn = await aio_pika.connect(f"amqp://guest:guest@{host}:{server.port}/")
                async with conn:
                    ch = await conn.channel()
                    q = await ch.declare_queue(exclusive=True)
                    await ch.default_exchange.publish(aio_pika.Message(host.encode()), q.name)
                    message = await q.get(timeout=5)
                    assert message.body == host.encode()
        finally:
            await server.stop()

    run(main)


def test_several_listeners_on_one_broker(tls_certs: Certs) -> None:
    async def main() -> None:
        ctx = tls_certs.options().context()
        listeners = [Listener("127.0.0.1", 0), Listener("::1", 0), Listener("localhost", 0),
                     Listener("127.0.0.1", 0, ctx)]
        server = Server(Broker(), listeners=listeners)
        await server.start()
        try:
            ports = [addrs[0][1] for _listener, addrs in server.bound]
            assert len(set(ports)) == 4 and server.port == ports[0]
            # localhost: every address it resolves to, on one port
            assert {a[0] for a in server.bound[2][1]} <= {"127.0.0.1", "::1"}
            client = tls_certs.client_context()
            for url, kwargs in ((f"amqp://guest:guest@127.0.0.1:{ports[0]}/", {}),
                                (f"amqp://guest:guest@[::1]:{ports[1]}/", {}),
                                (f"amqp://guest:guest@localhost:{ports[2]}/", {}),
                                (f"amqps://guest:guest@localhost:{ports[3]}/", {"ssl_context": client})):
                async with await aio_pika.connect(url, **kwargs) as conn:
                    ch = await conn.channel()
                    await ch.declare_queue(exclusive=True)
        finally:
            await server.stop()
        # every socket is closed again
        for port in ports[:2]:
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0

    run(main)


def free_port(family: socket.AddressFamily = socket.AF_INET) -> int:
    with socket.socket(family) as s:
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return s.getsockname()[1]


def test_hare_serve_opens_and_logs_each_listener(tmp_path: Path, tls_certs: Certs) -> None:
    p1, p2, p3 = free_port(), free_port(socket.AF_INET6), free_port()
    conf = tmp_path / "hare.conf"
    conf.write_text(f"listeners.tcp.1 = 127.0.0.1:{p1}\nlisteners.tcp.2 = [::1]:{p2}\n"
                    f"listeners.ssl.default = 127.0.0.1:{p3}\n"
                    f"ssl_options.certfile = {tls_certs.server_cert}\n"
                    f"ssl_options.keyfile = {tls_certs.server_key}\n"
                    f"ssl_options.cacertfile = {tls_certs.cacert}\nssl_options.verify = verify_peer\n"
                    "ssl_options.fail_if_no_peer_cert = true\nssl_options.depth = 3\n")
    log = tmp_path / "hare.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hare", "serve", "--config", str(conf),
                                 "--data-dir", str(tmp_path / "data")], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while "ready" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        text = log.read_text()
        assert f"AMQP listener started on 127.0.0.1:{p1}\n" in text
        assert f"AMQP listener started on [::1]:{p2}\n" in text
        assert f"AMQPS (TLS) listener started on 127.0.0.1:{p3}\n" in text
        assert "ssl_options.depth = 3 is not enforced" in text
        assert f"ready: amqp://127.0.0.1:{p1}, amqp://[::1]:{p2}, amqps://127.0.0.1:{p3}" in text
        round_trip(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{p1}/"))
        round_trip(pika.URLParameters(f"amqp://guest:guest@[::1]:{p2}/"))
        params = pika.URLParameters(f"amqps://guest:guest@127.0.0.1:{p3}/")
        params.ssl_options = pika.SSLOptions(tls_certs.client_context(tls_certs.client), "localhost")
        round_trip(params)
        # the named listeners replaced the default one (every interface, port 5672)
        assert text.count("listener started on") == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_hare_serve_refuses_a_missing_certificate(tmp_path: Path) -> None:
    conf = tmp_path / "hare.conf"
    conf.write_text(f"listeners.tcp = none\nlisteners.ssl.default = 127.0.0.1:{free_port()}\n"
                    f"ssl_options.certfile = {tmp_path}/nope.pem\n")
    done = subprocess.run([sys.executable, "-m", "hare", "serve", "--config", str(conf),
                           "--data-dir", str(tmp_path / "data")], capture_output=True, timeout=30)
    assert done.returncode == 1
    assert b"cannot start: ssl_options.certfile/keyfile" in done.stderr, done.stderr
    assert not (tmp_path / "data").exists()  # refused before the broker made anything
