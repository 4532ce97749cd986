"""Plain helpers shared by the test modules (``from support import ...``); the fixtures built on
them are in conftest.py, the raw-socket client in rawamqp.py."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import ChannelClosedByBroker

EXTERNAL = bool(os.environ.get("HARE_TEST_URL"))  # the tests run against another broker (RabbitMQ)
hare_only = pytest.mark.skipif(EXTERNAL, reason="needs a private hare")


def unique_name(prefix: str = "test") -> str:
    """A queue or exchange name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# -- pika BlockingConnection ------------------------------------------------------------------------


def connect(url: str) -> BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url))


@contextmanager
def deleted_after(conn: BlockingConnection, kind: Literal["queue", "exchange"]) -> Iterator[list[str]]:
    """A list of queue (or exchange) names, each deleted on ``conn`` at the end of the block."""
    names: list[str] = []
    yield names
    if conn.is_open:
        ch = conn.channel()
        delete = ch.queue_delete if kind == "queue" else ch.exchange_delete
        for name in names:
            delete(name)
        ch.close()


def closed_with(ch: BlockingChannel, call: Callable, *args, **kwargs) -> ChannelClosedByBroker:
    """Run ``call``: it must close ``ch`` with a channel error, which is returned."""
    with pytest.raises(ChannelClosedByBroker) as info:
        call(*args, **kwargs)
    assert not ch.is_open
    return info.value


def temp_queue(ch: BlockingChannel) -> str:
    return ch.queue_declare("", exclusive=True).method.queue


def get_all(ch: BlockingChannel, queue: str) -> list[tuple[bytes, bool]]:
    """Drain a queue with basic.get (auto-ack): [(body, redelivered)]."""
    out = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((body, method.redelivered))


def drain(ch: BlockingChannel, queue: str) -> list[bytes]:
    """Drain a queue with basic.get (auto-ack): the bodies."""
    return [body for body, _redelivered in get_all(ch, queue)]


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


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``cond`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


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


# -- other ------------------------------------------------------------------------------------------


class ErrorLog(logging.Handler):
    """Keeps the records of level ERROR and above that reach the loggers it is added to."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run an async test body on a fresh event loop, 20 s at the most."""

    async def main() -> Any:
        return await asyncio.wait_for(coro_fn(), 20)

    return asyncio.run(main())
