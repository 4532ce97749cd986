"""The delayed messages' store (store/delayed.py) on a simulated clock: time buckets on disk,
splitting, release in due order with a bounded read-ahead, acks, recovery."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from hare.amqp.properties import encode_properties
from hare.broker.message import Message
from hare.store import delayed
from hare.store.delayed import HORIZON, WIDTH, DelayedStore, MemoryDelayed, remove_orphans
from hare.store.message_store import MessageStore

T0 = 1_700_000_000_123  # the simulated clock's start (ms)
PERSISTENT = encode_properties({"delivery_mode": 2})
TRANSIENT = encode_properties({})


def msg(body: bytes, persistent: bool = True) -> Message:
    return Message("dx", "k", PERSISTENT if persistent else TRANSIENT, body)


def open_store(tmp_path: Path, durable: bool = True,
               recover: bool = False) -> tuple[MessageStore, DelayedStore]:
    store = MessageStore(tmp_path)
    return store, DelayedStore.open(store, "/", "dx", durable, Message, recover)


def run_until(ds: DelayedStore, store: MessageStore, until: int, now: int = T0,
              max_heap: list[int] | None = None) -> list[tuple[int, bytes]]:
    """Drive the store as the exchange's timer does, jumping from wake-up to wake-up: (release
    time, body) of each message released, every release settled (acks after a sync)."""
    out: list[tuple[int, bytes]] = []
    while True:
        wake = ds.next_wake(now)
        if wake is None or wake > until:
            return out
        now = wake
        batch = ds.take(now)
        out.extend((now, m.body) for m in batch)
        ds.settle(wait_sync=True)
        store.sync_now()
        if max_heap is not None:
            max_heap[0] = max(max_heap[0], len(ds.heap))


def test_releases_every_message_once_at_its_due_time_in_order(tmp_path: Path) -> None:
    store, ds = open_store(tmp_path)
    rng = random.Random(7)
    due: dict[bytes, int] = {}
    spans = [2_000, HORIZON[0] * 2, HORIZON[1] * 2, HORIZON[2] + WIDTH[2] * 3]  # every level
    for i in range(3000):
        body = str(i).encode()
        due[body] = T0 + 1 + rng.randrange(spans[i % len(spans)])
        ds.add(msg(body), due[body], T0)
    store.flush()
    levels = {level for level, _ in ds.buckets}
    assert levels == {0, 1, 2, 3}
    released = run_until(ds, store, max(due.values()) + 10_000)
    assert sorted(body for _, body in released) == sorted(due)
    assert all(at == due[body] for at, body in released)  # never early, never late
    dues = [due[body] for _, body in released]
    assert dues == sorted(dues)
    assert len(ds) == 0 and not ds.buckets
    assert [p.name for p in ds.dir.iterdir()] == ["name"]  # every bucket's directory is gone


def test_messages_added_while_time_passes_keep_order(tmp_path: Path) -> None:
    """Adds between releases: into buckets already open, already split, or still coarse."""
    store, ds = open_store(tmp_path)
    rng = random.Random(11)
    due: dict[bytes, int] = {}
    now = T0
    released: list[tuple[int, bytes]] = []
    for step in range(400):
        for j in range(10):
            body = f"{step}-{j}".encode()
            due[body] = now + 1 + rng.choice([rng.randrange(50), rng.randrange(3_000),
                                              rng.randrange(200_000)])
            ds.add(msg(body, persistent=j % 2 == 0), due[body], now)
        later = now + rng.randrange(1, 2_000)
        released += run_until(ds, store, later, now)
        now = later
    released += run_until(ds, store, now + 10_000_000, now)
    assert sorted(b for _, b in released) == sorted(due)
    assert all(at == due[b] for at, b in released)


def test_read_ahead_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delayed, "HEAP_MAX", 100)
    monkeypatch.setattr(delayed, "BATCH", 64)
    store, ds = open_store(tmp_path)
    for i in range(5000):  # 5000 messages due within 5 seconds
        ds.add(msg(str(i).encode()), T0 + 10_000 + i, T0)
    biggest = [0]
    released = run_until(ds, store, T0 + 100_000, max_heap=biggest)
    assert len(released) == 5000
    assert biggest[0] <= 100
    assert [int(b) for _, b in released] == list(range(5000))


def test_far_messages_wait_in_coarse_buckets_and_memory_stays_small(tmp_path: Path) -> None:
    store, ds = open_store(tmp_path)
    n = 20_000
    for i in range(n):
        ds.add(msg(b"x" * 50), T0 + 120_000 + i * 1_000, T0)  # one a second for 5.5 hours
    assert len(ds) == n
    assert ds.memory_entries() < 150  # buckets, not messages
    assert not ds.heap


def test_persistent_messages_come_back_after_a_restart_transient_ones_do_not(tmp_path: Path) -> None:
    store, ds = open_store(tmp_path)
    for i in range(100):
        ds.add(msg(b"p%d" % i), T0 + 1_000 + i * 997, T0)
        ds.add(msg(b"t%d" % i, persistent=False), T0 + 1_000 + i * 997, T0)
    # release some of them before the restart
    released = run_until(ds, store, T0 + 20_000)
    assert len(released) == 2 * 20
    store.close()

    store, ds = open_store(tmp_path, recover=True)
    assert len(ds) == 80
    again = run_until(ds, store, T0 + 1_000_000, T0 + 20_000)
    assert [b for _, b in again] == [b"p%d" % i for i in range(20, 100)]
    store.close()
    store, ds = open_store(tmp_path, recover=True)
    assert len(ds) == 0


@pytest.mark.parametrize("crash", [False, True])
def test_a_restart_midway_through_a_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          crash: bool) -> None:
    """Records of a coarse bucket being split are acked only once their copies are synced: a
    restart in between, clean or not, loses nothing (a record may come twice: at least once)."""
    monkeypatch.setattr(delayed, "BATCH", 10)
    store, ds = open_store(tmp_path)
    dues = [T0 + HORIZON[0] + 5_000 + i * 50 for i in range(100)]  # a level-1 bucket
    for i, d in enumerate(dues):
        ds.add(msg(b"%d" % i), d, T0)
    ((level, start),) = ds.buckets
    assert level == 1
    ds.take(start - delayed.SPLIT_LEAD[1])  # split starts: 10 records moved, acks wait for a sync
    if crash:
        store.flush()  # the copies reach the files, the acks never do
    else:
        store.close()  # the clean shutdown runs the sync and writes those acks

    store, ds = open_store(tmp_path, recover=True)
    released = run_until(ds, store, T0 + 10_000_000, start - delayed.SPLIT_LEAD[1])
    bodies = sorted(int(b) for _, b in released)
    if crash:
        assert sorted(set(bodies)) == list(range(100)) and len(bodies) == 110
    else:
        assert bodies == list(range(100))


def test_acks_of_released_messages_wait_for_the_sync(tmp_path: Path) -> None:
    store, ds = open_store(tmp_path)
    ds.add(msg(b"m"), T0 + 100, T0)
    batch = []
    now = T0
    while not batch:
        now = ds.next_wake(now) or now + 1
        batch = ds.take(now)
    ds.settle(wait_sync=True)
    store.flush()
    (bucket,) = ds.buckets.values()
    assert bucket.inflight == 1  # not acked until the sync that covers the queues' copies
    store.sync_now()
    assert bucket.inflight == 0


def test_destroy_removes_everything(tmp_path: Path) -> None:
    store, ds = open_store(tmp_path)
    for i in range(10):
        ds.add(msg(b"m"), T0 + 1_000 * 60 * i, T0)
    store.flush()
    assert ds.dir.is_dir()
    ds.destroy()
    assert not ds.dir.exists() and len(ds) == 0


def test_non_durable_exchange_keeps_its_buckets_in_the_transient_area(tmp_path: Path) -> None:
    store, ds = open_store(tmp_path, durable=False)
    m = msg(b"m")
    ds.add(m, T0 + 5_000, T0)
    assert not m.needs_sync
    store.flush()
    assert ds.dir.parent == tmp_path / "transient" / "delayed"
    assert any(ds.dir.rglob("*.seg"))
    store.close()
    MessageStore(tmp_path)
    assert not (tmp_path / "transient").exists()


def test_orphan_directories_are_removed(tmp_path: Path) -> None:
    store, ds = open_store(tmp_path)
    ds.add(msg(b"m"), T0 + 5_000, T0)
    store.close()
    store = MessageStore(tmp_path)
    remove_orphans(store)  # no exchange claimed it
    assert not any((tmp_path / "delayed").iterdir())


def test_memory_delayed() -> None:
    md = MemoryDelayed()
    assert md.add(msg(b"b"), T0 + 20, T0) == T0 + 20
    assert md.add(msg(b"a"), T0 + 10, T0) == T0 + 10
    assert md.add(msg(b"c"), T0 + 30, T0) is None
    assert md.next_wake(T0) == T0 + 10
    assert [m.body for m in md.take(T0 + 25)] == [b"a", b"b"]
    assert len(md) == 1


def test_after_a_long_downtime_overdue_messages_go_out_at_once(tmp_path: Path) -> None:
    """Back after days: the coarse buckets are split with every record overdue; they go to the
    current second's bucket (not one bucket per second of the past) and out at once."""
    store, ds = open_store(tmp_path)
    for i in range(2000):
        ds.add(msg(b"%d" % i), T0 + 60_000 + i * 97_000, T0)  # over 2.2 days
    store.close()
    store, ds = open_store(tmp_path, recover=True)
    now = T0 + 5 * 86_400_000
    released: list[bytes] = []
    most = 0
    for _ in range(200):
        released += [m.body for m in ds.take(now)]
        ds.settle(wait_sync=True)
        store.sync_now()
        most = max(most, len(ds.buckets))
        wake = ds.next_wake(now)
        if wake is None:
            break
        now = max(now + 1, wake)
    assert sorted(int(b) for b in released) == list(range(2000))
    assert most < 100


def test_broker_without_a_data_directory_keeps_them_in_memory() -> None:
    from hare.broker.broker import Broker
    from hare.broker.timers import now_ms

    broker = Broker()
    vhost = broker.vhosts["/"]
    ex = vhost.declare_exchange("dx", "x-delayed-message", arguments={"x-delayed-type": "fanout"})
    q = vhost.declare_queue("q")
    vhost.bind_queue("q", "dx", "", None)
    raw = encode_properties({"headers": {"x-delay": 50}})
    assert vhost.route(ex, Message("dx", "", raw, b"m")) == []
    assert isinstance(ex.delayed, MemoryDelayed) and len(ex.delayed) == 1
    broker.timers.run(now_ms() + 60)
    assert q.message_count == 1
    assert len(ex.delayed) == 0
