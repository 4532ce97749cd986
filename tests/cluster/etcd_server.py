"""A real etcd server (Debian's etcd-server) in a child process, for the cluster's tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from hare_node import free_port


def etcd_binary() -> str:
    """etcd's path; without it the cluster's tests skip, unless HARE_REQUIRE_ETCD is set (CI)."""
    path = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)
    if path is None:
        if os.environ.get("HARE_REQUIRE_ETCD"):
            pytest.fail("etcd is not installed (apt-get install etcd-server)")
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    return path


class Etcd:
    """One etcd member on loopback, its data under ``data_dir``."""

    def __init__(self, data_dir: Path, host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = free_port()
        self.peer_port = free_port()
        self.log = data_dir.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"etcd://{self.host}:{self.port}"

    def start(self, timeout: float = 20) -> Etcd:
        client, peer = f"http://{self.host}:{self.port}", f"http://127.0.0.1:{self.peer_port}"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [etcd_binary(), "--name", "test", "--data-dir", str(self.data_dir),
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"test={peer}"], stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                if b"ready to serve client requests" in self.log.read_bytes():
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"etcd did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
