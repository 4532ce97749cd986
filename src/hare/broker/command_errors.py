"""What the command layer's operator commands refuse, worded as rabbitmqctl words it."""

from __future__ import annotations

from typing import Any

from .policies import erl


class CommandError(Exception):
    """An operator command that cannot be done; ``kind`` is one of "not_found", "exists",
    "invalid" (the control socket maps them to rabbitmqctl's exit codes)."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind


def _no_such_user(name: str) -> CommandError:
    return CommandError("not_found", f"User \"{name}\" does not exist")


def _no_such_vhost(name: str) -> CommandError:
    return CommandError("not_found", f"Virtual host '{name}' does not exist")


def _limits(limits: dict[str, Any], known: tuple[str, ...], component: str = "limits") -> dict[str, int]:
    """Limits as ``set_vhost_limits``/``set_user_limits`` take them: a negative value is no limit.
    Refused with RabbitMQ 3.10's texts (``component``: "limits" for a vhost's, "user-limits")."""
    if not isinstance(limits, dict):
        raise CommandError("invalid", f"Unrecognised terms {erl(limits)} in {component}")
    unknown = [f"{{{erl(k)},{erl(v)}}}" for k, v in limits.items() if k not in known]
    if unknown:
        raise CommandError("invalid", f"Unrecognised terms [{','.join(unknown)}] in {component}")
    out = {}
    for key, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise CommandError("invalid", f"{key} should be a number, actually was {erl(value)}")
        if value >= 0:
            out[key] = value
    return out


__all__ = ["CommandError"]
