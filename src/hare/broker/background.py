"""Work too large for one event-loop turn, done in slices.

A big job (requeueing a closed channel's million unacked messages, cancelling a connection's
100,000 consumers, purging or deleting a huge queue) would freeze every other client for as long as
it runs if it ran in one go. Such a job is a generator: each ``next()`` does a bounded slice of the
work (a few thousand items) and leaves the broker consistent for everybody else in between.
``Background.run`` takes slices for a few milliseconds, then the shell lets the event loop serve
other sockets and calls it again (``on_wake`` asks it to); without a shell (``on_wake`` None: tests
and tools with no event loop) a job runs to its end at once.

Jobs run in the order they came (a connection's channels release in order; a purge after a
requeue sees the requeued messages); a failing job is logged and dropped, never lets others down.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator

log = logging.getLogger("hare.broker")

SLICE = 2000  # items a job handles per step (about a millisecond of work)
BUDGET = 0.004  # seconds of slices per event-loop turn

Job = Iterator[None]


class Background:
    __slots__ = ("jobs", "on_wake")

    def __init__(self) -> None:
        self.jobs: deque[tuple[Job, str]] = deque()
        self.on_wake: Callable[[], None] | None = None  # the shell: call run() soon

    def add(self, job: Job, what: str) -> None:
        """Start ``job`` (``what`` names it in a log line if it fails)."""
        if self.on_wake is None:
            _run_through(job, what)
            return
        self.jobs.append((job, what))
        if len(self.jobs) == 1:
            self.on_wake()

    def run(self, budget: float = BUDGET) -> bool:
        """Take slices for about ``budget`` seconds; True when work remains."""
        jobs = self.jobs
        deadline = time.perf_counter() + budget
        while jobs:
            job, what = jobs[0]
            try:
                next(job)
            except StopIteration:
                jobs.popleft()
            except Exception:  # one job's failure must not stop the others
                jobs.popleft()
                log.exception("%s failed", what)
            if time.perf_counter() >= deadline:
                break
        return bool(jobs)

    def finish(self) -> None:
        """Run every job to its end now (shutdown)."""
        while self.jobs:
            job, what = self.jobs.popleft()
            _run_through(job, what)

    def __len__(self) -> int:
        return len(self.jobs)


def _run_through(job: Job, what: str) -> None:
    try:
        for _ in job:
            pass
    except Exception:
        log.exception("%s failed", what)
