"""x-delayed-message: the exchange type of RabbitMQ's delayed message exchange plugin.

Declared with ``x-delayed-type`` naming the type whose routing rules it uses (direct, fanout,
topic, headers). A message published with an ``x-delay`` header of ``0 < delay <= 2^32 - 1`` ms
(an integer; as the plugin, a string of digits or a float is converted) is kept and routed
through the exchange's bindings once the delay has passed; any other message is routed at once.
As with the plugin:

- a delayed message reaches no queue at publish time: a mandatory one is returned (312
  NO_ROUTE), and an alternate exchange gets it at once (rabbitmq-delayed-message-exchange #36);
- on release ``x-delay`` is set to ``-delay`` (a signedint) in the headers, which are then sorted
  by key, so the message is not delayed again on its way (exchange-to-exchange bindings) and
  consumers can tell it was delayed.

Unlike the plugin, the messages wait on disk (``store/delayed.py``), ordered by due time, with a
small index in memory: persistent messages of a durable exchange survive a restart, and their
confirms wait for the store's sync. Deleting the exchange drops its delayed messages.
"""

from __future__ import annotations

import logging
import re
import struct
from typing import TYPE_CHECKING, Any

from ...amqp import properties as props_codec
from ...amqp.errors import ConnectionFault, precondition_failed
from ...amqp.table import decode_value
from ..deadletter import cc_keys
from ..message import Message
from ..timers import Timer, now_ms
from .base import Exchange

if TYPE_CHECKING:
    from ...store.delayed import DelayedStore, MemoryDelayed
    from ..vhost import VirtualHost

log = logging.getLogger("hare.delayed")

MAX_DELAY = 4294967295  # the plugin delays only 0 < x-delay <= 2^32 - 1 (Erlang's longest timer)
# the plugin's text, typos included
INVALID_TYPE = "Invalid argument, 'x-delayed-type' must bean existing exchnage type"
RETRY_MS = 1000  # after an error (a disk error reading a bucket), try again this much later

_INTEGER = re.compile(r"[+-]?[0-9]+\Z")  # what Erlang's binary_to_integer takes
_unpack_I = struct.Struct(">I").unpack_from
_pack_I = struct.Struct(">I").pack
_pack_i = struct.Struct(">i").pack
_FLAG_CONTENT_TYPE = props_codec.PROPERTY_FLAGS["content_type"]
_FLAG_CONTENT_ENCODING = props_codec.PROPERTY_FLAGS["content_encoding"]
_FLAG_HEADERS = props_codec.FLAG_HEADERS


def delay_of(headers: dict[str, Any]) -> int | None:
    """The delay (ms) the ``x-delay`` header asks for, when the plugin would delay the message:
    an integer, a string of digits or a float (truncated), in 1 .. 2^32 - 1."""
    value = headers.get("x-delay")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        delay = value
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        delay = int(value)
    elif isinstance(value, str) and _INTEGER.match(value):
        delay = int(value)
    else:
        return None
    return delay if 0 < delay <= MAX_DELAY else None


def swap_delay_header(raw: bytes, delay: int) -> bytes:
    """The properties with ``x-delay`` set to ``-delay`` (signedint) and the headers sorted by key
    (as the plugin's rabbit_misc:set_table_value does); every other octet as it was."""
    flags = raw[0] << 8 | raw[1]
    if not flags & _FLAG_HEADERS or flags & 1:
        return raw
    o = 2
    if flags & _FLAG_CONTENT_TYPE:
        o += 1 + raw[o]
    if flags & _FLAG_CONTENT_ENCODING:
        o += 1 + raw[o]
    (size,) = _unpack_I(raw, o)
    start = o + 4
    end = start + size
    entries: list[tuple[bytes, bytes]] = []
    p = start
    replaced = False
    while p < end:
        key_end = p + 1 + raw[p]
        key = raw[p + 1 : key_end]
        _, q = decode_value(raw, key_end, end)
        if key == b"x-delay" and not replaced:
            value = -delay
            if value < -(2**31):
                value += 2**32  # Erlang writes a signedint in 32 bits whatever the value
            entries.append((key, b"\x07x-delay" + b"I" + _pack_i(value)))
            replaced = True
        else:
            entries.append((key, raw[p:q]))
        p = q
    if not replaced:
        return raw
    entries.sort(key=_key)
    table = b"".join(entry for _, entry in entries)
    return raw[:o] + _pack_I(len(table)) + table + raw[end:]


def _key(entry: tuple[bytes, bytes]) -> bytes:
    return entry[0]


