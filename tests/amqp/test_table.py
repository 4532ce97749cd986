"""Property tests of the field-table codec (hare.amqp.table), RabbitMQ's type letters included.

Pure codec tests: no broker is involved, so they run the same with HARE_TEST_URL set.
"""

from __future__ import annotations

import datetime
import decimal
import math
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hare.amqp.errors import SyntaxFault
from hare.amqp.table import METHOD_MAX_DEPTH, Float32, check_table, decode_table, encode_table

UTC = datetime.UTC

# -- strategies ----------------------------------------------------------------------------------

# text without lone surrogates (those have no UTF-8 encoding; hare decodes bad UTF-8 with
# surrogateescape, which the key/bytes tests below cover separately)
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
keys = texts.filter(lambda k: len(k.encode()) <= 255)
int32s = st.integers(-(2**31), 2**31 - 1)
int64s = st.integers(-(2**63), 2**63 - 1)
doubles = st.floats(allow_nan=False)
float32s = st.floats(width=32, allow_nan=False).map(Float32)
decimals = st.builds(lambda raw, scale: decimal.Decimal(raw).scaleb(-scale),
                     int32s, st.integers(0, 255))
# whole seconds in datetime's range (T is unsigned: no time before the epoch)
timestamps = st.integers(0, 253402300799).map(lambda s: datetime.datetime.fromtimestamp(s, UTC))

scalars = st.one_of(texts, st.booleans(), int32s, int64s, doubles, float32s, decimals, timestamps,
                    st.binary(max_size=40), st.none())
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(keys, children, max_size=5)),
    max_leaves=30,
)
tables = st.dictionaries(keys, values, max_size=8)


