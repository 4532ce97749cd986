"""Routing: direct, fanout, topic and headers matching and the default exchange, as RabbitMQ 3.10."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import ChannelClosedByBroker, UnroutableError
from support import deleted_after, drain, temp_queue, unique_name


@pytest.fixture
def xchannel(connection: BlockingConnection) -> Iterator[tuple[BlockingChannel, str]]:
    """A channel and a fresh exchange name, deleted afterwards."""
    with deleted_after(connection, "exchange") as names:
        names.append(unique_name("test-rx"))
        yield connection.channel(), names[0]


def routed(ch: BlockingChannel, exchange: str, queue: str, routing_key: str = "",
           headers: dict | None = None) -> bool:
    """Publish one message; say whether it reached ``queue`` (exactly once)."""
    ch.basic_publish(exchange, routing_key, b"probe", pika.BasicProperties(headers=headers))
    got = drain(ch, queue)
    assert len(got) <= 1, got
    return bool(got)


# -- direct and fanout ---------------------------------------------------------------------------------


def test_direct_routes_on_exact_key_only(xchannel: tuple[BlockingChannel, str]) -> None:
    ch, x = xchannel
    ch.exchange_declare(x, "direct")
    q1, q2 = temp_queue(ch), temp_queue(ch)
    ch.queue_bind(q1, x, "red")
    ch.queue_bind(q2, x, "red")
    ch.queue_bind(q2, x, "green")
    ch.basic_publish(x, "red", b"r")
    ch.basic_publish(x, "green", b"g")
    ch.basic_publish(x, "Red", b"case")
    ch.basic_publish(x, "red.x", b"longer")
    assert drain(ch, q1) == [b"r"]
    assert drain(ch, q2) == [b"r", b"g"]


def test_same_binding_twice_is_one_binding(xchannel: tuple[BlockingChannel, str]) -> None:
    ch, x = xchannel
    ch.exchange_declare(x, "direct")
    q = temp_queue(ch)
    ch.queue_bind(q, x, "k")
    ch.queue_bind(q, x, "k")
    ch.basic_publish(x, "k", b"once")
    assert drain(ch, q) == [b"once"]
    ch.queue_unbind(q, x, "k")  # one unbind removes it
    ch.basic_publish(x, "k", b"gone")
    assert drain(ch, q) == []


def test_fanout_ignores_routing_key(xchannel: tuple[BlockingChannel, str]) -> None:
    ch, x = xchannel
    ch.exchange_declare(x, "fanout")
    qs = [temp_queue(ch) for _ in range(3)]
    for i, q in enumerate(qs):
        ch.queue_bind(q, x, f"key-{i}")
    ch.basic_publish(x, "whatever", b"all")
    assert [drain(ch, q) for q in qs] == [[b"all"]] * 3


def test_unroutable_mandatory_message_is_returned(xchannel: tuple[BlockingChannel, str]) -> None:
    ch, x = xchannel
    ch.exchange_declare(x, "direct")
    ch.confirm_delivery()
    with pytest.raises(UnroutableError) as info:
        ch.basic_publish(x, "nobody", b"back", mandatory=True)
    returned = info.value.messages[0]
    assert returned.method.reply_code == 312
    assert returned.method.reply_text == "NO_ROUTE"
    assert returned.method.exchange == x
    assert returned.method.routing_key == "nobody"
    assert returned.body == b"back"


# -- topic -----------------------------------------------------------------------------------------------

TOPIC_CASES = [
    # (binding key, routing key, matches)
    ("a.b.c", "a.b.c", True),
    ("a.b.c", "a.b", False),
    ("a.b.c", "a.b.c.d", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.c", False),
    ("a.*.c", "a.b.b.c", False),
    ("*", "a", True),
    ("*", "", False),
    ("*", "a.b", False),
    ("*.*", "a.b", True),
    ("*.*", ".", True),
    ("#", "", True),
    ("#", "a", True),
    ("#", "a.b.c", True),
    ("a.#", "a", True),  # '#' matches zero words
    ("a.#", "a.b.c", True),
    ("a.#", "b.a", False),
    ("#.a", "a", True),
    ("#.a", "x.y.a", True),
    ("#.a", "a.x", False),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.x.y", False),
    ("#.#", "a.b", True),
    ("#.#", "", True),
    ("#.*", "", False),
    ("#.*", "a", True),
    ("*.#", "a.b.c", True),
    ("a.*.#", "a", False),
    ("a.*.#", "a.b", True),
    ("", "", True),
    ("", "a", False),
    ("a", "", False),
    ("a..b", "a..b", True),  # empty words are words
    ("a.*.b", "a..b", True),
    ("a.b", "a..b", False),
    ("a.#.b", "a..b", True),
    ("a.", "a.", True),
    ("a.*", "a.", True),
    ("a.*", "a", False),
    (".a", ".a", True),
    ("*.a", ".a", True),
    ("#", ".", True),
    ("a.b", "A.B", False),
    ("a.#", "a.", True),
    ("x.*.y.#", "x.1.y", True),
    ("x.*.y.#", "x.1.y.2.3", True),
    ("x.*.y.#", "x.y", False),
    ("*.*.*", "a.b.c", True),
    ("*.*.*", "a.b", False),
    ("#.b.#", "b", True),
    ("#.b.#", "a.b.c", True),
    ("#.b.#", "a.c", False),
    ("a.*", "a.*", True),
    ("a.b", "a.*", False),  # a literal '*' in a routing key is only a word
    ("a.#", "a.#", True),
]


def test_topic_table(xchannel: tuple[BlockingChannel, str]) -> None:
    ch, x = xchannel
    ch.exchange_declare(x, "topic")
    failures = []
    for binding, key, want in TOPIC_CASES:
        q = temp_queue(ch)
        ch.queue_bind(q, x, binding)
        got = routed(ch, x, q, key)
        if got != want:
            failures.append((binding, key, want, got))
        ch.queue_delete(q)
    assert failures == []


def test_topic_overlapping_bindings_deliver_once(xchannel: tuple[BlockingChannel, str]) -> None:
    ch, x = xchannel
    ch.exchange_declare(x, "topic")
    q = temp_queue(ch)
    for binding in ("a.b", "a.*", "a.#", "#", "*.b", "#.b"):
        ch.queue_bind(q, x, binding)
    ch.basic_publish(x, "a.b", b"one")
    assert drain(ch, q) == [b"one"]


def test_topic_many_bindings_route_exactly(xchannel: tuple[BlockingChannel, str]) -> None:
    ch, x = xchannel
    ch.exchange_declare(x, "topic")
    q_even, q_odd, q_star = temp_queue(ch), temp_queue(ch), temp_queue(ch)
    for i in range(200):
        ch.queue_bind(q_even if i % 2 == 0 else q_odd, x, f"s.{i}.#")
    ch.queue_bind(q_star, x, "s.*")
    for i in (0, 1, 7, 150, 199, 200):
        ch.basic_publish(x, f"s.{i}.x", f"{i}".encode())
    ch.basic_publish(x, "s.42", b"bare")  # '#' matches zero words; '*' one
    assert drain(ch, q_even) == [b"0", b"150", b"bare"]
    assert drain(ch, q_odd) == [b"1", b"7", b"199"]
    assert drain(ch, q_star) == [b"bare"]


def test_topic_unbind_keeps_other_bindings(xchannel: tuple[BlockingChannel, str]) -> None:
    ch, x = xchannel
    ch.exchange_declare(x, "topic")
    q1, q2 = temp_queue(ch), temp_queue(ch)
    ch.queue_bind(q1, x, "a.*.c")
    ch.queue_bind(q2, x, "a.*.c")
    ch.queue_bind(q1, x, "a.#")
    ch.queue_unbind(q1, x, "a.*.c")
    ch.basic_publish(x, "a.b.c", b"m")
    assert drain(ch, q1) == [b"m"]  # still via a.#
    assert drain(ch, q2) == [b"m"]
    ch.queue_unbind(q1, x, "a.#")
    ch.basic_publish(x, "a.b.c", b"n")
    assert drain(ch, q1) == []
    assert drain(ch, q2) == [b"n"]


# -- headers -----------------------------------------------------------------------------------------------

HEADER_CASES = [
    # (binding arguments, message headers, matches)
    ({"x-match": "all", "a": 1, "b": "two"}, {"a": 1, "b": "two"}, True),
    ({"x-match": "all", "a": 1, "b": "two"}, {"a": 1, "b": "two", "extra": True}, True),
    ({"x-match": "all", "a": 1, "b": "two"}, {"a": 1}, False),
    ({"x-match": "all", "a": 1, "b": "two"}, {"a": 1, "b": "three"}, False),
    ({"x-match": "all", "a": 1, "b": "two"}, None, False),
    ({"x-match": "any", "a": 1, "b": "two"}, {"a": 1}, True),
    ({"x-match": "any", "a": 1, "b": "two"}, {"b": "two"}, True),
    ({"x-match": "any", "a": 1, "b": "two"}, {"a": 2, "b": "three"}, False),
    ({"x-match": "any", "a": 1, "b": "two"}, {}, False),
    ({"a": 1}, {"a": 1}, True),  # no x-match means all
    ({"a": 1, "b": 2}, {"a": 1}, False),
    ({}, {"anything": 1}, True),  # no arguments: all of nothing
    ({}, None, True),
    ({"x-match": "any"}, {"a": 1}, False),  # any of nothing
    # x- keys are ignored by all/any ...
    ({"x-match": "all", "x-k": "v", "a": 1}, {"a": 1}, True),
    ({"x-match": "any", "x-k": "v"}, {"x-k": "v"}, False),
    # ... and compared by all-with-x / any-with-x (x-match itself never is)
    ({"x-match": "all-with-x", "x-k": "v", "a": 1}, {"a": 1}, False),
    ({"x-match": "all-with-x", "x-k": "v", "a": 1}, {"a": 1, "x-k": "v"}, True),
    ({"x-match": "any-with-x", "x-k": "v", "a": 1}, {"x-k": "v"}, True),
    ({"x-match": "any-with-x", "x-k": "v"}, {"x-k": "w"}, False),
    ({"x-match": "all-with-x"}, {"b": 1}, True),
    # a void binding value means "header present"
    ({"x-match": "all", "a": None}, {"a": "anything"}, True),
    ({"x-match": "all", "a": None}, {"a": None}, True),
    ({"x-match": "all", "a": None}, {"b": 1}, False),
    ({"x-match": "any", "a": None, "b": 5}, {"a": 0}, True),
    # values are compared with their types: a string is not a number, a bool is not an int
    ({"a": 1}, {"a": "1"}, False),
    ({"a": "1"}, {"a": 1}, False),
    ({"a": True}, {"a": 1}, False),
    ({"a": 1}, {"a": True}, False),
    ({"a": True}, {"a": True}, True),
    ({"a": False}, {"a": False}, True),
    ({"a": 2**40}, {"a": 2**40}, True),
    ({"a": 1}, {"a": 2**40}, False),
    # a longstr and a byte array with the same bytes are equal
    ({"a": "bytes"}, {"a": b"bytes"}, True),
    ({"a": "s"}, {"a": "S"}, False),
]


def test_headers_table(xchannel: tuple[BlockingChannel, str]) -> None:
    ch, x = xchannel
    ch.exchange_declare(x, "headers")
    failures = []
    for args, headers, want in HEADER_CASES:
        q = temp_queue(ch)
        ch.queue_bind(q, x, "", arguments=args)
        got = routed(ch, x, q, "ignored", headers=headers)
        if got != want:
            failures.append((args, headers, want, got))
        ch.queue_delete(q)
    assert failures == []


def test_headers_binding_ignores_routing_key(xchannel: tuple[BlockingChannel, str]) -> None:
    ch, x = xchannel
    ch.exchange_declare(x, "headers")
    q = temp_queue(ch)
    ch.queue_bind(q, x, "some-key", arguments={"h": "v"})
    assert routed(ch, x, q, "other-key", headers={"h": "v"})


def test_headers_bindings_differ_by_arguments(xchannel: tuple[BlockingChannel, str]) -> None:
    ch, x = xchannel
    ch.exchange_declare(x, "headers")
    q = temp_queue(ch)
    ch.queue_bind(q, x, "", arguments={"h": 1})
    ch.queue_bind(q, x, "", arguments={"h": 2})
    assert routed(ch, x, q, headers={"h": 1})
    assert routed(ch, x, q, headers={"h": 2})
    ch.queue_unbind(q, x, "", arguments={"h": 1})
    assert not routed(ch, x, q, headers={"h": 1})
    assert routed(ch, x, q, headers={"h": 2})


WIDE_CASES = [
    # (binding arguments, matches the wide message below)
    ({"x-match": "all", "h0": 0, "h9999": 9999, "name": "last"}, True),
    ({"x-match": "all", "h0": 0, "h9999": 9998}, False),
    ({"x-match": "all", "h5": 5, "missing": None}, False),  # void: the header must be present
    ({"x-match": "all", "h5": None, "nested": None}, True),
    ({"x-match": "any", "missing": 1, "h7777": 7777}, True),
    ({"x-match": "any", "missing": 1, "h7777": "7777"}, False),  # a string is not a number
    ({"x-match": "any", "x-tag": "blue", "missing": 1}, False),  # x- keys ignored
    ({"x-match": "all", "x-tag": "red", "h1": 1}, True),
    ({"x-match": "all-with-x", "x-tag": "blue", "h1": 1}, True),
    ({"x-match": "all-with-x", "x-tag": "red", "h1": 1}, False),
    ({"x-match": "any-with-x", "x-tag": "blue", "missing": 1}, True),
    ({"x-match": "any-with-x", "x-tag": "red", "missing": 1}, False),
    ({"flag": True}, True),
    ({"flag": 1}, False),  # a bool is not an int
    ({}, True),
    ({"x-match": "any"}, False),
]


def test_headers_wide_messages_in_every_mode(xchannel: tuple[BlockingChannel, str]) -> None:
    """A message with 10,000 headers (nested tables among them) through a hundred bindings:
    every x-match mode routes it by RabbitMQ's rules, before and after unbinding."""
    ch, x = xchannel
    ch.exchange_declare(x, "headers")
    wide: dict = {f"h{i}": i for i in range(10_000)}
    wide.update({"x-tag": "blue", "flag": True, "nested": {"deep": [1, 2, {"k": "v"}]},
                 "name": "last"})
    queues = []
    for args, _want in WIDE_CASES:
        q = temp_queue(ch)
        ch.queue_bind(q, x, "", arguments=args)
        queues.append(q)
    fillers = [{"x-match": "any", "h7777": -1}] + [
        {"x-match": "all" if i % 2 else "any", f"h{i * 97}": -i, "x-tag": "blue"} for i in range(1, 100)]
    none = temp_queue(ch)  # no filler matches
    for args in fillers:
        ch.queue_bind(none, x, "", arguments=args)

    def check(skip: int | None = None) -> None:
        ch.basic_publish(x, "", b"wide", pika.BasicProperties(headers=wide))
        got = [bool(drain(ch, q)) for q in queues]
        assert got == [want and i != skip for i, (_args, want) in enumerate(WIDE_CASES)]
        assert drain(ch, none) == []

    check()
    for args in fillers:  # the key h7777 stays compared by the binding that still uses it
        ch.queue_unbind(none, x, "", arguments=args)
    ch.queue_unbind(queues[0], x, "", arguments=WIDE_CASES[0][0])
    check(skip=0)


