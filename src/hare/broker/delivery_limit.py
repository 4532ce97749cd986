"""Delivery limits (``x-delivery-limit`` / policy ``delivery-limit``), as RabbitMQ's quorum queues.

A queue with a limit counts how often each message came back (nack or reject with requeue, its
channel or connection closing, basic.recover). A message that comes back more often than the
limit is dead-lettered with reason ``delivery_limit`` (or dropped) instead of being requeued.
A redelivered message carries an ``x-delivery-count`` header (a long): the number of times it
came back. As in RabbitMQ 3.10, a first delivery to a consumer is left as published (with any
such header the publisher set), while basic.get shows ``x-delivery-count: 0``.

``DeliveryCounter`` wraps the queue's store only while the queue has a limit, so queues without
one pay nothing: it keeps the count and the message as stored (without the header, which is
what is requeued and dead-lettered) of each delivered, unacked message, and the counts of those
that came back and wait in the queue again. Counts live in memory: after a restart a message
starts again from 0. A message that comes back returns to its place in the queue, as in a
classic queue (a quorum queue serves returned messages first, in the order they came back).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..amqp.table import Long
from ..store.base import pop_and_drop
from .deadletter import DELIVERY_LIMIT, dead_letter

if TYPE_CHECKING:
    from ..store.base import QueueStore
    from ..store.paged import Expiry
    from .message import Message
    from .queue import Queue

log = logging.getLogger("hare.queue")

HEADER = "x-delivery-count"


def with_delivery_count(msg: Message, count: int) -> Message:
    """A copy of ``msg`` with the ``x-delivery-count`` header (re-encoded properties)."""
    props = dict(msg.properties)
    headers = dict(props.get("headers") or {})
    headers.pop(HEADER, None)  # (re)added last, as RabbitMQ does
    headers[HEADER] = Long(count)
    props["headers"] = headers
    return msg.with_properties(props)


def _counted(queue: Queue, msg: Message, count: int) -> Message:
    """``msg`` with its x-delivery-count, or, when its properties do not decode, as it was stored
    (logged): a delivery never fails for the header."""
    try:
        return with_delivery_count(msg, count)
    except Exception as exc:
        log.error("queue '%s' in vhost '%s': cannot add x-delivery-count %d to a message (%s): "
                  "delivered with its properties as published", queue.name, queue.vhost_name, count,
                  exc)
        return msg


class DeliveryCounter:
    """A queue's store, counting the returns of each message (see the module's docstring)."""

    __slots__ = ("inner", "queue", "limit", "out", "back")

    def __init__(self, inner: QueueStore, queue: Queue, limit: int) -> None:
        self.inner = inner
        self.queue = queue
        self.limit = limit
        self.out: dict[int, tuple[int, Message]] = {}  # delivered: seq -> (returns, stored message)
        self.back: dict[int, int] = {}  # came back, ready again: seq -> returns

    @property
    def expiry(self) -> Expiry | None:
        return self.inner.expiry

    @expiry.setter
    def expiry(self, fn: Expiry | None) -> None:
        self.inner.expiry = fn

    @property
    def ready_bytes(self) -> int:
        return self.inner.ready_bytes

    def original(self, seq: int, msg: Message) -> Message:
        """The message as stored (without the header) of a delivered ``msg``."""
        rec = self.out.get(seq)
        return msg if rec is None else rec[1]

    def push(self, msg: Message, expires_at: int = 0) -> None:
        self.inner.push(msg, expires_at)

    def pop(self) -> tuple[Message, int, bool, int] | None:
        entry = self.inner.pop()
        if entry is None:
            return None
        msg, seq, redelivered, exp = entry
        count = self.back.pop(seq, 0) if self.back else 0
        self.out[seq] = (count, msg)
        return (_counted(self.queue, msg, count) if count else msg), seq, redelivered, exp

    def got(self, seq: int, msg: Message) -> Message:
        """The copy basic.get hands out of a message just popped: with the header even at 0."""
        rec = self.out.get(seq)
        return _counted(self.queue, msg, 0) if rec is not None and not rec[0] else msg

    def drop_head(self) -> bool:
        return pop_and_drop(self)

    def head_expiry(self) -> int:
        return self.inner.head_expiry()

    def requeue(self, seq: int, msg: Message, expires_at: int = 0) -> None:
        rec = self.out.pop(seq, None)
        if rec is None:  # delivered before the queue had a limit
            self.inner.requeue(seq, msg, expires_at)
            return
        count, stored = rec
        count += 1
        if count > self.limit:
            dead_letter(self.queue, stored, DELIVERY_LIMIT)
            self.inner.ack(seq, stored)
            return
        self.back[seq] = count
        self.inner.requeue(seq, stored, expires_at)

    def ack(self, seq: int, msg: Message) -> None:
        if self.out:
            self.out.pop(seq, None)
        self.inner.ack(seq, msg)

    def purge(self) -> int:
        self.back.clear()
        return self.inner.purge()

    def close(self) -> None:
        self.inner.close()

    def destroy(self) -> None:
        self.out.clear()
        self.back.clear()
        self.inner.destroy()

    def __len__(self) -> int:
        return len(self.inner)
