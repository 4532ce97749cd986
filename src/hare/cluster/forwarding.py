"""Publishing and consuming through any node: a message for a quorum queue led by another node
goes there over the node-to-node link, and its publisher's confirm comes back from there; a
consumer on a node that does not lead the queue is fed from the leader over the same link.

One link per pair of nodes, from the node the publisher is connected to (A) to the node that
holds the queue (B), on B's node-to-node listener. Frames (as `replication`'s):

    F_HELLO      A -> B   JSON {"node"}
    F_PUBLISH    A -> B   >QB link sequence number, hops; >H vhost, >H queue; the message
    F_CONFIRMED  B -> A   >QB every publish up to this number is confirmed (or, failed: 1, nacked)
    F_CONSUME    A -> B   >QI feed id, credit; >H vhost, >H queue: feed A's consumers of it
    F_CANCEL     A -> B   >Q feed id: A's consumers are gone (what they hold stays theirs)
    F_SETTLE     A -> B   >QB feed id, how (0 ack, 1 requeue, 2 reject); >Q queue seq numbers
    F_DELIVER    B -> A   >QQB feed id, queue seq, redelivered; the message
    F_CANCELLED  B -> A   >Q feed id: B feeds it no more (the queue is gone, or B leads it no more)
    F_PING       A -> B   (empty) A waits for B and has heard nothing for a while
    F_PONG       B -> A   (empty) the answer
    F_ASK        A -> B   >QBQ ask id, what (queue.GET, GET_NO_ACK, COUNT, PURGE), feed id (GET);
                          >H vhost, >H queue
    F_ANSWER     B -> A   >QBII ask id, held here (0: B holds the queue's messages no more),
                          message count, consumer count; a got message: >QB queue seq,
                          redelivered; the message

**A silent link is cut.** A node cut off by the network sends no reset: a link to it would wait
for ever. While A waits for confirms or feeds a consumer over a link and has heard nothing for
PING_AFTER, it pings; after LINK_SILENCE without a word it cuts the link (what it had not
confirmed is nacked, the feeds subscribe again), so a publisher through A to a leader that was
cut off waits about as long as the failover takes, not as long as the partition lasts.

**Consumers.** A node with consumers of a quorum queue it does not lead subscribes one *feed* at
the leader: there a consumer like any other (prefetch CREDIT) whose deliveries go over the link
into the queue's store on A, from which A's own consumers are served as from a local queue
(prefetch, priorities, redelivered flags); their acks, rejects and requeues of the last time go
back to the leader. A requeue on A keeps the message on A for A's other consumers. When the feed
ends (A's consumers gone, the link broken, the leader changed) the leader requeues what the
feed held and had not settled; A subscribes again at the current leader while it has consumers.

B hands each message to the queue as a local publish would, and confirms a batch (one read) as
its own channels do: once the store has synced it (a persistent message in a durable queue) and
its quorum queues' followers have (`ReplicatedConfirms`, in order). On A, the publisher's
channel waits for the link (`OutLink.barrier`) as it waits for a local quorum queue's followers.
A link that breaks fails (nacks) what it had not confirmed: the publisher may publish again. A
message is forwarded at most twice (leadership moving while it travels), then refused.

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
import json
import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..broker.consumer import Consumer
from ..broker.message import Message
from ..broker.queue import COUNT, GET, GET_NO_ACK, PURGE, REJECTED_PUBLISH, REPLICATED, THROTTLE, Asked
from ..session.publishing import ReplicatedConfirms
from .replicated_store import InnerStore, fresh_store
from .replication import FrameReader, ReplicationError, decode_message, frame

if TYPE_CHECKING:
    from .replicas import Replicas

log = logging.getLogger("hare.cluster")

(F_HELLO, F_PUBLISH, F_CONFIRMED, F_CONSUME, F_CANCEL, F_SETTLE, F_DELIVER, F_CANCELLED, F_PING, F_PONG,
 F_ASK, F_ANSWER) = range(20, 32)
ACKED, REQUEUED, REJECTED = 0, 1, 2
CREDIT = 2000  # messages a feed may hold unsettled
MAX_HOPS = 2
OUT_HIGH = 16 << 20  # octets queued on a link past which its publishers are slowed down
PING_AFTER = 1.0  # seconds of silence on a link with something to wait for before a ping
LINK_SILENCE = 2.5  # ... and before the link is cut
_QB = struct.Struct(">QB")
_ASK = struct.Struct(">QBQ")
_ANSWER = struct.Struct(">QBII")


def _name(s: str) -> bytes:
    b = s.encode("utf-8", "surrogateescape")
    return struct.pack(">H", len(b)) + b


def _message(msg: Message) -> tuple[bytes, ...]:
    """A message's parts on the link (decode_message reads them)."""
    route, props, body = msg.route_bytes, msg.properties_raw, msg.body
    return (struct.pack(">H", len(route)), route, struct.pack(">I", len(props)), props,
            struct.pack(">I", len(body)), body)


