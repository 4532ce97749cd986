"""The publish side of a channel: basic.publish (checks, routing, enqueueing), publisher confirms
and transactions.

``Publishing`` is a part of ``Channel`` (its base class), kept in its own module so that the
per-message publish path reads in one place. It uses the channel's state and its ``send``,
``_send_content``, ``settle`` and ``_tx_restore``; it holds no state of its own.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from typing import TYPE_CHECKING, Any

from ..amqp import properties as props_codec
from ..amqp import spec
from ..amqp.errors import (
    AMQPError,
    ChannelError,
    ConnectionFault,
    SyntaxFault,
    access_refused,
    not_found,
    precondition_failed,
)
from ..auth.permissions import WRITE
from ..broker.deadletter import cc_keys
from ..broker.direct_reply import REPLY_QUEUE
from ..broker.expiration import expiration_error
from ..broker.message import Message
from ..broker.queue import REJECTED_PUBLISH, REPLICATED, THROTTLE, Queue

if TYPE_CHECKING:
    from ..auth.permissions import Access
    from ..broker.direct_reply import ReplyConsumer
    from ..broker.vhost import VirtualHost
    from .connection import Connection

log = logging.getLogger("hare.channel")

_pack_return_head = struct.Struct(">HHH").pack  # class, method, reply code
# reply_to amq.rabbitmq.reply-to (direct reply-to) as a shortstr, to look for in raw properties
_REPLY_TO_RAW = bytes((len(REPLY_QUEUE),)) + REPLY_QUEUE.encode()

# a basic.publish awaiting its content: (exchange, routing key, both as shortstrs, mandatory,
# immediate)
Publish = tuple[str, str, bytes, bool, bool]

MAX_MSG_SIZE = 512 * 1024 * 1024  # RabbitMQ's cap on max_message_size
OPEN, CLOSING = 1, 2  # the states of a Channel


class Publishing:
    __slots__ = ()
    # the channel's state used here (slots of Channel)
    conn: Connection
    number: int
    vhost: VirtualHost
    access: Access
    state: int
    max_size: int
    reply: ReplyConsumer | None
    pub: Publish | None
    pub_size: int
    unacked: dict[int, Any]
    confirm: bool
    publish_seq: int
    confirmed_upto: int
    queued_upto: int
    sync_upto: int
    sync_waits: int
    heavy_upto: int
    heavy_waits: int
    nacks: list[int]
    replicated: ReplicatedConfirms | None
    tx: bool
    tx_publishes: list[tuple[Message, list[str], bool]]
    tx_acks: list[Any]
    tx_taken: list[Any]

    if TYPE_CHECKING:  # the channel's methods used here
        def send(self, method: spec.Method) -> None: ...
        def _send_content(self, method_payload: bytes, msg: Message) -> None: ...
        def settle(self, tag: int, multiple: bool, requeue: bool | None) -> None: ...
        def _tx_restore(self) -> None: ...

    # -- basic class: publish ------------------------------------------------------------------------

    def _basic_publish(self, m: spec.BasicPublish) -> None:
        # The connection's frame loop parses basic.publish itself (see Connection._frames);
        # this generic path is kept for completeness. The method is acted on once its
        # content has arrived.
        ex = m.exchange.encode("utf-8", "surrogateescape")
        rk = m.routing_key.encode("utf-8", "surrogateescape")
        self.pub = (m.exchange, m.routing_key, bytes((len(ex),)) + ex + bytes((len(rk),)) + rk,
                    m.mandatory, m.immediate)
        self.pub_size = -1

    def publish(self, m: Publish, props_raw: bytes, body: bytes) -> None:
        """A whole message has arrived: route it, store it, confirm it."""
        conn = self.conn
        if conn.broker.alarms and not conn.alarm_paused:  # (a body completed during an alarm)
            conn.publish_blocked()
        try:
            ex = self._check_publish(m, props_raw, len(body))
            msg = Message(m[0], m[1], props_raw, body, m[2])
            if props_raw[0] & 0x22:  # headers or reply_to: CC/BCC, direct reply-to
                queues, msg = self._route(ex, msg)
            else:
                queues = self.vhost.route(ex, msg)
            if self.tx:
                self.tx_publishes.append((msg, [q.name for q in queues], m[3]))
                return
        except AMQPError as err:
            if not err.class_id and err.code != 541:  # (541: RabbitMQ's crash names no method)
                err.class_id, err.method_id = 60, 40
            raise
        self._enqueue(msg, queues, m[3])

    def refuse_oversize(self, m: Publish, size: int) -> None:
        """A publish whose body (not kept) was over max_message_size is complete: the answer
        _check_publish gives it."""
        if self.conn.broker.alarms and not self.conn.alarm_paused:
            self.conn.publish_blocked()
        err = ConnectionFault(540, "immediate=true") if m[4] else precondition_failed(
            self._size_error(size))
        err.class_id, err.method_id = 60, 40
        raise err

    def _check_publish(self, m: Publish, props_raw: bytes, size: int) -> Any:
        """RabbitMQ's checks, in its order: immediate, size, exchange, internal, then those of
        _check_properties."""
        if m[4]:
            raise ConnectionFault(540, "immediate=true", 60, 40)
        if size > self.max_size:
            raise precondition_failed(self._size_error(size))
        access = self.access
        if m[0] not in access.write_exchanges:
            access.check_publish(m[0])
        ex = self.vhost.exchanges.get(m[0])
        if ex is None:
            raise not_found(f"no exchange '{m[0]}' in vhost '{self.vhost.name}'")
        if ex.internal:
            raise access_refused(f"cannot publish to internal exchange '{m[0]}' in vhost "
                                 f"'{self.vhost.name}'")
        if access.topics is not None and ex.type_name == "topic":
            access.check_topic(WRITE, m[0], m[1])
        if props_raw[0] & 0x20:  # headers (flag bit 13): RabbitMQ decodes the properties here
            self._check_headers(props_raw)
        if props_raw[0] & 0x03 or props_raw[1] & 0x10:
            self._check_properties(props_raw)
        return ex

    def _check_headers(self, props_raw: bytes) -> None:
        """Headers that do not parse (an unknown type tag, a length past its table): RabbitMQ's
        channel crashes decoding them and the connection gets 541 INTERNAL_ERROR, class and
        method 0. hare answers the same, so no such message is ever stored."""
        try:
            props_codec.check_headers(props_raw)
        except SyntaxFault as exc:
            log.warning("connection %s, channel %s: a publish's headers do not parse (%s); closing "
                        "the connection with 541 INTERNAL_ERROR, as RabbitMQ does", self.conn.name,
                        self.number, exc.text)
            raise ConnectionFault(541, "") from exc

    def _check_properties(self, props_raw: bytes) -> None:
        """The checks of a publish's properties, in RabbitMQ's order: reply-to, user-id, expiration
        (called only when one of those is present)."""
        # reply_to amq.rabbitmq.reply-to (flag bit 9) needs this channel's reply consumer
        if props_raw[0] & 0x02 and self.reply is None and _REPLY_TO_RAW in props_raw:
            if props_codec.reply_to(props_raw) == REPLY_QUEUE:
                raise precondition_failed("fast reply consumer does not exist")
        # user-id present (flag bit 4) must name the authenticated user
        if props_raw[1] & 0x10 and props_codec.user_id(props_raw) != self.conn.username:
            self._check_impersonator(props_raw)
        if props_raw[0] & 0x01:  # expiration present (flag bit 8)
            err = expiration_error(props_codec.expiration(props_raw) or b"")
            if err is not None:
                raise precondition_failed(err)

    def _size_error(self, size: int) -> str:
        if self.max_size == MAX_MSG_SIZE:
            return f"message size {size} is larger than max size {MAX_MSG_SIZE}"
        return f"message size {size} is larger than configured max size {self.max_size}"

    def _check_impersonator(self, props_raw: bytes) -> None:
        """A user-id naming someone else: only a user with the impersonator tag may do that."""
        name = self.conn.username
        user = self.conn.broker.users.users.get(name)
        if user is None or "impersonator" not in user.tags:
            raise precondition_failed(f"user_id property set to '{props_codec.user_id(props_raw)}' "
                                      f"but authenticated user was '{name}'")

    def _route(self, ex: Any, msg: Message) -> tuple[list[Queue], Message]:
        """The queues of a publish; CC and BCC headers add routing keys (sender-selected
        distribution), and BCC is removed from the message the queues get."""
        raw = msg.properties_raw
        if not raw[0] & 0x22:  # neither headers nor reply_to: the common case
            return self.vhost.route(ex, msg), msg
        if raw[0] & 0x02 and _REPLY_TO_RAW in raw:  # reply_to present (flag bit 9)
            msg = self._set_reply_to(msg)
            raw = msg.properties_raw
        if not (raw[0] & 0x20 and (b"\x02CC" in raw or b"\x03BCC" in raw)):
            return self.vhost.route(ex, msg), msg
        headers = msg.headers
        keys = [msg.routing_key, *cc_keys(headers), *cc_keys(headers, "BCC")]
        if "BCC" in headers:
            props = dict(msg.properties)
            props["headers"] = {k: v for k, v in headers.items() if k != "BCC"}
            msg = msg.with_properties(props)
        return self.vhost.route(ex, msg, keys), msg

    def _set_reply_to(self, msg: Message) -> Message:
        """Direct reply-to: reply_to amq.rabbitmq.reply-to becomes this channel's reply name (the
        channel has a reply consumer: _check_publish refused the message otherwise)."""
        raw = msg.properties_raw
        if self.reply is None or props_codec.reply_to(raw) != REPLY_QUEUE:
            return msg
        return Message(msg.exchange, msg.routing_key, props_codec.with_reply_to(raw, self.reply.name),
                       msg.body, msg.route_bytes)

    def _enqueue(self, msg: Message, queues: list[Queue], mandatory: bool) -> None:
        """Hand a routed message to its queues (or return it), then count it for confirms."""
        rejected = False
        if queues:
            for q in queues:
                r = q.publish(msg)
                if r:
                    if r & THROTTLE:
                        self.conn.throttle(q)
                    if r & REJECTED_PUBLISH:
                        rejected = True
                    if r & REPLICATED and self.confirm:
                        (self.replicated or self._replicated()).touched.add(q.replica.confirm_source)
        elif mandatory:
            self._send_content(_pack_return_head(60, 50, 312) + b"\x08NO_ROUTE" + msg.route_bytes, msg)
        if self.confirm:
            seq = self.publish_seq = self.publish_seq + 1
            if rejected:
                self.nacks.append(seq)  # a queue refused it (x-overflow reject-publish)
            if msg.needs_sync:
                self.sync_upto = seq
                if msg.needs_sync > 1:  # (in a heavy log)
                    self.heavy_upto = seq
            self.conn.confirms_pending(self)

    def flush_confirms(self) -> None:
        """End of an input batch: confirm everything published in it with one ack (multiple).
        When a message of the batch went to a durable queue's log, the confirms wait for the
        store's next sync (group commit); later batches queue behind, so confirms stay in order."""
        upto = self.publish_seq
        if upto == self.queued_upto:
            return
        replicated = self.replicated
        if replicated is not None and (replicated.touched or replicated.fifo):
            store = self.conn.broker.store
            sync = store if store is not None and (self.sync_upto > self.queued_upto or self.sync_waits) \
                else None
            heavy = self.heavy_upto > self.queued_upto or self.heavy_waits > 0
            self.queued_upto = upto
            replicated.add(upto, sync, heavy)
            return
        if self.sync_upto > self.queued_upto or self.sync_waits:
            store = self.conn.broker.store
            assert store is not None
            # a batch waits for the heavy lane too when one of its messages is in a heavy log, or
            # when an earlier batch does (confirms stay in order)
            heavy = self.heavy_upto > self.queued_upto or self.heavy_waits > 0
            self.queued_upto = upto
            self.sync_waits += 1
            if heavy:
                self.heavy_waits += 1
            store.after_sync(lambda: self._synced_confirms(upto, heavy),
                             lambda _exc: self._failed_confirms(upto, heavy), heavy)
            return
        self.queued_upto = upto
        self._send_confirms(upto)

    def _replicated(self) -> ReplicatedConfirms:
        self.replicated = ReplicatedConfirms(self)
        return self.replicated

    def replicated_confirms(self, upto: int, failed: bool) -> None:
        """A batch that waited for replication (and the store) is through, in order."""
        if self.state != OPEN:
            return
        if failed:
            if self.nacks:
                self.nacks = [t for t in self.nacks if t > upto]
            lo = self.confirmed_upto
            self.send(spec.BasicNack(delivery_tag=upto, multiple=upto > lo + 1, requeue=False))
            self.confirmed_upto = upto
        else:
            self._send_confirms(upto)

    def _synced_confirms(self, upto: int, heavy: bool) -> None:
        self.sync_waits -= 1
        if heavy:
            self.heavy_waits -= 1
        if self.state == OPEN:
            self._send_confirms(upto)

    def _failed_confirms(self, upto: int, heavy: bool) -> None:
        """The sync they waited for failed: nack the batch (the publisher may publish again)."""
        self.sync_waits -= 1
        if heavy:
            self.heavy_waits -= 1
        if self.state == OPEN:
            if self.nacks:
                self.nacks = [t for t in self.nacks if t > upto]
            lo = self.confirmed_upto
            self.send(spec.BasicNack(delivery_tag=upto, multiple=upto > lo + 1, requeue=False))
            self.confirmed_upto = upto

    def _send_confirms(self, upto: int) -> None:
        start = self.confirmed_upto
        tags = sorted(t for t in self.nacks if t <= upto) if self.nacks else ()
        if tags:
            self.nacks = [t for t in self.nacks if t > upto]
        lo = start
        for t in tags:
            if t - 1 > lo:
                self.send(spec.BasicAck(delivery_tag=t - 1, multiple=t - 1 > lo + 1))
            self.send(spec.BasicNack(delivery_tag=t, multiple=False, requeue=False))
            lo = t
        if upto > lo:
            self.send(spec.BasicAck(delivery_tag=upto, multiple=upto > lo + 1))
        self.confirmed_upto = upto

    # -- confirm and tx classes ---------------------------------------------------------------------

    def _confirm_select(self, m: spec.ConfirmSelect) -> None:
        if self.tx:
            raise precondition_failed("cannot switch from tx to confirm mode")
        self.confirm = True
        if not m.nowait:
            self.send(spec.ConfirmSelectOk())

    def _tx_select(self, m: spec.TxSelect) -> None:
        if self.confirm:
            raise precondition_failed("cannot switch from confirm to tx mode")
        self.tx = True
        self.send(spec.TxSelectOk())

    def _tx_commit(self, m: spec.TxCommit) -> None:
        if not self.tx:
            raise precondition_failed("channel is not transactional")
        publishes, self.tx_publishes = self.tx_publishes, []
        acks, self.tx_acks = self.tx_acks, []
        taken, self.tx_taken = self.tx_taken, []
        # Publishes first (to the queues they were routed to, those that still exist; mandatory
        # ones that reach none come back now, before commit-ok), then the acks, as RabbitMQ does.
        queues = self.vhost.queues
        for msg, names, mandatory in publishes:
            routed = False
            for name in names:
                q = queues.get(name)
                if q is not None:
                    routed = True
                    if q.publish(msg) & THROTTLE:
                        self.conn.throttle(q)
            if not routed and mandatory:
                self._send_content(_pack_return_head(60, 50, 312) + b"\x08NO_ROUTE" + msg.route_bytes,
                                   msg)
        unacked = self.unacked
        for (kind, _tag, _multiple, requeue), group in zip(acks, taken, strict=True):
            for tag, rec in group:
                unacked[tag] = rec
                self.settle(tag, False, None if kind == 0 else requeue)
        store = self.conn.broker.store
        if store is not None and any(msg.needs_sync for msg, _, _ in publishes):
            store.after_sync(self._commit_ok, self._commit_failed)  # committed = on stable storage
        else:
            self.send(spec.TxCommitOk())

    def _commit_ok(self) -> None:
        if self.state == OPEN:
            self.send(spec.TxCommitOk())

    def _commit_failed(self, exc: OSError) -> None:
        if self.state == OPEN:
            self.conn.channel_error(self, ChannelError(  # type: ignore[arg-type]  (self: a Channel)
                541, f"the message store cannot sync to disk ({exc}): the "
                "transaction's messages may not be on disk", 90, 20))

    def _tx_rollback(self, m: spec.TxRollback) -> None:
        if not self.tx:
            raise precondition_failed("channel is not transactional")
        self.tx_publishes.clear()
        self.tx_acks.clear()
        self._tx_restore()
        self.send(spec.TxRollbackOk())


