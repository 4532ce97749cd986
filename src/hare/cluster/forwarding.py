"""Publishing through any node: a message for a queue held by another node (a quorum queue's
leader, a classic queue's home) goes there over the node-to-node link, and its publisher's
confirm comes back from there.

One link per pair of nodes, from the node the publisher is connected to (A) to the node that
holds the queue (B), on B's node-to-node listener. Frames (as `replication`'s):

    F_HELLO      A -> B   JSON {"node"}
    F_PUBLISH    A -> B   >QB link sequence number, hops; >H vhost, >H queue; the message
    F_CONFIRMED  B -> A   >QB every publish up to this number is confirmed (or, failed: 1, nacked)

B hands each message to the queue as a local publish would, and confirms a batch (one read) as
its own channels do: once the store has synced it (a persistent message in a durable queue) and
its quorum queues' followers have (`ReplicatedConfirms`, in order). On A, the publisher's
channel waits for the link (`OutLink.barrier`) as it waits for a local quorum queue's followers.
A link that breaks fails (nacks) what it had not confirmed: the publisher may publish again. A
message is forwarded at most twice (leadership moving while it travels), then refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..broker.message import Message
from ..broker.queue import REJECTED_PUBLISH, REPLICATED, THROTTLE
from ..session.publishing import ReplicatedConfirms
from .replication import FrameReader, ReplicationError, decode_message, frame

if TYPE_CHECKING:
    from .replicas import Replicas

log = logging.getLogger("hare.cluster")

F_HELLO, F_PUBLISH, F_CONFIRMED = 20, 21, 22
MAX_HOPS = 2
OUT_HIGH = 16 << 20  # octets queued on a link past which its publishers are slowed down
_QB = struct.Struct(">QB")


def _name(s: str) -> bytes:
    b = s.encode("utf-8", "surrogateescape")
    return struct.pack(">H", len(b)) + b


def publish_frame(seq: int, hops: int, vhost: str, queue: str, msg: Message) -> bytes:
    route, props, body = msg.route_bytes, msg.properties_raw, msg.body
    return frame(F_PUBLISH, b"".join((_QB.pack(seq, hops), _name(vhost), _name(queue),
                                      struct.pack(">H", len(route)), route, struct.pack(">I", len(props)),
                                      props, struct.pack(">I", len(body)), body)))


def parse_publish(payload: bytes) -> tuple[int, int, str, str, Message]:
    seq, hops = _QB.unpack_from(payload, 0)
    pos = _QB.size
    names = []
    for _ in range(2):
        (n,) = struct.unpack_from(">H", payload, pos)
        names.append(payload[pos + 2:pos + 2 + n].decode("utf-8", "surrogateescape"))
        pos += 2 + n
    return seq, hops, names[0], names[1], decode_message(payload, pos)


class OutLink:
    """A's side of the link to one node: forwards publishes, answers when they are confirmed."""

    def __init__(self, forwarding: Forwarding, node: str) -> None:
        self.forwarding = forwarding
        self.node = node
        self.seq = 0  # the last publish forwarded
        self.confirmed = 0  # ... and confirmed by the other node
        self.outbox: list[bytes] = []
        self.out_bytes = 0
        self.waiters: deque[tuple[int, Callable[[], None], Callable[[], None]]] = deque()
        self.failed_upto = 0  # publishes up to here were nacked by the other node
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.flush_scheduled = False
        self.throttled: set[Any] = set()  # queues whose publishers we slowed down

    def forward(self, vhost: str, queue: Any, msg: Message, hops: int) -> int:
        self.seq += 1
        data = publish_frame(self.seq, hops, vhost, queue.name, msg)
        self.outbox.append(data)
        self.out_bytes += len(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run(), name=f"hare-forward-{self.node}")
        if self.out_bytes > OUT_HIGH:
            self.throttled.add(queue)
            return REPLICATED | THROTTLE
        return REPLICATED

    def barrier(self, callback: Callable[[], None], on_fail: Callable[[], None]) -> None:
        if not self.waiters and self.confirmed >= self.seq:
            callback()
        else:
            self.waiters.append((self.seq, callback, on_fail))

    def flush(self) -> None:
        self.flush_scheduled = False
        writer = self.writer
        if writer is None or not self.outbox:
            return
        data, self.outbox = b"".join(self.outbox), []
        self.out_bytes = 0
        writer.write(data)
        if self.throttled:
            throttled, self.throttled = self.throttled, set()
            for q in throttled:
                q.release_flow()

    def _confirmed(self, upto: int, failed: bool) -> None:
        if failed:
            self.failed_upto = upto
        self.confirmed = max(self.confirmed, upto)
        waiters = self.waiters
        while waiters and waiters[0][0] <= self.confirmed:
            seq, callback, on_fail = waiters.popleft()
            if self.failed_upto and seq <= self.failed_upto:
                on_fail()
            else:
                callback()

    def _broken(self) -> None:
        """The link is gone: what it had not confirmed fails; it starts afresh."""
        waiters, self.waiters = self.waiters, deque()
        self.outbox, self.out_bytes = [], 0
        self.confirmed = self.seq
        for _seq, _callback, on_fail in waiters:
            on_fail()

    async def _run(self) -> None:
        try:
            address = self.forwarding.address(self.node)
            if address is None:
                raise OSError(f"no node-to-node address for {self.node}")
            host, _, port = address.rpartition(":")
            reader, writer = await asyncio.open_connection(host.strip("[]"), int(port), limit=1 << 20)
            writer.write(frame(F_HELLO, json.dumps({"node": self.forwarding.me}).encode()))
            self.writer = writer
            self.flush()
            frames = FrameReader()
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    raise OSError("closed by the other node")
                for kind, payload in frames.feed(data):
                    if kind != F_CONFIRMED:
                        raise ReplicationError(f"unexpected frame {kind} on a forwarding link")
                    upto, failed = _QB.unpack(payload)
                    self._confirmed(upto, bool(failed))
        except asyncio.CancelledError:
            self._broken()
            raise
        except (OSError, ReplicationError, ValueError) as exc:
            log.warning("forwarding link to %s: %s (what it had not confirmed is nacked)", self.node, exc)
        finally:
            if self.writer is not None:
                self.writer.close()
            self.writer = None
            self.task = None
        self._broken()


