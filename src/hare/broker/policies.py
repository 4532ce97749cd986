"""Policies, as ``rabbitmqctl set_policy`` defines them: a name, a pattern, what they apply to, a
priority and a definition; the model behind ``VirtualHost.set_policy``.

As in RabbitMQ 3.10:

- the pattern is a regular expression *searched* in the queue or exchange name (not anchored:
  ``"^orders"`` anchors it, ``"orders"`` matches ``"my-orders-2"``); an empty pattern matches
  every name;
- at most one policy applies to a queue or exchange: the matching one of the highest priority.
  RabbitMQ breaks ties in the order of its internal table (unspecified); hare takes the name that
  sorts first, so the choice is at least stable;
- a policy applies to its objects whatever keys its definition holds (``apply-to all`` with only
  queue keys still shadows a lower-priority ``alternate-exchange`` policy on an exchange);
- definitions are validated with RabbitMQ's rules and texts: unknown keys, wrong types and
  out-of-range values are refused. Keys of features hare does not have (mirroring, lazy queues,
  queue locators, streams) are validated and accepted, and have no effect.

``apply-to`` also takes ``classic_queues``, ``quorum_queues`` and ``streams`` (RabbitMQ 3.12+;
3.10 refuses them): the queues whose ``x-queue-type`` is that type.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..amqp.erlterm import LINE, column, p_binary, p_string, p_tuple
from .queue_settings import OVERFLOW_MODES

APPLY_TO = ("all", "queues", "exchanges", "classic_queues", "quorum_queues", "streams")
_QUEUE_TYPE_APPLY_TO = {"classic_queues": "classic", "quorum_queues": "quorum", "streams": "stream"}


class PolicyError(ValueError):
    """A policy RabbitMQ would refuse; ``str()`` is RabbitMQ's text (after "Validation failed")."""


