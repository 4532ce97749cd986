"""A replicated queue's data plane, sans-IO: the frames a leader streams to its followers, the
state both keep, and when the leader may confirm.

A replicated (quorum) queue has one leader and followers (its members, in the queue's record).
The leader numbers what changes the queue: a message enqueued (with its position, the order
of the queue), messages settled (acked, rejected, dropped: gone for good), messages delivered
(a redelivery after a failover is flagged), a purge. Each change is one frame with a sequence
number; a follower applies them in order to its `ReplicaState`, keeps them in its replica file,
syncs, and acks the sequence number. The leader confirms a publish once every member of the
in-sync set (ISR) has acked it and the ISR has at least ``min_isr`` members (a majority of the
group), never on its own copy alone when the group has more than one node.

A follower that (re)connects gets a snapshot: RESET, an ENQ per live message, END; it swaps its
state only at END, so a follower cut off mid-snapshot still has its last whole state.

Frames: ``>I`` length (of what follows), one kind octet, the payload:

    HELLO      follower -> leader   JSON {"vhost", "queue", "node", "epoch"}
    RESET      leader -> follower   >QQ epoch, seq          a snapshot begins
    ENQ        leader -> follower   >QQB seq, position, delivered; the message
    END        leader -> follower   >Q seq                  the snapshot is whole
    SETTLE     leader -> follower   >Q seq; >Q positions
    DELIVERED  leader -> follower   >Q seq; >Q positions
    PURGE      leader -> follower   >Q seq; >Q positions of what it removed
    ACK        follower -> leader   >Q seq                  everything up to seq is synced

A message is ``>H`` + its route bytes (exchange and routing key as shortstrs), ``>I`` + its raw
properties, ``>I`` + its body.
"""

from __future__ import annotations

import json
import struct
from collections import deque
from collections.abc import Callable, Iterable

from ..broker.message import Message

HELLO, RESET, ENQ, END, SETTLE, DELIVERED, PURGE, ACK = range(1, 9)

_LEN = struct.Struct(">IB")
_Q = struct.Struct(">Q")
_QQ = struct.Struct(">QQ")
_QQB = struct.Struct(">QQB")
MAX_FRAME = 600 << 20  # a message body is at most 512 MiB


class ReplicationError(Exception):
    """A frame that cannot be: the link is closed."""


def frame(kind: int, payload: bytes) -> bytes:
    return _LEN.pack(len(payload) + 1, kind) + payload


def hello(vhost: str, queue: str, node: str, epoch: int) -> bytes:
    return frame(HELLO, json.dumps({"vhost": vhost, "queue": queue, "node": node, "epoch": epoch}).encode())


def ack(seq: int) -> bytes:
    return frame(ACK, _Q.pack(seq))


def _message(msg: Message) -> bytes:
    route, props, body = msg.route_bytes, msg.properties_raw, msg.body
    return b"".join((struct.pack(">H", len(route)), route, struct.pack(">I", len(props)), props,
                     struct.pack(">I", len(body)), body))


_ENQ_HEAD = struct.Struct(">IBQQBH")
_I = struct.Struct(">I")


def enq(seq: int, position: int, delivered: bool, msg: Message) -> bytes:
    route, props, body = msg.route_bytes, msg.properties_raw, msg.body
    size = 28 + len(route) + len(props) + len(body)  # kind, seq, position, flag, the three lengths
    return b"".join((_ENQ_HEAD.pack(size, ENQ, seq, position, delivered, len(route)), route,
                     _I.pack(len(props)), props, _I.pack(len(body)), body))


def _positions(kind: int, seq: int, positions: Iterable[int]) -> bytes:
    positions = list(positions)
    return frame(kind, _Q.pack(seq) + struct.pack(f">{len(positions)}Q", *positions))


def decode_message(payload: bytes, pos: int) -> Message:
    (n,) = struct.unpack_from(">H", payload, pos)
    route = bytes(payload[pos + 2:pos + 2 + n])
    pos += 2 + n
    (n,) = struct.unpack_from(">I", payload, pos)
    props = bytes(payload[pos + 4:pos + 4 + n])
    pos += 4 + n
    (n,) = struct.unpack_from(">I", payload, pos)
    body = bytes(payload[pos + 4:pos + 4 + n])
    if pos + 4 + n != len(payload):
        raise ReplicationError("a message frame of the wrong length")
    ex_len = route[0]
    exchange = route[1:1 + ex_len].decode("utf-8", "surrogateescape")
    routing_key = route[2 + ex_len:].decode("utf-8", "surrogateescape")
    return Message(exchange, routing_key, props, body, route)


def _size(kept: Message | bytes) -> int:
    return len(kept) if isinstance(kept, bytes) else len(kept.body) + len(kept.properties_raw) + 32


