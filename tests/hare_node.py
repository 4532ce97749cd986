"""`hare serve` in a child process, for tests that kill, restart or race real brokers."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HareNode:
    """One `hare serve --data-dir DATA_DIR` (its output in ``log``)."""

    def __init__(self, data_dir: Path, log: Path, log_level: str = "info", config: str | None = None,
                 args: tuple[str, ...] = ()) -> None:
        """``config``: the text of a hare.conf written beside the log and passed as --config;
        ``args``: more `hare serve` arguments."""
        self.data_dir = data_dir
        self.args = list(args)
        if config is not None:
            conf = log.with_suffix(".conf")
            conf.write_text(config)
            self.args += ["--config", str(conf)]
        self.log = log
        self.log_level = log_level
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hare", "serve", "--bind", "127.0.0.1", "--port", str(self.port),
                 "--data-dir", str(self.data_dir), "--log-level", self.log_level, *self.args],
                stdout=out, stderr=out)
        return self.proc

    def start(self, timeout: float = 30) -> HareNode:
        proc = self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("hare did not start listening")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
