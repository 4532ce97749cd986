"""Definitions shared through a real etcd: what one node declares, every node has; a conflicting
declare is refused as on one node; users and vhosts made with `hare ctl` on one node work on the
others; a node that was down catches up; the first node's definitions seed an empty cluster."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from conftest import ALL, ClusterNode, amqp_channel, start_all
from hare_node import HareNode
from support import hare_only

pytestmark = [hare_only, pytest.mark.timeout(120)]

def _three(cluster_node: Callable[..., ClusterNode]) -> list[ClusterNode]:
    return list(start_all(cluster_node).values())


def _passive_queue(node: ClusterNode, name: str) -> int | None:
    """The queue's message count through ``node`` (None: 404)."""
    conn, ch = amqp_channel(node)
    try:
        return int(ch.queue_declare(queue=name, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404, exc
        return None
    finally:
        if conn.is_open:
            conn.close()


def _passive_exchange(node: ClusterNode, name: str) -> bool:
    conn, ch = amqp_channel(node)
    try:
        ch.exchange_declare(exchange=name, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404, exc
        return False
    finally:
        if conn.is_open:
            conn.close()


def test_what_one_node_declares_every_node_has_at_once(cluster_node: Callable[..., ClusterNode]) -> None:
    a, b, c = _three(cluster_node)
    conn, ch = amqp_channel(a)
    ch.exchange_declare(exchange="orders", exchange_type="topic", durable=True)
    ch.queue_declare(queue="eu-orders", durable=True, arguments={"x-max-length": 1000})
    ch.queue_bind(queue="eu-orders", exchange="orders", routing_key="eu.#")
    conn.close()
    # told declare-ok by a: asked at once, b and c know them (no sleep)
    for node in (b, c):
        assert _passive_exchange(node, "orders")
        assert _passive_queue(node, "eu-orders") == 0
    # the binding routes on c: a publish through c to the topic lands in c's share of the queue
    conn, ch = amqp_channel(c)
    ch.confirm_delivery()
    ch.basic_publish(exchange="orders", routing_key="eu.fr.paris", body=b"order 1", mandatory=True)
    method, _, body = ch.basic_get("eu-orders", auto_ack=True)
    assert body == b"order 1", method
    # a declare with other arguments is refused on any node, as on one node
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        ch.queue_declare(queue="eu-orders", durable=True, arguments={"x-max-length": 5})
    assert refused.value.reply_code == 406
    assert "inequivalent arg 'x-max-length'" in refused.value.reply_text
    conn.close()
    # deleted through b: gone everywhere
    conn, ch = amqp_channel(b)
    ch.queue_delete(queue="eu-orders")
    ch.exchange_delete(exchange="orders")
    conn.close()
    for node in (a, c):
        assert _passive_queue(node, "eu-orders") is None
        assert not _passive_exchange(node, "orders")


def test_two_nodes_declaring_the_same_queue_differently_at_once_one_wins(
        cluster_node: Callable[..., ClusterNode]) -> None:
    nodes = _three(cluster_node)
    for round_ in range(5):
        name = f"race-{round_}"
        chans = [amqp_channel(node) for node in nodes[:2]]
        start = threading.Barrier(2)
        results: dict[int, object] = {}

        def declare(i: int, ch: Any, name: str = name, start: threading.Barrier = start,
                    results: dict[int, object] = results) -> None:
            start.wait()
            try:
                ch.queue_declare(queue=name, durable=True, arguments={"x-max-length": 10 + i})
                results[i] = "ok"
            except pika.exceptions.ChannelClosedByBroker as exc:
                results[i] = exc.reply_code

        threads = [threading.Thread(target=declare, args=(i, ch)) for i, (_conn, ch) in enumerate(chans)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results.values(), key=str) == [406, "ok"], results
        winner = 10 + next(i for i, r in results.items() if r == "ok")
        for conn, _ch in chans:
            conn.close()
        for node in nodes:  # every node has the winner's queue
            found = json.loads(node.ctl("list_queues", "name", "arguments", "--formatter", "json").stdout)
            mine = [q for q in found if q["name"] == name]
            assert mine == [{"name": name, "arguments": {"x-max-length": winner}}], node.name


def test_users_vhosts_and_permissions_made_on_one_node_work_on_the_others(
        cluster_node: Callable[..., ClusterNode]) -> None:
    a, b, c = _three(cluster_node)
    a.ctl("add_vhost", "shop")
    a.ctl("add_user", "alice", "s3cret")
    b.ctl("set_permissions", "-p", "shop", "alice", ".*", ".*", ".*")
    b.ctl("set_user_tags", "alice", "monitoring")
    users = json.loads(c.ctl("list_users", "--formatter", "json").stdout)
    assert {"user": "alice", "tags": ["monitoring"]} in users
    conn, ch = amqp_channel(c, "alice", "s3cret", "shop")  # logs in on the third node
    ch.queue_declare(queue="carts")
    conn.close()
    assert "shop" in c.ctl("list_vhosts").stdout
    # a second add of the same user is refused on another node too
    again = b.ctl("add_user", "alice", "other", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr + again.stdout
    c.ctl("delete_user", "alice")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        amqp_channel(a, "alice", "s3cret", "shop")
    b.ctl("delete_vhost", "shop")
    for node in (a, c):
        assert "shop" not in node.ctl("list_vhosts").stdout


def test_a_node_that_was_down_catches_up_and_its_transient_queues_are_gone(
        cluster_node: Callable[..., ClusterNode]) -> None:
    a, b, _c = _three(cluster_node)
    conn, ch = amqp_channel(b)
    ch.queue_declare(queue="b-durable", durable=True)
    ch.queue_declare(queue="b-transient", durable=False)
    ch.queue_declare(queue="to-delete", durable=True)
    conn.close()
    assert _passive_queue(a, "b-transient") == 0
    b.stop()
    conn, ch = amqp_channel(a)
    ch.queue_delete(queue="to-delete")
    ch.exchange_declare(exchange="made-while-b-was-down", exchange_type="fanout", durable=True)
    conn.close()
    b.start()
    b.wait_until(lambda seen: seen == dict.fromkeys(ALL, True))
    assert _passive_queue(b, "to-delete") is None
    assert _passive_exchange(b, "made-while-b-was-down")
    assert _passive_queue(b, "b-durable") == 0
    # a transient queue does not outlive its node's restart, in the whole cluster
    deadline = time.monotonic() + 10
    while _passive_queue(a, "b-transient") is not None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert _passive_queue(b, "b-transient") is None


def test_the_first_node_seeds_the_cluster_and_a_joining_node_takes_its_definitions(
        cluster_node: Callable[..., ClusterNode], tmp_path: Path) -> None:
    a = cluster_node("hare-a").start()
    conn, ch = amqp_channel(a)
    ch.queue_declare(queue="from-a", durable=True)
    conn.close()
    a.ctl("add_user", "bob", "pw")
    a.ctl("set_permissions", "bob", ".*", ".*", ".*")
    # b ran alone before it joined: what it had is replaced by the cluster's (etcd decides)
    alone = HareNode(tmp_path / "hare-b", tmp_path / "alone.log").start()
    conn = pika.BlockingConnection(pika.URLParameters(alone.url))
    conn.channel().queue_declare(queue="b-alone", durable=True)
    conn.close()
    alone.stop()
    b = cluster_node("hare-b").start()
    b.wait_until(lambda seen: seen == {"hare-a": True, "hare-b": True})
    assert _passive_queue(b, "from-a") == 0
    assert _passive_queue(b, "b-alone") is None
    assert _passive_queue(a, "b-alone") is None
    assert "bob" in b.ctl("list_users").stdout
    conn, _ch = amqp_channel(b, "bob", "pw")
    conn.close()


def test_a_bind_through_another_node_right_after_the_declare_finds_the_queue(
        cluster_node: Callable[..., ClusterNode]) -> None:
    a, b, _c = _three(cluster_node)
    conn_a, ch_a = amqp_channel(a)
    conn_b, ch_b = amqp_channel(b)
    for i in range(20):  # b is asked the moment a has answered: b catches up before a 404
        ch_a.queue_declare(queue=f"q{i}", durable=True)
        ch_a.exchange_declare(exchange=f"x{i}", exchange_type="direct")
        ch_b.queue_bind(queue=f"q{i}", exchange=f"x{i}", routing_key="k")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as missing:
        ch_b.queue_bind(queue="never-declared", exchange="x0", routing_key="k")
    assert missing.value.reply_code == 404
    conn_a.close()
    conn_b.close()


def test_policies_exclusive_and_auto_delete_queues_across_nodes(
        cluster_node: Callable[..., ClusterNode]) -> None:
    a, b, c = _three(cluster_node)
    a.ctl("set_policy", "cap", "^capped", '{"max-length": 2}', "--apply-to", "queues")
    policies = json.loads(c.ctl("list_policies", "--formatter", "json").stdout)
    assert [p["name"] for p in policies] == ["cap"]
    conn, ch = amqp_channel(b)
    ch.queue_declare(queue="capped-1")
    for i in range(5):
        ch.basic_publish(exchange="", routing_key="capped-1", body=str(i).encode())
    count = ch.queue_declare(queue="capped-1", passive=True).method.message_count
    assert count == 2  # the policy a set holds on b
    # an exclusive queue is its connection's node's alone
    ch.queue_declare(queue="mine", exclusive=True)
    other, other_ch = amqp_channel(b)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as locked:
        other_ch.queue_declare(queue="mine", passive=True)
    assert locked.value.reply_code == 405  # on its node: another connection's
    other.close()
    assert _passive_queue(a, "mine") is None  # elsewhere: unknown
    # an auto-delete queue goes, on every node, when its last consumer does
    ch.queue_declare(queue="temp", auto_delete=True)
    tag = ch.basic_consume(queue="temp", on_message_callback=lambda *args: None)
    assert _passive_queue(c, "temp") == 0
    ch.basic_cancel(tag)
    deadline = time.monotonic() + 5
    while _passive_queue(c, "temp") is not None or _passive_queue(a, "temp") is not None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    conn.close()
    c.ctl("clear_policy", "cap")
    assert json.loads(a.ctl("list_policies", "--formatter", "json").stdout) == []


def test_a_declare_while_etcd_is_down_is_answered_when_it_is_back(
        cluster_node: Callable[..., ClusterNode], etcd: Any) -> None:
    a, b, _c = _three(cluster_node)
    conn, ch = amqp_channel(a)
    etcd.stop()
    answered: list[float] = []

    def declare() -> None:
        ch.queue_declare(queue="during-outage", durable=True)
        answered.append(time.monotonic())

    began = time.monotonic()
    thread = threading.Thread(target=declare)
    thread.start()
    time.sleep(2)
    assert not answered  # the declare waits: nothing is answered before the cluster has it
    etcd.start()
    thread.join(timeout=25)
    assert answered and answered[0] - began < 25
    conn.close()
    assert _passive_queue(b, "during-outage") == 0


def test_definitions_imported_through_one_node_are_the_clusters(
        cluster_node: Callable[..., ClusterNode], tmp_path: Path) -> None:
    a, b, _c = _three(cluster_node)
    definitions = {
        "users": [{"name": "carol", "password": "pw", "tags": ""}],
        "vhosts": [{"name": "imported"}],
        "permissions": [{"user": "carol", "vhost": "imported", "configure": ".*", "write": ".*",
                         "read": ".*"}],
        "policies": [{"vhost": "imported", "name": "ttl", "pattern": ".*", "apply-to": "queues",
                      "definition": {"message-ttl": 60000}, "priority": 0}],
        "exchanges": [{"name": "events", "vhost": "imported", "type": "fanout", "durable": True}],
        "queues": [{"name": f"audit-{i}", "vhost": "imported", "durable": True} for i in range(5)],
        "bindings": [{"source": "events", "vhost": "imported", "destination": f"audit-{i}",
                      "destination_type": "queue", "routing_key": ""} for i in range(5)],
    }
    path = tmp_path / "defs.json"
    path.write_text(json.dumps(definitions))
    a.ctl("import_definitions", str(path))
    conn, ch = amqp_channel(b, "carol", "pw", "imported")
    ch.confirm_delivery()
    ch.basic_publish(exchange="events", routing_key="", body=b"e")
    for i in range(5):  # the bindings route on b
        assert ch.queue_declare(queue=f"audit-{i}", passive=True).method.message_count == 1
    conn.close()
    exported = json.loads(b.ctl("export_definitions", "-").stdout)
    names = {q["name"] for q in exported["queues"] if q["vhost"] == "imported"}
    assert names == {f"audit-{i}" for i in range(5)}
    assert [p["name"] for p in exported["policies"]] == ["ttl"]
