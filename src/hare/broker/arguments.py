"""Queue arguments (``x-...``): validated in one place, with RabbitMQ's rules and error texts.

Only the arguments RabbitMQ knows are validated and compared on redeclaration; unknown ones are
kept and ignored, as RabbitMQ does.
"""

from __future__ import annotations

import datetime
import decimal
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


def _priority(value: Any) -> str | None:
    err = _non_neg_int(value)
    if err is None and value > 255:
        return f"{{max_value_exceeded,{value}}}"
    return err


def _one_of(*allowed: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return f"{{unacceptable_type,{type_name(value)}}}"
        if value not in allowed:
            return f"{{unknown_value,<<\"{value}\">>}}"
        return None

    return check


QUEUE_ARGUMENTS: dict[str, Callable[[Any], str | None]] = {
    "x-expires": _positive_int,
    "x-message-ttl": _non_neg_int,
    "x-dead-letter-exchange": _string,
    "x-dead-letter-routing-key": _string,
    "x-max-length": _non_neg_int,
    "x-max-length-bytes": _non_neg_int,
    "x-max-in-memory-length": _non_neg_int,
    "x-max-in-memory-bytes": _non_neg_int,
    "x-max-priority": _priority,
    "x-overflow": _one_of("drop-head", "reject-publish", "reject-publish-dlx"),
    "x-queue-mode": _one_of("default", "lazy"),
    "x-queue-type": _one_of("classic", "quorum", "stream"),
    "x-single-active-consumer": _bool,
    "x-delivery-limit": _non_neg_int,
    "x-consumer-timeout": _non_neg_int,
}


def validate_queue_arguments(what: str, arguments: dict[str, Any]) -> None:
    for key, check in QUEUE_ARGUMENTS.items():
        if key in arguments:
            err = check(arguments[key])
            if err is not None:
                raise precondition_failed(f"invalid arg '{key}' for {what}: {err}")
    if "x-dead-letter-routing-key" in arguments and "x-dead-letter-exchange" not in arguments:
        raise precondition_failed(f"invalid arg 'x-dead-letter-routing-key' for {what}: "
                                  "{no_dlx,x-dead-letter-routing-key}")


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def check_equivalent_queue_args(what: str, have: dict[str, Any], want: dict[str, Any]) -> None:
    """406 when a redeclaration changes an argument RabbitMQ compares."""
    for key in QUEUE_ARGUMENTS:
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
