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
from collections.abc import Iterator, Mapping
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


# Nesting: RabbitMQ parses field tables nested to any depth, and so does hare's codec, which is
# iterative (an explicit stack, never Python recursion) in decode_table, check_table and
# encode_table. Message headers are decoded without a limit. Method arguments (queue, exchange,
# binding and consumer arguments, client properties) are kept, compared and printed by code that
# recurses, so their tables are refused past METHOD_MAX_DEPTH (a deliberate difference, see
# docs/compatibility.md).
METHOD_MAX_DEPTH = 400

_TAG_F, _TAG_A, _TAG_S, _TAG_X = 0x46, 0x41, 0x53, 0x78

# check_table: the octets after each tag (fixed-size types), or how the value is laid out
_STRING, _TABLE, _ARRAY, _UNKNOWN = -1, -2, -3, -4
_SIZES = [_UNKNOWN] * 256
for _tag, _size in ((b"b", 1), (b"B", 1), (b"t", 1), (b"s", 2), (b"u", 2), (b"I", 4), (b"i", 4),
                    (b"f", 4), (b"l", 8), (b"L", 8), (b"d", 8), (b"T", 8), (b"D", 5), (b"V", 0),
                    (b"S", _STRING), (b"x", _STRING), (b"F", _TABLE), (b"A", _ARRAY)):
    _SIZES[_tag[0]] = _size
del _tag, _size


def decode_table(buf: bytes | memoryview, offset: int,
                 max_depth: int | None = METHOD_MAX_DEPTH) -> tuple[dict[str, Any], int]:
    """Decode a field table at ``offset``; return the table and the offset after it. Tables
    nested deeper than ``max_depth`` (None: no limit) are refused with SyntaxFault."""
    return _decode_container(buf, offset, True, max_depth)  # type: ignore[return-value]


def _container_end(buf: bytes | memoryview, offset: int, kind: str) -> int:
    """The end of the table or array whose 4-octet length is at ``offset``."""
    if offset + 4 > len(buf):
        raise SyntaxFault(f"field {kind} length truncated")
    end = offset + 4 + _unpack_I(buf, offset)[0]
    if end > len(buf):
        raise SyntaxFault(f"field {kind} truncated")
    return end


def _decode_container(buf: bytes | memoryview, offset: int, is_table: bool,
                      max_depth: int | None) -> tuple[dict[str, Any] | list[Any], int]:
    """A table (or array) and everything nested in it, with a stack of the open containers."""
    end = _container_end(buf, offset, "table" if is_table else "array")
    offset += 4
    root: dict[str, Any] | list[Any] = {} if is_table else []
    cur: Any = root
    stack: list[tuple[Any, int, bool]] = []  # the enclosing containers: (container, end, is_table)
    key = ""
    while True:
        if offset >= end:
            if offset != end:
                raise SyntaxFault(f"field {'table' if is_table else 'array'} overruns its length")
            if not stack:
                return root, offset
            cur, end, is_table = stack.pop()
            continue
        if is_table:
            klen = buf[offset]
            offset += 1
            key = bytes(buf[offset : offset + klen]).decode("utf-8", "surrogateescape")
            offset += klen
            if offset >= end:
                raise SyntaxFault("field table entry truncated")
        tag = buf[offset]
        if tag == _TAG_F or tag == _TAG_A:
            child_table = tag == _TAG_F
            child_end = _container_end(buf, offset + 1, "table" if child_table else "array")
            if child_end > end:
                raise SyntaxFault(f"field {'table' if is_table else 'array'} overruns its length")
            if max_depth is not None and len(stack) + 1 >= max_depth:
                raise SyntaxFault("field table nested too deeply")
            child: Any = {} if child_table else []
            if is_table:
                cur[key] = child
            else:
                cur.append(child)
            stack.append((cur, end, is_table))
            cur, end, is_table = child, child_end, child_table
            offset += 5
            continue
        value, offset = _decode_scalar(buf, offset + 1, end, tag)
        if is_table:
            cur[key] = value
        else:
            cur.append(value)


