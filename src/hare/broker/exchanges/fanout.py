"""fanout: routes to every bound destination, whatever the routing key."""

from __future__ import annotations

from typing import Any

from ..message import Message
from .base import Exchange


class FanoutExchange(Exchange):
    type_name = "fanout"
    __slots__ = ("dests",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dests: dict[Any, int] = {}  # destination -> number of bindings to it

    def _add(self, dest: Any, routing_key: str, arguments: dict[str, Any]) -> None:
        self.dests[dest] = self.dests.get(dest, 0) + 1

    def _remove(self, dest: Any, routing_key: str, arguments: dict[str, Any]) -> None:
        n = self.dests.get(dest, 0)
        if n > 1:
            self.dests[dest] = n - 1
        else:
            self.dests.pop(dest, None)

    def route(self, msg: Message, routing_key: str, out: list[Any]) -> None:
        out.extend(self.dests)
