"""basic.get, the counts of queue.declare and queue.purge through any node are answered by the
node that holds the queue's messages (a quorum queue's leader, a classic queue's home), as one
node would answer them: a message got with acks through another node stays unacked at the
holder until its ack, reject or requeue comes back, and goes back there when the getter goes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pika
import pytest
from conftest import ClusterNode, amqp_channel, drain, start_all, wait_status
from support import hare_only
from test_quorum import QUORUM

pytestmark = [hare_only, pytest.mark.timeout(180)]

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def _counts(node: ClusterNode, queue: str) -> tuple[int, int]:
    conn, ch = amqp_channel(node)
    ok = ch.queue_declare(queue=queue, passive=True).method
    conn.close()
    return int(ok.message_count), int(ok.consumer_count)


def _publish(node: ClusterNode, queue: str, n: int) -> None:
    conn, ch = amqp_channel(node)
    ch.confirm_delivery()
    for i in range(n):
        ch.basic_publish("", queue, str(i).encode(), PERSISTENT)
    conn.close()


def _gets_through(holder: ClusterNode, other: ClusterNode, third: ClusterNode, queue: str) -> None:
    """10 messages at ``holder``; got, settled and purged through ``other``, counted through both."""
    _publish(holder, queue, 10)
    assert _counts(other, queue) == (10, 0)
    conn, ch = amqp_channel(other)
    method, _props, body = ch.basic_get(queue, auto_ack=True)
    assert (body, method.message_count, method.redelivered) == (b"0", 9, False)
    method, _props, body = ch.basic_get(queue)
    assert (body, method.message_count) == (b"1", 8)
    ch.basic_ack(method.delivery_tag)
    method, _props, body = ch.basic_get(queue)
    assert body == b"2"
    ch.basic_reject(method.delivery_tag, requeue=False)  # dropped at the holder (no DLX)
    method, _props, body = ch.basic_get(queue)
    assert body == b"3"
    ch.basic_nack(method.delivery_tag, requeue=True)  # back at the holder, redelivered
    method, _props, body = ch.basic_get(queue)
    assert (body, method.redelivered) == (b"3", True)
    unacked = ch.basic_get(queue)[0]
    assert unacked is not None
    time.sleep(0.3)
    # "3" and "4" are unacked: the holder counts the 5 others
    assert _counts(holder, queue) == (5, 0)
    assert _counts(third, queue) == (5, 0)
    conn.close()  # what it held unacked goes back to the holder
    time.sleep(0.5)
    assert _counts(third, queue) == (7, 0)
    # a purge through another node purges at the holder
    conn, ch = amqp_channel(third)
    assert ch.queue_purge(queue).method.message_count == 7
    assert ch.basic_get(queue)[0] is None
    conn.close()
    assert drain(holder, queue) == []
    # a consumer on one node is counted through another
    conn, ch = amqp_channel(other)
    ch.basic_consume(queue, lambda *_a: None)
    time.sleep(0.5)
    assert _counts(third, queue) == (0, 1)
    assert _counts(holder, queue) == (0, 1)
    conn.close()


def test_a_quorum_queue_is_got_counted_and_purged_through_any_node(
        cluster_node: Callable[..., ClusterNode]) -> None:
    nodes = start_all(cluster_node)
    a, b, c = nodes["hare-a"], nodes["hare-b"], nodes["hare-c"]
    conn, ch = amqp_channel(a)
    ch.queue_declare(queue="tasks", durable=True, arguments={**QUORUM, "x-quorum-initial-group-size": 2})
    conn.close()
    wait_status(c, "tasks", lambda s: s["leader"] == "hare-a" and len(s["in_sync"]) == 2)
    # b is a follower (holds a copy, answers nothing), c is not a member
    _gets_through(a, c, b, "tasks")


def test_a_classic_queue_is_got_counted_and_purged_through_any_node(
        cluster_node: Callable[..., ClusterNode]) -> None:
    nodes = start_all(cluster_node)
    a, b, c = nodes["hare-a"], nodes["hare-b"], nodes["hare-c"]
    conn, ch = amqp_channel(a)
    ch.queue_declare(queue="jobs", durable=True)
    conn.close()
    _gets_through(a, b, c, "jobs")


def test_a_message_got_through_another_node_is_dead_lettered_at_its_home(
        cluster_node: Callable[..., ClusterNode]) -> None:
    nodes = start_all(cluster_node)
    a, b = nodes["hare-a"], nodes["hare-b"]
    conn, ch = amqp_channel(a)
    ch.queue_declare(queue="dead", durable=True)
    ch.queue_declare(queue="work", durable=True, arguments={"x-dead-letter-exchange": "",
                                                            "x-dead-letter-routing-key": "dead"})
    conn.close()
    _publish(a, "work", 2)
    conn, ch = amqp_channel(b)
    got: list[Any] = [ch.basic_get("work") for _ in range(2)]
    assert [m[2] for m in got] == [b"0", b"1"]
    ch.basic_reject(got[0][0].delivery_tag, requeue=False)
    ch.basic_ack(got[1][0].delivery_tag)
    method, props, body = ch.basic_get("dead", auto_ack=True)  # (a classic queue at a too)
    assert body == b"0" and props.headers["x-death"][0]["reason"] == "rejected", props.headers
    conn.close()
    assert _counts(a, "work") == (0, 0) and _counts(a, "dead") == (0, 0)
