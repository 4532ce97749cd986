"""Power loss, simulated: the broker's data directory is on a FUSE file system (tests/lazyfs.py) that
forgets, at a "cut", every write and every directory change not yet fsynced, as a disk does when
the power goes (a kill -9 cannot show that: the page cache survives the process). After kill -9 and
a cut, a broker restarted on what remains must hold every message it confirmed, and log no error.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pika
import pytest
from hare_node import HareNode
from lazyfs import LazyFS, unavailable
from rawamqp import Closed, RawClient

from hare.amqp import spec

pytestmark = [
    pytest.mark.skipif(bool(os.environ.get("HARE_TEST_URL")), reason="kills a private hare"),
    pytest.mark.skipif(unavailable() is not None, reason=f"no FUSE file system: {unavailable()}"),
]

BIG = 64 * 1024  # 8 MiB segments: 130 of these roll one


@pytest.fixture
def fs(tmp_path: Path):
    try:
        with LazyFS(tmp_path / "mnt", tmp_path / "lazyfs.log") as fs:
            yield fs
    except OSError as exc:
        if "cannot mount" in str(exc):
            pytest.skip(str(exc))
        raise


def errors_in(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines()
            if " ERROR " in line or " CRITICAL " in line]


def publish_confirmed(url: str, queue: str, bodies: list[bytes]) -> None:
    """Declare ``queue`` (durable) and publish each body persistent, each confirmed."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(queue, durable=True)
        for body in bodies:
            ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
    finally:
        conn.close()


def contents(url: str, queue: str) -> list[bytes]:
    """Every message of ``queue``, read with basic.get and left there (no ack)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True, passive=True)
        out = []
        while True:
            method, _props, body = ch.basic_get(queue)
            if method is None:
                return out
            out.append(body)
    finally:
        conn.close()


def bodies(prefix: str, n: int, size: int) -> list[bytes]:
    return [(f"{prefix}-{i}-".encode()).ljust(size, b"x") for i in range(n)]


def publish_unconfirmed(url: str, queue: str, bodies: list[bytes]) -> None:
    """Publish persistent messages without confirms (the broker writes them but has no reason
    to sync them), then make sure the broker has taken them all."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        for body in bodies:
            ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
        ch.queue_declare(queue, durable=True, passive=True)  # a round trip after the publishes
    finally:
        conn.close()


def check(url: str, queue: str, confirmed: list[bytes], maybe: set[bytes]) -> None:
    got = contents(url, queue)
    assert [b for b in got if b not in maybe] == confirmed, f"{queue}: confirmed messages lost"
    assert len(set(got)) == len(got), f"{queue}: a message came back twice"


def test_confirmed_messages_survive_power_loss(fs: LazyFS, tmp_path: Path) -> None:
    """New durable queues (a new data directory, new queue directories, new segments, a segment
    roll), then the power goes: every confirmed message is back. Three rounds: the first drops
    every unsynced byte, the next two tear the last unsynced write of each file (write-back that
    reached the disk partly); each round ends with unconfirmed publishes (written, not synced),
    and the broker writes on the previous run's queues in between."""
    data = fs.mountpoint / "data"
    confirmed: dict[str, list[bytes]] = {}
    maybe: set[bytes] = set()
    for round_ in range(3):
        log = tmp_path / f"hare-{round_}.log"
        node = HareNode(data, log).start()
        try:
            assert not errors_in(log), errors_in(log)
            for queue, want in confirmed.items():
                check(node.url, queue, want, maybe)
            for queue, batch in ((f"small-{round_}", bodies(f"s{round_}", 20, 100)),
                                 (f"rolls-{round_}", bodies(f"r{round_}", 140, BIG)),
                                 ("kept", bodies(f"k{round_}", 5, 1000))):
                publish_confirmed(node.url, queue, batch)
                confirmed.setdefault(queue, []).extend(batch)
            if round_ == 2:  # a new durable delayed exchange, its messages due after the restart
                publish_delayed(node.url, bodies("d", 30, 2000))
            unconfirmed = bodies(f"u{round_}", 50, 3000)
            publish_unconfirmed(node.url, "kept", unconfirmed)
            maybe.update(unconfirmed)
        finally:
            node.kill()
        fs.cut()
        fs.command("torn 1")
    node = HareNode(data, tmp_path / "hare-last.log").start()
    try:
        assert not errors_in(node.log), errors_in(node.log)
        for queue, want in confirmed.items():
            check(node.url, queue, want, maybe)
        deadline = time.monotonic() + 15
        while len(got := contents(node.url, "delayed-target")) < 30 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sorted(got) == sorted(bodies("d", 30, 2000)), "confirmed delayed messages lost"
    finally:
        node.stop()


