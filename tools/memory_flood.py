"""What takes memory in hare under a flood, with and without the memory alarm.

Runs a fresh `hare serve` per scenario, floods it from raw sockets, and samples the broker's RSS
(/proc/PID/statm) every 20 ms. Scenarios:

- backlog:  4 publishers send 256 KiB messages round-robin to 32 queues nobody consumes
- unacked:  the same into one queue whose consumer reads every delivery and never acks
- bodies:   40 connections each publish one 64 MiB message, in 128 KiB frames
- conns:    RSS per open connection (2000 connections, one channel each; the alarm does not apply)

    python tools/memory_flood.py [--watermark-mib 64] [--seconds 6] [scenario ...]

The watermark is the idle broker's RSS plus --watermark-mib; "off" runs use a watermark of the
whole RAM. Numbers are MiB.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from rawamqp import RawClient  # noqa: E402

from hare.amqp import spec  # noqa: E402
from hare.amqp.frames import method_frame, pack_header  # noqa: E402

MiB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    def __init__(self, tmp: Path, config: str) -> None:
        self.port = free_port()
        conf = tmp / f"{self.port}.conf"
        conf.write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\ndata_dir = {tmp / str(self.port)}\n"
                        f"{config}")
        self.log = tmp / f"{self.port}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "hare", "serve", "--config", str(conf),
                                          "--log-level", "info"], stdout=log, stderr=log)
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.3)
        self.peak = 0
        self.sampling = True
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE

    def _sample(self) -> None:
        while self.sampling:
            try:
                self.peak = max(self.peak, self.rss())
            except OSError:
                return
            time.sleep(0.02)

    def client(self) -> RawClient:
        c = RawClient("127.0.0.1", self.port, timeout=30)
        c.handshake()
        c.open_channel(1)
        return c

    def stop(self) -> str:
        self.sampling = False
        self.proc.terminate()
        self.proc.wait(20)
        return self.log.read_text()


def publish_frames(queue: str, body: bytes, frame: int = 131072 - 8) -> bytes:
    out = method_frame(1, spec.BasicPublish(exchange="", routing_key=queue))
    header = b"\x00\x3c\x00\x00" + len(body).to_bytes(8, "big") + b"\x00\x00"
    out += pack_header(2, 1, len(header)) + header + b"\xce"
    for i in range(0, len(body), frame):
        part = body[i : i + frame]
        out += pack_header(3, 1, len(part)) + part + b"\xce"
    return out


def flood(node: Node, queues: list[str], size: int, seconds: float, publishers: int) -> None:
    stop = time.monotonic() + seconds

    def run(k: int) -> None:
        c = node.client()
        c.sock.settimeout(0.5)
        body = os.urandom(size)
        i = k
        try:
            while time.monotonic() < stop:
                c.send(publish_frames(queues[i % len(queues)], body))
                i += 1
        except (OSError, TimeoutError):
            pass  # blocked: the socket is not read any more

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(publishers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 5)


def scenario_backlog(node: Node, seconds: float) -> None:
    admin = node.client()
    queues = [f"q{i}" for i in range(32)]
    for q in queues:
        admin.send_method(1, spec.QueueDeclare(queue=q))
        admin.expect(spec.QueueDeclareOk)
    flood(node, queues, 256 << 10, seconds, 4)


def scenario_unacked(node: Node, seconds: float) -> None:
    consumer = node.client()
    consumer.send_method(1, spec.QueueDeclare(queue="u"))
    consumer.expect(spec.QueueDeclareOk)
    consumer.send_method(1, spec.BasicConsume(queue="u"))
    consumer.expect(spec.BasicConsumeOk)
    done = threading.Event()

    def read() -> None:  # read everything, ack nothing
        consumer.sock.settimeout(0.5)
        while not done.is_set():
            try:
                if not consumer.sock.recv(1 << 20):
                    return
            except (TimeoutError, OSError):
                continue

    t = threading.Thread(target=read, daemon=True)
    t.start()
    flood(node, ["u"], 256 << 10, seconds, 4)
    done.set()


def scenario_bodies(node: Node, seconds: float) -> None:
    admin = node.client()
    admin.send_method(1, spec.QueueDeclare(queue="b"))
    admin.expect(spec.QueueDeclareOk)
    body = os.urandom(64 * MiB)
    frames = publish_frames("b", body)
    stop = time.monotonic() + seconds

    def run() -> None:
        c = node.client()
        c.sock.settimeout(0.5)
        view = memoryview(frames)
        sent = 0
        try:
            while sent < len(view) and time.monotonic() < stop:
                sent += c.sock.send(view[sent : sent + (256 << 10)])
        except (OSError, TimeoutError):
            pass
        while time.monotonic() < stop:
            time.sleep(0.05)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 5)


def scenario_conns(node: Node, _seconds: float) -> None:
    before = node.rss()
    clients = [node.client() for _ in range(2000)]
    time.sleep(0.5)
    after = node.rss()
    print(f"    2000 connections: {(after - before) / MiB:.1f} MiB, "
          f"{(after - before) / 2000 / 1024:.1f} KiB each")
    for c in clients:
        c.close()


SCENARIOS = {"backlog": scenario_backlog, "unacked": scenario_unacked, "bodies": scenario_bodies,
             "conns": scenario_conns}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--watermark-mib", type=int, default=64)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="hare-flood-") as tmp_dir:
        tmp = Path(tmp_dir)
        idle = Node(tmp, "")
        base = idle.rss()
        idle.stop()
        print(f"idle hare serve: {base / MiB:.1f} MiB; watermark when on: "
              f"{base / MiB + args.watermark_mib:.1f} MiB")
        for name in args.scenarios:
            for alarm in (False, True) if name != "conns" else (True,):
                config = (f"vm_memory_high_watermark.absolute = {base + args.watermark_mib * MiB}\n"
                          if alarm else "vm_memory_high_watermark.relative = 1.0\n")
                node = Node(tmp, config)
                SCENARIOS[name](node, args.seconds)
                time.sleep(0.3)
                end = node.rss()
                log = node.stop()
                sets = log.count("memory resource limit alarm set")
                print(f"{name:8} alarm {'on ' if alarm else 'off'}: peak {node.peak / MiB:7.1f}  "
                      f"at end {end / MiB:7.1f}  (alarm set {sets} times)")


if __name__ == "__main__":
    main()
