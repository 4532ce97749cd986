"""This node's part of the replicated (quorum) queues it is a member of: the asyncio shell
around `replication` (the frames, the state, the leader's log).

etcd keys, per replicated queue (``<vhost>/<name>`` percent-encoded as in definitions):

    leaders/<vhost>/<name>   {"node"}: bound to the leader's lease; its create revision is the
                             queue's epoch (the fencing token of everything the leader writes)
    isr/<vhost>/<name>       {"in_sync": [...]}: changed by the leader only, in a transaction
                             guarded by its epoch; written at the queue's declare (every member)

- **Election.** A member in the ISR campaigns when there is no leader: one transaction, "no
  leader key, ISR as I read it", puts the leader key on its lease and takes the old leader out of
  the ISR. The queue's first member (the declaring node) campaigns at once, the others after a
  second while it is alive. Only an ISR member may lead: it has every confirmed message.
- **Leading.** The queue's store on the leader is a `ReplicatedStore` over an in-memory store
  (the replica file is the durable copy, as RabbitMQ 3.10's quorum queues keep messages in
  memory); its `LeaderLog` streams changes to each connected follower and to this node's own
  replica file, and releases a confirm when every ISR member (this node included) has synced it.
- **Following.** A follower connects to the leader's node-to-node listener (``--cluster-bind``),
  says HELLO, gets a snapshot and the changes, writes them to its replica file, syncs, acks.
- **The ISR.** The leader takes a follower out when it has not acked the oldest change a
  confirm waits for within ISR_LAG, or has been disconnected as long (written to etcd first,
  then confirms go on without it), and puts it back when it has caught up.
- **Fencing.** Leader keys are bound to a lease of their own, shorter than the membership's
  (LEADER_TTL, so a failover takes about 2 s). A leader whose leader lease may have expired (its
  last renewal sent longer ago than the TTL less a margin, monotonic clock) confirms and delivers
  nothing until it is renewed; when it has expired, the node leads nothing (its keys are gone)
  and takes a new lease.

Replica files: ``<data_dir>/replicas/<hash>.log`` (`replica_file.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..broker.queue import REJECTED_PUBLISH, rehome
from . import replica_links
from .aio import stopping
from .definitions import _part, _unpart
from .forwarding import Forwarding
from .replica_file import ReplicaFile
from .replicated_store import ReplicatedStore, fresh_store
from .replication import (
    LeaderLog,
    ReplicaState,
    min_isr,
)

if TYPE_CHECKING:
    from .etcd_node import EtcdNode

log = logging.getLogger("hare.cluster")

ISR_LAG = 2.0  # seconds a follower may lag (or be gone) before the leader takes it out of the ISR
TICK = 0.2  # the manager's timer
LEADER_TTL = 2  # seconds: the lease of this node's leader keys (etcd's shortest is about 2 s)
LEADER_RENEW = 0.4  # seconds between its renewals
FENCE_MARGIN = 0.6  # seconds: stop confirming and delivering this long before it could expire
PREFERRED_HEAD_START = 1.0  # seconds the first member has to campaign before the others
MAX_LINK_BUFFER = 64 << 20  # bytes buffered for one follower's socket before it is cut off


class QueueReplica:
    """One replicated queue on this node: its state, its file, its role."""

    def __init__(self, manager: Replicas, vhost: str, name: str, members: list[str]) -> None:
        self.manager = manager
        self.vhost, self.name, self.members = vhost, name, members
        self.file = ReplicaFile(replica_path(manager.directory, vhost, name))
        self.state = self.file.load()
        self.log: LeaderLog | None = None
        self.leading = False
        self.epoch = 0
        self.following: str | None = None  # the leader we follow
        self.follow_task: asyncio.Task[None] | None = None
        self.syncing = False
        self.unwritten: list[bytes] = []  # frames for this node's own file (leading)
        self.flush_scheduled = False
        self.campaign_after = 0.0
        self.gone_since: dict[str, float] = {}  # ISR followers not connected: since when
        self.isr_writing = False
        self.fenced = False  # (as last seen by the tick)
        self.forwarded_via: Any = None  # the link the last publish went by (following)
        self.refusals = 0

    @property
    def leader_key(self) -> bytes:
        return self.manager.key(b"leaders/", self.vhost, self.name)

    @property
    def isr_key(self) -> bytes:
        return self.manager.key(b"isr/", self.vhost, self.name)

    @property
    def confirm_source(self) -> Any:
        """What a publisher's confirm waits for: our followers (leading), or the link the last
        publish was forwarded by."""
        return self.log if self.leading else self.forwarded_via

    def target(self) -> str | None:
        return self.manager.leaders.get((self.vhost, self.name))

    def consumers_changed(self, q: Any) -> None:
        self.manager.forwarding.consumers_changed(self, q)

    def forward(self, q: Any, msg: Any) -> int:
        """A publish to this queue through this node, which does not lead it: to the leader."""
        target = self.target()
        r, link = self.manager.forwarding.forward(target, self.vhost, q, msg)
        if link is not None:
            self.forwarded_via = link
        if r & REJECTED_PUBLISH:
            if not self.refusals:
                log.warning("queue '%s' in vhost '%s': a publish through this node is refused: no node "
                            "to forward it to (%s)", self.name, self.vhost, target or "no leader yet")
            self.refusals += 1
        return r

    def ask(self, q: Any, op: int) -> Any:
        """basic.get, a declare's counts, a purge through this node: asked of the leader."""
        return self.manager.forwarding.ask(self.target(), q, op)

    def queue(self) -> Any:
        vhost = self.manager.broker.vhosts.get(self.vhost)
        return None if vhost is None else vhost.queues.get(self.name)


