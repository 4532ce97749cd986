"""The command layer: the one path for every change of the broker's metadata.

Exchanges, queues and bindings (declare, delete, bind, unbind), virtual hosts, users, permissions,
topic permissions, limits and policies change only through ``Commands``. Each command validates
its input, checks the caller's permissions (an AMQP channel passes its ``Access``; the operator —
``hare ctl``, a definitions file, later the HTTP API — passes none and may do anything), applies
the change to the model and persists it. The AMQP channel, the control socket and the definitions
loader all call it, so a rule lives in one place; the cluster will replicate these commands.

Permission checks follow RabbitMQ 3.10's ``rabbit_channel``: which permission each method needs,
on which resource, and where in the method's other checks it comes.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from ..amqp.errors import ConnectionFault, access_refused, precondition_failed
from ..auth.permissions import CONFIGURE, READ, WRITE, Access, PatternError, Permission, TopicPermission
from ..auth.users import HASHES, KNOWN_TAGS, SHA256, USER_LIMITS, User, hash_password
from .exchanges import EXCHANGE_TYPES
from .policies import erl
from .vhost import VirtualHost, server_queue_name

if TYPE_CHECKING:
    from .broker import Broker
    from .exchanges import Exchange
    from .policies import Policy
    from .queue import Queue

VHOST_LIMITS = ("max-connections", "max-queues")


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


class Commands:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    @property
    def _defs(self) -> Any:
        return self.broker.definitions

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
        return vhost.declare_exchange(name, type_name, passive=passive, durable=durable,
                                      auto_delete=auto_delete, internal=internal, arguments=arguments)

    def delete_exchange(self, vhost: VirtualHost, name: str, if_unused: bool = False,
                        access: Access | None = None) -> None:
        if access is not None and name and not name.startswith("amq."):
            access.check(CONFIGURE, "exchange", name)  # after the default and 'amq.' checks
        vhost.delete_exchange(name, if_unused=if_unused)

    # -- queues ------------------------------------------------------------------------------------

    def declare_queue(self, vhost: VirtualHost, name: str, passive: bool = False, durable: bool = False,
                      exclusive: bool = False, auto_delete: bool = False,
                      arguments: dict[str, Any] | None = None, conn: Any = None,
                      access: Access | None = None) -> Queue:
        server_named = False
        if not passive:
            if not name:
                name, server_named = server_queue_name(), True
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
        return vhost.declare_queue(name, passive=passive, durable=durable, exclusive=exclusive,
                                   auto_delete=auto_delete, arguments=arguments, conn=conn,
                                   server_named=server_named)

    def delete_queue(self, vhost: VirtualHost, name: str, if_unused: bool = False, if_empty: bool = False,
                     conn: Any = None, access: Access | None = None) -> int:
        if access is not None:
            access.check(CONFIGURE, "queue", name)
        return vhost.delete_queue(name, if_unused=if_unused, if_empty=if_empty, conn=conn)

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
        vhost.bind_queue(queue, exchange, routing_key, arguments, conn=conn)

    def unbind_queue(self, vhost: VirtualHost, queue: str, exchange: str, routing_key: str,
                     arguments: dict[str, Any] | None, conn: Any = None,
                     access: Access | None = None) -> None:
        if access is not None:
            self._check_binding(vhost, access, "queue", queue, exchange, routing_key)
        vhost.unbind_queue(queue, exchange, routing_key, arguments, conn=conn)

    def bind_exchange(self, vhost: VirtualHost, destination: str, source: str, routing_key: str,
                      arguments: dict[str, Any] | None, access: Access | None = None) -> None:
        if access is not None:
            self._check_binding(vhost, access, "exchange", destination, source, routing_key)
        vhost.bind_exchange(destination, source, routing_key, arguments)

    def unbind_exchange(self, vhost: VirtualHost, destination: str, source: str, routing_key: str,
                        arguments: dict[str, Any] | None, access: Access | None = None) -> None:
        if access is not None:
            self._check_binding(vhost, access, "exchange", destination, source, routing_key)
        vhost.unbind_exchange(destination, source, routing_key, arguments)

    # -- policies ----------------------------------------------------------------------------------

    def set_policy(self, vhost: VirtualHost, name: str, pattern: str, definition: Any, priority: Any = 0,
                   apply_to: str = "all") -> Policy:
        return vhost.set_policy(name, pattern, definition, priority, apply_to)

    def clear_policy(self, vhost: VirtualHost, name: str) -> bool:
        return vhost.clear_policy(name)

    # -- virtual hosts -----------------------------------------------------------------------------

    def vhost(self, name: str) -> VirtualHost:
        vhost = self.broker.vhosts.get(name)
        if vhost is None:
            raise _no_such_vhost(name)
        return vhost

    def add_vhost(self, name: str) -> VirtualHost:
        if name in self.broker.vhosts:
            raise CommandError("exists", f"Virtual host '{name}' already exists")
        return self.broker.add_vhost(name)

    def delete_vhost(self, name: str) -> None:
        """Close its connections (320), delete its queues with their messages, forget its
        permissions, as ``rabbitmqctl delete_vhost``."""
        vhost = self.vhost(name)
        for conn in list(self.broker.connections):
            if conn.vhost is vhost:
                conn.close(320, f"vhost '{name}' is down")  # RabbitMQ 3.10's text
        for q in list(vhost.queues.values()):
            vhost.remove_queue(q)
        for ex in list(vhost.exchanges.values()):
            if ex.name:
                ex.detach()
        del self.broker.vhosts[name]
        if self._defs is not None:
            self._defs.remove_vhost(name)
        for user in self.broker.users.users.values():
            if user.permissions.pop(name, None) is not None or user.topic_permissions.pop(name, None):
                self._save_user(user)

    def set_vhost_limits(self, name: str, limits: dict[str, Any]) -> None:
        vhost = self.vhost(name)
        try:
            vhost.limits = _limits(limits, VHOST_LIMITS)
        except CommandError as exc:
            raise CommandError("invalid", f"Validation failed\n\n{exc}\n") from None
        if self._defs is not None:
            self._defs.set_vhost_limits(name, vhost.limits)

    # -- users -------------------------------------------------------------------------------------

    def user(self, name: str) -> User:
        user = self.broker.users.users.get(name)
        if user is None:
            raise _no_such_user(name)
        return user

    def _save_user(self, user: User) -> None:
        if self._defs is not None:
            self._defs.put_user(user.name, user_record(user))

    def add_user(self, name: str, password: str | None, tags: list[str] | None = None) -> User:
        if not name:
            raise CommandError("invalid", "User name cannot be empty")
        if name in self.broker.users.users:
            raise CommandError("exists", f"User \"{name}\" already exists")
        user = User(name, hash_password(password) if password else b"", list(tags or []),
                    loopback_only=name in self.broker.config.loopback_users)
        self.broker.users.users[name] = user
        self._save_user(user)
        return user

    def put_user(self, name: str, password_hash: bytes, hashing: str, tags: list[str],
                 limits: dict[str, Any] | None = None) -> User:
        """A user as a definitions file gives it (a hash, not a password); replaces one of that
        name, keeping its permissions."""
        if hashing not in HASHES:
            raise CommandError("invalid", f"unsupported hashing algorithm '{hashing}'")
        existing = self.broker.users.users.get(name)
        user = User(name, password_hash, list(tags), hashing,
                    loopback_only=name in self.broker.config.loopback_users)
        if existing is not None:
            user.permissions, user.topic_permissions = existing.permissions, existing.topic_permissions
        user.limits = _limits(limits or {}, USER_LIMITS, "user-limits")
        self.broker.users.users[name] = user
        self._save_user(user)
        self._refresh_access(user)
        return user

    def delete_user(self, name: str) -> None:
        self.user(name)
        del self.broker.users.users[name]
        if self._defs is not None:
            self._defs.remove_user(name)
        for conn in list(self.broker.connections):
            if conn.username == name:
                conn.close(320, f"user '{name}' is deleted")

    def change_password(self, name: str, password: str) -> None:
        user = self.user(name)
        user.password_hash = hash_password(password) if password else b""
        user.hashing = SHA256
        self._save_user(user)

    def clear_password(self, name: str) -> None:
        user = self.user(name)
        user.password_hash = b""
        self._save_user(user)

    def set_user_tags(self, name: str, tags: list[str]) -> None:
        user = self.user(name)
        user.tags = list(dict.fromkeys(tags))
        self._save_user(user)

    def set_user_limits(self, name: str, limits: dict[str, Any]) -> None:
        user = self.user(name)
        user.limits = _limits(limits, USER_LIMITS, "user-limits")
        self._save_user(user)

    # -- permissions -------------------------------------------------------------------------------

    def set_permissions(self, user_name: str, vhost: str, configure: str, write: str, read: str) -> None:
        user = self.user(user_name)
        self.vhost(vhost)
        try:
            user.permissions[vhost] = Permission(configure, write, read)
        except PatternError as exc:
            raise CommandError("invalid", str(exc)) from None
        self._save_user(user)
        self._refresh_access(user)

    def clear_permissions(self, user_name: str, vhost: str) -> None:
        user = self.user(user_name)
        self.vhost(vhost)
        user.permissions.pop(vhost, None)
        self._save_user(user)
        self._refresh_access(user)

    def set_topic_permissions(self, user_name: str, vhost: str, exchange: str, write: str,
                              read: str) -> None:
        user = self.user(user_name)
        self.vhost(vhost)
        try:
            tp = TopicPermission(exchange, write, read)
        except PatternError as exc:
            raise CommandError("invalid", str(exc)) from None
        user.topic_permissions.setdefault(vhost, {})[exchange] = tp
        self._save_user(user)
        self._refresh_access(user)

    def clear_topic_permissions(self, user_name: str, vhost: str, exchange: str | None = None) -> None:
        user = self.user(user_name)
        self.vhost(vhost)
        topics = user.topic_permissions.get(vhost, {})
        if exchange is None:
            topics.clear()
        else:
            topics.pop(exchange, None)
        if not topics:
            user.topic_permissions.pop(vhost, None)
        self._save_user(user)
        self._refresh_access(user)

    # -- operator commands: the rest of rabbitmqctl's (hare ctl, definitions files) ------------------

    def authenticate_user(self, name: str, password: str) -> User:
        """``rabbitmqctl authenticate_user``: the user if the password is its, else "invalid"."""
        user = self.broker.users.authenticate(name, password)
        if user is None:
            raise CommandError("invalid", f"user '{name}' - invalid credentials")
        return user

    def clear_vhost_limits(self, name: str) -> None:
        vhost = self.vhost(name)
        if not vhost.limits:
            raise CommandError("not_found", "Parameter does not exist")
        vhost.limits = {}
        if self._defs is not None:
            self._defs.set_vhost_limits(name, {})

    def clear_user_limits(self, name: str, limit: str) -> None:
        """One limit by name, or ``all`` of them (an unknown name clears nothing, as RabbitMQ)."""
        user = self.user(name)
        if limit == "all":
            user.limits = {}
        else:
            user.limits.pop(limit, None)
        self._save_user(user)

    def list_users(self) -> list[dict[str, Any]]:
        return [{"user": u.name, "tags": list(u.tags)} for u in self._users()]

    def list_vhosts(self) -> list[dict[str, Any]]:
        return [{"name": v.name, "tracing": False} for v in self._vhosts()]

    def list_permissions(self, vhost: str) -> list[dict[str, str]]:
        self.vhost(vhost)
        return [{"user": u.name, **u.permissions[vhost].as_json()} for u in self._users()
                if vhost in u.permissions]

    def list_user_permissions(self, name: str) -> list[dict[str, str]]:
        return [{"vhost": v, **p.as_json()} for v, p in sorted(self.user(name).permissions.items())]

    def list_topic_permissions(self, vhost: str) -> list[dict[str, str]]:
        self.vhost(vhost)
        return [{"user": u.name, **tp.as_json()} for u in self._users()
                for tp in u.topic_permissions.get(vhost, {}).values()]

    def list_user_topic_permissions(self, name: str) -> list[dict[str, str]]:
        return [{"vhost": v, **tp.as_json()} for v, tps in sorted(self.user(name).topic_permissions.items())
                for tp in tps.values()]

    def _users(self) -> list[User]:
        return sorted(self.broker.users.users.values(), key=lambda u: u.name)

    def _vhosts(self) -> list[VirtualHost]:
        return sorted(self.broker.vhosts.values(), key=lambda v: v.name)

    def export_definitions(self) -> dict[str, Any]:
        """Everything, in the format of ``rabbitmqctl export_definitions`` (RabbitMQ 3.10 imports
        it back): queues that are not exclusive, exchanges but the default and ``amq.*`` ones,
        their bindings, policies, vhost limits (as RabbitMQ: in ``parameters`` and in ``vhosts``)."""
        version = self.broker.config.product_version
        users, permissions, topic_permissions = [], [], []
        for u in self._users():
            users.append({"name": u.name, "password_hash": base64.b64encode(u.password_hash).decode(),
                          "hashing_algorithm": u.hashing, "tags": list(u.tags), "limits": dict(u.limits)})
            for v, p in sorted(u.permissions.items()):
                permissions.append({"user": u.name, "vhost": v, **p.as_json()})
            for v, tps in sorted(u.topic_permissions.items()):
                topic_permissions.extend({"user": u.name, "vhost": v, **tp.as_json()} for tp in tps.values())
        vhosts, parameters, policies, queues, exchanges, bindings = [], [], [], [], [], []
        for vhost in self._vhosts():
            v = vhost.name
            vhosts.append({"name": v, "limits": [[k, n] for k, n in sorted(vhost.limits.items())],
                           "metadata": {"description": "", "tags": []}})
            if vhost.limits:
                parameters.append({"vhost": v, "component": "vhost-limits", "name": "limits",
                                   "value": dict(sorted(vhost.limits.items()))})
            policies.extend(p.as_json() for p in vhost.policies())
            kept = {q.name for q in vhost.queues.values() if not q.exclusive}
            for q in vhost.queues.values():
                if q.name in kept:
                    qtype = q.arguments.get("x-queue-type")
                    queues.append({"name": q.name, "vhost": v, "durable": q.durable,
                                   "auto_delete": q.auto_delete, "arguments": dict(q.arguments),
                                   "type": qtype if isinstance(qtype, str) else "classic"})
            for ex in vhost.exchanges.values():
                if not ex.name:
                    continue
                if not ex.name.startswith("amq."):
                    x = {"name": ex.name, "vhost": v, "type": ex.type_name, "durable": ex.durable,
                         "auto_delete": ex.auto_delete, "arguments": dict(ex.arguments)}
                    if ex.internal:  # RabbitMQ 3.10 leaves it out; its import reads it
                        x["internal"] = True
                    exchanges.append(x)
                for (dest, routing_key, _frozen), arguments in ex.bindings.items():
                    is_queue = not hasattr(dest, "type_name")
                    if is_queue and dest.name not in kept:
                        continue  # RabbitMQ exports an exclusive queue's too; they cannot be imported
                    bindings.append({"source": ex.name, "vhost": v, "destination": dest.name,
                                     "destination_type": "queue" if is_queue else "exchange",
                                     "routing_key": routing_key, "arguments": dict(arguments)})
        return {"rabbit_version": version, "rabbitmq_version": version, "users": users, "vhosts": vhosts,
                "permissions": permissions,
                "topic_permissions": topic_permissions, "parameters": parameters,
                "global_parameters": [], "policies": policies, "queues": queues,
                "exchanges": exchanges, "bindings": bindings}

    def _refresh_access(self, user: User) -> None:
        """The user's permissions changed: its open channels decide afresh from now on."""
        for conn in list(self.broker.connections):
            if conn.username == user.name:
                conn.permissions_changed(user)


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


