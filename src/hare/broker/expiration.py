"""The expiration property (per-message TTL): RabbitMQ's validation of its value.

A publish whose expiration is not a decimal number of milliseconds from 0 to ten years is refused
with 406, in RabbitMQ's words (an Erlang term, as ``~p`` prints it).
"""

from __future__ import annotations

from ..amqp.erlterm import column, p_string, p_tuple, wire_text

MAX_EXPIRY = 315_360_000_000  # RabbitMQ's largest per-message TTL: ten years, in milliseconds


def expiration_error(value: bytes) -> str | None:
    """RabbitMQ's complaint about an expiration property (None when it is valid): an optional sign
    and decimal digits, nothing else, from 0 to MAX_EXPIRY."""
    text = value.decode("latin-1")
    digits = text[1:] if text[:1] in ("+", "-") else text
    n = len(digits) - len(digits.lstrip("0123456789"))
    if not n:
        reason = "no_integer"
    else:
        rest = digits[n:]
        number = int(text[: len(text) - len(rest)])
        if rest:
            term = ["leftover_string", p_string(rest.encode("latin-1"))]
        elif number < 0:
            term = ["value_negative", str(number)]
        elif number > MAX_EXPIRY:
            term = ["value_too_large", str(number)]
        else:
            return None
        reason = p_tuple(term, column(f"invalid expiration '{text}': "))
    return wire_text(f"invalid expiration '{text}': {reason}")
