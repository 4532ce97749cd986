"""The on-disk record format of a queue's log: segment files of length + CRC framed records.

A segment file is ``MAGIC`` followed by records; a record is::

    length:u32  crc32(payload):u32  payload

and a message payload is::

    position:u64  enqueued_ms:u64  flags:u8  props_len:u32  exchange:shortstr  routing_key:shortstr
    properties  body

All integers are little-endian. ``position`` is the message's place in its queue (see
``queue_log.py``); ``enqueued_ms`` is when the queue took it (for TTLs that survive a restart).
The exchange and routing key are stored as the two shortstrs the publish carried, so a message
read back is delivered with the same bytes as one that never left memory.

A torn or corrupt record (a crash mid-write, a bad disk) fails its length or CRC check and ends
the scan of that segment: nothing from it or after it in the file is served.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

MAGIC = b"HARESEG1"
HEADER_SIZE = len(MAGIC)

RECORD = struct.Struct("<II")  # payload length, crc32 of the payload
RECORD_SIZE = RECORD.size
MESSAGE = struct.Struct("<QQBI")  # position, enqueued_ms, flags, properties length
MESSAGE_SIZE = MESSAGE.size
MAX_RECORD = 1 << 31  # no payload is this large (max message size is far smaller)

FLAG_PERSISTENT = 1
VIEW_BODY = 1 << 20  # decode_message leaves a body this large a view of the payload

_crc32 = zlib.crc32
_pack_record = RECORD.pack
_pack_message = MESSAGE.pack
_unpack_record = RECORD.unpack_from
_unpack_message = MESSAGE.unpack_from


def encode_message(out: bytearray, position: int, enqueued_ms: int, flags: int, route_bytes: bytes,
                   properties: bytes, body: bytes, checksum: bool = True) -> int:
    """Append one framed message record to ``out``; return its size in bytes. (``checksum``
    False writes 0 for the CRC: for logs that are never recovered, a transient queue's.)"""
    head = _pack_message(position, enqueued_ms, flags, len(properties)) + route_bytes + properties
    size = len(head) + len(body)
    out += _pack_record(size, _crc32(body, _crc32(head)) if checksum else 0)
    out += head
    out += body
    return RECORD_SIZE + size


def record_head(position: int, enqueued_ms: int, flags: int, route_bytes: bytes, properties: bytes) -> bytes:
    """A message record's payload up to its body (a large record's head: see ``frame_record``)."""
    return _pack_message(position, enqueued_ms, flags, len(properties)) + route_bytes + properties


def frame_record(head: bytes, body: bytes | bytearray | memoryview, checksum: bool = True) -> bytes:
    """The record header (length, CRC) of the record ``head + body``: with ``record_head``, the
    same bytes as ``encode_message`` without copying the body (computed in the store's thread)."""
    return _pack_record(len(head) + len(body), _crc32(body, _crc32(head)) if checksum else 0)


def decode_message(payload: bytes | memoryview) -> tuple[int, int, int, bytes, str, str, bytes, bytes]:
    """(position, enqueued_ms, flags, route_bytes, exchange, routing_key, properties, body)."""
    position, enqueued_ms, flags, props_len = _unpack_message(payload, 0)
    o = MESSAGE_SIZE
    ex_end = o + 1 + payload[o]
    rk_end = ex_end + 1 + payload[ex_end]
    route = bytes(payload[o:rk_end])
    exchange = route[1 : ex_end - o].decode("utf-8", "surrogateescape")
    routing_key = route[ex_end - o + 1 :].decode("utf-8", "surrogateescape")
    props_end = rk_end + props_len
    body = payload[props_end:]
    if type(body) is memoryview and len(body) < VIEW_BODY:
        body = bytes(body)  # (a large body stays a view of what was read: no copy of it)
    return (position, enqueued_ms, flags, route, exchange, routing_key, bytes(payload[rk_end:props_end]),
            body)  # type: ignore[return-value]


def message_position(payload: bytes | memoryview, offset: int = 0) -> tuple[int, int]:
    """(position, flags) of the message record whose payload starts at ``offset``."""
    position, _ms, flags, _plen = _unpack_message(payload, offset)
    return position, flags


def message_info(payload: bytes | memoryview, offset: int, end: int) -> tuple[int, int, int]:
    """(position, flags, body size) of the message record whose payload is ``[offset, end)``."""
    position, _ms, flags, props_len = _unpack_message(payload, offset)
    o = offset + MESSAGE_SIZE
    o += 1 + payload[o]
    o += 1 + payload[o]
    return position, flags, end - o - props_len


class CorruptRecord(Exception):
    """A record failed its length or CRC check (``offset`` is where it starts in the file)."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"{reason} at offset {offset}")
        self.offset = offset
        self.reason = reason


def scan(data: bytes | memoryview, start: int = HEADER_SIZE, end: int | None = None,
         verify: bool = True) -> Iterator[tuple[int, int, int]]:
    """Yield (record offset, payload start, payload end) of each record in ``data[start:end]``.

    Stops cleanly at ``end``; raises CorruptRecord at a record that is cut short (a torn tail)
    or whose CRC does not match (with ``verify``)."""
    if end is None:
        end = len(data)
    o = start
    while o < end:
        if end - o < RECORD_SIZE:
            raise CorruptRecord(o, "truncated record header")
        size, crc = _unpack_record(data, o)
        p = o + RECORD_SIZE
        if size < MESSAGE_SIZE + 2 or size > MAX_RECORD or p + size > end:
            raise CorruptRecord(o, "truncated record" if p + size > end else "bad record length")
        if verify and _crc32(data[p : p + size]) != crc:
            raise CorruptRecord(o, "checksum mismatch")
        yield o, p, p + size
        o = p + size


def segment_name(segment_id: int) -> str:
    return f"{segment_id:010d}.seg"
