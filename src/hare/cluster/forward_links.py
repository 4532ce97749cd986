"""The two ends of a forwarding link (`forwarding`): ``OutLink`` on the node a client is
connected to (A), ``InLink`` on the node that holds the queue (B).

**A silent link is cut.** A node cut off by the network sends no reset: a link to it would wait
for ever. While A waits for confirms or feeds a consumer over a link and has heard nothing for
PING_AFTER, it pings; after LINK_SILENCE without a word it cuts the link (what it had not
confirmed is nacked, the feeds subscribe again), so a publisher through A to a leader that was
cut off waits about as long as the failover takes, not as long as the partition lasts.

B hands each message to the queue as a local publish would, and confirms a batch (one read) as
its own channels do: once the store has synced it (a persistent message in a durable queue) and
its quorum queues' followers have (`ReplicatedConfirms`, in order). On A, the publisher's
channel waits for the link (`OutLink.barrier`) as it waits for a local quorum queue's followers.
A link that breaks fails (nacks) what it had not confirmed: the publisher may publish again. A
message is forwarded at most twice (leadership moving while it travels), then refused.
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
from .feeds import Feed
from .forward_frames import (
    ACKED,
    ANSWER_HEAD,
    ASK_HEAD,
    F_ANSWER,
    F_ASK,
    F_CANCEL,
    F_CANCELLED,
    F_CONFIRMED,
    F_CONSUME,
    F_DELIVER,
    F_HELLO,
    F_PING,
    F_PONG,
    F_PUBLISH,
    F_SETTLE,
    LINK_SILENCE,
    OUT_HIGH,
    PING_AFTER,
    QB,
    QQB,
    REJECTED,
    REQUEUED,
    deliver_frame,
    message_parts,
    pack_name,
    parse_publish,
    publish_frame,
    settle_frame,
    unpack_names,
)
from .replication import FrameReader, ReplicationError, decode_message, frame

if TYPE_CHECKING:
    from .forwarding import Forwarding

log = logging.getLogger("hare.cluster")


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
        self.send(frame(F_ASK, ASK_HEAD.pack(self.next_ask, asked.op, 0 if feed is None else feed.id)
                        + pack_name(q.vhost_name) + pack_name(q.name)))

    def _answered(self, payload: bytes) -> None:
        ask_id, held, count, consumers = ANSWER_HEAD.unpack_from(payload, 0)
        entry = self.asks.pop(ask_id, None)
        if entry is None:
            return  # (not ours: asked on a link that broke since, which answers it)
        asked, feed = entry
        local = None
        if len(payload) > ANSWER_HEAD.size:  # a get got a message
            seq, redelivered = QB.unpack_from(payload, ANSWER_HEAD.size)
            msg = decode_message(payload, ANSWER_HEAD.size + QB.size)
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
                        upto, failed = QB.unpack(payload)
                        self._confirmed(upto, bool(failed))
                    elif kind == F_DELIVER:
                        feed_id, seq, redelivered = QQB.unpack_from(payload, 0)
                        feed = self.feeds.get(feed_id)
                        if feed is not None:
                            feed.delivered(seq, bool(redelivered), decode_message(payload, QQB.size))
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
        vhost_name, queue_name, _ = unpack_names(payload, 12)
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
        ask_id, op, feed_id = ASK_HEAD.unpack_from(payload, 0)
        vhost_name, queue_name, _ = unpack_names(payload, ASK_HEAD.size)
        vhost = self.forwarding.replicas.broker.vhosts.get(vhost_name)
        q = None if vhost is None else vhost.queues.get(queue_name)
        if q is None or (q.replica is not None and not q.replica.leading):  # (not held here)
            self.out.append(frame(F_ANSWER, ANSWER_HEAD.pack(ask_id, 0, 0, 0)))
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
                got = b"".join((QB.pack(seq, redelivered), *message_parts(msg)))
        elif op != COUNT:
            raise ReplicationError(f"unknown question {op} on a forwarding link")
        # the consumers: the asker's feed of this queue stands for the asker's own, which it counts
        consumers = q.consumer_count - sum(1 for c in self.feeds.values() if c.queue is q)
        count = purged if op == PURGE else q.message_count
        self.out.append(frame(F_ANSWER, ANSWER_HEAD.pack(ask_id, 1, count, max(0, consumers)) + got))
        self._flush()

    def _cancel(self, feed_id: int) -> None:
        consumer = self.feeds.pop(feed_id, None)
        if consumer is not None:
            consumer.queue.remove_consumer(consumer)

    def _settle(self, payload: bytes) -> None:
        feed_id, how = QB.unpack_from(payload, 0)
        count = (len(payload) - QB.size) // 8
        consumer = self.feeds.get(feed_id)
        touched = set()
        for seq in struct.unpack_from(f">{count}Q", payload, QB.size):
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
            self.writer.write(frame(F_CONFIRMED, QB.pack(upto, failed)))

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
