"""Memory of a large delayed backlog: --count persistent messages published (confirmed) to a durable
x-delayed-message exchange with delays spread over --spread seconds (from one minute on), the
broker's RSS before and after, its disk use, then the same after a restart. Not a test: it prints
figures.

    python tools/delayed_bench.py --count 1000000
    python tools/delayed_bench.py --count 1000000 --min-delay 30000 --spread 30 --release
"""

from __future__ import annotations

import argparse
import asyncio
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from storage_bench import Hare, free_port, rss_mib  # noqa: E402

from hare.amqp import spec  # noqa: E402
from hare.amqp.frames import method_frame, pack_header  # noqa: E402
from hare.amqp.properties import encode_properties  # noqa: E402
from hare.bench.client import BenchClient  # noqa: E402

EXCHANGE, QUEUE = "delayed-bench", "delayed-bench-q"


def frames(delay: int, body: bytes) -> bytes:
    m = method_frame(1, spec.BasicPublish(exchange=EXCHANGE, routing_key="k"))
    props = encode_properties({"delivery_mode": 2, "headers": {"x-delay": delay}})
    header = struct.pack(">HHQ", 60, 0, len(body)) + props
    return (m + pack_header(2, 1, len(header)) + header + b"\xce"
            + pack_header(3, 1, len(body)) + body + b"\xce")


async def fill(url: str, count: int, spread_s: int, size: int, min_delay: int) -> float:
    c = await BenchClient.connect(url)
    c.send(1, spec.ExchangeDeclare(exchange=EXCHANGE, type="x-delayed-message", durable=True,
                                   arguments={"x-delayed-type": "direct"}))
    await c.expect(spec.ExchangeDeclareOk)
    c.send(1, spec.QueueDeclare(queue=QUEUE, durable=True))
    await c.expect(spec.QueueDeclareOk)
    c.send(1, spec.QueueBind(queue=QUEUE, exchange=EXCHANGE, routing_key="k"))
    await c.expect(spec.QueueBindOk)
    c.send(1, spec.ConfirmSelect())
    await c.expect(spec.ConfirmSelectOk)
    rng = random.Random(1)
    variants = [frames(min_delay + rng.randrange(spread_s * 1000), b"x" * size) for _ in range(4096)]
    sent = confirmed = 0
    window = 20_000
    started = time.monotonic()
    while confirmed < count:
        while sent < count and sent - confirmed < window:
            n = min(1000, count - sent)
            c.writer.write(b"".join(variants[(sent + i) % len(variants)] for i in range(n)))
            sent += n
        await c.writer.drain()
        data = await c.reader.read(1 << 20)
        if not data:
            raise ConnectionError("broker closed the connection")
        confirmed = max(confirmed, c.count_confirms(data))
    elapsed = time.monotonic() - started
    await c.close()
    return elapsed


async def queue_length(url: str) -> int:
    c = await BenchClient.connect(url)
    c.send(1, spec.QueueDeclare(queue=QUEUE, durable=True, passive=True))
    ok = await c.expect(spec.QueueDeclareOk)
    await c.close()
    assert isinstance(ok, spec.QueueDeclareOk)
    return ok.message_count


def watch_release(url: str, pid: int, count: int) -> None:
    """Until the queue holds every message: the release rate and the broker's highest RSS."""
    started = time.monotonic()
    top = rss_mib(pid)
    while (n := asyncio.run(queue_length(url))) < count:
        top = max(top, rss_mib(pid))
        time.sleep(0.5)
    print(f"released into the queue: {n} messages by {time.monotonic() - started:.1f}s after the "
          f"restart; highest RSS meanwhile: {top:.1f} MiB")


def du_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / (1 << 20)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=1_000_000)
    p.add_argument("--spread", type=int, default=3600, help="delays spread over this many seconds")
    p.add_argument("--size", type=int, default=100, help="body bytes")
    p.add_argument("--min-delay", type=int, default=60_000, help="ms: the shortest delay")
    p.add_argument("--release", action="store_true", help="after the restart, wait for the release")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="hare-delayed-") as tmp:
        data = Path(tmp) / "data"
        port = free_port()
        broker = Hare(port, data)
        broker.start()
        url = f"amqp://guest:guest@127.0.0.1:{port}/"
        print(f"RSS at start: {rss_mib(broker.pid):.1f} MiB")
        elapsed = asyncio.run(fill(url, a.count, a.spread, a.size, a.min_delay))
        print(f"published {a.count} delayed messages (confirmed) in {elapsed:.1f}s "
              f"({a.count / elapsed:,.0f} msg/s)")
        print(f"RSS with the backlog: {rss_mib(broker.pid):.1f} MiB; "
              f"on disk: {du_mib(data / 'delayed'):.1f} MiB")
        broker.stop()
        started = time.monotonic()
        broker.start()
        print(f"restart: listening after {time.monotonic() - started:.1f}s; "
              f"RSS after recovery: {rss_mib(broker.pid):.1f} MiB")
        if a.release:
            watch_release(url, broker.pid, a.count)
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
