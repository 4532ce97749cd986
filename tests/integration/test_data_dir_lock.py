"""One broker per data directory: a second broker on a directory in use refuses to start, naming
the holder's pid, and the directory is free again once the first one is gone."""

from __future__ import annotations

import os
from pathlib import Path

import pika
import pytest
from hare_node import HareNode
from support import run

from hare.broker.broker import Broker
from hare.store.lock import LOCK_NAME, DataDirLocked
from hare.testing import AsyncBroker, EmbeddedBroker

pytestmark = pytest.mark.skipif(bool(os.environ.get("HARE_TEST_URL")), reason="runs private hares")


def declare_and_publish(url: str, queue: str, body: bytes) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(queue, durable=True)
        ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
    finally:
        conn.close()


def test_second_hare_serve_on_one_data_dir_exits_naming_the_holder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = HareNode(data, tmp_path / "first.log").start()
    try:
        declare_and_publish(first.url, "kept", b"one")
        second = HareNode(data, tmp_path / "second.log")
        proc = second.spawn()
        try:
            rc = proc.wait(30)
        finally:
            second.kill()
        out = second.log.read_text()
        assert rc != 0, out
        assert "hare: cannot start:" in out, out
        assert f"pid {first.proc.pid}" in out, out
        assert str(data) in out, out
        assert first.proc.poll() is None  # the first broker goes on, its data untouched
        conn = pika.BlockingConnection(pika.URLParameters(first.url))
        ch = conn.channel()
        assert ch.queue_declare("kept", durable=True, passive=True).method.message_count == 1
        conn.close()
    finally:
        first.stop()
    # the first one stopped: its lock went with it, a new broker starts on the same data
    third = HareNode(data, tmp_path / "third.log").start()
    try:
        conn = pika.BlockingConnection(pika.URLParameters(third.url))
        ch = conn.channel()
        assert ch.queue_declare("kept", durable=True, passive=True).method.message_count == 1
        conn.close()
    finally:
        third.stop()


def test_killed_holder_does_not_keep_the_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = HareNode(data, tmp_path / "first.log").start()
    first.kill()
    assert (data / LOCK_NAME).exists()  # a stale file: no lock held
    second = HareNode(data, tmp_path / "second.log").start()
    second.stop()


def test_two_embedded_brokers_on_one_data_dir(tmp_path: Path) -> None:
    with EmbeddedBroker(data_dir=tmp_path) as first:
        declare_and_publish(first.url, "kept", b"one")
        with pytest.raises(DataDirLocked, match=f"pid {os.getpid()}"):
            EmbeddedBroker(data_dir=tmp_path)
        with pytest.raises(DataDirLocked, match="in use by another broker"):
            Broker(data_dir=tmp_path)
        # refused before touching anything: the first broker's data is whole
        declare_and_publish(first.url, "kept", b"two")
    # closed: the lock is released, the next broker starts and finds both messages
    with EmbeddedBroker(data_dir=tmp_path) as again:
        conn = pika.BlockingConnection(pika.URLParameters(again.url))
        ch = conn.channel()
        assert ch.queue_declare("kept", durable=True, passive=True).method.message_count == 2
        conn.close()


def test_async_brokers_on_one_data_dir(tmp_path: Path) -> None:
    async def body() -> None:
        async with AsyncBroker(data_dir=tmp_path):
            with pytest.raises(DataDirLocked):
                AsyncBroker(data_dir=tmp_path)
        async with AsyncBroker(data_dir=tmp_path):
            pass

    run(body)


def test_failed_start_releases_the_lock(tmp_path: Path) -> None:
    (tmp_path / "definitions.sqlite3").write_bytes(b"not a database" * 100)
    with pytest.raises(Exception):  # noqa: B017 - whatever SQLite says
        Broker(data_dir=tmp_path)
    (tmp_path / "definitions.sqlite3").unlink()
    Broker(data_dir=tmp_path).close()
