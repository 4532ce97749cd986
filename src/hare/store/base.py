"""The storage interface of one queue's ready messages.

A queue asks its store for the next message to deliver and tells it of acks and requeues.
``store/paged.py`` is the implementation (memory only without a data directory; a memory window
paged to the queue's log with one). ``seq`` identifies a message in its queue and orders it:
requeued messages go back to their original position, ahead of everything that was behind them.
``expires_at`` is the wall-clock millisecond after which a message is dead (0: never).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..broker.message import Message


class QueueStore(Protocol):
    ready_bytes: int  # body bytes of the ready messages
    # (message, enqueued_ms) -> expires_at, for messages the store reads back from disk
    expiry: Callable[[Message, int], int] | None

    def push(self, msg: Message, expires_at: int = 0) -> None:
        """Append a message at the tail."""

    def pop(self) -> tuple[Message, int, bool, int] | None:
        """Take the head: (message, seq, redelivered, expires_at), or None when empty."""

    def head_expiry(self) -> int:
        """expires_at of the message pop() would return (0: none, or it never expires)."""

    def drop_head(self) -> bool:
        """Remove the head for good (max-length drop-head, nothing to dead-letter); False when
        empty. A store that keeps it on disk need not read its body."""

    def requeue(self, seq: int, msg: Message, expires_at: int = 0) -> None:
        """Put a delivered, unacked message back at its original position, marked redelivered."""

    def ack(self, seq: int, msg: Message) -> None:
        """Forget a delivered message for good."""

    def purge(self) -> int:
        """Drop every ready message; return how many."""

    def close(self) -> None:
        """The broker stops: write out what is buffered (the queue lives on)."""

    def destroy(self) -> None:
        """The queue is deleted: free everything, on disk too."""

    def __len__(self) -> int:
        """Number of ready messages (not counting delivered, unacked ones)."""


def pop_and_drop(store: QueueStore) -> bool:
    """drop_head for a store that must read its head anyway: pop it and forget it."""
    entry = store.pop()
    if entry is None:
        return False
    store.ack(entry[1], entry[0])
    return True
