"""topic: binding keys are dot-separated words where ``*`` matches one word and ``#`` zero or more.

Bindings live in a trie of words (as RabbitMQ's topic exchange keeps them), so routing cost grows
with the routing key's length, not with the number of bindings. Results are cached per routing
key until the bindings change.

Matching runs the trie as an automaton, one routing-key word at a time, over the set of trie
nodes alive after the words so far (a ``#`` node stays alive while it swallows words). Each
(node, word position) pair is visited at most once, so one publish costs at most
O(trie nodes x words) whatever the bindings (a routing key has at most 256 words); a run of
``#`` words in a binding key (``#.#`` matches what ``#`` matches) is one trie node. The
bindings themselves are kept with their keys as given (``a.#.#`` and ``a.#`` are two bindings,
as in RabbitMQ): the trie counts each destination's bindings per node.
"""

from __future__ import annotations

from typing import Any

from ..message import Message
from .base import Exchange

_CACHE_MAX = 4096


class _Node:
    __slots__ = ("children", "star", "hash", "loop", "dests")

    def __init__(self, loop: bool = False) -> None:
        self.children: dict[str, _Node] = {}  # literal words
        self.star: _Node | None = None  # the child for '*'
        self.hash: _Node | None = None  # the child for '#'
        self.loop = loop  # this is a '#' node: it swallows any word and stays alive
        self.dests: dict[Any, int] = {}  # destination -> how many bindings end here

    def child(self, word: str) -> _Node | None:
        if word == "#":
            return self.hash
        if word == "*":
            return self.star
        return self.children.get(word)

    def empty(self) -> bool:
        return not (self.dests or self.children or self.star or self.hash)


def _words(key: str) -> list[str]:
    return key.split(".") if key else []


def binding_words(key: str) -> list[str]:
    """A binding key's words with each run of ``#`` made one (``#.*`` and ``*.#`` stay)."""
    words = _words(key)
    if "#" not in words:
        return words
    out: list[str] = []
    for word in words:
        if word != "#" or not out or out[-1] != "#":
            out.append(word)
    return out


class TopicExchange(Exchange):
    type_name = "topic"
    __slots__ = ("root", "cache")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.root = _Node()
        self.cache: dict[str, tuple[Any, ...]] = {}

    def _add(self, dest: Any, routing_key: str, arguments: dict[str, Any]) -> None:
        node = self.root
        for word in binding_words(routing_key):
            nxt = node.child(word)
            if nxt is None:
                nxt = _Node(loop=word == "#")
                if word == "#":
                    node.hash = nxt
                elif word == "*":
                    node.star = nxt
                else:
                    node.children[word] = nxt
            node = nxt
        node.dests[dest] = node.dests.get(dest, 0) + 1
        self.cache.clear()

    def _remove(self, dest: Any, routing_key: str, arguments: dict[str, Any]) -> None:
        path = [self.root]
        words = binding_words(routing_key)
        for word in words:
            nxt = path[-1].child(word)
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
            if not path[i + 1].empty():
                break
            parent, word = path[i], words[i]
            if word == "#":
                parent.hash = None
            elif word == "*":
                parent.star = None
            else:
                del parent.children[word]
        self.cache.clear()

    def route(self, msg: Message, routing_key: str, out: list[Any]) -> None:
        hit = self.cache.get(routing_key)
        if hit is None:
            hit = match(self.root, _words(routing_key))
            if len(self.cache) >= _CACHE_MAX:
                self.cache.clear()
            self.cache[routing_key] = hit
        out.extend(hit)


def match(root: _Node, words: list[str]) -> tuple[Any, ...]:
    """The destinations bound under ``root`` whose binding keys match ``words``, each once."""
    # the nodes alive before the next word: an insertion-ordered set, so a node reached on two
    # paths is walked once per position
    alive: dict[_Node, None] = {root: None}
    if root.hash is not None:
        alive[root.hash] = None  # '#' may match zero words
    for word in words:
        nxt: dict[_Node, None] = {}
        for node in alive:
            if node.loop:
                nxt[node] = None  # '#' swallows this word too
            child = node.children.get(word)
            if child is not None:
                nxt[child] = None
                if child.hash is not None:
                    nxt[child.hash] = None
            child = node.star
            if child is not None:
                nxt[child] = None
                if child.hash is not None:
                    nxt[child.hash] = None
        if not nxt:
            return ()
        alive = nxt
    found: dict[Any, Any] = {}
    for node in alive:
        if node.dests:
            found.update(node.dests)  # only the keys are used
    return tuple(found)
