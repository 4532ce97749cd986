"""What survives a restart of the broker on the same data directory, and what does not."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker
from support import get_all, wait_until

from hare.testing import EmbeddedBroker

pytestmark = pytest.mark.skipif(bool(os.environ.get("HARE_TEST_URL")), reason="restarts a private hare")

PERSISTENT = pika.BasicProperties(delivery_mode=2)
TRANSIENT = pika.BasicProperties(delivery_mode=1)


class Restartable:
    """A broker on one data directory that a test stops and starts again."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.broker: EmbeddedBroker | None = None
        self.conns: list[pika.BlockingConnection] = []

    def start(self) -> Restartable:
        self.broker = EmbeddedBroker(data_dir=self.data_dir).start()
        return self

    def channel(self) -> BlockingChannel:
        assert self.broker is not None
        conn = pika.BlockingConnection(pika.URLParameters(self.broker.url))
        self.conns.append(conn)
        return conn.channel()

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        for conn in self.conns:
            if conn.is_open:
                try:
                    conn.close()
                except Exception:
                    pass
        self.conns.clear()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Restartable]:
    n = Restartable(tmp_path / "data").start()
    yield n
    n.stop()


def exists(node: Restartable, kind: str, name: str) -> bool:
    ch = node.channel()
    declare: Callable[..., object] = ch.exchange_declare if kind == "exchange" else ch.queue_declare
    try:
        declare(name, passive=True)
        return True
    except ChannelClosedByBroker as err:
        assert err.reply_code == 404
        return False


def test_durable_definitions_survive_and_transient_ones_do_not(node: Restartable) -> None:
    ch = node.channel()
    ch.exchange_declare("d-ex", "topic", durable=True, arguments={"alternate-exchange": "ae"})
    ch.exchange_declare("t-ex", "fanout", durable=False)
    ch.queue_declare("d-q", durable=True, arguments={"x-max-priority": 5})
    ch.queue_declare("t-q", durable=False)
    ch.queue_declare("ad-q", durable=True, auto_delete=True)
    ch.queue_declare("x-q", durable=True, exclusive=True)
    node.restart()
    assert exists(node, "exchange", "d-ex")
    assert not exists(node, "exchange", "t-ex")
    assert exists(node, "queue", "d-q")
    assert not exists(node, "queue", "t-q")
    assert not exists(node, "queue", "ad-q")  # auto-delete and exclusive queues never survive
    assert not exists(node, "queue", "x-q")
    ch = node.channel()
    # the same properties and arguments as before: an equivalent redeclare passes, another fails
    ch.exchange_declare("d-ex", "topic", durable=True, arguments={"alternate-exchange": "ae"})
    ch.queue_declare("d-q", durable=True, arguments={"x-max-priority": 5})
    with pytest.raises(ChannelClosedByBroker) as info:
        ch.queue_declare("d-q", durable=True)
    assert info.value.reply_code == 406


def test_durable_bindings_route_after_a_restart(node: Restartable) -> None:
    ch = node.channel()
    ch.exchange_declare("logs", "topic", durable=True)
    ch.exchange_declare("fan", "fanout", durable=True)
    ch.exchange_declare("transient", "direct", durable=False)
    ch.queue_declare("errors", durable=True)
    ch.queue_bind("errors", "logs", "*.error")
    ch.queue_bind("errors", "amq.direct", "err")
    ch.exchange_bind("logs", "fan")  # exchange to exchange: logs receives what fan gets
    ch.queue_bind("errors", "logs", "*.gone")
    ch.queue_unbind("errors", "logs", "*.gone")
    node.restart()
    ch = node.channel()
    ch.confirm_delivery()
    ch.basic_publish("logs", "app.error", b"1")
    ch.basic_publish("amq.direct", "err", b"2")
    ch.basic_publish("fan", "db.error", b"3")
    ch.basic_publish("logs", "app.gone", b"never")
    assert [b for b, _ in get_all(ch, "errors")] == [b"1", b"2", b"3"]


def test_deleted_things_stay_deleted(node: Restartable) -> None:
    ch = node.channel()
    ch.exchange_declare("gone-ex", "direct", durable=True)
    ch.queue_declare("gone-q", durable=True)
    ch.queue_bind("gone-q", "gone-ex", "k")
    ch.basic_publish("", "gone-q", b"x", PERSISTENT)
    ch.queue_delete("gone-q")
    ch.exchange_delete("gone-ex")
    node.restart()
    assert not exists(node, "queue", "gone-q")
    assert not exists(node, "exchange", "gone-ex")
    ch = node.channel()
    ch.queue_declare("gone-q", durable=True)  # a new queue of the same name starts empty
    assert get_all(ch, "gone-q") == []


def test_persistent_messages_in_durable_queues_survive_in_order(node: Restartable) -> None:
    ch = node.channel()
    ch.queue_declare("d", durable=True)
    ch.queue_declare("t", durable=False)
    ch.confirm_delivery()
    for i in range(100):
        ch.basic_publish("", "d", b"p%d" % i, PERSISTENT)
        ch.basic_publish("", "d", b"t%d" % i, TRANSIENT)
        ch.basic_publish("", "t", b"p%d" % i, PERSISTENT)
    node.restart()
    ch = node.channel()
    assert get_all(ch, "d") == [(b"p%d" % i, False) for i in range(100)]
    assert not exists(node, "queue", "t")


