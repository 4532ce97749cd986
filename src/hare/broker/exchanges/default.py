"""The default exchange (""): routes to the queue named by the routing key; takes no bindings."""

from __future__ import annotations

from typing import Any

from ...amqp.errors import access_refused
from ..direct_reply import REPLY_PREFIX, DirectReply
from ..message import Message
from .base import Exchange


class DefaultExchange(Exchange):
    type_name = "direct"
    __slots__ = ("queues", "replies")

    def __init__(self, queues: dict[str, Any], vhost_name: str = "/",
                 replies: DirectReply | None = None) -> None:
        super().__init__("", durable=True, vhost_name=vhost_name)
        self.queues = queues  # the virtual host's queues by name
        self.replies = replies if replies is not None else DirectReply()  # direct reply-to

    def bind(self, dest: Any, routing_key: str, arguments: dict[str, Any] | None) -> bool:
        raise access_refused("operation not permitted on the default exchange")

    unbind = bind

    def route(self, msg: Message, routing_key: str, out: list[Any]) -> None:
        q = self.queues.get(routing_key)
        if q is not None:
            out.append(q)
        elif routing_key.startswith(REPLY_PREFIX):  # (no queue has such a name: 'amq.' is reserved)
            self.replies.deliver(routing_key, msg)  # straight to the requester, as RabbitMQ: no queue
