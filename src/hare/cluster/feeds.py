"""Feeds (`forwarding`): a node's consumers of a queue held by another node, and its
basic.gets of it, served from messages that node sends over the link.

**Consumers.** A node with consumers of a quorum queue it does not lead subscribes one *feed* at
the leader: there a consumer like any other (prefetch CREDIT) whose deliveries go over the link
into the queue's store on A, from which A's own consumers are served as from a local queue
(prefetch, priorities, redelivered flags); their acks, rejects and requeues of the last time go
back to the leader. A requeue on A keeps the message on A for A's other consumers. When the feed
ends (A's consumers gone, the link broken, the leader changed) the leader requeues what the
feed held and had not settled; A subscribes again at the current leader while it has consumers.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..broker.message import Message
from .forward_frames import (
    ACKED,
    REQUEUED,
    settle_frame,
)
from .replicated_store import InnerStore, fresh_store

if TYPE_CHECKING:
    from .forward_links import OutLink



class FeedStore(InnerStore):
    """The store of a quorum queue on a node that does not lead it, once it has had consumers:
    what the leader delivered to its feeds. ``remote`` maps a message's position here to its
    feed and its seq at the leader (how it is settled there); positions only grow, so a late
    ack of a message of an ended feed is recognised and dropped (the leader took it back)."""

    def __init__(self, previous: Any) -> None:
        super().__init__(fresh_store(previous))  # (positions go on from the store it replaces)
        self.remote: dict[int, tuple[Feed, int]] = {}
        self.delivered_here: set[int] = set()  # popped by our consumers, not yet settled
        self.redelivered: set[int] = set()

    def arrived(self, feed: Feed, msg: Message, seq: int, redelivered: bool) -> None:
        position = self.inner.next_pos
        self.inner.push(msg)
        self.remote[position] = (feed, seq)
        if redelivered:
            self.redelivered.add(position)

    def got(self, feed: Feed | None, seq: int) -> int:
        """A message a basic.get through this node got at the leader (under ``feed``, or acked
        there already: None): a position here, not in the queue (the get delivered it)."""
        position = self.inner.next_pos
        self.inner.next_pos = position + 1
        if feed is not None:
            self.remote[position] = (feed, seq)
            self.delivered_here.add(position)
        return position << 1

    def push(self, msg: Message, expires_at: int = 0) -> None:
        self.inner.push(msg, expires_at)  # (not reached: a publish here is forwarded)

    def pop(self) -> tuple[Message, int, bool, int] | None:
        entry = self.inner.pop()
        if entry is None:
            return None
        msg, seq, redelivered, exp = entry
        position = seq >> 1
        self.delivered_here.add(position)
        if position in self.redelivered:
            self.redelivered.discard(position)
            redelivered = True
        return msg, seq, redelivered, exp

    def drop_head(self) -> bool:
        return False  # (limits are the leader's)

    def requeue(self, seq: int, msg: Message, expires_at: int = 0) -> None:
        position = seq >> 1
        self.delivered_here.discard(position)
        entry = self.remote.get(position)
        if entry is not None and (not entry[0].active or not entry[0].q.consumer_count):
            self.settle(seq, REQUEUED)  # no consumer of ours is left for it: back to the leader
            return
        self.inner.requeue(seq, msg, expires_at)  # kept here, for our other consumers

    def settle(self, seq: int, how: int) -> None:
        position = seq >> 1
        self.delivered_here.discard(position)
        entry = self.remote.pop(position, None)
        if entry is not None:
            entry[0].settle(how, entry[1])

    def ack(self, seq: int, msg: Message) -> None:
        self.settle(seq, ACKED)

    def purge(self) -> int:
        """The messages the leader fed here and no consumer of ours has: gone (acked there;
        the leader purges its own, ClusterQueue.ask)."""
        n = self.inner.purge()
        ready = [p for p in self.remote if p not in self.delivered_here]
        self.redelivered.difference_update(ready)
        for p in ready:
            feed, seq = self.remote.pop(p)
            feed.settle(ACKED, seq)
        return n

    def drop(self, feed: Feed, requeue: bool) -> None:
        """``feed`` ended: its messages not given to our consumers leave (taken back by the
        leader, or given back: ``requeue``); its others are dropped from ``remote``."""
        ready = [p for p, (f, _seq) in self.remote.items() if f is feed and p not in self.delivered_here]
        if ready and len(ready) == len(self.inner):
            self.inner.purge()
        elif ready:  # (messages of another feed wait too: keep the store, drop these by hand)
            kept = [(m, s, r, e) for m, s, r, e in iter(self.inner.pop, None) if (s >> 1) not in ready]
            for m, s, _r, e in kept:
                self.inner.requeue(s, m, e)
        if requeue and ready:
            feed.settle_many(REQUEUED, [self.remote[p][1] for p in ready])
        for p in [p for p, (f, _seq) in self.remote.items() if f is feed and (p in ready or not requeue)]:
            del self.remote[p]


class Feed:
    """One subscription of this node's consumers of a queue at its leader."""

    def __init__(self, link: OutLink, feed_id: int, q: Any, store: FeedStore) -> None:
        self.link, self.id, self.q, self.store = link, feed_id, q, store
        self.pending: dict[int, list[int]] = {}
        self.flush_scheduled = False
        self.active = True

    def delivered(self, seq: int, redelivered: bool, msg: Message) -> None:
        self.store.arrived(self, msg, seq, redelivered)
        self.q.dispatch()

    def settle(self, how: int, seq: int) -> None:
        self.pending.setdefault(how, []).append(seq)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def settle_many(self, how: int, seqs: list[int]) -> None:
        for seq in seqs:
            self.settle(how, seq)

    def flush(self) -> None:
        self.flush_scheduled = False
        pending, self.pending = self.pending, {}
        for how, seqs in pending.items():
            if self.link.writer is not None or self.link.task is not None:
                self.link.send(settle_frame(self.id, how, seqs))

    def ended(self) -> None:
        """The leader feeds us no more (it took back what it had not got settled)."""
        self.active = False
        self.store.drop(self, requeue=False)
        self.link.forwarding.feed_ended(self)
