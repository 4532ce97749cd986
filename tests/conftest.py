"""Shared fixtures. The broker fixtures (hare_url, hare_broker, hare_broker_factory) come from
hare's own pytest plugin (hare.testing.plugin); plain helpers are in support.py and rawamqp.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from rawamqp import RawClient, raw_client
from support import connect, deleted_after, unique_name
from tlscerts import Certs, make_certs


@pytest.fixture
def qname() -> str:
    """A queue name no other test uses."""
    return unique_name()


def _open(url: str) -> Iterator[BlockingConnection]:
    conn = connect(url)
    yield conn
    if conn.is_open:
        conn.close()


@pytest.fixture
def connection(hare_url: str) -> Iterator[BlockingConnection]:
    yield from _open(hare_url)


@pytest.fixture
def other_connection(hare_url: str) -> Iterator[BlockingConnection]:
    """A second connection, beside ``connection``."""
    yield from _open(hare_url)


@pytest.fixture
def admin(hare_url: str) -> Iterator[BlockingConnection]:
    """A connection of its own for the test's side work (declare, inspect, delete)."""
    yield from _open(hare_url)


@pytest.fixture
def channel(connection: BlockingConnection) -> BlockingChannel:
    return connection.channel()


@pytest.fixture
def pub(admin: BlockingConnection) -> BlockingChannel:
    """A publisher channel in confirm mode (see support.publish())."""
    ch = admin.channel()
    ch.confirm_delivery()
    return ch


@pytest.fixture
def make_queue(admin: BlockingConnection) -> Iterator[Callable[[], str]]:
    """Declare plain (shared, not exclusive) queues that are deleted after the test."""
    with deleted_after(admin, "queue") as names:

        def make() -> str:
            name = unique_name()
            ch = admin.channel()
            ch.queue_declare(name)
            ch.close()
            names.append(name)
            return name

        yield make


@pytest.fixture
def queue(make_queue: Callable[[], str]) -> str:
    return make_queue()


@pytest.fixture
def raw(hare_url: str) -> Iterator[RawClient]:
    """A raw-socket client past the handshake, with channel 1 open."""
    c = raw_client(hare_url)
    yield c
    c.close()


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """Certificates made for this test session (tests/tlscerts.py)."""
    return make_certs(tmp_path_factory.mktemp("tls"))
