"""A consumer of a queue, and the delivery interface a session channel offers the broker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .message import Message
    from .queue import Queue


class DeliveryTarget(Protocol):
    """What a queue needs of the channel behind a consumer (implemented by session.Channel)."""

    deliverable: bool  # channel flow is on and the connection's output is not backed up

    def deliver(self, consumer: Consumer, msg: Message, seq: int, redelivered: bool) -> None: ...

    def consumer_cancelled(self, consumer: Consumer) -> None: ...

    def deliver_reply(self, msg: Message) -> None: ...  # a direct reply-to reply (direct_reply.py)


class PrefetchLimit:
    """A shared prefetch window: basic.qos with global=true covers all of a channel's consumers."""

    __slots__ = ("prefetch", "unacked")

    def __init__(self, prefetch: int = 0) -> None:
        self.prefetch = prefetch
        self.unacked = 0


class Consumer:
    __slots__ = ("tag", "tag_bytes", "queue", "target", "no_ack", "exclusive", "priority",
                 "arguments", "prefetch", "unacked", "shared")

    def __init__(self, tag: str, queue: Queue, target: DeliveryTarget, no_ack: bool = False,
                 exclusive: bool = False, priority: int = 0, arguments: dict[str, Any] | None = None,
                 prefetch: int = 0, shared: PrefetchLimit | None = None) -> None:
        self.tag = tag
        tb = tag.encode("utf-8", "surrogateescape")
        self.tag_bytes = bytes((len(tb),)) + tb  # as a shortstr, ready for basic.deliver
        self.queue = queue
        self.target = target
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.priority = priority
        self.arguments = arguments or {}
        self.prefetch = prefetch  # 0: unlimited
        self.unacked = 0
        self.shared = shared  # the channel's global prefetch window, if any

    def ready(self) -> bool:
        if not self.target.deliverable:
            return False
        if self.no_ack:
            return True
        if self.prefetch and self.unacked >= self.prefetch:
            return False
        shared = self.shared
        return shared is None or not shared.prefetch or shared.unacked < shared.prefetch

    def __repr__(self) -> str:
        return f"<Consumer {self.tag!r} on {self.queue.name!r}>"
