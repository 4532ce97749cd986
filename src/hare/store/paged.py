"""A queue's ready messages: an in-memory window at the head, the rest in the queue's log on disk.

While the backlog is small every message is in memory (``mem``), and only persistent messages
of a durable queue are also written to the log. Once the window is full, new messages go to the
log only (transient ones too) and are paged back in, in order, as consumers drain the window:
memory stays bounded whatever the backlog. Without a log (a broker with no data directory) the
window is unbounded and nothing is written.

Each entry is ``(seq, message, expires_at)``. ``seq = position << 1 | in_log``: ``position``
orders the queue (requeued messages return by it), the low bit says whether an ack must be
written to the log. ``expires_at`` is the wall-clock millisecond after which the message is dead
(0: never); the queue computes it (``expiry``) from its TTL and the message's expiration.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .base import pop_and_drop
from .segment import FLAG_PERSISTENT, decode_message

if TYPE_CHECKING:
    from ..broker.message import Message
    from .queue_log import QueueLog

# builds a message read back from the log: (exchange, routing_key, properties, body, route_bytes,
# persistent); the broker passes its Message class (the store sits below the broker)
MessageFactory = Callable[[str, str, bytes, bytes, bytes, bool], "Message"]
# (message, enqueued_ms) -> expires_at, for messages read back from the log
Expiry = Callable[["Message", int], int]

WINDOW_MESSAGES = 16384
WINDOW_BYTES = 16 << 20

Entry = tuple[int, "Message", int]

HEAVY_SYNC = 2  # Message.needs_sync of a message in a heavy log (its confirm waits for both lanes)


class PagedQueueStore:
    __slots__ = ("mem", "mem_bytes", "ready_bytes", "requeued", "disk", "log", "open_log", "make_message",
                 "durable", "next_pos", "window", "window_bytes", "expiry")

    def __init__(self, open_log: Callable[[], QueueLog] | None, make_message: MessageFactory | None = None,
                 durable: bool = False, log: QueueLog | None = None, window: int = WINDOW_MESSAGES,
                 window_bytes: int = WINDOW_BYTES) -> None:
        self.mem: deque[Entry] = deque()  # the head of the queue, in memory
        self.mem_bytes = 0  # what the window holds: the messages' Message.size (body, properties, overhead)
        self.ready_bytes = 0  # body bytes of every ready message (memory, disk, requeued)
        self.requeued: list[Entry] = []  # heap by seq: back at their old place
        self.disk = 0  # ready messages in the log only, after those in mem
        self.log = log  # opened on first need
        self.open_log = open_log  # None: memory only
        self.make_message = make_message
        self.durable = durable and open_log is not None
        self.next_pos = 0
        self.window = window if open_log is not None else 1 << 62
        self.window_bytes = window_bytes if open_log is not None else 1 << 62
        self.expiry: Expiry | None = None
        if log is not None:
            self.disk = log.live
            self.ready_bytes = log.live_bytes
            last = max((s.last for s in log.segments), default=-1)
            self.next_pos = max(last, log.delivered) + 1

    def _log(self) -> QueueLog:
        log = self.log
        if log is None:
            assert self.open_log is not None
            log = self.log = self.open_log()
        return log

    def push(self, msg: Message, expires_at: int = 0) -> None:
        pos = self.next_pos
        self.next_pos = pos + 1
        size = len(msg.body)
        self.ready_bytes += size
        mem = self.mem
        if not self.disk and len(mem) < self.window and self.mem_bytes < self.window_bytes:
            self.mem_bytes += msg.size
            if not self.durable or not msg.persistent:  # the common case: memory only
                mem.append((pos << 1, msg, expires_at))
                return
            log = self.log or self._log()
            log.append(pos, time.time_ns() // 1_000_000, FLAG_PERSISTENT, msg.route_bytes,
                       msg.properties_raw, msg.body)
            # persistent, durable queue: in memory and in the log; HEAVY_SYNC: the confirm waits
            # for the store's heavy lane too (see MessageStore.after_sync)
            msg.needs_sync = HEAVY_SYNC if log.heavy else msg.needs_sync or True
            log.skip_to_tail()
            mem.append((pos << 1 | 1, msg, expires_at))
        else:
            persistent = self.durable and msg.persistent
            log = self.log or self._log()
            log.append(pos, time.time_ns() // 1_000_000, FLAG_PERSISTENT if persistent else 0,
                       msg.route_bytes, msg.properties_raw, msg.body)
            if persistent:
                msg.needs_sync = HEAVY_SYNC if log.heavy else msg.needs_sync or True
            self.disk += 1

    def pop(self) -> tuple[Message, int, bool, int] | None:
        """The head: (message, seq, redelivered, expires_at), or None when empty."""
        if self.requeued:
            seq, msg, exp = heapq.heappop(self.requeued)
            self.ready_bytes -= len(msg.body)
            return msg, seq, True, exp
        mem = self.mem
        if not mem:
            if not self.disk or not self._page_in():
                return None
        seq, msg, exp = mem.popleft()
        size = len(msg.body)
        self.mem_bytes -= msg.size
        self.ready_bytes -= size
        if seq & 1:
            log = self.log
            assert log is not None
            position = seq >> 1
            log.mark_delivered(position)
            return msg, seq, position <= log.redelivered_upto, exp
        return msg, seq, False, exp

    def drop_head(self) -> bool:
        if self.disk and not self.mem and not self.requeued:
            size = self._log().drop_next()  # (its body is not read)
            if size is not None:
                self.disk -= 1
                self.ready_bytes -= size
                return True
        return pop_and_drop(self)

    def head_expiry(self) -> int:
        """expires_at of the message pop() would return (0: none, or no expiry)."""
        if self.requeued:
            return self.requeued[0][2]
        if not self.mem and (not self.disk or not self._page_in()):
            return 0
        return self.mem[0][2]

    def _page_in(self) -> int:
        """Read the next messages of the log into the window; return how many."""
        log = self._log()
        records = log.read(max(1, self.window // 2), max(1, self.window_bytes // 2))
        if not records:
            self.disk = 0  # the log has nothing more (it lost a corrupt tail): trust it
            self.ready_bytes = sum(len(e[1].body) for e in self.mem) + sum(
                len(e[1].body) for e in self.requeued)
            return 0
        self.disk = max(0, self.disk - len(records))
        mem = self.mem
        make = self.make_message
        assert make is not None
        expiry = self.expiry
        size = 0
        for position, payload in records:
            _pos, enqueued_ms, flags, route, exchange, routing_key, props, body = decode_message(payload)
            msg = make(exchange, routing_key, props, body, route, bool(flags & FLAG_PERSISTENT))
            mem.append((position << 1 | 1, msg, expiry(msg, enqueued_ms) if expiry is not None else 0))
            size += msg.size
        self.mem_bytes += size
        return len(records)

    def requeue(self, seq: int, msg: Message, expires_at: int = 0) -> None:
        heapq.heappush(self.requeued, (seq, msg, expires_at))
        self.ready_bytes += len(msg.body)

    def ack(self, seq: int, msg: Message) -> None:
        if seq & 1:
            log = self.log
            assert log is not None
            log.ack(seq >> 1)

    def purge(self) -> int:
        """Empty the queue at once; the acks its messages owe the log are written in slices
        (store.later), so that purging millions does not hold the event loop."""
        n = len(self)
        log = self.log
        mem, requeued = self.mem, self.requeued
        self.mem = deque()
        self.requeued = []
        if log is not None:
            if mem or requeued:
                log.store.later(_ack_entries(log, mem, requeued), f"purge of queue log {log.dir}")
            if self.disk:
                log.drop_unread()
        self.mem_bytes = 0
        self.ready_bytes = 0
        self.disk = 0
        return n

    def close(self) -> None:
        if self.log is not None:
            self.log.close()

    def destroy(self) -> None:
        self.mem.clear()
        self.requeued.clear()
        self.mem_bytes = self.ready_bytes = self.disk = 0
        if self.log is not None:
            self.log.destroy()
            self.log = None

    def __len__(self) -> int:
        return len(self.mem) + len(self.requeued) + self.disk


def _ack_entries(log: QueueLog, mem: deque[Entry], requeued: list[Entry]) -> Iterator[None]:
    """Ack the purged entries that are in the log, a slice at a time (and free them so)."""
    while mem and not log.closed:
        for _ in range(min(2000, len(mem))):
            seq = mem.popleft()[0]
            if seq & 1:
                log.ack(seq >> 1)
        yield
    while requeued and not log.closed:
        chunk = requeued[-2000:]
        del requeued[-2000:]
        for seq, _, _ in chunk:
            if seq & 1:
                log.ack(seq >> 1)
        yield