def test_headers_invalid_x_match_is_406(connection: BlockingConnection,
                                        xchannel: tuple[BlockingChannel, str]) -> None:
    ch, x = xchannel
    ch.exchange_declare(x, "headers")
    q = temp_queue(ch)
    with pytest.raises(ChannelClosedByBroker) as info:
        ch.queue_bind(q, x, "", arguments={"x-match": "some"})
    assert info.value.reply_code == 406
    assert info.value.reply_text == ('PRECONDITION_FAILED - Invalid x-match field value <<"some">>; '
                                     "expected all, any, all-with-x, or any-with-x")


# -- the default exchange ------------------------------------------------------------------------------------


def test_default_exchange_routes_by_queue_name(channel: BlockingChannel, qname: str) -> None:
    channel.queue_declare(qname, auto_delete=False)
    try:
        channel.basic_publish("", qname, b"direct-to-queue")
        channel.basic_publish("", qname + "-nope", b"lost")
        assert drain(channel, qname) == [b"direct-to-queue"]
    finally:
        channel.queue_delete(qname)


def test_default_exchange_delivers_to_server_named_queue(channel: BlockingChannel) -> None:
    q = temp_queue(channel)
    channel.basic_publish("", q, b"ok")
    assert drain(channel, q) == [b"ok"]


def test_queue_bind_to_default_exchange_is_403(channel: BlockingChannel) -> None:
    q = temp_queue(channel)
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.queue_bind(q, "", q)
    assert info.value.reply_code == 403
    assert info.value.reply_text == "ACCESS_REFUSED - operation not permitted on the default exchange"


def test_queue_unbind_from_default_exchange_is_403(channel: BlockingChannel) -> None:
    q = temp_queue(channel)
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.queue_unbind(q, "", q)
    assert info.value.reply_code == 403


def test_queue_bind_missing_queue_to_default_exchange_is_403_first(channel: BlockingChannel,
                                                                   qname: str) -> None:
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.queue_bind(qname, "", qname)
    assert info.value.reply_code == 403


def test_publish_to_missing_exchange_closes_channel_404(channel: BlockingChannel) -> None:
    name = f"test-missing-{uuid.uuid4().hex[:8]}"
    channel.basic_publish(name, "k", b"x")
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.queue_declare("", exclusive=True)
    assert info.value.reply_code == 404
    assert info.value.reply_text == f"NOT_FOUND - no exchange '{name}' in vhost '/'"
