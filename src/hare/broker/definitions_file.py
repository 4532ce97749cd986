"""``load_definitions``: a definitions file in RabbitMQ's JSON format, applied at start.

The format is the one ``rabbitmqctl export_definitions`` and the management UI write. hare applies,
in RabbitMQ's order: ``users`` (SHA-256, SHA-512 and MD5 password hashes, or a clear ``password``;
their ``tags`` and ``limits``), ``vhosts``, ``permissions`` (a permission opens the vhost to the
user), ``topic_permissions``, ``parameters`` (the ``vhost-limits`` component; others are
ignored), ``policies``, ``queues``, ``exchanges`` and ``bindings``; it ignores the rest
(global parameters, versions). Every change goes through the command layer (``broker.commands``).
An invalid file or policy stops the broker from starting, as it stops RabbitMQ (and fails
``hare ctl import_definitions``); a queue or exchange that exists with other properties is left as
it is, with a warning. ``hare ctl export_definitions`` writes the same format
(``Commands.export_definitions``).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..amqp.errors import ChannelError, ConnectionFault
from ..auth.users import MD5, SHA256, hash_password
from .commands import CommandError
from .policies import PolicyError

if TYPE_CHECKING:
    from .broker import Broker

log = logging.getLogger("hare.broker")


def load_definitions_file(broker: Broker, path: str | Path) -> None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load definitions from {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"cannot load definitions from {path}: not a JSON object")
    try:
        apply_definitions(broker, data)
    except PolicyError as exc:
        raise ValueError(f"definitions in {path}: {exc}") from None
    log.info("applied the definitions in %s", path)


def _items(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = data.get(key) or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValueError(f"'{key}' must be a list of objects")
    return items


def apply_definitions(broker: Broker, data: dict[str, Any]) -> None:
    default_vhost = broker.config.default_vhost
    commands = broker.commands
    version = str(data.get("rabbit_version") or data.get("rabbitmq_version") or "")
    for u in _items(data, "users"):
        _add_user(broker, u, version)
    for v in _items(data, "vhosts"):
        if str(v["name"]) not in broker.vhosts:
            commands.add_vhost(str(v["name"]))
    for p in _items(data, "permissions"):
        try:
            commands.set_permissions(p.get("user", ""), p.get("vhost", default_vhost), p.get("configure", ""),
                                     p.get("write", ""), p.get("read", ""))
        except CommandError as exc:
            log.warning("definitions: permissions of user %r not applied: %s", p.get("user"), exc)
    for p in _items(data, "topic_permissions"):
        try:
            commands.set_topic_permissions(p.get("user", ""), p.get("vhost", default_vhost),
                                           p.get("exchange", ""), p.get("write", ""), p.get("read", ""))
        except CommandError as exc:
            log.warning("definitions: topic permissions of user %r not applied: %s", p.get("user"), exc)
    for p in _items(data, "parameters"):
        if p.get("component") != "vhost-limits":
            log.info("definitions: parameter %r of component %r ignored", p.get("name"), p.get("component"))
            continue
        try:
            commands.set_vhost_limits(p.get("vhost", default_vhost), p.get("value") or {})
        except CommandError as exc:
            log.warning("definitions: limits of vhost %r not applied: %s", p.get("vhost"), exc)

    def vhost_of(item: dict[str, Any]) -> Any:
        name = item.get("vhost", default_vhost)
        vhost = broker.vhosts.get(name)
        if vhost is None:
            raise ValueError(f"virtual host '{name}' does not exist (add it to 'vhosts')")
        return vhost

    for p in _items(data, "policies"):
        definition = p.get("definition")
        if isinstance(definition, str):  # some exports keep it as JSON text
            definition = json.loads(definition)
        try:
            commands.set_policy(vhost_of(p), p["name"], p["pattern"], definition, p.get("priority", 0),
                                p.get("apply-to", "all"))
        except PolicyError as exc:
            raise PolicyError(f"policy '{p['name']}': Validation failed: {exc}") from None
    for q in _items(data, "queues"):
        _declare(q, "queue", lambda q=q: commands.declare_queue(
            vhost_of(q), q["name"], durable=q.get("durable", True), auto_delete=q.get("auto_delete", False),
            arguments=q.get("arguments") or {}))
    for x in _items(data, "exchanges"):
        _declare(x, "exchange", lambda x=x: commands.declare_exchange(
            vhost_of(x), x["name"], x.get("type", "direct"), durable=x.get("durable", True),
            auto_delete=x.get("auto_delete", False), internal=x.get("internal", False),
            arguments=x.get("arguments") or {}))
    for b in _items(data, "bindings"):
        vhost = vhost_of(b)
        if b.get("destination_type", "queue") == "exchange":
            bind = commands.bind_exchange
        else:
            bind = commands.bind_queue
        _declare(b, "binding", lambda b=b, bind=bind, vhost=vhost: bind(
            vhost, b["destination"], b["source"], b.get("routing_key", ""), b.get("arguments") or {}))


def _declare(item: dict[str, Any], kind: str, declare: Any) -> None:
    try:
        declare()
    except (ChannelError, ConnectionFault) as exc:
        log.warning("definitions: %s %s not applied: %s", kind, item.get("name", item), exc)


def _add_user(broker: Broker, u: dict[str, Any], version: str) -> None:
    """A user with its password hash (or a clear-text ``password``, hashed here). A file without
    ``hashing_algorithm`` from RabbitMQ before 3.6 used MD5, later ones SHA-256."""
    name = u.get("name")
    if not isinstance(name, str) or not name:
        log.warning("definitions: user %r skipped (no name)", name)
        return
    old = version[:2] in ("1.", "2.") or version.startswith(("3.0", "3.1.", "3.2", "3.3", "3.4", "3.5"))
    default = MD5 if old else SHA256
    algorithm = u.get("hashing_algorithm") or default
    tags = u.get("tags", [])
    if isinstance(tags, str):
        tags = [t for t in tags.split(",") if t]
    if "password" in u and "password_hash" not in u:
        password_hash, algorithm = hash_password(str(u["password"])), SHA256
    else:
        try:
            password_hash = base64.b64decode(u.get("password_hash", ""), validate=True)
        except (binascii.Error, ValueError):
            log.warning("definitions: user %r skipped (password_hash is not base64)", name)
            return
    try:
        broker.commands.put_user(name, password_hash, algorithm, list(tags), u.get("limits") or {})
    except CommandError as exc:
        log.warning("definitions: user %r skipped: %s", name, exc)


def export_definitions(broker: Broker) -> dict[str, Any]:
    """Everything, in the format of ``rabbitmqctl export_definitions`` (RabbitMQ 3.10 imports
    it back): queues that are not exclusive, exchanges but the default and ``amq.*`` ones,
    their bindings, policies, vhost limits (as RabbitMQ: in ``parameters`` and in ``vhosts``)."""
    version = broker.config.product_version
    users, permissions, topic_permissions = [], [], []
    for u in sorted(broker.users.users.values(), key=lambda u: u.name):
        users.append({"name": u.name, "password_hash": base64.b64encode(u.password_hash).decode(),
                      "hashing_algorithm": u.hashing, "tags": list(u.tags), "limits": dict(u.limits)})
        for v, p in sorted(u.permissions.items()):
            permissions.append({"user": u.name, "vhost": v, **p.as_json()})
        for v, tps in sorted(u.topic_permissions.items()):
            topic_permissions.extend({"user": u.name, "vhost": v, **tp.as_json()} for tp in tps.values())
    vhosts, parameters, policies, queues, exchanges, bindings = [], [], [], [], [], []
    for vhost in sorted(broker.vhosts.values(), key=lambda v: v.name):
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
