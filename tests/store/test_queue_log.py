"""The segment format and one queue's log: append, read back, ack, reclaim, recover."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hare.store import queue_log
from hare.store.message_store import MessageStore
from hare.store.queue_log import QueueLog
from hare.store.segment import (
    FLAG_PERSISTENT,
    HEADER_SIZE,
    MAGIC,
    CorruptRecord,
    decode_message,
    encode_message,
    scan,
)

ROUTE = b"\x02ex\x03key"


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_log, "SEGMENT_SIZE", 2048)


def new_log(tmp_path: Path, durable: bool = True) -> tuple[MessageStore, QueueLog]:
    store = MessageStore(tmp_path)
    return store, store.open_log("/", "q", durable)


def append(qlog: QueueLog, position: int, body: bytes, persistent: bool = True) -> None:
    qlog.append(position, 1_700_000_000_000 + position, FLAG_PERSISTENT if persistent else 0, ROUTE,
                b"\x10\x00\x02", body)


def recovered(tmp_path: Path) -> QueueLog:
    """The log as a restarted broker sees it (a new store on the same directory)."""
    qlog = MessageStore(tmp_path).recover_log("/", "q")
    assert qlog is not None
    return qlog


def bodies(qlog: QueueLog) -> list[bytes]:
    return [decode_message(p)[7] for _, p in qlog.read(1 << 20, 1 << 30)]


# -- the record format ----------------------------------------------------------------------------

@settings(max_examples=200)
@given(position=st.integers(0, 2**64 - 1), ms=st.integers(0, 2**64 - 1), flags=st.integers(0, 255),
       exchange=st.binary(max_size=255), key=st.binary(max_size=255), props=st.binary(max_size=300),
       body=st.binary(max_size=3000))
def test_message_record_round_trips(position: int, ms: int, flags: int, exchange: bytes, key: bytes,
                                    props: bytes, body: bytes) -> None:
    route = bytes((len(exchange),)) + exchange + bytes((len(key),)) + key
    buf = bytearray(MAGIC)
    size = encode_message(buf, position, ms, flags, route, props, body)
    assert size == len(buf) - HEADER_SIZE
    [(off, p, e)] = list(scan(bytes(buf)))
    assert (off, e) == (HEADER_SIZE, len(buf))
    got = decode_message(bytes(buf[p:e]))
    assert got == (position, ms, flags, route, exchange.decode("utf-8", "surrogateescape"),
                   key.decode("utf-8", "surrogateescape"), props, body)


def test_every_truncation_and_every_flipped_byte_is_detected() -> None:
    buf = bytearray(MAGIC)
    encode_message(buf, 7, 0, FLAG_PERSISTENT, ROUTE, b"\x00\x00", b"hello world")
    whole = bytes(buf)
    for cut in range(HEADER_SIZE + 1, len(whole)):
        with pytest.raises(CorruptRecord) as info:
            list(scan(whole[:cut]))
        assert info.value.offset == HEADER_SIZE
    for i in range(HEADER_SIZE, len(whole)):
        bad = bytearray(whole)
        bad[i] ^= 0x40
        with pytest.raises(CorruptRecord):
            list(scan(bytes(bad)))


# -- append, read, ack ------------------------------------------------------------------------------

def test_records_read_back_in_order_across_segments(tmp_path: Path, small_segments: None) -> None:
    _store, qlog = new_log(tmp_path)
    for i in range(200):
        append(qlog, i, b"body-%03d" % i)
    assert len(qlog.segments) > 3
    got = []
    while batch := qlog.read(7, 1 << 20):
        got.extend(batch)
    assert [p for p, _ in got] == list(range(200))
    assert [decode_message(payload)[7] for _, payload in got] == [b"body-%03d" % i for i in range(200)]


def test_fully_acked_segments_are_deleted_with_their_ack_files(tmp_path: Path,
                                                                small_segments: None) -> None:
    store, qlog = new_log(tmp_path)
    for i in range(300):
        append(qlog, i, b"x" * 40)
    qlog.read(1 << 20, 1 << 30)
    store.flush()
    first = qlog.segments[0]
    n_segments = len(qlog.segments)
    for i in range(first.first, first.last + 1):
        qlog.ack(i)
    store.flush()
    assert not first.path.exists() and not first.ack_path.exists()
    assert len(qlog.segments) == n_segments - 1
    for i in range(300):
        qlog.ack(i)
    store.flush()
    # only the segment being written to remains
    assert [p.name for p in sorted(qlog.dir.glob("*.seg"))] == [qlog.segments[0].path.name]
    assert qlog.live == 0


def test_disk_use_follows_acks(tmp_path: Path) -> None:
    """Acked space is given back: a queue that keeps flowing holds about its live bytes on disk."""
    store, qlog = new_log(tmp_path)
    body = b"z" * 1024
    for i in range(40_000):  # ~42 MB through the log, at most ~2k messages (2 MB) live at a time
        append(qlog, i, body)
        if i >= 2000:
            qlog.ack(i - 2000)
            if i % 500 == 0:
                qlog.read(1 << 20, 1 << 30)
    store.flush()
    on_disk = sum(p.stat().st_size for p in qlog.dir.iterdir())
    live_bytes = qlog.live * len(body)
    assert qlog.live == 2000
    assert on_disk <= 2 * live_bytes + 2 * queue_log.SEGMENT_SIZE


# -- recovery ---------------------------------------------------------------------------------------

def test_recovery_serves_unacked_persistent_records_in_order(tmp_path: Path, small_segments: None) -> None:
    store, qlog = new_log(tmp_path)
    for i in range(100):
        append(qlog, i, b"m%d" % i, persistent=i % 10 != 0)  # every tenth is transient
    qlog.read(50, 1 << 30)
    for i in range(0, 50, 3):
        qlog.ack(i)
    qlog.mark_delivered(49)
    store.flush()  # no clean close: what a kill -9 leaves
    again = recovered(tmp_path)
    want = [i for i in range(100) if i % 10 != 0 and not (i < 50 and i % 3 == 0)]
    assert again.live == len(want)
    assert bodies(again) == [b"m%d" % i for i in want]
    assert again.redelivered_upto == 49


def test_unflushed_acks_are_lost_but_nothing_else(tmp_path: Path) -> None:
    store, qlog = new_log(tmp_path)
    for i in range(10):
        append(qlog, i, b"m%d" % i)
    store.flush()
    qlog.read(10, 1 << 30)
    qlog.ack(0)  # never flushed: a crash loses it, the message comes back (at-least-once)
    assert bodies(recovered(tmp_path)) == [b"m%d" % i for i in range(10)]


def test_torn_tail_at_any_offset_keeps_the_intact_prefix(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    store, qlog = new_log(tmp_path)
    sizes = []
    for i in range(30):
        append(qlog, i, os.urandom(random.randrange(0, 300)))
        sizes.append(qlog.wseg.size)  # type: ignore[union-attr]
    store.flush()
    path = qlog.segments[-1].path
    whole = path.read_bytes()
    rng = random.Random(1234)
    cuts = sorted({HEADER_SIZE, len(whole) - 1, *(rng.randrange(HEADER_SIZE, len(whole)) for _ in range(60))})
    for cut in cuts:
        path.write_bytes(whole[:cut])
        intact = sum(1 for end in sizes if end <= cut)
        caplog.clear()
        with caplog.at_level(logging.WARNING, "hare.store"):
            again = recovered(tmp_path)
        assert again.live == intact, cut
        got = again.read(1 << 20, 1 << 30)
        assert [p for p, _ in got] == list(range(intact))
        torn = cut not in sizes and cut != HEADER_SIZE
        assert ("torn tail" in caplog.text) == torn
        if again.rfd >= 0:
            os.close(again.rfd)


def test_a_torn_tail_is_cut_off_so_the_next_recovery_finds_no_corruption(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A crash tore the last segment's tail; the next run writes to a new segment, after which the
    torn one is no longer the last: recovery must have cut the tail off, or the run after would
    report it as corruption (an error)."""
    store, qlog = new_log(tmp_path)
    for i in range(10):
        append(qlog, i, b"m%d" % i)
    store.flush()
    path = qlog.segments[-1].path
    whole = path.read_bytes()
    path.write_bytes(whole[:-5])  # the last record torn
    with caplog.at_level(logging.WARNING, "hare.store"):
        store2 = MessageStore(tmp_path)
        again = store2.recover_log("/", "q")
    assert again is not None and "torn tail" in caplog.text
    assert len(path.read_bytes()) < len(whole) - 5  # cut to the last whole record
    append(again, 20, b"after the restart")  # a new segment
    store2.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, "hare.store"):
        third = recovered(tmp_path)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert bodies(third) == [b"m%d" % i for i in range(9)] + [b"after the restart"]


