"""Property tests of the basic content-properties codec (hare.amqp.properties).

Pure codec tests: no broker is involved, so they run the same with HARE_TEST_URL set.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hare.amqp.errors import SyntaxFault
from hare.amqp.properties import (
    EMPTY,
    PROPERTY_FLAGS,
    check_headers,
    decode_properties,
    delivery_mode,
    encode_properties,
    user_id,
)
from hare.amqp.spec import BASIC_PROPERTIES
from hare.amqp.table import encode_table

shortstrs = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30).filter(
    lambda s: len(s.encode()) <= 255)
header_values = st.recursive(
    st.one_of(shortstrs, st.booleans(), st.integers(-(2**63), 2**63 - 1), st.binary(max_size=10),
              st.none(), st.floats(allow_nan=False)),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(shortstrs, c, max_size=3)),
    max_leaves=10,
)
BY_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "shortstr": shortstrs,
    "octet": st.integers(0, 255),
    "table": st.dictionaries(shortstrs, header_values, max_size=5),
    "timestamp": st.integers(0, 2**64 - 1),
}
property_dicts = st.fixed_dictionaries(
    {}, optional={name: BY_TYPE[typ] for name, typ in BASIC_PROPERTIES})


def test_flags_follow_the_spec_order() -> None:
    assert [name for name, _ in BASIC_PROPERTIES] == [
        "content_type", "content_encoding", "headers", "delivery_mode", "priority", "correlation_id",
        "reply_to", "expiration", "message_id", "timestamp", "type", "user_id", "app_id",
        "cluster_id"]
    assert PROPERTY_FLAGS["content_type"] == 0x8000
    assert PROPERTY_FLAGS["delivery_mode"] == 0x1000
    assert PROPERTY_FLAGS["user_id"] == 0x0010
    assert PROPERTY_FLAGS["cluster_id"] == 0x0004


def test_encoding_matches_the_wire_format() -> None:
    raw = encode_properties({"content_type": "text/plain", "delivery_mode": 2,
                             "headers": {"a": 1}, "timestamp": 1_600_000_000})
    assert raw == (struct.pack(">H", 0x8000 | 0x2000 | 0x1000 | 0x0040) + b"\x0atext/plain"
                   + encode_table({"a": 1}) + b"\x02" + struct.pack(">Q", 1_600_000_000))
    assert encode_properties({}) == EMPTY
    assert decode_properties(EMPTY) == {}


@given(property_dicts)
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_encode_then_decode_returns_the_same_properties(props: dict[str, Any]) -> None:
    raw = encode_properties(props)
    assert decode_properties(raw) == props
    flags = struct.unpack_from(">H", raw)[0]
    assert flags == sum(PROPERTY_FLAGS[name] for name in props)


@given(property_dicts)
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_fast_readers_agree_with_the_full_decode(props: dict[str, Any]) -> None:
    raw = encode_properties(props)
    full = decode_properties(raw)
    assert delivery_mode(raw) == full.get("delivery_mode", 0)
    assert user_id(raw) == full.get("user_id")


def test_none_means_absent() -> None:
    assert encode_properties({"content_type": None, "priority": 0}) == struct.pack(">H", 0x0800) + b"\x00"


@pytest.mark.parametrize("raw", [
    b"",
    b"\x80",
    b"\x80\x00",  # content-type flagged, no value
    b"\x80\x00\x05abc",  # content-type longer than the data
    b"\x20\x00\x00\x00\x00\x09",  # headers table overruns
    b"\x10\x00",  # delivery-mode flagged, no value
    b"\x00\x40\x00\x00",  # timestamp truncated
    b"\x00\x01",  # continuation flag without the next flag word
    b"\x00\x01\x00",
])
def test_truncated_properties_raise_syntax_fault(raw: bytes) -> None:
    with pytest.raises(SyntaxFault):
        decode_properties(raw)


def test_continuation_flag_words_are_skipped() -> None:
    assert decode_properties(b"\x80\x01\x00\x00\x03abc") == {"content_type": "abc"}


@given(st.binary(max_size=120))
@settings(max_examples=1000)
def test_decode_of_random_bytes_only_raises_syntax_fault(raw: bytes) -> None:
    try:
        props = decode_properties(raw)
    except SyntaxFault:
        return
    assert set(props) <= set(PROPERTY_FLAGS)


def _decodes(raw: bytes) -> bool:
    try:
        decode_properties(raw)
    except SyntaxFault:
        return False
    return True


def _checks(raw: bytes) -> bool:
    try:
        check_headers(raw)
    except SyntaxFault:
        return False
    return True


@given(property_dicts, st.dictionaries(shortstrs, header_values, max_size=5), st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_check_headers_agrees_with_the_full_decode(props: dict[str, Any], headers: dict[str, Any],
                                                   data: st.DataObject) -> None:
    """The publish-time scan of properties with headers refuses exactly what does not decode,
    truncated or with octets changed anywhere (the flags kept: headers present, no continuation)."""
    raw = bytearray(encode_properties({**props, "headers": headers}))
    assert _checks(bytes(raw))
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(2, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(2, len(raw)))
    assert _checks(bytes(raw[:cut])) == _decodes(bytes(raw[:cut]))