def publish_frame(seq: int, hops: int, vhost: str, queue: str, msg: Message) -> bytes:
    return frame(F_PUBLISH, b"".join((_QB.pack(seq, hops), _name(vhost), _name(queue), *_message(msg))))


def _names(payload: bytes, pos: int) -> tuple[str, str, int]:
    names = []
    for _ in range(2):
        (n,) = struct.unpack_from(">H", payload, pos)
        names.append(payload[pos + 2:pos + 2 + n].decode("utf-8", "surrogateescape"))
        pos += 2 + n
    return names[0], names[1], pos


def parse_publish(payload: bytes) -> tuple[int, int, str, str, Message]:
    seq, hops = _QB.unpack_from(payload, 0)
    vhost, queue, pos = _names(payload, _QB.size)
    return seq, hops, vhost, queue, decode_message(payload, pos)


_QQB = struct.Struct(">QQB")


def deliver_frame(feed: int, seq: int, redelivered: bool, msg: Message) -> bytes:
    return frame(F_DELIVER, b"".join((_QQB.pack(feed, seq, redelivered), *_message(msg))))


def settle_frame(feed: int, how: int, seqs: list[int]) -> bytes:
    return frame(F_SETTLE, _QB.pack(feed, how) + struct.pack(f">{len(seqs)}Q", *seqs))


