"""This node's place in the cluster: joins through etcd, keeps its lease alive, keeps
`Members` and the broker's definitions (`ClusterDefinitions`) current from one watch, and writes
the definitions' changes the command layer proposes. The asyncio shell around `membership` and
`definitions` (the client: aetcd).

A proposed change is one transaction (guarded as the change says) that also puts this node's
``sync/<node>`` key with a new token, on success and on failure alike: when the watch delivers
that token, this node has applied everything up to the write, and the change's `Pending` is done
(committed or not). A change of more than MAX_OPS keys is written in several transactions, its
guards on the first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from ..amqp.errors import ConnectionFault
from ..broker.proposal import Change, Pending
from .aio import stopping
from .definitions import ClusterDefinitions
from .membership import ClusterSettings, Keys, Members, NodeRecord
from .replicas import Replicas

log = logging.getLogger("hare.cluster")

RPC_TIMEOUT = 3.0  # seconds for one etcd request
WRITE_TIMEOUT = 30.0  # seconds a proposed change may take before its command fails (541)
MAX_OPS = 100  # keys per transaction (etcd's --max-txn-ops is 128 by default; one more: the token)


class ClusterError(Exception):
    """A cluster operation refused (its text is for the operator)."""


def _client_library() -> Any:
    try:
        import aetcd
    except ImportError:  # the cluster extra is not installed
        raise ClusterError("clustering needs the etcd client: pip install 'hare[cluster]'") from None
    return aetcd


class EtcdNode:
    """Joins the cluster at `start`, leaves it at `stop` (the lease is revoked: others see the node
    gone at once; a node that is killed is seen gone when its lease expires)."""

    def __init__(self, settings: ClusterSettings, record: NodeRecord, broker: Any = None) -> None:
        self.settings = settings
        self.record = record
        self.keys = Keys(settings.cluster_name)
        self.members = Members(self.keys)
        # the broker's definitions, kept in etcd (None: membership only)
        self.defs = None if broker is None else ClusterDefinitions(
            self.keys.root, settings.node_name, broker, self.propose, self.submit)
        # the replicated queues this node is a member of (None: membership only)
        self.replicas = None if broker is None else Replicas(self, broker)
        if self.defs is not None and self.replicas is not None:
            self.defs.place, self.defs.on_replicated = self.replicas.place, self.replicas.queue_record
            self.defs.on_home = self.replicas.classic_home
        self._replica_roots = (self.keys.root + b"leaders/", self.keys.root + b"isr/")
        self._sync_key = self.keys.root + b"sync/" + settings.node_name.encode()
        self._token = 0  # the last token this node wrote
        self._seen = 0  # the last of its tokens the watch (or a read) applied
        # token -> [pending, committed (None: no answer yet)]
        self._writes: dict[int, list[Any]] = {}
        self._writers: set[asyncio.Task[None]] = set()
        # set once the definitions are read (or seeded): no change is written before, so the
        # first node's seeding sees an empty cluster and a change made meanwhile comes after it
        self._ready = asyncio.Event()
        self._aetcd = _client_library()
        self._endpoint = 0
        self._client: Any = None
        self._lease: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self.lease_deadline = 0.0  # monotonic time before which our lease is surely still alive

    # -- the connection -------------------------------------------------------------------------------

    def _connect(self) -> Any:
        host, port = self.settings.endpoints[self._endpoint % len(self.settings.endpoints)]
        self._client = self._aetcd.Client(host=host, port=port, timeout=RPC_TIMEOUT)
        return self._client

    async def _next_endpoint(self) -> None:
        """After a failed request: the next endpoint (a single one: a new channel to it)."""
        await self._close_client()
        self._endpoint += 1
        self._connect()

    async def _retry(self, what: str, op: Any, deadline: float) -> Any:
        """``op(client)`` until it succeeds, trying each endpoint in turn, until ``deadline``."""
        while True:
            try:
                return await op(self._client or self._connect())
            except ClusterError:
                raise
            except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - the client's and grpc's
                if stopping():
                    raise
                if time.monotonic() >= deadline:
                    host, port = self.settings.endpoints[self._endpoint % len(self.settings.endpoints)]
                    raise ClusterError(f"cannot {what}: etcd at {host}:{port}: {exc}") from None
                await self._next_endpoint()
                await asyncio.sleep(0.2)

    # -- joining and leaving --------------------------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        await self._retry("join the cluster", self._join, deadline)
        await self._retry("read the cluster's members", self._read_all, deadline)
        self._ready.set()
        if self.replicas is not None:
            await self.replicas.start()
        self._tasks = [asyncio.create_task(self._keep_lease(), name="hare-cluster-lease"),
                       asyncio.create_task(self._watch(), name="hare-cluster-watch")]
        alive = sorted(self.members.alive)
        log.info("joined cluster '%s' as node '%s' (etcd %s); alive: %s", self.settings.cluster_name,
                 self.settings.node_name, ",".join(f"{h}:{p}" for h, p in self.settings.endpoints),
                 ", ".join(alive))

    async def _join(self, client: Any) -> None:
        """Take a lease and write our keys, unless a live node already has our name."""
        started = time.monotonic()
        lease = await client.lease(self.settings.lease_ttl)
        tx = client.transactions
        me, alive = self.keys.node(self.settings.node_name), self.keys.alive_key(self.settings.node_name)
        value = self.record.encode()
        ok, _ = await client.transaction(
            compare=[tx.version(alive) == 0],
            success=[tx.put(alive, value, lease=lease.id), tx.put(me, value)], failure=[])
        if not ok and self.record.instance:
            # our own name: this data directory's previous run (killed before its lease expired;
            # the directory's lock says it is not running) gives it back
            held = await client.get(alive)
            if held is not None and _instance(held.value) == self.record.instance:
                ok, _ = await client.transaction(
                    compare=[tx.mod(alive) == held.mod_revision],
                    success=[tx.put(alive, value, lease=lease.id), tx.put(me, value)], failure=[])
        if not ok:
            await lease.revoke()
            raise ClusterError(f"node name '{self.settings.node_name}' is in use by a running node of "
                               f"cluster '{self.settings.cluster_name}'")
        self._lease = lease
        self.lease_deadline = started + self.settings.lease_ttl

    async def _read_all(self, client: Any) -> None:
        """Everything under the cluster's prefix: the members afresh, the definitions made equal
        to etcd's (the first node of a cluster writes its own there instead)."""
        found = await client.get_prefix(self.keys.root)
        members = Members(self.keys)
        revision = found.header.revision
        entries: dict[bytes, tuple[bytes, int]] = {}
        replicated: dict[bytes, tuple[bytes, int, int]] = {}
        seen = self._seen
        defs = self.defs
        for kv in found:
            key = kv.key
            members.apply(key, kv.value, kv.mod_revision)
            if defs is not None and key.startswith(defs.root):
                entries[key] = (kv.value, kv.mod_revision)
            elif key.startswith(self._replica_roots):
                replicated[key] = (kv.value, kv.create_revision, kv.mod_revision)
            elif key == self._sync_key:
                seen = max(seen, _token(kv.value))
        self.members = members  # (the definitions' replicated queues place members among them)
        if defs is not None:
            if not entries and not defs.revisions:
                revision = max(revision, await self._seed(client, defs))
            else:
                defs.snapshot(entries)
        members.revision = max(members.revision, revision)
        if self.replicas is not None:
            self.replicas.reset(replicated)
        self._saw(seen)

    async def _seed(self, client: Any, defs: ClusterDefinitions) -> int:
        """An empty cluster: write this node's definitions (unless another node just did); the
        revision of the last write."""
        entries = defs.model_entries()
        entries[defs.seeded_key] = self.settings.node_name.encode()
        items = list(entries.items())
        tx = client.transactions
        revision = 0
        for i in range(0, len(items), MAX_OPS):
            chunk = items[i:i + MAX_OPS]
            compare = [tx.version(defs.seeded_key) == 0] if i == 0 else []
            ok, _ = await client.transaction(compare=compare,
                                             success=[tx.put(k, v) for k, v in chunk], failure=[])
            if not ok:  # another node seeded first: take its definitions
                found = await client.get_prefix(defs.root)
                defs.snapshot({kv.key: (kv.value, kv.mod_revision) for kv in found})
                return found.header.revision
        seeded = await client.get(defs.seeded_key)
        if seeded is not None:
            revision = seeded.mod_revision
        log.info("cluster '%s' had no definitions: this node's are the cluster's now (%d keys)",
                 self.settings.cluster_name, len(items) - 1)
        return revision

    async def stop(self) -> None:
        if self.replicas is not None:
            await self.replicas.stop()
        for task in list(self._writers):
            task.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - leaving anyway
                pass
        self._tasks = []
        if self._lease is not None:
            try:
                await asyncio.wait_for(self._lease.revoke(), RPC_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - the lease expires by itself
                log.warning("could not revoke the cluster lease (it expires in %d s): %s",
                            self.settings.lease_ttl, exc)
            self._lease = None
        await self._close_client()

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception:  # noqa: BLE001 - gone or being replaced either way
                pass

    # -- staying a member -----------------------------------------------------------------------------

    async def _keep_lease(self) -> None:
        """Renew the lease every third of its TTL; when it has expired (etcd unreachable, or
        this process frozen, for longer than the TTL), join again at once with a new one."""
        ttl = self.settings.lease_ttl
        failing = False
        while True:
            await asyncio.sleep(ttl / 3)
            sent = time.monotonic()
            try:
                if self._lease is not None:
                    reply = await self._lease.refresh()
                    if reply.TTL <= 0:
                        self._lease = None
                        log.warning("the lease expired (not renewed for %d s): joining again", ttl)
                    else:
                        self.lease_deadline = sent + reply.TTL
                if self._lease is None:
                    await self._join(self._client or self._connect())
                    log.warning("joined again after the lease expired")
                if failing:
                    log.info("etcd reachable again, lease renewed")
                failing = False
            except ClusterError as exc:
                log.error("%s", exc)
            except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - etcd unreachable: keep trying
                if stopping():
                    raise
                if not failing:
                    log.warning("cannot renew the lease: %s", exc)
                failing = True
                await self._next_endpoint()
                if self._lease is not None:
                    self._lease = self._aetcd.Lease(self._lease.id, ttl, self._client)

    async def _watch(self) -> None:
        """Apply every change under the cluster's prefix; after a broken watch, read everything
        again and watch from there."""
        while True:
            try:
                watch = await (self._client or self._connect()).watch_prefix(self.keys.root,
                                                         start_revision=self.members.revision + 1)
                async for event in watch:
                    deleted = event.kind == self._aetcd.EventKind.DELETE
                    key, value = event.kv.key, None if event.kind == self._aetcd.EventKind.DELETE \
                        else event.kv.value
                    self.members.apply(key, value, event.kv.mod_revision)
                    if self.defs is not None and key.startswith(self.defs.root):
                        self.defs.apply(key, value, event.kv.mod_revision)
                    elif self.replicas is not None and key.startswith(self._replica_roots):
                        self.replicas.key_changed(key, value, event.kv.create_revision, event.kv.mod_revision)
                    elif key == self._sync_key and not deleted:
                        self._saw(_token(event.kv.value))
            except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - unreachable, compacted
                if stopping():
                    raise
                log.debug("cluster: watch ended: %s", exc)
            await asyncio.sleep(1.0)
            try:
                await self._read_all(self._client or self._connect())
            except (Exception, asyncio.CancelledError):  # noqa: BLE001 - try again later
                if stopping():
                    raise

    # -- writing the definitions' changes --------------------------------------------------------------

    def propose(self, change: Change) -> Pending:
        """Write ``change``; its Pending is done when this node has applied it (or it failed)."""
        pending = Pending(change)
        task = asyncio.get_running_loop().create_task(self._write(pending), name="hare-cluster-write")
        self._writers.add(task)
        task.add_done_callback(self._writers.discard)
        return pending

    def submit(self, change: Change) -> None:
        """Write a change the broker made by itself (no one waits for it)."""
        self.propose(change).add_done_callback(_log_failure)

    async def _write(self, pending: Pending) -> None:
        deadline = time.monotonic() + WRITE_TIMEOUT
        change = pending.change
        items = list(change.ops.items())
        chunks = [items[i:i + MAX_OPS] for i in range(0, len(items), MAX_OPS)] or [[]]
        try:
            await asyncio.wait_for(self._ready.wait(), WRITE_TIMEOUT)
            for n, chunk in enumerate(chunks):
                self._token += 1
                token = self._token
                guards = change.guards if n == 0 else {}

                async def txn(client: Any, chunk: Any = chunk, guards: Any = guards,
                              token: int = token) -> bool:
                    return await self._txn(client, chunk, guards, token)

                ok = await self._retry("write a definition", txn, deadline)
                if not ok and n:
                    log.error("a change of %d keys was written in part: a later part's guard failed",
                              len(items))
                if not ok or n == len(chunks) - 1:
                    self._writes[token] = [pending, ok]
                    if token <= self._seen:
                        self._finish(token)
                    break
            if not pending.done:
                applied = asyncio.get_running_loop().create_future()
                pending.add_done_callback(lambda _p: applied.done() or applied.set_result(None))
                try:
                    await asyncio.wait_for(applied, max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    raise ClusterError("the change was written, but this node did not see it applied "
                                       f"within {WRITE_TIMEOUT:g} s") from None
        except asyncio.CancelledError:
            pending.finish(error=ConnectionFault(541, "the node is stopping"))
            raise  # (_retry and the waits let through only this task's own cancellation)
        except Exception as exc:  # noqa: BLE001 - etcd unreachable: the command fails
            pending.finish(error=ConnectionFault(541, f"cannot write to the cluster's metadata store: {exc}"))
        finally:
            self._writes = {t: e for t, e in self._writes.items() if e[0] is not pending}

    async def _txn(self, client: Any, ops: list[tuple[bytes, bytes | None]], guards: dict[bytes, int],
                   token: int) -> bool:
        tx = client.transactions
        compare = [tx.version(k) == 0 if rev == 0 else tx.mod(k) == rev for k, rev in guards.items()]
        sync = tx.put(self._sync_key, str(token).encode())
        success = [tx.delete(k) if v is None else tx.put(k, v) for k, v in ops] + [sync]
        ok, _ = await client.transaction(compare=compare, success=success, failure=[sync])
        return bool(ok)

    def _saw(self, token: int) -> None:
        """The watch (or a read) applied our write of ``token``, and everything before it."""
        if token <= self._seen:
            return
        self._seen = token
        for t in sorted(t for t in self._writes if t <= token):
            self._finish(t)

    def _finish(self, token: int) -> None:
        entry = self._writes.get(token)
        if entry is None or entry[1] is None:
            return  # the transaction's answer has not come yet
        del self._writes[token]
        if entry[0] is not None:
            entry[0].finish(committed=entry[1])

    # -- operator commands ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        status = self.members.status(self.settings.cluster_name)
        if self.replicas is not None:
            status["queues"] = self.replicas.status()
        return status

    async def forget(self, name: str) -> None:
        """Remove a stopped node from the members (rabbitmqctl forget_cluster_node)."""
        if name == self.settings.node_name or name in self.members.alive:
            raise ClusterError(f"Error:\n{{:failed_to_forget_node, :\"{name}\"}}: the node is running; "
                               "stop it first")

        async def delete(client: Any) -> bool:
            tx = client.transactions
            alive, node = self.keys.alive_key(name), self.keys.node(name)
            ok, _ = await client.transaction(compare=[tx.version(alive) == 0, tx.version(node) > 0],
                                             success=[tx.delete(node)], failure=[])
            return bool(ok)

        if not await self._retry("forget a node", delete, time.monotonic() + 10):
            if name in self.members.alive:
                raise ClusterError(f"Error:\nnode {name} is running; stop it first")
            raise ClusterError(f"Error:\n{{:not_a_cluster_node, \"The node selected is not in the "
                               f"cluster.\"}}: {name}")
        self.members.apply(self.keys.node(name), None, self.members.revision)


def instance_id(data_dir: Path | str) -> str:
    """The identity of a data directory (made at its first clustered start)."""
    path = Path(data_dir) / "cluster-instance"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = uuid.uuid4().hex
        path.write_text(value + "\n")
        return value


def _instance(value: bytes) -> str:
    try:
        return str(json.loads(value).get("instance", ""))
    except (ValueError, AttributeError):
        return ""


def _token(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


def _log_failure(pending: Pending) -> None:
    if pending.error is not None:
        log.error("a change the broker made could not be written to the cluster: %s", pending.error)