class ReplicatedConfirms:
    """A channel's confirm batches once it has published to a replicated queue: each waits for
    the store's sync (when it needs one), for the followers of every replicated queue it
    published to (``LeaderLog.barrier``) and for the nodes it forwarded to (``OutLink.barrier``);
    they are released in order, later batches behind."""

    __slots__ = ("channel", "touched", "fifo")

    def __init__(self, channel: Publishing) -> None:
        self.channel = channel
        self.touched: set[Any] = set()  # the LeaderLogs of the batch being published
        self.fifo: deque[list[Any]] = deque()  # [upto, conditions left, failed]

    def add(self, upto: int, store: Any, heavy: bool, failed: bool = False) -> None:
        logs, self.touched = self.touched, set()
        entry = [upto, 1 + len(logs), failed]
        self.fifo.append(entry)

        def done() -> None:
            self._done(entry, False)

        if store is not None:
            store.after_sync(done, lambda _exc: self._done(entry, True), heavy)
        else:
            done()
        for log in logs:
            log.barrier(done, lambda: self._done(entry, True))

    def _done(self, entry: list[Any], failed: bool) -> None:
        entry[1] -= 1
        entry[2] = entry[2] or failed
        fifo = self.fifo
        while fifo and fifo[0][1] <= 0:
            upto, _, failed_ = fifo.popleft()
            self.channel.replicated_confirms(upto, failed_)
