"""One AMQP channel: its methods, consumers, deliveries and acks (the publish side, confirms and
transactions are in ``publishing``).

A channel is driven by its connection (which parses frames) and calls into the broker model.
It writes its output frames into the connection's output list; it never touches a socket.
"""

from __future__ import annotations

import base64
import logging
import os
import struct
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..amqp import spec
from ..amqp.errors import (
    AMQPError,
    ChannelError,
    ConnectionFault,
    access_refused,
    not_found,
    precondition_failed,
)
from ..amqp.frames import FRAME_END_BYTE, body_frames, pack_header
from ..auth.permissions import READ
from ..broker.arguments import type_name
from ..broker.background import SLICE
from ..broker.consumer import Consumer, PrefetchLimit
from ..broker.direct_reply import REPLY_QUEUE, ReplyConsumer
from ..broker.message import Message
from ..broker.queue import COUNT, GET, GET_NO_ACK, PURGE, Queue
from .ack_timeout import AckWatch
from .publishing import CLOSING, MAX_MSG_SIZE, OPEN, Publish, Publishing, ReplicatedConfirms

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger("hare.channel")

_pack_QB = struct.Struct(">QB").pack
_pack_content_header = struct.Struct(">BHIHHQ").pack
_DELIVER = b"\x00\x3c\x00\x3c"
_GET_OK = b"\x00\x3c\x00\x47"
_SMALL_BODY = 4096

# an unacked delivery: (queue, message, seq, consumer or None for basic.get)
Unacked = tuple[Queue, Message, int, Consumer | None]


def consumer_tag() -> str:
    return "amq.ctag-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


