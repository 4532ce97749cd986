"""Faults under load: confirmed publishing and consuming through every node of three, on one
quorum queue, while its leader is killed, a follower is killed, the leader is frozen past its
lease, the leader is cut from etcd and the other nodes but not from its clients (a partition:
each node in a network namespace of its own, nft drop rules; `netns.py`), and the whole cluster
restarts. After healing, every confirmed message was delivered (at least once), nothing unknown
appeared; the report counts duplicates and the longest window without a confirm."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest
from conftest import ALL, ClusterNode
from etcd_server import Etcd
from netns import Network, require_netns
from support import hare_only

pytestmark = [hare_only, pytest.mark.timeout(300)]

SEED = 10


class Publisher(threading.Thread):
    """Publishes numbered persistent messages through one node with confirms, one at a time;
    reconnects when the node goes; a nacked or unanswered message is published again."""

    def __init__(self, node: ClusterNode, tag: str, confirmed: set[str], times: list[float],
                 lock: threading.Lock) -> None:
        super().__init__(daemon=True)
        self.node, self.tag = node, tag
        self.confirmed, self.times, self.lock = confirmed, times, lock
        self.published: set[str] = set()
        self.stopping = threading.Event()
        self.n = 0

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                conn = pika.BlockingConnection(pika.ConnectionParameters(
                    self.node.host, self.node.port, socket_timeout=2, blocked_connection_timeout=5,
                    connection_attempts=1))
                ch = conn.channel()
                ch.confirm_delivery()
                while not self.stopping.is_set():
                    body = f"{self.tag}-{self.n}"
                    self.published.add(body)
                    try:
                        ch.basic_publish("", "faults", body.encode(), pika.BasicProperties(delivery_mode=2))
                    except pika.exceptions.NackError:
                        time.sleep(0.05)
                        continue  # the same message again
                    with self.lock:
                        self.confirmed.add(body)
                        self.times.append(time.monotonic())
                    self.n += 1
                conn.close()
            except (pika.exceptions.AMQPError, OSError, AssertionError):
                time.sleep(0.2)


class Consumer(threading.Thread):
    """Consumes through one node with acks (prefetch 50), reconnecting when the node goes."""

    def __init__(self, node: ClusterNode, got: list[str], lock: threading.Lock) -> None:
        super().__init__(daemon=True)
        self.node, self.got, self.lock = node, got, lock
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                conn = pika.BlockingConnection(pika.ConnectionParameters(
                    self.node.host, self.node.port, socket_timeout=2, connection_attempts=1))
                ch = conn.channel()
                ch.basic_qos(prefetch_count=50)

                def on_message(chan: object, method: object, _props: object, body: bytes) -> None:
                    with self.lock:
                        self.got.append(body.decode())
                    chan.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]

                ch.basic_consume(queue="faults", on_message_callback=on_message)
                while not self.stopping.is_set():
                    conn.process_data_events(time_limit=0.1)
                conn.close()
            except (pika.exceptions.AMQPError, OSError, AssertionError):
                time.sleep(0.2)


def _leader(nodes: dict[str, ClusterNode], timeout: float = 30,
            asked: list[ClusterNode] | None = None) -> ClusterNode:
    """The queue's leader, as the first of ``asked`` (default: every node) that knows one says."""
    deadline = time.monotonic() + timeout
    while True:
        for node in asked or nodes.values():
            try:
                queues = node.status()["queues"]
            except (AssertionError, ValueError, OSError):
                continue
            leader = next((q["leader"] for q in queues if q["name"] == "faults"), None)
            if leader in nodes and nodes[leader].proc is not None and nodes[leader].proc.poll() is None:
                return nodes[leader]
        assert time.monotonic() < deadline, "no leader"
        time.sleep(0.2)


def _new_leader(nodes: dict[str, ClusterNode], old: str, timeout: float = 30) -> ClusterNode:
    """The leader after ``old``, as the other nodes see it (``old`` may not know yet)."""
    deadline = time.monotonic() + timeout
    others = [n for n in nodes.values() if n.name != old]
    while (leader := _leader(nodes, timeout, others)).name == old:
        assert time.monotonic() < deadline, "the leader did not change"
        time.sleep(0.2)
    return leader


