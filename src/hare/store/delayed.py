"""The delayed messages of one x-delayed-message exchange: on disk in time buckets, released in due order.

Each bucket holds the messages due in one span of time ``[start, start + WIDTH[level])`` and is a
queue log of its own (``queue_log.py``: append-only segments, acks, recovery, group commit), in a
directory per exchange::

    delayed/<id>/name                 "<vhost>\\n<exchange name>\\n"
    delayed/<id>/<level>-<start>/     one bucket: 0000000001.seg, 0000000001.ack, ...

In a bucket's records the u64 that a queue's log uses for ``enqueued_ms`` is the message's due time
(wall-clock ms); ``position`` counts the bucket's records. Buckets are coarse far ahead and fine
near (level 0: 1 s, level 1: 64 s, level 2: 4096 s, level 3: 72.8 h). Shortly before a coarse
bucket's span begins it is *split*: its records are streamed, in bounded chunks, into finer
buckets (and acked once those writes are synced). Shortly before a level-0 bucket's second begins
it is *opened*: its records are read into a bounded heap in memory, from which each message is
released at its due time (and acked once the queues it went to have it on disk). Memory holds a
few numbers per bucket, a bit per record (the acked bitmaps of the logs) and the heap.

Without a data directory the messages are kept in memory (``MemoryDelayed``).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .message_store import queue_id
from .queue_log import QueueLog
from .segment import FLAG_PERSISTENT, decode_message

if TYPE_CHECKING:
    from ..broker.message import Message
    from .message_store import MessageStore
    from .paged import MessageFactory

log = logging.getLogger("hare.store")

LEVELS = 4
FANOUT = 64
WIDTH = tuple(1000 * FANOUT**level for level in range(LEVELS))  # ms spanned by a bucket of each level
HORIZON = tuple(w * FANOUT for w in WIDTH)  # a message due less than this far ahead fits the level
OPEN_LEAD = 500  # ms before its second a level-0 bucket is read into memory
# ms before its span a coarser bucket is split into finer ones (time enough to stream it)
SPLIT_LEAD = (0, *(WIDTH[level - 1] * 16 for level in range(1, LEVELS)))
HEAP_MAX = 8192  # messages held in memory, read ahead of their release
HEAP_BYTES = 16 << 20
BATCH = 4096  # records split or released per call of take(): the event loop stays responsive
BATCH_BYTES = 8 << 20


class Bucket:
    __slots__ = ("level", "start", "log", "next_pos", "draining", "pending", "inflight", "gone")

    def __init__(self, level: int, start: int, qlog: QueueLog, next_pos: int = 0, pending: int = 0) -> None:
        self.level = level
        self.start = start
        self.log = qlog
        self.next_pos = next_pos  # position of the next record appended
        self.draining = False  # level 0: being read into memory; coarser: being split
        self.pending = pending  # records not yet read
        self.inflight = 0  # records read, not yet acked
        self.gone = False

    @property
    def end(self) -> int:
        return self.start + WIDTH[self.level]

    @property
    def action_time(self) -> int:
        return self.start - (OPEN_LEAD if self.level == 0 else SPLIT_LEAD[self.level])

    def __repr__(self) -> str:
        return f"<Bucket {self.level}-{self.start} pending={self.pending} inflight={self.inflight}>"


class DelayedStore:
    """The buckets of one exchange (``durable``: its persistent messages survive a restart)."""

    def __init__(self, directory: Path, durable: bool, store: MessageStore, make_message: MessageFactory,
                 label: str = "") -> None:
        self.dir = directory
        self.durable = durable
        self.store = store
        self.make_message = make_message
        self.label = label  # "<vhost>\n<exchange>\n", written to the directory's name file
        self.buckets: dict[tuple[int, int], Bucket] = {}
        self.actions: list[tuple[int, int, int]] = []  # (action time, level, start), a heap
        self.splitting: list[Bucket] = []  # coarse buckets being split, oldest action first
        self.open: list[Bucket] = []  # level-0 buckets being read into memory, by start
        self.heap: list[tuple[int, int, Bucket, int, bytes]] = []  # (due, seq, bucket, position, record)
        self.heap_bytes = 0
        self.seq = itertools.count()
        self.taken: list[tuple[Bucket, int]] = []  # released by the last take(), acked by settle()
        self.count = 0  # messages held
        self.now = 0  # the latest clock seen (the wall clock may step back: never follow it)
        self.dir_ready = False

    # -- opening ----------------------------------------------------------------------------------

    @classmethod
    def open(cls, store: MessageStore, vhost: str, name: str, durable: bool, make_message: MessageFactory,
             recover: bool = False) -> DelayedStore:
        """The store of an exchange: a durable one's under ``delayed/``, the others' under
        ``transient/delayed/`` (wiped at startup). ``recover``: the buckets the last run left."""
        root = store.data_dir / "delayed" if durable else store.transient_dir / "delayed"
        ds = cls(root / queue_id(vhost, name), durable, store, make_message, f"{vhost}\n{name}\n")
        if recover and durable:
            ds._recover()
        else:
            shutil.rmtree(ds.dir, ignore_errors=True)  # an older exchange of the same name
        return ds

    def _recover(self) -> None:
        if not self.dir.is_dir():
            return
        for d in sorted(self.dir.iterdir()):
            try:
                level_s, start_s = d.name.split("-", 1)
                level, start = int(level_s), int(start_s)
            except ValueError:
                continue
            if not d.is_dir() or not 0 <= level < LEVELS:
                continue
            qlog = QueueLog(d, True, self.store)
            self.store.logs[d] = qlog
            live = qlog.recover()
            if not live:
                qlog.destroy()
                continue
            last = max((s.last for s in qlog.segments), default=-1)
            b = self.buckets[(level, start)] = Bucket(level, start, qlog, last + 1, live)
            heapq.heappush(self.actions, (b.action_time, level, start))
            self.count += live
        self.dir_ready = bool(self.buckets)  # else the directory goes with the orphans
        if self.count:
            log.info("delayed messages of exchange %r: %d recovered in %d buckets",
                     self.label.split("\n")[1], self.count, len(self.buckets))

    # -- adding -----------------------------------------------------------------------------------

    def add(self, msg: Message, due: int, now: int) -> int | None:
        """Keep ``msg`` until ``due`` (ms). Returns a time by which take() must run (None: the
        time it already had). A persistent message of a durable exchange is confirmed once synced."""
        if now > self.now:
            self.now = now
        persistent = msg.persistent
        if persistent and self.durable:
            msg.needs_sync = True
        b, wake = self._target(due, self.now)
        self._append(b, due, FLAG_PERSISTENT if persistent else 0, msg.route_bytes, msg.properties_raw,
                     msg.body)
        self.count += 1
        return wake

    def _target(self, due: int, now: int) -> tuple[Bucket, int | None]:
        """The bucket for a message due at ``due``: the finest level whose horizon reaches it,
        unless that bucket is already split (or about to be): then a finer one. A message already
        due (split late, after a restart) goes to the current second's bucket: out at once."""
        if due < now:
            due = now
        dist = due - now
        level = 0
        while level < LEVELS - 1 and dist >= HORIZON[level]:
            level += 1
        while level > 0:
            start = due - due % WIDTH[level]
            b = self.buckets.get((level, start))
            if b is None:
                if start - SPLIT_LEAD[level] > now:
                    b = self._new_bucket(level, start)
                    return b, b.action_time
            elif not b.draining:
                return b, None
            level -= 1
        start = due - due % WIDTH[0]
        b = self.buckets.get((0, start))
        if b is None:
            b = self._new_bucket(0, start)
            return b, b.action_time
        return b, (now if b.draining else None)

    def _new_bucket(self, level: int, start: int) -> Bucket:
        if not self.dir_ready:
            self.dir.mkdir(parents=True, exist_ok=True)
            if self.durable:  # the new directories' entries: delayed/<xid>, and delayed/ itself
                self.store.sync_dir(self.dir.parent)
                self.store.sync_dir(self.dir.parent.parent)
                self.store.write_synced(self.dir / "name", self.label)  # entry: sync_dir(self.dir)
            else:
                try:
                    (self.dir / "name").write_text(self.label, encoding="utf-8", errors="surrogateescape")
                except OSError:  # a full disk: the label is for people, a transient log does without
                    pass
            self.dir_ready = True
        d = self.dir / f"{level}-{start}"
        qlog = self.store.logs[d] = QueueLog(d, self.durable, self.store)
        if self.durable:
            self.store.sync_dir(self.dir)  # the bucket's directory entry
        b = self.buckets[(level, start)] = Bucket(level, start, qlog)
        heapq.heappush(self.actions, (b.action_time, level, start))
        return b

    def _append(self, b: Bucket, due: int, flags: int, route: bytes, props: bytes, body: bytes) -> None:
        b.log.append(b.next_pos, due, flags, route, props, body)
        b.next_pos += 1
        b.pending += 1

    # -- releasing --------------------------------------------------------------------------------

    def take(self, now: int) -> list[Message]:
        """Do the work due by ``now`` (bounded: split, open, read ahead) and return the messages
        due, in due order (at most BATCH; the rest at the next call). Call settle() after routing
        them."""
        if now > self.now:
            self.now = now
        now = self.now
        actions = self.actions
        while actions and actions[0][0] <= now:
            _, level, start = heapq.heappop(actions)
            b = self.buckets.get((level, start))
            if b is None or b.draining:
                continue
            b.draining = True
            if level:
                self.splitting.append(b)
            else:
                self.open.append(b)
                self.open.sort(key=_start)
        if self.splitting:
            self._split(now)
        if self.open:
            self._read_ahead()
        out: list[Message] = []
        heap = self.heap
        make = self.make_message
        taken = self.taken
        while heap and heap[0][0] <= now and len(out) < BATCH:
            _due, _seq, b, position, payload = heapq.heappop(heap)
            self.heap_bytes -= len(payload)
            _pos, _due, flags, route, exchange, routing_key, props, body = decode_message(payload)
            out.append(make(exchange, routing_key, props, body, route, bool(flags & FLAG_PERSISTENT)))
            taken.append((b, position))
        self.count -= len(out)
        for b in [b for b in self.open if not b.pending and not b.inflight and b.end <= now]:
            self._maybe_drop(b)
        return out

    def settle(self, wait_sync: bool) -> None:
        """The messages of the last take() are routed: ack them now, or once the store's next sync
        has put the queues' copies on disk (``wait_sync``)."""
        taken, self.taken = self.taken, []
        if not taken:
            return
        if wait_sync and self.durable:
            self.store.after_sync(functools.partial(self._ack, taken))
        else:
            self._ack(taken)

    def _split(self, now: int) -> None:
        budget = BATCH
        while self.splitting and budget > 0:
            b = self.splitting[0]
            records = b.log.read(budget, BATCH_BYTES) if b.pending else []
            if not records:
                b.pending = 0
                del self.splitting[0]
                self._maybe_drop(b)
                continue
            b.pending = max(0, b.pending - len(records))
            b.inflight += len(records)
            budget -= len(records)
            sync = False
            for _position, payload in records:
                _pos, due, flags, route, _ex, _rk, props, body = decode_message(payload)
                target, _ = self._target(due, now)
                self._append(target, due, flags, route, props, body)
                sync = sync or bool(flags & FLAG_PERSISTENT)
            done = [(b, position) for position, _ in records]
            if sync and self.durable:
                self.store.after_sync(functools.partial(self._ack, done))
            else:
                self._ack(done)

    def _read_ahead(self) -> None:
        """Read records of the open buckets into the heap, oldest bucket first, while it has room
        (a bucket is read whole before the next one: nothing due later goes out first)."""
        heap = self.heap
        seq = self.seq
        for b in self.open:
            while b.pending:
                room = HEAP_MAX - len(heap)
                room_bytes = HEAP_BYTES - self.heap_bytes
                if room <= 0 or room_bytes <= 0:
                    return
                records = b.log.read(room, room_bytes)
                if not records:
                    b.pending = 0
                    break
                b.pending = max(0, b.pending - len(records))
                b.inflight += len(records)
                for position, payload in records:
                    due = _due_of(payload)
                    heapq.heappush(heap, (due, next(seq), b, position, payload))
                    self.heap_bytes += len(payload)

    def _ack(self, done: list[tuple[Bucket, int]]) -> None:
        touched: dict[Bucket, None] = {}
        for b, position in done:
            if b.gone:
                continue
            b.log.ack(position)
            b.inflight -= 1
            touched[b] = None
        for b in touched:
            self._maybe_drop(b)

    def _maybe_drop(self, b: Bucket) -> None:
        """A bucket read through and acked (and, at level 0, whose second is over) goes."""
        if b.gone or not b.draining or b.pending or b.inflight or (b.level == 0 and self.now < b.end):
            return
        b.gone = True
        self.buckets.pop((b.level, b.start), None)
        if b in self.open:
            self.open.remove(b)
        if b in self.splitting:
            self.splitting.remove(b)
        b.log.destroy()

    def next_wake(self, now: int) -> int | None:
        """When take() has work next (None: nothing held)."""
        if now > self.now:
            self.now = now
        now = self.now
        actions = self.actions
        while actions:
            b = self.buckets.get((actions[0][1], actions[0][2]))
            if b is not None and not b.draining:
                break
            heapq.heappop(actions)
        when: list[int] = []
        if actions:
            when.append(actions[0][0])
        if self.heap:
            when.append(self.heap[0][0])
        if self.splitting or (len(self.heap) < HEAP_MAX and any(b.pending for b in self.open)):
            when.append(now + 1)
        for b in self.open:
            if not b.pending and not b.inflight:
                when.append(b.end)
        return max(min(when), now + 1) if when else None

    # -- lifetime ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.count

    def memory_entries(self) -> int:
        """What memory holds per message or bucket: read-ahead heap entries plus buckets."""
        return len(self.heap) + len(self.buckets)

    def destroy(self) -> None:
        """The exchange is deleted: its delayed messages go, on disk too."""
        for b in list(self.buckets.values()):
            b.gone = True
            b.log.destroy()
        self.buckets.clear()
        self.actions.clear()
        self.splitting.clear()
        self.open.clear()
        self.heap.clear()
        self.heap_bytes = self.count = 0
        shutil.rmtree(self.dir, ignore_errors=True)


