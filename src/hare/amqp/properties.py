"""Basic content properties: ``flags:short`` then each present property in spec order.

hare keeps the raw property bytes of a message and re-sends them on delivery; these functions
decode them only where a feature needs a property (routing on headers, persistence, user-id).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from .errors import SyntaxFault
from .spec import BASIC_PROPERTIES
from .table import Picker, check_table, decode_table, encode_table, pick_table

_unpack_H = struct.Struct(">H").unpack_from
_unpack_I = struct.Struct(">I").unpack_from
_unpack_Q = struct.Struct(">Q").unpack_from
_pack_H = struct.Struct(">H").pack
_pack_Q = struct.Struct(">Q").pack

# flag bit for each property: the first property is bit 15
PROPERTY_FLAGS = {name: 1 << (15 - i) for i, (name, _) in enumerate(BASIC_PROPERTIES)}
FLAG_HEADERS = PROPERTY_FLAGS["headers"]
FLAG_DELIVERY_MODE = PROPERTY_FLAGS["delivery_mode"]
FLAG_PRIORITY = PROPERTY_FLAGS["priority"]
FLAG_USER_ID = PROPERTY_FLAGS["user_id"]
FLAG_EXPIRATION = PROPERTY_FLAGS["expiration"]
FLAG_REPLY_TO = PROPERTY_FLAGS["reply_to"]

EMPTY = b"\x00\x00"


def decode_properties(raw: bytes | memoryview) -> dict[str, Any]:
    """Decode flags + property list into a dict holding only the present properties."""
    if len(raw) < 2:
        raise SyntaxFault("content header properties truncated")
    (flags,) = _unpack_H(raw, 0)
    o = 2
    if flags & 1:  # continuation flag words: none defined for basic, skip them
        while True:
            if o + 2 > len(raw):
                raise SyntaxFault("content header property flags truncated")
            (more,) = _unpack_H(raw, o)
            o += 2
            if not more & 1:
                break
    props: dict[str, Any] = {}
    try:
        for i, (name, typ) in enumerate(BASIC_PROPERTIES):
            if not flags & (1 << (15 - i)):
                continue
            if typ == "shortstr":
                n = raw[o]
                if o + 1 + n > len(raw):
                    raise SyntaxFault(f"property {name} truncated")
                props[name] = bytes(raw[o + 1 : o + 1 + n]).decode("utf-8", "surrogateescape")
                o += 1 + n
            elif typ == "octet":
                props[name] = raw[o]
                o += 1
            elif typ == "table":
                props[name], o = decode_table(raw, o, None)  # message headers: any depth
            elif typ == "timestamp":
                (props[name],) = _unpack_Q(raw, o)
                o += 8
            else:  # pragma: no cover - the spec has no other property types
                raise SyntaxFault(f"unsupported property type {typ}")
    except (IndexError, struct.error) as exc:
        raise SyntaxFault("content header properties truncated") from exc
    return props


def check_headers(raw: bytes) -> None:
    """Check that properties with headers parse as RabbitMQ parses them, without decoding them:
    the headers table (``table.check_table``) and the lengths of the other properties; raise
    SyntaxFault if not. RabbitMQ decodes the properties of every publish, and its channel
    crashes on ones it cannot parse; hare runs this scan at publish, only for messages that have
    headers (the ones features decode: headers exchange, CC/BCC, x-delay). Octets after the
    last property are left alone (``decode_properties`` ignores them)."""
    if raw[1] & 1:  # continuation flag words (none defined for basic): decode it all, rare
        decode_properties(raw)
        return
    o = 2
    flags = raw[0]
    try:
        if flags & 0x80:  # content_type
            o += 1 + raw[o]
        if flags & 0x40:  # content_encoding
            o += 1 + raw[o]
        o = check_table(raw, o)
        flags = (flags & 0x1F) << 8 | raw[1]  # the properties after the headers
        if flags:
            for bit, size in _AFTER_HEADERS:
                if flags & bit:
                    o += size if size else 1 + raw[o]
            if o > len(raw):
                raise IndexError
    except IndexError as exc:
        raise SyntaxFault("content header properties truncated") from exc


# the flag bit and size (0: a short string) of each property after the headers
_AFTER_HEADERS = tuple((1 << (15 - i), {"octet": 1, "timestamp": 8, "shortstr": 0}[typ])
                       for i, (_, typ) in enumerate(BASIC_PROPERTIES) if i > 2)


def encode_properties(props: dict[str, Any]) -> bytes:
    """Encode a property dict (names as in BASIC_PROPERTIES; None means absent)."""
    flags = 0
    parts: list[bytes] = []
    for i, (name, typ) in enumerate(BASIC_PROPERTIES):
        value = props.get(name)
        if value is None:
            continue
        flags |= 1 << (15 - i)
        if typ == "shortstr":
            b = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
            parts.append(bytes((len(b),)) + b)
        elif typ == "octet":
            parts.append(bytes((value,)))
        elif typ == "table":
            parts.append(encode_table(value))
        elif typ == "timestamp":
            parts.append(_pack_Q(int(value)))
    return _pack_H(flags) + b"".join(parts)


def _skip_to(raw: bytes, flags: int, stop_flag: int) -> int:
    """Offset of the property with flag ``stop_flag`` (present), skipping those before it."""
    o = 2
    i = 0
    bit = 1 << 15
    while bit != stop_flag:
        if flags & bit:
            typ = BASIC_PROPERTIES[i][1]
            if typ == "shortstr":
                o += 1 + raw[o]
            elif typ == "octet":
                o += 1
            elif typ == "table":
                o += 4 + _unpack_I(raw, o)[0]
            else:
                o += 8
        bit >>= 1
        i += 1
    return o


def delivery_mode(raw: bytes) -> int:
    """The delivery-mode property (0 when absent) without decoding the rest."""
    (flags,) = _unpack_H(raw, 0)
    if not flags & FLAG_DELIVERY_MODE:
        return 0
    return raw[_skip_to(raw, flags, FLAG_DELIVERY_MODE)]


def priority(raw: bytes) -> int:
    """The priority property (0 when absent) without decoding the rest."""
    (flags,) = _unpack_H(raw, 0)
    if not flags & FLAG_PRIORITY:
        return 0
    return raw[_skip_to(raw, flags, FLAG_PRIORITY)]


def user_id(raw: bytes) -> str | None:
    """The user-id property, or None, without decoding the rest."""
    (flags,) = _unpack_H(raw, 0)
    if not flags & FLAG_USER_ID:
        return None
    o = _skip_to(raw, flags, FLAG_USER_ID)
    return raw[o + 1 : o + 1 + raw[o]].decode("utf-8", "surrogateescape")


def expiration(raw: bytes) -> bytes | None:
    """The expiration property's raw bytes, or None, without decoding the rest."""
    (flags,) = _unpack_H(raw, 0)
    if not flags & FLAG_EXPIRATION:
        return None
    o = _skip_to(raw, flags, FLAG_EXPIRATION)
    return bytes(raw[o + 1 : o + 1 + raw[o]])


