"""The command layer: the one path for every change of the broker's metadata.

Exchanges, queues and bindings (declare, delete, bind, unbind), virtual hosts, users, permissions,
topic permissions, limits and policies change only through ``Commands``. Each command validates
its input, checks the caller's permissions (an AMQP channel passes its ``Access``; the operator —
``hare ctl``, a definitions file, later the HTTP API — passes none and may do anything), applies
the change to the model (``VirtualHost``, ``UserStore``: in memory only), persists it and then
announces it to ``listeners`` (``events.Event``). The AMQP channel, the control socket and the
definitions loader all call it, so a rule lives in one place. It is the only caller of the
definitions store's writers (tests/test_metadata_writer.py checks it). Its parts: the user
commands (``user_commands.py``), what a command refuses (``command_errors.py``), and in a cluster
the proposing of each change instead of making it (``proposal.py``; docs/clustering.md). The
definitions file's import and export are in ``definitions_file.py``.

The deletions the broker makes by itself come here too, with their reason and no permission
check (RabbitMQ deletes them internally): an auto-delete queue whose last consumer went
(``consumer_removed``), an exclusive queue whose connection closed (``connection_closed``), a
queue whose x-expires ran out (``queue_expired``), the bindings of a deleted queue or exchange, an
auto-delete exchange whose last binding went, everything in a deleted vhost.

Permission checks follow RabbitMQ 3.10's ``rabbit_channel``: which permission each method needs,
on which resource, and where in the method's other checks it comes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..amqp.errors import ConnectionFault, access_refused, precondition_failed
from ..auth.permissions import CONFIGURE, READ, WRITE, Access
from ..auth.users import (
    KNOWN_TAGS,
    User,
    user_from_record,
    user_record,
)
from . import events
from .command_errors import CommandError, _limits, _no_such_user, _no_such_vhost
from .events import Event
from .exchanges import EXCHANGE_TYPES
from .policies import make_policy
from .proposal import Change, Pending, Proposed, Proposing
from .user_commands import UserCommands
from .vhost import Binding, VirtualHost, server_queue_name

if TYPE_CHECKING:
    from .broker import Broker
    from .exchanges import Exchange
    from .policies import Policy
    from .queue import Queue

VHOST_LIMITS = ("max-connections", "max-queues")

log = logging.getLogger("hare.commands")


class Commands(UserCommands, Proposing):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        # called with each Event after the change is applied and persisted (events.py)
        self.listeners: list[Callable[[Event], None]] = []
        # In a cluster (cluster/definitions.py: ClusterDefinitions): a command proposes its change
        # (broker/proposal.py) and the model changes when the cluster applies it, through this
        # class in its local mode (``local``). Without one, every change is made here at once.
        self.cluster: Any = None
        self.replay: Pending | None = None  # the change of the command now running again
        self._local = 0
        self._collected: dict[str, dict[str, Any] | None] | None = None  # (proposal.user_change)

    @property
    def _defs(self) -> Any:
        return self.broker.definitions

    def _announce(self, kind: str, vhost: str, name: str, **details: Any) -> None:
        """Tell the listeners of a change already applied and persisted. A listener that fails
        is logged: the change stands, and the caller gets its answer."""
        if self.listeners and self._collected is None:
            event = Event(kind, vhost, name, details)
            for listener in list(self.listeners):
                try:
                    listener(event)
                except Exception:
                    log.exception("a listener of metadata changes failed on %s", event)

    # -- exchanges ---------------------------------------------------------------------------------

    def declare_exchange(self, vhost: VirtualHost, name: str, type_name: str, passive: bool = False,
                         durable: bool = False, auto_delete: bool = False, internal: bool = False,
                         arguments: dict[str, Any] | None = None, access: Access | None = None) -> Exchange:
        if access is not None and not passive:
            # RabbitMQ's order: type (503), default exchange (403), configure; for a new exchange
            # the 'amq.' prefix, then read on it and write on its alternate exchange
            if type_name not in EXCHANGE_TYPES:
                raise ConnectionFault(503, f"unknown exchange type '{type_name}'")
            if not name:
                raise access_refused("operation not permitted on the default exchange")
            access.check(CONFIGURE, "exchange", name)
            ae = (arguments or {}).get("alternate-exchange")
            if name not in vhost.exchanges and not name.startswith("amq.") and isinstance(ae, str):
                access.check(READ, "exchange", name)
                access.check(WRITE, "exchange", ae)
        existing = vhost.exchanges.get(name)
        if self.clustered and existing is None:
            if passive:
                self._barrier()
            elif name and type_name in EXCHANGE_TYPES:
                self._propose_exchange(vhost, name, type_name, durable, auto_delete, internal,
                                       arguments or {})
                existing = vhost.exchanges.get(name)
        ex = vhost.declare_exchange(name, type_name, passive=passive, durable=durable,
                                    auto_delete=auto_delete, internal=internal, arguments=arguments)
        if ex is not existing:
            if ex.durable and self._defs is not None:
                self._defs.add_exchange(vhost.name, ex.name, ex.type_name, ex.auto_delete, ex.internal,
                                        ex.arguments)
            self._announce("exchange.created", vhost.name, ex.name, type=ex.type_name, durable=ex.durable,
                           auto_delete=ex.auto_delete, internal=ex.internal, arguments=ex.arguments)
        return ex

    def _propose_exchange(self, vhost: VirtualHost, name: str, type_name: str, durable: bool,
                          auto_delete: bool, internal: bool, arguments: dict[str, Any]) -> None:
        vhost.new_exchange(name, type_name, durable, auto_delete, internal, arguments)  # its checks
        key, value = self.cluster.exchange_entry(vhost.name, name, type_name, durable, auto_delete,
                                                 internal, arguments)
        change = Change()
        change.put(key, value)
        self._propose(self.cluster.guard_absent(change, key))

    def delete_exchange(self, vhost: VirtualHost, name: str, if_unused: bool = False,
                        access: Access | None = None) -> None:
        if access is not None and name and not name.startswith("amq."):
            access.check(CONFIGURE, "exchange", name)  # after the default and 'amq.' checks
        ex = vhost.exchange_to_delete(name, if_unused=if_unused)
        if ex is not None:
            if self.clustered:
                change = Change()
                self.cluster.exchange_gone(change, vhost, ex)
                self.cluster.orphans(change, vhost, vhost.bindings_to(ex))
                self._propose(change)
                return
            self._remove_exchange(vhost, ex, None)

    def _remove_exchange(self, vhost: VirtualHost, ex: Exchange, reason: str | None,
                         persist: bool = True) -> None:
        """Delete an exchange, its bindings with it (reason "exchange_deleted"), then the
        auto-delete exchanges that lost their last binding by it."""
        gone = vhost.remove_exchange(ex)
        if persist and ex.durable and self._defs is not None:
            self._defs.remove_exchange(vhost.name, ex.name)  # its bindings too, in one transaction
        self._announce("exchange.deleted", vhost.name, ex.name, **_why(reason))
        self._bindings_gone(vhost, gone, events.EXCHANGE_DELETED, persist)

    def _bindings_gone(self, vhost: VirtualHost, gone: list[Binding], reason: str, persist: bool) -> None:
        """Bindings that went with their queue or exchange (already out of the store with it)."""
        for binding in gone:
            self._announce("binding.deleted", vhost.name, binding[0].name, **_binding_details(binding),
                           reason=reason)
        for src in dict.fromkeys(b[0] for b in gone):
            self._maybe_auto_delete(vhost, src, persist)

    def _maybe_auto_delete(self, vhost: VirtualHost, ex: Exchange, persist: bool = True) -> None:
        if vhost.auto_delete_due(ex):
            if self.cluster is not None:
                # the change that unbound it deletes it (ClusterDefinitions.orphans), unless the
                # binding was this node's alone (an exclusive queue's): then this node does
                if not self._local:
                    change = Change()
                    self.cluster.exchange_gone(change, vhost, ex)
                    self.cluster.submit(change)
                return
            self._remove_exchange(vhost, ex, events.AUTO_DELETE, persist)

    # -- queues ------------------------------------------------------------------------------------

    def declare_queue(self, vhost: VirtualHost, name: str, passive: bool = False, durable: bool = False,
                      exclusive: bool = False, auto_delete: bool = False,
                      arguments: dict[str, Any] | None = None, conn: Any = None,
                      access: Access | None = None) -> Queue:
        server_named = False
        if not passive:
            if not name:
                replay = self.replay
                name = replay.result if replay is not None and isinstance(replay.result, str) else None
                name, server_named = name or server_queue_name(), True
            elif name.startswith("amq."):  # before the permission check, as RabbitMQ
                return vhost.declare_queue(name)  # raises 403 'reserved prefix'
            if access is not None:
                access.check(CONFIGURE, "queue", name)
            if name not in vhost.queues:
                dlx = (arguments or {}).get("x-dead-letter-exchange")
                if access is not None and isinstance(dlx, str):
                    access.check(READ, "queue", name)
                    access.check(WRITE, "exchange", dlx)
                limit = vhost.limits.get("max-queues", -1)
                if 0 <= limit <= len(vhost.queues):
                    raise precondition_failed(f"cannot declare queue '{name}': queue limit in vhost "
                                              f"'{vhost.name}' ({limit}) is reached")
        existing = vhost.queues.get(name)
        if self.clustered and existing is None:
            if passive:
                self._barrier()
            elif not exclusive:
                vhost.check_new_queue(name, durable, exclusive, auto_delete, arguments or {})
                change = Change(result=name)
                self.cluster.new_queue(change, vhost.name, name, durable, auto_delete, arguments or {})
                self._propose(change)
                existing = vhost.queues.get(name)
        q = vhost.declare_queue(name, passive=passive, durable=durable, exclusive=exclusive,
                                auto_delete=auto_delete, arguments=arguments, conn=conn,
                                server_named=server_named)
        if q is not existing:
            if _kept(q) and self._defs is not None:
                self._defs.add_queue(vhost.name, q.name, q.arguments)
            self._announce("queue.created", vhost.name, q.name, durable=q.durable, auto_delete=q.auto_delete,
                           exclusive=q.exclusive, arguments=q.arguments)
        return q

    def delete_queue(self, vhost: VirtualHost, name: str, if_unused: bool = False, if_empty: bool = False,
                     conn: Any = None, access: Access | None = None) -> int:
        if access is not None:
            access.check(CONFIGURE, "queue", name)
        q = vhost.queue_to_delete(name, if_unused=if_unused, if_empty=if_empty, conn=conn)
        if q is None:
            replay = self.replay
            if replay is not None and replay.committed and isinstance(replay.result, int):
                self.replay = None
                return replay.result  # deleted by the cluster: the count when it was proposed
            return 0
        if self.clustered and self.cluster.in_cluster(q):
            change = Change(result=q.message_count)
            self.cluster.queue_gone(change, vhost, q)
            self._propose(change)
            return change.result
        return self._remove_queue(vhost, q, None)

    def _remove_queue(self, vhost: VirtualHost, q: Queue, reason: str | None, persist: bool = True) -> int:
        """Delete a queue (its consumers are cancelled), its bindings with it (reason
        "queue_deleted"), then the auto-delete exchanges that lost their last binding by it;
        return its ready message count. (In a cluster, a deletion the broker makes by itself is
        written to the cluster, which deletes it.)"""
        if self.clustered and self.cluster.in_cluster(q):
            change = Change()
            self.cluster.queue_gone(change, vhost, q)
            self.cluster.submit(change)
            return 0
        count, gone = vhost.drop_queue(q)
        if persist and _kept(q) and self._defs is not None:
            self._defs.remove_queue(vhost.name, q.name)  # its bindings too, in one transaction
        self._announce("queue.deleted", vhost.name, q.name, **_why(reason))
        self._bindings_gone(vhost, gone, events.QUEUE_DELETED, persist)
        return count

    def consumer_removed(self, vhost: VirtualHost, q: Queue) -> None:
        """A consumer of ``q`` went away (cancelled, its channel or connection closed): an
        auto-delete queue that has none left is deleted."""
        if vhost.queue_auto_delete_due(q):
            self._remove_queue(vhost, q, events.AUTO_DELETE)

    def connection_closed(self, vhost: VirtualHost, conn: Any) -> None:
        """A connection closed: the exclusive queues it owns are deleted."""
        for q in vhost.exclusive_queues(conn):
            self._remove_queue(vhost, q, events.EXCLUSIVE_OWNER_CLOSED)

    def queue_expired(self, vhost: VirtualHost, q: Queue) -> None:
        """A queue was unused for its x-expires (the queue's timer calls this)."""
        if vhost.queues.get(q.name) is q:
            self._remove_queue(vhost, q, events.EXPIRED)

    # -- bindings ----------------------------------------------------------------------------------

    def _check_binding(self, vhost: VirtualHost, access: Access, kind: str, destination: str,
                       source: str, routing_key: str) -> None:
        """RabbitMQ's order: write on the destination, the default exchange (403), read on the
        source, then the topic permission to read the routing key from a topic source."""
        access.check(WRITE, kind, destination)
        if not source or (kind == "exchange" and not destination):
            raise access_refused("operation not permitted on the default exchange")
        access.check(READ, "exchange", source)
        src = vhost.exchanges.get(source)
        if src is not None and src.type_name == "topic":
            access.check_topic(READ, source, routing_key)

    def bind_queue(self, vhost: VirtualHost, queue: str, exchange: str, routing_key: str,
                   arguments: dict[str, Any] | None, conn: Any = None, access: Access | None = None) -> None:
        if access is not None:
            self._check_binding(vhost, access, "queue", queue, exchange, routing_key)
        if self.clustered and self._propose_binding(vhost, self._found(lambda: vhost.bind_queue(
                queue, exchange, routing_key, arguments, conn=conn, dry=True)), True):
            return
        self._bound(vhost, vhost.bind_queue(queue, exchange, routing_key, arguments, conn=conn))

    def unbind_queue(self, vhost: VirtualHost, queue: str, exchange: str, routing_key: str,
                     arguments: dict[str, Any] | None, conn: Any = None,
                     access: Access | None = None) -> None:
        if access is not None:
            self._check_binding(vhost, access, "queue", queue, exchange, routing_key)
        if self.clustered and self._propose_binding(vhost, vhost.unbind_queue(
                queue, exchange, routing_key, arguments, conn=conn, dry=True), False):
            return
        self._unbound(vhost, vhost.unbind_queue(queue, exchange, routing_key, arguments, conn=conn))

    def bind_exchange(self, vhost: VirtualHost, destination: str, source: str, routing_key: str,
                      arguments: dict[str, Any] | None, access: Access | None = None) -> None:
        if access is not None:
            self._check_binding(vhost, access, "exchange", destination, source, routing_key)
        if self.clustered and self._propose_binding(vhost, self._found(lambda: vhost.bind_exchange(
                destination, source, routing_key, arguments, dry=True)), True):
            return
        self._bound(vhost, vhost.bind_exchange(destination, source, routing_key, arguments))

    def unbind_exchange(self, vhost: VirtualHost, destination: str, source: str, routing_key: str,
                        arguments: dict[str, Any] | None, access: Access | None = None) -> None:
        if access is not None:
            self._check_binding(vhost, access, "exchange", destination, source, routing_key)
        if self.clustered and self._propose_binding(
                vhost, vhost.unbind_exchange(destination, source, routing_key, arguments, dry=True), False):
            return
        self._unbound(vhost, vhost.unbind_exchange(destination, source, routing_key, arguments))

    def _propose_binding(self, vhost: VirtualHost, binding: Binding | None, add: bool) -> bool:
        """In a cluster: propose the binding ``dry`` found to make (``add``) or to remove, unless
        it is this node's alone (an exclusive queue's); True when the command is done."""
        if binding is None:
            return True  # nothing to change (or the change is applied: this command runs again)
        if not self.cluster.binding_in_cluster(binding):
            return False
        src, dest, routing_key, arguments = binding
        change = Change()
        if add:
            key, value = self.cluster.binding_entry(vhost.name, src.name, _kind(dest), dest.name,
                                                    routing_key, arguments)
            change.put(key, value)
        else:
            self.cluster.binding_gone(change, vhost.name, binding)
            self.cluster.orphans(change, vhost, [binding])
        self._propose(change)
        return True

    def _bound(self, vhost: VirtualHost, binding: Binding | None) -> None:
        if binding is None:
            return  # it was there already
        if _binding_kept(binding) and self._defs is not None:
            src, dest, routing_key, arguments = binding
            self._defs.add_binding(vhost.name, src.name, _kind(dest), dest.name, routing_key, arguments)
        self._announce("binding.created", vhost.name, binding[0].name, **_binding_details(binding))

    def _unbound(self, vhost: VirtualHost, binding: Binding | None) -> None:
        if binding is None:
            return
        src, dest, routing_key, arguments = binding
        if _binding_kept(binding) and self._defs is not None:
            self._defs.remove_binding(vhost.name, src.name, _kind(dest), dest.name, routing_key, arguments)
        self._announce("binding.deleted", vhost.name, src.name, **_binding_details(binding))
        self._maybe_auto_delete(vhost, src)

    # -- policies ----------------------------------------------------------------------------------

    def set_policy(self, vhost: VirtualHost, name: str, pattern: str, definition: Any, priority: Any = 0,
                   apply_to: str = "all") -> Policy:
        if self.clustered:
            replay = self._take_replay()
            if replay is None or not replay.committed:
                entry = make_policy(vhost.name, name, pattern, definition, priority, apply_to).as_json()
                same = [p for p in vhost.policies() if p.name == name and p.as_json() == entry]
                if same:
                    return same[0]  # it changes nothing (an import of what is there)
                change = Change()
                change.put(*self.cluster.policy_entry(entry))
                raise Proposed(self.cluster.propose(change))
            return next(p for p in vhost.policies() if p.name == name)
        policy = vhost.set_policy(name, pattern, definition, priority, apply_to)
        if self._defs is not None:
            self._defs.add_policy(vhost.name, name, pattern, apply_to, policy.priority, policy.definition)
        self._announce("policy.set", vhost.name, name, pattern=pattern, apply_to=apply_to,
                       priority=policy.priority, definition=policy.definition)
        return policy

    def clear_policy(self, vhost: VirtualHost, name: str) -> bool:
        if self.clustered:
            if all(p.name != name for p in vhost.policies()):
                return bool((replay := self._take_replay()) and replay.committed)
            change = Change()
            change.delete(self.cluster.key(b"policies", vhost.name, name))
            self._propose(change)
            return True
        if not vhost.clear_policy(name):
            return False
        if self._defs is not None:
            self._defs.remove_policy(vhost.name, name)
        self._announce("policy.cleared", vhost.name, name)
        return True

    # -- virtual hosts -----------------------------------------------------------------------------

    def vhost(self, name: str) -> VirtualHost:
        vhost = self.broker.vhosts.get(name)
        if vhost is None:
            raise _no_such_vhost(name)
        return vhost

    def add_vhost(self, name: str) -> VirtualHost:
        if self.clustered:
            replay = self._take_replay()
            if replay is not None and replay.committed and name in self.broker.vhosts:
                return self.broker.vhosts[name]
        if name in self.broker.vhosts:
            raise CommandError("exists", f"Virtual host '{name}' already exists")
        if self.clustered:
            key, value = self.cluster.vhost_entry(name, {})
            change = Change()
            change.put(key, value)
            raise Proposed(self.cluster.propose(self.cluster.guard_absent(change, key)))
        vhost = self.broker.add_vhost(name)
        if self._defs is not None:
            self._defs.add_vhost(name)
        self._announce("vhost.created", name, name)
        return vhost

    def delete_vhost(self, name: str) -> None:
        """Close its connections (320), delete its queues with their messages, its exchanges,
        forget its permissions, as ``rabbitmqctl delete_vhost``. Each queue, exchange and binding
        is announced deleted (reason "vhost_deleted"), then the vhost; the store drops it all in
        one transaction."""
        if self.clustered:
            replay = self._take_replay()
            if replay is not None and replay.committed and name not in self.broker.vhosts:
                return
        vhost = self.vhost(name)
        if self.clustered:
            self._propose_vhost_deletion(vhost)
        for conn in list(self.broker.connections):
            if conn.vhost is vhost:
                conn.close(320, f"vhost '{name}' is down")  # RabbitMQ 3.10's text
        for q in list(vhost.queues.values()):
            self._remove_queue(vhost, q, events.VHOST_DELETED, persist=False)
        for ex in list(vhost.exchanges.values()):
            if ex.name and vhost.exchanges.get(ex.name) is ex:
                self._remove_exchange(vhost, ex, events.VHOST_DELETED, persist=False)
        del self.broker.vhosts[name]
        if self._defs is not None:
            self._defs.remove_vhost(name)
        for user in self.broker.users.users.values():
            if user.permissions.pop(name, None) is not None or user.topic_permissions.pop(name, None):
                self._save_user(user)
        self._announce("vhost.deleted", name, name)

    def _propose_vhost_deletion(self, vhost: VirtualHost) -> None:
        """Its key first, then everything in it, and its users' permissions there."""
        cluster, v = self.cluster, vhost.name
        change = Change()
        change.delete(cluster.key(b"vhosts", v))
        for key in cluster.model_entries():
            for kind in (b"exchanges", b"queues", b"bindings", b"policies"):
                if key.startswith(cluster.key(kind, v) + b"/"):
                    change.delete(key)
        for user in self.broker.users.users.values():
            if v in user.permissions or v in user.topic_permissions:
                record = user_record(user)
                record["permissions"].pop(v, None)
                record["topic_permissions"].pop(v, None)
                key, value = cluster.user_entry(record)
                change.put(key, value)
        self._propose(change)

    def _propose_vhost_limits(self, vhost: VirtualHost, limits: dict[str, int]) -> bool:
        """In a cluster: propose the vhost's new limits; True when the command is done."""
        if not self.clustered:
            return False
        if vhost.limits == limits:
            return True  # it changes nothing
        key, value = self.cluster.vhost_entry(vhost.name, limits)
        change = Change()
        change.put(key, value)
        self._propose(self.cluster.guard_unchanged(change, key))
        return True

    def set_vhost_limits(self, name: str, limits: dict[str, Any]) -> None:
        vhost = self.vhost(name)
        try:
            checked = _limits(limits, VHOST_LIMITS)
        except CommandError as exc:
            raise CommandError("invalid", f"Validation failed\n\n{exc}\n") from None
        if self._propose_vhost_limits(vhost, checked):
            return
        vhost.limits = checked
        if self._defs is not None:
            self._defs.set_vhost_limits(name, vhost.limits)
        self._announce("vhost.limits.set", name, name, limits=dict(vhost.limits))

    # -- users -------------------------------------------------------------------------------------

    def user(self, name: str) -> User:
        user = self.broker.users.users.get(name)
        if user is None:
            raise _no_such_user(name)
        return user

    def _forget_user(self, name: str) -> None:
        if self._defs is not None:
            self._defs.remove_user(name)

    def _save_user(self, user: User) -> None:
        if self._collected is not None:  # (proposal.user_change: proposed to the cluster)
            self._collected[user.name] = user_record(user)
            return
        if self._defs is not None:
            self._defs.put_user(user.name, user_record(user))

    # -- operator commands: the rest of rabbitmqctl's (hare ctl, definitions files) ------------------

    def clear_vhost_limits(self, name: str) -> None:
        vhost = self.vhost(name)
        if not vhost.limits:
            if self.clustered and (replay := self._take_replay()) is not None and replay.committed:
                return
            raise CommandError("not_found", "Parameter does not exist")
        if self._propose_vhost_limits(vhost, {}):
            return
        vhost.limits = {}
        if self._defs is not None:
            self._defs.set_vhost_limits(name, {})
        self._announce("vhost.limits.cleared", name, name)

    def list_vhosts(self) -> list[dict[str, Any]]:
        return [{"name": v.name, "tracing": False} for v in self._vhosts()]

    def _vhosts(self) -> list[VirtualHost]:
        return sorted(self.broker.vhosts.values(), key=lambda v: v.name)

    def replace_user(self, user: User) -> None:
        """A user's whole record as the cluster has it (it replaces this node's)."""
        existing = self.broker.users.users.get(user.name)
        self.broker.users.users[user.name] = user
        self._save_user(user)
        self._refresh_access(user)
        self._announce("user.created" if existing is None else "user.changed", "", user.name,
                       tags=list(user.tags))

    def _refresh_access(self, user: User) -> None:
        """The user's permissions changed: its open channels decide afresh from now on."""
        if self._collected is not None:
            return
        for conn in list(self.broker.connections):
            if conn.username == user.name:
                conn.permissions_changed(user)


def _why(reason: str | None) -> dict[str, str]:
    return {} if reason is None else {"reason": reason}


def _kept(q: Queue) -> bool:
    """A queue the definitions store keeps: durable (never exclusive) and not auto-delete (those
    never outlive the broker)."""
    return q.durable and not q.auto_delete


def _kind(dest: Any) -> str:
    return "exchange" if hasattr(dest, "type_name") else "queue"


def _binding_kept(binding: Binding) -> bool:
    """Kept when its source is durable and its destination is kept."""
    src, dest = binding[0], binding[1]
    return src.durable and (dest.durable if _kind(dest) == "exchange" else _kept(dest))


def _binding_details(binding: Binding) -> dict[str, Any]:
    _src, dest, routing_key, arguments = binding
    return {"destination": dest.name, "destination_type": _kind(dest), "routing_key": routing_key,
            "arguments": arguments}


__all__ = ["Commands", "CommandError", "KNOWN_TAGS", "VHOST_LIMITS", "user_record", "user_from_record"]
