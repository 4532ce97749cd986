"""The memory alarm of a real `hare serve` process: over ``vm_memory_high_watermark`` its
publishers get connection.blocked and are not read; consumers go on; once they have drained the
backlog the memory falls under the watermark, the alarm clears and the publishers go on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pika
import pytest
from rawamqp import RawClient
from support import wait_until

from hare.amqp import spec
from hare.broker.broker import BrokerConfig
from hare.server.memory import high_watermark, total_memory
from hare.testing import EmbeddedBroker

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("HARE_TEST_URL")) or not Path("/proc/self/statm").exists(),
    reason="runs private hares, reads /proc")

MiB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """`hare serve` in a child process, with a config file."""

    def __init__(self, tmp: Path, config: str = "") -> None:
        self.port = free_port()
        self.log = tmp / f"hare-{self.port}.log"
        conf = tmp / f"hare-{self.port}.conf"
        conf.write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\ndata_dir = {tmp / 'data'}\n"
                        + config)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "hare", "serve", "--config", str(conf),
                                          "--log-level", "info"], stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("hare did not start listening")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def idle_rss(tmp: Path) -> int:
    """The RSS of a `hare serve` that has just started."""
    node = Node(tmp)
    try:
        time.sleep(0.3)
        return node.rss()
    finally:
        node.stop()


QUEUES = [f"mem-{i}" for i in range(4)]
BODY = os.urandom(MiB)


def publish_all(url: str, n: int, events: list[str], published: list[int]) -> None:
    """Publish ``n`` 1 MiB messages round-robin to QUEUES with confirms, recording blocked /
    unblocked as pika reports them (BlockingConnection runs those callbacks in
    process_data_events: here, after each confirmed publish)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    conn.add_on_connection_blocked_callback(lambda _c, m: events.append(f"blocked: {m.method.reason}"))
    conn.add_on_connection_unblocked_callback(lambda _c, _m: events.append("unblocked"))
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(n):
        ch.basic_publish("", QUEUES[i % len(QUEUES)], BODY)
        published.append(i)
        conn.process_data_events(0)
    conn.close()


