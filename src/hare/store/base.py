"""The storage interface of one queue's messages.

A queue asks its store for the next message to deliver and tells it of acks and requeues. The
in-memory store (``memory.py``) is the default of the core; the disk store fills the same
interface. ``seq`` is the position a message had in the queue: requeued messages go back to their
original position, ahead of everything that was behind them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..broker.message import Message


class QueueStore(Protocol):
    def push(self, msg: Message) -> None:
        """Append a message at the tail."""

    def pop(self) -> tuple[Message, int, bool] | None:
        """Take the head: (message, seq, redelivered), or None when empty."""

    def requeue(self, seq: int, msg: Message) -> None:
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