class DelayedMessageExchange(Exchange):
    type_name = "x-delayed-message"
    __slots__ = ("inner", "vhost", "delayed", "timer", "last", "releasing")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from . import EXCHANGE_TYPES  # the registry imports this module

        routing_type = self.arguments.get("x-delayed-type")
        if isinstance(routing_type, bytes):
            routing_type = routing_type.decode("utf-8", "surrogateescape")
        if not isinstance(routing_type, str):
            raise precondition_failed(INVALID_TYPE)
        cls = EXCHANGE_TYPES.get(routing_type)
        if cls is None:
            raise ConnectionFault(503, f"unknown exchange type '{routing_type}'")
        if cls is DelayedMessageExchange:  # the plugin would validate itself forever
            raise precondition_failed(INVALID_TYPE)
        # the routing rules: an exchange of the delayed type holding the same bindings
        self.inner: Exchange = cls(self.name, durable=self.durable, auto_delete=self.auto_delete,
                                   internal=self.internal, arguments=self.arguments,
                                   vhost_name=self.vhost_name)
        self.vhost: VirtualHost | None = None
        self.delayed: DelayedStore | MemoryDelayed | None = None
        self.timer: Timer | None = None
        self.last: Message | None = None  # the last message delayed (routed once per CC key)
        self.releasing = False

    # -- lifetime ---------------------------------------------------------------------------------

    def attach(self, vhost: Any, recovered: bool = False) -> None:
        from ...store.delayed import DelayedStore, MemoryDelayed

        self.vhost = vhost
        store = vhost.store
        if store is None:
            self.delayed = MemoryDelayed()
            return
        self.delayed = DelayedStore.open(store, vhost.name, self.name, self.durable, Message, recovered)
        if recovered:
            now = now_ms()
            self._arm(self.delayed.next_wake(now), now)

    def detach(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.delayed is not None:
            self.delayed.destroy()
        self.last = None

    @property
    def delayed_count(self) -> int:
        """Messages waiting for their delay."""
        return len(self.delayed) if self.delayed is not None else 0

    # -- bindings: the delayed type's -------------------------------------------------------------

    def validate_binding(self, routing_key: str, arguments: dict[str, Any]) -> None:  # type: ignore[override]
        type(self.inner).validate_binding(routing_key, arguments)

    def _add(self, dest: Any, routing_key: str, arguments: dict[str, Any]) -> None:
        self.inner._add(dest, routing_key, arguments)

    def _remove(self, dest: Any, routing_key: str, arguments: dict[str, Any]) -> None:
        self.inner._remove(dest, routing_key, arguments)

    # -- routing ----------------------------------------------------------------------------------

    def route(self, msg: Message, routing_key: str, out: list[Any]) -> None:
        if msg.properties_raw[0] & 0x20 and not self.releasing:
            delay = delay_of(msg.headers)
            if delay is not None and self.delayed is not None:
                if msg is not self.last:  # routed again for its next CC key: kept once
                    self.last = msg
                    now = now_ms()
                    self._arm(self.delayed.add(msg, now + delay, now), now)
                return
        self.inner.route(msg, routing_key, out)

    def _arm(self, when: int | None, now: int) -> None:
        if when is None or self.vhost is None:
            return
        timer = self.timer
        if timer is not None and not timer.cancelled:
            if timer.when <= when:
                return
            timer.cancel()
        self.timer = self.vhost.timers.call_at(max(when, now + 1), self._fire)

    def _fire(self, now: int) -> None:
        """Release the messages that are due: route them through the bindings into queues."""
        self.timer = None
        delayed = self.delayed
        vhost = self.vhost
        if delayed is None or vhost is None:
            return
        try:
            batch = delayed.take(now)
            sync = False
            self.releasing = True
            try:
                for stored in batch:
                    try:
                        msg = self._released(stored)
                        headers = msg.headers if msg.properties_raw[0] & 0x20 else {}
                        keys = [msg.routing_key, *cc_keys(headers)] if "CC" in headers else None
                        for q in vhost.route(self, msg, keys):
                            q.publish(msg)
                    except Exception:  # one message's trouble must not cost the rest of the batch
                        log.exception("exchange '%s' in vhost '%s': a delayed message could not be "
                                      "routed: dropped", self.name, self.vhost_name)
                        continue
                    if msg.needs_sync:
                        sync = True
            finally:
                self.releasing = False
            delayed.settle(sync)
        except Exception:
            log.exception("exchange '%s' in vhost '%s': releasing delayed messages failed", self.name,
                          self.vhost_name)
            self._arm(now + RETRY_MS, now)
            return
        self._arm(delayed.next_wake(now), now)

    @staticmethod
    def _released(msg: Message) -> Message:
        """The message as the plugin routes it when its delay is over: ``x-delay`` negated."""
        delay = delay_of(msg.headers)
        if delay is None:
            return msg
        return Message(msg.exchange, msg.routing_key, swap_delay_header(msg.properties_raw, delay),
                       msg.body, msg.route_bytes, msg.persistent)