def decode_value(buf: bytes | memoryview, offset: int, end: int) -> tuple[Any, int]:
    """Decode one tagged field value; ``end`` bounds the enclosing table or array."""
    tag = buf[offset]
    if tag == _TAG_F or tag == _TAG_A:
        value, after = _decode_container(buf, offset + 1, tag == _TAG_F, None)
        if after > end:
            raise SyntaxFault("field table overruns its length")
        return value, after
    return _decode_scalar(buf, offset + 1, end, tag)


def _decode_scalar(buf: bytes | memoryview, offset: int, end: int, tag: int) -> tuple[Any, int]:
    """A value of any type but table and array; ``offset`` is after its tag."""
    try:
        if tag == 0x53:  # S long string
            (n,) = _unpack_I(buf, offset)
            offset += 4
            if offset + n > end:
                raise SyntaxFault("long string overruns its table")
            return bytes(buf[offset : offset + n]).decode("utf-8", "surrogateescape"), offset + n
        if tag == 0x49:  # I int32
            return _unpack_i(buf, offset)[0], offset + 4
        if tag == 0x74:  # t boolean
            return buf[offset] != 0, offset + 1
        if tag == 0x6C:  # l int64
            return _unpack_q(buf, offset)[0], offset + 8
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
    raise SyntaxFault(f"unknown field type {chr(tag)!r}")


def check_table(buf: bytes | memoryview, offset: int) -> int:
    """Check that the field table at ``offset`` parses as RabbitMQ's rabbit_binary_parser parses
    it (known type tags, every length within its table or array, at any depth) without building
    its values; return the offset after it. Raises SyntaxFault otherwise.

    This runs on the publish of every message that has headers, so it is lean: each table or
    array must end exactly at its length (an entry, string or inner container that runs past it
    ends it elsewhere) and reading past the buffer raises; no other bound is checked."""
    sizes = _SIZES
    unpack = _unpack_I
    is_table = True
    stack: list[tuple[int, bool]] = []  # the enclosing containers: (end, is_table)
    try:
        end = offset + 4 + unpack(buf, offset)[0]
        if end > len(buf):
            raise SyntaxFault("field table truncated")
        offset += 4
        while True:
            while offset < end:
                if is_table:
                    offset += 1 + buf[offset]  # the key
                size = sizes[buf[offset]]
                if size >= 0:  # fixed size
                    offset += 1 + size
                elif size == -1:  # _STRING
                    offset += 5 + unpack(buf, offset + 1)[0]
                elif size == -4:  # _UNKNOWN
                    raise SyntaxFault(f"unknown field type {chr(buf[offset])!r}")
                else:  # a table or an array: scan its entries, then go on with ours
                    stack.append((end, is_table))
                    end = offset + 5 + unpack(buf, offset + 1)[0]
                    is_table = size == -2  # _TABLE
                    offset += 5
            if offset != end:
                raise SyntaxFault("field value overruns its table")
            if not stack:
                return offset
            end, is_table = stack.pop()
    except (IndexError, struct.error) as exc:
        raise SyntaxFault("field value truncated") from exc


def encode_table(table: dict[str, Any] | None) -> bytes:
    """Encode a mapping as a field table (with its 4-byte length), nested to any depth."""
    if not table:
        return b"\x00\x00\x00\x00"
    out = bytearray(4)
    # the containers being written: (their remaining items, where their length goes, is a table)
    stack: list[tuple[Iterator[Any], int, bool]] = [(iter(table.items()), 0, True)]
    while stack:
        items, start, is_table = stack[-1]
        for item in items:
            if is_table:
                key, value = item
                kb = key.encode("utf-8", "surrogateescape")
                if len(kb) > 255:
                    raise ValueError(f"field table key too long: {key[:32]!r}...")
                out.append(len(kb))
                out += kb
            else:
                value = item
            if isinstance(value, dict):
                out += b"F\x00\x00\x00\x00"
                stack.append((iter(value.items()), len(out) - 4, True))
                break
            if isinstance(value, list | tuple):
                out += b"A\x00\x00\x00\x00"
                stack.append((iter(value), len(out) - 4, False))
                break
            _encode_value(out, value)
        else:
            stack.pop()
            out[start : start + 4] = _pack_I(len(out) - start - 4)
    return bytes(out)


