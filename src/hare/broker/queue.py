"""A queue: stores messages (through its QueueStore) and dispatches them to ready consumers.

Consumers are kept in groups of equal priority, highest first (``x-priority``); within a group
delivery goes round-robin. A consumer is ready when its channel can take output and its prefetch
window has room; dispatch stops when no consumer is ready and resumes when one becomes ready
(ack, qos change, channel flow, the connection's output draining).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ..store.base import QueueStore
from ..store.memory import MemoryQueueStore
from .consumer import Consumer
from .message import Message

# Flow control: while a queue that has consumers holds more than FLOW_HIGH ready messages, the
# connections publishing into it stop being read until it is back under FLOW_LOW (or a short
# timeout passes), so publishers go at the pace of consumers instead of growing the backlog.
# A queue without consumers is never a reason to slow publishers: it is absorbing a peak.
FLOW_HIGH = 8_000  # below a queue's memory window (store/paged.py), so a queue that keeps up stays in memory
FLOW_LOW = FLOW_HIGH // 2


class Queue:
    __slots__ = ("name", "vhost_name", "durable", "exclusive", "owner", "auto_delete", "arguments",
                 "store", "groups", "consumer_count", "exclusive_consumer", "deleted", "had_consumer",
                 "flow_waiters")

    def __init__(self, name: str, vhost_name: str = "/", durable: bool = False,
                 exclusive: bool = False, owner: Any = None, auto_delete: bool = False,
                 arguments: dict[str, Any] | None = None, store: QueueStore | None = None) -> None:
        self.name = name
        self.vhost_name = vhost_name
        self.durable = durable
        self.exclusive = exclusive
        self.owner = owner  # the connection owning an exclusive queue
        self.auto_delete = auto_delete
        self.arguments = arguments or {}
        self.store: QueueStore = store if store is not None else MemoryQueueStore()
        # consumer groups by priority, highest first: [(priority, deque of consumers)]
        self.groups: list[tuple[int, deque[Consumer]]] = []
        self.consumer_count = 0
        self.exclusive_consumer: Consumer | None = None
        self.deleted = False
        self.had_consumer = False
        self.flow_waiters: dict[Any, None] = {}  # publishers paused by this queue's backlog

    # -- messages -------------------------------------------------------------------------------

    @property
    def message_count(self) -> int:
        return len(self.store)

    def publish(self, msg: Message) -> bool:
        """Enqueue and dispatch; True when the publisher should be slowed (see FLOW_HIGH)."""
        self.store.push(msg)
        if self.consumer_count:
            self.dispatch()
            return len(self.store) > FLOW_HIGH
        return False

    def release_flow(self) -> None:
        """Let the publishers paused by this queue go on."""
        waiters = self.flow_waiters
        self.flow_waiters = {}
        for conn in waiters:
            conn.flow_resume(self)

    def get(self) -> tuple[Message, int, bool] | None:
        return self.store.pop()

    def requeue(self, seq: int, msg: Message) -> None:
        """Put one delivered message back; the caller calls dispatch() after a batch."""
        if not self.deleted:
            self.store.requeue(seq, msg)

    def ack(self, seq: int, msg: Message) -> None:
        if not self.deleted:
            self.store.ack(seq, msg)

    def purge(self) -> int:
        return self.store.purge()

    # -- consumers ------------------------------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        for priority, group in self.groups:
            if priority == consumer.priority:
                group.append(consumer)
                break
        else:
            self.groups.append((consumer.priority, deque([consumer])))
            self.groups.sort(key=lambda g: -g[0])
        self.consumer_count += 1
        self.had_consumer = True
        if consumer.exclusive:
            self.exclusive_consumer = consumer

    def remove_consumer(self, consumer: Consumer) -> bool:
        for i, (_, group) in enumerate(self.groups):
            if consumer in group:
                group.remove(consumer)
                if not group:
                    del self.groups[i]
                self.consumer_count -= 1
                if self.exclusive_consumer is consumer:
                    self.exclusive_consumer = None
                if not self.consumer_count and self.flow_waiters:
                    self.release_flow()
                return True
        return False

    def consumers(self) -> list[Consumer]:
        return [c for _, group in self.groups for c in group]

    def _next_ready(self) -> Consumer | None:
        for _, group in self.groups:
            for _ in range(len(group)):
                c = group[0]
                group.rotate(-1)
                if c.ready():
                    return c
        return None

    def dispatch(self) -> None:
        """Deliver ready messages to ready consumers until either runs out."""
        store = self.store
        groups = self.groups
        if len(groups) == 1 and len(groups[0][1]) == 1:
            c = groups[0][1][0]
            deliver = c.target.deliver
            while c.ready():
                entry = store.pop()
                if entry is None:
                    break
                deliver(c, entry[0], entry[1], entry[2])
        else:
            while len(store):
                c = self._next_ready()
                if c is None:
                    break
                entry = store.pop()
                if entry is None:
                    break
                c.target.deliver(c, entry[0], entry[1], entry[2])
        if self.flow_waiters and len(store) <= FLOW_LOW:
            self.release_flow()

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} ready={len(self.store)} consumers={self.consumer_count}>"
