"""The operator changes a quorum queue's group (rabbitmq-queues' add_member, delete_member, grow,
shrink): a new members list in the queue's record, written through the definitions' path (a
guarded change: the record as this node last applied it). Every node applies it from the watch
(`Replicas.queue_record`): a node added follows the leader, gets a snapshot and joins the ISR
once caught up (the leader does not count it in the majority before); a node removed stops its
replica and removes its file (a leader resigns first: an in-sync member takes over); the
leader takes a removed node out of the ISR at once.

A member is not removed when it is the queue's last, or its last in-sync one (the queue would
have no copy to lead from), and a node is not added unless it is running.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

from ..broker.proposal import Change, Pending
from .etcd_node import ClusterError

if TYPE_CHECKING:
    from .etcd_node import EtcdNode

ATTEMPTS = 5  # a guard that failed (the record changed meanwhile): try again on the new record


class MemberError(Exception):
    """One queue's change refused; ``reason`` is the word rabbitmq-queues prints (last_node, ...)."""

    def __init__(self, reason: str, size: int) -> None:
        super().__init__(reason)
        self.reason, self.size = reason, size


async def change(node: EtcdNode, vhost: str, name: str, add: str | None = None,
                 remove: str | None = None) -> int:
    """Add ``add`` to, or remove ``remove`` from, the group of quorum queue ``name``; the
    group's size after. Raises MemberError."""
    replicas, defs = node.replicas, node.defs
    assert replicas is not None and defs is not None
    for _ in range(ATTEMPTS):
        members = replicas.records.get((vhost, name))
        q = broker_queue(node, vhost, name)
        if q is None:
            raise MemberError("not_found", 0)
        if members is None:
            raise MemberError("classic_queue_not_supported", 0)
        size = len(members)
        if add is not None:
            if add in members:
                raise MemberError("already_a_member", size)
            if add not in node.members.alive:
                raise MemberError("node_not_running", size)
            new = [*members, add]
        else:
            if remove not in members:
                raise MemberError("not_a_member", size)
            if size == 1:
                raise MemberError("last_node", size)
            in_sync = replicas.isr.get((vhost, name), (members, 0))[0]
            if set(in_sync) & set(members) <= {remove}:
                raise MemberError("last_in_sync_member", size)
            new = [m for m in members if m != remove]
        key, value = defs.queue_entry(vhost, name, q.durable, q.auto_delete, q.arguments, q.home, new)
        proposal = Change()
        proposal.put(key, value)
        defs.guard_unchanged(proposal, key)
        pending = node.propose(proposal)
        await _done(pending)
        if pending.error is not None:
            raise MemberError(f"{pending.error}", size)
        if pending.committed:
            return len(new)
        await asyncio.sleep(0.05)  # the record changed first: look again once it is applied here
    raise MemberError("the queue's record kept changing", len(replicas.records.get((vhost, name), ())))


async def grow(node: EtcdNode, target: str, which: str, vhost_pattern: str = ".*",
               queue_pattern: str = ".*") -> list[dict[str, Any]]:
    """A member on ``target`` for every matching quorum queue without one (``which``: all, or
    even: only those whose group has an even size); a row per queue changed or refused."""
    if which not in ("all", "even"):
        raise ClusterError(f"Error (argument validation): strategy '{which}' is not recognised.")
    if target not in node.members.alive:
        raise ClusterError(f"Error:\n{{:error, :node_not_running}}: {target}")
    vhosts, queues = re.compile(vhost_pattern), re.compile(queue_pattern)
    assert node.replicas is not None
    rows = []
    for (vhost, name), members in sorted(node.replicas.records.items()):
        if target in members or not (vhosts.match(vhost) and queues.match(name)):
            continue
        if which == "even" and len(members) % 2:
            continue
        rows.append(await _row(node, vhost, name, add=target))
    return rows


async def shrink(node: EtcdNode, target: str) -> list[dict[str, Any]]:
    """The member on ``target`` removed from every quorum queue that has one."""
    assert node.replicas is not None
    rows = []
    for (vhost, name), members in sorted(node.replicas.records.items()):
        if target in members:
            rows.append(await _row(node, vhost, name, remove=target))
    return rows


async def _row(node: EtcdNode, vhost: str, name: str, **what: Any) -> dict[str, Any]:
    try:
        size = await change(node, vhost, name, **what)
    except MemberError as exc:
        return {"vhost": vhost, "name": name, "size": exc.size, "result": f"error: {exc.reason}"}
    return {"vhost": vhost, "name": name, "size": size, "result": "ok"}


def broker_queue(node: EtcdNode, vhost: str, name: str) -> Any:
    assert node.replicas is not None
    v = node.replicas.broker.vhosts.get(vhost)
    return None if v is None else v.queues.get(name)


async def _done(pending: Pending) -> None:
    done = asyncio.get_running_loop().create_future()
    pending.add_done_callback(lambda _p: done.done() or done.set_result(None))
    await done


__all__ = ["MemberError", "change", "grow", "shrink"]
