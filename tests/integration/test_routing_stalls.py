"""Routing one hostile publish must not stall the broker for everyone else.

A topic binding with many ``#`` (``#.#.#.#.#.#.#.#``) and one 128-word routing key froze hare for
tens of seconds: the recursive trie walk tried every split point for every ``#``. RabbitMQ
stalls only the publishing channel. Each test runs its own broker in a child process
(``tests/hare_node.py``), killed by a watchdog if it freezes, so a broken build fails in
bounded time instead of hanging.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from hare_node import HareNode
from healthy import HealthyClient
from pika.adapters.blocking_connection import BlockingConnection
from rawamqp import ping, raw_client
from support import drain, unique_name, wait_until

from hare.amqp import spec
from hare.amqp.frames import FRAME_BODY, FRAME_END_BYTE, header_frame, method_frame, pack_header
from hare.amqp.properties import encode_properties

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


WIDE_ENTRIES = 6_000  # ~120 KiB of properties: as wide as a content header in a 128 KiB frame
BOUND = 20  # header names the headers exchange's bindings compare


@functools.cache
def wide_properties(routed: bool) -> bytes:
    """Wide headers with every bound name among them (so no search can skip the walk), routed
    by the binding of b0 or by none."""
    headers: dict[str, object] = {f"k{i}": f"value-{i}" for i in range(WIDE_ENTRIES)}
    headers.update({f"b{i}": "other" for i in range(BOUND)})
    if routed:
        headers["b0"] = "wanted"
    return encode_properties({"headers": headers})


def wide_publishes(slot: int, start: int, count: int) -> bytes:
    """``count`` pipelined publishes to amq.headers with wide headers: the first routes, with the
    body ``slot-start``, the others route nowhere."""
    props = [wide_properties(True), wide_properties(False)]
    publish = method_frame(1, spec.BasicPublish(exchange="amq.headers", routing_key=""))
    out = []
    for n in range(count):
        body = f"{slot}-{start}".encode() if n == 0 else b"x"
        out += [publish, header_frame(1, len(body), props[n != 0]),
                pack_header(FRAME_BODY, 1, len(body)), body, FRAME_END_BYTE]
    return b"".join(out)


def test_wide_headers_through_a_headers_exchange_do_not_stall_others(
        node: HareNode, admin: BlockingConnection) -> None:
    """Two publishers flood a headers exchange with messages whose headers have 6,000 entries:
    routing each one reads its whole table (and publish checks it). That work runs on the
    broker's loop; it must not starve other clients (before: the healthy client's p50 47 ms with
    20 bindings; RabbitMQ 1.5 ms), and the floods' own messages are all routed, in order."""
    ch = admin.channel()
    queues = []
    for i in range(BOUND):
        queues.append(ch.queue_declare("", exclusive=True).method.queue)
        ch.queue_bind(queues[-1], "amq.headers", arguments={"x-match": "all", f"b{i}": "wanted"})
    per_batch = 20
    stop = threading.Event()
    batches = [0, 0]

    def flood(slot: int) -> None:
        c = raw_client(node.url)
        c.sock.settimeout(WATCHDOG)
        while not stop.is_set():
            c.send(wide_publishes(slot, batches[slot], per_batch))
            batches[slot] += 1
        ping(c, 1)  # the broker took every publish (and closed nothing)
        c.close()

    floods = [threading.Thread(target=flood, args=(i,), daemon=True) for i in range(2)]
    for t in floods:
        t.start()
    time.sleep(0.5)
    with HealthyClient(node.url, timeout=WATCHDOG) as healthy:
        time.sleep(4)
    stop.set()
    for t in floods:
        t.join(WATCHDOG)
    print(healthy.summary(), "wide publishes sent:", [b * per_batch for b in batches])
    assert healthy.errors == []
    assert min(batches) >= 5, batches  # both floods kept the broker busy
    got = drain(ch, queues[0])
    for slot in (0, 1):
        assert [b for b in got if b.startswith(b"%d-" % slot)] == [
            b"%d-%d" % (slot, n) for n in range(batches[slot])]
    assert len(got) == sum(batches)
    assert healthy.percentile(50) < 0.010, healthy.summary()
    assert healthy.worst < 0.25, healthy.summary()
