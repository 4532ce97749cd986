"""The store of a replicated queue on its leader: the queue's own store (paged, in its log),
telling the queue's `LeaderLog` what changes, so the followers change alike.

It sits under the delivery counter (``broker/delivery_limit.py``) when there is one. A message's
position (``seq >> 1`` in the paged store) names it to the followers. Messages a previous leader
had delivered are flagged redelivered when they are delivered again (``redeliver``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..store.paged import PagedQueueStore

if TYPE_CHECKING:
    from ..broker.message import Message
    from .replication import LeaderLog


class InnerStore:
    """A store over a queue's in-memory paged store: what the queue reads and sets on its store
    is passed through (the cluster's stores add to push, pop, ack and the rest)."""

    def __init__(self, inner: PagedQueueStore) -> None:
        self.inner = inner

    @property
    def ready_bytes(self) -> int:
        return self.inner.ready_bytes

    @property
    def expiry(self) -> Any:
        return self.inner.expiry

    @expiry.setter
    def expiry(self, fn: Any) -> None:
        self.inner.expiry = fn

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def head_expiry(self) -> int:
        return self.inner.head_expiry()

    def close(self) -> None:
        self.inner.close()

    def destroy(self) -> None:
        self.inner.destroy()


class ReplicatedStore(InnerStore):
    def __init__(self, inner: PagedQueueStore, log: LeaderLog) -> None:
        super().__init__(inner)
        self.log = log
        self.inflight: set[int] = set()  # positions delivered and not yet acked or requeued
        self.redeliver: set[int] = set()  # positions delivered by an earlier leader

    def push(self, msg: Message, expires_at: int = 0) -> None:
        position = self.inner.next_pos
        self.inner.push(msg, expires_at)
        self.log.enqueued(position, msg)

    def pop(self) -> tuple[Message, int, bool, int] | None:
        if self.log.lease_lost():  # a leader that may have lost its lease delivers nothing
            return None
        entry = self.inner.pop()
        if entry is None:
            return None
        msg, seq, redelivered, exp = entry
        position = seq >> 1
        self.inflight.add(position)
        self.log.delivered(position)
        if self.redeliver and position in self.redeliver:
            self.redeliver.discard(position)
            redelivered = True
        return msg, seq, redelivered, exp

    def drop_head(self) -> bool:
        entry = self.inner.pop()
        if entry is None:
            return False
        msg, seq, _redelivered, _exp = entry
        self.inner.ack(seq, msg)
        self.log.settle(seq >> 1)
        return True

    def requeue(self, seq: int, msg: Message, expires_at: int = 0) -> None:
        self.inflight.discard(seq >> 1)
        self.inner.requeue(seq, msg, expires_at)

    def ack(self, seq: int, msg: Message) -> None:
        position = seq >> 1
        self.inflight.discard(position)
        self.inner.ack(seq, msg)
        self.log.settle(position)

    def purge(self) -> int:
        count = self.inner.purge()
        inflight = self.inflight
        gone = [p for p in self.log.state.live if p not in inflight]
        self.redeliver.difference_update(gone)
        self.log.purged(gone)
        return count


def fresh_store(previous: Any) -> PagedQueueStore:
    """An empty in-memory store to take the place of ``previous`` on a queue: its positions go
    on from the previous store's, so a delivery a channel still holds from before (its seq) can
    never name a message of the new store."""
    store = PagedQueueStore(None)
    inner = previous
    while inner is not None and not hasattr(inner, "next_pos"):
        inner = getattr(inner, "inner", None)
    if inner is not None:
        store.next_pos = inner.next_pos
    store.expiry = previous.expiry
    return store


__all__ = ["InnerStore", "ReplicatedStore", "fresh_store"]
