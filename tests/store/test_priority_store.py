"""A priority queue's store: one paged store (and log) per level, highest level first."""

from __future__ import annotations

import random
from pathlib import Path

from hare.amqp.properties import encode_properties
from hare.broker.message import Message
from hare.store.message_store import MessageStore
from hare.store.paged import WINDOW_MESSAGES
from hare.store.priority import MIN_LEVEL_WINDOW, PriorityQueueStore, level_name


def msg(i: int, priority: int | None = None, persistent: bool = True) -> Message:
    props = encode_properties({"delivery_mode": 2 if persistent else 1, "priority": priority})
    return Message("ex", "rk", props, b"%d" % i)


def make(tmp_path: Path, max_priority: int = 5,
         durable: bool = True) -> tuple[MessageStore, PriorityQueueStore]:
    store = MessageStore(tmp_path)
    pq = PriorityQueueStore(max_priority, lambda level: store.open_log("/", level_name("q", level), durable),
                            Message, durable)
    return store, pq


def restarted(tmp_path: Path, max_priority: int = 5) -> PriorityQueueStore:
    store = MessageStore(tmp_path)
    logs = {}
    for level in range(max_priority + 1):
        log = store.recover_log("/", level_name("q", level))
        if log is not None:
            logs[level] = log
    return PriorityQueueStore(max_priority, lambda level: store.open_log("/", level_name("q", level), True),
                              Message, True, logs=logs)


def drain(pq: PriorityQueueStore, ack: bool = True) -> list[tuple[bytes, bool]]:
    out = []
    while (entry := pq.pop()) is not None:
        m, seq, redelivered, _exp = entry
        out.append((m.body, redelivered))
        if ack:
            pq.ack(seq, m)
    return out


def bodies(got: list[tuple[bytes, bool]]) -> list[int]:
    return [int(b) for b, _ in got]


def test_highest_level_first_fifo_within_a_level_and_the_cap(tmp_path: Path) -> None:
    _store, pq = make(tmp_path, max_priority=5)
    prios = [None, 1, 5, 9, 255, 5, 0, 3, None, 9]
    for i, p in enumerate(prios):
        pq.push(msg(i, p))
    assert len(pq) == 10
    assert pq.ready_bytes == 10
    # 9 and 255 count as 5 (the maximum), in their order of arrival; no priority counts as 0
    assert bodies(drain(pq)) == [2, 3, 4, 5, 9, 7, 1, 0, 6, 8]
    assert len(pq) == 0 and pq.ready_bytes == 0


def test_levels_are_created_when_first_used(tmp_path: Path) -> None:
    _store, pq = make(tmp_path, max_priority=200)
    pq.push(msg(1, 7))
    assert [level for level, _ in pq.order] == [7]
    assert pq.levels[7] is not None and pq.levels[0] is None


def test_requeued_messages_return_to_their_place_within_their_level(tmp_path: Path) -> None:
    _store, pq = make(tmp_path)
    for i, p in enumerate([2, 2, 2, 1, 3]):
        pq.push(msg(i, p))
    taken = [pq.pop() for _ in range(3)]  # 4 (prio 3), 0 and 1 (prio 2)
    assert [int(e[0].body) for e in taken if e] == [4, 0, 1]
    for m, seq, _, _ in (taken[2], taken[1]):  # type: ignore[misc]
        pq.requeue(seq, m)
    got = drain(pq)
    assert bodies(got) == [0, 1, 2, 3]
    assert [r for _, r in got] == [True, True, False, False]