class FrameReader:
    """Bytes in, ``(kind, payload)`` out (each payload one copy of its octets)."""

    def __init__(self) -> None:
        self.buf = b""
        self.whole = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self.buf + data if self.buf else data
        out = []
        pos = 0
        n = len(buf)
        unpack = _LEN.unpack_from
        while n - pos >= 5:
            size, kind = unpack(buf, pos)
            if size < 1 or size > MAX_FRAME:
                raise ReplicationError(f"a frame of {size} octets")
            end = pos + 4 + size
            if end > n:
                break
            out.append((kind, buf[pos + 5:end]))
            pos = end
        self.buf = buf[pos:] if pos < n else b""
        self.whole = buf[:pos] if pos < n else buf  # the octets of the frames returned
        return out


class ReplicaState:
    """A replicated queue's live messages by position, and which were delivered: what a
    follower keeps (and a new leader starts from). A follower keeps each message as the octets
    it got (decoded only if it comes to lead: ``message``); a leader, as its Message."""

    def __init__(self) -> None:
        self.epoch = 0
        self.seq = 0
        self.live: dict[int, Message | bytes] = {}
        self.bytes = 0  # about the octets of the live messages (kept as they change)
        self.delivered: set[int] = set()
        self._next: ReplicaState | None = None  # a snapshot being received

    def apply(self, kind: int, payload: bytes) -> None:
        """One frame from the leader."""
        if kind == RESET:
            self._next = ReplicaState()
            self._next.epoch, self._next.seq = _QQ.unpack_from(payload, 0)
            return
        if kind == ENQ:
            seq, position, delivered = _QQB.unpack_from(payload, 0)
            target = self._next if self._next is not None else self
            kept = target.live[position] = payload[_QQB.size:]
            target.bytes += len(kept)
            if delivered:
                target.delivered.add(position)
            target.seq = max(target.seq, seq)
            return
        if kind == END:
            if self._next is None:
                raise ReplicationError("END without RESET")
            fresh, self._next = self._next, None
            self.epoch, self.seq = fresh.epoch, fresh.seq
            self.live, self.delivered, self.bytes = fresh.live, fresh.delivered, fresh.bytes
            return
        if self._next is not None:
            raise ReplicationError("a change inside a snapshot")
        (seq,) = _Q.unpack_from(payload, 0)
        count = (len(payload) - 8) // 8
        positions = struct.unpack_from(f">{count}Q", payload, 8)
        if kind in (SETTLE, PURGE):
            for p in positions:
                self.forget(p)
        elif kind == DELIVERED:
            self.delivered.update(p for p in positions if p in self.live)
        else:
            raise ReplicationError(f"unknown frame kind {kind}")
        self.seq = seq

    @property
    def snapshotting(self) -> bool:
        return self._next is not None

    def message(self, position: int) -> Message:
        kept = self.live[position]
        return decode_message(kept, 0) if isinstance(kept, bytes) else kept

    def keep(self, position: int, msg: Message) -> None:
        self.live[position] = msg
        self.bytes += _size(msg)

    def forget(self, position: int) -> bool:
        kept = self.live.pop(position, None)
        if kept is None:
            return False
        self.delivered.discard(position)
        self.bytes -= _size(kept)
        return True

    def snapshot_frames(self, epoch: int) -> list[bytes]:
        """The frames that give a follower this whole state."""
        seq = self.seq
        out = [frame(RESET, _QQ.pack(epoch, seq))]
        delivered = self.delivered
        for p, m in self.live.items():
            if isinstance(m, bytes):
                out.append(frame(ENQ, _QQB.pack(seq, p, p in delivered) + m))
            else:
                out.append(enq(seq, p, p in delivered, m))
        out.append(frame(END, _Q.pack(seq)))
        return out