class MemoryDelayed:
    """Delayed messages of a broker without a data directory: a heap in memory."""

    def __init__(self) -> None:
        self.heap: list[tuple[int, int, Message]] = []
        self.seq = itertools.count()

    def add(self, msg: Message, due: int, now: int) -> int | None:
        heapq.heappush(self.heap, (due, next(self.seq), msg))
        return due if self.heap[0][2] is msg else None

    def take(self, now: int) -> list[Message]:
        heap = self.heap
        out: list[Message] = []
        while heap and heap[0][0] <= now and len(out) < BATCH:
            out.append(heapq.heappop(heap)[2])
        return out

    def settle(self, wait_sync: bool) -> None:
        pass

    def next_wake(self, now: int) -> int | None:
        return max(self.heap[0][0], now + 1) if self.heap else None

    def __len__(self) -> int:
        return len(self.heap)

    def memory_entries(self) -> int:
        return len(self.heap)

    def destroy(self) -> None:
        self.heap.clear()


def remove_orphans(store: MessageStore) -> None:
    """At startup, after the durable exchanges are back: remove the directories of delayed
    exchanges that hold no live bucket (deleted exchanges, emptied ones)."""
    root = store.data_dir / "delayed"
    if not root.is_dir():
        return
    kept = {d.parent for d in store.logs}
    for d in root.iterdir():
        if d not in kept:
            shutil.rmtree(d, ignore_errors=True)


def _start(b: Bucket) -> int:
    return b.start


def _due_of(payload: bytes) -> int:
    return int.from_bytes(payload[8:16], "little")