def user_record(user: User) -> dict[str, Any]:
    """A user's whole record (as kept in the definitions store)."""
    return {"name": user.name, "password_hash": base64.b64encode(user.password_hash).decode(),
            "hashing_algorithm": user.hashing, "tags": list(user.tags), "limits": dict(user.limits),
            "permissions": {v: p.as_json() for v, p in user.permissions.items()},
            "topic_permissions": {v: [tp.as_json() for tp in t.values()]
                                  for v, t in user.topic_permissions.items()}}


def user_from_record(record: dict[str, Any], loopback_only: bool) -> User:
    try:
        password_hash = base64.b64decode(record.get("password_hash", ""), validate=True)
    except (binascii.Error, ValueError):
        password_hash = b""
    user = User(record["name"], password_hash, list(record.get("tags", [])),
                record.get("hashing_algorithm", SHA256), loopback_only=loopback_only)
    user.limits = dict(record.get("limits", {}))
    for v, p in record.get("permissions", {}).items():
        user.permissions[v] = Permission(p["configure"], p["write"], p["read"])
    for v, tps in record.get("topic_permissions", {}).items():
        user.topic_permissions[v] = {tp["exchange"]: TopicPermission(tp["exchange"], tp["write"], tp["read"])
                                     for tp in tps}
    return user


__all__ = ["Commands", "CommandError", "KNOWN_TAGS", "VHOST_LIMITS", "user_record", "user_from_record"]
