"""Short pauses of Python's cycle collector in a broker holding many messages (`hare serve` only).

A full collection (generation 2) walks every container object alive: with a few hundred thousand
messages held (a consumer that never acks, a long queue in its memory window) that is 40-75 ms
during which the event loop serves nobody, several times a minute while the heap grows. So after
each full collection the survivors are frozen (``gc.freeze``: moved where the collector does not
look); the next full collections walk only what is newer, in about a millisecond. Objects are
still freed by reference counting when frozen; only cycles among frozen objects that become
garbage wait: every FULL_INTERVAL seconds everything is unfrozen and collected once (one pause of
the old length, once a minute instead of every few seconds), then frozen again.

Only the broker's own process does this (``hare serve``): an embedded broker shares its process
with the application, whose collector it leaves alone.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

FULL_INTERVAL = 60.0  # seconds between two collections of everything, frozen objects included


class CollectorTuning:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        gc.callbacks.append(self._collected)
        self.timer: asyncio.TimerHandle | None = loop.call_later(FULL_INTERVAL, self._collect_all)

    def _collected(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info.get("generation") == 2:
            gc.freeze()

    def _collect_all(self) -> None:
        gc.unfreeze()
        gc.collect()  # (frozen again after it, by _collected)
        self.timer = self.loop.call_later(FULL_INTERVAL, self._collect_all)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self._collected in gc.callbacks:
            gc.callbacks.remove(self._collected)
        gc.unfreeze()
