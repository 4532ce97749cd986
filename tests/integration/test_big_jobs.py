"""Big jobs do not stall the broker (issue 12, finding 7). Each test runs a hostile client's big
job beside a healthy client (tests/healthy.py: a confirmed publish + basic.get every 50 ms on its
own connection) and checks that the healthy client's worst round trip stays well under the
freeze the job used to cause, and that the job still does all of its work correctly.

Print the figures: pytest -s tests/integration/test_big_jobs.py
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from hare_node import HareNode
from healthy import HealthyClient
from rawamqp import RawClient, ping, raw_client
from support import wait_until

from hare.amqp import spec
from hare.amqp.frames import method_frame, pack_header

pytestmark = pytest.mark.skipif(bool(os.environ.get("HARE_TEST_URL")), reason="runs a private hare")

WORST = 0.25  # s: the healthy client's worst round trip while the job runs (before: seconds)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[HareNode]:
    n = HareNode(tmp_path / "data", tmp_path / "hare.log", log_level="warning").start()
    try:
        yield n
    finally:
        n.stop()


def passive(ch: pika.adapters.blocking_connection.BlockingChannel, queue: str) -> tuple[int, int]:
    m = ch.queue_declare(queue, passive=True).method
    return m.message_count, m.consumer_count


def publish_many(c: RawClient, queue: str, n: int, persistent: bool = False) -> None:
    """``n`` small messages, body = their number as 8 digits, pipelined on channel 1."""
    if persistent:  # delivery-mode 2
        header = struct.pack(">BHI", 2, 1, 15) + struct.pack(">HHQHB", 60, 0, 8, 0x1000, 2) + b"\xce"
    else:
        header = struct.pack(">BHI", 2, 1, 14) + struct.pack(">HHQH", 60, 0, 8, 0) + b"\xce"
    publish = method_frame(1, spec.BasicPublish(exchange="", routing_key=queue))
    step = 50_000
    for start in range(0, n, step):
        c.send(b"".join(publish + header + struct.pack(">BHI", 3, 1, 8) + b"%08d" % i + b"\xce"
                        for i in range(start, min(n, start + step))))
    ping(c, 1)


def read_deliveries(c: RawClient, n: int, timeout: float = 30.0) -> list[tuple[bool, bytes]]:
    """The next ``n`` deliveries on a raw connection: (redelivered, body), parsed in bulk."""
    out: list[tuple[bool, bytes]] = []
    buf = c.buf
    c.buf = b""
    redelivered = False
    deadline = time.monotonic() + timeout
    c.sock.settimeout(1.0)
    while len(out) < n:
        o = 0
        while len(buf) - o >= 8:
            ftype, _ch, size = struct.unpack_from(">BHI", buf, o)
            if len(buf) - o < 8 + size:
                break
            p = o + 7
            if ftype == 1 and struct.unpack_from(">I", buf, p)[0] == 0x003C003C:  # basic.deliver
                q = p + 4
                q += 1 + buf[q] + 8  # consumer tag, delivery tag
                redelivered = bool(buf[q])
            elif ftype == 3:
                out.append((redelivered, buf[p : p + size]))
            o = p + size + 1
        buf = buf[o:]
        if len(out) >= n:
            break
        assert time.monotonic() < deadline, f"{len(out)} of {n} deliveries"
        try:
            chunk = c.sock.recv(1 << 20)
        except TimeoutError:
            continue
        assert chunk, "the broker closed the connection"
        buf += chunk
    c.buf = buf
    return out


def test_requeue_of_many_unacked_does_not_stall(node: HareNode) -> None:
    """A consumer holding 300,000 unacked messages goes away: they are requeued in slices (the
    healthy client is served between them), all of them, in their order, marked redelivered."""
    n = 300_000
    url = node.url
    hostile = raw_client(url)
    hostile.send_method(1, spec.QueueDeclare(queue="held"))
    hostile.expect(spec.QueueDeclareOk)
    publish_many(hostile, "held", n)
    admin = pika.BlockingConnection(pika.URLParameters(url))
    ach = admin.channel()
    assert passive(ach, "held") == (n, 0)
    hostile.send_method(1, spec.BasicConsume(queue="held", consumer_tag="hold"))  # never acks
    hostile.sock.setblocking(False)

    def all_taken() -> bool:
        try:
            while hostile.sock.recv(1 << 20):
                pass
        except BlockingIOError:
            pass
        return passive(ach, "held")[0] == 0

    wait_until(all_taken, 60)
    with HealthyClient(url) as probe:
        time.sleep(0.3)
        hostile.sock.close()  # the 300,000 unacked messages go back
        wait_until(lambda: passive(ach, "held") == (n, 0), 30)
        time.sleep(0.3)
    print(probe.summary())
    assert not probe.errors
    assert probe.worst < WORST, probe.summary()

    reader = raw_client(url)
    reader.send_method(1, spec.BasicConsume(queue="held", consumer_tag="check", no_ack=True))
    reader.expect(spec.BasicConsumeOk)
    got = read_deliveries(reader, n)
    assert [body for _, body in got] == [b"%08d" % i for i in range(n)]  # every one, in order, once
    assert all(redelivered for redelivered, _ in got)
    reader.close()
    admin.close()


def test_many_messages_expiring_at_once_do_not_stall(node: HareNode) -> None:
    """300,000 messages of a queue with a TTL and a dead-letter exchange expire at the same time:
    they are dead-lettered a time slice per loop turn (the healthy client is served between
    them; all of them were done in one turn, a freeze of seconds), every one, in order."""
    n = 300_000
    url = node.url
    admin = pika.BlockingConnection(pika.URLParameters(url))
    ach = admin.channel()
    ach.queue_declare("expired")
    ach.queue_declare("ttl", arguments={"x-message-ttl": 3000, "x-dead-letter-exchange": "",
                                        "x-dead-letter-routing-key": "expired"})
    hostile = raw_client(url)
    publish_many(hostile, "ttl", n)
    assert passive(ach, "ttl") == (n, 0)
    with HealthyClient(url) as probe:
        wait_until(lambda: passive(ach, "expired") == (n, 0), 60)
        time.sleep(0.3)
    print(probe.summary())
    assert not probe.errors
    assert probe.worst < WORST, probe.summary()
    assert passive(ach, "ttl") == (0, 0)
    reader = raw_client(url)
    reader.send_method(1, spec.BasicConsume(queue="expired", consumer_tag="check", no_ack=True))
    reader.expect(spec.BasicConsumeOk)
    got = read_deliveries(reader, n)
    assert [body for _, body in got] == [b"%08d" % i for i in range(n)]
    reader.close()
    hostile.close()
    admin.close()


def test_closing_many_consumers_does_not_stall(node: HareNode) -> None:
    """Two connections each with 20,000 consumers on one queue, registered in turns; one closes.
    Its consumers leave in O(1) each (they were found by a linear scan: O(n^2), seconds), and the
    other connection's consumers still take deliveries."""
    n = 20_000
    url = node.url
    a, b = raw_client(url), raw_client(url)
    a.send_method(1, spec.QueueDeclare(queue="crowded"))
    a.expect(spec.QueueDeclareOk)
    for start in range(0, n, 1000):
        for c, prefix in ((b, "b"), (a, "a")):
            c.send(b"".join(method_frame(1, spec.BasicConsume(queue="crowded", consumer_tag=f"{prefix}{i}",
                                                              nowait=True, no_ack=True))
                            for i in range(start, start + 1000)))
            ping(c, 1)
    admin = pika.BlockingConnection(pika.URLParameters(url))
    ach = admin.channel()
    assert passive(ach, "crowded") == (0, 2 * n)
    with HealthyClient(url) as probe:
        time.sleep(0.3)
        a.sock.shutdown(socket.SHUT_RDWR)
        a.close()
        wait_until(lambda: passive(ach, "crowded")[1] == n, 30)
        time.sleep(0.3)
    print(probe.summary())
    assert not probe.errors
    assert probe.worst < WORST, probe.summary()
    for i in range(10):
        ach.basic_publish("", "crowded", b"after %d" % i)
    got = read_deliveries(b, 10)
    assert sorted(body for _, body in got) == sorted(b"after %d" % i for i in range(10))
    assert passive(ach, "crowded") == (0, n)
    b.close()
    admin.close()