class InLink:
    """B's side: the publishes another node forwards, confirmed as a channel confirms them."""

    def __init__(self, forwarding: Forwarding, writer: asyncio.StreamWriter) -> None:
        self.forwarding = forwarding
        self.writer = writer
        self.state = 1  # (what ReplicatedConfirms' channel has: OPEN)
        self.confirms = ReplicatedConfirms(self)  # type: ignore[arg-type]

    def replicated_confirms(self, upto: int, failed: bool) -> None:
        if not self.writer.is_closing():
            self.writer.write(frame(F_CONFIRMED, _QB.pack(upto, failed)))

    def handle(self, frames: list[tuple[int, bytes]]) -> None:
        broker = self.forwarding.replicas.broker
        upto = 0
        sync = heavy = failed = False
        touched = self.confirms.touched
        for kind, payload in frames:
            if kind != F_PUBLISH:
                raise ReplicationError(f"unexpected frame {kind} on a forwarding link")
            seq, hops, vhost_name, queue_name, msg = parse_publish(payload)
            upto = seq
            vhost = broker.vhosts.get(vhost_name)
            q = None if vhost is None else vhost.queues.get(queue_name)
            if q is None:
                continue  # deleted meanwhile: dropped, as a message routed to a deleted queue
            self.forwarding.hops = hops  # (read by forward(), if it goes on from here)
            try:
                r = q.publish(msg)
            finally:
                self.forwarding.hops = 0
            if r & REJECTED_PUBLISH:
                failed = True
            if r & REPLICATED:
                touched.add(q.replica.confirm_source)
            if msg.needs_sync:
                sync = True
                heavy = heavy or msg.needs_sync > 1
        if upto:
            # (a refused message fails its whole batch: the publisher may publish again)
            self.confirms.add(upto, broker.store if sync else None, heavy, failed)


class Forwarding:
    """This node's forwarding links, out to each other node and in from them."""

    def __init__(self, replicas: Replicas) -> None:
        self.replicas = replicas
        self.me = replicas.me
        self.links: dict[str, OutLink] = {}
        self.hops = 0  # how many times the message being published here was forwarded already

    def forward(self, target: str | None, vhost: str, q: Any, msg: Message) -> tuple[int, OutLink | None]:
        """Send ``msg`` for ``q`` to ``target``; (what Queue.publish answers, the link)."""
        if target is None or target == self.me or self.hops >= MAX_HOPS:
            return REJECTED_PUBLISH, None
        link = self.link(target)
        return link.forward(vhost, q, msg, self.hops + 1), link

    def address(self, node: str) -> str | None:
        members = self.replicas.node.members
        record = members.alive.get(node) or members.nodes.get(node)
        return None if record is None else record.cluster

    def link(self, node: str) -> OutLink:
        link = self.links.get(node)
        if link is None:
            link = self.links[node] = OutLink(self, node)
        return link

    def stop(self) -> None:
        for link in self.links.values():
            if link.task is not None:
                link.task.cancel()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    frames: FrameReader, rest: list[tuple[int, bytes]]) -> None:
        inlink = InLink(self, writer)
        if rest:
            inlink.handle(rest)
        while True:
            data = await reader.read(1 << 20)
            if not data:
                return
            inlink.handle(frames.feed(data))


__all__ = ["Forwarding", "OutLink", "InLink", "F_HELLO", "F_PUBLISH", "F_CONFIRMED", "MAX_HOPS"]
