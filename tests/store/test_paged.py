"""A queue's paged store: an in-memory window over the log, order kept across both; group commit."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from hare.amqp.properties import encode_properties
from hare.broker.message import Message
from hare.store import queue_log
from hare.store.message_store import MessageStore
from hare.store.paged import PagedQueueStore

PERSISTENT = encode_properties({"delivery_mode": 2})
TRANSIENT = encode_properties({"delivery_mode": 1})


def make(tmp_path: Path, durable: bool = True, window: int = 8) -> tuple[MessageStore, PagedQueueStore]:
    store = MessageStore(tmp_path)
    paged = PagedQueueStore(lambda: store.open_log("/", "q", durable), Message, durable, window=window,
                            window_bytes=1 << 20)
    return store, paged


def restarted(tmp_path: Path) -> PagedQueueStore:
    store = MessageStore(tmp_path)
    qlog = store.recover_log("/", "q")
    assert qlog is not None
    return PagedQueueStore(lambda: store.open_log("/", "q", True), Message, True, log=qlog)


def msg(i: int, persistent: bool = True) -> Message:
    return Message("ex", "rk", PERSISTENT if persistent else TRANSIENT, b"%d" % i)


def drain(paged: PagedQueueStore, ack: bool = True) -> list[tuple[bytes, bool]]:
    out = []
    while (entry := paged.pop()) is not None:
        m, seq, redelivered, _exp = entry
        out.append((m.body, redelivered))
        if ack:
            paged.ack(seq, m)
    return out


def test_memory_holds_only_the_window_whatever_the_backlog(tmp_path: Path) -> None:
    _store, paged = make(tmp_path, durable=False, window=8)
    for i in range(5000):
        paged.push(msg(i, persistent=False))
    assert len(paged) == 5000
    assert len(paged.mem) <= 8
    got = []
    while (entry := paged.pop()) is not None:
        assert len(paged.mem) <= 8
        got.append(int(entry[0].body))
        paged.ack(entry[1], entry[0])
    assert got == list(range(5000))
    assert paged.log is not None and paged.log.live == 0


def test_a_small_transient_backlog_never_touches_the_disk(tmp_path: Path) -> None:
    _store, paged = make(tmp_path, durable=True, window=100)
    for i in range(50):
        paged.push(msg(i, persistent=False))
    assert paged.log is None
    assert [int(b) for b, _ in drain(paged)] == list(range(50))


def test_order_is_kept_while_pushes_and_pops_interleave(tmp_path: Path) -> None:
    _store, paged = make(tmp_path, window=5)
    rng = random.Random(7)
    pushed = popped = 0
    out = []
    while popped < 3000:
        if pushed < 3000 and rng.random() < 0.55:
            paged.push(msg(pushed, persistent=rng.random() < 0.5))
            pushed += 1
        elif (entry := paged.pop()) is not None:
            out.append(int(entry[0].body))
            paged.ack(entry[1], entry[0])
            popped += 1
        assert len(paged) == pushed - popped
    assert out == list(range(3000))


def test_requeued_messages_return_to_their_original_place(tmp_path: Path) -> None:
    _store, paged = make(tmp_path, window=4)
    for i in range(20):
        paged.push(msg(i))
    taken = [paged.pop() for _ in range(6)]
    for m, seq, _, _ in reversed(taken[1:4]):  # requeue 1, 2, 3 in reverse order
        paged.requeue(seq, m)
    got = drain(paged)
    assert [int(b) for b, _ in got] == [1, 2, 3] + list(range(6, 20))
    assert [r for _, r in got[:3]] == [True, True, True]
    assert not any(r for _, r in got[3:])


def test_purge_drops_memory_and_disk_and_counts_both(tmp_path: Path) -> None:
    store, paged = make(tmp_path, window=4)
    for i in range(1000):
        paged.push(msg(i))
    m, seq, _, _ = paged.pop()  # delivered, unacked: purge leaves it
    assert paged.purge() == 999
    assert len(paged) == 0 and paged.pop() is None
    store.flush()
    paged.ack(seq, m)
    store.flush()
    assert paged.log is not None and paged.log.live == 0
    paged.push(msg(1000))
    assert [b for b, _ in drain(paged)] == [b"1000"]


def test_restart_keeps_persistent_unacked_messages_with_redelivered_flags(tmp_path: Path) -> None:
    store, paged = make(tmp_path, window=4)
    for i in range(30):
        paged.push(msg(i, persistent=i % 3 != 0))
    delivered = [paged.pop() for _ in range(10)]
    for m, seq, _, _ in delivered[::2]:
        paged.ack(seq, m)
    store.flush()  # then "kill -9"
    again = restarted(tmp_path)
    acked = {int(m.body) for m, _, _, _ in delivered[::2]}
    want = [i for i in range(30) if i % 3 and i not in acked]
    got = drain(again)
    assert [int(b) for b, _ in got] == want
    # redelivered exactly for those handed out before the restart
    assert [int(b) for b, r in got if r] == [i for i in want if i < 10]


def test_positions_continue_after_a_restart(tmp_path: Path) -> None:
    store, paged = make(tmp_path)
    for i in range(5):
        paged.push(msg(i))
    store.flush()
    again = restarted(tmp_path)
    for i in range(5, 10):
        again.push(msg(i))
    assert [int(b) for b, _ in drain(again, ack=False)] == list(range(10))


# -- group commit ---------------------------------------------------------------------------------

def test_waiters_run_only_after_the_sync_that_covers_them(tmp_path: Path) -> None:
    store, paged = make(tmp_path)
    wakes = []
    store.on_wake = lambda: wakes.append(1)
    ran: list[str] = []
    paged.push(msg(1))
    store.after_sync(lambda: ran.append("a"))
    job = store.start_sync()
    assert job is not None and job.fds and ran == []
    paged.push(msg(2))
    store.after_sync(lambda: ran.append("b"))
    assert store.start_sync() is None  # one sync at a time: b waits for the next
    job.run()
    store.finish_sync(job)
    assert ran == ["a"]
    job2 = store.start_sync()
    assert job2 is not None
    job2.run()
    store.finish_sync(job2)
    assert ran == ["a", "b"]
    assert wakes


def test_rolled_segments_are_synced_then_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_log, "SEGMENT_SIZE", 1024)
    store, paged = make(tmp_path, window=1000)
    for i in range(200):
        paged.push(msg(i))
    assert store.retired and all(needs for _, needs in store.retired)
    fds = [fd for fd, _ in store.retired]
    store.sync_now()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_a_failed_write_keeps_the_data_and_withholds_confirms(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    store, paged = make(tmp_path)
    paged.push(msg(1))
    ran: list[int] = []
    store.after_sync(lambda: ran.append(1))
    real_write = os.write

    def disk_full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    assert store.start_sync() is None  # nothing confirmed while the data is not written
    assert ran == [] and store.write_error is not None
    monkeypatch.setattr(os, "write", real_write)
    store.sync_now()  # the disk has room again: the retry writes it, then confirms
    assert ran == [1] and store.write_error is None
    assert [b for b, _ in drain(restarted(tmp_path))] == [b"1"]


def test_a_failed_sync_refuses_its_waiters_and_is_retried(tmp_path: Path) -> None:
    """fdatasync fails for real (a pipe among the files to sync: EINVAL): every waiter is told,
    those without an error callback are dropped, the broker's hook hears of it, the log goes on
    in a new segment, and only the shell's retry (or new waiters) syncs again; a successful sync
    clears the error."""
    store, paged = make(tmp_path)
    alarms: list[OSError | None] = []
    store.on_sync_error = alarms.append
    paged.push(msg(1))
    store.sync_now()
    qlog = paged.log
    assert qlog is not None and len(qlog.segments) == 1
    paged.push(msg(2))
    store.flush()
    r, w = os.pipe()
    store.sync_fd(w, qlog)
    outcome: list[str] = []
    store.after_sync(lambda: outcome.append("ok"), lambda exc: outcome.append(f"error {exc.errno}"))
    store.after_sync(lambda: outcome.append("no error callback"))
    store.sync_now()
    assert outcome == [f"error {errno.EINVAL}"]
    assert store.sync_error is not None and alarms == [store.sync_error]
    assert not store.sync_wanted and store.start_sync() is None  # no retry in a loop
    paged.push(msg(3))  # a new segment: nothing confirmed later lies behind the failed pages
    assert len(qlog.segments) == 2
    store.retry_sync = True
    store.sync_now()  # the pipe is still there: fails again, no new alarm
    assert store.sync_error is not None and len(alarms) == 1
    del store.sync_fds[w]
    os.close(r)
    os.close(w)
    store.retry_sync = True
    store.after_sync(lambda: outcome.append("ok"), lambda exc: outcome.append("error"))
    store.sync_now()
    assert outcome[-1] == "ok" and store.sync_error is None and alarms[-1] is None
    store.close()
    again = restarted(tmp_path)
    assert [int(b) for b, _ in drain(again, ack=False)] == [1, 2, 3]


def test_older_segments_of_a_durable_log_are_synced_whole(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Transient messages paged out to a durable queue's log need no sync of their own, but a
    segment the log is done with is synced whole all the same: an unsynced tail in any but the
    newest segment would read as corruption after a power loss."""
    monkeypatch.setattr(queue_log, "SEGMENT_SIZE", 1024)
    store, paged = make(tmp_path, window=1)
    for i in range(200):
        paged.push(msg(i, persistent=False))
    assert len(store.retired) > 3 and all(needs for _, needs in store.retired)


