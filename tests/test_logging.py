"""`hare serve`'s log as an operator reads it: a real broker process with a log file, real pika
clients; the lines of a connection's life (RabbitMQ 3.10's content), plain text and JSON."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, ProbableAuthenticationError
from support import hare_only

from hare.session.conn_log import address, name

pytestmark = hare_only

PEER = r"127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+"


def _env(**extra: str) -> dict[str, str]:
    """The environment without the caller's HARE_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARE_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


class Serve:
    """`hare serve` in a child process, logging to ``log``."""

    def __init__(self, tmp_path: Path, conf: str, env: dict[str, str] | None = None) -> None:
        n = len(list(tmp_path.glob("hare*.conf")))
        self.log = tmp_path / f"hare{n}.log"
        self.conf = tmp_path / f"hare{n}.conf"
        with socket.socket() as probe:  # a free port
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.conf.write_text(f"listeners.tcp.default = 127.0.0.1:{port}\nlog.file = {self.log}\n{conf}")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hare", "serve", "--config", str(self.conf), "--data-dir",
             str(tmp_path / "data")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env or _env())
        deadline = time.monotonic() + 15
        while True:  # listening (the log may not say so: its level may be warning)
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, "hare serve did not start"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        self.url = f"amqp://guest:guest@127.0.0.1:{port}/"
        self.stderr = ""

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_for(self, pattern: str) -> str:
        deadline = time.monotonic() + 5
        while not (m := re.search(pattern, self.text())):
            assert time.monotonic() < deadline, f"no line matching {pattern!r} in:\n{self.text()}"
            time.sleep(0.02)
        return m.group(0)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, self.stderr = self.proc.communicate(timeout=15)
        return self.text()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def start(conf: str = "", env: dict[str, str] | None = None) -> Serve:
        s = Serve(tmp_path, conf, env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def _life_of_connections(url: str) -> None:
    """A named connection that causes a channel error and closes; one that vanishes; a refused login."""
    conn = pika.BlockingConnection(pika.URLParameters(
        url + "?client_properties={'connection_name':'orders-svc'}"))
    ch = conn.channel()
    with pytest.raises(ChannelClosedByBroker):
        ch.queue_declare("no-such-queue", passive=True)
    conn.close()
    gone = pika.BlockingConnection(pika.URLParameters(url))
    sock = gone._impl._transport._sock  # drop the socket without connection.close
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    with pytest.raises(ProbableAuthenticationError):
        pika.BlockingConnection(pika.URLParameters(url.replace("guest:guest", "guest:wrong")))


def test_the_log_file_has_a_line_per_connection_event(serve: Callable[..., Serve]) -> None:
    s = serve("log.console = false\ncluster_partition_handling = autoheal\n")
    # the fixture's probe closed before the handshake: let its line be written before the next
    # connection's, so the order below is the order of the connections
    s.wait_for("during the handshake")
    _life_of_connections(s.url)
    s.wait_for("PLAIN login refused")
    text = s.stop()
    assert s.stderr == ""  # log.console = false: nothing on the console
    lines = text.splitlines()
    assert any(re.search(r" WARNING hare: .*hare0.conf:4: cluster_partition_handling is a RabbitMQ setting "
                         r"hare does not act on; ignored$", line) for line in lines), text
    expected = [
        # the fixture's probe of the port: connected, closed before the handshake
        rf" INFO hare\.connection: accepting AMQP connection \({PEER}\)$",
        rf" INFO hare\.connection: closing AMQP connection \({PEER}\): client closed the TCP connection "
        r"during the handshake \(state: starting\)$",
        rf" INFO hare\.connection: accepting AMQP connection \({PEER}\)$",
        rf" INFO hare\.connection: connection \({PEER} - orders-svc\): user 'guest' authenticated and "
        r"granted access to vhost '/'$",
        rf" WARNING hare\.connection: Channel error on connection \({PEER} - orders-svc, vhost: '/', user: "
        r"'guest'\), channel 1: operation queue\.declare caused a channel exception not_found: no queue "
        r"'no-such-queue' in vhost '/'$",
        rf" INFO hare\.connection: closing AMQP connection \({PEER} - orders-svc, vhost: '/', user: "
        r"'guest'\)$",
        rf" INFO hare\.connection: accepting AMQP connection \({PEER}\)$",
        rf" INFO hare\.connection: connection \({PEER}\): user 'guest' authenticated and granted access to "
        r"vhost '/'$",
        rf" WARNING hare\.connection: closing AMQP connection \({PEER}, vhost: '/', user: 'guest'\): client "
        r"unexpectedly closed TCP connection$",
        rf" INFO hare\.connection: accepting AMQP connection \({PEER}\)$",
        rf" WARNING hare\.connection: Error on AMQP connection \({PEER}, state: starting\): PLAIN login "
        r"refused: user 'guest' - invalid credentials$",
    ]
    conn_lines = [line for line in lines if " hare.connection: " in line]
    assert len(conn_lines) == len(expected), "\n".join(conn_lines)
    for line, pattern in zip(conn_lines, expected, strict=True):
        assert re.search(pattern, line), (line, pattern)
    # the lines of one connection name the same peer
    first = re.findall(r"\((127\.0\.0\.1:\d+) ->", "\n".join(conn_lines[2:6]))
    assert len(set(first)) == 1


def test_a_connection_error_and_the_shutdown_are_logged(serve: Callable[..., Serve]) -> None:
    s = serve("log.console = false\n")
    conn = pika.BlockingConnection(pika.URLParameters(s.url))
    conn.channel()
    conn.channel().basic_qos(prefetch_count=1)
    kept = pika.BlockingConnection(pika.URLParameters(s.url))  # open at shutdown
    # a frame for a channel that is not open: a hard error (504), as RabbitMQ
    qos = b"\x00\x3c\x00\x0a" + b"\x00\x00\x00\x00\x00\x01\x00"  # basic.qos, prefetch 1
    conn._impl._transport._sock.sendall(b"\x01\x00\x09\x00\x00\x00\x0b" + qos + b"\xce")
    s.wait_for("Error on AMQP connection")
    text = s.stop()
    assert re.search(rf"WARNING hare\.connection: Error on AMQP connection \({PEER}, vhost: '/', user: "
                     r"'guest', state: running\): operation basic\.qos caused a connection exception "
                     r"channel_error: expected 'channel\.open'", text), text
    assert re.search(rf"INFO hare\.connection: closing AMQP connection \({PEER}, vhost: '/', user: "
                     r"'guest'\): broker forced connection closure with reason 'shutdown'", text), text
    del kept


def test_json_lines(serve: Callable[..., Serve]) -> None:
    s = serve("log.file.formatter = json\nlog.console.formatter = json\nlog.console.level = warning\n")
    _life_of_connections(s.url)
    s.wait_for("PLAIN login refused")
    text = s.stop()
    records = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    assert all({"time", "level", "msg", "logger"} <= set(r) for r in records)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", r["time"]) for r in records)
    error = next(r for r in records if r["msg"].startswith("Channel error"))
    assert (error["level"], error["logger"], error["vhost"], error["user"], error["client_name"],
            error["channel"], error["code"]) == ("warning", "hare.connection", "/", "guest", "orders-svc", 1,
                                                 404)
    assert re.fullmatch(PEER, error["connection"])
    levels = {r["level"] for r in records}
    assert {"info", "warning"} <= levels
    # the console: JSON too, warnings and above only
    console = [json.loads(line) for line in s.stderr.splitlines()]
    assert console and {r["level"] for r in console} == {"warning"}
    assert [r["msg"] for r in console] == [r["msg"] for r in records if r["level"] == "warning"]


def test_log_file_level_and_environment_log_level(serve: Callable[..., Serve], tmp_path: Path) -> None:
    s = serve("log.file.level = warning\nlog.console = false\n")
    _life_of_connections(s.url)
    s.wait_for("PLAIN login refused")
    text = s.stop()
    assert " INFO " not in text and "accepting AMQP connection" not in text
    assert "client unexpectedly closed TCP connection" in text
    # HARE_LOG_LEVEL beats the file's levels (environment > file)
    s = serve("log.file.level = warning\nlog.console = false\n", env=_env(HARE_LOG_LEVEL="debug"))
    text = s.stop()
    assert " INFO hare: hare " in text


def test_management_port_is_announced_as_not_served(serve: Callable[..., Serve]) -> None:
    s = serve("log.console = false\nmanagement.tcp.port = 15999\n")
    text = s.stop()
    assert re.search(r"INFO hare: HTTP port 15999: the management API and metrics are planned but not "
                     r"served yet", text), text
    s = serve("log.console = false\n")
    assert "management API" not in s.stop()


def test_an_unwritable_log_file_or_a_typo_stops_hare_serve(tmp_path: Path) -> None:
    conf = tmp_path / "hare.conf"
    conf.write_text(f"log.file = {tmp_path}/no/such/dir/hare.log\n")
    done = subprocess.run([sys.executable, "-m", "hare", "serve", "--config", str(conf)], capture_output=True,
                          text=True, timeout=30, env=_env())
    assert done.returncode == 2
    assert done.stderr.startswith("hare: cannot open the log file: ")
    conf.write_text("heartbeat = 10\nlog.flie = /tmp/x.log\n")
    done = subprocess.run([sys.executable, "-m", "hare", "serve"], capture_output=True, text=True, timeout=30,
                          env=_env(HARE_CONFIG_FILE=str(conf)))
    assert (done.returncode, done.stderr) == (2, f"hare: {conf}:2: unknown setting 'log.flie' (did you mean "
                                                 "'log.file'?)\n")


def test_connection_names_as_rabbitmq_prints_them() -> None:
    assert name(("10.0.6.42", 51544), ("10.0.4.21", 5672)) == "10.0.6.42:51544 -> 10.0.4.21:5672"
    assert address(("::1", 5672, 0, 0)) == "[::1]:5672"
    assert address(None) == "?"  # in-process, unix socket