class Channel(Publishing):
    __slots__ = ("conn", "number", "state", "vhost", "deliverable", "flow_active",
                 "next_tag", "unacked", "consumers", "prefetch", "shared", "confirm",
                 "publish_seq", "confirmed_upto", "queued_upto", "sync_upto", "sync_waits", "heavy_upto",
                 "heavy_waits", "nacks", "tx", "tx_publishes", "tx_acks",
                 "tx_taken", "max_size", "last_queue", "pub", "pub_props", "pub_size", "pub_body",
                 "pub_received", "reply", "reply_id", "ack_watch", "access", "commands",
                 "unacked_bytes", "unacked_limit", "held", "replicated")

    def __init__(self, conn: Connection, number: int) -> None:
        self.conn = conn
        self.number = number
        self.state = OPEN
        self.vhost = conn.vhost
        self.access = conn.access  # the user's permissions in the vhost, decisions cached
        self.commands = conn.broker.commands  # every metadata change goes through it
        self.flow_active = True
        self.deliverable = conn.writable
        self.next_tag = 0
        self.unacked: dict[int, Unacked] = {}
        self.consumers: dict[str, Consumer] = {}
        self.prefetch = 0  # per-consumer prefetch for new consumers (qos global=false)
        self.shared: PrefetchLimit | None = None  # qos global=true
        self.confirm = False
        self.publish_seq = 0
        self.confirmed_upto = 0  # confirms sent up to this publish sequence number
        self.queued_upto = 0  # confirms decided up to here (sent, or waiting for a sync)
        self.sync_upto = 0  # the last publish whose message must be on disk before its confirm
        self.sync_waits = 0  # batches of confirms waiting for the store's sync
        self.heavy_upto = 0  # the last publish that went to a heavy log (MessageStore.after_sync)
        self.heavy_waits = 0  # those batches that wait for the heavy lane too
        self.nacks: list[int] = []
        self.replicated: ReplicatedConfirms | None = None  # made at the first replicated publish
        self.tx = False
        # (message, names of the queues it was routed to at publish, mandatory): RabbitMQ routes a
        # transactional publish when it arrives and delivers it at commit
        self.tx_publishes: list[tuple[Message, list[str], bool]] = []
        self.tx_acks: list[tuple[int, int, bool, bool]] = []  # (method index, tag, multiple, requeue)
        # the deliveries each entry of tx_acks took out of ``unacked`` (as RabbitMQ does: acking
        # one twice is an error, rollback puts them back): tx_taken[i] goes with tx_acks[i]
        self.tx_taken: list[list[tuple[int, Unacked]]] = []
        self.max_size = min(conn.broker.config.max_message_size, MAX_MSG_SIZE)  # RabbitMQ's cap
        self.last_queue = ""
        # content being received: the publish method, then properties, size and body parts
        self.pub: Publish | None = None
        self.pub_props = b""
        self.pub_size = -1  # -1: header not yet received
        self.pub_body: list[bytes] = []
        self.pub_received = 0
        self.reply: ReplyConsumer | None = None  # the consumer of amq.rabbitmq.reply-to, if any
        self.reply_id = ""  # this channel's part of its reply names, once it had a reply consumer
        self.ack_watch: AckWatch | None = None  # the consumer timeout's check (ack_timeout.py)
        # Memory pressure (Broker.set_memory_pressure): the bytes of the consumers' unacked
        # deliveries (a running sum of their Message.size), the most the channel
        # may hold (no limit without pressure), and whether it is over it (then no deliveries)
        self.unacked_bytes = 0
        self.unacked_limit = conn.broker.unacked_limit
        self.held = False

    # -- output ---------------------------------------------------------------------------------

    def send(self, method: spec.Method) -> None:
        payload = method.encode()
        self.conn.write(pack_header(1, self.number, len(payload)) + payload + FRAME_END_BYTE)

    def _send_content(self, method_payload: bytes, msg: Message) -> None:
        """A method frame followed by the message's header and body frames."""
        conn = self.conn
        body = msg.body
        props = msg.properties_raw
        ch = self.number
        size = len(body)
        head = (pack_header(1, ch, len(method_payload)) + method_payload + FRAME_END_BYTE
                + _pack_content_header(2, ch, 12 + len(props), 60, 0, size) + props + FRAME_END_BYTE)
        if not size:
            conn.write(head)
        elif size <= _SMALL_BODY and size <= conn.frame_max - 8:
            conn.write(head + pack_header(3, ch, size) + body + FRAME_END_BYTE)
        else:
            parts = [head]
            body_frames(parts, ch, body, conn.frame_max)
            conn.write_many(parts, size + len(head))

    # -- delivery (called by queues) -------------------------------------------------------------

    def deliver(self, consumer: Consumer, msg: Message, seq: int, redelivered: bool) -> None:
        tag = self.next_tag = self.next_tag + 1
        if not consumer.no_ack:
            self.unacked[tag] = (consumer.queue, msg, seq, consumer)
            consumer.unacked += 1
            if consumer.shared is not None:
                consumer.shared.unacked += 1
            held = self.unacked_bytes = self.unacked_bytes + msg.size
            if held > self.unacked_limit:  # over its share under memory pressure: no more for now
                self.held = True
                self.deliverable = False
        else:
            consumer.queue.ack(seq, msg)
        self._send_content(_DELIVER + consumer.tag_bytes + _pack_QB(tag, redelivered) + msg.route_bytes,
                           msg)

    def consumer_cancelled(self, consumer: Consumer) -> None:
        """The queue went away under a consumer: tell a client that asked to be told."""
        if self.consumers.pop(consumer.tag, None) is None:
            return
        if self.conn.capabilities.get("consumer_cancel_notify") and self.state == OPEN:
            self.send(spec.BasicCancel(consumer_tag=consumer.tag, nowait=True))

    def deliver_reply(self, msg: Message) -> None:
        """A direct reply-to reply for this channel's reply consumer (a no-ack delivery with the
        exchange and routing key it was published with, as RabbitMQ: no queue, no flow control).
        As RabbitMQ 3.10, it carries the delivery tag the channel's next delivery will have
        without taking it: replies in a row share a tag, which the next delivery gets again."""
        reply = self.reply
        if reply is None or self.state != OPEN:
            return
        self._send_content(_DELIVER + reply.tag_bytes + _pack_QB(self.next_tag + 1, False) + msg.route_bytes,
                           msg)

    def set_deliverable(self) -> None:
        was = self.deliverable
        self.deliverable = self.flow_active and self.conn.writable and self.state == OPEN and not self.held
        if self.deliverable and not was:
            for c in self.consumers.values():
                self.conn.dispatch_later(c.queue)

    def set_unacked_limit(self, limit: int) -> None:
        """Memory pressure came or went (the broker's new share per channel): hold deliveries back
        while the channel's unacked deliveries are over it, let them go once they are not."""
        self.unacked_limit = limit
        held = self.unacked_bytes > limit
        if held != self.held:
            self.held = held
            self.set_deliverable()

    def _unheld(self) -> None:
        """Acks brought the unacked bytes back under the channel's share: deliver again."""
        self.held = False
        self.set_deliverable()

    # -- method dispatch ------------------------------------------------------------------------

    def handle(self, method: spec.Method) -> None:
        handler = _HANDLERS.get(type(method))
        if handler is None:  # a server's method (or connection.*) from the client: as RabbitMQ
            raise ConnectionFault(503, "unimplemented method", method.CLASS_ID, method.METHOD_ID)
        handler(self, method)

    # -- channel class ----------------------------------------------------------------------------

    def _channel_flow(self, m: spec.ChannelFlow) -> None:
        if not m.active:  # RabbitMQ 3.10 refuses to stop deliveries on a client's request
            raise ConnectionFault(540, "active=false", 20, 20)
        self.flow_active = m.active
        self.set_deliverable()
        self.send(spec.ChannelFlowOk(active=m.active))

    def _access_request(self, m: spec.AccessRequest) -> None:
        self.send(spec.AccessRequestOk(ticket=1))

    # -- exchange class ----------------------------------------------------------------------------

    def _exchange_declare(self, m: spec.ExchangeDeclare) -> None:
        self.commands.declare_exchange(self.vhost, m.exchange, m.type, passive=m.passive,
                                       durable=m.durable, auto_delete=m.auto_delete,
                                       internal=m.internal, arguments=m.arguments, access=self.access)
        if not m.nowait:
            self.send(spec.ExchangeDeclareOk())

    def _exchange_delete(self, m: spec.ExchangeDelete) -> None:
        self.commands.delete_exchange(self.vhost, m.exchange, if_unused=m.if_unused, access=self.access)
        if not m.nowait:
            self.send(spec.ExchangeDeleteOk())

    def _exchange_bind(self, m: spec.ExchangeBind) -> None:
        self.commands.bind_exchange(self.vhost, m.destination, m.source, m.routing_key, m.arguments,
                                    access=self.access)
        if not m.nowait:
            self.send(spec.ExchangeBindOk())

    def _exchange_unbind(self, m: spec.ExchangeUnbind) -> None:
        self.commands.unbind_exchange(self.vhost, m.destination, m.source, m.routing_key, m.arguments,
                                      access=self.access)
        if not m.nowait:
            self.send(spec.ExchangeUnbindOk())

    # -- queue class -------------------------------------------------------------------------------

    def _queue_name(self, name: str) -> str:
        """An empty queue name means the channel's last declared queue (AMQP 0-9-1)."""
        if name:
            return name
        if not self.last_queue:
            raise not_found("no previously declared queue")
        return self.last_queue

    def _queue_declare(self, m: spec.QueueDeclare) -> None:
        if m.queue.startswith(REPLY_QUEUE):
            self._reply_declare(m)
            return
        q = self.commands.declare_queue(self.vhost, m.queue, passive=m.passive, durable=m.durable,
                                        exclusive=m.exclusive, auto_delete=m.auto_delete,
                                        arguments=m.arguments, conn=self.conn, access=self.access)
        self.last_queue = q.name
        if not m.nowait:
            count, consumers = q.message_count, q.consumer_count
            asked = q.ask(COUNT, self.commands.replay)  # (in a cluster: from the node holding it)
            if asked is not None:
                count, consumers = count + asked.message_count, consumers + asked.consumer_count
            self.send(spec.QueueDeclareOk(queue=q.name, message_count=count, consumer_count=consumers))

    def _reply_declare(self, m: spec.QueueDeclare) -> None:
        """queue.declare of amq.rabbitmq.reply-to or of a name starting with it, as RabbitMQ 3.10:
        whatever the flags and arguments, declare-ok (0 messages, 1 consumer) for the pseudo-queue
        and for the name of a live reply consumer, else 404. (RabbitMQ asks the channel the name
        belongs to: when that is the asking channel itself, the call crashes and the connection
        closes with 541; hare answers declare-ok there too.)"""
        name = m.queue
        if name != REPLY_QUEUE:
            if not self.vhost.direct_reply.exists(name):
                raise not_found(f"no queue '{name}' in vhost '{self.vhost.name}'")
        self.last_queue = name
        if not m.nowait:
            self.send(spec.QueueDeclareOk(queue=name, message_count=0, consumer_count=1))

    def _routing_key(self, queue: str, routing_key: str) -> str:
        """queue.bind/unbind with empty queue and key: the key is the last declared queue's name."""
        if queue or routing_key:
            return routing_key
        return self._queue_name(queue)

    def _queue_bind(self, m: spec.QueueBind) -> None:
        self.commands.bind_queue(self.vhost, self._queue_name(m.queue), m.exchange,
                                 self._routing_key(m.queue, m.routing_key), m.arguments, conn=self.conn,
                                 access=self.access)
        if not m.nowait:
            self.send(spec.QueueBindOk())

    def _queue_unbind(self, m: spec.QueueUnbind) -> None:
        self.commands.unbind_queue(self.vhost, self._queue_name(m.queue), m.exchange,
                                   self._routing_key(m.queue, m.routing_key), m.arguments, conn=self.conn,
                                   access=self.access)
        self.send(spec.QueueUnbindOk())

    def _queue_purge(self, m: spec.QueuePurge) -> None:
        name = self._queue_name(m.queue)
        self.access.check(READ, "queue", name)
        q = self.vhost.get_queue(name, self.conn)
        asked = q.ask(PURGE, self.commands.replay)  # (in a cluster: by the node holding it)
        count = q.purge() + (asked.message_count if asked is not None else 0)
        if not m.nowait:
            self.send(spec.QueuePurgeOk(message_count=count))

    def _queue_delete(self, m: spec.QueueDelete) -> None:
        out = self.conn.out
        mark = len(out)
        count = self.commands.delete_queue(self.vhost, self._queue_name(m.queue), if_unused=m.if_unused,
                                           if_empty=m.if_empty, conn=self.conn, access=self.access)
        if m.nowait:
            return
        if len(out) > mark and out is self.conn.out:
            # The deletion cancelled consumers of this connection and wrote their basic.cancel.
            # RabbitMQ answers delete-ok first (a channel handles the queue's cancel notice only
            # after its own queue.delete call returned): put delete-ok ahead of them.
            payload = spec.QueueDeleteOk(message_count=count).encode()
            frame = pack_header(1, self.number, len(payload)) + payload + FRAME_END_BYTE
            out.insert(mark, frame)
            self.conn.out_size += len(frame)
        else:
            self.send(spec.QueueDeleteOk(message_count=count))

    # -- basic class: consumers ----------------------------------------------------------------------

    def _basic_qos(self, m: spec.BasicQos) -> None:
        if m.prefetch_size:
            raise ConnectionFault(540, f"prefetch_size!=0 ({m.prefetch_size})", 60, 10)
        if m.global_:
            if self.shared is None:
                self.shared = PrefetchLimit(m.prefetch_count)
                for c in self.consumers.values():
                    c.shared = self.shared
                    self.shared.unacked += c.unacked
            else:
                self.shared.prefetch = m.prefetch_count
        else:
            self.prefetch = m.prefetch_count
        self.send(spec.BasicQosOk())
        for c in self.consumers.values():
            self.conn.dispatch_later(c.queue)

    def _basic_consume(self, m: spec.BasicConsume) -> None:
        # RabbitMQ's order: tag reuse (530), queue (404/405), arguments (406), exclusive use (403)
        if m.consumer_tag in self.consumers:
            raise ConnectionFault(530, f"attempt to reuse consumer tag '{m.consumer_tag}'", 60, 20)
        if m.queue == REPLY_QUEUE:
            self._reply_consume(m)
            return
        name = self._queue_name(m.queue)
        self.access.check(READ, "queue", name)
        q = self.vhost.get_queue(name, self.conn)
        tag = m.consumer_tag or consumer_tag()
        args = m.arguments or {}
        priority = args.get("x-priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise precondition_failed(f"invalid arg 'x-priority' for queue '{q.name}' in vhost "
                                      f"'{self.vhost.name}': \"expected integer, got "
                                      f"{type_name(priority)}\"")
        # (RabbitMQ 3.10 refuses an exclusive consumer on a single-active-consumer queue, even idle)
        if q.exclusive_consumer is not None or (m.exclusive and (
                q.consumer_count or q.settings.single_active_consumer)):
            raise access_refused(f"queue '{q.name}' in vhost '{self.vhost.name}' in exclusive use")
        c = Consumer(tag, q, self, no_ack=m.no_ack, exclusive=m.exclusive, priority=priority,
                     arguments=args, prefetch=self.prefetch, shared=self.shared)
        self.consumers[tag] = c
        if not m.nowait:
            self.send(spec.BasicConsumeOk(consumer_tag=tag))
        q.add_consumer(c)
        self.conn.dispatch_later(q)
        if not m.no_ack:
            self._watch_acks()

    def _reply_consume(self, m: spec.BasicConsume) -> None:
        """basic.consume of amq.rabbitmq.reply-to (direct reply-to): no-ack only, one per channel;
        exclusive and arguments are ignored, as in RabbitMQ."""
        if not m.no_ack:
            raise precondition_failed("reply consumer cannot acknowledge")
        if self.reply is not None:
            raise precondition_failed("reply consumer already set")
        replies = self.vhost.direct_reply
        if not self.reply_id:
            self.reply_id = replies.channel_id()
        tag = m.consumer_tag or consumer_tag()
        self.reply = ReplyConsumer(tag, replies.register(self, self.reply_id))
        if not m.nowait:
            self.send(spec.BasicConsumeOk(consumer_tag=tag))

    def _reply_cancel(self) -> None:
        reply = self.reply
        if reply is not None:
            self.reply = None
            self.vhost.direct_reply.unregister(reply.name)

    def _basic_cancel(self, m: spec.BasicCancel) -> None:
        if self.reply is not None and m.consumer_tag == self.reply.tag:
            # (RabbitMQ looks at the reply consumer first: a queue's consumer may share its tag)
            self._reply_cancel()
            if not m.nowait:
                self.send(spec.BasicCancelOk(consumer_tag=m.consumer_tag))
            return
        c = self.consumers.pop(m.consumer_tag, None)
        if not m.nowait:
            self.send(spec.BasicCancelOk(consumer_tag=m.consumer_tag))
        if c is not None:
            c.queue.remove_consumer(c)
            self.conn.dispatch_later(c.queue)  # a single active consumer's successor may take over
            self.commands.consumer_removed(self.vhost, c.queue)

    def _basic_get(self, m: spec.BasicGet) -> None:
        name = self._queue_name(m.queue)
        self.access.check(READ, "queue", name)
        q = self.vhost.get_queue(name, self.conn)
        entry = q.get()
        count = 0
        if entry is None:
            # in a cluster, a queue whose messages another node holds: got there
            asked = q.ask(GET_NO_ACK if m.no_ack else GET, self.commands.replay)
            if asked is not None:
                entry, count = asked.entry, asked.message_count
            if entry is None:
                self.send(spec.BasicGetEmpty())
                return
        msg, seq, redelivered = entry
        tag = self.next_tag = self.next_tag + 1
        if m.no_ack:
            q.ack(seq, msg)
        else:
            self.unacked[tag] = (q, msg, seq, None)
            self._watch_acks(delivered_now=True)
        self._send_content(_GET_OK + _pack_QB(tag, redelivered) + msg.route_bytes
                           + struct.pack(">I", q.message_count + count), msg)

    def _watch_acks(self, delivered_now: bool = False) -> None:
        """Have the consumer timeout checked on this channel (consumer with acks, basic.get)."""
        watch = self.ack_watch
        if watch is None:
            watch = self.ack_watch = AckWatch(self)
        watch.start(delivered_now)

    # -- basic class: acks ------------------------------------------------------------------------

    def _take(self, tag: int, multiple: bool) -> list[Unacked]:
        unacked = self.unacked
        if multiple:
            if tag == 0:
                taken = list(unacked.values())
                unacked.clear()
                return taken
            if tag not in unacked:
                raise precondition_failed(f"unknown delivery tag {tag}")
            taken = []
            for t in list(unacked):
                if t > tag:
                    break
                taken.append(unacked.pop(t))
            return taken
        rec = unacked.pop(tag, None)
        if rec is None:
            raise precondition_failed(f"unknown delivery tag {tag}")
        return [rec]

    def _release(self, rec: Unacked) -> None:
        c = rec[3]
        if c is not None:
            self.unacked_bytes -= rec[1].size
            if self.held and self.unacked_bytes <= self.unacked_limit:
                self._unheld()
            c.unacked -= 1
            if c.shared is not None:
                self._release_shared(c.shared)
            self.conn.dispatch_later(c.queue)

    def _release_shared(self, shared: PrefetchLimit) -> None:
        """A credit of the channel's global (qos global=true) window came back. When that reopens a
        full window, every consumer of the channel may take deliveries again, not only the one whose
        message was settled: their queues must dispatch too."""
        shared.unacked -= 1
        if shared.unacked == shared.prefetch - 1:
            for c in self.consumers.values():
                self.conn.dispatch_later(c.queue)

    def settle(self, tag: int, multiple: bool, requeue: bool | None) -> None:
        """Ack (requeue None), or reject/nack with or without requeue."""
        for rec in self._take(tag, multiple):
            q, msg, seq, _ = rec
            if requeue:
                q.requeue(seq, msg)
                self.conn.dispatch_later(q)
            elif requeue is None:
                q.ack(seq, msg)
            else:
                q.reject(seq, msg)  # dead-lettered, if the queue has a dead-letter exchange
            self._release(rec)

    def ack(self, tag: int, multiple: bool) -> None:
        """basic.ack, the hot path: O(1) for a single tag."""
        if not multiple and not self.tx:
            rec = self.unacked.pop(tag, None)
            if rec is None:
                raise ChannelError(406, f"unknown delivery tag {tag}", 60, 80)
            msg = rec[1]
            rec[0].ack(rec[2], msg)
            c = rec[3]
            if c is not None:
                self.unacked_bytes -= msg.size
                if self.held and self.unacked_bytes <= self.unacked_limit:
                    self._unheld()
                c.unacked -= 1
                if c.shared is not None:
                    self._release_shared(c.shared)
                self.conn.dispatch_later(c.queue)
            return
        try:
            if self.tx:
                self._take_check(tag, multiple)
                self.tx_acks.append((0, tag, multiple, False))
            else:
                self.settle(tag, multiple, None)
        except ChannelError as err:  # the frame loop parses basic.ack inline: name the method here
            err.class_id, err.method_id = 60, 80
            raise

    def _take_check(self, tag: int, multiple: bool) -> None:
        """An ack/reject/nack inside a transaction: take its deliveries out of ``unacked`` now (so a
        second ack of one is 'unknown delivery tag', as in RabbitMQ) and keep them in tx_taken,
        beside the tx_acks entry the caller appends, until commit settles them or rollback puts
        them back."""
        unacked = self.unacked
        if multiple and tag == 0:
            tags = list(unacked)
        elif tag not in unacked:
            raise precondition_failed(f"unknown delivery tag {tag}")
        elif multiple:
            tags = [t for t in unacked if t <= tag]
        else:
            tags = [tag]
        self.tx_taken.append([(t, unacked.pop(t)) for t in tags])

    def _tx_restore(self) -> None:
        """Put the deliveries acked inside the transaction back among the unacked (rollback, close)."""
        taken, self.tx_taken = self.tx_taken, []
        if taken:
            items = sorted([*self.unacked.items(), *(item for group in taken for item in group)])
            self.unacked.clear()
            self.unacked.update(items)

    def _basic_ack(self, m: spec.BasicAck) -> None:
        self.ack(m.delivery_tag, m.multiple)

    def _basic_reject(self, m: spec.BasicReject) -> None:
        if self.tx:
            self._take_check(m.delivery_tag, False)
            self.tx_acks.append((1, m.delivery_tag, False, m.requeue))
            return
        self.settle(m.delivery_tag, False, m.requeue)

    def _basic_nack(self, m: spec.BasicNack) -> None:
        if self.tx:
            self._take_check(m.delivery_tag, m.multiple)
            self.tx_acks.append((1, m.delivery_tag, m.multiple, m.requeue))
            return
        self.settle(m.delivery_tag, m.multiple, m.requeue)

    def _basic_recover(self, m: spec.BasicRecover | spec.BasicRecoverAsync) -> None:
        if not m.requeue:
            raise ConnectionFault(540, "requeue=false", m.CLASS_ID, m.METHOD_ID)
        self.requeue_all()
        if isinstance(m, spec.BasicRecover):
            self.send(spec.BasicRecoverOk())

    def requeue_all(self) -> None:
        """Return every unacked message of this channel to its queue (channel close, recover)."""
        self._teardown([], self._take_all())

    def _take_all(self) -> dict[int, Unacked]:
        records, self.unacked = self.unacked, {}
        return records

    def _teardown(self, consumers: list[Consumer], records: dict[int, Unacked]) -> None:
        """Take ``consumers`` off their queues and requeue ``records``: now when they are few,
        else in slices across event-loop turns (broker/background.py), so that a channel holding a
        million unacked messages or a connection with 100,000 consumers does not freeze everybody
        else. In between, the consumers take no deliveries (the channel is not deliverable) and
        every message not yet requeued stays held, as unacked, by its consumer: nothing is lost or
        delivered twice. Requeued messages go back to their places in their queues."""
        if len(consumers) + len(records) <= SLICE:
            for _ in self._teardown_steps(consumers, records, self.conn.dispatch_later):
                pass
            return
        self.conn.broker.background.add(self._teardown_steps(consumers, records, _dispatch),
                                        f"releasing channel {self.number} of {self.conn.name}")

    def _teardown_steps(self, consumers: list[Consumer], records: dict[int, Unacked],
                        dispatch: Callable[[Queue], None]) -> Iterator[None]:
        touched: dict[Queue, None] = {}
        n = 0
        for c in consumers:
            c.queue.remove_consumer(c)
            touched[c.queue] = None
            n += 1
            if n >= SLICE:
                n = 0
                yield
        for q, msg, seq, c in records.values():
            try:
                q.requeue(seq, msg)
            except Exception:  # one message must not keep the others from going back
                log.exception("queue '%s' in vhost '%s': a message returned by channel %d could not "
                              "be requeued", q.name, q.vhost_name, self.number)
            touched[q] = None
            if c is not None:
                c.unacked -= 1
                if c.shared is not None:
                    self._release_shared(c.shared)
                touched[c.queue] = None
            n += 1
            if n >= SLICE:
                n = 0
                for tq in touched:
                    dispatch(tq)
                touched.clear()
                yield
        for tq in touched:
            dispatch(tq)  # a single active consumer's successor takes over
        for c in consumers:
            self.commands.consumer_removed(self.vhost, c.queue)
            n += 1
            if n >= SLICE:
                n = 0
                yield

    # -- closing ------------------------------------------------------------------------------------

    def _channel_open(self, m: spec.ChannelOpen) -> None:
        raise ConnectionFault(504, "second 'channel.open' seen", 20, 10)

    def close_for_error(self, err: AMQPError) -> None:
        """Send channel.close for a soft error; drop state now, await close-ok."""
        self.send(spec.ChannelClose(reply_code=err.code, reply_text=err.reply_text,
                                    class_id=err.class_id, method_id=err.method_id))
        self.release()
        self.state = CLOSING

    def release(self) -> None:
        """Cancel consumers and requeue unacked messages (channel closing or connection lost)."""
        self.state = CLOSING
        self.deliverable = False
        self.pub = None
        self.pub_body = []
        if self.ack_watch is not None:
            self.ack_watch.stop()
        consumers, self.consumers = self.consumers, {}
        self._reply_cancel()
        self._tx_restore()  # acked inside an uncommitted transaction: requeued too
        self.tx_publishes = []
        self._teardown(list(consumers.values()), self._take_all())


