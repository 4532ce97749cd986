"""A queue log on a full disk (the FUSE file system of tests/lazyfs.py, given a capacity): appends
go on past a segment's end without I/O, what cannot be written stays buffered and is read back
from memory, the store reports the failure once and confirms nothing until it is all written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lazyfs import LazyFS, mounted, unavailable

from hare.store import queue_log
from hare.store.message_store import MessageStore
from hare.store.segment import FLAG_PERSISTENT, decode_message

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=f"no FUSE file system: {unavailable()}")

ROUTE = b"\x02ex\x03key"


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[LazyFS]:
    with mounted(tmp_path / "mnt") as lazy:
        yield lazy


def test_a_log_on_a_full_disk_keeps_its_records_and_writes_them_later(
        fs: LazyFS, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_log, "SEGMENT_SIZE", 2048)
    data = fs.mountpoint / "data"
    store = MessageStore(data)
    errors: list[OSError] = []
    store.on_write_error = errors.append
    qlog = store.open_log("/", "q", True)
    store.sync_now()
    fs.fill()
    synced: list[int] = []
    for i in range(20):  # 20 x 300 bytes: past three segment ends
        qlog.append(i, 0, FLAG_PERSISTENT, ROUTE, b"", bytes([i]) * 300)
        if i % 5 == 4:
            store.after_sync(lambda i=i: synced.append(i))
            store.flush()
    assert store.write_error is not None and errors and errors[0].errno == 28
    assert store.start_sync() is None and not synced  # nothing is confirmed
    got = [decode_message(p)[7] for _, p in qlog.read(100, 1 << 20)]  # read back from memory
    assert got == [bytes([i]) * 300 for i in range(20)]
    for i in range(5):
        qlog.ack(i)
    store.flush()

    fs.set_capacity(None)  # space returns
    store.sync_now()
    assert store.write_error is None and synced == [4, 9, 14, 19]
    qdir = qlog.dir
    store.close()
    assert not list(qdir.glob("*.tmp"))
    again = MessageStore(data).recover_log("/", "q")
    assert again is not None
    assert [decode_message(p)[7] for _, p in again.read(100, 1 << 20)] == [
        bytes([i]) * 300 for i in range(5, 20)]
