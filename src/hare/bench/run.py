"""``hare bench``: publish and consume rates against any AMQP 0-9-1 broker (hare or RabbitMQ).

Scenarios:
- ``publish``: publishers into a queue nobody consumes (ingest rate);
- ``consume``: fill a queue with --count messages, then drain it (delivery rate);
- ``pubsub``: publishers and consumers at once (end-to-end rate).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

from ..amqp import spec
from .client import BenchClient


@dataclass
class BenchOptions:
    url: str = "amqp://guest:guest@127.0.0.1:5672/"
    scenario: str = "pubsub"
    publishers: int = 1
    consumers: int = 1
    size: int = 16
    duration: float = 10.0
    count: int = 200_000
    confirm: int = 0  # max outstanding confirms per publisher; 0 = no confirms
    prefetch: int = 1000  # 0 = no-ack consumers
    persistent: bool = False
    queue: str = ""
    queue_type: str = "classic"  # "quorum": a replicated queue in a cluster (always durable)
    consume_url: str = ""  # consumers connect here (another node of a cluster); default: url


@dataclass
class Counters:
    published: int = 0
    consumed: int = 0


async def _declare(url: str, queue: str, durable: bool, queue_type: str = "classic") -> None:
    c = await BenchClient.connect(url)
    arguments = {} if queue_type == "classic" else {"x-queue-type": queue_type}
    c.send(1, spec.QueueDeclare(queue=queue, durable=durable or queue_type != "classic",
                                arguments=arguments))
    await c.expect(spec.QueueDeclareOk)
    c.send(1, spec.QueuePurge(queue=queue))
    await c.expect(spec.QueuePurgeOk)
    await c.close()


async def _delete(url: str, queue: str) -> None:
    c = await BenchClient.connect(url)
    c.send(1, spec.QueueDelete(queue=queue))
    await c.expect(spec.QueueDeleteOk)
    await c.close()


async def publisher(o: BenchOptions, counters: Counters, stop: asyncio.Event, limit: int = 0) -> None:
    """Publish pre-encoded messages in batches of 100; with --confirm, keep at most that many
    unconfirmed and count a message when its confirm arrives."""
    c = await BenchClient.connect(o.url)
    frames = c.publish_frames("", o.queue, b"x" * o.size, o.persistent)
    batch = 100
    chunk = frames * batch
    sent = 0
    confirmed = 0
    window_open = asyncio.Event()

    async def read_acks() -> None:
        nonlocal confirmed
        while True:
            data = await c.reader.read(1 << 20)
            if not data:
                return
            top = c.count_confirms(data)
            if top > confirmed:
                counters.published += top - confirmed
                confirmed = top
            window_open.set()

    reader = None
    if o.confirm:
        c.send(1, spec.ConfirmSelect())
        await c.expect(spec.ConfirmSelectOk)
        reader = asyncio.ensure_future(read_acks())
    try:
        while not stop.is_set() and (not limit or sent < limit):
            while o.confirm and sent - confirmed >= o.confirm and not stop.is_set():
                window_open.clear()
                try:
                    await asyncio.wait_for(window_open.wait(), 0.5)
                except TimeoutError:
                    pass
            c.writer.write(chunk)
            sent += batch
            if not o.confirm:
                counters.published += batch
            await c.writer.drain()
            await asyncio.sleep(0)  # let consumers in this process run
        if reader is not None:
            deadline = time.monotonic() + 10
            while confirmed < sent and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            reader.cancel()
    finally:
        await c.close()


async def consumer(o: BenchOptions, counters: Counters, stop: asyncio.Event) -> None:
    c = await BenchClient.connect(o.consume_url or o.url)
    no_ack = o.prefetch == 0
    if not no_ack:
        c.send(1, spec.BasicQos(prefetch_count=o.prefetch))
        await c.expect(spec.BasicQosOk)
    c.send(1, spec.BasicConsume(queue=o.queue, consumer_tag=f"bench-{uuid.uuid4().hex[:8]}",
                                no_ack=no_ack))
    await c.expect(spec.BasicConsumeOk)
    acked = 0
    step = max(1, o.prefetch // 2)
    try:
        while not stop.is_set():
            try:
                data = await asyncio.wait_for(c.reader.read(1 << 20), 0.2)
            except TimeoutError:
                continue
            if not data:
                break
            n, last = c.count_deliveries(data)
            counters.consumed += n
            if not no_ack and last - acked >= step:
                c.send(1, spec.BasicAck(delivery_tag=last, multiple=True))
                acked = last
    finally:
        await c.close()


CONNECT_TIMEOUT = 10.0


class CannotConnect(Exception):
    """The first connection failed: the broker is not there, refuses us, or is not AMQP."""


def _reason(exc: OSError) -> str:
    """``Connection refused``, not ``[Errno 111] Connect call failed ('127.0.0.1', 5672)``."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    if exc.errno and exc.errno > 0:  # asyncio's text names the address, which we print already
        return os.strerror(exc.errno)
    if exc.strerror:  # socket.gaierror: "Name or service not known"
        return exc.strerror
    return str(exc) or type(exc).__name__


