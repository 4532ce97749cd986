"""Direct reply-to (RabbitMQ's ``amq.rabbitmq.reply-to``): RPC replies without a reply queue.

A channel that consumes from the pseudo-queue ``amq.rabbitmq.reply-to`` (no-ack only) gets a name
of its own here, ``amq.rabbitmq.reply-to.<channel id>.<key>``; the requests it publishes with
reply_to ``amq.rabbitmq.reply-to`` carry that name instead. A reply published to the default
exchange with that name as routing key is handed straight to the channel (``DefaultExchange.route``
calls ``deliver``): it reaches no queue, so, as in RabbitMQ 3.10, the publish counts as unroutable
(a mandatory one comes back with 312 NO_ROUTE even though it was delivered, a confirm is an ack).
A reply for a channel or reply consumer that is gone is dropped.

The channel id (like the Erlang pid in RabbitMQ's names) is unique among the channels of the
registry; the key, 16 random octets, is new for every reply consumer and makes names unguessable.
"""

from __future__ import annotations

import base64
import itertools
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .consumer import DeliveryTarget
    from .message import Message

REPLY_QUEUE = "amq.rabbitmq.reply-to"
REPLY_PREFIX = REPLY_QUEUE + "."


class ReplyConsumer:
    """A channel's consumer of ``amq.rabbitmq.reply-to``: its tag and the name replies go to."""

    __slots__ = ("tag", "tag_bytes", "name")

    def __init__(self, tag: str, name: str) -> None:
        self.tag = tag
        tb = tag.encode("utf-8", "surrogateescape")
        self.tag_bytes = bytes((len(tb),)) + tb  # as a shortstr, ready for basic.deliver
        self.name = name


class DirectReply:
    """The reply consumers of a virtual host, by the name replies are published to."""

    __slots__ = ("targets", "_salt", "_ids")

    def __init__(self) -> None:
        self.targets: dict[str, DeliveryTarget] = {}
        self._salt = os.urandom(6)
        self._ids = itertools.count(1)

    def channel_id(self) -> str:
        """A new channel id: never the same twice in this registry."""
        return base64.b64encode(self._salt + next(self._ids).to_bytes(6, "big")).decode()

    def register(self, target: DeliveryTarget, channel_id: str) -> str:
        """A new reply name for ``target``'s reply consumer."""
        while True:
            name = f"{REPLY_PREFIX}{channel_id}.{base64.b64encode(os.urandom(16)).decode()}"
            if name not in self.targets:
                self.targets[name] = target
                return name

    def unregister(self, name: str) -> None:
        self.targets.pop(name, None)

    def exists(self, name: str) -> bool:
        return name in self.targets

    def deliver(self, name: str, msg: Message) -> None:
        """A message published to the default exchange with routing key ``name`` (which starts
        with ``amq.rabbitmq.reply-to.``): to the reply consumer of that name, if there is one."""
        target = self.targets.get(name)
        if target is not None:
            target.deliver_reply(msg)
