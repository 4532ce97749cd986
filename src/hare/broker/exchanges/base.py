"""The exchange interface: every type keeps its bindings and routes a message to destinations.

A destination is a queue or (exchange-to-exchange binding) another exchange; the virtual host
follows exchange destinations. One module per type, as RabbitMQ's exchange type behaviours.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from ..message import Message


def freeze(value: Any) -> Hashable:
    """A hashable stand-in for a field-table value, for binding identity."""
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return ("__list__",) + tuple(freeze(v) for v in value)
    return (type(value).__name__, value) if isinstance(value, bool) else value


class Exchange:
    """Base class; subclasses implement _add, _remove and route."""

    type_name = ""

    __slots__ = ("name", "durable", "auto_delete", "internal", "arguments", "bindings", "vhost_name",
                 "alternate_exchange")

    def __init__(self, name: str, durable: bool = False, auto_delete: bool = False,
                 internal: bool = False, arguments: dict[str, Any] | None = None,
                 vhost_name: str = "/") -> None:
        self.name = name
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = arguments or {}
        self.vhost_name = vhost_name
        # the effective alternate exchange: the argument, else the policy's (VirtualHost sets it)
        self.alternate_exchange: str | None = self.arguments.get("alternate-exchange")
        # (destination, routing key, frozen arguments) -> arguments
        self.bindings: dict[tuple[Any, str, Hashable], dict[str, Any]] = {}

    @classmethod
    def validate_binding(cls, routing_key: str, arguments: dict[str, Any]) -> None:
        """Raise a ChannelError when a binding's arguments are not valid for this type."""

    def bind(self, dest: Any, routing_key: str, arguments: dict[str, Any] | None) -> bool:
        args = arguments or {}
        key = (dest, routing_key, freeze(args))
        if key in self.bindings:
            return False
        self.bindings[key] = args
        self._add(dest, routing_key, args)
        return True

    def unbind(self, dest: Any, routing_key: str, arguments: dict[str, Any] | None) -> bool:
        args = arguments or {}
        key = (dest, routing_key, freeze(args))
        if key not in self.bindings:
            return False
        del self.bindings[key]
        self._remove(dest, routing_key, args)
        return True

    def has_binding(self, dest: Any, routing_key: str, arguments: dict[str, Any] | None) -> bool:
        return (dest, routing_key, freeze(arguments or {})) in self.bindings

    def remove_destination(self, dest: Any) -> int:
        """Drop every binding to ``dest`` (a deleted queue or exchange); return how many."""
        keys = [k for k in self.bindings if k[0] is dest]
        for key in keys:
            args = self.bindings.pop(key)
            self._remove(dest, key[1], args)
        return len(keys)

    def _add(self, dest: Any, routing_key: str, arguments: dict[str, Any]) -> None:
        raise NotImplementedError

    def _remove(self, dest: Any, routing_key: str, arguments: dict[str, Any]) -> None:
        raise NotImplementedError

    def route(self, msg: Message, routing_key: str, out: list[Any]) -> None:
        """Append the destinations of ``msg`` to ``out`` (duplicates allowed)."""
        raise NotImplementedError

    def attach(self, vhost: Any, recovered: bool = False) -> None:
        """The virtual host took the exchange (declared, or ``recovered`` at startup): a type that
        keeps messages (x-delayed-message) opens its store here."""

    def detach(self) -> None:
        """The exchange is deleted: free what it holds."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