class LeaderLog:
    """The leader's side of one replicated queue: numbers the changes, streams them to the
    connected followers (``outbox``: frames per follower, for the shell to send), and answers
    when a change is replicated enough to confirm."""

    def __init__(self, state: ReplicaState, epoch: int, me: str, members: list[str], in_sync: Iterable[str],
                 min_isr: int, wake: Callable[[], None] = lambda: None,
                 lease_lost: Callable[[], bool] = lambda: False) -> None:
        self.state = state
        self.epoch = epoch
        self.me = me
        self.members = list(members)
        self.isr = set(in_sync) | {me}
        self.min_isr = min_isr
        self.joining: set[str] = set()  # members added while we lead, not yet in sync (uncounted)
        self.wake = wake  # called when frames or waiters are pending (the shell flushes)
        self.acked: dict[str, int] = {}  # follower -> the last seq it synced
        self.outbox: dict[str, list[bytes]] = {}  # connected followers -> frames to send
        self.settled: list[int] = []  # positions settled since the last frame
        self.marked: list[int] = []  # positions delivered since the last frame
        # (seq, callback, on_fail): confirms waiting for their changes to be replicated
        self.waiters: deque[tuple[int, Callable[[], None], Callable[[], None]]] = deque()
        self.woken = False  # wake() was called and the shell has not flushed yet
        self.fenced = False  # set by the shell: confirm nothing
        self.lease_lost = lease_lost  # our lease may have expired: confirm (and deliver) nothing

    # -- changes ----------------------------------------------------------------------------------

    def _wake(self) -> None:
        if not self.woken:
            self.woken = True
            self.wake()

    def _send(self, data: bytes) -> None:
        for frames in self.outbox.values():
            frames.append(data)

    def _flush_marks(self) -> None:
        state = self.state
        if self.marked:
            state.seq += 1
            self._send(_positions(DELIVERED, state.seq, self.marked))
            self.marked = []
        if self.settled:
            state.seq += 1
            self._send(_positions(SETTLE, state.seq, self.settled))
            self.settled = []

    def enqueued(self, position: int, msg: Message) -> None:
        self._flush_marks()
        state = self.state
        seq = state.seq = state.seq + 1
        state.keep(position, msg)
        if self.outbox:
            data = enq(seq, position, False, msg)
            for frames in self.outbox.values():
                frames.append(data)
            if not self.woken:
                self.woken = True
                self.wake()

    def delivered(self, position: int) -> None:
        if position not in self.state.delivered:
            self.state.delivered.add(position)
            self.marked.append(position)
            self._wake()

    def settle(self, position: int) -> None:
        if self.state.forget(position):
            self.settled.append(position)
            self._wake()

    def purged(self, positions: list[int]) -> None:
        self._flush_marks()
        state = self.state
        for p in positions:
            state.forget(p)
        state.seq += 1
        self._send(_positions(PURGE, state.seq, positions))
        self._wake()

    def flush(self) -> None:
        """End of a turn (the shell flushes): the batched marks go out."""
        self.woken = False
        self._flush_marks()

    # -- followers ---------------------------------------------------------------------------------

    def connect(self, node: str) -> None:
        """A follower connected: it gets a snapshot, then every change."""
        self._flush_marks()
        self.outbox[node] = self.state.snapshot_frames(self.epoch)
        self.acked.setdefault(node, 0)
        self._wake()

    def disconnect(self, node: str) -> None:
        self.outbox.pop(node, None)

    def take(self, node: str) -> list[bytes]:
        frames = self.outbox.get(node)
        if not frames:
            return []
        self.outbox[node] = []
        return frames

    def follower_acked(self, node: str, seq: int) -> None:
        if seq > self.acked.get(node, 0):
            self.acked[node] = seq
            self.release()

    def caught_up(self, node: str) -> bool:
        """Synced everything so far (may join the ISR)."""
        return node in self.outbox and self.acked.get(node, 0) >= self.state.seq and not self.settled \
            and not self.marked

    def lagging(self, node: str) -> bool:
        """An ISR member that has not acked the oldest change a confirm waits for."""
        return bool(self.waiters) and self.acked.get(node, 0) < self.waiters[0][0]

    def set_isr(self, in_sync: Iterable[str]) -> None:
        self.isr = set(in_sync) | {self.me}
        if self.joining & self.isr:
            self._count_members()
        self.release()

    def set_members(self, members: Iterable[str]) -> None:
        """The operator changed the group (grow, shrink). A member added is not counted in the
        majority until it has caught up and joined the ISR (confirms do not stall on its
        snapshot); a member removed is counted no more (the shell takes it out of the ISR)."""
        members = list(members)
        self.joining = (self.joining | (set(members) - set(self.members) - self.isr)) & set(members)
        self.members = members
        self._count_members()
        self.release()

    def _count_members(self) -> None:
        self.joining -= self.isr
        self.min_isr = min_isr(max(1, len(self.members) - len(self.joining)))

    # -- confirms ----------------------------------------------------------------------------------

    def replicated(self, seq: int) -> bool:
        if self.fenced or len(self.isr) < self.min_isr or self.lease_lost():
            return False
        acked = self.acked
        return all(acked.get(n, 0) >= seq for n in self.isr)  # (this node acks its own sync)

    def barrier(self, callback: Callable[[], None], on_fail: Callable[[], None]) -> None:
        """``callback()`` once everything changed so far is replicated enough to confirm;
        ``on_fail()`` if this node stops leading first."""
        self._flush_marks()
        seq = self.state.seq
        if not self.waiters and self.replicated(seq):
            callback()
        else:
            self.waiters.append((seq, callback, on_fail))
            self._wake()

    def release(self) -> None:
        waiters = self.waiters
        while waiters and self.replicated(waiters[0][0]):
            waiters.popleft()[1]()

    def fail_all(self) -> None:
        """This node leads no more: nothing that waited is confirmed by it."""
        waiters, self.waiters = self.waiters, deque()
        for _seq, _callback, on_fail in waiters:
            on_fail()



def min_isr(group_size: int) -> int:
    """A majority of the queue's group."""
    return group_size // 2 + 1


__all__ = ["ACK", "DELIVERED", "END", "ENQ", "FrameReader", "HELLO", "LeaderLog", "PURGE", "RESET",
           "ReplicaState", "ReplicationError", "SETTLE", "ack", "decode_message", "frame", "hello",
           "min_isr"]
