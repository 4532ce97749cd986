"""A full disk blocks publishers and loses nothing, as RabbitMQ's disk alarm does: the first write
that fails for want of space raises the disk alarm at once (publishers get connection.blocked),
what could not be written is kept in memory and written when space returns, confirms wait for it,
connections stay open, a failed compaction leaves nothing behind, and hare starts on a full disk.
The disk is real: the data directory is on the FUSE file system of tests/lazyfs.py, given a
capacity (writes past it fail with ENOSPC)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pika
import pytest
from hare_node import HareNode
from lazyfs import LazyFS, mounted, unavailable
from support import wait_until

pytestmark = [
    pytest.mark.skipif(bool(os.environ.get("HARE_TEST_URL")), reason="runs a private hare"),
    pytest.mark.skipif(unavailable() is not None, reason=f"no FUSE file system: {unavailable()}"),
]

PERSISTENT = pika.BasicProperties(delivery_mode=2)
# the free-disk poll alone never blocks anyone here: only a failed write can raise the alarm
CONFIG = "disk_free_limit.absolute = 1\n"
NO_ALARM = "\nAlarms\n\n(none)"


def ctl_status(data: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "hare", "ctl", "status", "--data-dir", str(data)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[LazyFS]:
    with mounted(tmp_path / "mnt") as lazy:
        yield lazy


def drain(url: str, queue: str) -> list[bytes]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    got = []
    while (m := ch.basic_get(queue, auto_ack=True))[0] is not None:
        got.append(m[2])
    conn.close()
    return got


def assert_clean_log(node: HareNode) -> None:
    """No crash, no connection closed by an error (541 is logged by its name, INTERNAL_ERROR; the
    number itself also appears in timestamps' milliseconds, so it is not searched for)."""
    text = node.log.read_text()
    for bad in ("Traceback", "INTERNAL_ERROR", "connection exception"):
        assert bad not in text, text


def test_publisher_on_a_full_disk_is_blocked_then_confirmed(fs: LazyFS, tmp_path: Path) -> None:
    data = fs.mountpoint / "data"
    node = HareNode(data, tmp_path / "hare.log", config=CONFIG).start()
    bodies = [i.to_bytes(4, "big") * (64 << 10) for i in range(40)]  # 40 x 256 KiB: past a rollover
    try:
        async def scenario() -> None:
            conn = await aio_pika.connect(node.url)
            # aiormq keeps connection.blocked to itself: unset while blocked
            unblocked: asyncio.Event = conn.transport.connection._Connection__connection_unblocked  # type: ignore[union-attr]
            ch = await conn.channel(publisher_confirms=True)
            q = await ch.declare_queue("q", durable=True)
            await ch.default_exchange.publish(aio_pika.Message(b"before", delivery_mode=2), "q")
            fs.fill(spare=64 << 10)  # 64 KiB left: statfs shows free space, no 256 KiB write fits
            pubs = [asyncio.ensure_future(ch.default_exchange.publish(
                aio_pika.Message(b, delivery_mode=2), "q")) for b in bodies]
            for _ in range(100):  # the first ENOSPC blocks the publisher, not the poll
                if not unblocked.is_set():
                    break
                await asyncio.sleep(0.1)
            assert not unblocked.is_set(), "the publisher was not blocked"
            await asyncio.sleep(1.5)  # a poll or two: the alarm stays (nothing can be written)
            assert not any(p.done() for p in pubs), "confirmed what is not on disk"
            assert not conn.is_closed and not ch.is_closed
            status = await asyncio.to_thread(ctl_status, data)
            assert "\ndisk: " in status, status
            fs.set_capacity(None)  # space returns
            await asyncio.wait_for(asyncio.gather(*pubs), 20)  # every confirm arrives (acks)
            assert not conn.is_closed and not ch.is_closed
            await asyncio.to_thread(wait_until, lambda: NO_ALARM in ctl_status(data), 10)
            assert (await q.declare()).message_count == 41
            await conn.close()

        asyncio.run(scenario())
        log = node.log.read_text()
        assert "alarm" in log and "No space left on device" in log, log
        assert_clean_log(node)
    finally:
        node.stop()
    node = HareNode(data, tmp_path / "again.log").start()  # every message survives a restart
    try:
        assert drain(node.url, "q") == [b"before", *bodies]
    finally:
        node.stop()


def test_acks_compacting_on_a_full_disk_keep_the_consumer_and_leave_no_tmp(fs: LazyFS,
                                                                          tmp_path: Path) -> None:
    data = fs.mountpoint / "data"
    node = HareNode(data, tmp_path / "hare.log", config=CONFIG).start()
    try:
        conn = pika.BlockingConnection(pika.URLParameters(node.url))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("q", durable=True)
        for i in range(160):  # 10 MiB: two segments
            ch.basic_publish("", "q", i.to_bytes(4, "big") * (16 << 10), PERSISTENT)
        qdir = next((data / "queues").iterdir())
        assert len(list(qdir.glob("*.seg"))) == 2
        fs.fill(spare=64 << 10)  # room for the acks, not for the 2 MiB a compaction writes
        got = []
        for method, _props, body in ch.consume("q", inactivity_timeout=5):
            if method is None:
                break
            got.append(body)
            if len(got) <= 120:  # most of the first segment: its compaction is due, and fails
                ch.basic_ack(method.delivery_tag)
            if len(got) == 160:
                break
        ch.cancel()
        assert len(got) == 160
        wait_until(lambda: "cannot compact" in node.log.read_text(), timeout=10)  # it ran, and failed
        assert conn.is_open and ch.is_open
        assert not list(qdir.glob("*.tmp")), list(qdir.iterdir())
        assert (qdir / "0000000001.seg").stat().st_size >= 8 << 20  # the old segment is intact
        assert "alarm set: disk" in node.log.read_text()  # a failed write (cleared at once: no
        # write waits, and statfs shows space)
        conn.close()
        fs.set_capacity(None)
        wait_until(lambda: NO_ALARM in ctl_status(data), timeout=10)
        assert_clean_log(node)
    finally:
        node.stop()
    node = HareNode(data, tmp_path / "again.log").start()  # the acks were written after all
    try:
        assert [int.from_bytes(b[:4], "big") for b in drain(node.url, "q")] == list(range(120, 160))
    finally:
        node.stop()


def test_hare_starts_on_a_full_disk(fs: LazyFS, tmp_path: Path) -> None:
    data = fs.mountpoint / "data"
    node = HareNode(data, tmp_path / "hare.log", config=CONFIG).start()
    try:
        conn = pika.BlockingConnection(pika.URLParameters(node.url))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("q", durable=True)
        for i in range(5):
            ch.basic_publish("", "q", b"m%d" % i, PERSISTENT)
        conn.close()
    finally:
        node.stop()
    fs.fill()
    node = HareNode(data, tmp_path / "again.log", config=CONFIG).start()
    try:
        conn = pika.BlockingConnection(pika.URLParameters(node.url))
        ch = conn.channel()
        assert ch.basic_get("q", auto_ack=False)[2] == b"m0"  # serving
        conn.close()
        wait_until(lambda: "\ndisk: " in ctl_status(data), timeout=10)  # and the alarm is on
        fs.set_capacity(None)
        wait_until(lambda: NO_ALARM in ctl_status(data), timeout=10)
        assert_clean_log(node)
    finally:
        node.stop()
    node = HareNode(data, tmp_path / "third.log").start()
    try:
        assert drain(node.url, "q") == [b"m%d" % i for i in range(5)]
    finally:
        node.stop()


def test_declare_a_durable_queue_on_a_full_disk(fs: LazyFS, tmp_path: Path) -> None:
    data = fs.mountpoint / "data"
    node = HareNode(data, tmp_path / "hare.log", config=CONFIG).start()
    try:
        conn = pika.BlockingConnection(pika.URLParameters(node.url))
        ch = conn.channel()
        ch.queue_declare("before", durable=True)
        fs.fill()
        ch.exchange_declare("x", "direct", durable=True)
        ch.queue_declare("d", durable=True)
        ch.queue_bind("d", "x", "k")
        ch.queue_delete("before")
        assert conn.is_open and ch.is_open
        wait_until(lambda: "\ndisk: " in ctl_status(data), timeout=10)
        conn.close()
        fs.set_capacity(None)
        wait_until(lambda: NO_ALARM in ctl_status(data), timeout=10)
        assert_clean_log(node)
    finally:
        node.stop()
    node = HareNode(data, tmp_path / "again.log").start()  # the definitions were written after all
    try:
        conn = pika.BlockingConnection(pika.URLParameters(node.url))
        ch = conn.channel()
        ch.queue_declare("d", durable=True, passive=True)
        ch.exchange_declare("x", "direct", durable=True, passive=True)
        ch.basic_publish("x", "k", b"routed", PERSISTENT)
        assert ch.basic_get("d", auto_ack=True)[2] == b"routed"
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            ch.queue_declare("before", durable=True, passive=True)
        conn.close()
    finally:
        node.stop()
