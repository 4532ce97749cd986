"""direct: routes to the destinations bound with exactly the message's routing key."""

from __future__ import annotations

from typing import Any

from ..message import Message
from .base import Exchange


class DirectExchange(Exchange):
    type_name = "direct"
    __slots__ = ("table",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # routing key -> destinations (an insertion-ordered set; count of bindings per dest)
        self.table: dict[str, dict[Any, int]] = {}

    def _add(self, dest: Any, routing_key: str, arguments: dict[str, Any]) -> None:
        dests = self.table.setdefault(routing_key, {})
        dests[dest] = dests.get(dest, 0) + 1

    def _remove(self, dest: Any, routing_key: str, arguments: dict[str, Any]) -> None:
        dests = self.table.get(routing_key)
        if dests is None or dest not in dests:
            return
        if dests[dest] > 1:
            dests[dest] -= 1
        else:
            del dests[dest]
            if not dests:
                del self.table[routing_key]

    def route(self, msg: Message, routing_key: str, out: list[Any]) -> None:
        dests = self.table.get(routing_key)
        if dests:
            out.extend(dests)
