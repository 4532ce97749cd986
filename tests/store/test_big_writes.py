"""Large records are written by the store's worker thread (log_jobs.WriteJob), not on the event
loop: in file order with what the log buffers around them, before any sync that confirms them;
a failed write (a full disk) holds the log's later writes and every sync until it is written
again. The shell's part is played here: jobs are collected, then run and finished in order."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from hare.amqp.properties import encode_properties
from hare.broker.message import Message
from hare.store import queue_log
from hare.store.log_jobs import WriteJob
from hare.store.message_store import MessageStore
from hare.store.paged import HEAVY_SYNC, PagedQueueStore

PERSISTENT = encode_properties({"delivery_mode": 2})
BIG = queue_log.BIG_RECORD


class Shell:
    """The store driver's write path without a thread: jobs wait in ``jobs`` until ``run``."""

    def __init__(self, store: MessageStore) -> None:
        self.store = store
        self.jobs: list[WriteJob] = []
        store.write_in_thread = True
        store.submit_write = lambda job: self.jobs.append(job)
        store.wait_write = lambda job: self.run()

    def run(self) -> None:
        jobs, self.jobs = self.jobs, []
        for job in jobs:
            job.run()
        for job in jobs:
            self.store.finish_write(job)


def make(tmp_path: Path) -> tuple[MessageStore, PagedQueueStore, Shell]:
    store = MessageStore(tmp_path)
    paged = PagedQueueStore(lambda: store.open_log("/", "q", True), Message, True, window=2,
                            window_bytes=1 << 20)
    return store, paged, Shell(store)


def bodies() -> list[bytes]:
    """Small ones around big ones: the file must hold them in this order."""
    return [b"a", b"B" * BIG, b"c", b"D" * (3 * BIG + 7), b"e", b"f"]


def recovered(tmp_path: Path) -> list[bytes]:
    store = MessageStore(tmp_path)
    qlog = store.recover_log("/", "q")
    assert qlog is not None
    paged = PagedQueueStore(lambda: store.open_log("/", "q", True), Message, True, log=qlog)
    out = []
    while (entry := paged.pop()) is not None:
        out.append(bytes(entry[0].body))
    return out


def test_big_records_are_written_by_the_thread_in_order_before_their_sync(tmp_path: Path) -> None:
    store, paged, shell = make(tmp_path)
    for body in bodies():
        paged.push(Message("", "q", PERSISTENT, body))
    confirmed: list[int] = []
    store.after_sync(lambda: confirmed.append(1))
    job = store.start_sync()  # flushes: the big records (and what follows them) go to the thread
    assert shell.jobs, "the big records were written on the loop"
    assert job is not None
    assert not job.fds, "the light lane syncs the heavy log's file"
    job.run()
    store.finish_sync(job)
    assert confirmed == []  # the heavy lane has not synced the log yet
    heavy = store.start_heavy_sync()
    assert heavy is not None and heavy.fds
    shell.run()  # the heavy lane's thread runs the writes first, then its sync
    heavy.run()
    store.finish_sync(heavy)
    assert confirmed == [1]
    assert not paged.log.heavy and not store.heavy_logs  # synced: light again
    assert recovered(tmp_path) == bodies()


def test_reading_back_waits_for_the_thread(tmp_path: Path) -> None:
    """Past the window, messages are read back from the log: a read of what the thread has not
    written yet waits for it (and the big body comes back as a view, not a copy)."""
    _store, paged, shell = make(tmp_path)
    for body in bodies():
        paged.push(Message("", "q", PERSISTENT, body))
    paged.log.flush()  # handed to the thread, not yet written
    got = []
    while (entry := paged.pop()) is not None:
        got.append(bytes(entry[0].body))
        paged.ack(entry[1], entry[0])
    assert got == bodies()
    assert not shell.jobs


