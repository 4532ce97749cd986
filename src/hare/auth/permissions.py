"""Permissions as RabbitMQ's internal authorisation backend decides them.

A user's rights in a virtual host are three regular expressions, searched (not anchored) in the
name of the resource an operation touches:

- configure: declare and delete exchanges and queues;
- write: publish to an exchange, bind to a queue or exchange (the destination);
- read: consume, get and purge from a queue, bind from an exchange (the source).

An empty pattern grants nothing (RabbitMQ reads it as ``^$``); the default exchange is matched
by the name ``amq.default``. Topic permissions add write/read patterns on routing keys for the
topic exchanges they name, with the variables ``{username}``, ``{vhost}`` and ``{client_id}``
expanded first; an exchange without topic permissions is open to every routing key.

The patterns are compiled once, when they are set; channels cache the decisions (``Access``), so
an operation on the same resource twice pays a set lookup, not a regular expression.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..amqp.errors import access_refused

CONFIGURE, WRITE, READ = "configure", "write", "read"
DEFAULT_EXCHANGE_NAME = "amq.default"


class PatternError(ValueError):
    pass


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A permission's regular expression (``""``: matches only the empty name)."""
    try:
        return re.compile(pattern or "^$")
    except re.error as exc:
        raise PatternError(f"invalid regular expression '{pattern}': {exc}") from None


@dataclass
class Permission:
    """One user's configure/write/read patterns in one virtual host."""

    configure: str = ".*"
    write: str = ".*"
    read: str = ".*"
    _compiled: dict[str, re.Pattern[str]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._compiled = {CONFIGURE: compile_pattern(self.configure), WRITE: compile_pattern(self.write),
                          READ: compile_pattern(self.read)}

    def allows(self, what: str, name: str) -> bool:
        return self._compiled[what].search(name) is not None

    def as_json(self) -> dict[str, str]:
        return {"configure": self.configure, "write": self.write, "read": self.read}


@dataclass
class TopicPermission:
    """Write/read patterns on the routing keys of one topic exchange."""

    exchange: str
    write: str = ".*"
    read: str = ".*"

    def __post_init__(self) -> None:
        compile_pattern(self.write)  # refuse an invalid one when it is set
        compile_pattern(self.read)

    def allows(self, what: str, routing_key: str, variables: dict[str, str]) -> bool:
        pattern = (self.write if what == WRITE else self.read) or "^$"
        for key, value in variables.items():
            pattern = pattern.replace("{" + key + "}", value)
        try:
            return re.search(pattern, routing_key) is not None
        except re.error:
            return False

    def as_json(self) -> dict[str, str]:
        return {"exchange": self.exchange, "write": self.write, "read": self.read}


def resource(kind: str, name: str, vhost: str) -> str:
    return f"{kind} '{name}' in vhost '{vhost}'"


class Access:
    """What one connection's user may do in its virtual host, with the decisions cached.

    ``allowed`` holds (what, kind, name) already granted; ``write_exchanges`` the exchanges the
    user may publish to (the publish path looks there first). The command layer clears both when
    the user's permissions change."""

    __slots__ = ("user", "vhost", "variables", "allowed", "write_exchanges", "topics")

    def __init__(self, user: Any, vhost: str, client_id: str | None = None) -> None:
        self.user = user
        self.vhost = vhost
        self.variables = {"username": user.name, "vhost": vhost}
        if client_id is not None:
            self.variables["client_id"] = client_id
        self.allowed: set[tuple[str, str, str]] = set()
        self.write_exchanges: set[str] = set()
        # the topic permissions in this vhost by exchange, or None (the publish path tests this)
        self.topics: dict[str, TopicPermission] | None = user.topic_permissions.get(vhost) or None

    def clear(self) -> None:
        self.allowed.clear()
        self.write_exchanges.clear()
        self.topics = self.user.topic_permissions.get(self.vhost) or None

    def check(self, what: str, kind: str, name: str) -> None:
        """Raise 403 ACCESS_REFUSED, with RabbitMQ's text, unless the user may do ``what`` on the
        resource."""
        key = (what, kind, name)
        if key in self.allowed:
            return
        if kind == "exchange" and not name:
            name = DEFAULT_EXCHANGE_NAME
        perm = self.user.permissions.get(self.vhost)
        if perm is None or not perm.allows(what, name):
            raise access_refused(f"access to {resource(kind, name, self.vhost)} refused for user "
                                 f"'{self.user.name}'")
        self.allowed.add(key)

    def check_publish(self, exchange: str) -> None:
        self.check(WRITE, "exchange", exchange)
        self.write_exchanges.add(exchange)

    def check_topic(self, what: str, exchange: str, routing_key: str) -> None:
        """Topic permissions of a topic exchange (call for topic exchanges only)."""
        topics = self.topics
        if topics is None:
            return
        tp = topics.get(exchange)
        if tp is None or tp.allows(what, routing_key, self.variables):
            return
        raise access_refused(f"access to topic '{routing_key}' in exchange '{exchange}' in vhost "
                             f"'{self.vhost}' refused for user '{self.user.name}'")
