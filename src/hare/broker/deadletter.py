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
    """Republish ``msg`` to ``queue``'s dead-letter exchange, if it has one (else drop it).

    Never raises: it runs inside broker-wide loops (timers, dispatch, connection teardown) and on
    behalf of clients the message does not belong to (an innocent publisher whose message pushes
    it off the head, a consumer rejecting it). A message whose properties cannot be decoded is
    dead-lettered with its properties as published (no x-death) and the queue's name is logged;
    one that cannot be routed either is dropped with an ERROR log."""
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
    routing_key = settings.dead_letter_routing_key
    deaths: list[dict[str, Any]] | None
    try:
        dead, keys, deaths = _with_death(queue, msg, reason, dlx_name, routing_key)
    except Exception as exc:  # properties that do not decode (or re-encode)
        log.error("queue '%s' in vhost '%s': cannot add x-death to a message dead-lettered (%s) to "
                  "exchange '%s' (%s): dead-lettered with its properties as published", queue.name,
                  queue.vhost_name, reason, dlx_name, exc)
        dead = msg.rerouted(dlx_name, routing_key if routing_key is not None else msg.routing_key)
        keys, deaths = [msg.routing_key], None
    try:
        targets = vhost.route(dlx, dead, keys if routing_key is None else None)
    except Exception as exc:
        log.error("queue '%s' in vhost '%s': cannot route a message dead-lettered (%s) through "
                  "exchange '%s' (%s): message dropped", queue.name, queue.vhost_name, reason,
                  dlx_name, exc)
        return
    for target in targets:
        if reason != REJECTED and (target is queue if deaths is None else _is_cycle(target.name, deaths)):
            log.debug("dead-letter cycle through queue '%s': message dropped", target.name)
            continue
        try:
            target.publish(dead)
        except Exception:
            log.exception("queue '%s' in vhost '%s': a message dead-lettered (%s) from queue '%s' "
                          "could not be enqueued: dropped for this queue", target.name,
                          queue.vhost_name, reason, queue.name)


def _with_death(queue: Queue, msg: Message, reason: str, dlx_name: str, routing_key: str | None
                ) -> tuple[Message, list[str], list[dict[str, Any]]]:
    """The dead-lettered copy of ``msg`` (x-death and x-first-death-* headers, no expiration), the
    routing keys it goes by, and its x-death entries."""
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
    dead = msg.with_properties(props, exchange=dlx_name,
                               routing_key=routing_key if routing_key is not None else msg.routing_key)
    return dead, keys, deaths


def _is_cycle(queue_name: str, deaths: list[dict[str, Any]]) -> bool:
    """Would ``queue_name`` take back a message it already dead-lettered, with no rejection on
    the way (a loop that would never end)?"""
    for d in deaths:
        if d.get("reason") == REJECTED:
            return False
        if d.get("queue") == queue_name:
            return True
    return False
