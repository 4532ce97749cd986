"""The cluster's definitions as etcd keys, and this node's model kept equal to them (sans-IO).

Keys under ``/hare/<cluster>/defs/`` (names percent-encoded), each value a JSON record:

    vhosts/<vhost>                    {"name", "limits"}
    users/<user>                      the user's whole record (permissions, topic permissions, limits)
    exchanges/<vhost>/<name>          {"vhost", "name", "type", "durable", "auto_delete", "internal",
                                       "arguments"}
    queues/<vhost>/<name>             {"vhost", "name", "durable", "auto_delete", "arguments", "node"}
    bindings/<vhost>/<source>/<hash>  {"vhost", "source", "destination", "destination_type",
                                       "routing_key", "arguments"}
    policies/<vhost>/<name>           the policy as a definitions file has it
    seeded                            written once, by the node that put the first definitions

Arguments are their AMQP field-table encoding in base64, so every value type survives. A queue's
``node`` is its home: a classic queue lives on the node that declared it. Exclusive queues and
their bindings are never written: they live and die with their connection's node.

``ClusterDefinitions`` builds the ``Change`` of each command (``Commands`` calls it instead of
changing the model) and applies the keys the watch delivers to the model, through ``Commands``
in its local mode, on every node alike, the writer included.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_from_bytes, unquote_to_bytes

from ..amqp.table import decode_table, encode_table
from ..auth.users import user_from_record, user_record
from ..broker.proposal import Change, Pending

if TYPE_CHECKING:
    from ..broker.broker import Broker
    from ..broker.exchanges import Exchange
    from ..broker.queue import Queue
    from ..broker.vhost import Binding, VirtualHost

log = logging.getLogger("hare.cluster")

# the order a snapshot puts kinds in (deletes go in reverse): what a key refers to comes first
KINDS = (b"vhosts", b"users", b"exchanges", b"queues", b"bindings", b"policies")


def _part(name: str) -> bytes:
    return quote_from_bytes(name.encode("utf-8", "surrogateescape"), safe="").encode()


def _unpart(part: bytes) -> str:
    return unquote_to_bytes(part).decode("utf-8", "surrogateescape")


def _args(table: dict[str, Any] | None) -> str:
    return base64.b64encode(encode_table(table or {})[4:]).decode()


def _set_home(q: Any, home: str | None) -> None:
    q.home = home


def _table(text: str) -> dict[str, Any]:
    blob = base64.b64decode(text)
    return decode_table(len(blob).to_bytes(4, "big") + blob, 0)[0]


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def _is_exchange(dest: Any) -> bool:
    return hasattr(dest, "type_name")


class ClusterDefinitions:
    """This node's view of the cluster's definitions. ``propose`` and ``submit`` are the shell's:
    write a change (the first for a command that waits, the second for the broker's own)."""

    def __init__(self, root: bytes, node: str, broker: Broker,
                 propose: Callable[[Change], Pending], submit: Callable[[Change], None]) -> None:
        self.root = root + b"defs/"
        self.node = node
        self.broker = broker
        self.propose = propose
        self.submit = submit
        self.revisions: dict[bytes, int] = {}  # key -> the mod revision applied
        self.seeded_key = self.root + b"seeded"
        # replicated queues (cluster/replicas.py): their members for a new one, and each record
        # applied (members, or None when it is deleted); without them, quorum queues are local
        self.place: Callable[[int], list[str]] | None = None
        self.on_replicated: Callable[[str, str, list[str] | None], None] | None = None
        # a classic queue's home: another node's name, or None (this node)
        self.on_home: Callable[[Any, str | None], None] = _set_home

    # -- keys and records -------------------------------------------------------------------------

    def key(self, kind: bytes, *names: str) -> bytes:
        return self.root + kind + b"/" + b"/".join(_part(n) for n in names)

    def binding_key(self, vhost: str, source: str, kind: str, destination: str, routing_key: str,
                    arguments: dict[str, Any] | None) -> bytes:
        digest = hashlib.sha1(_encode({"k": kind, "d": destination, "r": routing_key,
                                       "a": _args(arguments)})).hexdigest()[:24]
        return self.key(b"bindings", vhost, source) + b"/" + digest.encode()

    def queue_entry(self, vhost: str, name: str, durable: bool, auto_delete: bool,
                    arguments: dict[str, Any], node: str | None = None,
                    members: list[str] | None = None) -> tuple[bytes, bytes]:
        record = {"vhost": vhost, "name": name, "durable": durable, "auto_delete": auto_delete,
                  "arguments": _args(arguments), "node": node or self.node}
        if members is not None:
            record["members"] = members
        return self.key(b"queues", vhost, name), _encode(record)

    def new_queue(self, change: Change, vhost: str, name: str, durable: bool, auto_delete: bool,
                  arguments: dict[str, Any]) -> None:
        """A queue's declare: its record (a quorum queue's with its members, and its ISR: every
        member, the queue being empty), guarded: the key must be absent."""
        members = None
        if self.place is not None and arguments.get("x-queue-type") == "quorum":
            size = arguments.get("x-quorum-initial-group-size")
            members = self.place(size if isinstance(size, int) and size > 0 else 3)
            change.put(self.root[:-len(b"defs/")] + b"isr/" + _part(vhost) + b"/" + _part(name),
                       json.dumps({"in_sync": members}).encode())
        key, value = self.queue_entry(vhost, name, durable, auto_delete, arguments, members=members)
        change.put(key, value)
        self.guard_absent(change, key)

    def exchange_entry(self, vhost: str, name: str, type_name: str, durable: bool, auto_delete: bool,
                       internal: bool, arguments: dict[str, Any]) -> tuple[bytes, bytes]:
        return self.key(b"exchanges", vhost, name), _encode({
            "vhost": vhost, "name": name, "type": type_name, "durable": durable,
            "auto_delete": auto_delete, "internal": internal, "arguments": _args(arguments)})

    def binding_entry(self, vhost: str, source: str, kind: str, destination: str, routing_key: str,
                      arguments: dict[str, Any] | None) -> tuple[bytes, bytes]:
        return self.binding_key(vhost, source, kind, destination, routing_key, arguments), _encode({
            "vhost": vhost, "source": source, "destination": destination, "destination_type": kind,
            "routing_key": routing_key, "arguments": _args(arguments)})

    def vhost_entry(self, name: str, limits: dict[str, int]) -> tuple[bytes, bytes]:
        return self.key(b"vhosts", name), _encode({"name": name, "limits": limits})

    def user_entry(self, record: dict[str, Any]) -> tuple[bytes, bytes]:
        return self.key(b"users", record["name"]), _encode(record)

    def policy_entry(self, policy: dict[str, Any]) -> tuple[bytes, bytes]:
        return self.key(b"policies", policy["vhost"], policy["name"]), _encode(policy)

    def guard_absent(self, change: Change, key: bytes) -> Change:
        change.guards[key] = 0
        return change

    def guard_unchanged(self, change: Change, key: bytes) -> Change:
        """The key must still be as this node last applied it (0: absent)."""
        change.guards[key] = self.revisions.get(key, 0)
        return change

    @staticmethod
    def in_cluster(q: Queue) -> bool:
        """Exclusive queues are this node's alone."""
        return not q.exclusive

    def binding_in_cluster(self, binding: Binding) -> bool:
        dest = binding[1]
        return _is_exchange(dest) or not dest.exclusive

    def binding_gone(self, change: Change, vhost: str, binding: Binding) -> None:
        src, dest, routing_key, arguments = binding
        if self.binding_in_cluster(binding):
            kind = "exchange" if _is_exchange(dest) else "queue"
            change.delete(self.binding_key(vhost, src.name, kind, dest.name, routing_key, arguments))

    def orphans(self, change: Change, vhost: VirtualHost, gone: Iterable[Binding]) -> None:
        """Auto-delete exchanges left without a binding once ``gone`` are: deleted with them (by
        the writer, in the same change: nodes applying it do not decide this themselves)."""
        gone = list(gone)
        for src in dict.fromkeys(b[0] for b in gone):
            if src.auto_delete and src.name and len(src.bindings) <= sum(1 for b in gone if b[0] is src):
                self.exchange_gone(change, vhost, src)

    def exchange_gone(self, change: Change, vhost: VirtualHost, ex: Exchange) -> None:
        """Its key, and its bindings as source and as destination."""
        change.delete(self.key(b"exchanges", vhost.name, ex.name))
        for binding in ex_bindings(ex) + vhost.bindings_to(ex):
            self.binding_gone(change, vhost.name, binding)

    def queue_gone(self, change: Change, vhost: VirtualHost, q: Queue) -> None:
        change.delete(self.key(b"queues", vhost.name, q.name))
        if q.arguments.get("x-queue-type") == "quorum":
            cluster_root = self.root[:-len(b"defs/")]
            for kind in (b"leaders/", b"isr/"):
                change.delete(cluster_root + kind + _part(vhost.name) + b"/" + _part(q.name))
        bindings = vhost.bindings_to(q)
        for binding in bindings:
            self.binding_gone(change, vhost.name, binding)
        self.orphans(change, vhost, bindings)

    # -- the model as keys (seeding, and comparing with a snapshot) -------------------------------

    def model_entries(self) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        broker = self.broker
        for vhost in broker.vhosts.values():
            v = vhost.name
            k, val = self.vhost_entry(v, dict(vhost.limits))
            out[k] = val
            for policy in vhost.policies():
                k, val = self.policy_entry(policy.as_json())
                out[k] = val
            for ex in vhost.exchanges.values():
                if ex.name and not ex.name.startswith("amq."):
                    k, val = self.exchange_entry(v, ex.name, ex.type_name, ex.durable, ex.auto_delete,
                                                 ex.internal, ex.arguments)
                    out[k] = val
                for binding in ex_bindings(ex):
                    if self.binding_in_cluster(binding):
                        dest = binding[1]
                        k, val = self.binding_entry(v, ex.name, "exchange" if _is_exchange(dest) else "queue",
                                                    dest.name, binding[2], binding[3])
                        out[k] = val
            for q in vhost.queues.values():
                if self.in_cluster(q):
                    members = None if q.replica is None else q.replica.members
                    k, val = self.queue_entry(v, q.name, q.durable, q.auto_delete, q.arguments, q.home,
                                              members)
                    out[k] = val
        for user in broker.users.users.values():
            k, val = self.user_entry(user_record(user))
            out[k] = val
        return out

    # -- applying what etcd has ----------------------------------------------------------------------

    def snapshot(self, entries: dict[bytes, tuple[bytes, int]]) -> None:
        """Make the model equal to ``entries`` (every definitions key at one revision): at join,
        and after a watch broke. A queue of this node that did not outlive its restart (not
        durable, or auto-delete) is deleted from the cluster instead of made again."""
        model = self.model_entries()
        stale = [k for k in model if k not in entries]
        for key in sorted(stale, key=_order, reverse=True):
            self.apply(key, None, 0)
        died = self._died_with_us(entries, model)
        if died:
            self.submit(Change(dict.fromkeys(died)))
        for key in sorted(entries, key=_order):
            value, revision = entries[key]
            if key == self.seeded_key or key in died:
                continue
            if model.get(key) == value and not key.startswith(self.root + b"bindings/"):
                self.revisions[key] = revision
            else:
                self.apply(key, value, revision)

    def _died_with_us(self, entries: dict[bytes, tuple[bytes, int]],
                      model: dict[bytes, bytes]) -> set[bytes]:
        """The keys of this node's queues that did not outlive its restart (not durable, or
        auto-delete), and of their bindings: deleted from the cluster, not made again here."""
        queues = self.root + b"queues/"
        dead: set[tuple[str, str]] = set()
        keys: set[bytes] = set()
        for key, (value, _rev) in entries.items():
            if key.startswith(queues) and key not in model:
                record = json.loads(value)
                if record.get("node") == self.node and (not record["durable"] or record["auto_delete"]):
                    dead.add((record["vhost"], record["name"]))
                    keys.add(key)
        if dead:
            for key, (value, _rev) in entries.items():
                if key.startswith(self.root + b"bindings/"):
                    record = json.loads(value)
                    if (record["destination_type"] == "queue"
                            and (record["vhost"], record["destination"]) in dead):
                        keys.add(key)
        return keys

    def apply(self, key: bytes, value: bytes | None, revision: int) -> None:
        """One key's new value (None: deleted), applied to the model; a failure is logged, never
        raised (the watch goes on)."""
        if value is None:
            self.revisions.pop(key, None)
        else:
            self.revisions[key] = revision
        if not key.startswith(self.root) or key == self.seeded_key:
            return
        kind, _, rest = key[len(self.root):].partition(b"/")
        names = [_unpart(p) for p in rest.split(b"/")]
        try:
            with self.broker.commands.local():
                getattr(self, f"_apply_{kind.decode()}")(names, None if value is None else json.loads(value))
        except Exception:
            log.exception("cannot apply the cluster's definition %s", key.decode(errors="replace"))

    def _vhost(self, name: str) -> VirtualHost | None:
        vhost = self.broker.vhosts.get(name)
        if vhost is None:
            log.warning("cluster definitions: no vhost '%s' here yet", name)
        return vhost

    def _apply_vhosts(self, names: list[str], record: dict[str, Any] | None) -> None:
        c, name = self.broker.commands, names[0]
        if record is None:
            if name in self.broker.vhosts:
                c.delete_vhost(name)
            return
        if name not in self.broker.vhosts:
            c.add_vhost(name)
        limits = record.get("limits") or {}
        if self.broker.vhosts[name].limits != limits:
            c.set_vhost_limits(name, limits)

    def _apply_users(self, names: list[str], record: dict[str, Any] | None) -> None:
        c, name = self.broker.commands, names[0]
        if record is None:
            if name in self.broker.users.users:
                c.delete_user(name)
            return
        c.replace_user(user_from_record(record, name in self.broker.config.loopback_users))

    def _apply_exchanges(self, names: list[str], record: dict[str, Any] | None) -> None:
        vhost = self._vhost(names[0])
        if vhost is None:
            return
        c, ex = self.broker.commands, vhost.exchanges.get(names[1])
        if record is None:
            if ex is not None:
                c.delete_exchange(vhost, ex.name)
            return
        arguments = _table(record["arguments"])
        if ex is not None:
            if (ex.type_name, ex.durable, ex.auto_delete, ex.internal, ex.arguments) == (
                    record["type"], record["durable"], record["auto_delete"], record["internal"], arguments):
                return
            c.delete_exchange(vhost, ex.name)  # made again differently while we did not watch
        c.declare_exchange(vhost, names[1], record["type"], durable=record["durable"],
                           auto_delete=record["auto_delete"], internal=record["internal"],
                           arguments=arguments)

    def _apply_queues(self, names: list[str], record: dict[str, Any] | None) -> None:
        vhost = self._vhost(names[0])
        if vhost is None:
            return
        c, q = self.broker.commands, vhost.queues.get(names[1])
        if record is None:
            if q is not None and self.in_cluster(q):
                c.delete_queue(vhost, q.name)
                if self.on_replicated is not None:
                    self.on_replicated(vhost.name, names[1], None)
            return
        home = record.get("node")
        members = record.get("members")
        if isinstance(members, list) and self.on_replicated is not None:
            self._declared(vhost, names[1], record)
            self.on_replicated(vhost.name, names[1], [str(m) for m in members])
            return
        if q is not None:
            if not q.exclusive:
                self.on_home(q, None if home == self.node else home)  # (a restart forgot it)
            else:
                log.warning("cluster definitions: queue '%s' in vhost '%s' is declared in the cluster, "
                            "and here as an exclusive queue: the exclusive queue is kept", q.name, vhost.name)
            return
        q = c.declare_queue(vhost, names[1], durable=record["durable"], auto_delete=record["auto_delete"],
                            arguments=_table(record["arguments"]))
        self.on_home(q, None if home == self.node else home)

    def _declared(self, vhost: VirtualHost, name: str, record: dict[str, Any]) -> None:
        """A replicated queue: made here if it is not (its role is the replicas' to decide)."""
        if vhost.queues.get(name) is None:
            self.broker.commands.declare_queue(vhost, name, durable=record["durable"],
                                               auto_delete=record["auto_delete"],
                                               arguments=_table(record["arguments"]))

    def _apply_bindings(self, names: list[str], record: dict[str, Any] | None) -> None:
        if record is None:
            binding = self._binding_by_key(names)
            if binding is not None:
                vhost, b = binding
                self._unbind(vhost, b[0].name, "exchange" if _is_exchange(b[1]) else "queue", b[1].name,
                             b[2], b[3])
            return
        vhost = self._vhost(record["vhost"])
        if vhost is None:
            return
        c, args = self.broker.commands, _table(record["arguments"])
        if record["destination_type"] == "exchange":
            c.bind_exchange(vhost, record["destination"], record["source"], record["routing_key"], args)
        else:
            c.bind_queue(vhost, record["destination"], record["source"], record["routing_key"], args)

    def _unbind(self, vhost: VirtualHost, source: str, kind: str, destination: str, routing_key: str,
                arguments: dict[str, Any]) -> None:
        c = self.broker.commands
        if kind == "exchange":
            c.unbind_exchange(vhost, destination, source, routing_key, arguments)
        else:
            c.unbind_queue(vhost, destination, source, routing_key, arguments)

    def _binding_by_key(self, names: list[str]) -> tuple[VirtualHost, Binding] | None:
        """The binding a deleted key stood for (its record is gone with it: found by its hash)."""
        vhost = self.broker.vhosts.get(names[0])
        ex = None if vhost is None else vhost.exchanges.get(names[1])
        if vhost is None or ex is None:
            return None
        key = self.key(b"bindings", names[0], names[1]) + b"/" + _part(names[2])
        for binding in ex_bindings(ex):
            dest = binding[1]
            kind = "exchange" if _is_exchange(dest) else "queue"
            if self.binding_key(vhost.name, ex.name, kind, dest.name, binding[2], binding[3]) == key:
                return vhost, binding
        return None

    def _apply_policies(self, names: list[str], record: dict[str, Any] | None) -> None:
        vhost = self._vhost(names[0])
        if vhost is None:
            return
        c = self.broker.commands
        if record is None:
            c.clear_policy(vhost, names[1])
        else:
            c.set_policy(vhost, names[1], record["pattern"], record["definition"], record.get("priority", 0),
                         record.get("apply-to", "all"))


def ex_bindings(ex: Exchange) -> list[Binding]:
    return [(ex, dest, routing_key, arguments) for (dest, routing_key, _f), arguments in ex.bindings.items()]


def _order(key: bytes) -> tuple[int, bytes]:
    for i, kind in enumerate(KINDS):
        if (b"/defs/" + kind + b"/") in key:
            return i, key
    return len(KINDS), key


__all__ = ["ClusterDefinitions", "KINDS"]