def test_corrupt_middle_segment_is_reported_and_the_rest_still_served(
        tmp_path: Path, small_segments: None, caplog: pytest.LogCaptureFixture) -> None:
    store, qlog = new_log(tmp_path)
    for i in range(200):
        append(qlog, i, b"%03d" % i + b"." * 37)
    store.flush()
    middle = qlog.segments[1]
    data = bytearray(middle.path.read_bytes())
    data[HEADER_SIZE + 100] ^= 0xFF  # inside its second or third record
    middle.path.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, "hare.store"):
        again = recovered(tmp_path)
    assert "corrupt segment" in caplog.text and str(middle.path) in caplog.text
    got = [int(decode_message(p)[7][:3]) for _, p in again.read(1 << 20, 1 << 30)]
    lost = set(range(middle.first, middle.last + 1)) - set(got)
    assert got == sorted(got)
    assert 0 < len(lost) < middle.count  # the records before the damage survive
    assert set(range(200)) - lost == set(got)


def test_segments_pinned_by_a_few_unacked_records_are_compacted(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_log, "SEGMENT_SIZE", 64 << 10)
    monkeypatch.setattr(queue_log, "COMPACT_MIN", 0)
    store, qlog = new_log(tmp_path)
    body = b"b" * 100
    for i in range(3000):
        append(qlog, i, b"%04d" % i + body)
    assert len(qlog.segments) >= 5
    qlog.read(1 << 20, 1 << 30)
    pinned = list(range(0, 3000, 50))  # delivered long ago and never acked (slow consumers)
    for i in range(3000):
        if i % 50:
            qlog.ack(i)
    store.flush()
    live_bytes = len(pinned) * (len(body) + 4)
    segments = sum(p.stat().st_size for p in qlog.dir.glob("*.seg"))
    assert segments <= 2 * live_bytes + queue_log.SEGMENT_SIZE  # without compaction: ~400 KB
    wseg = qlog.wseg
    assert wseg is not None
    compacted_acks = [p for p in qlog.dir.glob("*.ack") if p != wseg.ack_path]
    # emptied with their segments (only acks made since the last compaction remain)
    assert sum(p.stat().st_size for p in compacted_acks) < 3000 * queue_log.ACK_SIZE // 4
    # a crash now: exactly the unacked records come back, in order
    assert [int(b[:4]) for b in bodies(recovered(tmp_path))] == pinned
    # and acking them all still frees every segment but the one being written
    for i in pinned:
        qlog.ack(i)
    store.flush()
    assert len(list(qlog.dir.glob("*.seg"))) == 1