def replica_path(directory: Path, vhost: str, name: str) -> Path:
    digest = hashlib.sha1(f"{vhost}\0{name}".encode("utf-8", "surrogateescape")).hexdigest()
    return directory / f"{digest}.log"


class Elsewhere:
    """A replicated queue this node is not a member of: it knows it (and routes to it), holds
    none of its messages, and forwards publishes to its leader."""

    leading = False

    def __init__(self, manager: Replicas, vhost: str, name: str, members: list[str]) -> None:
        self.manager, self.vhost, self.name, self.members = manager, vhost, name, members
        self.refusals = 0
        self.forwarded_via: Any = None

    confirm_source = QueueReplica.confirm_source
    target = QueueReplica.target
    forward = QueueReplica.forward
    consumers_changed = QueueReplica.consumers_changed
    ask = QueueReplica.ask

    def queue(self) -> Any:
        vhost = self.manager.broker.vhosts.get(self.vhost)
        return None if vhost is None else vhost.queues.get(self.name)


class Remote(Elsewhere):
    """A classic queue whose home is another node (classic queues are not replicated: they live
    where they were declared, as in RabbitMQ 4): this node routes to it and forwards its
    publishes and consumers there. While the home is down, a publish to it is refused (nacked)."""

    def __init__(self, manager: Replicas, vhost: str, name: str, home: str) -> None:
        super().__init__(manager, vhost, name, [home])
        self.home = home

    def target(self) -> str | None:
        return self.home if self.home in self.manager.node.members.alive else None