def _safe_url(url: str) -> str:
    """The URL without its password."""
    u = urlparse(url)
    if u.password is None:
        return url
    return u._replace(netloc=u.netloc.replace(f":{u.password}@", ":***@", 1)).geturl()


async def run(o: BenchOptions) -> dict[str, float]:
    o.queue = o.queue or f"bench-{uuid.uuid4().hex[:8]}"
    try:
        await asyncio.wait_for(_declare(o.url, o.queue, o.persistent, o.queue_type), CONNECT_TIMEOUT)
    except OSError as exc:  # ConnectionRefusedError, socket.gaierror, TimeoutError, closed by broker
        raise CannotConnect(f"cannot connect to {_safe_url(o.url)}: {_reason(exc)}") from None
    counters = Counters()
    stop = asyncio.Event()
    result: dict[str, float] = {}
    try:
        if o.scenario == "publish":
            tasks = [asyncio.ensure_future(publisher(o, counters, stop)) for _ in range(o.publishers)]
            start = time.monotonic()
            await asyncio.sleep(o.duration)
            stop.set()
            await asyncio.gather(*tasks)
            elapsed = time.monotonic() - start
            result["publish_rate"] = counters.published / elapsed
        elif o.scenario == "consume":
            fill = Counters()
            t0 = time.monotonic()
            per = o.count // o.publishers
            await asyncio.gather(*(publisher(o, fill, asyncio.Event(), per) for _ in range(o.publishers)))
            result["fill_rate"] = per * o.publishers / (time.monotonic() - t0)
            c = await BenchClient.connect(o.url)
            target = per * o.publishers
            # wait until the broker has taken every message
            for _ in range(600):
                c.send(1, spec.QueueDeclare(queue=o.queue, passive=True))
                ok = await c.expect(spec.QueueDeclareOk)
                assert isinstance(ok, spec.QueueDeclareOk)
                if ok.message_count >= target:
                    break
                await asyncio.sleep(0.1)
            await c.close()
            start = time.monotonic()
            tasks = [asyncio.ensure_future(consumer(o, counters, stop)) for _ in range(o.consumers)]
            while counters.consumed < target and time.monotonic() - start < o.duration * 10:
                await asyncio.sleep(0.005)
            elapsed = time.monotonic() - start
            stop.set()
            await asyncio.gather(*tasks)
            result["consume_rate"] = counters.consumed / elapsed
        else:
            tasks = [asyncio.ensure_future(consumer(o, counters, stop)) for _ in range(o.consumers)]
            await asyncio.sleep(0.2)
            tasks += [asyncio.ensure_future(publisher(o, counters, stop)) for _ in range(o.publishers)]
            start = time.monotonic()
            await asyncio.sleep(o.duration)
            elapsed = time.monotonic() - start
            stop.set()
            await asyncio.gather(*tasks)
            result["publish_rate"] = counters.published / elapsed
            result["consume_rate"] = counters.consumed / elapsed
    finally:
        await _delete(o.url, o.queue)
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=BenchOptions.url)
    p.add_argument("scenario", nargs="?", default="pubsub", choices=["publish", "consume", "pubsub"])
    p.add_argument("--publishers", type=int, default=1)
    p.add_argument("--consumers", type=int, default=1)
    p.add_argument("--size", type=int, default=16, help="body size in bytes")
    p.add_argument("--duration", type=float, default=10.0, help="seconds")
    p.add_argument("--count", type=int, default=200_000, help="messages to fill (consume)")
    p.add_argument("--confirm", type=int, default=0, help="max unconfirmed per publisher")
    p.add_argument("--prefetch", type=int, default=1000, help="0 for no-ack consumers")
    p.add_argument("--persistent", action="store_true")
    p.add_argument("--queue-type", choices=["classic", "quorum"], default="classic",
                   help="quorum: a replicated queue (in a cluster: confirms wait for its followers)")
    p.add_argument("--consume-url", default="",
                   help="consumers connect here (e.g. another node of a cluster); default: --url")


def main(args: argparse.Namespace) -> int:
    o = BenchOptions(url=args.url, scenario=args.scenario, publishers=args.publishers,
                     consumers=args.consumers, size=args.size, duration=args.duration,
                     count=args.count, confirm=args.confirm, prefetch=args.prefetch,
                     persistent=args.persistent, queue_type=args.queue_type,
                     consume_url=args.consume_url)
    try:
        result = asyncio.run(run(o))
    except CannotConnect as exc:
        print(f"hare bench: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"hare bench: connection to {_safe_url(o.url)} failed: {_reason(exc)}", file=sys.stderr)
        return 1
    for key, value in result.items():
        print(f"{key}: {value:.0f} msg/s")
    return 0
