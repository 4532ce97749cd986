"""The deletions the broker makes by itself go through the command layer: each is persisted (after
a restart on the same data directory the deleted things are gone and the others are there) and
announced once to ``broker.commands.listeners``, with its reason."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from support import wait_until

from hare.broker.events import Event
from hare.testing import EmbeddedBroker

pytestmark = pytest.mark.skipif(bool(os.environ.get("HARE_TEST_URL")), reason="restarts a private hare")


class Node:
    """An embedded broker on one data directory, with a listener recording the events."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.broker: EmbeddedBroker | None = None
        self.events: list[Event] = []
        self.conns: list[pika.BlockingConnection] = []

    def start(self) -> Node:
        self.broker = EmbeddedBroker(data_dir=self.data_dir).start()
        self.broker.call(self.broker.broker.commands.listeners.append, self.events.append)
        return self

    def restart(self) -> Node:
        self.stop()
        self.events.clear()
        return self.start()

    def stop(self) -> None:
        for conn in self.conns:
            if conn.is_open:
                conn.close()
        self.conns.clear()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def connect(self) -> pika.BlockingConnection:
        assert self.broker is not None
        conn = pika.BlockingConnection(pika.URLParameters(self.broker.url))
        self.conns.append(conn)
        return conn

    def call(self, fn: Any, *args: Any) -> Any:
        assert self.broker is not None
        return self.broker.call(fn, *args)

    def names(self, vhost: str = "/") -> tuple[set[str], set[str]]:
        """The vhost's queues and (non-standard) exchanges."""
        b = self.broker
        assert b is not None

        def read() -> tuple[set[str], set[str]]:
            v = b.broker.vhosts[vhost]
            return set(v.queues), {n for n in v.exchanges if n and not n.startswith("amq.")}
        return self.call(read)

    def bindings(self, exchange: str, vhost: str = "/") -> set[tuple[str, str]]:
        b = self.broker
        assert b is not None
        return self.call(lambda: {(d.name, key) for (d, key, _f)
                                  in b.broker.vhosts[vhost].exchanges[exchange].bindings})

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path / "data").start()
    yield n
    n.stop()


def test_an_auto_delete_queue_and_exchange_go_with_the_last_consumer(node: Node) -> None:
    ch = node.connect().channel()
    ch.exchange_declare("ax", "direct", durable=True, auto_delete=True)
    ch.exchange_declare("keep-x", "direct", durable=True)
    ch.queue_declare("aq", durable=True, auto_delete=True)
    ch.queue_declare("keep-q", durable=True)
    ch.queue_bind("aq", "ax", "k")
    ch.queue_bind("keep-q", "keep-x", "k")
    tag = ch.basic_consume("aq", lambda *a: None)
    node.events.clear()
    ch.basic_cancel(tag)
    wait_until(lambda: len(node.of("exchange.deleted")) == 1)
    [q] = node.of("queue.deleted")
    assert (q.vhost, q.name, q.reason) == ("/", "aq", "auto_delete")
    [b] = node.of("binding.deleted")
    assert (b.name, b.details["destination"], b.details["routing_key"], b.reason) == ("ax", "aq", "k",
                                                                                      "queue_deleted")
    [x] = node.of("exchange.deleted")
    assert (x.name, x.reason) == ("ax", "auto_delete")
    assert [e.kind for e in node.events] == ["queue.deleted", "binding.deleted", "exchange.deleted"]
    node.restart()
    assert node.names() == ({"keep-q"}, {"keep-x"})
    assert node.bindings("keep-x") == {("keep-q", "k")}
    assert node.events == []  # recovery is a read: nothing announced


def test_an_exclusive_queue_goes_with_its_connection(node: Node) -> None:
    conn = node.connect()
    ch = conn.channel()
    ch.exchange_declare("x", "fanout", durable=True)
    ch.queue_declare("mine", exclusive=True)
    ch.queue_bind("mine", "x", "m")
    ch.queue_declare("kept", durable=True)
    ch.queue_bind("kept", "x", "k")
    node.events.clear()
    conn.close()
    wait_until(lambda: node.of("queue.deleted"))
    time.sleep(0.1)  # nothing more comes
    [q] = node.of("queue.deleted")
    assert (q.name, q.reason) == ("mine", "exclusive_owner_closed")
    [b] = node.of("binding.deleted")
    assert (b.name, b.details["destination"], b.reason) == ("x", "mine", "queue_deleted")
    assert node.of("exchange.deleted") == []  # x is not auto-delete
    node.restart()
    assert node.names() == ({"kept"}, {"x"})
    assert node.bindings("x") == {("kept", "k")}


def test_a_queue_unused_for_its_x_expires_is_deleted_for_good(node: Node) -> None:
    ch = node.connect().channel()
    ch.exchange_declare("x", "direct", durable=True)
    ch.queue_declare("short", durable=True, arguments={"x-expires": 200})
    ch.queue_bind("short", "x", "s")
    ch.queue_declare("long", durable=True, arguments={"x-expires": 600_000})
    ch.queue_bind("long", "x", "l")
    node.events.clear()
    wait_until(lambda: node.of("queue.deleted"))
    [q] = node.of("queue.deleted")
    assert (q.name, q.reason) == ("short", "expired")
    [b] = node.of("binding.deleted")
    assert (b.details["destination"], b.reason) == ("short", "queue_deleted")
    node.restart()
    assert node.names() == ({"long"}, {"x"})
    assert node.bindings("x") == {("long", "l")}