# -- compaction off the event loop ------------------------------------------------------------------
# With an event loop the shell runs each CompactJob in a worker thread and hands it back to its log
# on the loop (server/storage.py); these tests take the shell's place: they hold the job, do on the
# "loop" what may happen meanwhile, then run it (as the thread would) and finish it.


def pinned_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[MessageStore, QueueLog]:
    """A log whose first segment was read through and is about to be compacted: 4 records in 5
    acked, the rest pinned by old deliveries. Compactions are queued, not run."""
    monkeypatch.setattr(queue_log, "SEGMENT_SIZE", 64 << 10)
    monkeypatch.setattr(queue_log, "COMPACT_MIN", 0)
    store, qlog = new_log(tmp_path)
    store.compact_in_thread = True
    for i in range(1200):
        append(qlog, i, b"%04d" % i + b"b" * 100)
    assert len(qlog.segments) >= 2
    qlog.read(1 << 20, 1 << 30)
    first = qlog.segments[0]
    for i in range(first.first, first.last + 1):
        if i % 5:
            qlog.ack(i)
    store.flush()
    assert first.compacting and len(store.compactions) == 1
    return store, qlog


def test_acks_during_a_compaction_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, qlog = pinned_log(tmp_path, monkeypatch)
    seg = qlog.segments[0]
    job = store.next_compaction()
    assert job is not None
    during = [i for i in range(seg.first, seg.last + 1, 5)][:10]  # acked while the rewrite runs
    for i in during:
        qlog.ack(i)
    store.flush()
    job.run()
    qlog.finish_compaction(job)
    assert not seg.compacting and seg.count == len(job.positions)
    store.flush()
    left = [int(b[:4]) for b in bodies(recovered(tmp_path))]
    assert not set(during) & set(left), "acks made during the compaction were lost"
    assert left == sorted(set(range(0, seg.last + 1, 5)) - set(during)) + list(range(seg.last + 1, 1200))


def test_a_segment_acked_through_during_its_compaction_is_dropped_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, qlog = pinned_log(tmp_path, monkeypatch)
    seg = qlog.segments[0]
    job = store.next_compaction()
    assert job is not None
    for i in range(seg.first, seg.last + 1, 5):
        qlog.ack(i)
    assert seg in qlog.segments and seg.path.exists()  # not under the rewrite's feet
    job.run()
    qlog.finish_compaction(job)
    assert seg not in qlog.segments and not seg.path.exists() and not seg.ack_path.exists()
    store.flush()
    assert [int(b[:4]) for b in bodies(recovered(tmp_path))] == list(range(seg.last + 1, 1200))


def test_a_queue_deleted_during_a_compaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The queue is deleted, and a new one of the same name made, while the rewrite is under way:
    the rewrite stays in the old directory, which goes once it is done; the new queue's files are
    untouched."""
    store, qlog = pinned_log(tmp_path, monkeypatch)
    job = store.next_compaction()
    assert job is not None
    d = qlog.dir
    fresh = store.open_log("/", "q", True)  # destroys the old log
    assert fresh.dir == d and qlog.closed
    append(fresh, 0, b"new")
    store.sync_now()
    job.run()
    qlog.finish_compaction(job)
    assert sorted(p.name for p in d.parent.iterdir()) == [d.name]  # no leftover directory
    assert [b for b in bodies(recovered(tmp_path))] == [b"new"]


def test_shutdown_during_a_compaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compactions queued but not started are dropped at shutdown: the segment stays as it was,
    whole, and a restart finds exactly the unacked records."""
    store, qlog = pinned_log(tmp_path, monkeypatch)
    seg = qlog.segments[0]
    size = seg.path.stat().st_size
    store.drop_compactions()
    assert not seg.compacting and not qlog.compactions
    store.close()
    assert seg.path.stat().st_size == size
    assert [int(b[:4]) for b in bodies(recovered(tmp_path))] == (
        list(range(0, seg.last + 1, 5)) + list(range(seg.last + 1, 1200)))
