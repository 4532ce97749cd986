"""Frame building: the bytes hare writes. (Frame parsing lives in the connection's receive loop,
which is the per-message hot path and avoids building generic frame objects.)

A frame is ``type:octet channel:short size:long payload frame-end(0xCE)``.
"""

from __future__ import annotations

import struct

from .spec import Method

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_END_BYTE = b"\xce"
FRAME_OVERHEAD = 8  # 7-byte header + frame-end octet

HEADER = struct.Struct(">BHI")
pack_header = HEADER.pack
unpack_header = HEADER.unpack_from

HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"

_pack_content_header = struct.Struct(">BHIHHQ").pack  # frame header + class, weight, body size


def method_frame(channel: int, method: Method) -> bytes:
    payload = method.encode()
    return pack_header(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END_BYTE


def raw_method_frame(channel: int, payload: bytes) -> bytes:
    return pack_header(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END_BYTE


def header_frame(channel: int, body_size: int, properties: bytes, class_id: int = 60) -> bytes:
    """A content header frame; ``properties`` is the encoded flags + property list."""
    return (
        _pack_content_header(FRAME_HEADER, channel, 12 + len(properties), class_id, 0, body_size)
        + properties
        + FRAME_END_BYTE
    )


BIG_BODY = 1 << 20  # body_frames hands out views of a body this large (bytes otherwise)


def body_frames(out: list[bytes], channel: int, body: bytes, frame_max: int) -> None:
    """Append the body frames for ``body`` to ``out``, split so none exceeds ``frame_max``."""
    size = len(body)
    if not size:
        return
    chunk = frame_max - FRAME_OVERHEAD
    if size <= chunk:
        out.append(pack_header(FRAME_BODY, channel, size))
        out.append(body)
        out.append(FRAME_END_BYTE)
        return
    view = memoryview(body)
    big = size >= BIG_BODY  # a large body's frames are views of it: not copied here
    for start in range(0, size, chunk):
        part = view[start : start + chunk]
        out.append(pack_header(FRAME_BODY, channel, len(part)))
        out.append(part if big else bytes(part))  # type: ignore[arg-type]
        out.append(FRAME_END_BYTE)