def publish_delayed(url: str, batch: list[bytes]) -> None:
    """Persistent messages, confirmed, to a new durable x-delayed-message exchange, due in 3 s."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.exchange_declare("delayed", "x-delayed-message", durable=True,
                            arguments={"x-delayed-type": "direct"})
        ch.queue_declare("delayed-target", durable=True)
        ch.queue_bind("delayed-target", "delayed", "k")
        for body in batch:
            ch.basic_publish("delayed", "k", body, pika.BasicProperties(
                delivery_mode=2, headers={"x-delay": 3000}))
    finally:
        conn.close()


def publish_pipelined(port: int, queue: str, size: int, confirmed: list[int], stop: threading.Event) -> None:
    """Persistent messages in pipelined batches of 50 with confirms, until ``stop`` or the broker
    goes; the ids confirmed (acked) go to ``confirmed``."""
    try:
        c = RawClient("127.0.0.1", port, timeout=10)
        c.handshake()
        c.open_channel(1)
        c.send_method(1, spec.ConfirmSelect())
        c.expect(spec.ConfirmSelectOk)
        sent = acked = 0
        while not stop.is_set():
            for _ in range(50):
                c.publish(1, "", queue, b"%d-" % sent + bytes(size), {"delivery_mode": 2})
                sent += 1
            while acked < sent:
                _ch, m = c.read_method(timeout=30)
                if isinstance(m, (spec.ConnectionBlocked, spec.ConnectionUnblocked)):
                    continue  # the disk_sync alarm, once the "disk" is gone
                if isinstance(m, spec.BasicNack):
                    return
                assert isinstance(m, spec.BasicAck), m
                upto = m.delivery_tag
                confirmed.extend(range(acked, upto))
                acked = upto
    except (Closed, OSError, TimeoutError):
        return


def test_power_loss_in_the_sync_of_a_segment_roll(fs: LazyFS, tmp_path: Path) -> None:
    """The power goes in the middle of the group commit that covers a segment roll, right after
    the new segment's fdatasync (the file system makes a synced file's name durable, as ext4
    does, and writes back part of what was not synced; small messages, so that the segment's
    last flush before the roll is most likely not synced yet). The older segment must be whole
    by then: the only damage recovery may find is a torn tail in the newest segment (a warning),
    never corruption in an older one (an error)."""
    fs.command("torn 1", "entry-on-fsync 1", "cut-after 0000000002.seg")
    data = fs.mountpoint / "data"
    log = tmp_path / "hare.log"
    node = HareNode(data, log).start()
    confirmed: list[int] = []
    stop = threading.Event()
    try:
        c = RawClient("127.0.0.1", node.port, timeout=10)
        c.handshake()
        c.open_channel(1)
        c.send_method(1, spec.QueueDeclare(queue="roll", durable=True))
        c.expect(spec.QueueDeclareOk)
        c.close()
        t = threading.Thread(target=publish_pipelined, args=(node.port, "roll", 1500, confirmed, stop))
        t.start()
        deadline = time.monotonic() + 30
        while not fs.status()["cut_pending"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fs.status()["cut_pending"], "the segment did not roll"
        stop.set()
    finally:
        node.kill()
    t.join(10)
    fs.cut()
    node = HareNode(data, tmp_path / "after.log").start()
    try:
        assert not errors_in(node.log), errors_in(node.log)
        got = [int(b.split(b"-", 1)[0]) for b in contents(node.url, "roll")]
        assert got == sorted(got) and set(confirmed) <= set(got), "confirmed messages lost"
        assert len(got) > 5000  # the first segment is whole (8 MiB of 1.5 KB messages)
    finally:
        node.stop()
