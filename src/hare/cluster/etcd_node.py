"""This node's place in the cluster: joins through etcd, keeps its lease alive, and keeps
`Members` current from a watch. The asyncio shell around `membership` (the client: aetcd)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .membership import ClusterSettings, Keys, Members, NodeRecord

log = logging.getLogger("hare.cluster")

RPC_TIMEOUT = 3.0  # seconds for one etcd request


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

    def __init__(self, settings: ClusterSettings, record: NodeRecord) -> None:
        self.settings = settings
        self.record = record
        self.keys = Keys(settings.cluster_name)
        self.members = Members(self.keys)
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
            except self._aetcd.ClientError as exc:
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
        if not ok:
            await lease.revoke()
            raise ClusterError(f"node name '{self.settings.node_name}' is in use by a running node of "
                               f"cluster '{self.settings.cluster_name}'")
        self._lease = lease
        self.lease_deadline = started + self.settings.lease_ttl

    async def _read_all(self, client: Any) -> None:
        found = await client.get_prefix(self.keys.root)
        members = Members(self.keys)
        revision = found.header.revision
        for kv in found:
            members.apply(kv.key, kv.value, kv.mod_revision)
        members.revision = max(members.revision, revision)
        self.members = members

    async def stop(self) -> None:
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
            except Exception as exc:  # noqa: BLE001 - etcd unreachable: keep trying
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
                    self.members.apply(event.kv.key, None if deleted else event.kv.value,
                                       event.kv.mod_revision)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - etcd unreachable or compacted: read again
                log.debug("cluster: watch ended: %s", exc)
            await asyncio.sleep(1.0)
            try:
                await self._read_all(self._client or self._connect())
            except Exception:  # noqa: BLE001 - try again later
                pass

    # -- operator commands ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.members.status(self.settings.cluster_name)

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
