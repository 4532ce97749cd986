"""Helpers shared by the receive-side tests (test_delivery.py, test_acks.py)."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from rawamqp import RawClient

from hare.amqp import spec


class Delivery(NamedTuple):
    method: Any  # pika.spec.Basic.Deliver
    properties: pika.BasicProperties
    body: bytes


class Inbox:
    """A pika on_message_callback that keeps what it receives; waits by pumping the connection."""

    def __init__(self, conn: BlockingConnection) -> None:
        self.conn = conn
        self.got: list[Delivery] = []

    def __call__(self, ch: BlockingChannel, method: Any, props: pika.BasicProperties, body: bytes) -> None:
        self.got.append(Delivery(method, props, body))

    @property
    def bodies(self) -> list[bytes]:
        return [d.body for d in self.got]

    @property
    def tags(self) -> list[int]:
        return [d.method.delivery_tag for d in self.got]

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Delivery]:
        """Pump until at least ``n`` deliveries arrived (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        while len(self.got) < n:
            assert time.monotonic() < deadline, f"got {len(self.got)} deliveries, expected {n}"
            self.conn.process_data_events(time_limit=0.02)
        return self.got

    def quiet(self, seconds: float = 0.3) -> list[Delivery]:
        """Pump for a while: what arrived by then (to check that nothing more comes)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.conn.process_data_events(time_limit=0.02)
        return self.got


def wait_total(inboxes: list[Inbox], n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(len(i.got) for i in inboxes) < n:
        assert time.monotonic() < deadline, f"{[len(i.got) for i in inboxes]} deliveries, expected {n}"
        inboxes[0].conn.process_data_events(time_limit=0.02)


def connect(url: str) -> BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url))


def publish(ch: BlockingChannel, routing_key: str, *bodies: bytes, exchange: str = "",
            properties: pika.BasicProperties | None = None) -> None:
    """Publish on a channel in confirm mode: each message is in its queues when this returns."""
    for body in bodies:
        ch.basic_publish(exchange, routing_key, body, properties)


def ready(conn: BlockingConnection, queue: str) -> int:
    """The queue's ready message count (passive declare on a fresh channel)."""
    ch = conn.channel()
    count = ch.queue_declare(queue, passive=True).method.message_count
    ch.close()
    return count


def wait_ready(conn: BlockingConnection, queue: str, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while (have := ready(conn, queue)) != n:
        assert time.monotonic() < deadline, f"{have} ready messages in {queue}, expected {n}"
        time.sleep(0.02)


def get_all(ch: BlockingChannel, queue: str) -> list[tuple[bytes, bool]]:
    """Drain a queue with basic.get (auto-ack): [(body, redelivered)]."""
    out = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((body, method.redelivered))


def raw_client(url: str, channels: int = 1, capabilities: dict[str, Any] | None = None) -> RawClient:
    c = RawClient.from_url(url)
    c.handshake(capabilities=capabilities)
    for n in range(1, channels + 1):
        c.open_channel(n)
    return c


def raw_deliveries(c: RawClient, n: int) -> list[tuple[spec.BasicDeliver, bytes]]:
    out = []
    for _ in range(n):
        m = c.expect(spec.BasicDeliver)
        assert isinstance(m, spec.BasicDeliver)
        out.append((m, c.read_content()[1]))
    return out