def test_unacked_messages_come_back_redelivered_and_acked_ones_do_not(node: Restartable) -> None:
    ch = node.channel()
    ch.queue_declare("work", durable=True)
    ch.confirm_delivery()
    for i in range(10):
        ch.basic_publish("", "work", b"%d" % i, PERSISTENT)
    got = []
    for _ in range(6):
        method, _props, body = ch.basic_get("work")
        got.append((method.delivery_tag, body))
    for tag, _ in got[:3]:
        ch.basic_ack(tag)
    ch.queue_declare("work", durable=True, passive=True)  # a round trip: the acks are in
    node.restart()  # messages 3..5 delivered, not acked
    ch = node.channel()
    assert get_all(ch, "work") == [(b"3", True), (b"4", True), (b"5", True)] + [
        (b"%d" % i, False) for i in range(6, 10)]


def test_a_backlog_larger_than_the_window_survives_and_drains_in_order(node: Restartable) -> None:
    ch = node.channel()
    ch.queue_declare("big", durable=True)
    # committed in transactions of 1,000 (commit-ok once they are on disk): pika's blocking
    # channel would wait for each confirm, 30,000 syncs in a row, a minute on a busy disk
    ch.tx_select()
    body = b"x" * 1000
    for i in range(30_000):  # past the in-memory window: most of it only on disk
        ch.basic_publish("", "big", b"%06d" % i + body, PERSISTENT)
        if i % 1000 == 999:
            ch.tx_commit()
    assert ch.queue_declare("big", durable=True, passive=True).method.message_count == 30_000
    node.restart()
    ch = node.channel()
    assert ch.queue_declare("big", durable=True, passive=True).method.message_count == 30_000
    ch.basic_qos(prefetch_count=500)
    seen = []
    for method, _props, body in ch.consume("big", inactivity_timeout=5):
        if method is None:
            break
        seen.append(int(body[:6]))
        ch.basic_ack(method.delivery_tag)
        if len(seen) == 30_000:
            break
    ch.cancel()
    assert seen == list(range(30_000))

    def on_disk() -> int:
        total = 0
        for p in (node.data_dir / "queues").glob("*/*.seg"):
            try:
                total += p.stat().st_size
            except FileNotFoundError:  # unlinked meanwhile, by the store's thread
                pass
        return total

    wait_until(lambda: on_disk() < 9 << 20)  # acked segments are reclaimed (in the store's thread)


# -- queue features across a restart ------------------------------------------------------------


def count(node: Restartable, queue: str) -> int:
    return node.channel().queue_declare(queue, passive=True).method.message_count


def test_message_ttl_counts_from_the_publish_across_a_restart(node: Restartable) -> None:
    ch = node.channel()
    ch.queue_declare("ttl-long", durable=True, arguments={"x-message-ttl": 60_000})
    ch.queue_declare("ttl-short", durable=True, arguments={"x-message-ttl": 300})
    ch.queue_declare("exp", durable=True)
    ch.confirm_delivery()
    ch.basic_publish("", "ttl-long", b"kept", PERSISTENT)
    ch.basic_publish("", "ttl-short", b"gone", PERSISTENT)
    ch.basic_publish("", "exp", b"gone", pika.BasicProperties(delivery_mode=2, expiration="300"))
    ch.basic_publish("", "exp", b"kept", pika.BasicProperties(delivery_mode=2, expiration="60000"))
    node.stop()
    time.sleep(0.5)  # both short TTLs run out while the broker is down
    node.start()
    ch = node.channel()
    assert get_all(ch, "ttl-long") == [(b"kept", False)]
    wait_until(lambda: count(node, "ttl-short") == 0)
    assert get_all(ch, "exp") == [(b"kept", False)]


def test_message_ttl_expires_recovered_messages_without_a_consumer(node: Restartable) -> None:
    ch = node.channel()
    ch.queue_declare("ttl", durable=True, arguments={"x-message-ttl": 1500})
    ch.confirm_delivery()
    for i in range(20):
        ch.basic_publish("", "ttl", b"%d" % i, PERSISTENT)
    node.restart()
    assert count(node, "ttl") == 20  # not yet due
    wait_until(lambda: count(node, "ttl") == 0, timeout=10)


def test_an_unused_durable_queue_expires_after_a_restart(node: Restartable) -> None:
    ch = node.channel()
    ch.queue_declare("idle", durable=True, arguments={"x-expires": 1000})
    node.stop()
    time.sleep(1.2)
    node.start()
    assert exists(node, "queue", "idle")  # the period starts again at recovery, as in RabbitMQ
    time.sleep(2)  # (not polling: a passive declare is a use, and renews the lease)
    assert not exists(node, "queue", "idle")


def test_dead_lettered_messages_are_durable_in_their_target(node: Restartable) -> None:
    ch = node.channel()
    ch.queue_declare("dlq", durable=True)
    ch.queue_declare("work", durable=True, arguments={"x-dead-letter-exchange": "",
                                                      "x-dead-letter-routing-key": "dlq"})
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", "work", b"%d" % i, PERSISTENT)
    for _ in range(3):
        method, _props, _body = ch.basic_get("work")
        ch.basic_reject(method.delivery_tag, requeue=False)
    wait_until(lambda: count(node, "dlq") == 3)
    node.restart()
    ch = node.channel()
    got = []
    for _ in range(3):
        method, props, body = ch.basic_get("dlq", auto_ack=True)
        death = props.headers["x-death"][0]
        got.append((body, death["reason"], death["queue"], death["count"]))
    assert got == [(b"%d" % i, "rejected", "work", 1) for i in range(3)]
    assert count(node, "work") == 0