def _dispatch(q: Queue) -> None:
    """Deliver what a slice of a teardown requeued (outside any connection's input batch)."""
    try:
        q.dispatch()
    except Exception:  # a queue's trouble is not the teardown's (nor the next queue's)
        log.exception("queue '%s' in vhost '%s': dispatch failed", q.name, q.vhost_name)


_HANDLERS: dict[type[spec.Method], Callable[[Channel, Any], None]] = {
    spec.ChannelOpen: Channel._channel_open,
    spec.ChannelFlow: Channel._channel_flow,
    spec.AccessRequest: Channel._access_request,
    spec.ExchangeDeclare: Channel._exchange_declare,
    spec.ExchangeDelete: Channel._exchange_delete,
    spec.ExchangeBind: Channel._exchange_bind,
    spec.ExchangeUnbind: Channel._exchange_unbind,
    spec.QueueDeclare: Channel._queue_declare,
    spec.QueueBind: Channel._queue_bind,
    spec.QueueUnbind: Channel._queue_unbind,
    spec.QueuePurge: Channel._queue_purge,
    spec.QueueDelete: Channel._queue_delete,
    spec.BasicQos: Channel._basic_qos,
    spec.BasicConsume: Channel._basic_consume,
    spec.BasicCancel: Channel._basic_cancel,
    spec.BasicPublish: Channel._basic_publish,
    spec.BasicGet: Channel._basic_get,
    spec.BasicAck: Channel._basic_ack,
    spec.BasicReject: Channel._basic_reject,
    spec.BasicNack: Channel._basic_nack,
    spec.BasicRecover: Channel._basic_recover,
    spec.BasicRecoverAsync: Channel._basic_recover,
    spec.ConfirmSelect: Channel._confirm_select,
    spec.TxSelect: Channel._tx_select,
    spec.TxCommit: Channel._tx_commit,
    spec.TxRollback: Channel._tx_rollback,
}