def test_the_window_counts_property_bytes_not_only_bodies(tmp_path: Path) -> None:
    """Messages with tiny bodies and wide headers (issue 12, finding 5): the window's byte bound
    holds what is kept, properties included, so the rest waits in the log."""
    store = MessageStore(tmp_path)
    paged = PagedQueueStore(lambda: store.open_log("/", "q", True), Message, True,
                            window=16384, window_bytes=1 << 20)
    props = encode_properties({"delivery_mode": 1, "headers": {f"h{i}": i for i in range(4000)}})
    assert len(props) > 30_000
    for i in range(300):  # ~9 MB of properties, 300 bytes of bodies
        paged.push(Message("ex", "rk", props, b"%d" % i))
    kept = sum(len(m.properties_raw) + len(m.body) for _, m, _ in paged.mem)
    assert kept <= (1 << 20) + len(props) + 100
    assert paged.mem_bytes >= kept
    assert len(paged) == 300
    assert [int(b) for b, _ in drain(paged)] == list(range(300))  # the rest came back from the log
    assert paged.mem_bytes == 0


def test_empty_messages_are_not_free_to_the_window(tmp_path: Path) -> None:
    store = MessageStore(tmp_path)
    paged = PagedQueueStore(lambda: store.open_log("/", "q", False), Message, False,
                            window=1 << 30, window_bytes=64 << 10)
    for _ in range(5000):
        paged.push(Message("ex", "rk", b"\x00\x00", b""))
    assert len(paged.mem) < 5000
    assert len(drain(paged)) == 5000
