"""Hostile clients against an AMQP 0-9-1 broker: the load one client must not be able to hurt the
others with (issue 12). Each mode runs in threads of its own on raw sockets and reconnects when the
broker closes it, until ``--seconds`` have passed:

- topic-storm: binds ``#.#.#.#.#.#.#.#`` to a topic exchange and publishes 128-word routing keys
  (a different key each time, so no cache helps), a round trip after every few publishes
- never-ack:   a consumer with prefetch 0 (no limit) that reads every delivery and never acks,
  while another connection floods its queue with 1 KiB messages as fast as the broker reads
- never-read:  a client that consumes its own queue with prefetch 0 and publishes to it and
  mandatory messages nobody can route (each comes back as basic.return), and never reads its socket
- poison:      600-deep nested headers into a queue with a TTL and a dead-letter exchange (they
  expire and are dead-lettered), and headers with an unknown field-table type tag (RabbitMQ closes
  the connection with 541; a new connection sends the next one)
- big-bodies:  several connections each publishing persistent 20-50 MiB bodies to a durable queue
  in confirm mode

    python tools/hostile.py --url amqp://guest:guest@localhost:5672/ --seconds 30 --modes all

At the end it prints what each mode did (messages, bytes, reconnects, how the broker closed it,
the worst wait for an answer) and with ``--json PATH`` writes the same as JSON. It leaves nothing
behind but the durable queue ``hostile.big`` (x-expires: two minutes after the run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import string
import struct
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from rawamqp import Closed, RawClient, decode_method, host_port  # noqa: E402

from hare.amqp import spec  # noqa: E402
from hare.amqp.frames import method_frame, pack_header  # noqa: E402
from hare.amqp.properties import encode_properties  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
FRAME_MAX = 131072
TICK = 0.5  # how often a blocked send or read looks at the stop flag


class Stopped(Exception):
    """The run is over."""


class BrokerClosed(Exception):
    """The broker sent connection.close or channel.close."""

    def __init__(self, method: spec.ConnectionClose | spec.ChannelClose) -> None:
        kind = "connection" if isinstance(method, spec.ConnectionClose) else "channel"
        super().__init__(f"{kind} {method.reply_code} {method.reply_text}")


@dataclass
class Stats:
    """What one mode did."""

    messages: int = 0
    bytes: int = 0
    round_trips: int = 0
    worst_wait: float = 0.0  # the longest wait for an answer the broker owed (s)
    connections: int = 0
    closes: Counter[str] = field(default_factory=Counter)  # how the broker closed us, by reply
    errors: Counter[str] = field(default_factory=Counter)  # socket errors, timeouts
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sent(self, messages: int, nbytes: int) -> None:
        with self.lock:
            self.messages += messages
            self.bytes += nbytes

    def waited(self, seconds: float) -> None:
        with self.lock:
            self.round_trips += 1
            self.worst_wait = max(self.worst_wait, seconds)

    def unanswered(self, seconds: float) -> None:
        """The run ended while we waited: the wait so far counts."""
        with self.lock:
            self.worst_wait = max(self.worst_wait, seconds)

    def as_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "bytes": self.bytes, "round_trips": self.round_trips,
                "worst_wait_s": round(self.worst_wait, 3), "connections": self.connections,
                "closes": dict(self.closes), "errors": dict(self.errors)}


# -- the wire --------------------------------------------------------------------------------------


def props_bytes(props: dict[str, Any] | None = None) -> bytes:
    return encode_properties(props or {})


def publish_frames(exchange: str, routing_key: str, body: bytes, props: bytes = b"\x00\x00",
                   mandatory: bool = False, channel: int = 1) -> bytes:
    """basic.publish, its content header and body frames, as one string of octets."""
    out = [method_frame(channel, spec.BasicPublish(exchange=exchange, routing_key=routing_key,
                                                   mandatory=mandatory))]
    header = struct.pack(">HHQ", 60, 0, len(body)) + props
    out.append(pack_header(2, channel, len(header)) + header + b"\xce")
    step = FRAME_MAX - 8
    for i in range(0, len(body), step):
        part = body[i : i + step]
        out.append(pack_header(3, channel, len(part)) + part + b"\xce")
    return b"".join(out)


class Client(RawClient):
    """A raw AMQP connection whose sends and waits give up when the run stops."""

    def __init__(self, url: str, stop: threading.Event, stats: Stats) -> None:
        super().__init__(*host_port(url), timeout=10)
        self.stop = stop
        self.stats = stats
        self.handshake(frame_max=FRAME_MAX)
        self.open_channel(1)
        with stats.lock:
            stats.connections += 1

    def push(self, data: bytes | memoryview) -> None:
        """Send all of ``data``, however long the broker takes to read it (it may block us)."""
        view = memoryview(data)
        self.sock.settimeout(TICK)
        off = 0
        while off < len(view):
            if self.stop.is_set():
                raise Stopped
            try:
                off += self.sock.send(view[off:])
            except TimeoutError:
                continue

    def wait_for(self, cls: type[spec.Method], channel: int | None = None) -> spec.Method:
        """The next ``cls`` (skipping other frames) however long it takes, until the run stops;
        a connection.close or channel.close raises BrokerClosed."""
        start = time.monotonic()
        while True:
            if self.stop.is_set():
                self.stats.unanswered(time.monotonic() - start)
                raise Stopped
            try:
                ftype, ch, payload = self.read_frame(TICK)
            except TimeoutError:
                continue
            if ftype != 1:
                continue
            m = decode_method(payload)
            if isinstance(m, spec.ConnectionClose | spec.ChannelClose):
                if isinstance(m, spec.ConnectionClose):
                    self.send_method(0, spec.ConnectionCloseOk())
                raise BrokerClosed(m)
            if isinstance(m, cls) and (channel is None or ch == channel):
                self.stats.waited(time.monotonic() - start)
                return m

    def call(self, method: spec.Method, reply: type[spec.Method]) -> spec.Method:
        self.send_method(1, method)
        return self.wait_for(reply, 1)

    def ping(self) -> None:
        """A round trip: the broker has handled everything sent before."""
        self.call(spec.ExchangeDeclare(exchange="amq.direct", type="direct", passive=True),
                  spec.ExchangeDeclareOk)

    def discard_input(self) -> None:
        """Read and drop everything the broker sends (deliveries never acked), until the run stops
        or the broker closes the socket."""
        self.sock.settimeout(TICK)
        while not self.stop.is_set():
            try:
                if not self.sock.recv(1 << 20):
                    raise Closed("connection closed by the broker")
            except TimeoutError:
                continue
        raise Stopped


def uid() -> str:
    return uuid.uuid4().hex[:8]


# -- the modes -------------------------------------------------------------------------------------

Worker = Callable[[], None]  # one connection's life: returns or raises when it ends


class Mode:
    name = ""

    def __init__(self, url: str, stop: threading.Event, opts: argparse.Namespace) -> None:
        self.url = url
        self.stop = stop
        self.opts = opts
        self.stats = Stats()

    def connect(self) -> Client:
        return Client(self.url, self.stop, self.stats)

    def workers(self) -> list[tuple[str, Worker]]:
        raise NotImplementedError


class TopicStorm(Mode):
    name = "topic-storm"
    PATTERN = "#.#.#.#.#.#.#.#"

    def workers(self) -> list[tuple[str, Worker]]:
        return [(f"storm-{i}", self.storm) for i in range(self.opts.storm_connections)]

    def storm(self) -> None:
        c = self.connect()
        exchange = f"hostile.storm.{uid()}"
        c.call(spec.ExchangeDeclare(exchange=exchange, type="topic", auto_delete=True),
               spec.ExchangeDeclareOk)
        ok = c.call(spec.QueueDeclare(queue="", exclusive=True, arguments={"x-max-length": 1000}),
                    spec.QueueDeclareOk)
        assert isinstance(ok, spec.QueueDeclareOk)
        c.call(spec.QueueBind(queue=ok.queue, exchange=exchange, routing_key=self.PATTERN),
               spec.QueueBindOk)
        rng = random.Random()
        while True:
            batch = []
            for _ in range(10):
                key = ".".join(rng.choice(string.ascii_lowercase) for _ in range(128))  # 255 octets
                batch.append(publish_frames(exchange, key, b"storm"))
            data = b"".join(batch)
            c.push(data)
            self.stats.sent(len(batch), len(data))
            c.ping()


class NeverAck(Mode):
    name = "never-ack"
    BODY = 1 * KiB

    def workers(self) -> list[tuple[str, Worker]]:
        self.queue = f"hostile.unacked.{uid()}"
        self.ready = threading.Event()
        return [("never-ack-consumer", self.consumer), ("never-ack-flood", self.flood)]

    def consumer(self) -> None:
        c = self.connect()
        c.call(spec.BasicQos(prefetch_count=0), spec.BasicQosOk)
        c.call(spec.QueueDeclare(queue=self.queue, auto_delete=True), spec.QueueDeclareOk)
        c.call(spec.BasicConsume(queue=self.queue, no_ack=False), spec.BasicConsumeOk)
        self.ready.set()
        c.discard_input()

    def flood(self) -> None:
        while not self.ready.wait(TICK):
            if self.stop.is_set():
                raise Stopped
        c = self.connect()
        batch = publish_frames("", self.queue, os.urandom(self.BODY)) * 100
        while True:
            c.push(batch)
            self.stats.sent(100, len(batch))


class NeverRead(Mode):
    name = "never-read"
    BODY = 8 * KiB

    def workers(self) -> list[tuple[str, Worker]]:
        return [("never-read", self.never_read)]

    def never_read(self) -> None:
        c = self.connect()
        c.call(spec.BasicQos(prefetch_count=0), spec.BasicQosOk)
        ok = c.call(spec.QueueDeclare(queue="", exclusive=True), spec.QueueDeclareOk)
        assert isinstance(ok, spec.QueueDeclareOk)
        c.call(spec.BasicConsume(queue=ok.queue, no_ack=False), spec.BasicConsumeOk)
        body = os.urandom(self.BODY)
        nowhere = f"hostile.nowhere.{uid()}"
        batch = (publish_frames("amq.direct", nowhere, body, mandatory=True)
                 + publish_frames("", ok.queue, body)) * 50
        while True:  # from here on, nothing is read
            c.push(batch)
            self.stats.sent(100, len(batch))


def deep_headers(depth: int = 600) -> bytes:
    """Properties whose headers nest ``depth`` tables deep (RabbitMQ accepts them)."""
    table = b"\x00\x00\x00\x00"
    for _ in range(depth - 1):
        entry = b"\x01dF" + table
        table = struct.pack(">I", len(entry)) + entry
    entries = b"\x04deepF" + table + b"\x01kI\x00\x00\x00\x01"
    return b"\x20\x00" + struct.pack(">I", len(entries)) + entries


def bad_tag_headers() -> bytes:
    """Properties whose headers hold a value of type tag 'Z', which no field table knows
    (RabbitMQ closes the connection with 541 INTERNAL_ERROR)."""
    entries = b"\x01kI\x00\x00\x00\x01" + b"\x03badZ\x00\x00\x00\x00"
    return b"\x20\x00" + struct.pack(">I", len(entries)) + entries


class Poison(Mode):
    name = "poison"

    def workers(self) -> list[tuple[str, Worker]]:
        tag = uid()
        self.dlx, self.dead, self.ttl = (f"hostile.poison.dlx.{tag}", f"hostile.poison.dead.{tag}",
                                         f"hostile.poison.ttl.{tag}")
        self.ready = threading.Event()
        return [("poison-deep", self.deep), ("poison-bad-tag", self.bad_tag)]

    def declare(self, c: Client) -> None:
        c.call(spec.ExchangeDeclare(exchange=self.dlx, type="fanout"), spec.ExchangeDeclareOk)
        c.call(spec.QueueDeclare(queue=self.dead, arguments={"x-max-length": 100}), spec.QueueDeclareOk)
        c.call(spec.QueueBind(queue=self.dead, exchange=self.dlx, routing_key=""), spec.QueueBindOk)
        c.call(spec.QueueDeclare(queue=self.ttl, arguments={"x-message-ttl": 20,
                                                             "x-dead-letter-exchange": self.dlx}),
               spec.QueueDeclareOk)

    def deep(self) -> None:
        c = self.connect()
        self.declare(c)
        self.ready.set()
        frames = publish_frames("", self.ttl, b"deep poison", deep_headers())
        while True:
            c.push(frames * 10)
            self.stats.sent(10, 10 * len(frames))
            c.ping()
            self.stop.wait(0.1)

    def bad_tag(self) -> None:
        while not self.ready.wait(TICK):
            if self.stop.is_set():
                raise Stopped
        self.stop.wait(0.2)
        c = self.connect()
        frames = publish_frames("", self.ttl, b"bad-tag poison", bad_tag_headers())
        c.push(frames)
        self.stats.sent(1, len(frames))
        c.ping()  # raises BrokerClosed when the broker refuses it, as RabbitMQ does


class BigBodies(Mode):
    name = "big-bodies"
    QUEUE = "hostile.big"

    def workers(self) -> list[tuple[str, Worker]]:
        self.body = memoryview(random.randbytes(MiB) * self.opts.big_max_mib)
        return [(f"big-{i}", self.big) for i in range(self.opts.big_connections)]

    def big(self) -> None:
        c = self.connect()
        c.call(spec.ConfirmSelect(), spec.ConfirmSelectOk)
        props = props_bytes({"delivery_mode": 1 if self.opts.big_transient else 2})
        rng = random.Random()
        step = FRAME_MAX - 8
        while True:
            # declared again before each body: x-expires counts a declare as a use
            c.call(spec.QueueDeclare(queue=self.QUEUE, durable=True,
                                     arguments={"x-max-length": 2, "x-expires": 120_000}),
                   spec.QueueDeclareOk)
            size = rng.randint(self.opts.big_min_mib * MiB, self.opts.big_max_mib * MiB)
            c.push(method_frame(1, spec.BasicPublish(exchange="", routing_key=self.QUEUE)))
            header = struct.pack(">HHQ", 60, 0, size) + props
            c.push(pack_header(2, 1, len(header)) + header + b"\xce")
            for i in range(0, size, step):
                part = self.body[i : min(i + step, size)]
                c.push(pack_header(3, 1, len(part)) + part + b"\xce")
            self.stats.sent(1, size)
            c.wait_for(spec.BasicAck, 1)
            self.stop.wait(self.opts.big_pause)


MODES: dict[str, type[Mode]] = {m.name: m for m in (TopicStorm, NeverAck, NeverRead, Poison, BigBodies)}


# -- the runner ------------------------------------------------------------------------------------


def life(mode: Mode, name: str, worker: Worker) -> None:
    """Run ``worker`` again and again (a new connection each time) until the run stops."""
    while not mode.stop.is_set():
        try:
            worker()
        except Stopped:
            return
        except BrokerClosed as exc:
            with mode.stats.lock:
                mode.stats.closes[str(exc)] += 1
        except (OSError, Closed, AssertionError) as exc:  # TimeoutError is an OSError
            if mode.stop.is_set():
                return
            with mode.stats.lock:
                mode.stats.errors[f"{name}: {type(exc).__name__}: {exc}"[:160]] += 1
        mode.stop.wait(TICK)


def run(url: str, modes: list[str], seconds: float, opts: argparse.Namespace) -> dict[str, Any]:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    running = [MODES[name](url, stop, opts) for name in modes]
    threads = []
    for mode in running:
        for name, worker in mode.workers():
            t = threading.Thread(target=life, args=(mode, name, worker), name=name, daemon=True)
            t.start()
            threads.append(t)
    start = time.monotonic()
    try:
        stop.wait(seconds)
    except KeyboardInterrupt:
        pass
    stop.set()
    elapsed = time.monotonic() - start
    for t in threads:
        t.join(TICK * 4 + 2)
    return {"url": url, "seconds": round(elapsed, 1),
            "modes": {mode.name: mode.stats.as_dict() for mode in running},
            "stuck_threads": [t.name for t in threads if t.is_alive()]}


def report(result: dict[str, Any]) -> str:
    lines = [f"hostile run against {result['url']}: {result['seconds']} s"]
    for name, s in result["modes"].items():
        lines.append(f"  {name:12} {s['messages']:>9} messages {s['bytes'] / MiB:>9.1f} MiB sent, "
                     f"{s['connections']} connections, {s['round_trips']} round trips "
                     f"(worst wait {s['worst_wait_s']:.3f} s)")
        for text, n in {**s["closes"], **s["errors"]}.items():
            lines.append(f"  {'':12} {n:>5} x {text}")
    if result["stuck_threads"]:
        lines.append(f"  threads still running: {result['stuck_threads']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="amqp://guest:guest@localhost:5672/")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--modes", default="all",
                   help=f"all, none, or a comma-separated list of {', '.join(MODES)}")
    p.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    p.add_argument("--storm-connections", type=int, default=1)
    p.add_argument("--big-connections", type=int, default=3)
    p.add_argument("--big-min-mib", type=int, default=20)
    p.add_argument("--big-max-mib", type=int, default=50)
    p.add_argument("--big-transient", action="store_true",
                   help="big bodies are transient (delivery_mode 1): they page to disk, never synced")
    p.add_argument("--big-pause", type=float, default=1.0, help="seconds between a big body's confirm "
                   "and the next (per connection)")
    opts = p.parse_args(argv)
    if opts.modes == "all":
        modes = list(MODES)
    elif opts.modes in ("", "none"):
        modes = []
    else:
        modes = [m.strip() for m in opts.modes.split(",") if m.strip()]
        unknown = [m for m in modes if m not in MODES]
        if unknown:
            p.error(f"unknown mode(s) {', '.join(unknown)}: choose from {', '.join(MODES)}")
    result = run(opts.url, modes, opts.seconds, opts)
    print(report(result), flush=True)
    if opts.json:
        opts.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