def reply_to(raw: bytes) -> str | None:
    """The reply-to property, or None, without decoding the rest."""
    (flags,) = _unpack_H(raw, 0)
    if not flags & FLAG_REPLY_TO:
        return None
    o = _skip_to(raw, flags, FLAG_REPLY_TO)
    return raw[o + 1 : o + 1 + raw[o]].decode("utf-8", "surrogateescape")


def with_reply_to(raw: bytes, value: str) -> bytes:
    """The properties with another reply-to (present in ``raw``); the other octets unchanged."""
    (flags,) = _unpack_H(raw, 0)
    o = _skip_to(raw, flags, FLAG_REPLY_TO)
    v = value.encode("utf-8", "surrogateescape")
    return raw[:o] + bytes((len(v),)) + v + raw[o + 1 + raw[o] :]


def pick_headers(raw: bytes | memoryview, wanted: Mapping[bytes, str] | Picker) -> dict[str, Any]:
    """The headers among ``wanted`` (raw key -> name, see ``table.pick_table``) of properties
    ``raw``, without decoding the other headers or properties; {} when there are no headers."""
    if len(raw) < 2:
        raise SyntaxFault("content header properties truncated")
    flags = raw[0]
    if not flags & 0x20:  # no headers (flag bit 13)
        return {}
    if raw[1] & 1:  # continuation flag words (none defined for basic): decode it all, rare
        headers = decode_properties(raw).get("headers") or {}
        names = set((wanted.wanted if isinstance(wanted, Picker) else wanted).values())
        return {k: v for k, v in headers.items() if k in names}
    o = 2
    try:
        if flags & 0x80:  # content_type
            o += 1 + raw[o]
        if flags & 0x40:  # content_encoding
            o += 1 + raw[o]
    except IndexError as exc:
        raise SyntaxFault("content header properties truncated") from exc
    return pick_table(raw, o, wanted)
