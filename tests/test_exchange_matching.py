"""The topic and headers exchanges' matching without a server, against matchers written from
the rules.

Topic: the reference is the definition itself: ``*`` is exactly one word, ``#`` zero or more, any other
word itself (empty words are words; a ``*`` or ``#`` in a routing key is only a word). Random
binding keys and routing keys over a small alphabet (so words repeat and patterns overlap) are
bound, routed, and unbound in random order.

Headers: random bindings of every x-match mode against random headers (the exchange decodes only
the entries its bindings compare), checked against the rules applied to the fully decoded headers.
"""

from __future__ import annotations

import random
import time
from functools import cache
from typing import Any

from hare.amqp.properties import decode_properties, encode_properties
from hare.broker.exchanges.headers import HeadersExchange
from hare.broker.exchanges.topic import TopicExchange, binding_words
from hare.broker.message import Message

WORDS = ["a", "b", "", "*", "#"]


def split(key: str) -> tuple[str, ...]:
    return tuple(key.split(".")) if key else ()


@cache
def reference(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return reference(rest, words) or (bool(words) and reference(pattern, words[1:]))
    if not words:
        return False
    return (head == "*" or head == words[0]) and reference(rest, words[1:])


def random_key(rng: random.Random, max_words: int, words: list[str]) -> str:
    n = rng.randint(0, max_words)
    return ".".join(rng.choice(words) for _ in range(n))


def route(ex: TopicExchange | HeadersExchange, key: str, props: bytes = b"\x00\x00") -> list[str]:
    out: list[str] = []
    ex.route(Message(ex.name, key, props, b""), key, out)
    return out


def check(ex: TopicExchange, bound: dict[tuple[str, str], int], keys: list[str]) -> None:
    for key in keys:
        got = route(ex, key)
        assert len(got) == len(set(got)), (key, got)  # each destination once
        want = {dest for (dest, pattern), n in bound.items()
                if n and reference(split(pattern), split(key))}
        assert set(got) == want, (key, sorted(want - set(got)), sorted(set(got) - want))


def test_random_bindings_match_the_definition() -> None:
    rng = random.Random(20261203)
    for _round in range(40):
        ex = TopicExchange("t")
        bound: dict[tuple[str, str], int] = {}
        for i in range(rng.randint(1, 30)):
            pattern = random_key(rng, 6, WORDS)
            dest = f"q{i % 7}"  # several bindings per destination
            if ex.bind(dest, pattern, None):
                bound[(dest, pattern)] = 1
        keys = [random_key(rng, 8, WORDS) for _ in range(150)]
        check(ex, bound, keys)
        # unbind half of them, in random order, and check again (the trie prunes as it goes)
        for dest, pattern in rng.sample(sorted(bound), len(bound) // 2):
            assert ex.unbind(dest, pattern, None)
            bound[(dest, pattern)] = 0
        ex.cache.clear()
        check(ex, bound, keys)
        for dest, pattern in sorted(bound):
            if bound[(dest, pattern)]:
                ex.unbind(dest, pattern, None)
        assert ex.root.empty()  # everything pruned
        assert route(ex, "a.b") == []


def test_runs_of_hash_are_one_word_but_star_stays() -> None:
    assert binding_words("#.#.#") == ["#"]
    assert binding_words("a.#.#.b.#.#") == ["a", "#", "b", "#"]
    assert binding_words("#.*.#") == ["#", "*", "#"]
    assert binding_words("*.#") == ["*", "#"]
    assert binding_words("") == []
    assert binding_words("a..b") == ["a", "", "b"]


def test_collapsed_bindings_stay_distinct() -> None:
    """``a.#.#`` and ``a.#`` on one queue are two bindings (RabbitMQ keeps the key as given):
    unbinding either leaves the other routing."""
    ex = TopicExchange("t")
    assert ex.bind("q", "a.#.#", None)
    assert ex.bind("q", "a.#", None)
    assert not ex.bind("q", "a.#.#", None)  # already there
    assert route(ex, "a.x.y") == ["q"]
    assert ex.unbind("q", "a.#.#", None)
    assert not ex.has_binding("q", "a.#.#", None)
    assert ex.has_binding("q", "a.#", None)
    assert route(ex, "a.x.y") == ["q"]
    assert not ex.unbind("q", "a.#.#", None)  # gone already: does not take the other one
    assert route(ex, "a") == ["q"]
    assert ex.unbind("q", "a.#", None)
    assert route(ex, "a.x.y") == []
    assert ex.root.empty()
    # the other order
    ex.bind("q", "a.#", None)
    ex.bind("q", "a.#.#.#", None)
    ex.unbind("q", "a.#", None)
    assert route(ex, "a.b") == ["q"]
    assert [k[1] for k in ex.bindings] == ["a.#.#.#"]


NASTY = ["#.#.#.#.#.#.#.#", "#.a.#.a.#.a.#", "#.*.#.*.#.*.#.*.#", "*.#.*.#.*.#.*.#.b",
         "#.a.#.b.#.a.#.b.#.c", "#.#.#.#.#.#.#.#.#.#.#.#.z"]


def test_nasty_bindings_on_long_keys() -> None:
    """Bindings with many ``#`` against 128-word keys: correct, and linear (the recursive matcher
    took tens of seconds on the first one alone)."""
    ex = TopicExchange("t")
    bound = {}
    for i, pattern in enumerate(NASTY):
        ex.bind(f"q{i}", pattern, None)
        bound[(f"q{i}", pattern)] = 1
    rng = random.Random(7)
    keys = [".".join(["a"] * 128), ".".join(["a", "b"] * 64), ".".join(["a"] * 127 + ["z"]),
            ".".join(rng.choice(["a", "b", "c"]) for _ in range(128)),
            ".".join([""] * 200), ".".join(["b"] * 127 + ["c"])]
    start = time.monotonic()
    check(ex, bound, keys)
    assert time.monotonic() - start < 5  # generous: tens of seconds before


# -- headers ----------------------------------------------------------------------------------------

HKEYS = ["a", "b", "c", "x-a", "x-b", "é"]
HVALUES: list[Any] = [1, 2, "1", "s", True, False, None, b"s", 2**40, {"t": 1}, [1, "s"]]


def same(have: Any, want: Any) -> bool:
    """RabbitMQ's equality of a header and a binding value: the type counts (True is not 1), but
    a longstr and a byte array with the same octets are equal."""
    if isinstance(have, str):
        have = have.encode()
    if isinstance(want, str):
        want = want.encode()
    return type(have) is type(want) and have == want


def headers_reference(args: dict[str, Any], headers: dict[str, Any]) -> bool:
    mode = args.get("x-match", "all")
    with_x = mode.endswith("-with-x")
    pairs = [(k, v) for k, v in args.items() if k != "x-match" and (with_x or not k.startswith("x-"))]
    hits = [k in headers and (v is None or same(headers[k], v)) for k, v in pairs]
    return all(hits) if mode.startswith("all") else any(hits)


def random_table(rng: random.Random, n: int) -> dict[str, Any]:
    return {rng.choice(HKEYS): rng.choice(HVALUES) for _ in range(n)}


def test_random_headers_bindings_match_the_rules() -> None:
    rng = random.Random(12)
    for _round in range(60):
        ex = HeadersExchange("h")
        bound: dict[tuple[str, Any], dict[str, Any]] = {}
        for i in range(rng.randint(1, 12)):
            args = random_table(rng, rng.randint(0, 3))
            if rng.random() < 0.8:
                args["x-match"] = rng.choice(["all", "any", "all-with-x", "any-with-x"])
            dest = f"q{i % 4}"
            if ex.bind(dest, "", args):
                bound[(dest, repr(sorted(args.items(), key=repr)))] = args
        for _ in range(40):
            headers = random_table(rng, rng.randint(0, 6))
            headers.update({f"filler-{j}": j for j in range(rng.randint(0, 50))})  # never compared
            props = encode_properties({"headers": headers, "content_type": "t"} if headers else {})
            decoded = decode_properties(props).get("headers") or {}
            want = {dest for (dest, _), args in bound.items() if headers_reference(args, decoded)}
            got = route(ex, "", props)
            assert set(got) == want, (headers, got, want)
        for (dest, _), args in rng.sample(sorted(bound.items(), key=repr), len(bound)):
            assert ex.unbind(dest, "", args)
        assert ex.rules == {} and ex.wanted == {} and ex.key_refs == {}
