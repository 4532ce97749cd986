"""Cluster membership on a real etcd: three `hare serve --cluster` nodes on this machine see each
other join, stop, die and come back; `hare ctl cluster_status` and `forget_cluster_node`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pika
import pytest
from conftest import ALL, ClusterNode, start_all
from support import hare_only

pytestmark = [hare_only, pytest.mark.timeout(120)]

def _three(cluster_node: Callable[..., ClusterNode]) -> list[ClusterNode]:
    return list(start_all(cluster_node).values())


def test_three_nodes_see_each_other_with_their_amqp_addresses(
        cluster_node: Callable[..., ClusterNode]) -> None:
    nodes = _three(cluster_node)
    status = nodes[1].status()
    assert status["cluster_name"] == "hare"
    assert status["queues"] == []
    assert [(n["name"], n["alive"], n["amqp"]) for n in status["nodes"]] == [
        (node.name, True, [f"127.0.0.1:{node.port}"]) for node in nodes]
    # each node is a broker: the tutorial's publish and get, on every node
    for node in nodes:
        conn = pika.BlockingConnection(pika.URLParameters(node.url))
        ch = conn.channel()
        ch.queue_declare(queue="hello")
        ch.basic_publish(exchange="", routing_key="hello", body=f"from {node.name}".encode())
        method, _, body = ch.basic_get("hello", auto_ack=True)
        assert body == f"from {node.name}".encode(), method
        conn.close()
    table = nodes[0].ctl("cluster_status").stdout
    assert "Cluster name: hare" in table
    for node in nodes:
        assert f"{node.name}\trunning\t127.0.0.1:{node.port}" in table


def test_a_stopped_node_is_seen_at_once_a_killed_one_when_its_lease_expires(
        cluster_node: Callable[..., ClusterNode]) -> None:
    a, b, c = _three(cluster_node)
    began = time.monotonic()
    b.stop()  # SIGTERM: the node revokes its lease as it leaves
    a.wait_until(lambda seen: seen == {"hare-a": True, "hare-b": False, "hare-c": True}, timeout=5)
    assert time.monotonic() - began < 5
    began = time.monotonic()
    c.kill()  # kill -9: nobody revokes the lease; etcd expires it after its TTL (6 s)
    time.sleep(1)
    assert a.alive()["hare-c"] is True  # its lease runs yet
    seen = a.wait_until(lambda seen: seen.get("hare-c") is False, timeout=15)
    assert seen == {"hare-a": True, "hare-b": False, "hare-c": False}
    assert 3 < time.monotonic() - began < 15
    # both come back: the members are alive again, seen from the node that stayed
    b.start()
    c.start()
    a.wait_until(lambda seen: seen == dict.fromkeys(ALL, True))
    c.wait_until(lambda seen: seen == dict.fromkeys(ALL, True))


def test_forget_cluster_node(cluster_node: Callable[..., ClusterNode]) -> None:
    a, b, c = _three(cluster_node)
    running = a.ctl("forget_cluster_node", "hare-b", check=False)
    assert running.returncode == 69 and "running" in running.stderr, running
    assert a.alive() == dict.fromkeys(ALL, True)
    b.stop()
    a.wait_until(lambda seen: seen.get("hare-b") is False)
    done = a.ctl("forget_cluster_node", "hare-b")
    assert "Removing node hare-b from the cluster" in done.stdout
    for node in (a, c):
        node.wait_until(lambda seen: seen == {"hare-a": True, "hare-c": True}, timeout=5)
    unknown = a.ctl("forget_cluster_node", "hare-x", check=False)
    assert unknown.returncode == 69 and "not_a_cluster_node" in unknown.stderr, unknown


def test_a_second_node_with_a_running_nodes_name_does_not_start(
        cluster_node: Callable[..., ClusterNode]) -> None:
    first = cluster_node("hare-a").start()
    first.wait_until(lambda seen: seen == {"hare-a": True})
    twin = cluster_node("hare-a")
    twin.data_dir = first.data_dir.with_name("twin")
    proc = twin.spawn()
    assert proc.wait(40) == 1
    assert "node name 'hare-a' is in use by a running node of cluster 'hare'" in twin.log.read_text()
    assert first.alive() == {"hare-a": True}


def test_config_keys_name_the_cluster(cluster_node: Callable[..., ClusterNode], etcd: object) -> None:
    node = cluster_node("hare-a")
    conf = node.log.with_name("cluster.conf")
    port = etcd.port  # type: ignore[attr-defined]
    conf.write_text(f"cluster_name = prod\ncluster_formation.etcd.endpoints.1 = 127.0.0.1:{port}\n"
                    f"cluster.listener = 127.0.0.1:{node.cluster_port}\n")
    node.args = ["--node-name", "hare-a", "--config", str(conf)]
    node.start()
    node.wait_until(lambda seen: seen == {"hare-a": True})
    assert node.status()["cluster_name"] == "prod"


def test_a_single_node_is_its_own_cluster(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from hare_node import HareNode
    node = HareNode(tmp_path / "data", tmp_path / "log").start()
    try:
        deadline = time.monotonic() + 10
        while True:
            done = subprocess.run([sys.executable, "-m", "hare", "ctl", "--data-dir", str(node.data_dir),
                                   "cluster_status", "--formatter", "json"], capture_output=True, text=True)
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert done.stdout.strip() == ('{"cluster_name":"hare@localhost","nodes":[{"name":"hare@localhost",'
                                       f'"alive":true,"amqp":["127.0.0.1:{node.port}"]}}],"queues":[]}}')
    finally:
        node.stop()


@pytest.mark.parametrize(("flag", "message"), [
    (("--cluster", "etcd://nohost"), "an etcd endpoint is HOST:PORT"),
    (("--cluster", "etcd://127.0.0.1:1", "--node-name", "a/b"), "a node name is"),
])
def test_bad_cluster_flags_are_usage_errors(tmp_path, flag: tuple[str, ...], message: str) -> None:  # type: ignore[no-untyped-def]
    done = subprocess.run([sys.executable, "-m", "hare", "serve", "--data-dir", str(tmp_path), *flag],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and message in done.stderr, done


def test_no_etcd_to_join_is_an_error_at_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from hare_node import free_port
    conf = tmp_path / "hare.conf"  # RabbitMQ's peer discovery retries: 4 x 500 ms here (10 by default)
    conf.write_text("cluster_formation.discovery_retry_limit = 4\n"
                    "cluster_formation.discovery_retry_interval = 500\n")
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "hare", "serve", "--bind", "127.0.0.1", "--port",
                           str(free_port()), "--data-dir", str(tmp_path / "data"), "--config", str(conf),
                           "--cluster", f"etcd://127.0.0.1:{free_port()}", "--node-name", "lonely"],
                          capture_output=True, text=True, timeout=90)
    assert 2 <= time.monotonic() - began < 20
    assert done.returncode == 1, done
    assert "cannot join the cluster: etcd at 127.0.0.1:" in done.stderr, done.stderr


def test_members_survive_an_etcd_restart_and_the_watch_resumes(
        cluster_node: Callable[..., ClusterNode], etcd: object) -> None:
    a, b, c = _three(cluster_node)
    etcd.stop()  # type: ignore[attr-defined]
    time.sleep(3)  # shorter than the lease: nobody has expired
    assert a.alive() == dict.fromkeys(ALL, True)  # (what a saw last)
    etcd.start()  # type: ignore[attr-defined]
    time.sleep(2)  # the leases are renewed, the watches come back
    b.stop()  # seen through the resumed watch
    a.wait_until(lambda seen: seen == {"hare-a": True, "hare-b": False, "hare-c": True}, timeout=10)
    c.wait_until(lambda seen: seen == {"hare-a": True, "hare-b": False, "hare-c": True}, timeout=10)
    assert "cannot renew the lease" in a.log.read_text()


def test_a_frozen_node_is_seen_gone_and_rejoins_when_it_wakes(
        cluster_node: Callable[..., ClusterNode]) -> None:
    a, b, c = _three(cluster_node)
    assert b.proc is not None
    os.kill(b.proc.pid, signal.SIGSTOP)  # no renewal: its lease expires
    try:
        a.wait_until(lambda seen: seen == {"hare-a": True, "hare-b": False, "hare-c": True}, timeout=15)
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
    # awake, it finds its lease gone and joins again with a new one
    a.wait_until(lambda seen: seen == dict.fromkeys(ALL, True), timeout=15)
    b.wait_until(lambda seen: seen == dict.fromkeys(ALL, True), timeout=5)
    assert "joined again after the lease expired" in b.log.read_text()
