"""`hare bench` as a user runs it: one clear line and a non-zero exit when it cannot connect."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from hare.testing import EmbeddedBroker


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hare", "bench", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once closed


def test_a_refused_connection_is_one_line_and_exit_1() -> None:
    port = _closed_port()
    done = _bench("--url", f"amqp://guest:guest@127.0.0.1:{port}/", "--duration", "0.1")
    assert done.returncode == 1
    assert done.stderr == (f"hare bench: cannot connect to amqp://guest:***@127.0.0.1:{port}/: "
                           "Connection refused\n")
    assert done.stdout == ""


def test_an_unknown_host_and_refused_credentials_are_one_line_too() -> None:
    done = _bench("--url", "amqp://guest:guest@no-such-host.invalid/", "--duration", "0.1")
    assert done.returncode == 1
    assert done.stderr.startswith("hare bench: cannot connect to amqp://guest:***@no-such-host.invalid/: ")
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    with EmbeddedBroker() as broker:
        done = _bench("--url", f"amqp://guest:wrong@127.0.0.1:{broker.port}/", "publish", "--duration", "0.1")
        assert done.returncode == 1
        assert done.stderr == (f"hare bench: cannot connect to amqp://guest:***@127.0.0.1:{broker.port}/: "
                               "broker closed the connection\n")
        done = _bench("--url", broker.url, "publish", "--duration", "0.2")  # and it still measures
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("publish_rate: ")
