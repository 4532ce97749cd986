"""kill -9 of a real `hare serve` process while confirmed persistent publishes flow: after a restart
on the same data directory every confirmed message is there (several rounds, with consumers
acking part of the messages in between)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import lazyfs
import pytest
from rawamqp import Closed, RawClient

from hare.amqp import spec

pytestmark = pytest.mark.skipif(bool(os.environ.get("HARE_TEST_URL")), reason="kills a private hare")

QUEUE = "crash-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """`hare serve` in a child process."""

    def __init__(self, data_dir: Path, log: Path | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = log or data_dir.parent / "hare.log"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hare", "serve", "--bind", "127.0.0.1", "--port", str(self.port),
                 "--data-dir", str(self.data_dir), "--log-level", "warning"],
                stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("hare did not start listening")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def client(self) -> RawClient:
        c = RawClient("127.0.0.1", self.port, timeout=10)
        c.handshake()
        c.open_channel(1)
        return c


def publish_until_killed(node: Node, first_id: int, confirmed: list[int]) -> None:
    """Publish persistent messages in pipelined batches with confirms; record confirmed ids."""
    try:
        c = node.client()
        c.send_method(1, spec.ConfirmSelect())
        c.expect(spec.ConfirmSelectOk)
        tag = 0  # delivery tag n is message id first_id + n - 1
        acked = 0
        next_id = first_id
        while True:
            for _ in range(50):
                c.publish(1, "", QUEUE, b"%d" % next_id, {"delivery_mode": 2})
                next_id += 1
                tag += 1
            while acked < tag:
                _ch, m = c.read_method(timeout=10)
                assert isinstance(m, spec.BasicAck), m
                upto = m.delivery_tag if m.multiple else m.delivery_tag
                assert upto > acked or not m.multiple
                if m.multiple:
                    confirmed.extend(range(first_id + acked, first_id + upto))
                    acked = upto
                else:
                    assert upto == acked + 1, "confirms arrive in order"
                    confirmed.append(first_id + acked)
                    acked = upto
    except (Closed, OSError, TimeoutError):
        return


def take_all(node: Node) -> list[tuple[int, bool, int]]:
    """Every message now in the queue, left unacked: (id, redelivered, delivery tag)."""
    c = node.client()
    c.send_method(1, spec.QueueDeclare(queue=QUEUE, durable=True))
    ok = c.expect(spec.QueueDeclareOk)
    out = []
    for _ in range(ok.message_count):
        c.send_method(1, spec.BasicGet(queue=QUEUE))
        m = c.expect(spec.BasicGetOk)
        _props, body = c.read_content()
        out.append((int(body), m.redelivered, m.delivery_tag))
    c.send_method(1, spec.BasicGet(queue=QUEUE))
    c.expect(spec.BasicGetEmpty)
    node.consumer = c  # type: ignore[attr-defined]
    return out


class Disk(NamedTuple):
    data_dir: Path
    cut: Callable[[], None]  # what follows a kill -9
    power_loss: bool


@pytest.fixture(params=["kill", "power-loss"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Disk]:
    """A data directory, and what follows a kill -9: nothing, or, with the directory on a FUSE
    file system that forgets what was not fsynced (tests/lazyfs.py), the power goes too."""
    if request.param == "kill":
        yield Disk(tmp_path / "data", lambda: None, False)
        return
    with lazyfs.mounted(tmp_path / "mnt") as fs:
        yield Disk(fs.mountpoint / "data", fs.cut, True)


def test_confirmed_persistent_messages_survive_kill_9(tmp_path: Path, disk: Disk) -> None:
    node = Node(disk.data_dir, tmp_path / "hare.log")
    node.start()
    try:
        c = node.client()
        c.send_method(1, spec.QueueDeclare(queue=QUEUE, durable=True))
        c.expect(spec.QueueDeclareOk)
        c.close()
        rng = random.Random(20261124)
        confirmed_all: set[int] = set()
        acked_all: set[int] = set()
        next_id = 0
        for _round in range(3):
            confirmed: list[int] = []
            t = threading.Thread(target=publish_until_killed, args=(node, next_id, confirmed))
            t.start()
            deadline = time.monotonic() + 10
            while len(confirmed) < 2000 + rng.randrange(3000) and time.monotonic() < deadline:
                time.sleep(0.005)
            node.kill()
            disk.cut()
            t.join(10)
            assert confirmed, "nothing was confirmed before the kill"
            confirmed_all.update(confirmed)
            next_id += 1_000_000
            node.start()
            present = take_all(node)
            ids = [i for i, _, _ in present]
            if disk.power_loss:  # acks are not synced: a power loss may undo them (at least once)
                acked_all -= set(ids)
            missing = confirmed_all - acked_all - set(ids)
            assert not missing, f"{len(missing)} confirmed messages lost, e.g. {sorted(missing)[:5]}"
            assert len(ids) == len(set(ids)), "a message came back twice"
            fresh = [i for i, redelivered, _ in present if not redelivered]
            assert fresh == sorted(fresh), "queue order was lost"
            # a consumer acks about a third of them, then goes away (the rest is requeued)
            c = node.consumer  # type: ignore[attr-defined]
            for i, _, tag in present:
                if rng.random() < 0.33:
                    c.send_method(1, spec.BasicAck(delivery_tag=tag))
                    acked_all.add(i)
            c.send_method(1, spec.QueueDeclare(queue=QUEUE, durable=True, passive=True))
            c.expect(spec.QueueDeclareOk)
            c.close()
        # a clean restart keeps exactly the unacked ones
        node.stop()
        node.start()
        ids = {i for i, _, _ in take_all(node)}
        assert confirmed_all - acked_all <= ids
        assert not ids & acked_all, "acked messages came back after a clean shutdown"
        node.consumer.close()  # type: ignore[attr-defined]
    finally:
        node.stop()
