"""A priority queue's ready messages (``x-max-priority``): one paged store per priority level.

A message goes to the level of its ``priority`` property (0 when absent, capped at the queue's
maximum, as RabbitMQ does); the highest non-empty level is served first, FIFO within a level.
Each level is a ``PagedQueueStore`` of its own, created when its first message arrives, with
its own log (named by ``level_name``) and a share of the memory window, so memory stays bounded
whatever the number of levels. A requeued message goes back to its place within its level.

``seq = level_seq << 8 | level``: acks and requeues find their level from the low byte.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..amqp.properties import priority as _priority
from .base import pop_and_drop
from .paged import WINDOW_BYTES, WINDOW_MESSAGES, Expiry, MessageFactory, PagedQueueStore

if TYPE_CHECKING:
    from ..broker.message import Message
    from .queue_log import QueueLog

MAX_PRIORITY = 255
LEVEL_BITS = 8
LEVEL_MASK = (1 << LEVEL_BITS) - 1
# the smallest window a level gets, however many levels share the queue's window
MIN_LEVEL_WINDOW = 64
MIN_LEVEL_WINDOW_BYTES = 128 << 10


def level_name(queue_name: str, level: int) -> str:
    """The name under which level ``level`` of priority queue ``queue_name`` keeps its log (a
    NUL cannot end up there by accident; a queue's own log is under its plain name)."""
    return f"{queue_name}\x00priority {level}"


def level_windows(max_priority: int) -> tuple[int, int]:
    """(messages, bytes) of the memory window of each level: the queue's window shared out."""
    n = max_priority + 1
    return max(WINDOW_MESSAGES // n, MIN_LEVEL_WINDOW), max(WINDOW_BYTES // n, MIN_LEVEL_WINDOW_BYTES)


class PriorityQueueStore:
    __slots__ = ("max_priority", "levels", "order", "pos", "first", "count", "open_log", "make_message",
                 "durable", "window", "window_bytes", "_expiry")

    def __init__(self, max_priority: int, open_log: Callable[[int], QueueLog] | None,
                 make_message: MessageFactory | None = None, durable: bool = False,
                 logs: dict[int, QueueLog] | None = None) -> None:
        """``open_log(level)`` opens a new log for a level (None: memory only); ``logs`` are the
        recovered logs of a durable queue's levels."""
        self.max_priority = max_priority = min(max(max_priority, 0), MAX_PRIORITY)
        self.levels: list[PagedQueueStore | None] = [None] * (max_priority + 1)  # by level
        self.order: list[tuple[int, PagedQueueStore]] = []  # the created levels, highest first
        self.pos = [0] * (max_priority + 1)  # level -> its index in order
        self.first = 0  # the levels in order before this index are empty: pop starts here
        self.count = 0  # ready messages, all levels
        self.open_log = open_log
        self.make_message = make_message
        self.durable = durable
        self.window, self.window_bytes = level_windows(max_priority)
        self._expiry: Expiry | None = None
        for level, log in sorted((logs or {}).items()):
            if 0 <= level <= max_priority:
                self._level(level, log)
        self.count = sum(len(store) for _, store in self.order)

    def _level(self, level: int, log: QueueLog | None = None) -> PagedQueueStore:
        open_log = self.open_log
        opener = None if open_log is None else (lambda: open_log(level))
        store = PagedQueueStore(opener, self.make_message, self.durable, log=log, window=self.window,
                                window_bytes=self.window_bytes)
        store.expiry = self._expiry
        self.levels[level] = store
        order = self.order
        order.append((level, store))
        order.sort(key=lambda e: -e[0])
        for i, (lvl, _) in enumerate(order):
            self.pos[lvl] = i
        self.first = 0
        return store

    def _recount(self) -> None:
        """A level's log lost a corrupt tail: its count was wrong, so is ours."""
        self.count = sum(len(store) for _, store in self.order)

    @property
    def expiry(self) -> Expiry | None:
        return self._expiry

    @expiry.setter
    def expiry(self, fn: Expiry | None) -> None:
        self._expiry = fn
        for _, store in self.order:
            store.expiry = fn

    @property
    def ready_bytes(self) -> int:
        return sum(store.ready_bytes for _, store in self.order)

    def push(self, msg: Message, expires_at: int = 0) -> None:
        raw = msg.properties_raw
        level = 0
        flags = raw[0]
        if flags & 0x08:  # a priority property
            # usually nothing but delivery-mode precedes it (content type, encoding, headers do)
            level = raw[3 if flags & 0x10 else 2] if not flags & 0xE0 else _priority(raw)
            if level > self.max_priority:
                level = self.max_priority
        store = self.levels[level]
        if store is None:
            store = self._level(level)
        store.push(msg, expires_at)
        self.count += 1
        i = self.pos[level]
        if i < self.first:
            self.first = i

    def pop(self) -> tuple[Message, int, bool, int] | None:
        if not self.count:
            return None
        order = self.order
        i = self.first
        n = len(order)
        while i < n:
            level, store = order[i]
            if len(store):
                entry = store.pop()
                if entry is not None:
                    self.first = i
                    self.count -= 1
                    msg, seq, redelivered, exp = entry
                    return msg, seq << LEVEL_BITS | level, redelivered, exp
                self._recount()
            i += 1
        self.first = n
        return None

    def drop_head(self) -> bool:
        return pop_and_drop(self)

    def head_expiry(self) -> int:
        if not self.count:
            return 0
        order = self.order
        i = self.first
        n = len(order)
        while i < n:
            store = order[i][1]
            if len(store):
                exp = store.head_expiry()
                if exp or len(store):
                    self.first = i
                    return exp
                self._recount()
            i += 1
        self.first = n
        return 0

    def requeue(self, seq: int, msg: Message, expires_at: int = 0) -> None:
        level = seq & LEVEL_MASK
        store = self.levels[level]
        assert store is not None
        store.requeue(seq >> LEVEL_BITS, msg, expires_at)
        self.count += 1
        i = self.pos[level]
        if i < self.first:
            self.first = i

    def ack(self, seq: int, msg: Message) -> None:
        store = self.levels[seq & LEVEL_MASK]
        if store is not None:
            store.ack(seq >> LEVEL_BITS, msg)

    def purge(self) -> int:
        n = sum(store.purge() for _, store in self.order)
        self.count = 0
        self.first = len(self.order)
        return n

    def close(self) -> None:
        for _, store in self.order:
            store.close()

    def destroy(self) -> None:
        for _, store in self.order:
            store.destroy()
        self.order = []
        self.levels = [None] * (self.max_priority + 1)
        self.count = self.first = 0

    def __len__(self) -> int:
        return self.count
