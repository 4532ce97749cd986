"""A healthy client beside a hostile one: how long the broker kept the innocent waiting.

``with HealthyClient(url) as probe: ...`` runs a thread with its own connection that, every
``interval`` seconds, publishes one confirmed message to its own queue and takes it back with
basic.get, timing each round trip. Outside the block, ``probe.latencies`` holds the round trips (s)
and ``probe.errors`` what went wrong; ``probe.worst`` also counts a round trip still pending when the
block ended (a broker that froze for good shows as one long latency, not as no samples).
"""

from __future__ import annotations

import statistics
import threading
import time
from types import TracebackType

import pika
from pika.adapters.blocking_connection import BlockingChannel
from support import unique_name


class HealthyClient:
    def __init__(self, url: str, interval: float = 0.05, timeout: float = 60.0) -> None:
        self.url = url
        self.interval = interval
        self.timeout = timeout  # the connection's socket and blocked-connection timeouts
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.queue = unique_name("healthy")
        self._stop = threading.Event()
        self._started = threading.Event()
        self._pending_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="healthy-client", daemon=True)

    def __enter__(self) -> HealthyClient:
        self._thread.start()
        if not self._started.wait(30):
            raise AssertionError(f"the healthy client could not start: {self.errors}")
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)
        pending = self._pending_since
        if pending is not None:  # still waiting: count the wait so far
            self.latencies.append(time.monotonic() - pending)

    # -- figures ---------------------------------------------------------------------------------

    @property
    def worst(self) -> float:
        return max(self.latencies, default=0.0)

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[round(p) - 1]

    def summary(self) -> str:
        return (f"{len(self.latencies)} round trips, p50 {self.percentile(50) * 1000:.1f} ms, "
                f"p99 {self.percentile(99) * 1000:.1f} ms, max {self.worst * 1000:.1f} ms, "
                f"errors {self.errors[:3]}")

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            params = pika.URLParameters(self.url)
            params.socket_timeout = params.stack_timeout = self.timeout
            params.blocked_connection_timeout = self.timeout
            conn = pika.BlockingConnection(params)
            ch = conn.channel()
            ch.confirm_delivery()
            ch.queue_declare(self.queue, exclusive=True)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            self.errors.append(f"connect: {exc!r}")
            self._started.set()
            return
        self._started.set()
        n = 0
        try:
            while not self._stop.is_set():
                n += 1
                self._round_trip(ch, str(n).encode())
                self._stop.wait(self.interval)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            self.errors.append(f"round trip {n}: {exc!r}")
        finally:
            try:
                conn.close()
            except Exception:  # noqa: BLE001, S110 - the broker may have gone
                pass

    def _round_trip(self, ch: BlockingChannel, body: bytes) -> None:
        self._pending_since = start = time.monotonic()
        ch.basic_publish("", self.queue, body)
        method, _props, got = ch.basic_get(self.queue, auto_ack=True)
        self._pending_since = None
        self.latencies.append(time.monotonic() - start)
        if method is None or got != body:
            self.errors.append(f"published {body!r}, got {got!r}")
