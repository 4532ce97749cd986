"""A quorum queue's group changed by the operator, as rabbitmq-queues does it: `hare ctl grow`,
`shrink`, `add_member`, `delete_member` on three real nodes and a real etcd. A member added
gets every message (it can lead after a failover); a leader removed resigns and an in-sync
member takes over with everything; the last member, or the last in sync, is not removed."""

from __future__ import annotations

import json
from collections.abc import Callable

import pika
import pytest
from conftest import ClusterNode, amqp_channel, drain, start_all, wait_status
from support import hare_only

pytestmark = [hare_only, pytest.mark.timeout(180)]


def _declare(node: ClusterNode, name: str, size: int | None = None) -> None:
    args: dict[str, object] = {"x-queue-type": "quorum"}
    if size is not None:
        args["x-quorum-initial-group-size"] = size
    conn, ch = amqp_channel(node)
    ch.queue_declare(queue=name, durable=True, arguments=args)
    conn.close()


def _publish(node: ClusterNode, queue: str, numbers: range) -> None:
    conn, ch = amqp_channel(node)
    ch.confirm_delivery()
    for i in numbers:
        ch.basic_publish("", queue, str(i).encode(), pika.BasicProperties(delivery_mode=2))
    conn.close()


def _rows(node: ClusterNode, *args: str) -> list[dict[str, object]]:
    done = node.ctl(*args, "--formatter", "json")
    assert done.stdout.startswith("["), done.stdout
    return json.loads(done.stdout[done.stdout.index("["):])


def test_grow_adds_a_member_that_gets_every_message_and_can_lead(
        cluster_node: Callable[..., ClusterNode]) -> None:
    nodes = start_all(cluster_node)
    a, b, c = nodes["hare-a"], nodes["hare-b"], nodes["hare-c"]
    _declare(a, "q1", 1)  # [a]
    _declare(a, "q2", 2)  # [a, b] (the least loaded other node, by name)
    _declare(a, "q3", 1)  # [a]
    conn, ch = amqp_channel(a)
    ch.queue_declare(queue="classic", durable=True)
    conn.close()
    wait_status(c, "q2", lambda s: s["members"] == ["hare-a", "hare-b"] and s["leader"] == "hare-a")
    _publish(a, "q1", range(100))

    grown = _rows(b, "grow", "hare-c", "all", "--queue-pattern", "^q[12]$")
    assert grown == [{"vhost": "/", "name": "q1", "size": 2, "result": "ok"},
                     {"vhost": "/", "name": "q2", "size": 3, "result": "ok"}]
    # even: only groups of an even size (q1 is [a, c]; q3, [a], is odd; q2 has b already)
    assert _rows(c, "grow", "hare-b", "even") == [{"vhost": "/", "name": "q1", "size": 3, "result": "ok"}]
    status = wait_status(a, "q1", lambda s: s["in_sync"] == ["hare-a", "hare-b", "hare-c"])
    assert status["members"] == ["hare-a", "hare-c", "hare-b"]
    assert wait_status(b, "q3", lambda s: True)["members"] == ["hare-a"]
    wait_status(b, "q2", lambda s: s["in_sync"] == ["hare-a", "hare-b", "hare-c"])
    _publish(a, "q1", range(100, 110))  # confirmed by all three now
    # the members added hold everything: the old leader goes, one of them leads with it all
    a.kill()
    status = wait_status(b, "q1", lambda s: s["leader"] in ("hare-b", "hare-c"))
    assert drain(nodes[status["leader"]], "q1") == [(i, False) for i in range(110)]
    # a node that is not running is not added
    c.wait_until(lambda seen: seen.get("hare-a") is False)
    refused = c.ctl("grow", "hare-a", "all", check=False)
    assert refused.returncode != 0 and "node_not_running" in refused.stderr
    # shrink while it is down; q3 has no other member (it waits for a, its only copy)
    wait_status(c, "q2", lambda s: s["leader"] in ("hare-b", "hare-c"))
    assert _rows(c, "shrink", "hare-a") == [
        {"vhost": "/", "name": "q1", "size": 2, "result": "ok"},
        {"vhost": "/", "name": "q2", "size": 2, "result": "ok"},
        {"vhost": "/", "name": "q3", "size": 1, "result": "error: last_node"}]
    assert len(list((a.data_dir / "replicas").glob("*.log"))) == 3
    a.start()  # back: the copies of the queues it left are removed, q3's is kept and led
    wait_status(a, "q3", lambda s: s["leader"] == "hare-a")
    assert len(list((a.data_dir / "replicas").glob("*.log"))) == 1


