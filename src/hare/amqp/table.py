"""AMQP 0-9-1 field tables and field values, as RabbitMQ encodes them.

RabbitMQ's type letters differ from the 0-9-1 spec's errata in a few places (``s`` is a signed
16-bit int, ``l`` a signed 64-bit int, ``x`` a byte array); clients are written against RabbitMQ,
so hare follows it.

Decoding yields plain Python values; encoding picks the tag from the Python type. Where a decoded
value must go back on the wire with its original tag, hare resends the raw bytes it received
(message properties are never re-encoded on the delivery path).
"""

from __future__ import annotations

import datetime
import decimal
import struct
from typing import Any

from .errors import SyntaxFault

_unpack_b = struct.Struct(">b").unpack_from
_unpack_B = struct.Struct(">B").unpack_from
_unpack_h = struct.Struct(">h").unpack_from
_unpack_H = struct.Struct(">H").unpack_from
_unpack_i = struct.Struct(">i").unpack_from
_unpack_I = struct.Struct(">I").unpack_from
_unpack_q = struct.Struct(">q").unpack_from
_unpack_Q = struct.Struct(">Q").unpack_from
_unpack_f = struct.Struct(">f").unpack_from
_unpack_d = struct.Struct(">d").unpack_from

_pack_B = struct.Struct(">B").pack
_pack_I = struct.Struct(">I").pack
_pack_i = struct.Struct(">i").pack
_pack_q = struct.Struct(">q").pack
_pack_Q = struct.Struct(">Q").pack
_pack_d = struct.Struct(">d").pack
_pack_f = struct.Struct(">f").pack

_UTC = datetime.UTC
_MAX_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z, the last second a datetime can hold


class Float32(float):
    """A float that encodes as a 32-bit ``f`` field (Python floats encode as ``d``)."""

    __slots__ = ()


class Long(int):
    """An int that encodes as a 64-bit ``l`` field whatever its value (small ints encode as ``I``),
    for values RabbitMQ sends as longs (``x-delivery-count``)."""

    __slots__ = ()


def decode_table(buf: bytes | memoryview, offset: int) -> tuple[dict[str, Any], int]:
    """Decode a field table at ``offset``; return the table and the offset after it."""
    if offset + 4 > len(buf):
        raise SyntaxFault("field table length truncated")
    (size,) = _unpack_I(buf, offset)
    offset += 4
    end = offset + size
    if end > len(buf):
        raise SyntaxFault("field table truncated")
    table: dict[str, Any] = {}
    while offset < end:
        klen = buf[offset]
        offset += 1
        key = bytes(buf[offset : offset + klen]).decode("utf-8", "surrogateescape")
        offset += klen
        if offset >= end:
            raise SyntaxFault("field table entry truncated")
        table[key], offset = decode_value(buf, offset, end)
    if offset != end:
        raise SyntaxFault("field table overruns its length")
    return table, offset


def _decode_array(buf: bytes | memoryview, offset: int) -> tuple[list[Any], int]:
    if offset + 4 > len(buf):
        raise SyntaxFault("field array length truncated")
    (size,) = _unpack_I(buf, offset)
    offset += 4
    end = offset + size
    if end > len(buf):
        raise SyntaxFault("field array truncated")
    items = []
    while offset < end:
        value, offset = decode_value(buf, offset, end)
        items.append(value)
    if offset != end:
        raise SyntaxFault("field array overruns its length")
    return items, offset


