"""A queue's effective settings: its ``x-`` arguments merged with the policy that applies to it.

As in RabbitMQ: where both set a limit (message TTL, queue expiry, max length, max length in
bytes, delivery limit, consumer timeout) the lower one wins; for the others (dead-letter exchange
and routing key, overflow behaviour) the queue's argument wins over the policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OVERFLOW_MODES = ("drop-head", "reject-publish", "reject-publish-dlx")

# policy key -> queue argument, for the keys a policy may set on a queue
POLICY_KEYS = {
    "message-ttl": "x-message-ttl",
    "expires": "x-expires",
    "max-length": "x-max-length",
    "max-length-bytes": "x-max-length-bytes",
    "overflow": "x-overflow",
    "dead-letter-exchange": "x-dead-letter-exchange",
    "dead-letter-routing-key": "x-dead-letter-routing-key",
    "delivery-limit": "x-delivery-limit",
    "consumer-timeout": "x-consumer-timeout",
}
_LOWER_WINS = frozenset({"message-ttl", "expires", "max-length", "max-length-bytes", "delivery-limit",
                         "consumer-timeout"})


@dataclass(slots=True)
class QueueSettings:
    message_ttl: int | None = None  # ms
    expires: int | None = None  # ms without use before the queue is deleted
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str = "drop-head"
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    delivery_limit: int | None = None
    consumer_timeout: int | None = None  # ms; None: the broker's default
    single_active_consumer: bool = False
    max_priority: int | None = None
    limited: bool = False  # a length limit to enforce on publish (set from the two above)
    plain: bool = True  # neither a limit nor a message TTL: publish takes its shortest path

    def __post_init__(self) -> None:
        self.limited = self.max_length is not None or self.max_length_bytes is not None
        self.plain = not self.limited and self.message_ttl is None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value if isinstance(value, str) else None


def queue_settings(arguments: dict[str, Any], policy: dict[str, Any] | None = None) -> QueueSettings:
    merged: dict[str, Any] = {}
    for key, arg in POLICY_KEYS.items():
        a = arguments.get(arg)
        p = (policy or {}).get(key)
        if a is None:
            merged[key] = p
        elif p is None:
            merged[key] = a
        elif key in _LOWER_WINS and _int(a) is not None and _int(p) is not None:
            merged[key] = min(a, p)
        else:
            merged[key] = a
    overflow = _str(merged["overflow"])
    return QueueSettings(
        message_ttl=_int(merged["message-ttl"]),
        expires=_int(merged["expires"]),
        max_length=_int(merged["max-length"]),
        max_length_bytes=_int(merged["max-length-bytes"]),
        overflow=overflow if overflow in OVERFLOW_MODES else "drop-head",
        dead_letter_exchange=_str(merged["dead-letter-exchange"]),
        dead_letter_routing_key=_str(merged["dead-letter-routing-key"]),
        delivery_limit=_int(merged["delivery-limit"]),
        consumer_timeout=_int(merged["consumer-timeout"]),
        single_active_consumer=arguments.get("x-single-active-consumer") is True,
        max_priority=_int(arguments.get("x-max-priority")),
    )
