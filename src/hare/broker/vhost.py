"""A virtual host: its exchanges, queues and bindings, and the routing of a published message.

Declarations and deletions check what RabbitMQ checks and raise its errors with its texts. This is
the in-memory model only: it persists nothing and announces nothing. Every change of it goes
through ``broker/commands.py``, which applies it here, keeps it in the definitions store and
follows its consequences (the bindings of a deleted queue or exchange, an auto-delete exchange
whose last binding went).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..amqp.errors import (
    ChannelError,
    ConnectionFault,
    access_refused,
    not_found,
    precondition_failed,
    resource_locked,
)
from ..store.paged import PagedQueueStore
from ..store.priority import PriorityQueueStore, level_name
from .arguments import check_equivalent_queue_args, validate_queue_arguments
from .arguments import type_name as arg_type_name
from .direct_reply import DirectReply
from .exchanges import EXCHANGE_TYPES, Exchange
from .exchanges.default import DefaultExchange
from .message import Message
from .policies import Policy, for_exchange, for_queue, make_policy
from .queue import Queue, QuorumQueue, queue_class
from .queue_settings import queue_settings
from .timers import Timers

if TYPE_CHECKING:
    from ..store.base import QueueStore
    from ..store.message_store import MessageStore

# a binding as the model holds it: (source exchange, destination queue or exchange, routing key,
# arguments)
Binding = tuple[Exchange, Any, str, dict[str, Any]]

STANDARD_EXCHANGES = (
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
    ("amq.rabbitmq.trace", "topic"),  # internal, as RabbitMQ declares it in every vhost
)


def server_queue_name() -> str:
    """A server-named queue: ``amq.gen-`` and 22 url-safe base64 characters, as RabbitMQ."""
    return "amq.gen-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


def _max_priority(arguments: dict[str, Any] | None) -> int:
    """A priority queue's highest priority (x-max-priority), or 0 for a queue without priorities."""
    value = arguments.get("x-max-priority") if arguments else None
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return min(max(value, 0), 255)


def _flag(value: bool) -> str:
    return "true" if value else "false"