def typed(value: Any) -> Any:
    """``value`` with every leaf tagged by its type, so True != 1 and Float32(1) != 1.0."""
    if isinstance(value, dict):
        return ("dict", {k: typed(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return ("list", [typed(v) for v in value])
    if isinstance(value, float) and math.isnan(value):
        return (type(value).__name__, "nan")
    if isinstance(value, datetime.datetime):
        return ("datetime", value.timestamp(), value.utcoffset())
    return (type(value).__name__, value)


# -- round trip ------------------------------------------------------------------------------------


@given(tables)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_encode_then_decode_returns_the_same_table(table: dict[str, Any]) -> None:
    raw = encode_table(table)
    assert struct.unpack_from(">I", raw)[0] == len(raw) - 4
    decoded, end = decode_table(raw, 0)
    assert end == len(raw)
    assert typed(decoded) == typed(table)


@given(st.binary(max_size=8), tables)
def test_decode_starts_at_the_offset_and_returns_the_end(prefix: bytes, table: dict[str, Any]) -> None:
    raw = prefix + encode_table(table) + b"trailing"
    decoded, end = decode_table(raw, len(prefix))
    assert typed(decoded) == typed(table)
    assert raw[end:] == b"trailing"


def test_encoder_picks_rabbitmq_type_tags() -> None:
    cases = [
        ("s", "S\x00\x00\x00\x01s"),
        (True, "t\x01"),
        (False, "t\x00"),
        (2**31 - 1, "I\x7f\xff\xff\xff"),
        (-(2**31), "I\x80\x00\x00\x00"),
        (2**31, "l\x00\x00\x00\x00\x80\x00\x00\x00"),
        (-(2**31) - 1, "l\xff\xff\xff\xff\x7f\xff\xff\xff"),
        (1.5, "d?\xf8\x00\x00\x00\x00\x00\x00"),
        (Float32(1.5), "f?\xc0\x00\x00"),
        (decimal.Decimal("1.25"), "D\x02\x00\x00\x00\x7d"),
        (datetime.datetime(2020, 1, 1, tzinfo=UTC), "T\x00\x00\x00\x00\x5e\x0b\xe1\x00"),
        ({}, "F\x00\x00\x00\x00"),
        ([1], "A\x00\x00\x00\x05I\x00\x00\x00\x01"),
        (b"\x00\xff", "x\x00\x00\x00\x02\x00\xff"),
        (None, "V"),
    ]
    for value, wire in cases:
        entry = b"\x01k" + wire.encode("latin-1")
        assert encode_table({"k": value}) == struct.pack(">I", len(entry)) + entry, value


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, decimal.Decimal("1E-256"),
                                   decimal.Decimal(2**31), object()])
def test_encoder_rejects_values_it_cannot_represent(value: Any) -> None:
    with pytest.raises(ValueError):
        encode_table({"k": value})


def test_encoder_rejects_keys_longer_than_a_shortstr() -> None:
    encode_table({"k" * 255: 1})
    with pytest.raises(ValueError):
        encode_table({"k" * 256: 1})


# -- hand-built encodings of every RabbitMQ type tag ----------------------------------------------


def _entry(tag: bytes, payload: bytes, expected: Any) -> tuple[bytes, Any]:
    return tag + payload, expected


def _fixed(tag: str, fmt: str, ints: st.SearchStrategy[int]) -> st.SearchStrategy[tuple[bytes, Any]]:
    return ints.map(lambda v: _entry(tag.encode(), struct.pack(fmt, v), v))


def _longstr(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _table_bytes(entries: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(bytes((len(k),)) + k + v for k, v in entries)
    return _longstr(body)


wire_scalars = st.one_of(
    st.integers(0, 255).map(lambda b: _entry(b"t", bytes((b,)), b != 0)),
    _fixed("b", ">b", st.integers(-128, 127)),
    _fixed("B", ">B", st.integers(0, 255)),
    _fixed("s", ">h", st.integers(-(2**15), 2**15 - 1)),
    _fixed("u", ">H", st.integers(0, 2**16 - 1)),
    _fixed("I", ">i", int32s),
    _fixed("i", ">I", st.integers(0, 2**32 - 1)),
    _fixed("l", ">q", int64s),
    _fixed("L", ">Q", st.integers(0, 2**64 - 1)),
    st.floats(width=32, allow_nan=False).map(lambda f: _entry(b"f", struct.pack(">f", f), Float32(f))),
    doubles.map(lambda f: _entry(b"d", struct.pack(">d", f), f)),
    st.tuples(st.integers(0, 255), int32s).map(
        lambda sr: _entry(b"D", struct.pack(">Bi", *sr),
                          decimal.Decimal(sr[1]) / decimal.Decimal(10) ** sr[0])),
    texts.map(lambda s: _entry(b"S", _longstr(s.encode()), s)),
    st.integers(0, 253402300799).map(
        lambda t: _entry(b"T", struct.pack(">Q", t), datetime.datetime.fromtimestamp(t, UTC))),
    st.just(_entry(b"V", b"", None)),
    st.binary(max_size=40).map(lambda b: _entry(b"x", _longstr(b), b)),
)


def _wire_array(items: list[tuple[bytes, Any]]) -> tuple[bytes, Any]:
    return b"A" + _longstr(b"".join(w for w, _ in items)), [e for _, e in items]


def _wire_table(entries: dict[str, tuple[bytes, Any]]) -> tuple[bytes, Any]:
    raw = _table_bytes([(k.encode(), w) for k, (w, _) in entries.items()])
    return b"F" + raw, {k: e for k, (_, e) in entries.items()}


wire_values = st.recursive(
    wire_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4).map(_wire_array),
                               st.dictionaries(keys, children, max_size=4).map(_wire_table)),
    max_leaves=25,
)


def _exact(value: Any) -> Any:
    """Like typed(), but Decimal compared by value (1.0 and 1.00 are one number)."""
    if isinstance(value, dict):
        return ("dict", {k: _exact(v) for k, v in value.items()})
    if isinstance(value, list):
        return ("list", [_exact(v) for v in value])
    if isinstance(value, decimal.Decimal):
        return ("Decimal", value.normalize() if value else decimal.Decimal(0))
    return typed(value)


@given(st.dictionaries(keys, wire_values, max_size=8))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_decode_every_rabbitmq_type_tag(entries: dict[str, tuple[bytes, Any]]) -> None:
    raw, expected = _wire_table(entries)
    raw = raw[1:]  # drop the F tag: a top-level table is just length + entries
    decoded, end = decode_table(raw, 0)
    assert end == len(raw)
    assert _exact(decoded) == _exact(expected)


def test_decode_rabbitmq_signed_and_unsigned_letters() -> None:
    """RabbitMQ's letters, not the 0-9-1 errata: s is signed 16-bit, l signed 64-bit, x bytes."""
    raw = _table_bytes([(b"s", b"s\xff\xfe"), (b"u", b"u\xff\xfe"), (b"I", b"I\xff\xff\xff\xff"),
                        (b"i", b"i\xff\xff\xff\xff"), (b"l", b"l" + b"\xff" * 8),
                        (b"L", b"L" + b"\xff" * 8), (b"b", b"b\xff"), (b"B", b"B\xff"),
                        (b"x", b"x\x00\x00\x00\x01\xff"), (b"D", b"D\x02\xff\xff\xff\x85")])
    table, _ = decode_table(raw, 0)
    assert table == {"s": -2, "u": 65534, "I": -1, "i": 2**32 - 1, "l": -1, "L": 2**64 - 1,
                     "b": -1, "B": 255, "x": b"\xff", "D": decimal.Decimal("-1.23")}
    assert isinstance(table["x"], bytes)


def test_decode_keeps_invalid_utf8_reversibly() -> None:
    raw = _table_bytes([(b"\xff", b"S\x00\x00\x00\x01\xfe")])
    table, _ = decode_table(raw, 0)
    assert table == {"\udcff": "\udcfe"}
    assert encode_table(table) == raw


# -- malformed input -----------------------------------------------------------------------------


def _nested(depth: int) -> bytes:
    raw = b"\x00\x00\x00\x00"
    for _ in range(depth):
        raw = _longstr(b"\x00F" + raw)
    return raw


@pytest.mark.parametrize("raw", [
    b"",
    b"\x00\x00\x00",
    b"\x00\x00\x00\x01",  # length beyond the buffer
    _table_bytes([(b"k", b"Z")]),  # unknown tag
    _table_bytes([(b"k", b"")]),  # key without a value
    _table_bytes([(b"k", b"I\x00\x00")]),  # value truncated
    _longstr(b"\x05ab"),  # key longer than the table
    _table_bytes([(b"k", b"S\x00\x00\x00\x09abc")]),  # long string overruns the table
    _table_bytes([(b"k", b"x\x00\x00\x00\x09abc")]),  # byte array overruns the table
    _table_bytes([(b"k", b"A\x00\x00\x00\x02I\x00")]),  # array item overruns the array
    _table_bytes([(b"k", b"F\x00\x00\x00\x02\x00I")]),  # inner table entry truncated
    _nested(3000),  # nesting deeper than Python's recursion limit
], ids=lambda r: r[:12].hex())
def test_malformed_tables_raise_syntax_fault(raw: bytes) -> None:
    try:
        decode_table(raw, 0)
    except SyntaxFault:
        return
    pytest.fail("decoded a malformed table")  # pragma: no cover


@pytest.mark.parametrize("secs", [253402300800, 2**63, 2**64 - 1])
def test_timestamp_past_year_9999_decodes_as_its_seconds(secs: int) -> None:
    """RabbitMQ takes any 64-bit timestamp; a datetime cannot hold these, so hare keeps the int."""
    raw = _table_bytes([(b"k", b"T" + struct.pack(">Q", secs)), (b"last", b"T" + struct.pack(">Q", 0))])
    table, _ = decode_table(raw, 0)
    assert table == {"k": secs, "last": datetime.datetime(1970, 1, 1, tzinfo=UTC)}


def test_deep_but_sane_nesting_decodes() -> None:
    table, _ = decode_table(_nested(50), 0)
    for _ in range(50):
        table = table[""]
    assert table == {}


@given(st.binary(max_size=200))
@example(b"\x00\x00\x00\x0b\x01kT\xff\xff\xff\xff\xff\xff\xff\xff")
@example(_nested(2000))
@settings(max_examples=1000)
def test_decode_of_random_bytes_only_raises_syntax_fault(raw: bytes) -> None:
    try:
        table, end = decode_table(raw, 0)
    except SyntaxFault:
        return
    assert 4 <= end <= len(raw)
    assert isinstance(table, dict)


@given(tables, st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_decode_of_mutated_encodings_only_raises_syntax_fault(table: dict[str, Any],
                                                              data: st.DataObject) -> None:
    raw = bytearray(encode_table(table))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        decode_table(bytes(raw[:cut]), 0)
    except SyntaxFault:
        pass


# -- nesting: message headers at any depth, method tables bounded; the publish-time check ----------


def _parses(raw: bytes) -> int | None:
    """Where the table ends if it decodes (headers: no depth limit), else None."""
    try:
        return decode_table(raw, 0, None)[1]
    except SyntaxFault:
        return None


def _checks(raw: bytes) -> int | None:
    try:
        return check_table(raw, 0)
    except SyntaxFault:
        return None


def test_message_headers_decode_and_encode_at_any_depth() -> None:
    raw = _nested(100_000)  # far past Python's recursion limit: the codec does not recurse
    table, end = decode_table(raw, 0, None)
    assert end == len(raw)
    assert check_table(raw, 0) == len(raw)
    assert encode_table(table) == raw
    depth = 0
    while table:
        table = table[""]
        depth += 1
    assert depth == 100_000


def test_deep_arrays_decode_and_encode() -> None:
    value: Any = [1]
    for _ in range(5000):
        value = [value, "x"]
    raw = encode_table({"a": value})
    assert encode_table(decode_table(raw, 0, None)[0]) == raw
    assert check_table(raw, 0) == len(raw)


def test_method_tables_are_refused_past_the_method_depth() -> None:
    decode_table(_nested(METHOD_MAX_DEPTH - 1), 0)  # METHOD_MAX_DEPTH tables in all
    with pytest.raises(SyntaxFault, match="nested too deeply"):
        decode_table(_nested(METHOD_MAX_DEPTH), 0)


@pytest.mark.parametrize("raw", [
    _table_bytes([(b"k", b"Z")]),
    _table_bytes([(b"k", b"A\x00\x00\x00\x01Z")]),
    _table_bytes([(b"k", b"F" + _table_bytes([(b"j", b"A\x00\x00\x00\x03t\x01Z")]))]),
    _table_bytes([(b"k", b"I\x00\x00")]),
    _table_bytes([(b"k", b"S\x00\x00\x00\x09abc")]),
    _table_bytes([(b"k", b"F\x00\x00\x00\x09\x01jI\x00\x00\x00\x01")]),
    _longstr(b"\x05ab"),
    b"\x00\x00\x00\x01",
    b"\x00\x00",
], ids=lambda r: r[:12].hex())
def test_check_table_refuses_what_rabbitmq_cannot_parse(raw: bytes) -> None:
    with pytest.raises(SyntaxFault):
        check_table(raw, 0)


@given(st.binary(max_size=200))
@example(_nested(2000))
@settings(max_examples=1000)
def test_check_table_agrees_with_decode_on_random_bytes(raw: bytes) -> None:
    assert _checks(raw) == _parses(raw)


@given(tables, st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_check_table_agrees_with_decode_on_mutated_encodings(table: dict[str, Any],
                                                             data: st.DataObject) -> None:
    raw = bytearray(encode_table(table))
    assert check_table(bytes(raw), 0) == len(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    assert _checks(bytes(raw[:cut])) == _parses(bytes(raw[:cut]))
