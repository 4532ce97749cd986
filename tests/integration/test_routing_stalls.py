"""Routing one hostile publish must not stall the broker for everyone else.

A topic binding with many ``#`` (``#.#.#.#.#.#.#.#``) and one 128-word routing key froze hare for
tens of seconds: the recursive trie walk tried every split point for every ``#``. RabbitMQ
stalls only the publishing channel. Each test runs its own broker in a child process
(``tests/hare_node.py``), killed by a watchdog if it freezes, so a broken build fails in
bounded time instead of hanging.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from hare_node import HareNode
from healthy import HealthyClient
from pika.adapters.blocking_connection import BlockingConnection
from support import drain, unique_name, wait_until

pytestmark = pytest.mark.skipif(bool(os.environ.get("HARE_TEST_URL")), reason="runs a private hare")

VARIANTS = 60  # 4 routing keys each: 240 publishes, none answered from the per-key cache
WATCHDOG = 20.0  # seconds: past this the broker is killed (the old matcher needed minutes)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[HareNode]:
    n = HareNode(tmp_path / "data", tmp_path / "hare.log", log_level="warning").start()
    watchdog = threading.Timer(WATCHDOG, n.kill)
    watchdog.daemon = True
    watchdog.start()
    yield n
    watchdog.cancel()
    n.kill()


@pytest.fixture
def admin(node: HareNode) -> Iterator[BlockingConnection]:
    params = pika.URLParameters(node.url)
    params.socket_timeout = params.stack_timeout = WATCHDOG
    conn = pika.BlockingConnection(params)
    yield conn
    if conn.is_open:
        conn.close()


# binding key -> the routing keys (below) it matches
NASTY = {
    "#.#.#.#.#.#.#.#": {"a", "ab", "b", "bz"},
    "#.a.#.a.#.a.#": {"a", "ab"},
    "#.*.#.*.#.*.#.*.#": {"a", "ab", "b", "bz"},
    "#.a.#.b.#": {"ab"},
    "#.#.#.#.#.#.#.#.z": {"bz"},
    "#.#.#.#.#.#.#.#.a.#.#.#.#.#.#.#.#.b.#.#.#.#.#.#.#.#.c": set(),
}


def long_key(kind: str, variant: int) -> str:
    """A 128-word routing key (255 octets, the most a shortstr holds): ``a`` is all a's, ``ab``
    a's then b, ``b`` all b's, ``bz`` b's then z; one inner word is "c" at a place that depends
    on ``variant`` (so no two publishes hit the exchange's per-key cache)."""
    first, last = (("a", "a"), ("a", "b"), ("b", "b"), ("b", "z"))[("a", "ab", "b", "bz").index(kind)]
    words = [first] * 127 + [last]
    words[1 + variant] = "c"
    return ".".join(words)


def test_topic_bindings_with_many_hashes_do_not_stall_others(node: HareNode,
                                                             admin: BlockingConnection) -> None:
    ch = admin.channel()
    x = unique_name("topic")
    ch.exchange_declare(x, "topic")
    queues = {}
    for binding in NASTY:
        q = queues[binding] = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, x, binding)
    ch.confirm_delivery()
    sent: list[tuple[str, bytes]] = []
    with HealthyClient(node.url, timeout=WATCHDOG) as healthy:
        for variant in range(VARIANTS):
            for kind in ("a", "ab", "b", "bz"):
                key = long_key(kind, variant)
                assert len(key) == 255
                body = f"{kind}-{variant}".encode()
                ch.basic_publish(x, key, body)  # confirmed: routed when this returns
                sent.append((kind, body))
        wait_until(lambda: len(healthy.latencies) >= 10, timeout=WATCHDOG)
    print(healthy.summary())
    for binding, kinds in NASTY.items():
        want = [body for kind, body in sent if kind in kinds]
        assert drain(ch, queues[binding]) == want, binding
    assert healthy.errors == []
    assert healthy.worst < 0.5, healthy.summary()
