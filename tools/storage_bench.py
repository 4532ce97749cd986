"""Storage benchmark: a large persistent backlog, the broker's memory with it, draining it, and
restarting with it. Not a test: it prints figures.

    python tools/storage_bench.py hare --count 1000000            # starts `hare serve` itself
    python tools/storage_bench.py rabbitmq --count 1000000        # the local rabbitmq-server

For each broker: fill a durable queue with --count persistent --size byte messages (publisher
confirms, several publishers), report the fill rate and the broker's RSS, restart the broker and
time until the queue is back with every message, report RSS after the restart, then drain it with
consumers (acks) and report the consume rate.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hare.amqp import spec
from hare.bench.client import BenchClient
from hare.bench.run import BenchOptions, Counters, consumer, publisher


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 600, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the broker exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Hare:
    name = "hare"

    def __init__(self, port: int, data_dir: Path) -> None:
        self.port = port
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "hare", "serve", "--bind", "127.0.0.1",
                                      "--port", str(self.port), "--data-dir", str(self.data_dir),
                                      "--log-level", "warning"])
        wait_port(self.port, proc=self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(600)

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.data_dir.rglob("*") if p.is_file())


class RabbitMQ:
    name = "rabbitmq"

    def __init__(self, port: int) -> None:
        self.port = port

    def start(self) -> None:
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True)
        wait_port(self.port)

    @property
    def pid(self) -> int:
        out = subprocess.run(["pgrep", "-f", "beam.smp.*rabbit"], capture_output=True, text=True)
        return int(out.stdout.split()[0])

    def stop(self) -> None:
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True)

    def disk_bytes(self) -> int:
        base = Path("/var/lib/rabbitmq/mnesia")
        return sum(p.stat().st_size for p in base.rglob("*") if p.is_file())


async def queue_count(url: str, queue: str) -> int:
    c = await BenchClient.connect(url)
    c.send(1, spec.QueueDeclare(queue=queue, durable=True, passive=True))
    ok = await c.expect(spec.QueueDeclareOk)
    await c.close()
    assert isinstance(ok, spec.QueueDeclareOk)
    return ok.message_count


async def fill(url: str, queue: str, count: int, size: int, publishers: int) -> float:
    c = await BenchClient.connect(url)
    c.send(1, spec.QueueDeclare(queue=queue, durable=True))
    await c.expect(spec.QueueDeclareOk)
    c.send(1, spec.QueuePurge(queue=queue))
    await c.expect(spec.QueuePurgeOk)
    await c.close()
    o = BenchOptions(url=url, queue=queue, size=size, persistent=True, confirm=2000)
    counters = Counters()
    per = count // publishers
    start = time.monotonic()
    await asyncio.gather(*(publisher(o, counters, asyncio.Event(), per) for _ in range(publishers)))
    return counters.published / (time.monotonic() - start)


async def drain(url: str, queue: str, count: int, consumers: int) -> float:
    o = BenchOptions(url=url, queue=queue, prefetch=1000)
    counters = Counters()
    stop = asyncio.Event()
    start = time.monotonic()
    tasks = [asyncio.ensure_future(consumer(o, counters, stop)) for _ in range(consumers)]
    while counters.consumed < count and time.monotonic() - start < 3600:
        await asyncio.sleep(0.01)
    elapsed = time.monotonic() - start
    stop.set()
    await asyncio.gather(*tasks)
    return counters.consumed / elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("broker", choices=["hare", "rabbitmq"])
    p.add_argument("--count", type=int, default=1_000_000)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--publishers", type=int, default=2)
    p.add_argument("--consumers", type=int, default=1)
    p.add_argument("--port", type=int, default=0, help="default: a free port (hare), 5672 (rabbitmq)")
    p.add_argument("--data-dir", help="hare's data directory (default: a temporary one)")
    args = p.parse_args()
    queue = "storage-bench"
    if args.broker == "hare":
        port = args.port or free_port()
        tmp = None if args.data_dir else tempfile.mkdtemp(prefix="hare-bench-")
        broker: Hare | RabbitMQ = Hare(port, Path(args.data_dir or tmp))  # type: ignore[arg-type]
        broker.start()
    else:
        port = args.port or 5672
        tmp = None
        broker = RabbitMQ(port)
    url = f"amqp://guest:guest@127.0.0.1:{port}/"
    try:
        print(f"{broker.name}: {args.count} persistent messages of {args.size} bytes")
        rss0 = rss_mib(broker.pid)
        rate = asyncio.run(fill(url, queue, args.count, args.size, args.publishers))
        print(f"  fill (confirmed, persistent): {rate:,.0f} msg/s")
        print(f"  RSS before fill {rss0:,.0f} MiB, with the backlog {rss_mib(broker.pid):,.0f} MiB; "
              f"disk {broker.disk_bytes() / 2**20:,.0f} MiB")
        broker.stop()
        t0 = time.monotonic()
        broker.start()
        n = 0
        while time.monotonic() - t0 < 3600:
            try:
                n = asyncio.run(queue_count(url, queue))
            except (ConnectionError, OSError):
                n = -1
            if n >= args.count:
                break
            time.sleep(0.05)
        print(f"  restart until the queue is back with {n:,} messages: {time.monotonic() - t0:.1f} s; "
              f"RSS {rss_mib(broker.pid):,.0f} MiB")
        rate = asyncio.run(drain(url, queue, args.count, args.consumers))
        print(f"  drain (consume + ack): {rate:,.0f} msg/s; RSS after {rss_mib(broker.pid):,.0f} MiB; "
              f"disk {broker.disk_bytes() / 2**20:,.0f} MiB")
    finally:
        if isinstance(broker, Hare):
            broker.stop()
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