def content_frames(queue: str, body: bytes, persistent: bool = True, frame_max: int = 131072) -> bytes:
    """basic.publish + header + body frames of one message on channel 1, as one blob."""
    props = b"\x10\x00\x02" if persistent else b"\x00\x00"  # delivery-mode 2, or none
    payload = struct.pack(">HHQ", 60, 0, len(body)) + props
    out = [method_frame(1, spec.BasicPublish(exchange="", routing_key=queue)),
           pack_header(2, 1, len(payload)) + payload + b"\xce"]
    step = frame_max - 8
    for i in range(0, len(body), step):
        part = body[i : i + step]
        out += [pack_header(3, 1, len(part)), part, b"\xce"]
    return b"".join(out)


def test_big_bodies_do_not_stall(tmp_path: Path) -> None:
    """20 connections each publish a 20 MiB persistent message to a durable queue at once. The
    bodies are assembled without a copy of the whole at the end, written to the queue's log by
    the store's thread (they were written in one flush on the event loop: about a second's
    freeze), and read back without copies; they are intact, after a restart too (their CRCs,
    computed in that thread, check)."""
    conns, size = 20, 20 << 20
    node = HareNode(tmp_path / "data", tmp_path / "hare.log", log_level="warning").start()
    try:
        url = node.url
        admin = pika.BlockingConnection(pika.URLParameters(url))
        ach = admin.channel()
        ach.queue_declare("big", durable=True)
        bodies = [bytes([i]) * 1000 + os.urandom(4096) * (size // 4096 - 1) for i in range(conns)]
        blobs = [content_frames("big", body) for body in bodies]
        publishers = [raw_client(url) for _ in range(conns)]

        def publish(c: RawClient, blob: bytes) -> None:
            c.send(blob)
            ping(c, 1)

        with HealthyClient(url) as probe:
            time.sleep(0.3)
            threads = [threading.Thread(target=publish, args=(c, blob))
                       for c, blob in zip(publishers, blobs, strict=True)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            time.sleep(0.5)
        print(probe.summary())
        for c in publishers:
            c.close()
        assert not probe.errors
        assert probe.worst < WORST, probe.summary()
        assert passive(ach, "big") == (conns, 0)
        admin.close()
        del blobs
        node.stop()
        node.start()
        admin = pika.BlockingConnection(pika.URLParameters(node.url))
        ach = admin.channel()
        got = []
        while True:
            method, _props, body = ach.basic_get("big", auto_ack=True)
            if method is None:
                break
            got.append(body)
        assert sorted(got) == sorted(bodies)
        admin.close()
    finally:
        node.stop()


def rchar(pid: int) -> int:
    """Bytes the process has read with read(2)/pread(2)/recv(2) so far (/proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/PID/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="reads /proc/PID/io")
def test_big_bodies_into_a_max_length_queue_are_not_read_back(tmp_path: Path) -> None:
    """A durable queue with x-max-length 1 takes 40 MiB persistent bodies one after another: each
    new one drops the head, which is on disk only. It is dropped without reading its body back
    (an O(body) read on the event loop per publish, and the unlink of its segment, took 50-180 ms
    each): the broker reads little more than the bodies it receives from the socket. The last
    body is the one kept, after a restart too."""
    n, size = 8, 40 << 20
    node = HareNode(tmp_path / "data", tmp_path / "hare.log", log_level="warning").start()
    try:
        assert node.proc is not None
        admin = pika.BlockingConnection(pika.URLParameters(node.url))
        ach = admin.channel()
        ach.queue_declare("capped", durable=True, arguments={"x-max-length": 1})
        c = raw_client(node.url)
        chunk = os.urandom(1 << 20)
        with HealthyClient(node.url) as probe:
            before = rchar(node.proc.pid)
            for i in range(n):
                c.send(content_frames("capped", bytes([i]) * 64 + chunk * (size >> 20)))
                ping(c, 1)
            after = rchar(node.proc.pid)
        print(probe.summary(), f"read {(after - before) >> 20} MiB for {n * size >> 20} MiB sent")
        c.close()
        assert not probe.errors
        assert after - before < n * (size + (1 << 20)) * 1.25, (
            f"{(after - before) >> 20} MiB read for {n * size >> 20} MiB received: the dropped heads "
            "were read back")
        assert probe.worst < WORST, probe.summary()
        assert passive(ach, "capped") == (1, 0)
        admin.close()
        node.stop()
        node.start()
        admin = pika.BlockingConnection(pika.URLParameters(node.url))
        method, _props, body = admin.channel().basic_get("capped", auto_ack=True)
        assert method is not None and body[:64] == bytes([n - 1]) * 64 and len(body) == size + 64
        admin.close()
    finally:
        node.stop()


def test_purge_of_a_long_queue_does_not_stall(tmp_path: Path) -> None:
    """A durable queue of 400,000 persistent messages is purged: purge-ok comes at once with the
    count, the queue is empty for everyone from then on, and the acks the log owes are written in
    slices (the cursor's 8 MiB segment was read and acked record by record in one loop turn);
    after a restart the queue is still empty."""
    n = 400_000
    node = HareNode(tmp_path / "data", tmp_path / "hare.log", log_level="warning").start()
    try:
        c = raw_client(node.url)
        c.send_method(1, spec.QueueDeclare(queue="long", durable=True))
        c.expect(spec.QueueDeclareOk)
        publish_many(c, "long", n, persistent=True)
        admin = pika.BlockingConnection(pika.URLParameters(node.url))
        ach = admin.channel()
        assert passive(ach, "long") == (n, 0)
        with HealthyClient(node.url) as probe:
            time.sleep(0.3)
            assert ach.queue_purge("long").method.message_count == n
            assert passive(ach, "long") == (0, 0)
            ach.basic_publish("", "long", b"after", pika.BasicProperties(delivery_mode=2))
            time.sleep(0.5)
        print(probe.summary())
        assert not probe.errors
        assert probe.worst < WORST, probe.summary()
        c.close()
        admin.close()
        node.stop()
        node.start()
        admin = pika.BlockingConnection(pika.URLParameters(node.url))
        ach = admin.channel()
        method, _props, body = ach.basic_get("long", auto_ack=True)
        assert body == b"after"
        assert passive(ach, "long") == (0, 0)
        admin.close()
    finally:
        node.stop()
