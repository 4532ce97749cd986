"""Shared test helpers. The broker fixtures (hare_url, hare_broker, hare_broker_factory) come
from hare's own pytest plugin (hare.testing.plugin)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pika
import pytest


@pytest.fixture
def qname() -> str:
    """A queue name no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def connection(hare_url: str) -> Iterator[pika.BlockingConnection]:
    conn = pika.BlockingConnection(pika.URLParameters(hare_url))
    yield conn
    if conn.is_open:
        conn.close()


@pytest.fixture
def channel(connection: pika.BlockingConnection) -> pika.adapters.blocking_connection.BlockingChannel:
    return connection.channel()