class OutLink:
    """A's side of the link to one node: forwards publishes, answers when they are confirmed."""

    def __init__(self, forwarding: Forwarding, node: str) -> None:
        self.forwarding = forwarding
        self.node = node
        self.seq = 0  # the last publish forwarded
        self.confirmed = 0  # ... and confirmed by the other node
        self.outbox: list[bytes] = []
        self.out_bytes = 0
        self.waiters: deque[tuple[int, Callable[[], None], Callable[[], None]]] = deque()
        self.failed_upto = 0  # publishes up to here were nacked by the other node
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.flush_scheduled = False
        self.throttled: set[Any] = set()  # queues whose publishers we slowed down
        self.feeds: dict[int, Feed] = {}  # the feeds of our consumers, by id
        self.heard = 0.0  # monotonic: when the other node last said something (or we dialled)
        self.pinged = 0.0
        self.failures = 0  # dials in a row that failed (logged now and then)
        self.asks: dict[int, tuple[Asked, Feed | None]] = {}  # questions waiting for their answer
        self.next_ask = 0

    def send(self, data: bytes) -> None:
        self.outbox.append(data)
        self.out_bytes += len(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)
        if self.task is None:
            self.heard = time.monotonic()
            self.task = asyncio.get_running_loop().create_task(self._run(), name=f"hare-forward-{self.node}")

    def forward(self, vhost: str, queue: Any, msg: Message, hops: int) -> int:
        self.seq += 1
        self.send(publish_frame(self.seq, hops, vhost, queue.name, msg))
        if self.out_bytes > OUT_HIGH:
            self.throttled.add(queue)
            return REPLICATED | THROTTLE
        return REPLICATED

    def ask(self, asked: Asked, feed: Feed | None) -> None:
        self.next_ask += 1
        self.asks[self.next_ask] = (asked, feed)
        q = asked.queue
        self.send(frame(F_ASK, _ASK.pack(self.next_ask, asked.op, 0 if feed is None else feed.id)
                        + _name(q.vhost_name) + _name(q.name)))

    def _answered(self, payload: bytes) -> None:
        ask_id, held, count, consumers = _ANSWER.unpack_from(payload, 0)
        entry = self.asks.pop(ask_id, None)
        if entry is None:
            return  # (not ours: asked on a link that broke since, which answers it)
        asked, feed = entry
        local = None
        if len(payload) > _ANSWER.size:  # a get got a message
            seq, redelivered = _QB.unpack_from(payload, _ANSWER.size)
            msg = decode_message(payload, _ANSWER.size + _QB.size)
            store = feed.store if feed is not None else self.forwarding.feed_store(asked.queue)
            local = store.got(feed, seq)
            asked.entry = (msg, local, bool(redelivered))
        asked.message_count, asked.consumer_count = count, consumers
        asked.finish(committed=bool(held))
        if local is not None and not asked.claimed and feed is not None:
            feed.store.settle(local, REQUEUED)  # nobody took it (the connection went away)

    def barrier(self, callback: Callable[[], None], on_fail: Callable[[], None]) -> None:
        if not self.waiters and self.confirmed >= self.seq:
            callback()
        else:
            self.waiters.append((self.seq, callback, on_fail))

    def flush(self) -> None:
        self.flush_scheduled = False
        writer = self.writer
        if writer is None or not self.outbox:
            return
        data, self.outbox = b"".join(self.outbox), []
        self.out_bytes = 0
        writer.write(data)
        if self.throttled:
            throttled, self.throttled = self.throttled, set()
            for q in throttled:
                q.release_flow()

    def _confirmed(self, upto: int, failed: bool) -> None:
        if failed:
            self.failed_upto = upto
        self.confirmed = max(self.confirmed, upto)
        waiters = self.waiters
        while waiters and waiters[0][0] <= self.confirmed:
            seq, callback, on_fail = waiters.popleft()
            if self.failed_upto and seq <= self.failed_upto:
                on_fail()
            else:
                callback()

    def check(self, now: float) -> None:
        """(The replicas' tick.) Ping a silent link we wait on; cut one silent too long."""
        task = self.task
        if task is None or not (self.waiters or self.feeds or self.asks):
            return
        silent = now - self.heard
        if silent > LINK_SILENCE:
            log.warning("forwarding link to %s: silent for %.1f s: cut (what it had not confirmed is "
                        "nacked)", self.node, silent)
            self._end()
            task.cancel()
        elif silent > PING_AFTER and self.writer is not None and now - self.pinged > PING_AFTER:
            self.pinged = now
            self.writer.write(frame(F_PING, b""))

    def _end(self) -> None:
        """The link is gone: what it had not confirmed fails, its feeds end; the next send
        dials again."""
        if self.writer is not None:
            self.writer.close()
        self.writer = None
        self.task = None
        waiters, self.waiters = self.waiters, deque()
        self.outbox, self.out_bytes = [], 0
        self.confirmed = self.seq
        for _seq, _callback, on_fail in waiters:
            on_fail()
        feeds, self.feeds = self.feeds, {}
        for feed in feeds.values():
            feed.ended()
        asks, self.asks = self.asks, {}
        for asked, _feed in asks.values():
            asked.finish()  # (not answered: the asker answers from what it has)

    async def _run(self) -> None:
        me = asyncio.current_task()
        try:
            address = self.forwarding.address(self.node)
            if address is None:
                raise OSError(f"no node-to-node address for {self.node}")
            host, _, port = address.rpartition(":")
            reader, writer = await asyncio.open_connection(host.strip("[]"), int(port), limit=1 << 20)
            writer.write(frame(F_HELLO, json.dumps({"node": self.forwarding.me}).encode()))
            self.writer = writer
            self.failures = 0
            self.flush()
            frames = FrameReader()
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    raise OSError("closed by the other node")
                self.heard = time.monotonic()
                for kind, payload in frames.feed(data):
                    if kind == F_CONFIRMED:
                        upto, failed = _QB.unpack(payload)
                        self._confirmed(upto, bool(failed))
                    elif kind == F_DELIVER:
                        feed_id, seq, redelivered = _QQB.unpack_from(payload, 0)
                        feed = self.feeds.get(feed_id)
                        if feed is not None:
                            feed.delivered(seq, bool(redelivered), decode_message(payload, _QQB.size))
                        else:  # (a feed we ended: the leader takes it back)
                            self.send(settle_frame(feed_id, REQUEUED, [seq]))
                    elif kind == F_CANCELLED:
                        (feed_id,) = struct.unpack(">Q", payload)
                        feed = self.feeds.pop(feed_id, None)
                        if feed is not None:
                            feed.ended()
                    elif kind == F_ANSWER:
                        self._answered(payload)
                    elif kind != F_PONG:
                        raise ReplicationError(f"unexpected frame {kind} on a forwarding link")
        except (OSError, ReplicationError, ValueError) as exc:
            self.failures += 1
            if self.failures == 1 or self.failures % 100 == 0:  # (dialled again at each publish)
                log.warning("forwarding link to %s: %s (what it had not confirmed is nacked)%s", self.node,
                            exc, f"; {self.failures} times" if self.failures > 1 else "")
        finally:
            if self.task is me:  # (not cut already)
                self._end()