def test_the_bindings_of_a_deleted_exchange_go_and_an_auto_delete_source_with_them(node: Node) -> None:
    ch = node.connect().channel()
    ch.exchange_declare("src", "topic", durable=True, auto_delete=True)
    ch.exchange_declare("dest", "fanout", durable=True)
    ch.exchange_declare("other", "topic", durable=True)
    ch.queue_declare("q", durable=True)
    ch.exchange_bind("dest", "src", "a.#")
    ch.exchange_bind("dest", "other", "b.#")
    ch.queue_bind("q", "dest", "")
    ch.queue_bind("q", "other", "c")
    node.events.clear()
    ch.exchange_delete("dest")
    wait_until(lambda: len(node.of("exchange.deleted")) == 2)
    assert [(e.kind, e.name, e.reason) for e in node.events if e.kind == "exchange.deleted"] == [
        ("exchange.deleted", "dest", None), ("exchange.deleted", "src", "auto_delete")]
    gone = {(e.name, e.details["destination"], e.reason) for e in node.of("binding.deleted")}
    assert gone == {("dest", "q", "exchange_deleted"), ("src", "dest", "exchange_deleted"),
                    ("other", "dest", "exchange_deleted")}
    assert len(node.of("binding.deleted")) == 3
    node.restart()
    assert node.names() == ({"q"}, {"other"})
    assert node.bindings("other") == {("q", "c")}


def test_a_deleted_vhost_takes_everything_in_it(node: Node) -> None:
    c = node.call(lambda: node.broker.broker.commands)  # type: ignore[union-attr]
    node.call(c.add_vhost, "gone")
    node.call(c.set_permissions, "guest", "gone", ".*", ".*", ".*")
    assert node.broker is not None
    url = node.broker.url.rstrip("/") + "/gone"
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.exchange_declare("gx", "direct", durable=True)
    ch.queue_declare("gq", durable=True)
    ch.queue_bind("gq", "gx", "k")
    conn.close()
    node.connect().channel().queue_declare("stays", durable=True)
    node.events.clear()
    node.call(c.delete_vhost, "gone")
    assert node.events[-1] == Event("vhost.deleted", "gone", "gone", {})
    assert [(e.name, e.reason) for e in node.of("queue.deleted")] == [("gq", "vhost_deleted")]
    assert ("gx", "vhost_deleted") in [(e.name, e.reason) for e in node.of("exchange.deleted")]
    assert len(node.of("exchange.deleted")) == len({e.name for e in node.of("exchange.deleted")})
    node.restart()
    assert node.call(lambda: sorted(node.broker.broker.vhosts)) == ["/"]  # type: ignore[union-attr]
    assert node.names() == ({"stays"}, set())


def test_commands_announce_what_they_change_and_nothing_else(node: Node) -> None:
    ch = node.connect().channel()
    ch.exchange_declare("x", "direct", durable=True)
    ch.exchange_declare("x", "direct", durable=True)  # there already: no change
    ch.queue_declare("q", durable=True)
    ch.queue_declare("q", passive=True)
    ch.queue_bind("q", "x", "k")
    ch.queue_bind("q", "x", "k")
    ch.basic_publish("x", "k", b"m")  # messages are no metadata
    ch.queue_unbind("q", "x", "k")
    ch.queue_delete("q")
    ch.exchange_delete("x")
    c = node.call(lambda: node.broker.broker.commands)  # type: ignore[union-attr]
    node.call(c.set_policy, node.call(c.vhost, "/"), "p", "^q", {"max-length": 1})
    node.call(c.clear_policy, node.call(c.vhost, "/"), "p")
    wait_until(lambda: node.of("policy.cleared"))
    assert [(e.kind, e.name, e.reason) for e in node.events] == [
        ("exchange.created", "x", None), ("queue.created", "q", None), ("binding.created", "x", None),
        ("binding.deleted", "x", None), ("queue.deleted", "q", None), ("exchange.deleted", "x", None),
        ("policy.set", "p", None), ("policy.cleared", "p", None)]


def test_recovery_writes_nothing_to_the_definitions_store(tmp_path: Path) -> None:
    from hare.broker.broker import Broker

    n = Node(tmp_path / "data").start()
    ch = n.connect().channel()
    ch.exchange_declare("x", "topic", durable=True)
    ch.queue_declare("q", durable=True)
    ch.queue_bind("q", "x", "#")
    n.stop()
    before = sqlite3.connect(tmp_path / "data" / "definitions.sqlite3").execute(
        "SELECT count(*) FROM queues").fetchone()
    broker = Broker(data_dir=tmp_path / "data")
    try:
        assert broker.definitions is not None
        assert broker.definitions.db.total_changes == 0
        assert "q" in broker.vhosts["/"].queues
    finally:
        broker.close()
    assert before == (1,)
