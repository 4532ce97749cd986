"""The node-to-node links of replicated queues: a leader serving its followers (and the
forwarding links, which arrive on the same listener), and a follower following its leader.
Part of `replicas`' shell (see its docstring for the protocol's roles)."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from typing import TYPE_CHECKING

from .forward_frames import F_HELLO
from .replication import ACK, END, HELLO, RESET, FrameReader, ReplicationError, ack, frame, hello

if TYPE_CHECKING:
    from .replicas import QueueReplica, Replicas

log = logging.getLogger("hare.cluster")

LINK_READ = 16 << 20  # bytes a follower reads at once (a batch: one write, one sync)
MAX_OUTBOX = 200_000  # frames queued for one follower before it is cut off (it resyncs)


async def serve(manager: Replicas, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A connection to our node-to-node listener: a follower of a queue we lead (HELLO), or
    another node's forwarding link (F_HELLO)."""
    frames = FrameReader()
    replica: QueueReplica | None = None
    node = ""
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                return
            got = frames.feed(data)
            if got and got[0][0] == F_HELLO and replica is None:
                await manager.forwarding.serve(reader, writer, frames, got[1:])
                return
            for kind, payload in got:
                if kind == HELLO and replica is None:
                    hi = json.loads(payload)
                    node = str(hi["node"])
                    replica = manager.replicas.get((hi["vhost"], hi["queue"]))
                    if replica is None or replica.log is None or node not in replica.members:
                        return  # not ours to lead (any more), or not a member of its group
                    replica.log.connect(node)
                    replica.gone_since.pop(node, None)
                    manager.writers.setdefault(id(replica), {})[node] = writer
                    manager._wake(replica)
                elif kind == ACK and replica is not None and replica.log is not None:
                    (seq,) = struct.unpack(">Q", payload)
                    replica.log.follower_acked(node, seq)
                else:
                    return
            if replica is not None and replica.log is not None and \
                    len(replica.log.outbox.get(node, ())) > MAX_OUTBOX:
                log.warning("queue '%s': follower %s is too far behind: cut off", replica.name, node)
                return
    except (OSError, ReplicationError, ValueError, KeyError):
        return
    finally:
        if replica is not None:
            manager.writers.get(id(replica), {}).pop(node, None)
            if replica.log is not None:
                replica.log.disconnect(node)
                replica.gone_since.setdefault(node, time.monotonic())
        writer.close()



async def follow(manager: Replicas, replica: QueueReplica, leader: str) -> None:
    while replica.following == leader:
        record = manager.node.members.alive.get(leader) or manager.node.members.nodes.get(leader)
        address = record.cluster if record is not None else None
        if address:
            try:
                await _follow_once(manager, replica, leader, address)
            except asyncio.CancelledError:
                raise
            except (OSError, ReplicationError, ValueError) as exc:
                log.debug("queue '%s': link to leader %s: %s", replica.name, leader, exc)
        await asyncio.sleep(0.3)

async def _follow_once(manager: Replicas, replica: QueueReplica, leader: str, address: str) -> None:
    """Follow one connection's worth. Reading and applying go on while the frames read
    before are written and synced in a thread; each sync is acked when done."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port), limit=LINK_READ)
    syncing: asyncio.Task[None] | None = None
    unsynced: list[bytes] = []
    upto = 0  # the seq the frames in `unsynced` bring us to (0: mid-snapshot, nothing to ack)
    file = replica.file

    async def sync() -> None:
        nonlocal unsynced, upto
        while unsynced:
            frames_, seq = unsynced, upto
            unsynced = []
            await asyncio.to_thread(file.write_and_sync, frames_)
            if seq:
                writer.write(ack(seq))

    try:
        epoch = manager.epochs.get((replica.vhost, replica.name), 0)
        writer.write(hello(replica.vhost, replica.name, manager.me, epoch))
        frames = FrameReader()
        state = replica.state
        while replica.following == leader:
            data = await reader.read(LINK_READ)
            if not data:
                return
            got = frames.feed(data)
            snapshot = False
            for kind, payload in got:
                state.apply(kind, payload)
                snapshot = snapshot or kind == RESET or kind == END
            # the frames as they came, in one piece (a snapshot's switch of files: frame by frame)
            if snapshot:
                unsynced.extend(frame(kind, payload) for kind, payload in got)
            else:
                unsynced.append(frames.whole)
            if file.wants_compaction(state):
                unsynced.extend(state.snapshot_frames(state.epoch))
            upto = 0 if state.snapshotting else state.seq
            if syncing is None or syncing.done():
                if syncing is not None:
                    syncing.result()  # (a failed write ends this link: we connect again)
                syncing = asyncio.get_running_loop().create_task(sync())
    finally:
        if syncing is not None and not syncing.done():
            syncing.cancel()
        writer.close()


__all__ = ["serve", "follow"]
