"""A metadata change proposed to the cluster, applied only once the cluster has agreed to it.

In a cluster, ``Commands`` does not change the model for a client's or an operator's command:
it validates the command, turns the change into a ``Change`` (keys to put and delete, guarded by
the revisions it read) and raises ``Proposed``. The caller holds the command: the AMQP connection
keeps the method frame and the input after it, the control socket its request. The cluster
writes the change; every node, the writer too, applies it to its model from the watch, in the
cluster's order. When this node has applied the revision of the write, the ``Pending`` is done
and the caller runs the command again with ``Commands.replay`` set to it: the command now finds
its change made (a declare finds the queue; a password change is not made twice) and answers as
a single node would. A guard that failed (another node changed the key first) means the command
runs again on the state that won: a declare of a queue declared differently there is refused
with 406, as it would be on one node.

Nothing here does I/O: the cluster's shell (cluster/etcd_node.py) writes and completes.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..amqp.errors import ChannelError
from ..auth.users import user_from_record, user_record

log = logging.getLogger("hare.commands")


@dataclass(slots=True)
class Change:
    """Keys (under the cluster's definitions prefix, as bytes) to put (value: bytes) and to delete
    (value: None), written in one transaction when every guard holds: ``guards`` maps a key to
    the revision it must still have (0: the key must not exist). A key is written once (etcd
    refuses a transaction naming a key twice): the last put or delete of it stands."""

    ops: dict[bytes, bytes | None] = field(default_factory=dict)
    guards: dict[bytes, int] = field(default_factory=dict)
    result: Any = None  # what the command answers when it runs again (queue.delete: the count)

    def put(self, key: bytes, value: bytes) -> None:
        self.ops[key] = value

    def delete(self, key: bytes) -> None:
        self.ops[key] = None


class Pending:
    """A change on its way; ``finish`` is called once, when this node has applied it (or the
    cluster refused it: ``committed`` False; or could not be reached: ``error``)."""

    __slots__ = ("change", "done", "committed", "error", "_callbacks")

    def __init__(self, change: Change) -> None:
        self.change = change
        self.done = False
        self.committed = False
        self.error: Exception | None = None
        self._callbacks: list[Callable[[Pending], None]] = []

    @property
    def result(self) -> Any:
        return self.change.result

    def add_done_callback(self, callback: Callable[[Pending], None]) -> None:
        if self.done:
            callback(self)
        else:
            self._callbacks.append(callback)

    def finish(self, committed: bool = False, error: Exception | None = None) -> None:
        if self.done:
            return
        self.done, self.committed, self.error = True, committed, error
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:  # one waiter's trouble is not the others' (nor the cluster's)
                log.exception("a waiter of a metadata change failed")


class Proposed(Exception):  # noqa: N818 - not an error: the command goes on when the cluster agrees
    """Raised by a command whose change was proposed to the cluster; run it again (with
    ``Commands.replay`` set) when ``pending`` is done."""

    def __init__(self, pending: Pending) -> None:
        super().__init__("a metadata change waits for the cluster")
        self.pending = pending


class Proposing:
    """The part of ``Commands`` (broker/commands.py) that proposes: whether a change goes to the
    cluster, the change of the command running again, the catching up before a 404."""

    cluster: Any  # (cluster/definitions.py: ClusterDefinitions; None without a cluster)
    replay: Pending | None
    _local: int

    @property
    def clustered(self) -> bool:
        """Changes go through the cluster (not: applying what it agreed to)."""
        return self.cluster is not None and not self._local

    @contextmanager
    def local(self) -> Iterator[None]:
        """Change the model itself (the cluster applies a change it agreed to)."""
        self._local += 1
        try:
            yield
        finally:
            self._local -= 1

    def _take_replay(self) -> Pending | None:
        """The change of the command running again (raising what made it fail, if anything)."""
        replay, self.replay = self.replay, None
        if replay is not None and replay.error is not None:
            raise replay.error
        return replay

    def _propose(self, change: Change) -> None:
        """Raise ``Proposed``; return only when this is the command running again after the
        cluster applied its change (a guard that failed: the command proposes afresh)."""
        replay = self._take_replay()
        if replay is not None and replay.committed and replay.change.ops == change.ops:
            return
        raise Proposed(self.cluster.propose(change))

    def _found(self, lookup: Callable[[], Any]) -> Any:
        """``lookup()``; in a cluster, a 404 first catches up with the cluster (``_barrier``)."""
        try:
            return lookup()
        except ChannelError as exc:
            if exc.code != 404 or not self.clustered:
                raise
            self._barrier()
            return lookup()

    def _barrier(self) -> None:
        """Before answering "not found" in a cluster: catch up with what the cluster has (a
        client told by another node that it declared something finds it here)."""
        if self.clustered:
            self._propose(Change())


def user_change(method: Callable[..., Any]) -> Callable[..., Any]:
    """A command that changes users (their records: password, tags, limits, permissions). In a
    cluster it runs on a copy of the users: the records it would save are proposed (guarded by
    the revision this node applied), and the model changes when the cluster applies them."""

    @functools.wraps(method)
    def run(self: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        if not self.clustered:
            return method(self, name, *args, **kwargs)
        replay = self._take_replay()
        if replay is not None and replay.committed:
            return self.broker.users.users.get(name)
        users = self.broker.users
        real = users.users
        users.users = {n: user_from_record(user_record(u), u.loopback_only) for n, u in real.items()}
        self._collected = {}
        try:
            method(self, name, *args, **kwargs)
        finally:
            users.users, collected, self._collected = real, self._collected, None
        cluster = self.cluster
        if all(record == (None if real.get(n) is None else user_record(real[n]))
               for n, record in collected.items()):
            return real.get(name)  # it changes nothing (an import of what is there)
        change = Change()
        for user_name, record in collected.items():
            if record is None:
                change.delete(cluster.key(b"users", user_name))
            else:
                key, value = cluster.user_entry(record)
                change.put(key, value)
            cluster.guard_unchanged(change, cluster.key(b"users", user_name))
        raise Proposed(cluster.propose(change))

    return run


__all__ = ["Change", "Pending", "Proposed", "Proposing"]