class VirtualHost:
    def __init__(self, name: str, store: MessageStore | None = None, timers: Timers | None = None) -> None:
        self.name = name
        self.timers = timers if timers is not None else Timers()  # the broker's deadlines
        self.store = store  # None: messages in memory only (no data directory)
        # what a queue whose x-expires ran out calls: the broker sets it to the command layer's
        # queue_expired; a bare model (no broker) just drops the queue
        self.on_expired: Callable[[Queue], None] = self.remove_queue
        self.queues: dict[str, Queue] = {}
        self.limits: dict[str, int] = {}  # max-connections, max-queues (broker/commands.py)
        self._policies: dict[str, Policy] = {}  # by name (policies.py; set_policy, clear_policy)
        self.direct_reply = DirectReply()  # the channels consuming amq.rabbitmq.reply-to
        self.default_exchange = DefaultExchange(self.queues, vhost_name=name, replies=self.direct_reply)
        self.exchanges: dict[str, Exchange] = {"": self.default_exchange}
        for ex_name, ex_type in STANDARD_EXCHANGES:
            self.exchanges[ex_name] = EXCHANGE_TYPES[ex_type](
                ex_name, durable=True, internal=ex_name == "amq.rabbitmq.trace", vhost_name=name)

    def _in_vhost(self, kind: str, name: str) -> str:
        return f"{kind} '{name}' in vhost '{self.name}'"

    # -- lookups --------------------------------------------------------------------------------

    def get_exchange(self, name: str) -> Exchange:
        ex = self.exchanges.get(name)
        if ex is None:
            raise not_found(f"no {self._in_vhost('exchange', name)}")
        return ex

    def get_queue(self, name: str, conn: Any = None) -> Queue:
        q = self.queues.get(name)
        if q is None:
            raise not_found(f"no {self._in_vhost('queue', name)}")
        if q.exclusive and q.owner is not conn:
            raise self._locked(q)
        return q

    def _locked(self, q: Queue) -> ChannelError:
        return resource_locked(
            f"cannot obtain exclusive access to locked {self._in_vhost('queue', q.name)}. It could be "
            "originally declared on another connection or the exclusive property value does not "
            "match that of the original declaration.")

    # -- exchanges ------------------------------------------------------------------------------

    def declare_exchange(self, name: str, type_name: str, passive: bool = False, durable: bool = False,
                         auto_delete: bool = False, internal: bool = False,
                         arguments: dict[str, Any] | None = None) -> Exchange:
        # RabbitMQ's order: type (503), default exchange (403), then the 'amq.' prefix only when
        # the exchange does not exist yet (redeclaring amq.direct as it is succeeds)
        if passive:
            if not name:
                raise access_refused("operation not permitted on the default exchange")
            return self.get_exchange(name)
        cls = EXCHANGE_TYPES.get(type_name)
        if cls is None:
            raise ConnectionFault(503, f"unknown exchange type '{type_name}'")
        if not name:
            raise access_refused("operation not permitted on the default exchange")
        arguments = arguments or {}
        ex = self.exchanges.get(name)
        if ex is not None:
            self._check_exchange_equivalent(ex, type_name, durable, auto_delete, internal, arguments)
            return ex
        ex = self.new_exchange(name, type_name, durable, auto_delete, internal, arguments)
        self.exchanges[name] = ex
        ex.attach(self)
        if self._policies:
            self._apply_exchange_policy(ex)
        return ex

    def new_exchange(self, name: str, type_name: str, durable: bool, auto_delete: bool, internal: bool,
                     arguments: dict[str, Any]) -> Exchange:
        """A new exchange, checked, not added (a cluster writes it first: ``Commands``)."""
        if name.startswith("amq."):
            raise access_refused(f"exchange name '{name}' contains reserved prefix 'amq.*'")
        if "alternate-exchange" in arguments and not isinstance(arguments["alternate-exchange"], str):
            raise precondition_failed(  # RabbitMQ's r_arg: only a longstr names an exchange
                f"invalid type '{arg_type_name(arguments['alternate-exchange'])}' for arg "
                f"'alternate-exchange' in {self._in_vhost('exchange', name)}")
        return EXCHANGE_TYPES[type_name](name, durable=durable, auto_delete=auto_delete, internal=internal,
                                         arguments=arguments, vhost_name=self.name)

    def _check_exchange_equivalent(self, ex: Exchange, type_name: str, durable: bool,
                                   auto_delete: bool, internal: bool,
                                   arguments: dict[str, Any]) -> None:
        what = self._in_vhost("exchange", ex.name)
        if ex.type_name != type_name:
            raise precondition_failed(f"inequivalent arg 'type' for {what}: received '{type_name}' "
                                      f"but current is '{ex.type_name}'")
        for arg, have, want in (("durable", ex.durable, durable),
                                ("auto_delete", ex.auto_delete, auto_delete),
                                ("internal", ex.internal, internal)):
            if have != want:
                raise precondition_failed(f"inequivalent arg '{arg}' for {what}: received "
                                          f"'{_flag(want)}' but current is '{_flag(have)}'")
        have_ae = ex.arguments.get("alternate-exchange")
        want_ae = arguments.get("alternate-exchange")
        if have_ae != want_ae:
            raise precondition_failed(f"inequivalent arg 'alternate-exchange' for {what}: received "
                                      f"{_describe(want_ae)} but current is {_describe(have_ae)}")

    def delete_exchange(self, name: str, if_unused: bool = False) -> list[Binding]:
        """Delete an exchange (nothing if there is none); return the bindings that went with it."""
        ex = self.exchange_to_delete(name, if_unused)
        return [] if ex is None else self.remove_exchange(ex)

    def exchange_to_delete(self, name: str, if_unused: bool = False) -> Exchange | None:
        """The exchange exchange.delete would delete (None: there is none), after RabbitMQ's checks."""
        if not name:
            raise access_refused("operation not permitted on the default exchange")
        if name.startswith("amq."):
            raise access_refused(f"deletion of system {self._in_vhost('exchange', name)} not allowed")
        ex = self.exchanges.get(name)
        if ex is None:
            return  # RabbitMQ 3.x: deleting a missing exchange is not an error
        if if_unused and ex.bindings:
            raise precondition_failed(f"{self._in_vhost('exchange', name)} in use")
        return ex

    def remove_exchange(self, ex: Exchange) -> list[Binding]:
        """Drop an exchange with its bindings, from it and to it; return those bindings. An
        auto-delete exchange that lost its last binding by this is not deleted here: the command
        layer does that (``auto_delete_due``)."""
        if self.exchanges.get(ex.name) is not ex:
            return []
        del self.exchanges[ex.name]
        gone: list[Binding] = [(ex, dest, key, args) for (dest, key, _f), args in ex.bindings.items()]
        ex.detach()
        return gone + self._unbind_all(ex)

    def _unbind_all(self, dest: Any) -> list[Binding]:
        """Remove every binding to ``dest`` (a deleted queue or exchange); return them."""
        gone = self.bindings_to(dest)
        for src, _dest, key, args in gone:
            src.unbind(dest, key, args)
        return gone

    def bindings_to(self, dest: Any) -> list[Binding]:
        """The bindings whose destination is ``dest`` (a queue or an exchange)."""
        return [(src, dest, key, args) for src in self.exchanges.values()
                for (d, key, _f), args in src.bindings.items() if d is dest]

    def auto_delete_due(self, ex: Exchange) -> bool:
        """An auto-delete exchange that has lost its last binding (RabbitMQ then deletes it)."""
        return ex.auto_delete and not ex.bindings and self.exchanges.get(ex.name) is ex

    def bind_exchange(self, destination: str, source: str, routing_key: str,
                      arguments: dict[str, Any] | None, dry: bool = False) -> Binding | None:
        """Bind; return the new binding (None: it was there already). ``dry``: check, and return
        the binding it would make, without making it (a cluster writes it first)."""
        if not destination or not source:
            raise access_refused("operation not permitted on the default exchange")
        src = self.get_exchange(source)  # RabbitMQ looks the source up first
        dest = self.get_exchange(destination)
        src.validate_binding(routing_key, arguments or {})
        if dry:
            return None if src.has_binding(dest, routing_key, arguments) else (src, dest, routing_key,
                                                                                arguments or {})
        if src.bind(dest, routing_key, arguments):
            return src, dest, routing_key, arguments or {}
        return None

    def unbind_exchange(self, destination: str, source: str, routing_key: str,
                        arguments: dict[str, Any] | None, dry: bool = False) -> Binding | None:
        """Unbind; return the binding removed (None: there was none); ``dry``: as bind's."""
        if not destination or not source:
            raise access_refused("operation not permitted on the default exchange")
        src = self.exchanges.get(source)
        dest = self.exchanges.get(destination)
        if src is None or dest is None:
            return None  # RabbitMQ 3.x: unbinding a missing exchange is not an error
        if dry:
            return (src, dest, routing_key, arguments or {}) if src.has_binding(dest, routing_key,
                                                                                  arguments) else None
        if src.unbind(dest, routing_key, arguments):
            return src, dest, routing_key, arguments or {}
        return None

    # -- queues ---------------------------------------------------------------------------------

    def declare_queue(self, name: str, passive: bool = False, durable: bool = False,
                      exclusive: bool = False, auto_delete: bool = False,
                      arguments: dict[str, Any] | None = None, conn: Any = None,
                      server_named: bool = False) -> Queue:
        """``server_named``: ``name`` was made by server_queue_name (its 'amq.' is the broker's)."""
        if passive:
            if not name:
                raise not_found(f"no {self._in_vhost('queue', name)}")
            q = self.get_queue(name, conn)
            q.touch()
            return q
        arguments = arguments or {}
        durable = durable and not exclusive  # RabbitMQ: an exclusive queue is never durable
        if not name:
            name = server_queue_name()
        elif name.startswith("amq.") and not server_named:
            raise access_refused(f"queue name '{name}' contains reserved prefix 'amq.*'")
        q = self.queues.get(name)
        if q is not None:
            if (q.exclusive and q.owner is not conn) or q.exclusive != exclusive:
                raise self._locked(q)  # checked before durable/auto_delete, as RabbitMQ
            what = self._in_vhost("queue", name)
            for arg, have, want in (("durable", q.durable, durable),
                                    ("auto_delete", q.auto_delete, auto_delete)):
                if have != want:
                    raise precondition_failed(f"inequivalent arg '{arg}' for {what}: received "
                                              f"'{_flag(want)}' but current is '{_flag(have)}'")
            check_equivalent_queue_args(what, q.arguments, arguments)
            q.touch()
            return q
        self.check_new_queue(name, durable, exclusive, auto_delete, arguments)
        # exclusive and auto-delete queues never outlive the broker: only others are kept
        kept = durable and not auto_delete
        store = self._queue_store(name, kept, arguments=arguments)
        q = queue_class(arguments)(name, vhost=self, durable=durable, exclusive=exclusive,
                                   owner=conn if exclusive else None, auto_delete=auto_delete,
                                   arguments=arguments, store=store,
                                   policy=self._policy_definition(name, arguments))
        self.queues[name] = q
        return q

    def check_new_queue(self, name: str, durable: bool, exclusive: bool, auto_delete: bool,
                        arguments: dict[str, Any]) -> None:
        """What ``declare_queue`` checks before it makes a queue (a cluster writes it first)."""
        validate_queue_arguments(self._in_vhost("queue", name), arguments, durable and not exclusive,
                                 exclusive, auto_delete)

    def _queue_store(self, name: str, kept: bool, recovered: Any = None,
                     arguments: dict[str, Any] | None = None) -> QueueStore | None:
        """The message store of a queue: in memory only without a data directory; else paged to
        the queue's log (which a queue that survives restarts also uses for persistent messages).
        A priority queue (x-max-priority) has one such store, and log, per level."""
        store = self.store
        vhost = self.name
        max_priority = _max_priority(arguments)
        if max_priority:
            if store is None:
                return PriorityQueueStore(max_priority, None)
            return PriorityQueueStore(
                max_priority, lambda level: store.open_log(vhost, level_name(name, level), kept), Message,
                kept, logs=recovered)
        if store is None:
            return None
        return PagedQueueStore(lambda: store.open_log(vhost, name, kept), Message, kept, log=recovered)

    def restore_queue(self, name: str, arguments: dict[str, Any]) -> Queue:
        """A durable queue as the last run left it, with the messages of its log (at startup)."""
        store = self.store
        recovered: Any = None
        if store is not None:
            max_priority = _max_priority(arguments)
            if max_priority:  # a log per priority level
                recovered = {level: log for level in range(max_priority + 1)
                             if (log := store.recover_log(self.name, level_name(name, level))) is not None}
            else:
                recovered = store.recover_log(self.name, name)
        q = queue_class(arguments)(name, vhost=self, durable=True, arguments=arguments,
                                   store=self._queue_store(name, True, recovered, arguments),
                                   policy=self._policy_definition(name, arguments))
        self.queues[name] = q
        return q

    def restore_exchange(self, name: str, type_name: str, auto_delete: bool, internal: bool,
                         arguments: dict[str, Any]) -> None:
        cls = EXCHANGE_TYPES.get(type_name)
        if cls is None or name in self.exchanges:
            return
        ex = self.exchanges[name] = cls(name, durable=True, auto_delete=auto_delete, internal=internal,
                                        arguments=arguments, vhost_name=self.name)
        ex.attach(self, recovered=True)
        if self._policies:
            self._apply_exchange_policy(ex)

    def restore_binding(self, source: str, kind: str, destination: str, routing_key: str,
                        arguments: dict[str, Any]) -> None:
        src = self.exchanges.get(source)
        dest = self.queues.get(destination) if kind == "queue" else self.exchanges.get(destination)
        if src is not None and dest is not None:
            src.bind(dest, routing_key, arguments)

    def delete_queue(self, name: str, if_unused: bool = False, if_empty: bool = False,
                     conn: Any = None) -> int:
        q = self.queue_to_delete(name, if_unused, if_empty, conn)
        return 0 if q is None else self.remove_queue(q)

    def queue_to_delete(self, name: str, if_unused: bool = False, if_empty: bool = False,
                        conn: Any = None) -> Queue | None:
        """The queue queue.delete would delete (None: there is none), after RabbitMQ's checks."""
        q = self.queues.get(name)
        if q is None:
            return None  # RabbitMQ 3.x: deleting a missing queue is not an error
        if q.exclusive and q.owner is not conn:
            raise self._locked(q)
        # a classic queue checks if_empty before if_unused
        if if_empty and q.message_count:
            raise precondition_failed(f"{self._in_vhost('queue', name)} not empty")
        if if_unused and q.consumer_count:
            raise precondition_failed(f"{self._in_vhost('queue', name)} in use")
        return q

    def remove_queue(self, q: Queue) -> int:
        """Delete a queue: unbind it, cancel its consumers; return its ready message count."""
        return self.drop_queue(q)[0]

    def drop_queue(self, q: Queue) -> tuple[int, list[Binding]]:
        """``remove_queue``, also returning the bindings that went with the queue (the command
        layer announces them and deletes the auto-delete exchanges that lost their last one)."""
        if self.queues.get(q.name) is not q:
            return 0, []
        del self.queues[q.name]
        q.deleted = True
        count = q.message_count
        q.stop_timers()
        q.store.destroy()
        q.release_flow()
        gone = self._unbind_all(q)
        for consumer in q.consumers():
            q.remove_consumer(consumer)
            consumer.target.consumer_cancelled(consumer)
        return count, gone

    def bind_queue(self, queue: str, exchange: str, routing_key: str,
                   arguments: dict[str, Any] | None, conn: Any = None, dry: bool = False) -> Binding | None:
        """Bind; return the new binding (None: it was there already); ``dry``: as bind_exchange's."""
        # RabbitMQ's order: default exchange (403), exchange (404), queue (404), binding
        # arguments (406), exclusive access (405)
        if not exchange:
            raise access_refused("operation not permitted on the default exchange")
        ex = self.get_exchange(exchange)
        q = self.queues.get(queue)
        if q is None:
            raise not_found(f"no {self._in_vhost('queue', queue)}")
        ex.validate_binding(routing_key, arguments or {})
        if q.exclusive and q.owner is not conn:
            raise self._locked(q)
        if dry:
            new = not ex.has_binding(q, routing_key, arguments)
            return (ex, q, routing_key, arguments or {}) if new else None
        if ex.bind(q, routing_key, arguments):
            return ex, q, routing_key, arguments or {}
        return None

    def unbind_queue(self, queue: str, exchange: str, routing_key: str,
                     arguments: dict[str, Any] | None, conn: Any = None, dry: bool = False) -> Binding | None:
        """Unbind; return the binding removed (None: there was none); ``dry``: as bind_exchange's."""
        if not exchange:
            raise access_refused("operation not permitted on the default exchange")
        ex = self.exchanges.get(exchange)
        q = self.queues.get(queue)
        if ex is None or q is None or not ex.has_binding(q, routing_key, arguments):
            return None  # RabbitMQ 3.x: unbinding what does not exist is not an error
        if q.exclusive and q.owner is not conn:
            raise self._locked(q)
        if dry:
            return ex, q, routing_key, arguments or {}
        if ex.unbind(q, routing_key, arguments):
            return ex, q, routing_key, arguments or {}
        return None

    def queue_auto_delete_due(self, q: Queue) -> bool:
        """After a consumer went away: an auto-delete queue that had one and has none left is
        deleted (by the command layer)."""
        return (q.auto_delete and not q.consumer_count and q.had_consumer
                and self.queues.get(q.name) is q)

    def exclusive_queues(self, conn: Any) -> list[Queue]:
        """The exclusive queues a connection owns (deleted when it closes)."""
        return [q for q in self.queues.values() if q.exclusive and q.owner is conn]

    # -- policies ---------------------------------------------------------------------------------

    def policies(self) -> list[Policy]:
        """The policies, ordered as ``rabbitmqctl list_policies`` lists them (by priority)."""
        return sorted(self._policies.values(), key=lambda p: (p.priority, p.name))

    def set_policy(self, name: str, pattern: str, definition: Any, priority: Any = 0,
                   apply_to: str = "all") -> Policy:
        """Add or replace a policy (``policies.PolicyError``, with RabbitMQ's text, if it is not
        valid) and apply it at once to the queues and exchanges it now governs."""
        policy = make_policy(self.name, name, pattern, definition, priority, apply_to)
        self._policies[name] = policy
        self._reapply_policies()
        return policy

    def clear_policy(self, name: str) -> bool:
        """Remove a policy (False if there is none of that name); what it governed reverts to its
        arguments, or to the next matching policy."""
        if self._policies.pop(name, None) is None:
            return False
        self._reapply_policies()
        return True

    def restore_policy(self, name: str, pattern: str, apply_to: str, priority: int,
                       definition: dict[str, Any]) -> None:
        """A kept policy, at startup (before the queues and exchanges it applies to)."""
        self._policies[name] = make_policy(self.name, name, pattern, definition, priority, apply_to)

    def policy_for_queue(self, q: Queue) -> Policy | None:
        return for_queue(self._policies.values(), q.name, q.arguments) if self._policies else None

    def policy_for_exchange(self, ex: Exchange) -> Policy | None:
        if not ex.name or not self._policies:
            return None
        return for_exchange(self._policies.values(), ex.name)

    def _policy_definition(self, name: str, arguments: dict[str, Any] | None) -> dict[str, Any] | None:
        """The definition of the policy for a new queue, or None."""
        if not self._policies:
            return None
        p = for_queue(self._policies.values(), name, arguments or {})
        return p.definition if p is not None else None

    def _apply_exchange_policy(self, ex: Exchange) -> None:
        """Set the exchange's effective alternate exchange: its argument, else its policy's."""
        ae = ex.arguments.get("alternate-exchange")
        if ae is None:
            p = self.policy_for_exchange(ex)
            if p is not None:
                ae = p.definition.get("alternate-exchange")
        ex.alternate_exchange = ae

    def _reapply_policies(self) -> None:
        """After a policy changed: give every queue and exchange the policy that now applies."""
        policies = self._policies.values()
        for q in list(self.queues.values()):
            p = for_queue(policies, q.name, q.arguments)
            definition = p.definition if p is not None else None
            if definition is q.policy or q.deleted:
                continue
            if queue_settings(q.arguments, definition).expires is not None:
                q.touch()  # as RabbitMQ: a new policy restarts the queue's expiry countdown
            q.apply_policy(definition)
        for ex in list(self.exchanges.values()):
            self._apply_exchange_policy(ex)

    # -- routing --------------------------------------------------------------------------------

    def route(self, ex: Exchange, msg: Message, keys: list[str] | None = None) -> list[Queue]:
        """The queues ``msg`` goes to: follows exchange-to-exchange bindings and alternate
        exchanges; each queue appears once. ``keys``: route by each of these routing keys instead
        of the message's own (CC/BCC headers, dead-lettering)."""
        if keys is not None and keys != [msg.routing_key]:
            found: dict[Queue, None] = {}
            for key in dict.fromkeys(keys):
                for q in self._route_key(ex, msg, key):
                    found[q] = None
            return list(found)
        out: list[Any] = []  # the common case inline: one key, straight to one queue
        ex.route(msg, msg.routing_key, out)
        if len(out) == 1 and (type(out[0]) is Queue or type(out[0]) is QuorumQueue):
            return out
        return self._route_key(ex, msg, msg.routing_key, out)

    def _route_key(self, ex: Exchange, msg: Message, routing_key: str,
                   out: list[Any] | None = None) -> list[Queue]:
        if out is None:
            out = []
            ex.route(msg, routing_key, out)
            if len(out) == 1 and (type(out[0]) is Queue or type(out[0]) is QuorumQueue):
                return out
        if not out and ex.alternate_exchange is None:
            return out
        queues: dict[Queue, None] = {}
        seen = {ex}
        pending = [(ex, out)]
        while pending:
            src, dests = pending.pop()
            if not dests:
                ae = self.exchanges.get(src.alternate_exchange or "")
                if ae is not None and ae.name and ae not in seen:
                    seen.add(ae)
                    nxt: list[Any] = []
                    ae.route(msg, routing_key, nxt)
                    pending.append((ae, nxt))
                continue
            for d in dests:
                if isinstance(d, Queue):  # (a QuorumQueue too)
                    queues[d] = None
                elif d not in seen:
                    seen.add(d)
                    nxt = []
                    d.route(msg, routing_key, nxt)
                    pending.append((d, nxt))
        return list(queues)


def _describe(value: Any) -> str:
    if value is None:
        return "none"
    return f"'{value}'"