def decode_value(buf: bytes | memoryview, offset: int, end: int) -> tuple[Any, int]:
    """Decode one tagged field value; ``end`` bounds the enclosing table or array."""
    tag = buf[offset]
    offset += 1
    try:
        if tag == 0x53:  # S long string
            (n,) = _unpack_I(buf, offset)
            offset += 4
            if offset + n > end:
                raise SyntaxFault("long string overruns its table")
            return bytes(buf[offset : offset + n]).decode("utf-8", "surrogateescape"), offset + n
        if tag == 0x49:  # I int32
            return _unpack_i(buf, offset)[0], offset + 4
        if tag == 0x46:  # F table
            return decode_table(buf, offset)
        if tag == 0x74:  # t boolean
            return buf[offset] != 0, offset + 1
        if tag == 0x6C:  # l int64
            return _unpack_q(buf, offset)[0], offset + 8
        if tag == 0x41:  # A array
            return _decode_array(buf, offset)
        if tag == 0x54:  # T timestamp (seconds)
            secs = _unpack_Q(buf, offset)[0]
            if secs > _MAX_TIMESTAMP:  # past datetime's year 9999: RabbitMQ takes it, keep the int
                return secs, offset + 8
            return datetime.datetime.fromtimestamp(secs, _UTC), offset + 8
        if tag == 0x62:  # b int8
            return _unpack_b(buf, offset)[0], offset + 1
        if tag == 0x42:  # B uint8
            return _unpack_B(buf, offset)[0], offset + 1
        if tag == 0x73:  # s int16 (RabbitMQ)
            return _unpack_h(buf, offset)[0], offset + 2
        if tag == 0x75:  # u uint16
            return _unpack_H(buf, offset)[0], offset + 2
        if tag == 0x69:  # i uint32
            return _unpack_I(buf, offset)[0], offset + 4
        if tag == 0x4C:  # L uint64 (spec errata)
            return _unpack_Q(buf, offset)[0], offset + 8
        if tag == 0x66:  # f float32
            return Float32(_unpack_f(buf, offset)[0]), offset + 4
        if tag == 0x64:  # d float64
            return _unpack_d(buf, offset)[0], offset + 8
        if tag == 0x44:  # D decimal: scale octet + int32
            scale = buf[offset]
            (raw,) = _unpack_i(buf, offset + 1)
            return decimal.Decimal(raw).scaleb(-scale), offset + 5
        if tag == 0x56:  # V void
            return None, offset
        if tag == 0x78:  # x byte array
            (n,) = _unpack_I(buf, offset)
            offset += 4
            if offset + n > end:
                raise SyntaxFault("byte array overruns its table")
            return bytes(buf[offset : offset + n]), offset + n
    except (struct.error, IndexError) as exc:
        raise SyntaxFault("field value truncated") from exc
    except RecursionError as exc:  # a table nested a thousand deep: refuse it, do not crash
        raise SyntaxFault("field table nested too deeply") from exc
    raise SyntaxFault(f"unknown field type {chr(tag)!r}")


def encode_table(table: dict[str, Any] | None) -> bytes:
    """Encode a mapping as a field table (with its 4-byte length)."""
    if not table:
        return b"\x00\x00\x00\x00"
    out = bytearray(4)
    for key, value in table.items():
        kb = key.encode("utf-8", "surrogateescape")
        if len(kb) > 255:
            raise ValueError(f"field table key too long: {key[:32]!r}...")
        out.append(len(kb))
        out += kb
        _encode_value(out, value)
    out[0:4] = _pack_I(len(out) - 4)
    return bytes(out)


def _encode_value(out: bytearray, value: Any) -> None:
    if isinstance(value, str):
        b = value.encode("utf-8", "surrogateescape")
        out += b"S"
        out += _pack_I(len(b))
        out += b
    elif isinstance(value, bool):
        out += b"t\x01" if value else b"t\x00"
    elif isinstance(value, int):
        if -(2**31) <= value < 2**31 and type(value) is not Long:
            out += b"I"
            out += _pack_i(value)
        elif -(2**63) <= value < 2**63:
            out += b"l"
            out += _pack_q(value)
        else:
            raise ValueError(f"integer out of range for a field table: {value}")
    elif isinstance(value, Float32):
        out += b"f"
        out += _pack_f(value)
    elif isinstance(value, float):
        out += b"d"
        out += _pack_d(value)
    elif isinstance(value, dict):
        out += b"F"
        out += encode_table(value)
    elif isinstance(value, list | tuple):
        out += b"A"
        start = len(out)
        out += b"\x00\x00\x00\x00"
        for item in value:
            _encode_value(out, item)
        out[start : start + 4] = _pack_I(len(out) - start - 4)
    elif isinstance(value, bytes | bytearray | memoryview):
        out += b"x"
        out += _pack_I(len(value))
        out += value
    elif value is None:
        out += b"V"
    elif isinstance(value, datetime.datetime):
        out += b"T"
        out += _pack_Q(int(value.timestamp()))
    elif isinstance(value, decimal.Decimal):
        sign, digits, exponent = value.as_tuple()
        assert isinstance(exponent, int)
        scale = -exponent if exponent < 0 else 0
        raw = int(value.scaleb(scale))
        if not (0 <= scale <= 255 and -(2**31) <= raw < 2**31):
            raise ValueError(f"decimal out of range for a field table: {value}")
        out += b"D"
        out += _pack_B(scale)
        out += _pack_i(raw)
    else:
        raise ValueError(f"cannot encode {type(value).__name__} in a field table")
