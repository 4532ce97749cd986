"""Dead-lettering: a message a queue gives up on (rejected without requeue, expired, dropped for
length, over its delivery limit) is republished to the queue's dead-letter exchange, as RabbitMQ
does: with its routing key or the queue's dead-letter routing key, an ``x-death`` entry per
(queue, reason) with a count, the ``x-first-death-*`` headers, and without its expiration (kept
as ``original-expiration``) so it does not expire again. A message that would go round a cycle
of queues with no rejection in it is dropped for the queue that closes the cycle.
"""

from __future__ import annotations

import datetime
import logging
from typing import TYPE_CHECKING, Any

from ..amqp.table import Long
from .timers import now_ms

if TYPE_CHECKING:
    from .message import Message
    from .queue import Queue

log = logging.getLogger("hare.deadletter")

REJECTED, EXPIRED, MAXLEN, DELIVERY_LIMIT = "rejected", "expired", "maxlen", "delivery_limit"


def cc_keys(headers: dict[str, Any], name: str = "CC") -> list[str]:
    """The extra routing keys of a CC (or BCC) header: sender-selected distribution."""
    cc = headers.get(name)
    if not isinstance(cc, list):
        return []
    return [k.decode("utf-8", "surrogateescape") if isinstance(k, bytes) else k for k in cc
            if isinstance(k, str | bytes)]


def dead_letter(queue: Queue, msg: Message, reason: str) -> None:
    """Republish ``msg`` to ``queue``'s dead-letter exchange, if it has one (else drop it)."""
    settings = queue.settings
    dlx_name = settings.dead_letter_exchange
    vhost = queue.vhost
    if dlx_name is None or vhost is None:
        return
    dlx = vhost.exchanges.get(dlx_name)
    if dlx is None:
        log.debug("dead-letter exchange '%s' of queue '%s' does not exist: message dropped", dlx_name,
                  queue.name)
        return
    props = dict(msg.properties)
    headers = dict(props.get("headers") or {})
    keys = [msg.routing_key, *cc_keys(headers)]
    headers.pop("CC", None)
    headers.pop("BCC", None)
    deaths = [d for d in headers.get("x-death") or [] if isinstance(d, dict)]
    for i, d in enumerate(deaths):
        if d.get("queue") == queue.name and d.get("reason") == reason:
            entry = dict(d)
            entry["count"] = Long((entry.get("count") if isinstance(entry.get("count"), int) else 0) + 1)
            del deaths[i]
            break
    else:
        entry = {"count": Long(1), "reason": reason, "queue": queue.name,
                 "time": datetime.datetime.fromtimestamp(now_ms() // 1000, datetime.UTC),
                 "exchange": msg.exchange, "routing-keys": keys}
        expiration = props.get("expiration")
        if expiration is not None:
            entry["original-expiration"] = expiration
    deaths.insert(0, entry)
    headers["x-death"] = deaths
    headers.setdefault("x-first-death-exchange", msg.exchange)
    headers.setdefault("x-first-death-queue", queue.name)
    headers.setdefault("x-first-death-reason", reason)
    props["headers"] = headers
    props.pop("expiration", None)
    routing_key = settings.dead_letter_routing_key
    dead = msg.with_properties(props, exchange=dlx_name,
                               routing_key=routing_key if routing_key is not None else msg.routing_key)
    for target in vhost.route(dlx, dead, keys if routing_key is None else None):
        if reason != REJECTED and _is_cycle(target.name, deaths):
            log.debug("dead-letter cycle through queue '%s': message dropped", target.name)
            continue
        target.publish(dead)


def _is_cycle(queue_name: str, deaths: list[dict[str, Any]]) -> bool:
    """Would ``queue_name`` take back a message it already dead-lettered, with no rejection on
    the way (a loop that would never end)?"""
    for d in deaths:
        if d.get("reason") == REJECTED:
            return False
        if d.get("queue") == queue_name:
            return True
    return False
