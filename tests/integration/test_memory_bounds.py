"""Memory a client controls has a ceiling (issue 12, findings 4 and 5), measured on a real
`hare serve` process (its RSS) beside a healthy client:

- a client that never reads while its mandatory publishes are returned is not read either once
  its output backs up (as RabbitMQ's credit flow stops its reader);
- a prefetch-0 consumer that never reads gets no more deliveries once its output backs up, and
  the messages wait in the queue for others;
- a prefetch-0 consumer that never acks holds only its share of unacked messages once the memory
  is past half the watermark, so it cannot bring the memory alarm (which blocks everyone) alone;
- a queue's memory window counts its messages' property bytes (wide headers), not only bodies.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from pathlib import Path

import pika
import pytest
from hare_node import HareNode
from healthy import HealthyClient
from rawamqp import RawClient, raw_client
from support import wait_until

from hare.amqp import spec
from hare.amqp.frames import pack_header
from hare.amqp.properties import encode_properties

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("HARE_TEST_URL")) or not Path("/proc/self/statm").exists(),
    reason="runs private hares, reads /proc")

MiB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss(node: HareNode) -> int:
    assert node.proc is not None
    with open(f"/proc/{node.proc.pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


def publishes(routing_key: str, body: bytes, count: int, mandatory: bool = False,
              props: bytes = b"\x00\x00") -> bytes:
    """``count`` basic.publish frames with their content, on channel 1, as one buffer."""
    method = spec.BasicPublish(exchange="", routing_key=routing_key, mandatory=mandatory).encode()
    header = struct.pack(">HHQ", 60, 0, len(body)) + props
    one = [pack_header(1, 1, len(method)), method, b"\xce", pack_header(2, 1, len(header)), header, b"\xce"]
    for i in range(0, len(body), 131064):
        part = body[i:i + 131064]
        one += [pack_header(3, 1, len(part)), part, b"\xce"]
    return b"".join(one) * count


class Flood:
    """A thread sending ``batch`` on ``client``'s socket as fast as the broker takes it (never
    reading), until stopped."""

    def __init__(self, client: RawClient, batch: bytes) -> None:
        self.client = client
        self.batch = batch
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        sock = self.client.sock
        sock.settimeout(0.2)
        view = memoryview(self.batch)
        pos = 0
        while not self.stop.is_set():
            try:
                pos += sock.send(view[pos:])
            except TimeoutError:
                continue
            except OSError:
                return
            if pos == len(view):
                self.sent += 1
                pos = 0

    def __enter__(self) -> Flood:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def never_reading(url: str) -> RawClient:
    c = raw_client(url)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and it never reads
    return c


def test_a_client_that_never_reads_its_returns_is_not_read_either(tmp_path: Path) -> None:
    node = HareNode(tmp_path / "data", tmp_path / "hare.log").start()
    try:
        before = rss(node)
        hostile = never_reading(node.url)
        with HealthyClient(node.url) as probe, Flood(hostile, publishes("nowhere", b"r" * 1024, 100,
                                                                           mandatory=True)) as flood:
            time.sleep(8)
            grown = rss(node) - before
        hostile.close()
        assert flood.sent > 0
        assert grown < 100 * MiB, f"hare buffered {grown >> 20} MiB of returns"
        assert not probe.errors, probe.summary()
        assert probe.percentile(99) < 0.05, probe.summary()
    finally:
        node.kill()


def test_a_consumer_that_never_reads_gets_no_more_deliveries(tmp_path: Path) -> None:
    node = HareNode(tmp_path / "data", tmp_path / "hare.log").start()
    try:
        before = rss(node)
        hostile = never_reading(node.url)
        hostile.send_method(1, spec.QueueDeclare(queue="q"))
        hostile.expect(spec.QueueDeclareOk)
        hostile.send_method(1, spec.BasicConsume(queue="q", consumer_tag="never-reads"))
        hostile.expect(spec.BasicConsumeOk)
        publisher = raw_client(node.url)
        with HealthyClient(node.url) as probe, Flood(publisher, publishes("q", b"d" * 1024, 100)) as flood:
            time.sleep(8)
            grown = rss(node) - before
        assert flood.sent > 0
        assert grown < 200 * MiB, f"hare grew by {grown >> 20} MiB"
        assert not probe.errors, probe.summary()
        assert probe.percentile(99) < 0.05, probe.summary()
        # the messages it did not take wait in the queue, for another consumer
        conn = pika.BlockingConnection(pika.URLParameters(node.url))
        ch = conn.channel()
        assert ch.queue_declare("q", passive=True).method.message_count > 1000
        method, _props, body = ch.basic_get("q", auto_ack=True)
        assert method is not None and body == b"d" * 1024
        conn.close()
        hostile.close()
        publisher.close()
    finally:
        node.kill()


def test_a_consumer_that_never_acks_holds_only_its_share_under_memory_pressure(tmp_path: Path) -> None:
    """512 MB of RAM: the watermark is 0.4 of it (~205 MB), pressure starts at half that. The
    consumer reads everything and acks nothing; a flood of 8 KiB messages goes on beside it.
    Without the hold-back its unacked messages fill the memory up to the alarm, which blocks
    every publisher (the healthy one too) for as long as they stay unacked."""
    watermark = int(0.4 * 512 * 1000 * 1000)
    node = HareNode(tmp_path / "data", tmp_path / "hare.log",
                    config="total_memory_available_override_value = 512MB\n").start()
    try:
        hostile = raw_client(node.url)
        hostile.send_method(1, spec.QueueDeclare(queue="q"))
        hostile.expect(spec.QueueDeclareOk)
        hostile.send_method(1, spec.BasicConsume(queue="q", consumer_tag="never-acks"))
        hostile.expect(spec.BasicConsumeOk)
        received = [0]
        stop = threading.Event()

        def read() -> None:  # reads every delivery, acks none
            hostile.sock.settimeout(0.2)
            while not stop.is_set():
                try:
                    chunk = hostile.sock.recv(1 << 20)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                received[0] += len(chunk)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        publisher = raw_client(node.url)
        peak = 0
        with HealthyClient(node.url, timeout=5) as probe, Flood(publisher, publishes("q", b"u" * 8192, 64)):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                peak = max(peak, rss(node))
                time.sleep(0.05)
        stop.set()
        reader.join(5)
        log = node.log.read_text()
        assert "memory resource limit alarm set" not in log, f"peak RSS {peak >> 20} MiB"
        assert "memory pressure" in log
        assert peak < watermark, f"peak RSS {peak >> 20} MiB"
        assert received[0] > 20 * MiB  # it did get deliveries (its share, and more before)
        assert not probe.errors, probe.summary()
        assert probe.worst < 0.5, probe.summary()
        hostile.close()
        publisher.close()
    finally:
        node.kill()


def test_wide_headers_are_counted_by_the_queue_window(tmp_path: Path) -> None:
    """Messages of 1-byte bodies with 4,000-entry headers, routed by a headers exchange into a
    queue nobody consumes: the queue keeps about its window's worth (16 MiB) in memory, properties
    counted; the rest waits on disk, and nothing keeps the decoded headers."""
    node = HareNode(tmp_path / "data", tmp_path / "hare.log").start()
    try:
        conn = pika.BlockingConnection(pika.URLParameters(node.url))
        ch = conn.channel()
        ch.queue_declare("wide", durable=True)
        ch.queue_bind("wide", "amq.headers", arguments={"x-match": "any", "h0": 0})
        before = rss(node)
        headers = {f"h{i}": i for i in range(4000)}
        props = encode_properties({"headers": headers})
        assert len(props) > 30_000
        body = publishes("", b"w", 1, props=props)
        method = spec.BasicPublish(exchange="amq.headers", routing_key="").encode()
        old = spec.BasicPublish(exchange="", routing_key="").encode()
        body = body.replace(pack_header(1, 1, len(old)) + old, pack_header(1, 1, len(method)) + method)
        c = raw_client(node.url)
        for _ in range(30):
            c.send(body * 20)
        c.send_method(1, spec.ExchangeDeclare(exchange="amq.headers", type="headers", passive=True))
        c.expect(spec.ExchangeDeclareOk, timeout=30)
        wait_until(lambda: ch.queue_declare("wide", passive=True).method.message_count == 600, 30)
        grown = rss(node) - before
        assert grown < 100 * MiB, f"hare kept {grown >> 20} MiB for 600 messages of {len(props)} bytes"
        c.close()
        conn.close()
    finally:
        node.kill()


def test_a_client_busy_sending_a_big_message_is_still_read_while_its_deliveries_wait(
        tmp_path: Path) -> None:
    """The other side of the output bound: a blocking client (py-amqp, for one) that consumes and
    sends a large publish does not read while it sends. Its deliveries back up meanwhile, but
    its input adds no output, so it is still read and its send completes (no deadlock)."""
    node = HareNode(tmp_path / "data", tmp_path / "hare.log").start()
    try:
        feeder = raw_client(node.url)
        feeder.send_method(1, spec.QueueDeclare(queue="busy"))
        feeder.expect(spec.QueueDeclareOk)
        feeder.send(publishes("busy", b"b" * 4096, 2000))  # 8 MiB waiting for the consumer
        feeder.send_method(1, spec.QueueDeclare(queue="busy", passive=True))
        assert feeder.expect(spec.QueueDeclareOk, timeout=20).message_count == 2000
        c = raw_client(node.url)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.send_method(1, spec.BasicConsume(queue="busy", consumer_tag="busy", no_ack=True))
        time.sleep(0.5)  # its output backs up (it reads nothing yet)
        c.sock.settimeout(15)
        c.send(publishes("elsewhere", b"B" * (32 << 20), 1))  # blocks unless hare reads it
        c.send_method(1, spec.QueueDeclare(queue="marker"))
        deadline = time.monotonic() + 30
        while True:  # read its deliveries until the marker's declare-ok
            _ch, m = c.read_method(timeout=max(0.1, deadline - time.monotonic()))
            if isinstance(m, spec.QueueDeclareOk):
                break
            if isinstance(m, spec.BasicDeliver):
                c.read_content(timeout=10)
        c.close()
        feeder.close()
    finally:
        node.kill()
