"""server/collector.py: full collections walk only what is newer than the last one, and garbage
cycles among frozen objects are still collected by the periodic collection of everything."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Iterator

import pytest

from hare.server import collector
from hare.server.collector import CollectorTuning


class Held:
    __slots__ = ("ref", "__weakref__")

    def __init__(self) -> None:
        self.ref: object = None


def full_collection_seconds() -> float:
    start = time.perf_counter()
    gc.collect()
    return time.perf_counter() - start


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()
        gc.unfreeze()


def test_a_full_collection_skips_the_survivors_of_the_last(loop: asyncio.AbstractEventLoop) -> None:
    held = [Held() for _ in range(1_000_000)]  # like a consumer holding many messages
    before = min(full_collection_seconds() for _ in range(3))
    tuning = CollectorTuning(loop)
    try:
        gc.collect()  # the survivors are frozen after it
        assert gc.get_freeze_count() >= len(held)
        after = min(full_collection_seconds() for _ in range(3))
    finally:
        tuning.stop()
    assert gc.get_freeze_count() == 0
    assert after < before / 5, f"a full collection took {after * 1000:.1f} ms, {before * 1000:.1f} ms before"


def test_cycles_among_frozen_objects_are_collected_periodically(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collector, "FULL_INTERVAL", 0.05)
    tuning = CollectorTuning(loop)
    try:
        a, b = Held(), Held()
        a.ref, b.ref = b, a  # a cycle: only the collector frees it
        gone = weakref.ref(a)
        gc.collect()  # frozen
        del a, b
        gc.collect()
        assert gone() is not None  # frozen: not looked at
        loop.run_until_complete(asyncio.sleep(0.2))  # the collection of everything
        assert gone() is None
    finally:
        tuning.stop()
