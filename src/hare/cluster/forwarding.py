"""Publishing and consuming through any node: a message for a quorum queue led by another node
goes there over the node-to-node link, and its publisher's confirm comes back from there; a
consumer on a node that does not lead the queue is fed from the leader over the same link.

One link per pair of nodes, from the node a client is connected to (A) to the node that holds
the queue (B). The frames are in `forward_frames`, the two ends of a link in `forward_links`, the feeds of
consumers and gets in `feeds`; this module is the node's manager of its links.

**Questions.** basic.get, the counts of queue.declare and queue.purge through A are answered
by B (``ClusterQueue.ask``: the command waits as for a metadata change, and runs again with the
answer). A message B gives to a get with acks stays B's, unacked under a *get feed* of A's (a
feed id with no consumer behind it at B); on A it takes a position in the queue's store there,
through which its ack, reject or requeue goes back to B, as a fed message's does. A link that
breaks answers what it had asked with "not held" (get-empty, A's own counts); B requeues what
A had got and not settled, as it does for feeds.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import TYPE_CHECKING, Any

from ..broker.message import Message
from ..broker.queue import GET, REJECTED_PUBLISH, Asked
from .feeds import Feed, FeedStore
from .forward_frames import (
    CREDIT,
    F_CANCEL,
    F_CONSUME,
    MAX_HOPS,
    pack_name,
)
from .forward_links import InLink, OutLink
from .replication import FrameReader, frame

if TYPE_CHECKING:
    from .replicas import Replicas



class Forwarding:
    """This node's forwarding links, out to each other node and in from them."""

    def __init__(self, replicas: Replicas) -> None:
        self.replicas = replicas
        self.me = replicas.me
        self.links: dict[str, OutLink] = {}
        self.hops = 0  # how many times the message being published here was forwarded already
        self.feeds: dict[int, Feed] = {}  # by id(queue): the feed of our consumers of it
        self.get_feeds: dict[int, Feed] = {}  # by id(queue): the feed our basic.gets of it hold under
        self.next_feed = 0

    # -- consumers through this node --------------------------------------------------------------

    def consumers_changed(self, replica: Any, q: Any) -> None:
        """``q`` (led elsewhere) got its first consumer, or lost its last."""
        feed = self.feeds.get(id(q))
        if q.consumer_count and feed is None:
            self.subscribe(replica, q)
        elif not q.consumer_count and feed is not None:
            self.unsubscribe(feed)

    def feed_store(self, q: Any) -> FeedStore:
        """The store of ``q`` here, a FeedStore (made one on first need)."""
        store = q.store if q.counter is None else q.counter.inner
        if not isinstance(store, FeedStore):
            store = FeedStore(store)
            if q.counter is not None:
                q.counter.inner = store
            else:
                q.store = store
        return store

    def subscribe(self, replica: Any, q: Any) -> None:
        target = replica.target()
        if target is None or target == self.me:
            return  # (no leader yet: the next tick tries again)
        store = self.feed_store(q)
        link = self.link(target)
        self.next_feed += 1
        feed = Feed(link, self.next_feed, q, store)
        link.feeds[feed.id] = feed
        self.feeds[id(q)] = feed
        link.send(frame(F_CONSUME, struct.pack(">QI", feed.id, CREDIT) + pack_name(q.vhost_name)
                        + pack_name(q.name)))

    def unsubscribe(self, feed: Feed) -> None:
        self.feeds.pop(id(feed.q), None)
        feed.link.feeds.pop(feed.id, None)
        feed.store.drop(feed, requeue=True)
        feed.flush()
        feed.link.send(frame(F_CANCEL, struct.pack(">Q", feed.id)))
        feed.active = False

    def feed_ended(self, feed: Feed) -> None:
        if self.feeds.get(id(feed.q)) is feed:
            del self.feeds[id(feed.q)]

    def ensure(self, replica: Any) -> None:
        """(The replicas' tick.) Our consumers of a queue we do not lead are fed by its leader."""
        q = replica.queue()
        if q is None or replica.leading:
            return
        feed = self.feeds.get(id(q))
        target = replica.target()
        if feed is not None and feed.link.node != target:
            self.unsubscribe(feed)  # the leader changed
            feed = None
        if feed is None and q.consumer_count:
            self.subscribe(replica, q)

    # -- questions through this node --------------------------------------------------------------

    def ask(self, target: str | None, q: Any, op: int) -> Asked | None:
        """Ask ``target`` (the node holding ``q``'s messages) ``op``; None: no node to ask."""
        if target is None or target == self.me:
            return None
        link = self.link(target)
        feed = None
        if op == GET:  # what it gets stays unacked there, under our get feed of the queue
            feed = self.get_feeds.get(id(q))
            store = self.feed_store(q)
            if (feed is None or feed.link is not link or link.feeds.get(feed.id) is not feed
                    or feed.store is not store):
                self.next_feed += 1
                feed = Feed(link, self.next_feed, q, store)
                feed.active = False  # (no consumer behind it: a requeue goes back at once)
                link.feeds[feed.id] = feed
                self.get_feeds[id(q)] = feed
        for held in link.feeds.values():
            if held.pending:  # settled before asked: what an ack, reject or requeue did counts
                held.flush()
        asked = Asked(q, op)
        link.ask(asked, feed)
        return asked

    def forward(self, target: str | None, vhost: str, q: Any, msg: Message) -> tuple[int, OutLink | None]:
        """Send ``msg`` for ``q`` to ``target``; (what Queue.publish answers, the link)."""
        if target is None or target == self.me or self.hops >= MAX_HOPS:
            return REJECTED_PUBLISH, None
        link = self.link(target)
        return link.forward(vhost, q, msg, self.hops + 1), link

    def address(self, node: str) -> str | None:
        members = self.replicas.node.members
        record = members.alive.get(node) or members.nodes.get(node)
        return None if record is None else record.cluster

    def link(self, node: str) -> OutLink:
        link = self.links.get(node)
        if link is None:
            link = self.links[node] = OutLink(self, node)
        return link

    def check_links(self) -> None:
        now = time.monotonic()
        for link in self.links.values():
            link.check(now)

    def stop(self) -> None:
        for link in self.links.values():
            if link.task is not None:
                link.task.cancel()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    frames: FrameReader, rest: list[tuple[int, bytes]]) -> None:
        inlink = InLink(self, writer)
        try:
            if rest:
                inlink.handle(rest)
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    return
                inlink.handle(frames.feed(data))
        finally:
            inlink.closed()


__all__ = ["Forwarding", "OutLink", "InLink", "Feed", "FeedStore"]
