"""Deadlines of the broker model: message and queue expiry, consumer timeouts, delayed messages.

The model stays sans-IO: it registers callbacks at wall-clock times (milliseconds) here, and the
shell, told of the earliest deadline through ``on_change``, calls ``run(now)`` once it has passed.
Tests drive ``run`` with any clock they like.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable

log = logging.getLogger("hare.broker")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Timer:
    __slots__ = ("when", "fn", "cancelled")

    def __init__(self, when: int, fn: Callable[[int], None]) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    def __init__(self) -> None:
        self.heap: list[tuple[int, int, Timer]] = []
        self.order = itertools.count()
        self.on_change: Callable[[], None] = _noop  # the earliest deadline moved earlier

    def call_at(self, when: int, fn: Callable[[int], None]) -> Timer:
        """Run ``fn(now)`` once the wall clock reaches ``when`` (ms)."""
        timer = Timer(when, fn)
        earliest = self.heap[0][0] if self.heap else None
        heapq.heappush(self.heap, (when, next(self.order), timer))
        if earliest is None or when < earliest:
            self.on_change()
        return timer

    def next_deadline(self) -> int | None:
        heap = self.heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def run(self, now: int | None = None) -> None:
        """Run every timer that is due at ``now``. One that fails is logged; the others still
        run (they are the whole broker's: TTLs, queue expiry, consumer timeouts, delays)."""
        if now is None:
            now = now_ms()
        heap = self.heap
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            if not timer.cancelled:
                timer.cancelled = True
                try:
                    timer.fn(now)
                except Exception:
                    log.exception("timer %r failed", timer.fn)


def _noop() -> None:
    pass