class Replicas:
    """The replicated queues of this node; fed by the etcd watch (queue records, leader and ISR
    keys), serving the node-to-node listener."""

    def __init__(self, node: EtcdNode, broker: Any) -> None:
        self.node = node
        self.broker = broker
        self.me = node.settings.node_name
        root = node.keys.root
        self.root = root
        self.directory = (broker.data_dir or Path(".")) / "replicas"
        self.replicas: dict[tuple[str, str], QueueReplica] = {}
        self.records: dict[tuple[str, str], list[str]] = {}  # every replicated queue: its members
        self.leaders: dict[tuple[str, str], str] = {}
        self.epochs: dict[tuple[str, str], int] = {}
        self.isr: dict[tuple[str, str], tuple[list[str], int]] = {}  # in_sync, mod revision
        self.last_leader: dict[tuple[str, str], str] = {}  # who led before the key went
        self.elsewhere: dict[tuple[str, str], Elsewhere] = {}  # replicated queues we are not in
        self.server: asyncio.AbstractServer | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.started = False
        self.writers: dict[int, dict[str, asyncio.StreamWriter]] = {}  # id(replica) -> follower -> link
        self.forwarding = Forwarding(self)
        self.lease: Any = None  # the lease of our leader keys
        self.deadline = 0.0  # monotonic time before which that lease is surely alive

    def key(self, kind: bytes, vhost: str, name: str) -> bytes:
        return self.root + kind + _part(vhost) + b"/" + _part(name)

    def _names(self, key: bytes, kind: bytes) -> tuple[str, str] | None:
        rest = key[len(self.root + kind):].split(b"/")
        if len(rest) != 2:
            return None
        return _unpart(rest[0]), _unpart(rest[1])

    # -- fed by the watch ---------------------------------------------------------------------------

    def queue_record(self, vhost: str, name: str, members: list[str] | None) -> None:
        """A replicated queue's record (None: deleted), from the definitions."""
        key = (vhost, name)
        if members is None:
            self.records.pop(key, None)
            self.elsewhere.pop(key, None)
            replica = self.replicas.pop(key, None)
            if replica is not None:
                self._stop(replica)
                replica.file.remove()
            return
        self.records[key] = members
        replica = self.replicas.get(key)
        if self.me in members:
            self.elsewhere.pop(key, None)
            if replica is None:
                self.replicas[key] = QueueReplica(self, vhost, name, members)
                if self.started:
                    self._decide(self.replicas[key])
            elif replica.members != members:
                self._members_changed(replica, members)
            return
        if replica is not None:
            self._leave(replica)
        elif key not in self.elsewhere:  # (removed from the group while this node was down)
            ReplicaFile(replica_path(self.directory, vhost, name)).remove()
        q = self.broker.vhosts[vhost].queues.get(name) if vhost in self.broker.vhosts else None
        if q is not None and not isinstance(q.replica, Elsewhere):
            q.replica = self.elsewhere[key] = Elsewhere(self, vhost, name, members)
            self._empty_store(q)
        elif key in self.elsewhere:
            self.elsewhere[key].members = members

    def _members_changed(self, replica: QueueReplica, members: list[str]) -> None:
        """The operator changed the group of a queue we stay in (grow, shrink)."""
        log.info("queue '%s' in vhost '%s': members now %s", replica.name, replica.vhost, ", ".join(members))
        replica.members = list(members)
        leader_log = replica.log
        if leader_log is None:
            return
        leader_log.set_members(members)
        for node, writer in list(self.writers.get(id(replica), {}).items()):
            if node not in members:
                writer.close()  # a member no more: its link ends (serve's finally disconnects it)
        self._manage_isr(replica)

    def _leave(self, replica: QueueReplica) -> None:
        """This node is no member of the queue any more (shrink): its replica stops, its file
        goes; if it led, it resigns: the leader key goes and the ISR without it, in one
        transaction guarded by its epoch, and an in-sync member takes over."""
        key = (replica.vhost, replica.name)
        log.info("queue '%s' in vhost '%s': this node is no member of it any more", replica.name,
                 replica.vhost)
        self.replicas.pop(key, None)
        leading, epoch = replica.leading, replica.epoch
        self._stop(replica)
        replica.file.remove()
        if leading:
            if self.leaders.get(key) == self.me:
                self.last_leader[key] = self.leaders.pop(key)  # (forward nothing to ourselves)
            self._spawn(self._resign(replica, epoch))

    async def _resign(self, replica: QueueReplica, epoch: int) -> None:
        key = (replica.vhost, replica.name)
        while key in self.records and self.me not in self.records[key]:
            client = self.node._client
            try:
                if client is not None:
                    tx = client.transactions
                    in_sync = [n for n in self.isr.get(key, ([], 0))[0] if n != self.me]
                    ok, _ = await client.transaction(
                        compare=[tx.create(replica.leader_key) == epoch],
                        success=[tx.delete(replica.leader_key),
                                 tx.put(replica.isr_key, json.dumps({"in_sync": in_sync}).encode())],
                        failure=[])
                    if ok:
                        log.info("queue '%s': this node resigned its lead (in sync: %s)", replica.name,
                                 ", ".join(in_sync))
                    return  # (not ok: the key is no longer ours; nothing to resign)
            except Exception as exc:  # noqa: BLE001 - etcd unreachable: try again
                log.debug("queue '%s': cannot resign: %s", replica.name, exc)
            await asyncio.sleep(TICK)

    def classic_home(self, q: Any, home: str | None) -> None:
        """A classic queue's home, from the definitions: another node's name, or None (this node)."""
        key = (q.vhost_name, q.name)
        if home is None or home == self.me:
            if isinstance(q.replica, Remote):
                feed = self.forwarding.feeds.get(id(q))
                if feed is not None:
                    self.forwarding.unsubscribe(feed)
                self._empty_store(q)  # (what the feed had brought)
                self.elsewhere.pop(key, None)
            rehome(q, None, None)
            return
        remote = self.elsewhere.get(key)
        if not isinstance(remote, Remote) or remote.home != home:
            remote = self.elsewhere[key] = Remote(self, q.vhost_name, q.name, home)
        if q.replica is None:
            kept = q.message_count
            if kept:
                log.warning("queue '%s' in vhost '%s' lives on node %s: the %d messages this node held "
                            "in it are dropped", q.name, q.vhost_name, home, kept)
            self._empty_store(q)
        rehome(q, home, remote)

    def key_changed(self, key: bytes, value: bytes | None, create_revision: int, mod_revision: int,
                    decide: bool = True) -> None:
        for kind in (b"leaders/", b"isr/"):
            if key.startswith(self.root + kind):
                names = self._names(key, kind)
                if names is None:
                    return
                if kind == b"leaders/":
                    if value is None:
                        if names in self.leaders:
                            self.last_leader[names] = self.leaders.pop(names)
                        self.epochs.pop(names, None)
                    else:
                        self.leaders[names] = str(json.loads(value).get("node"))
                        self.epochs[names] = create_revision
                else:
                    if value is None:
                        self.isr.pop(names, None)
                    else:
                        self.isr[names] = (list(json.loads(value).get("in_sync", [])), mod_revision)
                replica = self.replicas.get(names)
                if replica is not None:
                    if kind == b"isr/" and replica.log is not None and value is not None:
                        replica.log.set_isr(self.isr[names][0])
                    if self.started and decide:
                        self._decide(replica)
                return

    def place(self, size: int) -> list[str]:
        """The members of a new replicated queue: this node (it leads, as RabbitMQ's
        client-local leader locator) and the alive nodes that are members of the fewest."""
        alive = set(self.node.members.alive) | {self.me}
        load = {n: 0 for n in alive}
        for members in self.records.values():
            for n in members:
                if n in load:
                    load[n] += 1
        others = sorted(alive - {self.me}, key=lambda n: (load[n], n))
        return [self.me, *others[:max(0, min(size, len(alive)) - 1)]]

    def reset(self, entries: dict[bytes, tuple[bytes, int, int]]) -> None:
        """Every leader and ISR key at one revision (a read after the watch broke)."""
        self.leaders.clear()
        self.epochs.clear()
        self.isr.clear()
        for key, (value, create_revision, mod_revision) in entries.items():
            self.key_changed(key, value, create_revision, mod_revision, decide=False)
        if self.started:
            for replica in list(self.replicas.values()):
                self._decide(replica)

    def status(self) -> list[dict[str, Any]]:
        out = []
        for (vhost, name), members in sorted(self.records.items()):
            out.append({"vhost": vhost, "name": name, "leader": self.leaders.get((vhost, name)),
                        "members": list(members),
                        "in_sync": sorted(self.isr.get((vhost, name), ([], 0))[0])})
        return out

    # -- running -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        listener = self.node.settings.listener
        if listener:
            host, _, port = listener.rpartition(":")
            self.server = await asyncio.start_server(
                lambda r, w: replica_links.serve(self, r, w), host.strip("[]") or None,
                                                     int(port), limit=1 << 20)
        self.started = True
        loop = asyncio.get_running_loop()
        self.tasks.append(loop.create_task(self._ticks(), name="hare-replicas"))
        self.tasks.append(loop.create_task(self._keep_lease(), name="hare-replicas-lease"))
        for replica in list(self.replicas.values()):
            self._decide(replica)

    async def stop(self) -> None:
        self.started = False
        for task in self.tasks:
            task.cancel()
        for replica in self.replicas.values():
            self._stop(replica)
            replica.file.close()
        if self.server is not None:
            self.server.close()
            self.server = None
        self.forwarding.stop()
        lease, self.lease = self.lease, None
        if lease is not None:  # our leader keys go at once: the others elect now
            with contextlib.suppress(Exception):
                await asyncio.wait_for(lease.revoke(), 2)

    async def _keep_lease(self) -> None:
        """The leader keys' lease: taken at start, renewed every LEADER_RENEW; one that expired
        (etcd unreachable, or this process frozen) is replaced (the keys on it are gone)."""
        node = self.node
        while True:
            sent = time.monotonic()
            try:
                client = node._client or node._connect()
                if self.lease is None:
                    self.lease = await client.lease(LEADER_TTL)
                    self.deadline = sent + LEADER_TTL
                else:
                    reply = await asyncio.wait_for(self.lease.refresh(), LEADER_TTL)
                    if reply.TTL <= 0:
                        log.warning("the leader lease expired: this node leads no queue now")
                        self.lease = None
                        self.deadline = 0.0
                        for replica in list(self.replicas.values()):
                            if replica.leading:
                                self._demote(replica)
                        continue
                    self.deadline = sent + reply.TTL
            except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - fenced until renewed
                if stopping():
                    raise
                log.debug("cannot renew the leader lease: %s", exc)
                if self.lease is not None:
                    self.lease = node._aetcd.Lease(self.lease.id, LEADER_TTL, node._client or node._connect())
            await asyncio.sleep(LEADER_RENEW)

    def fenced(self) -> bool:
        return time.monotonic() > self.deadline - FENCE_MARGIN

    def _stop(self, replica: QueueReplica) -> None:
        if replica.follow_task is not None:
            replica.follow_task.cancel()
            replica.follow_task = None
        replica.following = None
        if replica.leading:
            self._demote(replica)

    async def _ticks(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                for replica in list(self.replicas.values()):
                    self._tick(replica)
                    self.forwarding.ensure(replica)
                for other in list(self.elsewhere.values()):
                    self.forwarding.ensure(other)
                self.forwarding.check_links()
            except Exception:  # noqa: BLE001 - one queue's trouble is not the others'
                log.exception("replicated queues: tick failed")

    def _tick(self, replica: QueueReplica) -> None:
        if replica.leading and replica.log is not None:
            leader_log = replica.log
            fenced = self.fenced()
            if fenced != replica.fenced:
                replica.fenced = fenced
                if fenced:
                    log.warning("queue '%s': the leader lease may expire: confirms and deliveries wait",
                                replica.name)
                else:
                    leader_log.release()
                    q = replica.queue()
                    if q is not None:
                        q.dispatch()
            self._manage_isr(replica)
        else:
            self._decide(replica)

    # -- deciding the role ------------------------------------------------------------------------

    def _decide(self, replica: QueueReplica) -> None:
        key = (replica.vhost, replica.name)
        q = replica.queue()
        if q is not None and q.replica is not replica:
            q.replica = replica  # a follower refuses publishes; its store holds nothing
            if not replica.leading:
                self._empty_store(q)
        leader = self.leaders.get(key)
        if leader == self.me:
            if not replica.leading:
                self._lead(replica, self.epochs.get(key, 0))
            return
        if replica.leading:
            self._demote(replica)
        if leader is not None:
            if replica.following != leader:
                self._follow(replica, leader)
            return
        # no leader: campaign if in the ISR
        if replica.follow_task is not None:
            replica.follow_task.cancel()
            replica.follow_task = None
            replica.following = None
        in_sync, revision = self.isr.get(key, ([], 0))
        if self.me not in in_sync:
            return
        now = time.monotonic()
        first = replica.members[0] if replica.members else self.me
        if first != self.me and first in self.node.members.alive and first in in_sync:
            if not replica.campaign_after:
                replica.campaign_after = now + PREFERRED_HEAD_START
            if now < replica.campaign_after:
                return
        replica.campaign_after = 0.0
        self._spawn(self._campaign(replica, in_sync, revision))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.append(task)
        task.add_done_callback(lambda t: self.tasks.remove(t) if t in self.tasks else None)

    async def _campaign(self, replica: QueueReplica, in_sync: list[str], revision: int) -> None:
        node = self.node
        lease = self.lease
        if lease is None or node._client is None or self.fenced():
            return
        old = self.last_leader.get((replica.vhost, replica.name))
        new_isr = [n for n in in_sync if n != old] if old and old != self.me else list(in_sync)
        client = node._client
        tx = client.transactions
        try:
            ok, _ = await client.transaction(
                compare=[tx.version(replica.leader_key) == 0, tx.mod(replica.isr_key) == revision],
                success=[tx.put(replica.leader_key, json.dumps({"node": self.me}).encode(), lease=lease.id),
                         tx.put(replica.isr_key, json.dumps({"in_sync": new_isr}).encode())],
                failure=[])
        except Exception as exc:  # noqa: BLE001 - etcd unreachable: the next tick tries again
            log.debug("campaign for '%s' failed: %s", replica.name, exc)
            return
        if ok:
            log.info("queue '%s' in vhost '%s': this node leads it now (in sync: %s)", replica.name,
                     replica.vhost, ", ".join(new_isr))

    # -- leading ------------------------------------------------------------------------------------

    def _lead(self, replica: QueueReplica, epoch: int) -> None:
        q = replica.queue()
        if q is None:
            return
        if replica.follow_task is not None:
            replica.follow_task.cancel()
            replica.follow_task = None
        replica.following = None
        key = (replica.vhost, replica.name)
        in_sync = self.isr.get(key, ([self.me], 0))[0]
        old = replica.state
        leader_log = LeaderLog(ReplicaState(), epoch, self.me, replica.members, in_sync,
                               min_isr(len(replica.members)), lambda: self._wake(replica), self.fenced)
        feed = self.forwarding.feeds.get(id(q))
        if feed is not None:  # our consumers were fed by the last leader: now we lead
            self.forwarding.unsubscribe(feed)
        previous = q.store if q.counter is None else q.counter.inner
        store = ReplicatedStore(fresh_store(previous), leader_log)
        for position in sorted(old.live):
            new_position = store.inner.next_pos
            store.push(old.message(position))
            if position in old.delivered:
                store.redeliver.add(new_position)
                leader_log.state.delivered.add(new_position)
        leader_log.state.epoch = epoch
        if q.counter is not None:
            q.counter.inner = store
        else:
            q.store = store
        if previous is not store:
            with contextlib.suppress(Exception):
                previous.destroy()
        replica.state = leader_log.state
        replica.log, replica.leading, replica.epoch = leader_log, True, epoch
        leader_log.outbox[self.me] = leader_log.state.snapshot_frames(epoch)  # our own file, afresh
        leader_log.acked[self.me] = 0
        q.replica = replica
        self._wake(replica)
        q.dispatch()

    @staticmethod
    def _empty_store(q: Any) -> None:
        previous = q.store if q.counter is None else q.counter.inner
        fresh = fresh_store(previous)
        if q.counter is not None:
            q.counter.inner = fresh
        else:
            q.store = fresh
        with contextlib.suppress(Exception):
            previous.destroy()

    def _demote(self, replica: QueueReplica) -> None:
        """We lead no more (another node does, or the queue is gone): keep the state, serve nothing."""
        leader_log = replica.log
        replica.leading = False
        replica.log = None
        q = replica.queue()
        if q is not None and q.replica is replica:
            if leader_log is not None:
                replica.state = leader_log.state
            self._empty_store(q)
            for consumer in q.consumers():  # other nodes' feeds: they go to the new leader
                if "feed" in consumer.arguments and hasattr(consumer.target, "feeds"):
                    q.remove_consumer(consumer)
                    consumer.target.consumer_cancelled(consumer)
        if leader_log is not None:
            leader_log.fail_all()  # what waited is not confirmed by this node: nacked
        self.writers.pop(id(replica), None)

    def _wake(self, replica: QueueReplica) -> None:
        if not replica.flush_scheduled:
            replica.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, replica)

    def _flush(self, replica: QueueReplica) -> None:
        replica.flush_scheduled = False
        leader_log = replica.log
        if leader_log is None:
            return
        leader_log.flush()
        mine = leader_log.take(self.me)
        if mine:
            replica.unwritten.extend(mine)
        for node, writer in list(self.writers.get(id(replica), {}).items()):
            frames = leader_log.take(node)
            if frames:
                writer.write(b"".join(frames))
                if writer.transport.get_write_buffer_size() > MAX_LINK_BUFFER:
                    log.warning("queue '%s': follower %s reads too slowly: cut off (it resyncs)",
                                replica.name, node)
                    writer.close()
        if not replica.unwritten and replica.file.wants_compaction(leader_log.state):
            replica.unwritten.extend(leader_log.state.snapshot_frames(leader_log.epoch))
        if not replica.syncing and replica.unwritten:
            replica.syncing = True
            upto = leader_log.state.seq
            frames, replica.unwritten = replica.unwritten, []
            self._spawn(self._sync_own(replica, leader_log, upto, frames))

    async def _sync_own(self, replica: QueueReplica, leader_log: LeaderLog, upto: int,
                        frames: list[bytes]) -> None:
        """This node's own copy, written and synced in a thread (a group commit): then the
        leader counts itself as having synced up to ``upto``."""
        try:
            await asyncio.to_thread(replica.file.write_and_sync, frames)
            leader_log.follower_acked(self.me, upto)
        except OSError as exc:
            log.error("queue '%s': cannot sync its replica file: %s", replica.name, exc)
        finally:
            replica.syncing = False
        if replica.unwritten or leader_log.settled or leader_log.marked:
            self._wake(replica)

    def _manage_isr(self, replica: QueueReplica) -> None:
        leader_log = replica.log
        if leader_log is None or replica.isr_writing:
            return
        now = time.monotonic()
        isr = set(leader_log.isr)
        members = set(replica.members)
        out = isr - members - {self.me}  # removed from the group: out at once
        for node in isr - out - {self.me}:
            connected = node in leader_log.outbox
            if not connected:
                since = replica.gone_since.setdefault(node, now)
                if now - since > ISR_LAG:
                    out.add(node)
            elif leader_log.lagging(node):
                since = replica.gone_since.setdefault(node, now)
                if now - since > ISR_LAG:
                    out.add(node)
            else:
                replica.gone_since.pop(node, None)
        back = {n for n in leader_log.outbox
                if n != self.me and n not in isr and n in members and leader_log.caught_up(n)}
        if out or back:
            new = sorted((isr - out) | back)
            replica.isr_writing = True
            self._spawn(self._write_isr(replica, leader_log, new))

    async def _write_isr(self, replica: QueueReplica, leader_log: LeaderLog, in_sync: list[str]) -> None:
        node = self.node
        try:
            client = node._client
            if client is None:
                return
            tx = client.transactions
            ok, _ = await client.transaction(
                compare=[tx.create(replica.leader_key) == leader_log.epoch],
                success=[tx.put(replica.isr_key, json.dumps({"in_sync": in_sync}).encode())], failure=[])
            if ok:
                log.info("queue '%s': in sync now: %s", replica.name, ", ".join(in_sync))
                leader_log.set_isr(in_sync)
        except Exception as exc:  # noqa: BLE001 - etcd unreachable: the next tick tries again
            log.debug("queue '%s': cannot write the ISR: %s", replica.name, exc)
        finally:
            replica.isr_writing = False

    # -- following ----------------------------------------------------------------------------------

    def _follow(self, replica: QueueReplica, leader: str) -> None:
        if replica.follow_task is not None:
            replica.follow_task.cancel()
        replica.following = leader
        replica.follow_task = asyncio.get_running_loop().create_task(
            replica_links.follow(self, replica, leader), name=f"hare-follow-{replica.name}")

__all__ = ["Replicas", "QueueReplica", "Remote", "ReplicaFile", "ISR_LAG"]
