"""A published message: routing info, raw content-header properties and body.

The properties stay as the bytes the publisher sent; they are decoded lazily, only when a feature
needs one (headers exchange, persistence, TTL), and re-sent unchanged on delivery. The decoded
properties are not kept: a stored message costs its raw bytes only (wide headers decoded into
dicts take several times their size), so each use decodes them again.
"""

from __future__ import annotations

from typing import Any

from ..amqp import properties as _props

# what a kept message costs beside its body and property bytes (the object, its route bytes, the
# entry that holds it in a queue or among a channel's unacked deliveries), so that empty messages
# are not free to the memory bounds that count ``Message.size``
OVERHEAD = 512


class Message:
    __slots__ = ("exchange", "routing_key", "properties_raw", "body", "route_bytes",
                 "_persistent", "needs_sync", "size")

    def __init__(self, exchange: str, routing_key: str, properties_raw: bytes, body: bytes,
                 route_bytes: bytes | None = None, persistent: bool | None = None) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.properties_raw = properties_raw
        self.body = body
        self.size = len(body) + len(properties_raw) + OVERHEAD  # what keeping it costs, about
        # exchange + routing key as two shortstrs, ready for basic.deliver / get-ok / return
        if route_bytes is None:
            ex = exchange.encode("utf-8", "surrogateescape")
            rk = routing_key.encode("utf-8", "surrogateescape")
            route_bytes = bytes((len(ex),)) + ex + bytes((len(rk),)) + rk
        self.route_bytes = route_bytes
        self._persistent = persistent  # None: not looked at yet
        # written to a durable queue's log: confirm it once synced (2, paged.HEAVY_SYNC: by both lanes)
        self.needs_sync: bool | int = False

    @property
    def properties(self) -> dict[str, Any]:
        """The decoded properties, a new dict at each call (not cached: see the module's doc)."""
        return _props.decode_properties(self.properties_raw)

    @property
    def headers(self) -> dict[str, Any]:
        """The decoded headers, decoded at each call: take them once per use."""
        if not self.properties_raw[0] & 0x20:  # headers flag is bit 13 (high byte 0x20)
            return {}
        return self.properties.get("headers") or {}

    @property
    def persistent(self) -> bool:
        """delivery_mode == 2, read from the raw properties once."""
        p = self._persistent
        if p is None:
            p = self._persistent = _props.delivery_mode(self.properties_raw) == 2
        return p

    @property
    def expiration(self) -> int | None:
        """The per-message TTL in ms (the expiration property), or None. (The channel refused
        invalid values at publish; a message read back from disk was valid when published.)"""
        if not self.properties_raw[0] & 0x01:
            return None
        raw = _props.expiration(self.properties_raw)
        try:
            return max(0, int(raw)) if raw is not None else None
        except ValueError:
            return None

    def with_properties(self, properties: dict[str, Any], exchange: str | None = None,
                        routing_key: str | None = None) -> Message:
        """A copy with other properties (re-encoded) and, optionally, another exchange and routing
        key: for the rare paths that change a message (dead-lettering, reply-to, headers)."""
        return Message(self.exchange if exchange is None else exchange,
                       self.routing_key if routing_key is None else routing_key,
                       _props.encode_properties(properties), self.body, None, self._persistent)

    def rerouted(self, exchange: str, routing_key: str) -> Message:
        """A copy with another exchange and routing key, its property bytes unchanged."""
        return Message(exchange, routing_key, self.properties_raw, self.body, None, self._persistent)

    @property
    def body_size(self) -> int:
        return len(self.body)

    def __repr__(self) -> str:
        return f"Message({self.exchange!r}, {self.routing_key!r}, {len(self.body)} bytes)"
