"""The frames of the forwarding links (`forwarding`), sans-IO: their kinds, encoders, parsers.

One link per pair of nodes, from the node the publisher is connected to (A) to the node that
holds the queue (B), on B's node-to-node listener. Frames (as `replication`'s):

    F_HELLO      A -> B   JSON {"node"}
    F_PUBLISH    A -> B   >QB link sequence number, hops; >H vhost, >H queue; the message
    F_CONFIRMED  B -> A   >QB every publish up to this number is confirmed (or, failed: 1, nacked)
    F_CONSUME    A -> B   >QI feed id, credit; >H vhost, >H queue: feed A's consumers of it
    F_CANCEL     A -> B   >Q feed id: A's consumers are gone (what they hold stays theirs)
    F_SETTLE     A -> B   >QB feed id, how (0 ack, 1 requeue, 2 reject); >Q queue seq numbers
    F_DELIVER    B -> A   >QQB feed id, queue seq, redelivered; the message
    F_CANCELLED  B -> A   >Q feed id: B feeds it no more (the queue is gone, or B leads it no more)
    F_PING       A -> B   (empty) A waits for B and has heard nothing for a while
    F_PONG       B -> A   (empty) the answer
    F_ASK        A -> B   >QBQ ask id, what (queue.GET, GET_NO_ACK, COUNT, PURGE), feed id (GET);
                          >H vhost, >H queue
    F_ANSWER     B -> A   >QBII ask id, held here (0: B holds the queue's messages no more),
                          message count, consumer count; a got message: >QB queue seq,
                          redelivered; the message
"""

from __future__ import annotations

import struct

from ..broker.message import Message
from .replication import decode_message, frame

(F_HELLO, F_PUBLISH, F_CONFIRMED, F_CONSUME, F_CANCEL, F_SETTLE, F_DELIVER, F_CANCELLED, F_PING, F_PONG,
 F_ASK, F_ANSWER) = range(20, 32)
ACKED, REQUEUED, REJECTED = 0, 1, 2
CREDIT = 2000  # messages a feed may hold unsettled
MAX_HOPS = 2
OUT_HIGH = 16 << 20  # octets queued on a link past which its publishers are slowed down
PING_AFTER = 1.0  # seconds of silence on a link with something to wait for before a ping
LINK_SILENCE = 2.5  # ... and before the link is cut
QB = struct.Struct(">QB")
ASK_HEAD = struct.Struct(">QBQ")
ANSWER_HEAD = struct.Struct(">QBII")


def pack_name(s: str) -> bytes:
    b = s.encode("utf-8", "surrogateescape")
    return struct.pack(">H", len(b)) + b


def message_parts(msg: Message) -> tuple[bytes, ...]:
    """A message's parts on the link (decode_message reads them)."""
    route, props, body = msg.route_bytes, msg.properties_raw, msg.body
    return (struct.pack(">H", len(route)), route, struct.pack(">I", len(props)), props,
            struct.pack(">I", len(body)), body)


def publish_frame(seq: int, hops: int, vhost: str, queue: str, msg: Message) -> bytes:
    return frame(F_PUBLISH, b"".join((QB.pack(seq, hops), pack_name(vhost), pack_name(queue),
                                      *message_parts(msg))))


def unpack_names(payload: bytes, pos: int) -> tuple[str, str, int]:
    names = []
    for _ in range(2):
        (n,) = struct.unpack_from(">H", payload, pos)
        names.append(payload[pos + 2:pos + 2 + n].decode("utf-8", "surrogateescape"))
        pos += 2 + n
    return names[0], names[1], pos


def parse_publish(payload: bytes) -> tuple[int, int, str, str, Message]:
    seq, hops = QB.unpack_from(payload, 0)
    vhost, queue, pos = unpack_names(payload, QB.size)
    return seq, hops, vhost, queue, decode_message(payload, pos)


QQB = struct.Struct(">QQB")


def deliver_frame(feed: int, seq: int, redelivered: bool, msg: Message) -> bytes:
    return frame(F_DELIVER, b"".join((QQB.pack(feed, seq, redelivered), *message_parts(msg))))


def settle_frame(feed: int, how: int, seqs: list[int]) -> bytes:
    return frame(F_SETTLE, QB.pack(feed, how) + struct.pack(f">{len(seqs)}Q", *seqs))
