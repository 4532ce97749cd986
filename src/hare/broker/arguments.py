"""Queue arguments (``x-...``): validated in one place, with RabbitMQ's rules and error texts.

Only the arguments RabbitMQ knows are validated and compared on redeclaration; unknown ones are
kept and ignored, as RabbitMQ does. A new queue's arguments must also suit its queue type
(x-queue-type; hare runs every type as a classic queue, but refuses what RabbitMQ 3.10 refuses
for that type), and quorum queues and streams must be durable, not exclusive, not auto-delete.
"""

from __future__ import annotations

import datetime
import decimal
import re
from collections.abc import Callable
from typing import Any

from ..amqp.errors import precondition_failed
from ..amqp.table import Float32


def type_name(value: Any) -> str:
    """RabbitMQ's name for a field value's type, as its error texts print it."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "signedint" if -(2**31) <= value < 2**31 else "long"
    if isinstance(value, Float32):
        return "float"
    if isinstance(value, float):
        return "double"
    if isinstance(value, decimal.Decimal):
        return "decimal"
    if isinstance(value, datetime.datetime):
        return "timestamp"
    if isinstance(value, str):
        return "longstr"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    if isinstance(value, bytes):
        return "binary"
    if value is None:
        return "void"
    return type(value).__name__


def _non_neg_int(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f'"expected integer, got {type_name(value)}"'
    if value < 0:
        return f"{{value_negative,{value}}}"
    return None


def _positive_int(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f'"expected integer, got {type_name(value)}"'
    if value <= 0:
        return f"{{value_zero,{value}}}" if value == 0 else f"{{value_negative,{value}}}"
    return None


def _string(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"{{unacceptable_type,{type_name(value)}}}"
    return None


def _bool(value: Any) -> str | None:
    if not isinstance(value, bool):
        return f"{{unacceptable_type,{type_name(value)}}}"
    return None


_TEN_YEARS_MS = 315_360_000_000  # RabbitMQ's cap on x-message-ttl and x-expires


def _ms(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    def capped(value: Any) -> str | None:
        err = check(value)
        if err is None and value > _TEN_YEARS_MS:
            return f"{{value_too_large,{value}}}"
        return err

    return capped


def _queue_version(value: Any) -> str | None:
    err = _non_neg_int(value)
    if err is None and value not in (1, 2):
        return f"\"unsupported queue version '{value}'\""
    return err


def _max_age(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"{{unacceptable_type,{type_name(value)}}}"
    m = re.fullmatch(r"([0-9]+)(Y|M|D|h|m|s)", value)
    return None if m and int(m[1]) > 0 else "invalid_max_age"


def _queue_type(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"{{unacceptable_type,{type_name(value)}}}"
    if value not in ("classic", "quorum", "stream"):
        return f"\"unsupported queue type '{value}'\""
    return None


def _priority(value: Any) -> str | None:
    err = _non_neg_int(value)
    if err is None and value > 255:
        return f"{{max_value_exceeded,{value}}}"
    return err


def _one_of(*allowed: str, error: str = "") -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return f"{{unacceptable_type,{type_name(value)}}}"
        if value not in allowed:
            return error or f"{{unknown_value,<<\"{value}\">>}}"
        return None

    return check


QUEUE_ARGUMENTS: dict[str, Callable[[Any], str | None]] = {
    "x-expires": _ms(_positive_int),
    "x-message-ttl": _ms(_non_neg_int),
    "x-dead-letter-exchange": _string,
    "x-dead-letter-routing-key": _string,
    "x-dead-letter-strategy": _one_of("at-most-once", "at-least-once",
                                       error="invalid_dlx_strategy"),
    "x-max-length": _non_neg_int,
    "x-max-length-bytes": _non_neg_int,
    "x-max-in-memory-length": _non_neg_int,
    "x-max-in-memory-bytes": _non_neg_int,
    "x-max-priority": _priority,
    "x-overflow": _one_of("drop-head", "reject-publish", "reject-publish-dlx"),
    "x-queue-mode": _one_of("default", "lazy"),
    "x-queue-version": _queue_version,
    "x-single-active-consumer": _bool,
    "x-queue-type": _queue_type,
    "x-quorum-initial-group-size": _positive_int,
    "x-max-age": _max_age,
    "x-stream-max-segment-size-bytes": _non_neg_int,
    "x-initial-cluster-size": _positive_int,
    "x-queue-leader-locator": _one_of("client-local", "balanced", "random", "least-leaders",
                                      error="invalid_queue_locator_arg"),
    # RabbitMQ answers a bad value with 541 (its check crashes); hare with 406
    "x-queue-master-locator": _one_of("client-local", "min-masters", "random"),
    "x-delivery-limit": _non_neg_int,
    "x-consumer-timeout": _non_neg_int,  # RabbitMQ 3.12+
}

# checked before the queue type's list (RabbitMQ checks these for every queue; the others only
# once they are known to suit the queue's type)
_CHECKED_FIRST = ("x-expires", "x-message-ttl", "x-dead-letter-exchange", "x-dead-letter-routing-key",
                  "x-max-length", "x-max-length-bytes", "x-overflow", "x-single-active-consumer",
                  "x-queue-type")
_COMMON = frozenset({"x-queue-type", "x-consumer-timeout"})
# the arguments each queue type takes (RabbitMQ 3.10's lists; hare adds x-delivery-limit to classic
# queues, and x-consumer-timeout, which 3.10 does not know, to all)
TYPE_ARGUMENTS: dict[str, frozenset[str]] = {
    "classic": _COMMON | {
        "x-expires", "x-message-ttl", "x-dead-letter-exchange", "x-dead-letter-routing-key",
        "x-max-length", "x-max-length-bytes", "x-max-priority", "x-overflow", "x-queue-mode",
        "x-queue-version", "x-single-active-consumer", "x-queue-master-locator", "x-delivery-limit"},
    "quorum": _COMMON | {
        "x-expires", "x-message-ttl", "x-dead-letter-exchange", "x-dead-letter-routing-key",
        "x-dead-letter-strategy", "x-max-length", "x-max-length-bytes", "x-max-in-memory-length",
        "x-max-in-memory-bytes", "x-overflow", "x-single-active-consumer",
        "x-quorum-initial-group-size", "x-delivery-limit", "x-queue-leader-locator"},
    "stream": _COMMON | {
        "x-max-length-bytes", "x-max-age", "x-stream-max-segment-size-bytes", "x-initial-cluster-size",
        "x-queue-leader-locator"},
}


def validate_queue_arguments(what: str, arguments: dict[str, Any], durable: bool = True,
                             exclusive: bool = False, auto_delete: bool = False) -> None:
    """A new queue's arguments and flags, checked in RabbitMQ's order: the common arguments'
    values, then whether each argument suits the queue type, then the others' values, then the
    type's flags."""
    for key in _CHECKED_FIRST:
        if key in arguments:
            _check_value(what, key, arguments[key])
    if "x-dead-letter-routing-key" in arguments and "x-dead-letter-exchange" not in arguments:
        raise precondition_failed(f"invalid arg 'x-dead-letter-routing-key' for {what}: "
                                  "{no_dlx,x-dead-letter-routing-key}")
    qtype = arguments.get("x-queue-type") or "classic"
    allowed = TYPE_ARGUMENTS[qtype]
    for key in arguments:
        if key in QUEUE_ARGUMENTS and key not in allowed:
            raise precondition_failed(f"invalid arg '{key}' for {what} of queue type rabbit_{qtype}_queue")
    for key in arguments:
        if key in QUEUE_ARGUMENTS and key not in _CHECKED_FIRST:
            _check_value(what, key, arguments[key])
    if qtype != "classic":
        for bad, prop in ((auto_delete, "auto-delete"), (exclusive, "exclusive-owner"),
                          (not durable, "non-durable")):
            if bad:
                raise precondition_failed(f"invalid property '{prop}' for {what}")


def _check_value(what: str, key: str, value: Any) -> None:
    err = QUEUE_ARGUMENTS[key](value)
    if err is not None:
        raise precondition_failed(f"invalid arg '{key}' for {what}: {err}")


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def check_equivalent_queue_args(what: str, have: dict[str, Any], want: dict[str, Any]) -> None:
    """406 when a redeclaration changes an argument RabbitMQ compares: those of the existing
    queue's type."""
    compared = TYPE_ARGUMENTS[have.get("x-queue-type") or "classic"]
    for key in QUEUE_ARGUMENTS:
        if key not in compared:
            continue
        a = have.get(key)
        b = want.get(key)
        if a == b and type(a) is type(b):
            continue
        if key == "x-queue-type" and a in (None, "classic") and b in (None, "classic"):
            continue
        if a is not None and b is not None:  # RabbitMQ names the types only when one is absent
            received, current = f"'{_render(b)}'", f"'{_render(a)}'"
        else:
            received = "none" if b is None else f"the value '{_render(b)}' of type '{type_name(b)}'"
            current = "none" if a is None else f"the value '{_render(a)}' of type '{type_name(a)}'"
        raise precondition_failed(f"inequivalent arg '{key}' for {what}: received {received} "
                                  f"but current is {current}")
