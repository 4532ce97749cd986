"""Property tests of the generated method codec (hare.amqp.spec): every method round-trips with
arbitrary field values, and every truncation of a method payload is refused.

Pure codec tests: no broker is involved, so they run the same with HARE_TEST_URL set.
"""

from __future__ import annotations

import inspect
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hare.amqp import spec
from hare.amqp.errors import SyntaxFault

ALL_METHODS = sorted(spec.METHODS.values(), key=lambda c: c.INDEX)


def _int_width(cls: type[spec.Method], field: str) -> int:
    """The field's width in bits (octet 8, short 16, long 32, longlong/timestamp 64), found by
    encoding the largest value of each width: the generated code has no type table to read."""
    width = 0
    for bits in (8, 16, 32, 64):
        m = cls()
        setattr(m, field, 2**bits - 1)
        try:
            m.encode()
        except struct.error:
            break
        width = bits
    assert width, f"{cls.NAME}.{field}"
    return width


def field_types(cls: type[spec.Method]) -> dict[str, str]:
    params = inspect.signature(cls.__init__).parameters
    types = {}
    for name in cls.FIELDS:
        ann = str(params[name].annotation)
        if ann == "int":
            types[name] = {8: "octet", 16: "short", 32: "long", 64: "longlong"}[_int_width(cls, name)]
        elif ann == "str":
            types[name] = "shortstr"
        elif ann == "bytes":
            types[name] = "longstr"
        elif ann == "bool":
            types[name] = "bit"
        elif ann.startswith("dict"):
            types[name] = "table"
        else:  # pragma: no cover - a new field type needs a strategy here
            raise AssertionError(f"{cls.NAME}.{name}: {ann}")
    return types


TYPES = {cls: field_types(cls) for cls in ALL_METHODS}

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
table_values = st.recursive(
    st.one_of(_text, st.booleans(), st.integers(-(2**63), 2**63 - 1), st.binary(max_size=10), st.none()),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(_text, c, max_size=3)),
    max_leaves=8,
)
STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "octet": st.integers(0, 255),
    "short": st.integers(0, 2**16 - 1),
    "long": st.integers(0, 2**32 - 1),
    "longlong": st.integers(0, 2**64 - 1),
    "shortstr": st.one_of(_text.filter(lambda s: len(s.encode()) <= 255), st.just("x" * 255)),
    "longstr": st.binary(max_size=300),
    "bit": st.booleans(),
    # None and {} both encode as an empty table; {} is what decodes
    "table": st.one_of(st.just({}), st.dictionaries(_text.filter(lambda s: len(s.encode()) <= 255),
                                                    table_values, min_size=1, max_size=4)),
}


def methods_of(cls: type[spec.Method]) -> st.SearchStrategy[spec.Method]:
    return st.builds(cls, **{name: STRATEGIES[typ] for name, typ in TYPES[cls].items()})


any_method = st.one_of([methods_of(cls) for cls in ALL_METHODS])


def test_field_types_are_inferred_for_known_methods() -> None:
    assert TYPES[spec.BasicPublish] == {"ticket": "short", "exchange": "shortstr",
                                        "routing_key": "shortstr", "mandatory": "bit",
                                        "immediate": "bit"}
    assert TYPES[spec.ConnectionTune] == {"channel_max": "short", "frame_max": "long",
                                          "heartbeat": "short"}
    assert TYPES[spec.BasicDeliver]["delivery_tag"] == "longlong"
    assert TYPES[spec.ConnectionStart]["version_major"] == "octet"
    assert TYPES[spec.QueueDeclare]["arguments"] == "table"
    assert TYPES[spec.ConnectionSecure]["challenge"] == "longstr"


def test_method_table_is_complete_and_consistent() -> None:
    # connection 14, channel 6, access 2, exchange 8, queue 10, basic 18, tx 6, confirm 2
    assert len(spec.METHODS) == 66
    for idx, cls in spec.METHODS.items():
        assert idx == cls.INDEX == (cls.CLASS_ID << 16) | cls.METHOD_ID
        assert cls().encode()[:4] == struct.pack(">HH", cls.CLASS_ID, cls.METHOD_ID)


@pytest.mark.parametrize("cls", ALL_METHODS, ids=lambda c: c.NAME)
def test_default_instance_round_trips(cls: type[spec.Method]) -> None:
    m = cls()
    raw = m.encode()
    decoded = cls.decode(raw, 4)
    for name, typ in TYPES[cls].items():
        expected = getattr(m, name)
        if typ == "table" and expected is None:
            expected = {}
        assert getattr(decoded, name) == expected, name


@given(any_method)
@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
def test_encode_then_decode_returns_the_same_method(m: spec.Method) -> None:
    raw = m.encode()
    assert struct.unpack_from(">I", raw)[0] == m.INDEX
    decoded = spec.METHODS[m.INDEX].decode(raw, 4)
    assert decoded == m
    assert decoded.encode() == raw


@given(any_method, st.binary(max_size=6))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_decode_reads_at_an_offset_inside_a_larger_buffer(m: spec.Method, prefix: bytes) -> None:
    raw = prefix + m.encode()
    assert type(m).decode(memoryview(raw), len(prefix) + 4) == m


def test_bits_pack_into_one_octet_in_field_order() -> None:
    raw = spec.QueueDeclare(queue="q", passive=True, durable=False, exclusive=True, auto_delete=False,
                            nowait=True).encode()
    assert raw == b"\x00\x32\x00\x0a\x00\x00\x01q\x15\x00\x00\x00\x00"
    m = spec.QueueDeclare.decode(raw, 4)
    assert (m.passive, m.durable, m.exclusive, m.auto_delete, m.nowait) == (True, False, True, False, True)


def test_shortstr_longer_than_255_bytes_cannot_be_encoded() -> None:
    with pytest.raises(ValueError):
        spec.QueueDeclare(queue="q" * 256).encode()


# The connection maps struct.error and IndexError from a method decode to 502 SYNTAX_ERROR
# (Connection._method), so those are acceptable "refused" outcomes besides SyntaxFault.
REFUSED = (SyntaxFault, struct.error, IndexError)


@given(any_method, st.data())
@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
def test_truncated_method_payloads_are_refused(m: spec.Method, data: st.DataObject) -> None:
    payload = m.encode()[4:]
    if not payload:
        return  # a method without arguments has nothing to truncate
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(REFUSED):
        type(m).decode(payload[:cut], 0)


@pytest.mark.parametrize("cls", [c for c in ALL_METHODS if TYPES[c]], ids=lambda c: c.NAME)
def test_every_truncation_of_a_full_method_is_refused(cls: type[spec.Method]) -> None:
    values = {"octet": 7, "short": 300, "long": 70000, "longlong": 2**40, "shortstr": "abc",
              "longstr": b"xyz", "bit": True, "table": {"k": "v"}}
    m = cls(**{name: values[typ] for name, typ in TYPES[cls].items()})
    payload = m.encode()[4:]
    assert cls.decode(payload, 0) == m
    for cut in range(len(payload)):
        with pytest.raises(REFUSED):
            cls.decode(payload[:cut], 0)


@given(st.sampled_from(ALL_METHODS), st.binary(max_size=80))
@settings(max_examples=1500)
def test_decode_of_random_bytes_never_raises_anything_else(cls: type[spec.Method], raw: bytes) -> None:
    try:
        cls.decode(raw, 0)
    except REFUSED:
        pass
