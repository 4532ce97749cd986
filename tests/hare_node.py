"""`hare serve` in a child process, for tests that kill, restart or race real brokers."""

from __future__ import annotations

import shutil
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
                 args: tuple[str, ...] = (), host: str = "127.0.0.1", prefix: tuple[str, ...] = ()) -> None:
        """``config``: the text of a hare.conf written beside the log and passed as --config;
        ``args``: more `hare serve` arguments; ``host``: the address it listens on; ``prefix``:
        what runs it (``ip netns exec NS``: in a network namespace)."""
        self.data_dir = data_dir
        self.host = host
        self.prefix = list(prefix)
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
                [*self.prefix, sys.executable, "-m", "hare", "serve", "--bind", self.host,
                 "--port", str(self.port),
                 "--data-dir", str(self.data_dir), "--log-level", self.log_level, *self.args],
                stdout=out, stderr=out)
        return self.proc

    def start(self, timeout: float = 30) -> HareNode:
        proc = self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("hare did not start listening")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM; a broker still running 20 s later is a failure (with its stacks in the log,
        where py-spy is installed), and is killed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                if shutil.which("py-spy"):
                    with open(self.log, "ab") as out:
                        subprocess.run(["py-spy", "dump", "--pid", str(self.proc.pid)], stdout=out,
                                       stderr=out, timeout=30)
                self.kill()
                raise AssertionError(f"hare did not stop within 20 s of SIGTERM (log: {self.log})") from None
