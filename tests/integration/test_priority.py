"""Priority queues (x-max-priority), as RabbitMQ 3.10's classic queues have them: the highest
priority first, FIFO within one priority, priorities above the maximum counted as the maximum."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from support import Inbox, closed_with, deleted_after, get_all, hare_only, unique_name

from hare.testing import EmbeddedBroker

Props = pika.BasicProperties


@pytest.fixture
def declare(admin: BlockingConnection) -> Iterator[Callable[..., str]]:
    """Declare a queue with arguments (deleted after the test); returns its name."""
    with deleted_after(admin, "queue") as names:

        def make(arguments: dict[str, Any] | None = None, durable: bool = False) -> str:
            name = unique_name("prio")
            ch = admin.channel()
            ch.queue_declare(name, durable=durable, arguments=arguments)
            ch.close()
            names.append(name)
            return name

        yield make


def send(ch: BlockingChannel, queue: str, priorities: list[int | None], prefix: str = "m",
         delivery_mode: int | None = None) -> None:
    """Publish one message per priority (body: prefix + index), confirmed."""
    for i, p in enumerate(priorities):
        body = f"{prefix}{i}".encode()
        ch.basic_publish("", queue, body, Props(priority=p, delivery_mode=delivery_mode))


def bodies(ch: BlockingChannel, queue: str) -> list[str]:
    return [b.decode() for b, _ in get_all(ch, queue)]


def test_highest_priority_first_and_fifo_within_one(pub: BlockingChannel,
                                                    declare: Callable[..., str]) -> None:
    q = declare({"x-max-priority": 5})
    send(pub, q, [None, 1, 5, 9, 255, 5, 0, 3, None, 9])
    got = []
    while True:
        method, props, body = pub.basic_get(q, auto_ack=True)
        if method is None:
            break
        got.append((body.decode(), props.priority))
    # above the maximum counts as the maximum (and keeps its property); none counts as 0
    assert got == [("m2", 5), ("m3", 9), ("m4", 255), ("m5", 5), ("m9", 9), ("m7", 3), ("m1", 1),
                   ("m0", None), ("m6", 0), ("m8", None)]


def test_a_prefetch_1_consumer_on_a_backlog_gets_the_highest_first(
        pub: BlockingChannel, declare: Callable[..., str], connection: BlockingConnection) -> None:
    q = declare({"x-max-priority": 10})
    send(pub, q, [0, 1, 2, 3, 4, 5, 0, 5, 10, 7])
    ch = connection.channel()
    ch.basic_qos(prefetch_count=1)
    inbox = Inbox(connection)

    def on_message(c: BlockingChannel, method: Any, props: Props, body: bytes) -> None:
        inbox(c, method, props, body)
        c.basic_ack(method.delivery_tag)

    ch.basic_consume(q, on_message)
    inbox.wait_for(10)
    assert [b.decode() for b in inbox.bodies] == ["m8", "m9", "m5", "m7", "m4", "m3", "m2", "m1", "m0", "m6"]


def test_without_a_backlog_priority_changes_nothing(
        pub: BlockingChannel, declare: Callable[..., str], connection: BlockingConnection) -> None:
    q = declare({"x-max-priority": 10})
    ch = connection.channel()
    inbox = Inbox(connection)
    ch.basic_consume(q, inbox, auto_ack=True)
    send(pub, q, [1, 5, 0, 9, 2])
    inbox.wait_for(5)
    assert [b.decode() for b in inbox.bodies] == ["m0", "m1", "m2", "m3", "m4"]


def test_requeued_messages_return_to_their_place_within_their_priority(
        pub: BlockingChannel, declare: Callable[..., str]) -> None:
    q = declare({"x-max-priority": 5})
    send(pub, q, [2, 2, 2, 1, 3], prefix="r")
    got = [pub.basic_get(q) for _ in range(3)]
    assert [g[2] for g in got] == [b"r4", b"r0", b"r1"]
    pub.basic_nack(got[2][0].delivery_tag, requeue=True)  # r1
    pub.basic_nack(got[0][0].delivery_tag, requeue=True)  # r4
    send(pub, q, [3], prefix="late")
    assert get_all(pub, q) == [(b"r4", True), (b"late0", False), (b"r1", True), (b"r2", False),
                               (b"r3", False)]
    pub.basic_nack(got[1][0].delivery_tag, requeue=True)  # r0
    assert get_all(pub, q) == [(b"r0", True)]


def test_a_closed_channel_returns_its_messages_to_their_priorities(
        pub: BlockingChannel, declare: Callable[..., str], connection: BlockingConnection) -> None:
    q = declare({"x-max-priority": 3})
    send(pub, q, [1, 3, 0, 2])
    ch = connection.channel()
    taken = [ch.basic_get(q)[2] for _ in range(2)]
    assert taken == [b"m1", b"m3"]
    ch.close()
    assert get_all(pub, q) == [(b"m1", True), (b"m3", True), (b"m0", False), (b"m2", False)]


@pytest.mark.parametrize("max_priority, order", [
    (0, ["m0", "m1", "m2", "m3"]),  # x-max-priority 0: no priorities at all
    (1, ["m1", "m3", "m0", "m2"]),  # 2 counts as 1
])
def test_small_maximums(pub: BlockingChannel, declare: Callable[..., str], max_priority: int,
                        order: list[str]) -> None:
    q = declare({"x-max-priority": max_priority})
    send(pub, q, [0, 1, 0, 2])
    assert bodies(pub, q) == order


def test_a_plain_queue_ignores_priorities(pub: BlockingChannel, declare: Callable[..., str]) -> None:
    q = declare()
    send(pub, q, [0, 9, 3])
    assert bodies(pub, q) == ["m0", "m1", "m2"]


def test_drop_head_drops_the_highest_priority_first(pub: BlockingChannel,
                                                    declare: Callable[..., str]) -> None:
    # RabbitMQ drops from the head of the queue, and the head is the highest priority
    q = declare({"x-max-priority": 5, "x-max-length": 3})
    send(pub, q, [1, 5, 2, 0, 3])
    assert bodies(pub, q) == ["m2", "m0", "m3"]


def test_a_backlog_larger_than_memory_keeps_priority_order(pub: BlockingChannel,
                                                           declare: Callable[..., str]) -> None:
    # 256 levels share hare's memory window: each level pages to disk past a few dozen messages
    q = declare({"x-max-priority": 255})
    n = 1200
    priorities = [(i * 7) % 5 * 60 for i in range(n)]  # 0, 60, ... 240
    send(pub, q, priorities, delivery_mode=1)
    assert pub.queue_declare(q, passive=True).method.message_count == n
    want = sorted(range(n), key=lambda i: (-priorities[i], i))
    assert bodies(pub, q) == [f"m{i}" for i in want]


@pytest.mark.parametrize("value, error", [
    (256, "{max_value_exceeded,256}"),
    (-1, "{value_negative,-1}"),
    ("5", '"expected integer, got longstr"'),
    (True, '"expected integer, got bool"'),
])
def test_invalid_max_priority_is_406(connection: BlockingConnection, qname: str, value: object,
                                     error: str) -> None:
    ch = connection.channel()
    err = closed_with(ch, ch.queue_declare, qname, arguments={"x-max-priority": value})
    assert err.reply_code == 406
    assert err.reply_text == (f"PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue '{qname}' "
                              f"in vhost '/': {error}")


def test_redeclare_with_another_max_priority_is_406(connection: BlockingConnection,
                                                    declare: Callable[..., str]) -> None:
    q = declare({"x-max-priority": 5})
    ch = connection.channel()
    ch.queue_declare(q, arguments={"x-max-priority": 5})
    err = closed_with(ch, ch.queue_declare, q, arguments={"x-max-priority": 6})
    assert err.reply_text == (f"PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue '{q}' "
                              "in vhost '/': received '6' but current is '5'")
    ch = connection.channel()
    err = closed_with(ch, ch.queue_declare, q)
    assert err.reply_text == (f"PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue '{q}' "
                              "in vhost '/': received none but current is the value '5' of type 'signedint'")


# -- restarts (hare only) -----------------------------------------------------------------------------


def _connect(broker: EmbeddedBroker) -> BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(broker.url))


@hare_only
def test_a_durable_priority_queue_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with EmbeddedBroker(data_dir=data) as broker:
        conn = _connect(broker)
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("pq", durable=True, arguments={"x-max-priority": 4})
        prios = [0, 3, 4, 1, 3, 0, 4, 2, 9]
        for i, p in enumerate(prios):
            mode = 1 if i == 5 else 2  # the transient one does not survive
            ch.basic_publish("", "pq", b"m%d" % i, Props(priority=p, delivery_mode=mode))
        got = ch.basic_get("pq")  # m2 (priority 4): handed out, never acked
        assert got[2] == b"m2"
        method, _, body = ch.basic_get("pq")
        assert body == b"m6"
        ch.basic_ack(method.delivery_tag)
        # every level has a log of its own
        levels = broker.call(lambda: [lvl for lvl, s in broker.broker.vhosts["/"].queues["pq"].store.order
                                      if s.log is not None])
        assert sorted(levels) == [0, 1, 2, 3, 4]
        conn.close()
    with EmbeddedBroker(data_dir=data) as broker:
        conn = _connect(broker)
        ch = conn.channel()
        ch.confirm_delivery()
        assert ch.queue_declare("pq", durable=True, arguments={"x-max-priority": 4}).method.message_count == 7
        ch.basic_publish("", "pq", b"new3", Props(priority=3, delivery_mode=2))
        ch.basic_publish("", "pq", b"new0", Props(priority=0, delivery_mode=2))
        got = get_all(ch, "pq")
        assert got == [(b"m2", True), (b"m8", False), (b"m1", False), (b"m4", False), (b"new3", False),
                       (b"m7", False), (b"m3", False), (b"m0", False), (b"new0", False)]
        conn.close()
    with EmbeddedBroker(data_dir=data) as broker:  # everything was acked: nothing comes back
        conn = _connect(broker)
        ch = conn.channel()
        assert ch.queue_declare("pq", passive=True).method.message_count == 0
        ch.queue_delete("pq")
        conn.close()
    assert not any((data / "queues").iterdir())  # the logs of every level went with the queue


@hare_only
def test_a_deleted_priority_queue_leaves_no_level_behind(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with EmbeddedBroker(data_dir=data) as broker:
        conn = _connect(broker)
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("pq", durable=True, arguments={"x-max-priority": 2})
        send(ch, "pq", [0, 1, 2], delivery_mode=2)
        assert len(list((data / "queues").iterdir())) == 3
        ch.queue_delete("pq")
        ch.queue_declare("pq", durable=True, arguments={"x-max-priority": 2})  # a new, empty queue
        conn.close()
    with EmbeddedBroker(data_dir=data) as broker:
        conn = _connect(broker)
        ch = conn.channel()
        assert ch.queue_declare("pq", passive=True).method.message_count == 0
        conn.close()
