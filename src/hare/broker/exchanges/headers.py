"""headers: routes on message header values; the binding's ``x-match`` says how.

``all`` (default) needs every binding argument to match, ``any`` at least one; keys starting
``x-`` are ignored unless ``all-with-x`` / ``any-with-x`` is used. A void (None) binding value
matches when the header is present, whatever its value (RabbitMQ's rule).

Routing reads the message's raw headers once per publish and decodes only the entries some
binding compares (``properties.pick_headers``), so a message with wide headers costs one pass
over its table plus the bindings' arguments, and keeps no decoded copy of its headers.
"""

from __future__ import annotations

from typing import Any

from ...amqp.errors import precondition_failed
from ...amqp.properties import pick_headers
from ...amqp.table import Picker
from ..message import Message
from .base import Exchange, freeze

_MODES = ("all", "any", "all-with-x", "any-with-x")


class HeadersExchange(Exchange):
    type_name = "headers"
    __slots__ = ("rules", "wanted", "key_refs", "picker")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (dest, match_all, [(key, value)]) per binding, keyed like self.bindings
        self.rules: dict[tuple[Any, str, Any], tuple[Any, bool, list[tuple[str, Any]]]] = {}
        # the header names the rules compare, as raw key -> name (for pick_headers), and how
        # many rules compare each
        self.wanted: dict[bytes, str] = {}
        self.key_refs: dict[str, int] = {}
        self.picker: Picker | None = None  # self.wanted prepared, built again after a change

    @classmethod
    def validate_binding(cls, routing_key: str, arguments: dict[str, Any]) -> None:
        mode = arguments.get("x-match", "all")
        if mode not in _MODES:
            shown = f'<<"{mode}">>' if isinstance(mode, str) else repr(mode)  # Erlang's ~p of a binary
            raise precondition_failed(f"Invalid x-match field value {shown}; expected all, any, "
                                      "all-with-x, or any-with-x")

    def _add(self, dest: Any, routing_key: str, arguments: dict[str, Any]) -> None:
        mode = arguments.get("x-match", "all")
        with_x = mode.endswith("-with-x")
        pairs = [(k, v) for k, v in arguments.items()
                 if k != "x-match" and (with_x or not k.startswith("x-"))]
        key = self._key(dest, routing_key, arguments)
        if key in self.rules:  # pragma: no cover - Exchange.bind adds a binding once
            return
        self.rules[key] = (dest, mode.startswith("all"), pairs)
        refs = self.key_refs
        for name, _value in pairs:
            n = refs.get(name, 0)
            refs[name] = n + 1
            raw = _raw_key(name)
            if not n and raw is not None:
                self.wanted[raw] = name
                self.picker = None

    def _remove(self, dest: Any, routing_key: str, arguments: dict[str, Any]) -> None:
        rule = self.rules.pop(self._key(dest, routing_key, arguments), None)
        if rule is None:
            return
        refs = self.key_refs
        for name, _value in rule[2]:
            n = refs[name] - 1
            if n:
                refs[name] = n
            else:
                del refs[name]
                raw = _raw_key(name)
                if raw is not None:
                    del self.wanted[raw]
                    self.picker = None

    @staticmethod
    def _key(dest: Any, routing_key: str, arguments: dict[str, Any]) -> tuple[Any, str, Any]:
        return (dest, routing_key, freeze(arguments))

    def route(self, msg: Message, routing_key: str, out: list[Any]) -> None:
        if not self.rules:
            return
        if self.wanted:
            picker = self.picker
            if picker is None:
                picker = self.picker = Picker(self.wanted)
            headers = pick_headers(msg.properties_raw, picker)
        else:
            headers = {}
        for dest, match_all, pairs in self.rules.values():
            if _matches(headers, match_all, pairs):
                out.append(dest)


_MISSING = object()


def _raw_key(name: str) -> bytes | None:
    """A header name as its octets on the wire; None for one no header can have (a lone
    surrogate that decoding never produces: a definitions file may hold one)."""
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None


def _matches(headers: dict[str, Any], match_all: bool, pairs: list[tuple[str, Any]]) -> bool:
    if match_all:
        for key, want in pairs:
            have = headers.get(key, _MISSING)
            if have is _MISSING or (want is not None and not _equal(have, want)):
                return False
        return True
    for key, want in pairs:
        have = headers.get(key, _MISSING)
        if have is not _MISSING and (want is None or _equal(have, want)):
            return True
    return False


def _equal(a: Any, b: Any) -> bool:
    # bool is an int in Python; AMQP keeps them distinct
    if a == b:
        return isinstance(a, bool) == isinstance(b, bool)
    # RabbitMQ compares a longstr and a byte array ('x') by their bytes
    if isinstance(a, str) and isinstance(b, bytes):
        return a.encode("utf-8", "surrogateescape") == b
    if isinstance(a, bytes) and isinstance(b, str):
        return a == b.encode("utf-8", "surrogateescape")
    return False
