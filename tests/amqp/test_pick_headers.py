"""``table.pick_table`` / ``properties.pick_headers``: the headers exchange's one pass over a
message's headers, decoding only the entries its bindings compare. They must agree with the full
decode on every table the full decode accepts, and raise nothing but SyntaxFault otherwise.

Pure codec tests: no broker is involved, so they run the same with HARE_TEST_URL set.
"""

from __future__ import annotations

import datetime
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hare.amqp.errors import SyntaxFault
from hare.amqp.properties import decode_properties, encode_properties, pick_headers
from hare.amqp.table import Float32, Picker, decode_table, encode_table, pick_table

keys = st.sampled_from(["a", "b", "x-a", "", "k" * 255, "é", "key-1", "key-2"])
scalars = st.one_of(st.text(st.characters(blacklist_categories=("Cs",)), max_size=20), st.booleans(),
                    st.integers(-(2**63), 2**63 - 1), st.binary(max_size=20), st.none(),
                    st.floats(allow_nan=False), st.floats(width=32, allow_nan=False).map(Float32),
                    st.integers(0, 2**32).map(lambda s: datetime.datetime.fromtimestamp(s, datetime.UTC)))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                   st.dictionaries(keys, c, max_size=3)),
                      max_leaves=12)
tables = st.dictionaries(keys, values, max_size=8)
wanted_names = st.sets(keys, max_size=5)


def typed(value: Any) -> Any:
    """``value`` with its leaves tagged by type, so True != 1 and Float32(1) != 1.0."""
    if isinstance(value, dict):
        return ("dict", {k: typed(v) for k, v in value.items()})
    if isinstance(value, list):
        return ("list", [typed(v) for v in value])
    return (type(value).__name__, value)


def as_wanted(names: set[str]) -> dict[bytes, str]:
    return {n.encode("utf-8", "surrogateescape"): n for n in names}


def subset(table: dict[str, Any], names: set[str]) -> dict[str, Any]:
    return {k: v for k, v in table.items() if k in names}


def entry(key: bytes, value: bytes) -> bytes:
    return bytes((len(key),)) + key + value


def raw_table(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return struct.pack(">I", len(body)) + body


@given(tables, wanted_names)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_pick_agrees_with_the_full_decode(table: dict[str, Any], names: set[str]) -> None:
    raw = b"pre" + encode_table(table)
    got = pick_table(raw, 3, as_wanted(names))
    assert typed(got) == typed(subset(decode_table(raw, 3, None)[0], names))
    assert typed(pick_table(memoryview(raw), 3, as_wanted(names))) == typed(got)


@given(tables, wanted_names, st.booleans(), st.booleans(), st.booleans())
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_pick_headers_skips_the_other_properties(table: dict[str, Any], names: set[str],
                                                  content_type: bool, encoding: bool,
                                                  after: bool) -> None:
    props: dict[str, Any] = {"headers": table}
    if content_type:
        props["content_type"] = "application/json"
    if encoding:
        props["content_encoding"] = "gzip"
    if after:
        props.update(delivery_mode=2, priority=3, correlation_id="c", timestamp=5, app_id="x")
    raw = encode_properties(props)
    want = subset(decode_properties(raw).get("headers") or {}, names)
    assert typed(pick_headers(raw, as_wanted(names))) == typed(want)


def test_no_headers_and_continuation_flags() -> None:
    assert pick_headers(encode_properties({"content_type": "t"}), {b"a": "a"}) == {}
    assert pick_headers(b"\x00\x00", {b"a": "a"}) == {}
    # a continuation flag word (none defined for basic): the full decode is used
    table = encode_table({"a": 1, "b": 2})
    raw = b"\x20\x01\x00\x00" + table
    assert pick_headers(raw, {b"a": "a"}) == {"a": 1}


def test_a_key_given_twice_keeps_its_last_value_as_the_decode_does() -> None:
    raw = raw_table(entry(b"a", b"I\x00\x00\x00\x01"), entry(b"b", b"t\x01"),
                    entry(b"a", b"S\x00\x00\x00\x02hi"))
    assert decode_table(raw, 0, None)[0]["a"] == "hi"
    assert pick_table(raw, 0, {b"a": "a"}) == {"a": "hi"}


def test_wide_tables_decode_only_what_is_wanted() -> None:
    table = {f"h{i}": {"nested": [i, "x" * 10]} if i % 3 else i for i in range(10_000)}
    raw = encode_table(table)
    assert pick_table(raw, 0, {b"h9999": "h9999", b"h3": "h3", b"h4": "h4", b"nope": "nope"}) == {
        "h9999": 9999, "h3": 3, "h4": {"nested": [4, "xxxxxxxxxx"]}}


def _picks(raw: bytes, wanted: dict[bytes, str]) -> dict[str, Any] | None:
    try:
        return pick_table(raw, 0, wanted)
    except SyntaxFault:
        return None


@given(st.binary(max_size=64), wanted_names)
def test_random_bytes_only_raise_syntax_fault(raw: bytes, names: set[str]) -> None:
    _picks(raw, as_wanted(names))


@given(tables, wanted_names, st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_tables_only_raise_syntax_fault_and_agree_when_they_decode(
        table: dict[str, Any], names: set[str], data: st.DataObject) -> None:
    raw = bytearray(encode_table(table))
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = bytes(raw[: data.draw(st.integers(0, len(raw)))])
    got = _picks(cut, as_wanted(names))
    try:
        decoded = decode_table(cut, 0, None)[0]
    except SyntaxFault:
        return  # (pick may accept what the full decode refuses inside a skipped value: the
        # publish-time check_headers refused such a message before it was routed)
    assert got is not None
    assert typed(got) == typed(subset(decoded, names))


def test_a_wide_table_searched_first_is_walked_only_when_a_wanted_key_may_be_in_it() -> None:
    """Past 512 octets and with at most 4 wanted keys, pick_table first searches the table for
    each key's octets: absent everywhere, nothing is walked; present anywhere (as a key of a
    nested table, inside a value, or as a top-level key), the walk decides."""
    wide = {f"h{i}": f"v{i}" for i in range(200)}
    picker = Picker({b"want": "want", b"also": "also"})
    assert len(encode_table(wide)) > 512
    assert pick_table(encode_table(wide), 0, picker) == {}
    nested = encode_table({**wide, "inner": {"want": 1}, "s": "\x04want"})
    assert pick_table(nested, 0, picker) == {}
    top = encode_table({**wide, "inner": {"want": 1}, "want": 2, "zz": 3})
    assert pick_table(top, 0, picker) == {"want": 2}
    # with more wanted keys than the search is worth, the walk alone gives the same answers
    many = Picker({f"w{i}".encode(): f"w{i}" for i in range(10)} | {b"want": "want"})
    assert pick_table(top, 0, many) == {"want": 2}
    assert pick_table(encode_table(wide), 0, many) == {}


wide_keys = [f"key-{i}" for i in range(40)]


@given(st.dictionaries(st.sampled_from(wide_keys), scalars, min_size=30, max_size=40),
       st.sets(st.sampled_from([*wide_keys, "key-40", "key-41", "a"]), max_size=7))
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
def test_pick_of_wide_tables_agrees_with_the_full_decode(table: dict[str, Any],
                                                         names: set[str]) -> None:
    raw = encode_table(table)
    assert typed(pick_table(raw, 0, Picker(as_wanted(names)))) == typed(
        subset(decode_table(raw, 0, None)[0], names))