def test_a_failed_big_write_holds_later_writes_and_syncs_until_retried(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, paged, shell = make(tmp_path)
    real_write = os.write
    full = [True]

    def write(fd: int, data: bytes) -> int:
        if full[0] and len(data) >= BIG:
            n = real_write(fd, memoryview(data)[: BIG // 2])  # a part, then the disk is full
            full[0] = False
            return n
        if not full[0] and len(data) >= BIG // 2 and not retrying[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    retrying = [False]
    monkeypatch.setattr(os, "write", write)
    confirmed: list[int] = []
    for body in bodies()[:3]:
        paged.push(Message("", "q", PERSISTENT, body))
    store.flush()  # job 1: a, B, c
    for body in bodies()[3:]:
        paged.push(Message("", "q", PERSISTENT, body))
    store.after_sync(lambda: confirmed.append(1))
    store.flush()  # job 2: D, e, f (behind job 1)
    sync = store.start_sync()
    assert sync is not None
    shell.run()  # job 1 fails half way through B; job 2 writes nothing
    sync.run()  # skipped: what it would confirm is not in the file
    store.finish_sync(sync)
    assert confirmed == []
    assert store.thread_write_error is not None
    assert store.start_sync() is None  # no sync while the writes are owed
    retrying[0] = True  # the disk has room again: the next flush writes the rest, in order
    store.flush()
    shell.run()
    assert store.thread_write_error is None
    store.sync_now()
    assert confirmed == [1]
    monkeypatch.setattr(os, "write", real_write)
    assert recovered(tmp_path) == bodies()


def test_drop_head_does_not_read_bodies_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """max-length drop-head with nothing to dead-letter: a head the queue keeps on disk is acked
    without reading its body back (that read, of tens of MiB, was done on the event loop), and
    the queue's byte count still drops by its size; after a restart only the kept ones are there."""
    store = MessageStore(tmp_path)
    paged = PagedQueueStore(lambda: store.open_log("/", "q", True), Message, True, window=1, window_bytes=1)
    for body in bodies():
        paged.push(Message("", "q", PERSISTENT, body))
    store.sync_now()
    assert paged.disk == len(bodies()) - 1  # all but the first are on disk only
    read = [0]
    real_pread = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        data = real_pread(fd, n, offset)
        read[0] += len(data)
        return data

    monkeypatch.setattr(os, "pread", pread)
    for _ in range(4):
        assert paged.drop_head()
    assert read[0] < 4096, f"{read[0]} bytes read to drop four messages"
    assert len(paged) == 2
    assert paged.ready_bytes == sum(len(b) for b in bodies()[4:])
    store.sync_now()
    monkeypatch.setattr(os, "pread", real_pread)
    assert recovered(tmp_path) == bodies()[4:]


def test_the_light_lane_does_not_wait_for_a_heavy_log(tmp_path: Path) -> None:
    """A log that took a large record is heavy: the group commit of the other logs (the light
    lane) leaves its file to the heavy lane, so a waiter whose data is in light logs only is
    released without waiting for tens of MiB to reach the disk; a waiter that may depend on the
    heavy log (the default) waits for both lanes."""
    store = MessageStore(tmp_path)
    shell = Shell(store)
    big = PagedQueueStore(lambda: store.open_log("/", "big", True), Message, True, window=1, window_bytes=1)
    small = PagedQueueStore(lambda: store.open_log("/", "small", True), Message, True)
    heavy_msg = Message("", "big", PERSISTENT, b"B" * (2 * BIG))
    big.push(heavy_msg)
    light_msg = Message("", "small", PERSISTENT, b"s")
    small.push(light_msg)
    assert heavy_msg.needs_sync == HEAVY_SYNC and light_msg.needs_sync is True
    light: list[int] = []
    both: list[int] = []
    store.after_sync(lambda: light.append(1), heavy=False)
    store.after_sync(lambda: both.append(1))
    job = store.start_sync()
    assert job is not None
    assert big.log is not None and small.log is not None
    assert small.log.wfd in job.fds and big.log.wfd not in job.fds
    job.run()
    store.finish_sync(job)
    assert light == [1] and both == []
    heavy = store.start_heavy_sync()
    assert heavy is not None and heavy.fds == [big.log.wfd]
    shell.run()
    heavy.run()
    store.finish_sync(heavy)
    assert both == [1]
    assert not store.heavy_logs


def test_a_heavy_log_stays_heavy_while_data_written_during_its_sync_waits(tmp_path: Path) -> None:
    """Data a heavy log took while its heavy sync ran is not covered by that sync: the log stays
    heavy, so the next heavy sync takes its file (had it turned light, a waiter registered
    meanwhile, waiting for a light and a heavy sync after it, could be answered by two jobs that
    both left the file out)."""
    store = MessageStore(tmp_path)
    shell = Shell(store)
    big = PagedQueueStore(lambda: store.open_log("/", "big", True), Message, True, window=1, window_bytes=1)
    big.push(Message("", "big", PERSISTENT, b"B" * (2 * BIG)))
    early: list[int] = []
    store.after_sync(lambda: early.append(1))
    light = store.start_sync()  # flushes: the large write goes to the thread
    assert light is not None
    light.run()
    store.finish_sync(light)
    assert big.log is not None and big.log.heavy
    first = store.start_heavy_sync()
    assert first is not None
    shell.run()  # the large write (the thread runs it before the heavy sync)
    late = Message("", "big", PERSISTENT, b"late")
    big.push(late)  # written inline (no large write in flight), after the heavy sync started
    store.flush()
    confirmed: list[int] = []
    store.after_sync(lambda: confirmed.append(1))
    first.run()
    store.finish_sync(first)
    assert early == [1] and confirmed == []
    assert big.log.heavy, "turned light with data its sync did not cover"
    light = store.start_sync()
    assert light is not None and big.log.wfd not in light.fds
    light.run()
    store.finish_sync(light)
    second = store.start_heavy_sync()
    assert second is not None and second.fds == [big.log.wfd]
    second.run()
    store.finish_sync(second)
    assert confirmed == [1]
    assert not big.log.heavy  # nothing left unsynced: light again