def test_shrink_removes_a_leader_which_resigns_and_loses_nothing(
        cluster_node: Callable[..., ClusterNode]) -> None:
    nodes = start_all(cluster_node)
    a, b, c = nodes["hare-a"], nodes["hare-b"], nodes["hare-c"]
    _declare(a, "orders")  # [a, b, c], led by a
    _declare(b, "single", 1)  # [b]
    wait_status(a, "orders", lambda s: s["leader"] == "hare-a" and len(s["in_sync"]) == 3)
    _publish(a, "orders", range(50))
    replica_files = list((a.data_dir / "replicas").glob("*.log"))
    assert len(replica_files) == 1

    assert _rows(c, "shrink", "hare-a") == [{"vhost": "/", "name": "orders", "size": 2, "result": "ok"}]
    status = wait_status(b, "orders", lambda s: s["leader"] in ("hare-b", "hare-c")
                         and s["in_sync"] == ["hare-b", "hare-c"])
    assert status["members"] == ["hare-b", "hare-c"]
    assert not replica_files[0].exists()  # its copy is gone with its membership
    # a, a member no more, still takes publishes for it (forwarded to the new leader)
    _publish(a, "orders", range(50, 60))
    assert drain(nodes[status["leader"]], "orders") == [(i, False) for i in range(60)]

    # the last member is not removed; --errors-only lists only what failed
    assert _rows(a, "shrink", "hare-b", "--errors-only") == [
        {"vhost": "/", "name": "single", "size": 1, "result": "error: last_node"}]
    wait_status(a, "orders", lambda s: s["members"] == ["hare-c"])
    assert wait_status(a, "single", lambda s: True)["members"] == ["hare-b"]
    failed = a.ctl("delete_member", "orders", "hare-c", check=False)
    assert failed.returncode != 0 and "last_node" in failed.stderr

    # add_member brings a back: it catches up and is in sync
    done = a.ctl("add_member", "orders", "hare-a")
    assert "Adding a replica for queue orders on node hare-a..." in done.stdout
    wait_status(c, "orders", lambda s: s["members"] == ["hare-c", "hare-a"]
                and s["in_sync"] == ["hare-a", "hare-c"])
    again = a.ctl("add_member", "orders", "hare-a", check=False)
    assert again.returncode != 0 and "already_a_member" in again.stderr
    conn, ch = amqp_channel(a)
    ch.queue_declare(queue="classic", durable=True)
    conn.close()
    classic = a.ctl("add_member", "classic", "hare-b", check=False)
    assert classic.returncode != 0 and "Cannot add members to a classic queue" in classic.stderr
    _publish(c, "orders", range(60, 61))
    assert drain(a, "orders") == [(60, False)]


def test_a_consumer_on_a_node_removed_from_the_group_goes_on_receiving(
        cluster_node: Callable[..., ClusterNode]) -> None:
    nodes = start_all(cluster_node)
    a, c = nodes["hare-a"], nodes["hare-c"]
    _declare(a, "events")  # [a, b, c], led by a
    wait_status(c, "events", lambda s: s["leader"] == "hare-a" and len(s["in_sync"]) == 3)
    conn, ch = amqp_channel(a)
    got: list[int] = []
    ch.basic_consume("events", lambda _ch, _m, _p, body: got.append(int(body)), auto_ack=True)
    _publish(c, "events", range(20))
    deadline = 200
    while len(got) < 20 and deadline:
        conn.process_data_events(time_limit=0.05)
        deadline -= 1
    assert got == list(range(20))
    assert _rows(c, "shrink", "hare-a")[0]["result"] == "ok"
    wait_status(c, "events", lambda s: s["leader"] in ("hare-b", "hare-c") and "hare-a" not in s["in_sync"])
    _publish(c, "events", range(20, 40))
    deadline = 400
    while len(got) < 40 and deadline:
        conn.process_data_events(time_limit=0.05)
        deadline -= 1
    assert got == list(range(40))  # served now through the new leader, nothing twice
    conn.close()