def _caught_up(node: ClusterNode, timeout: float = 30) -> None:
    """``node`` (back from a partition) sees another leader of the queue, and is in its ISR."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            queue = next(q for q in node.status()["queues"] if q["name"] == "faults")
            if queue["leader"] not in (None, node.name) and node.name in queue["in_sync"]:
                return
        except (AssertionError, ValueError, OSError, StopIteration):
            pass
        assert time.monotonic() < deadline, f"{node.name} did not rejoin\n{node.log.read_text()[-5000:]}"
        time.sleep(0.2)


@pytest.fixture
def network() -> Iterator[Network]:
    require_netns()
    net = Network(len(ALL))
    yield net
    net.close()


@pytest.fixture
def nodes(network: Network, tmp_path: Path) -> Iterator[dict[str, ClusterNode]]:
    """etcd beside the clients, and ALL, each in its namespace (guest may log in from the
    clients' address: ``loopback_users = none``)."""
    etcd = Etcd(tmp_path / "etcd", host=network.etcd).start()
    made = {name: ClusterNode(name, etcd, tmp_path, host=network.address(i), prefix=network.prefix_of(i),
                              config="loopback_users = none\n") for i, name in enumerate(ALL)}
    try:
        for node in made.values():
            node.start()
        for node in made.values():
            node.wait_until(lambda seen: seen == dict.fromkeys(ALL, True))
        yield made
    finally:
        for node in made.values():
            node.stop()
        etcd.stop()


def test_confirmed_messages_survive_kills_a_freeze_a_partition_and_a_whole_cluster_restart(
        nodes: dict[str, ClusterNode], network: Network) -> None:
    rng = random.Random(SEED)
    conn = pika.BlockingConnection(pika.ConnectionParameters(nodes["hare-a"].host, nodes["hare-a"].port))
    conn.channel().queue_declare(queue="faults", durable=True, arguments={"x-queue-type": "quorum"})
    conn.close()
    _leader(nodes)
    confirmed: set[str] = set()
    times: list[float] = []
    lock = threading.Lock()
    publishers = [Publisher(node, f"p{i}", confirmed, times, lock) for i, node in enumerate(nodes.values())]
    consumed: list[str] = []
    consumers = [Consumer(node, consumed, lock) for node in nodes.values()]
    began = time.monotonic()
    for p in publishers:
        p.start()
    for cons in consumers:
        cons.start()
    time.sleep(2)
    log: list[str] = []

    # 1. kill -9 of the leader, back after the failover
    leader = _leader(nodes)
    leader.kill()
    log.append(f"{time.monotonic() - began:.1f} s: killed leader {leader.name}")
    _new_leader(nodes, leader.name)
    time.sleep(1)
    leader.start()
    time.sleep(2)
    # 2. kill -9 of a follower, back a second later
    leader = _leader(nodes)
    follower = nodes[rng.choice([n for n in ALL if n != leader.name])]
    follower.kill()
    log.append(f"{time.monotonic() - began:.1f} s: killed follower {follower.name}")
    time.sleep(1)
    follower.start()
    time.sleep(2)
    # 3. the leader frozen past its lease, then woken
    leader = _leader(nodes)
    assert leader.proc is not None
    os.kill(leader.proc.pid, signal.SIGSTOP)
    log.append(f"{time.monotonic() - began:.1f} s: froze leader {leader.name}")
    try:
        _new_leader(nodes, leader.name)
    finally:
        os.kill(leader.proc.pid, signal.SIGCONT)
    time.sleep(2)
    # 4. the leader cut from etcd and the other nodes, not from its clients; healed after the
    # others have elected a leader and served through it for a while
    leader = _leader(nodes)
    cut = ALL.index(leader.name)
    network.partition(cut)
    log.append(f"{time.monotonic() - began:.1f} s: cut leader {leader.name} off")
    try:
        _new_leader(nodes, leader.name)
        time.sleep(3)
    finally:
        network.heal(cut)
    _caught_up(leader)
    time.sleep(2)
    # 5. the whole cluster stops and starts again
    for node in nodes.values():
        node.stop()
    log.append(f"{time.monotonic() - began:.1f} s: stopped the whole cluster")
    for node in nodes.values():
        node.start()
    for node in nodes.values():
        node.wait_until(lambda seen: seen == dict.fromkeys(ALL, True), timeout=30)
    _leader(nodes)
    time.sleep(2)
    for p in publishers:
        p.stopping.set()
    for p in publishers:
        p.join(timeout=15)
    ended = time.monotonic()
    time.sleep(3)  # the consumers take what is left
    for cons in consumers:
        cons.stopping.set()
    for cons in consumers:
        cons.join(timeout=15)

    leader = _leader(nodes)
    conn = pika.BlockingConnection(pika.ConnectionParameters(leader.host, leader.port))
    ch = conn.channel()
    got: list[str] = []
    while (m := ch.basic_get("faults", auto_ack=True))[0] is not None:
        got.append(m[2].decode())
    conn.close()
    published = set().union(*(p.published for p in publishers))
    delivered = consumed + got
    missing = confirmed - set(delivered)
    unknown = set(delivered) - published
    duplicates = len(delivered) - len(set(delivered))
    stamps = [began, *sorted(times), ended]
    gap, gap_at = max((b - a, a - began) for a, b in zip(stamps, stamps[1:], strict=False))
    print(f"\nfaults: {'; '.join(log)}\nconfirmed {len(confirmed)}, delivered {len(delivered)} "
          f"({len(consumed)} to the consumers, {len(got)} left), duplicates {duplicates}, longest "
          f"window without a confirm {gap:.1f} s (from {gap_at:.1f} s)")
    assert len(confirmed) > 100  # publishing went on through the faults
    assert len(consumed) > 100  # and consuming
    assert not missing, sorted(missing)[:20]
    assert not unknown, sorted(unknown)[:20]
