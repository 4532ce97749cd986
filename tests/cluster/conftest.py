"""Fixtures of the cluster's tests: a real etcd, and `hare serve --cluster` nodes beside it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from etcd_server import Etcd
from hare_node import HareNode, free_port


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    server = Etcd(tmp_path / "etcd").start()
    yield server
    server.stop()


class ClusterNode(HareNode):
    """`hare serve --node-name NAME --cluster ... --cluster-bind ...`."""

    def __init__(self, name: str, etcd: Etcd, root: Path, extra: tuple[str, ...] = (),
                 host: str = "127.0.0.1", prefix: tuple[str, ...] = (), config: str | None = None) -> None:
        """``host``: the address it listens on (AMQP and node-to-node); ``prefix``: what runs it
        (``ip netns exec NS``)."""
        self.name = name
        self.cluster_port = free_port()
        super().__init__(root / name, root / f"{name}.log", config=config, host=host, prefix=prefix, args=(
            "--node-name", name, "--cluster", etcd.endpoint,
            "--cluster-bind", f"{host}:{self.cluster_port}", *extra))

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "hare", "ctl", "--data-dir", str(self.data_dir), *args],
                              capture_output=True, text=True, timeout=30)
        if check:
            assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
        return done

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.ctl("cluster_status", "--formatter", "json").stdout)
        return out

    def alive(self) -> dict[str, bool]:
        """Each member's name: alive or not, as this node sees it."""
        return {n["name"]: n["alive"] for n in self.status()["nodes"]}

    def wait_until(self, what: Callable[[dict[str, bool]], bool], timeout: float = 15) -> dict[str, bool]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                seen = self.alive()
            except (AssertionError, ValueError):  # the control socket is not up yet
                seen = {}
            if what(seen):
                return seen
            assert time.monotonic() < deadline, f"{self.name} sees {seen}\n{self.log.read_text()}"
            time.sleep(0.1)


ALL = ("hare-a", "hare-b", "hare-c")  # the three nodes of most cluster tests


def start_all(cluster_node: Callable[..., ClusterNode]) -> dict[str, ClusterNode]:
    """Start ALL and wait until each sees them all alive."""
    nodes = {name: cluster_node(name).start() for name in ALL}
    for node in nodes.values():
        node.wait_until(lambda seen: seen == dict.fromkeys(ALL, True))
    return nodes


def amqp_channel(node: ClusterNode, user: str = "guest", password: str = "guest",
                 vhost: str = "/") -> tuple[pika.BlockingConnection, Any]:
    """A pika connection to ``node`` and a channel on it."""
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        node.host, node.port, vhost, pika.PlainCredentials(user, password)))
    return conn, conn.channel()


def queue_status(node: ClusterNode, name: str) -> dict[str, Any] | None:
    """A replicated queue's line of `cluster_status` (leader, members, in sync), as ``node`` sees it."""
    try:
        queues = node.status()["queues"]
    except (AssertionError, ValueError):
        return None
    return next((q for q in queues if q["name"] == name), None)


def wait_status(node: ClusterNode, name: str, what: Callable[[dict[str, Any]], bool],
                 timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = queue_status(node, name)
        if status is not None and what(status):
            return status
        assert time.monotonic() < deadline, f"{node.name}: {status}\n{node.log.read_text()[-3000:]}"
        time.sleep(0.1)


def drain(node: ClusterNode, queue: str) -> list[tuple[int, bool]]:
    conn, ch = amqp_channel(node)
    got = []
    while (m := ch.basic_get(queue, auto_ack=True))[0] is not None:
        got.append((int(m[2]), bool(m[0].redelivered)))
    conn.close()
    return got


@pytest.fixture
def cluster_node(etcd: Etcd, tmp_path: Path) -> Iterator[Callable[..., ClusterNode]]:
    nodes: list[ClusterNode] = []

    def make(name: str, *extra: str) -> ClusterNode:
        node = ClusterNode(name, etcd, tmp_path, extra)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()
