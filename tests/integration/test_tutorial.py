"""The README's Hello World runs unchanged against `hare serve` started as a real process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@pytest.fixture
def hare_process(tmp_path: Path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hare", "serve", "--port", str(port), "--data-dir",
         str(tmp_path / "data"), "--bind", "127.0.0.1"],
        stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port)
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


def readme_snippets() -> tuple[str, str]:
    text = (ROOT / "README.md").read_text()
    blocks = text.split("```python\n")[1:3]
    return tuple(b.split("```", 1)[0] for b in blocks)  # type: ignore[return-value]


def localized(code: str, port: int) -> str:
    return code.replace("pika.ConnectionParameters('localhost')",
                        f"pika.ConnectionParameters('localhost', {port})")


def test_readme_hello_world_send_and_receive(hare_process, tmp_path: Path) -> None:
    port, _ = hare_process
    send, receive = readme_snippets()
    assert "basic_publish(exchange='', routing_key='hello', body='Hello World!')" in send
    assert "on_message_callback=callback, auto_ack=True" in receive
    (tmp_path / "send.py").write_text(localized(send, port))
    (tmp_path / "receive.py").write_text(localized(receive, port))
    out = subprocess.run([sys.executable, "send.py"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == 0, out.stderr
    assert "Sent 'Hello World!'" in out.stdout
    consumer = subprocess.Popen([sys.executable, "-u", "receive.py"], cwd=tmp_path,
                                stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        seen = ""
        fd = consumer.stdout.fileno()  # type: ignore[union-attr]
        os.set_blocking(fd, False)
        while time.monotonic() < deadline and "Received b'Hello World!'" not in seen:
            try:
                seen += os.read(fd, 4096).decode()
            except BlockingIOError:
                time.sleep(0.05)
        assert "Received b'Hello World!'" in seen
    finally:
        consumer.kill()
        consumer.wait(5)


def test_sigterm_closes_clients_with_connection_forced(hare_process) -> None:
    port, proc = hare_process
    conn = pika.BlockingConnection(pika.ConnectionParameters("localhost", port))
    ch = conn.channel()
    ch.queue_declare(queue="")
    proc.send_signal(signal.SIGTERM)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        conn.process_data_events(time_limit=5)
        conn.process_data_events(time_limit=5)
    assert info.value.reply_code == 320
    assert "CONNECTION_FORCED" in info.value.reply_text
    assert proc.wait(10) == 0


def test_default_ports_and_flags_are_accepted() -> None:
    out = subprocess.run([sys.executable, "-m", "hare", "serve", "--help"], capture_output=True,
                         text=True, timeout=20)
    for flag in ("--bind", "--port", "--http-port", "--data-dir", "--config"):
        assert flag in out.stdout
