"""topic: binding keys are dot-separated words where ``*`` matches one word and ``#`` zero or more.

Bindings live in a trie of words (as RabbitMQ's topic exchange keeps them), so routing cost grows
with the routing key's length, not with the number of bindings. Results are cached per routing
key until the bindings change.
"""

from __future__ import annotations

from typing import Any

from ..message import Message
from .base import Exchange

_CACHE_MAX = 4096


class _Node:
    __slots__ = ("children", "dests")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.dests: dict[Any, int] = {}


def _words(key: str) -> list[str]:
    return key.split(".") if key else []


class TopicExchange(Exchange):
    type_name = "topic"
    __slots__ = ("root", "cache")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.root = _Node()
        self.cache: dict[str, tuple[Any, ...]] = {}

    def _add(self, dest: Any, routing_key: str, arguments: dict[str, Any]) -> None:
        node = self.root
        for word in _words(routing_key):
            nxt = node.children.get(word)
            if nxt is None:
                nxt = node.children[word] = _Node()
            node = nxt
        node.dests[dest] = node.dests.get(dest, 0) + 1
        self.cache.clear()

    def _remove(self, dest: Any, routing_key: str, arguments: dict[str, Any]) -> None:
        path = [self.root]
        words = _words(routing_key)
        for word in words:
            nxt = path[-1].children.get(word)
            if nxt is None:
                return
            path.append(nxt)
        node = path[-1]
        n = node.dests.get(dest, 0)
        if n > 1:
            node.dests[dest] = n - 1
        else:
            node.dests.pop(dest, None)
        # prune empty nodes bottom-up
        for i in range(len(words) - 1, -1, -1):
            child = path[i + 1]
            if child.dests or child.children:
                break
            del path[i].children[words[i]]
        self.cache.clear()

    def route(self, msg: Message, routing_key: str, out: list[Any]) -> None:
        hit = self.cache.get(routing_key)
        if hit is None:
            found: dict[Any, None] = {}
            _match(self.root, _words(routing_key), 0, found)
            hit = tuple(found)
            if len(self.cache) >= _CACHE_MAX:
                self.cache.clear()
            self.cache[routing_key] = hit
        out.extend(hit)


def _match(node: _Node, words: list[str], i: int, found: dict[Any, None]) -> None:
    children = node.children
    hash_node = children.get("#")
    if hash_node is not None:
        # '#' swallows zero or more words: try the rest of the key at every split point
        for j in range(i, len(words) + 1):
            _match(hash_node, words, j, found)
    if i == len(words):
        for dest in node.dests:
            found[dest] = None
        return
    word = words[i]
    nxt = children.get(word)
    if nxt is not None:
        _match(nxt, words, i + 1, found)
    if word != "*":
        star = children.get("*")
        if star is not None:
            _match(star, words, i + 1, found)
