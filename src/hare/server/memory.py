"""The memory alarm: the broker's resident memory against its high watermark.

A few times a second the shell reads the process's RSS from ``/proc/self/statm`` (one small read,
nothing per message), and sooner when the connections have read a sixteenth of the watermark
since the last look (``budget``, taken off per read, not per message): a flood of big messages
can grow the RSS by hundreds of MiB a second, past the pressure point and the watermark between
two timed looks. Above the watermark the broker raises its ``memory`` alarm: connections
that publish get connection.blocked and are not read until it clears, consumers go on draining;
the alarm clears as soon as the RSS is back under the watermark, as RabbitMQ's does (no
hysteresis). Before that, past half the watermark, the broker is under memory pressure
(``Broker.set_memory_pressure``): each channel may hold only a share of unacked messages, so one
consumer that never acks cannot bring the alarm (and block every publisher) by itself.

The watermark is ``vm_memory_high_watermark.relative`` (0.4 by default) of the RAM, or
``vm_memory_high_watermark.absolute`` bytes (no more than the RAM). The RAM is
``total_memory_available_override_value`` if set, else MemTotal of ``/proc/meminfo`` or the
memory limit of the process's cgroup if that is lower (RabbitMQ 3.10 reads only MemTotal).

Freed memory goes back to the allocator, not always to the system: after a drain glibc keeps
the pages of its heap and the RSS stays high. So before deciding that the RSS is over the
watermark the monitor asks glibc to return its free pages (``malloc_trim``), at most every
second and never more than a tenth of the time.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..broker.broker import PRESSURE_OFF, Broker, BrokerConfig

log = logging.getLogger("hare.server")

CHECK_INTERVAL = 0.2  # seconds between two reads of the RSS
READ_SHARE = 16  # the RSS is looked at again once the input read since reaches 1/16 of the watermark
TRIM_INTERVAL = 1.0  # least seconds between two malloc_trim calls
MiB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss() -> int | None:
    """The resident memory of this process in bytes (None where /proc is not there)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (cgroup v2): no limit


def cgroup_limit() -> int | None:
    """The memory limit of this process's cgroup (v2 memory.max or v1 memory.limit_in_bytes, the
    lowest on the way up to the root), or None when there is none."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _id, controllers, path = line.split(":", 2)
        if controllers == "":
            root, name = Path("/sys/fs/cgroup"), "memory.max"
        elif "memory" in controllers.split(","):
            root, name = Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):  # in a container the cgroup is its namespace's root
            value = _read_int(root.joinpath(*parts[:depth], name))
            if value is not None and value < 1 << 60:  # v1 writes "unlimited" as a huge number
                limits.append(value)
    return min(limits) if limits else None


def total_memory(config: BrokerConfig) -> int:
    """The RAM the watermark is relative to."""
    if config.total_memory_available_override_value is not None:
        return config.total_memory_available_override_value
    total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError):
        pass
    if total is None:
        try:
            total = os.sysconf("SC_PHYS_PAGES") * PAGE
        except (OSError, ValueError, AttributeError):
            total = 1 << 30  # RabbitMQ's guess for an unknown system: 1 GiB
    cgroup = cgroup_limit()
    return min(total, cgroup) if cgroup is not None else total


def high_watermark(config: BrokerConfig) -> tuple[int, int]:
    """(the watermark in bytes, the RAM it was taken from)."""
    total = total_memory(config)
    if config.vm_memory_high_watermark_absolute is not None:
        return min(config.vm_memory_high_watermark_absolute, total), total
    return int(config.vm_memory_high_watermark * total), total


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None  # not glibc


class MemoryMonitor:
    """Sets and clears the broker's memory alarm; runs on the broker's event loop."""

    def __init__(self, broker: Broker, loop: asyncio.AbstractEventLoop) -> None:
        self.broker = broker
        self.loop = loop
        self.limit, total = high_watermark(broker.config)
        self.timer: asyncio.TimerHandle | None = None
        self.trim = _malloc_trim()
        self.trim_after = 0.0  # monotonic time before which malloc_trim is not called again
        self.step = max(self.limit // READ_SHARE, 1 << 20)
        self.budget = 1 << 62  # bytes the connections may read before the RSS is looked at again
        self.looks = 0  # reads of the RSS so far
        self.used = rss()
        if self.used is None:
            log.warning("cannot read this process's memory (/proc/self/statm): no memory alarm")
            return
        log.info("memory high watermark set to %d MiB (%d bytes) of %d MiB (%d bytes) total",
                 self.limit // MiB, self.limit, total // MiB, total)
        self.check()

    def read(self) -> None:
        """The connections have read ``step`` bytes since the last look: look now."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.check()

    def check(self) -> None:
        used = rss()
        if used is None:
            return
        self.budget = self.step
        self.looks += 1
        broker = self.broker
        # over the watermark, or under memory pressure: maybe it is only freed heap
        over = used > self.limit or (broker.memory_pressure and used >= self.limit * PRESSURE_OFF)
        if over and self.trim is not None and time.monotonic() >= self.trim_after:
            started = time.monotonic()
            self.trim(0)  # give free heap pages back, then look again
            spent = time.monotonic() - started
            self.trim_after = started + max(TRIM_INTERVAL, 10 * spent)
            used = rss() or used
        self.used = used
        broker.set_memory_alarm(used > self.limit, used, self.limit)
        broker.set_memory_pressure(used, self.limit)
        self.timer = self.loop.call_later(CHECK_INTERVAL, self.check)

    def stop(self) -> None:
        self.budget = 1 << 62
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