def _encode_value(out: bytearray, value: Any) -> None:
    """Append a value of any type but table and array (encode_table writes those)."""
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


class Picker:
    """The header names a headers exchange compares, prepared for ``pick_table``: raw key ->
    name, each key as it appears on the wire (its length octet, then its octets) to search for,
    and which key lengths occur."""

    __slots__ = ("wanted", "patterns", "lengths")

    def __init__(self, wanted: Mapping[bytes, str]) -> None:
        self.wanted = dict(wanted)
        self.patterns = tuple(bytes((len(k),)) + k for k in self.wanted if len(k) < 256)
        lengths = bytearray(256)
        for k in self.wanted:
            if len(k) < 256:
                lengths[len(k)] = 1
        self.lengths = bytes(lengths)


# pick_table: a table at least _PRESCAN octets long is first searched for its wanted keys, when
# there are at most _PRESCAN_KEYS of them (each search costs about a twentieth of a walk); one
# that holds none of them, anywhere, is not walked
_PRESCAN = 512
_PRESCAN_KEYS = 4


def pick_table(buf: bytes | memoryview, offset: int,
               wanted: Mapping[bytes, str] | Picker) -> dict[str, Any]:
    """The entries of the field table at ``offset`` whose raw keys are in ``wanted``, decoded and
    named ``wanted[key]``; every other entry is stepped over by its length, never decoded (a
    nested table or array as a whole), and its key is sliced only when a wanted key has its
    length. A key given twice keeps its last value, as decode_table does. For the headers
    exchange: at most one pass over wide headers, decoding only what its bindings compare; none
    when the table holds none of the wanted keys' octets. Raises SyntaxFault on a table that
    does not parse where it is read (a table is checked in full at publish, ``check_table``)."""
    if isinstance(buf, memoryview):
        buf = bytes(buf)
    picker = wanted if isinstance(wanted, Picker) else Picker(wanted)
    get = picker.wanted.get
    lengths = picker.lengths
    sizes = _SIZES
    unpack = _unpack_I
    found: dict[str, Any] = {}
    try:
        end = offset + 4 + unpack(buf, offset)[0]
        if end > len(buf):
            raise SyntaxFault("field table truncated")
        offset += 4
        if end - offset >= _PRESCAN and len(picker.patterns) <= _PRESCAN_KEYS:
            find = buf.find
            for pattern in picker.patterns:
                if find(pattern, offset, end) >= 0:
                    break
            else:
                return found
        while offset < end:
            klen = buf[offset]
            value_at = offset + 1 + klen  # after the key
            name = get(buf[offset + 1 : value_at]) if lengths[klen] else None
            if name is None:
                size = sizes[buf[value_at]]
                if size >= 0:  # fixed size
                    offset = value_at + 1 + size
                elif size == _UNKNOWN:
                    raise SyntaxFault(f"unknown field type {chr(buf[value_at])!r}")
                else:  # a string, byte array, table or array: a 4-octet length, stepped over
                    offset = value_at + 5 + unpack(buf, value_at + 1)[0]
            else:
                if value_at >= end:
                    raise SyntaxFault("field table entry truncated")
                found[name], offset = decode_value(buf, value_at, end)
        if offset != end:
            raise SyntaxFault("field value overruns its table")
    except (IndexError, struct.error) as exc:
        raise SyntaxFault("field value truncated") from exc
    return found