@dataclass(frozen=True, slots=True)
class Policy:
    vhost: str
    name: str
    pattern: str
    definition: dict[str, Any]
    priority: int = 0
    apply_to: str = "all"
    regex: re.Pattern[str] = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.regex is None:
            object.__setattr__(self, "regex", compile_pattern(self.pattern))

    def applies_to_queue(self, name: str, queue_type: str = "classic") -> bool:
        a = self.apply_to
        if a not in ("all", "queues") and _QUEUE_TYPE_APPLY_TO.get(a) != queue_type:
            return False
        return self.regex.search(name) is not None

    def applies_to_exchange(self, name: str) -> bool:
        return self.apply_to in ("all", "exchanges") and self.regex.search(name) is not None

    def as_json(self) -> dict[str, Any]:
        """The policy as RabbitMQ's definitions file (and ``list_policies --formatter json``) has it."""
        return {"vhost": self.vhost, "name": self.name, "pattern": self.pattern,
                "apply-to": self.apply_to, "definition": self.definition, "priority": self.priority}

    def definition_json(self) -> str:
        """The definition as ``rabbitmqctl list_policies`` prints it: compact, keys sorted."""
        return json.dumps(self.definition, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def make_policy(vhost: str, name: str, pattern: str, definition: Any, priority: Any = 0,
                apply_to: str = "all") -> Policy:
    """A validated Policy; raises PolicyError with RabbitMQ's text for what it refuses."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise PolicyError(f"{erl(priority)} priority must be a number")
    if apply_to not in APPLY_TO:
        raise PolicyError(f"apply-to '{apply_to}' unrecognised; should be one of: 'queues', "
                          "'classic_queues',  'quorum_queues', 'streams', 'exchanges', or 'all'")
    regex = compile_pattern(pattern)
    validate_definition(definition)
    return Policy(vhost, name, pattern, dict(definition), priority, apply_to, regex)


def choose(policies: Iterable[Policy], matches: Callable[[Policy], bool]) -> Policy | None:
    """The policy that applies: the matching one of the highest priority (ties: the first name)."""
    best: Policy | None = None
    for p in policies:
        if best is not None and (p.priority < best.priority or (
                p.priority == best.priority and p.name > best.name)):
            continue
        if matches(p):
            best = p
    return best


def for_queue(policies: Iterable[Policy], name: str, arguments: dict[str, Any]) -> Policy | None:
    qtype = arguments.get("x-queue-type")
    if isinstance(qtype, bytes):
        qtype = qtype.decode("utf-8", "replace")
    queue_type = qtype if isinstance(qtype, str) and qtype else "classic"
    return choose(policies, lambda p: p.applies_to_queue(name, queue_type))


def for_exchange(policies: Iterable[Policy], name: str) -> Policy | None:
    return choose(policies, lambda p: p.applies_to_exchange(name))


# -- the pattern ----------------------------------------------------------------------------------

_NAMED_GROUP = re.compile(r"\(\?<(?=[A-Za-z_])")  # PCRE's (?<name>...), Python's (?P<name>...)

# Python's messages for the common mistakes -> PCRE's, and where PCRE reports them
_PCRE_ERRORS: dict[str, Callable[[str, int], tuple[str, int]]] = {
    "missing ), unterminated subpattern": lambda p, pos: ("missing )", len(p)),
    "unterminated character set": lambda p, pos: ("missing terminating ] for character class", len(p)),
    "unbalanced parenthesis": lambda p, pos: ("unmatched parentheses", pos),
    "nothing to repeat": lambda p, pos: ("nothing to repeat", pos),
    "multiple repeat": lambda p, pos: ("nothing to repeat", pos),
    "bad escape (end of pattern)": lambda p, pos: ("\\ at end of pattern", len(p)),
    "min repeat greater than max repeat": lambda p, pos: (
        "numbers out of order in {} quantifier", p.find("}", pos) if "}" in p[pos:] else len(p)),
}


def pcre_error(pattern: str, exc: re.error) -> tuple[str, int]:
    """PCRE's message and position for the error Python's ``re`` found in ``pattern``."""
    msg, pos = exc.msg, exc.pos or 0
    if msg in _PCRE_ERRORS:
        return _PCRE_ERRORS[msg](pattern, pos)
    if msg.startswith("bad character range"):
        return "range out of order in character class", pos + 2
    return msg, pos


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The pattern as RabbitMQ's ``re`` (PCRE) reads it; PolicyError if it is not valid."""
    try:
        return re.compile(_NAMED_GROUP.sub("(?P<", pattern))
    except re.error as exc:
        msg, pos = pcre_error(pattern, exc)
        prefix = "pattern should be regular expression but is invalid: "
        items = [p_string(msg.encode("utf-8", "surrogateescape")), str(pos)]
        raise PolicyError(prefix + p_tuple(items, column(prefix))) from None


# -- the definition -------------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_at_least(low: int, what: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if _is_int(v) and v >= low else f"{erl(v)} is not a valid {what}"
    return check


def _string(what: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if isinstance(v, str) else f"{erl(v)} is not a valid {what}"
    return check


def _one_of(values: tuple[str, ...], text: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if isinstance(v, str) and v in values else text.format(erl(v))
    return check


def _max_age(v: Any) -> str | None:
    m = re.fullmatch(r"([0-9]+)(Y|M|D|h|m|s)", v) if isinstance(v, str) else None
    return None if m else f"{erl(v)} is not a valid max age"


# rabbit_policies' keys (hare applies the first ones; the rest are accepted and have no effect)
_VALIDATORS: dict[str, Callable[[Any], str | None]] = {
    "alternate-exchange": _string("alternate exchange name"),
    "dead-letter-exchange": _string("dead letter exchange name"),
    "dead-letter-routing-key": _string("dead letter routing key"),
    "message-ttl": _int_at_least(0, "message TTL"),
    "expires": _int_at_least(1, "queue expiry"),
    "max-length": _int_at_least(0, "maximum length"),
    "max-length-bytes": _int_at_least(0, "maximum length in bytes"),
    "overflow": _one_of(OVERFLOW_MODES, "{} is not a valid overflow value"),
    "delivery-limit": _int_at_least(0, "delivery limit"),
    "consumer-timeout": _int_at_least(0, "consumer timeout"),  # RabbitMQ 3.12+
    "dead-letter-strategy": _one_of(("at-most-once", "at-least-once"),
                                    "{} is not a valid dead letter strategy"),
    "queue-version": lambda v: None if _is_int(v) and v in (1, 2)
    else f"{erl(v)} is not a valid queue-version value",
    # accepted, no effect in hare
    "max-in-memory-length": _int_at_least(0, "maximum memory in bytes"),
    "max-in-memory-bytes": _int_at_least(0, "maximum memory in bytes"),
    "queue-mode": _one_of(("default", "lazy"), "{} is not a valid queue-mode value"),
    "max-age": _max_age,
    "stream-max-segment-size-bytes": _int_at_least(0, "segment size"),
    "queue-leader-locator": _one_of(("client-local", "balanced", "random", "least-leaders"),
                                    "{} is not a valid queue leader locator value"),
    "initial-cluster-size": _int_at_least(0, "cluster size"),
}
_HA_KEYS = ("ha-mode", "ha-params", "ha-sync-mode", "ha-sync-batch-size", "ha-promote-on-shutdown",
            "ha-promote-on-failure")
_LOCATOR = "queue-master-locator"


def _validate_ha(d: dict[str, Any]) -> str | None:
    """rabbit_mirror_queue_misc's checks (classic mirroring: accepted, no effect in hare)."""
    if not any(k in d for k in _HA_KEYS):
        return None
    if "ha-mode" not in d:
        return "ha-mode must be specified to specify ha-params, ha-sync-mode or ha-promote-on-shutdown"
    mode, params = d["ha-mode"], d.get("ha-params")
    given = "none" if "ha-params" not in d else erl(params)
    if mode == "all":
        if "ha-params" in d:
            return 'ha-mode="all" does not take parameters'
    elif mode == "exactly":
        if not (_is_int(params) and params > 0):
            return f'ha-mode="exactly" takes an integer, {given} given'
    elif mode == "nodes":
        if not (isinstance(params, list) and params and all(isinstance(n, str) for n in params)):
            return f'ha-mode="nodes" takes a list, {given} given'
    else:
        return f"{erl(mode)} is not a valid ha-mode value"
    if "ha-sync-mode" in d and d["ha-sync-mode"] not in ("manual", "automatic"):
        return f'ha-sync-mode must be "manual" or "automatic", got {erl(d["ha-sync-mode"])}'
    if "ha-sync-batch-size" in d and not (_is_int(d["ha-sync-batch-size"]) and d["ha-sync-batch-size"] > 0):
        return f"ha-sync-batch-size takes an integer greater than 0, {erl(d['ha-sync-batch-size'])} given"
    for key in ("ha-promote-on-shutdown", "ha-promote-on-failure"):
        if key in d and d[key] not in ("always", "when-synced"):
            return f'{key} must be "always" or "when-synced", got {erl(d[key])}'
    return None


def validate_definition(definition: Any) -> None:
    """Raise PolicyError as RabbitMQ does for a definition it refuses (first error only: its own
    keys in order, then mirroring, then the queue master locator, then unknown keys)."""
    if not isinstance(definition, dict):
        raise PolicyError(f"definition must be a dictionary: {erl(definition)}")
    if not definition:
        raise PolicyError("no policy provided")
    for key in sorted(definition):
        check = _VALIDATORS.get(key)
        if check is not None and (error := check(definition[key])) is not None:
            raise PolicyError(error)
    if (error := _validate_ha(definition)) is not None:
        raise PolicyError(error)
    if _LOCATOR in definition and definition[_LOCATOR] not in ("min-masters", "client-local", "random"):
        raise PolicyError(f"{erl(definition[_LOCATOR])} invalid queue-master-locator value")
    unknown = [k for k in sorted(definition) if k not in _VALIDATORS and k not in _HA_KEYS and k != _LOCATOR]
    if unknown:
        items = [(k, definition[k]) for k in unknown]
        raise PolicyError(f"{erl(items, 1)} are not recognised policy settings")


# -- Erlang's ~p of a decoded JSON value, for the error texts ------------------------------------------

def erl(value: Any, col: int = 1) -> str:
    """``~p`` of what RabbitMQ's JSON decoder makes of ``value`` (strings are binaries, objects
    maps, null/true/false atoms); a list too long for the line goes one element per line."""
    flat = _flat(value)
    if isinstance(value, list) and len(value) > 1 and len(flat) >= LINE - col:
        return "[" + (",\n" + " " * col).join(erl(v, col + 1) for v in value) + "]"
    return flat


def _flat(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return p_binary(value.encode("utf-8", "surrogateescape"), 1)
    if isinstance(value, tuple):
        return "{" + ",".join(_flat(v) for v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_flat(v) for v in value) + "]"
    if isinstance(value, dict):
        return "#{" + ",".join(f"{_flat(k)} => {_flat(v)}" for k, v in sorted(value.items())) + "}"
    return repr(value)


def _float(f: float) -> str:
    """Erlang's shortest float text: the shorter of ``1000.0`` and ``1.0e3``, fixed on a tie."""
    if not math.isfinite(f):
        return repr(f)
    sign, digit_tuple, exp = Decimal(repr(f)).as_tuple()
    digits = "".join(map(str, digit_tuple))
    stripped = digits.rstrip("0")
    if not stripped:
        return "-0.0" if sign else "0.0"
    exp = int(exp) + len(digits) - len(stripped)  # value = stripped * 10**exp
    digits = stripped
    neg = "-" if sign else ""
    sci = f"{neg}{digits[0]}.{digits[1:] or '0'}e{exp + len(digits) - 1}"
    point = len(digits) + exp
    if exp >= 0:
        fixed = digits + "0" * exp + ".0"
    elif point > 0:
        fixed = digits[:point] + "." + digits[point:]
    else:
        fixed = "0." + "0" * -point + digits
    fixed = neg + fixed
    return fixed if len(fixed) <= len(sci) else sci