def test_each_level_pages_within_its_share_of_the_window(tmp_path: Path) -> None:
    _store, pq = make(tmp_path, max_priority=255, durable=False)
    assert pq.window == max(WINDOW_MESSAGES // 256, MIN_LEVEL_WINDOW)
    n = 3 * pq.window
    for i in range(n):
        pq.push(msg(i, i % 3, persistent=False))
    for _, level in pq.order:
        assert len(level.mem) <= pq.window
    got = bodies(drain(pq))
    assert got == [i for p in (2, 1, 0) for i in range(n) if i % 3 == p]


def test_interleaved_pushes_pops_and_requeues_keep_priority_order(tmp_path: Path) -> None:
    _store, pq = make(tmp_path, max_priority=3)
    pq.window = 4  # levels created from now on page early
    rng = random.Random(3)
    model: list[tuple[int, int]] = []  # (-priority, i): what pop must return next
    out: list[tuple[int, tuple[Message, int, bool, int]]] = []  # delivered, unacked
    for i in range(3000):
        r = rng.random()
        if r < 0.5:
            p = rng.randrange(5)
            pq.push(msg(i, p, persistent=rng.random() < 0.5))
            model.append((-min(p, 3), i))
        elif r < 0.6 and out:  # requeue: back to its place within its level
            key, entry = out.pop(rng.randrange(len(out)))
            pq.requeue(entry[1], entry[0])
            model.append((key, int(entry[0].body)))
        elif model:
            model.sort()
            key, want = model.pop(0)
            entry = pq.pop()
            assert entry is not None and int(entry[0].body) == want
            if rng.random() < 0.3:
                out.append((key, entry))
            else:
                pq.ack(entry[1], entry[0])
        assert len(pq) == len(model)
    model.sort()
    assert bodies(drain(pq)) == [i for _, i in model]
    assert pq.pop() is None and pq.head_expiry() == 0


def test_purge_counts_every_level(tmp_path: Path) -> None:
    store, pq = make(tmp_path)
    for i in range(30):
        pq.push(msg(i, i % 4))
    assert pq.purge() == 30
    assert len(pq) == 0 and pq.pop() is None and pq.ready_bytes == 0


def test_a_restart_keeps_every_level_and_its_order(tmp_path: Path) -> None:
    store, pq = make(tmp_path)
    prios = [0, 3, 5, 1, 3, 0, 5, 2]
    for i, p in enumerate(prios):
        pq.push(msg(i, p, persistent=i != 7))  # the transient one is not kept
    first = pq.pop()  # 2 (prio 5): handed out, never acked
    second = pq.pop()  # 6 (prio 5): acked
    assert first is not None and second is not None
    pq.ack(second[1], second[0])
    store.flush()  # then "kill -9"
    again = restarted(tmp_path)
    got = drain(again, ack=False)
    assert bodies(got) == [2, 1, 4, 3, 0, 5]
    assert [r for _, r in got] == [True, False, False, False, False, False]
    again.push(msg(9, 4))  # positions go on in each level after a restart
    again.push(msg(10, 0))
    assert bodies(drain(again, ack=False)) == [9, 10]


def test_destroy_removes_every_level_log(tmp_path: Path) -> None:
    _store, pq = make(tmp_path)
    for i in range(6):
        pq.push(msg(i, i))
    dirs = [level.log.dir for _, level in pq.order if level.log is not None]
    assert len(dirs) == 6 and all(d.is_dir() for d in dirs)
    pq.destroy()
    assert not any(d.exists() for d in dirs)
    assert len(pq) == 0


def test_the_priority_is_found_whatever_properties_precede_it(tmp_path: Path) -> None:
    _store, pq = make(tmp_path, max_priority=9, durable=False)
    variants = [
        {"priority": 1},
        {"delivery_mode": 2, "priority": 2},
        {"content_type": "text/plain", "priority": 3},
        {"content_encoding": "gzip", "delivery_mode": 1, "priority": 4},
        {"headers": {"x": [1, "two"]}, "priority": 5, "expiration": "60000"},
        {"content_type": "a", "headers": {}, "delivery_mode": 2, "priority": 200, "reply_to": "r"},
        {"headers": {"priority": 9}},  # a header is not the property
    ]
    for i, props in enumerate(variants):
        pq.push(Message("ex", "rk", encode_properties(props), b"%d" % i))
    assert bodies(drain(pq)) == [5, 4, 3, 2, 1, 0, 6]
