"""In-memory queue store: a deque of ready messages plus a heap of requeued ones.

Messages leave the deque head in order and get increasing sequence numbers, so every delivered
message has a smaller seq than any still in the deque: requeued messages (in the heap, by seq)
always go out before the deque, in their original order.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..broker.message import Message


class MemoryQueueStore:
    __slots__ = ("ready", "requeued", "next_seq")

    def __init__(self) -> None:
        self.ready: deque[Message] = deque()
        self.requeued: list[tuple[int, Message]] = []
        self.next_seq = 0

    def push(self, msg: Message) -> None:
        self.ready.append(msg)

    def pop(self) -> tuple[Message, int, bool] | None:
        if self.requeued:
            seq, msg = heapq.heappop(self.requeued)
            return msg, seq, True
        if self.ready:
            seq = self.next_seq
            self.next_seq = seq + 1
            return self.ready.popleft(), seq, False
        return None

    def requeue(self, seq: int, msg: Message) -> None:
        heapq.heappush(self.requeued, (seq, msg))

    def ack(self, seq: int, msg: Message) -> None:
        pass

    def purge(self) -> int:
        n = len(self.ready) + len(self.requeued)
        self.ready.clear()
        self.requeued.clear()
        return n

    def close(self) -> None:
        pass

    def destroy(self) -> None:
        self.purge()

    def __len__(self) -> int:
        return len(self.ready) + len(self.requeued)
