"""Fixtures of the receive-side tests, loaded with ``pytest_plugins = ["delivery_fixtures"]``."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from delivery_support import connect
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection


@pytest.fixture
def admin(hare_url: str) -> Iterator[BlockingConnection]:
    """A connection of its own for the test's side work (declare, inspect, delete)."""
    conn = connect(hare_url)
    yield conn
    if conn.is_open:
        conn.close()


@pytest.fixture
def pub(admin: BlockingConnection) -> BlockingChannel:
    """A publisher channel in confirm mode (see publish())."""
    ch = admin.channel()
    ch.confirm_delivery()
    return ch


@pytest.fixture
def make_queue(admin: BlockingConnection) -> Iterator[Callable[[], str]]:
    """Declare plain queues that are deleted after the test."""
    names: list[str] = []

    def make() -> str:
        name = f"test-{uuid.uuid4().hex[:12]}"
        ch = admin.channel()
        ch.queue_declare(name)
        ch.close()
        names.append(name)
        return name

    yield make
    if admin.is_open:
        ch = admin.channel()
        for name in names:
            ch.queue_delete(name)
        ch.close()


@pytest.fixture
def queue(make_queue: Callable[[], str]) -> str:
    return make_queue()