def test_memory_alarm_blocks_a_pika_publisher_until_the_backlog_is_drained(tmp_path: Path) -> None:
    limit = idle_rss(tmp_path) + 40 * MiB
    node = Node(tmp_path, f"vm_memory_high_watermark.absolute = {limit}\n")
    try:
        admin = pika.BlockingConnection(pika.URLParameters(node.url))
        ch = admin.channel()
        for q in QUEUES:
            ch.queue_declare(q)
        events: list[str] = []
        published: list[int] = []
        n = 200  # 200 MiB: far over the watermark
        t = threading.Thread(target=publish_all, args=(node.url, n, events, published), daemon=True)
        t.start()
        wait_until(lambda: "memory resource limit alarm set" in node.log.read_text(), timeout=30)
        time.sleep(0.5)
        stalled = len(published)
        assert stalled < n
        time.sleep(1)
        assert len(published) == stalled  # the publisher is not read: no confirm comes
        assert node.rss() > limit
        assert "WARNING hare.broker: memory resource limit alarm set" in node.log.read_text()
        got = 0
        deadline = time.monotonic() + 60
        while got < n:
            assert time.monotonic() < deadline, f"{got} of {n} consumed, events {events}"
            for q in QUEUES:
                method, _props, body = ch.basic_get(q, auto_ack=True)
                if method is not None:
                    assert body == BODY
                    got += 1
            if got < len(published) - 8:
                continue
            admin.process_data_events(0.01)
        t.join(10)
        assert not t.is_alive()
        # pika saw connection.blocked, then connection.unblocked (as often as the backlog crossed
        # the watermark again)
        assert events[:2] == ["blocked: low on memory", "unblocked"], events
        assert events == ["blocked: low on memory", "unblocked"] * (len(events) // 2), events
        assert "INFO hare.broker: memory resource limit alarm cleared" in node.log.read_text()
        admin.close()
    finally:
        node.stop()


def raw(broker: EmbeddedBroker) -> RawClient:
    c = RawClient("127.0.0.1", broker.port)
    c.handshake()
    c.open_channel(1)
    return c


def test_a_zero_watermark_blocks_every_publisher_and_consumers_go_on(hare_broker_factory) -> None:
    """vm_memory_high_watermark.relative = 0 (RabbitMQ's way to stop all publishing): the alarm
    is on from the start; a publish is taken, then its connection is blocked; consumers are served.
    With the disk alarm on too, the reason names both, as RabbitMQ's does."""
    broker = hare_broker_factory(config=BrokerConfig(vm_memory_high_watermark=0.0))
    wait_until(lambda: "memory" in broker.broker.alarms)
    consumer = raw(broker)
    consumer.send_method(1, spec.QueueDeclare(queue="q"))
    consumer.expect(spec.QueueDeclareOk)
    consumer.send_method(1, spec.BasicConsume(queue="q", no_ack=True))
    consumer.expect(spec.BasicConsumeOk)
    publisher = raw(broker)
    publisher.publish(1, "", "q", b"taken")
    assert publisher.expect(spec.ConnectionBlocked).reason == "low on memory"
    consumer.expect(spec.BasicDeliver)
    assert consumer.read_content()[1] == b"taken"
    publisher.publish(1, "", "q", b"not read")
    with pytest.raises(TimeoutError):
        consumer.expect(spec.BasicDeliver, timeout=0.5)
    broker.call(lambda: setattr(broker.broker.config, "disk_free_limit", 10**18))
    wait_until(lambda: "disk" in broker.broker.alarms)
    other = raw(broker)
    other.publish(1, "", "q", b"x")
    assert other.expect(spec.ConnectionBlocked).reason == "low on disk & memory"
    for c in (consumer, publisher, other):
        c.close()


def test_the_rss_is_looked_at_again_after_a_share_of_the_watermark_is_read(hare_broker_factory,
                                                                          monkeypatch) -> None:
    """A flood can grow the RSS past the watermark between two timed looks: the input read counts
    too. No timed look here (an hour apart): only the 10 MiB read make the monitor look again,
    about once per MiB (the least step)."""
    import hare.server.memory as memory
    monkeypatch.setattr(memory, "CHECK_INTERVAL", 3600.0)
    monkeypatch.setattr(memory, "READ_SHARE", 1 << 30)  # the step: its least, 1 MiB
    broker = hare_broker_factory(config=BrokerConfig(vm_memory_high_watermark_absolute=1 << 40,
                                                     total_memory_available_override_value=1 << 41))
    monitor = broker._async.server.memory
    assert monitor.step == 1 << 20
    before = broker.call(lambda: monitor.looks)
    client = raw(broker)
    client.send_method(1, spec.QueueDeclare(queue="q"))
    client.expect(spec.QueueDeclareOk)
    for _ in range(80):
        client.publish(1, "", "q", b"x" * (128 << 10))
    client.send_method(1, spec.QueueDeclare(queue="q", passive=True))
    assert client.expect(spec.QueueDeclareOk).message_count == 80
    assert broker.call(lambda: monitor.looks) - before >= 8
    client.close()


def test_the_watermark_is_a_share_of_the_ram_or_an_absolute_size_capped_at_the_ram() -> None:
    ram = total_memory(BrokerConfig())
    with open("/proc/meminfo") as f:
        mem_total = int(f.readline().split()[1]) * 1024
    assert 0 < ram <= mem_total  # MemTotal, or the cgroup's limit if lower
    assert high_watermark(BrokerConfig()) == (int(0.4 * ram), ram)
    given = BrokerConfig(total_memory_available_override_value=1000, vm_memory_high_watermark=0.25)
    assert high_watermark(given) == (250, 1000)
    given.vm_memory_high_watermark_absolute = 600
    assert high_watermark(given) == (600, 1000)
    given.vm_memory_high_watermark_absolute = 5000  # as RabbitMQ: no more than the RAM
    assert high_watermark(given) == (1000, 1000)
