"""The delivery acknowledgement timeout (RabbitMQ's ``consumer_timeout``): a channel that keeps a
delivery unacknowledged for longer than the timeout of the delivery's queue is closed with
406 PRECONDITION_FAILED, and its unacked messages are requeued.

The timeout is the queue's ``x-consumer-timeout`` argument or ``consumer-timeout`` policy key
(the lower of the two), else the broker's ``consumer_timeout`` (30 minutes by default); 0 or
``None`` means no limit. As in RabbitMQ, the oldest unacked delivery of the channel is the one
checked (basic.get deliveries included).

Deliveries are not timestamped: the channel's ``AckWatch`` wakes periodically (a tenth of the
smallest timeout in use, at most every second) while the channel consumes with acks or holds
unacked deliveries, and records a checkpoint (time, last delivery tag). A delivery's tag is at most
the tag of the first checkpoint taken after it, so it has been unacked at least since that
checkpoint's time: the timeout fires between 0 and one check interval late, never early.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

from ..amqp.errors import ChannelError
from ..broker.timers import Timer, now_ms

if TYPE_CHECKING:
    from ..broker.queue import Queue
    from .channel import Channel

log = logging.getLogger("hare.channel")

MAX_INTERVAL = 1000  # ms between checks, at most
MIN_INTERVAL = 10


def queue_timeout(q: Queue, default: int | None) -> int:
    """The acknowledgement timeout (ms) of deliveries from ``q``; 0: none."""
    t = q.settings.consumer_timeout
    if t is None:
        t = default
    return t or 0


class AckWatch:
    """One channel's periodic check of its oldest unacked delivery."""

    __slots__ = ("channel", "timer", "checkpoints")

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.timer: Timer | None = None
        # (time ms, the channel's last delivery tag then), oldest first
        self.checkpoints: deque[tuple[int, int]] = deque()

    def start(self, delivered_now: bool = False) -> None:
        """Make sure the check runs (the channel started a consumer with acks, or took a message
        with basic.get: ``delivered_now``, whose time is then recorded exactly)."""
        if delivered_now:
            now = now_ms()
            cps = self.checkpoints
            tag = self.channel.next_tag
            if not cps or cps[-1][1] != tag:
                cps.append((now, tag))
        if self.timer is None:
            self._schedule()

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.checkpoints.clear()

    def _default(self) -> int | None:
        return self.channel.conn.broker.config.consumer_timeout

    def _schedule(self) -> None:
        """Check again after a tenth of the smallest timeout in use (consumers with acks, the
        oldest unacked delivery); stop when none is in use."""
        ch = self.channel
        default = self._default()
        smallest = 0
        for c in ch.consumers.values():
            if not c.no_ack:
                t = queue_timeout(c.queue, default)
                if t and (not smallest or t < smallest):
                    smallest = t
        if ch.unacked:
            t = queue_timeout(ch.unacked[next(iter(ch.unacked))][0], default)
            if t and (not smallest or t < smallest):
                smallest = t
        if not smallest:
            self.checkpoints.clear()
            return
        interval = max(MIN_INTERVAL, min(MAX_INTERVAL, smallest // 10))
        self.timer = ch.conn.broker.timers.call_at(now_ms() + interval, self._tick)

    def _tick(self, now: int) -> None:
        self.timer = None
        try:
            self._check(now)
        except Exception:  # never let one channel's check stop the broker's other timers
            log.exception("consumer timeout check failed on channel %d", self.channel.number)

    def _check(self, now: int) -> None:
        ch = self.channel
        if ch.conn.channels.get(ch.number) is not ch:  # closed (or closing)
            self.checkpoints.clear()
            return
        unacked = ch.unacked
        cps = self.checkpoints
        if unacked:
            oldest = next(iter(unacked))
            while cps and cps[0][1] < oldest:  # checkpoints taken before it was delivered
                cps.popleft()
            if cps:
                q, _msg, _seq, consumer = unacked[oldest]
                timeout = queue_timeout(q, self._default())
                if timeout and now - cps[0][0] >= timeout:
                    self._timed_out(q, consumer.tag if consumer is not None else None, timeout)
                    return
            if not cps or cps[-1][1] != ch.next_tag:
                cps.append((now, ch.next_tag))
        else:
            cps.clear()
        self._schedule()

    def _timed_out(self, q: Queue, consumer_tag: str | None, timeout: int) -> None:
        ch = self.channel
        conn = ch.conn
        by = f"consumer '{consumer_tag}'" if consumer_tag is not None else "basic.get"
        log.warning(
            "delivery acknowledgement timed out: channel %d of connection %s (user '%s') kept a message "
            "of queue '%s' in vhost '%s' (%s) unacknowledged for more than %d ms; closing the channel "
            "(406 PRECONDITION_FAILED) and requeueing its %d unacked messages. To allow longer, set "
            "'consumer_timeout = MILLISECONDS' (or 'false') in the configuration file, or per queue "
            "the 'x-consumer-timeout' argument or a 'consumer-timeout' policy "
            "(see docs/configuration.md)",
            ch.number, conn.peer, conn.username, q.name, q.vhost_name, by, timeout, len(ch.unacked))
        self.checkpoints.clear()
        # RabbitMQ's text; the error is not caused by a method (class and method 0)
        conn.channel_error(ch, ChannelError(
            406, f"delivery acknowledgement on channel {ch.number} timed out. Timeout value used: "
            f"{timeout} ms. This timeout value can be configured, see consumers doc guide to learn "
            "more"))