class InLink:
    """B's side: the publishes another node forwards, confirmed as a channel confirms them."""

    def __init__(self, forwarding: Forwarding, writer: asyncio.StreamWriter) -> None:
        self.forwarding = forwarding
        self.writer = writer
        self.state = 1  # (what ReplicatedConfirms' channel has: OPEN)
        self.confirms = ReplicatedConfirms(self)  # type: ignore[arg-type]
        self.feeds: dict[int, Consumer] = {}  # the other node's feeds: consumers of our queues
        self.inflight: dict[tuple[int, int], tuple[Any, Message]] = {}  # (feed, seq) -> (queue, msg)
        self.out: list[bytes] = []
        self.flush_scheduled = False

    # -- the DeliveryTarget of the feeds' consumers (broker/consumer.py) -------------------------

    @property
    def deliverable(self) -> bool:
        return not self.writer.is_closing() and self.writer.transport.get_write_buffer_size() < OUT_HIGH

    def deliver(self, consumer: Consumer, msg: Message, seq: int, redelivered: bool) -> None:
        feed_id = consumer.arguments["feed"]
        consumer.unacked += 1
        self.inflight[(feed_id, seq)] = (consumer.queue, msg)
        self.out.append(deliver_frame(feed_id, seq, redelivered, msg))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def consumer_cancelled(self, consumer: Consumer) -> None:
        feed_id = consumer.arguments["feed"]
        if self.feeds.pop(feed_id, None) is not None:
            self.out.append(frame(F_CANCELLED, struct.pack(">Q", feed_id)))
            self._flush()

    def deliver_reply(self, msg: Message) -> None:  # (no direct reply-to over a feed)
        return

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.out and not self.writer.is_closing():
            self.writer.write(b"".join(self.out))
        self.out = []

    def _consume(self, payload: bytes) -> None:
        feed_id, credit = struct.unpack_from(">QI", payload, 0)
        vhost_name, queue_name, _ = _names(payload, 12)
        vhost = self.forwarding.replicas.broker.vhosts.get(vhost_name)
        q = None if vhost is None else vhost.queues.get(queue_name)
        if q is None or (q.replica is not None and not q.replica.leading):  # (not held here)
            self.out.append(frame(F_CANCELLED, struct.pack(">Q", feed_id)))
            self._flush()
            return
        consumer = Consumer(f"amq.feed-{feed_id}", q, self, prefetch=credit, arguments={"feed": feed_id})
        self.feeds[feed_id] = consumer
        q.add_consumer(consumer)
        q.dispatch()

    def _ask(self, payload: bytes) -> None:
        ask_id, op, feed_id = _ASK.unpack_from(payload, 0)
        vhost_name, queue_name, _ = _names(payload, _ASK.size)
        vhost = self.forwarding.replicas.broker.vhosts.get(vhost_name)
        q = None if vhost is None else vhost.queues.get(queue_name)
        if q is None or (q.replica is not None and not q.replica.leading):  # (not held here)
            self.out.append(frame(F_ANSWER, _ANSWER.pack(ask_id, 0, 0, 0)))
            self._flush()
            return
        got = b""
        if op == PURGE:
            purged = q.purge()
        elif op == GET or op == GET_NO_ACK:
            entry = q.get()
            if entry is not None:
                msg, seq, redelivered = entry
                if op == GET_NO_ACK:
                    q.ack(seq, msg)
                else:
                    self.inflight[(feed_id, seq)] = (q, msg)
                got = b"".join((_QB.pack(seq, redelivered), *_message(msg)))
        elif op != COUNT:
            raise ReplicationError(f"unknown question {op} on a forwarding link")
        # the consumers: the asker's feed of this queue stands for the asker's own, which it counts
        consumers = q.consumer_count - sum(1 for c in self.feeds.values() if c.queue is q)
        count = purged if op == PURGE else q.message_count
        self.out.append(frame(F_ANSWER, _ANSWER.pack(ask_id, 1, count, max(0, consumers)) + got))
        self._flush()

    def _cancel(self, feed_id: int) -> None:
        consumer = self.feeds.pop(feed_id, None)
        if consumer is not None:
            consumer.queue.remove_consumer(consumer)

    def _settle(self, payload: bytes) -> None:
        feed_id, how = _QB.unpack_from(payload, 0)
        count = (len(payload) - _QB.size) // 8
        consumer = self.feeds.get(feed_id)
        touched = set()
        for seq in struct.unpack_from(f">{count}Q", payload, _QB.size):
            entry = self.inflight.pop((feed_id, seq), None)
            if entry is None:
                continue
            q, msg = entry
            if consumer is not None and consumer.unacked:
                consumer.unacked -= 1
            if how == ACKED:
                q.ack(seq, msg)
            elif how == REJECTED:
                q.reject(seq, msg)
            else:
                q.requeue(seq, msg)
            touched.add(q)
        for q in touched:
            q.dispatch()

    def closed(self) -> None:
        """The link is gone: the feeds end, and what they held goes back to its queues."""
        for feed_id in list(self.feeds):
            self._cancel(feed_id)
        inflight, self.inflight = self.inflight, {}
        touched = set()
        for (_feed, seq), (q, msg) in sorted(inflight.items(), key=lambda item: item[0][1]):
            q.requeue(seq, msg)
            touched.add(q)
        for q in touched:
            q.dispatch()

    def replicated_confirms(self, upto: int, failed: bool) -> None:
        if not self.writer.is_closing():
            self.writer.write(frame(F_CONFIRMED, _QB.pack(upto, failed)))

    def handle(self, frames: list[tuple[int, bytes]]) -> None:
        broker = self.forwarding.replicas.broker
        upto = 0
        sync = heavy = failed = False
        touched = self.confirms.touched
        for kind, payload in frames:
            if kind != F_PUBLISH:
                if kind == F_SETTLE:
                    self._settle(payload)
                elif kind == F_CONSUME:
                    self._consume(payload)
                elif kind == F_CANCEL:
                    self._cancel(struct.unpack(">Q", payload)[0])
                elif kind == F_ASK:
                    self._ask(payload)
                elif kind == F_PING:
                    self.out.append(frame(F_PONG, b""))
                    self._flush()
                else:
                    raise ReplicationError(f"unexpected frame {kind} on a forwarding link")
                continue
            seq, hops, vhost_name, queue_name, msg = parse_publish(payload)
            upto = seq
            vhost = broker.vhosts.get(vhost_name)
            q = None if vhost is None else vhost.queues.get(queue_name)
            if q is None:
                continue  # deleted meanwhile: dropped, as a message routed to a deleted queue
            self.forwarding.hops = hops  # (read by forward(), if it goes on from here)
            try:
                r = q.publish(msg)
            finally:
                self.forwarding.hops = 0
            if r & REJECTED_PUBLISH:
                failed = True
            if r & REPLICATED:
                touched.add(q.replica.confirm_source)
            if msg.needs_sync:
                sync = True
                heavy = heavy or msg.needs_sync > 1
        if upto:
            # (a refused message fails its whole batch: the publisher may publish again)
            self.confirms.add(upto, broker.store if sync else None, heavy, failed)


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
        link.send(frame(F_CONSUME, struct.pack(">QI", feed.id, CREDIT) + _name(q.vhost_name) + _name(q.name)))

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


__all__ = ["Forwarding", "OutLink", "InLink", "F_HELLO", "F_PUBLISH", "F_CONFIRMED", "MAX_HOPS"]
