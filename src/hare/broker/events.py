"""What the command layer announces after each change of the metadata, applied and persisted.

``Commands.listeners`` holds callables; each gets one ``Event`` per change (a declare that finds
the queue already there, a bind of an existing binding, a passive declare change nothing and
announce nothing). Only metadata changes are announced: nothing on the path of a message. The
cluster (definitions into etcd) and the management API (events, stats) are to subscribe.

``kind`` is the name RabbitMQ's event exchange (rabbitmq_event_exchange) gives the change:
queue.created, queue.deleted, exchange.created, exchange.deleted, binding.created,
binding.deleted, policy.set, policy.cleared, vhost.created, vhost.deleted, vhost.limits.set,
vhost.limits.cleared, user.created, user.deleted, user.password.changed, user.password.cleared,
user.tags.set, user.limits.set, user.limits.cleared, permission.created, permission.deleted,
topic.permission.created, topic.permission.deleted; and hare's own user.changed (a definitions
import replaced a user's whole record). An automatic deletion says why in
``details["reason"]`` (see REASONS); a command a client or an operator gave has none.

Recovery at start (the definitions store read back into the model) changes nothing and announces
nothing: a listener that needs the whole state reads the model when it subscribes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# why the broker deleted something by itself (details["reason"])
# an auto-delete queue's last consumer went, or an auto-delete exchange's last binding
AUTO_DELETE = "auto_delete"
EXCLUSIVE_OWNER_CLOSED = "exclusive_owner_closed"  # an exclusive queue's connection closed
EXPIRED = "expired"  # a queue unused for its x-expires
QUEUE_DELETED = "queue_deleted"  # a binding whose queue was deleted
EXCHANGE_DELETED = "exchange_deleted"  # a binding whose source or destination exchange was deleted
VHOST_DELETED = "vhost_deleted"  # everything in a deleted virtual host
REASONS = (AUTO_DELETE, EXCLUSIVE_OWNER_CLOSED, EXPIRED, QUEUE_DELETED, EXCHANGE_DELETED, VHOST_DELETED)


@dataclass(frozen=True, slots=True)
class Event:
    """One applied change. ``vhost`` is "" for a user's own changes; ``name`` is the queue's,
    exchange's, policy's, vhost's or user's name (for a binding: its source exchange's)."""

    kind: str
    vhost: str
    name: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str | None:
        return self.details.get("reason")


__all__ = ["Event", "REASONS", "AUTO_DELETE", "EXCLUSIVE_OWNER_CLOSED", "EXPIRED", "QUEUE_DELETED",
           "EXCHANGE_DELETED", "VHOST_DELETED"]
