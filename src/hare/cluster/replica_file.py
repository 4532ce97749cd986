"""A replicated queue's frames on this node's disk: its replica file.

``<data_dir>/replicas/<hash>.log`` holds the frames as the leader sent them (a leader writes its
own). A snapshot (RESET .. END) is written to a new file that replaces the old one once synced,
so a node cut off mid-snapshot keeps its last whole state; a file past COMPACT_BYTES and four
times what is live is rewritten as a snapshot. Written and synced in a thread, one writer at a
time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

from .replication import END, RESET, FrameReader, ReplicaState, ReplicationError

log = logging.getLogger("hare.cluster")

COMPACT_BYTES = 64 << 20  # a replica file this big, and 4x what is live, is rewritten


class ReplicaFile:
    """A replicated queue's frames on this node's disk (appended, synced on demand)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_suffix(".tmp")
        self.fd: int | None = None
        self.snapshot_fd: int | None = None  # a snapshot being written (to self.tmp)
        self.dirty = False
        self.size = 0  # bytes in the current file (since its last snapshot)
        self.lock = threading.Lock()  # one writer at a time (a follower's last write, a new leader's)
        self.removed = False  # the queue went (or this node left its group): write no more

    def load(self) -> ReplicaState:
        state = ReplicaState()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return state
        self.size = len(data)
        reader = FrameReader()
        try:
            for kind, payload in reader.feed(data):
                state.apply(kind, payload)
        except (ReplicationError, ValueError, IndexError) as exc:  # a torn tail: what was whole
            log.warning("replica file %s: %s; kept what came before", self.path, exc)
        if state.snapshotting:  # (a snapshot never ended in this file: it was not whole)
            state._next = None
        return state

    def write(self, frames: list[bytes]) -> None:
        """Append (one write for each run of frames), switching files at a snapshot's RESET and END."""
        run: list[bytes] = []
        for data in frames:
            kind = data[4]
            if kind != RESET and kind != END:
                run.append(data)
                continue
            if run:
                self._append(run)
                run = []
            if kind == RESET:
                if self.snapshot_fd is not None:
                    os.close(self.snapshot_fd)
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.snapshot_fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                self.size = 0
            fd = self.snapshot_fd if self.snapshot_fd is not None else self._fd()
            os.write(fd, data)
            self.dirty = True
            self.size += len(data)
            if kind == END and self.snapshot_fd is not None:
                os.fsync(self.snapshot_fd)
                os.close(self.snapshot_fd)
                self.snapshot_fd = None
                os.replace(self.tmp, self.path)
                _sync_dir(self.path.parent)
                if self.fd is not None:
                    os.close(self.fd)
                self.fd = None
        if run:
            self._append(run)

    def _append(self, frames: list[bytes]) -> None:
        fd = self.snapshot_fd if self.snapshot_fd is not None else self._fd()
        data = b"".join(frames)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        self.dirty = True
        self.size += len(data)

    def _fd(self) -> int:
        if self.fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.exists()
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            if fresh:
                _sync_dir(self.path.parent)
        return self.fd

    def wants_compaction(self, state: ReplicaState) -> bool:
        if self.size < COMPACT_BYTES or state.snapshotting:
            return False
        return self.size > 4 * state.bytes

    def write_and_sync(self, frames: list[bytes]) -> None:
        """(In a thread.) ``frames``, then a sync."""
        with self.lock:
            if self.removed:
                return  # (a write still on its way when the queue went)
            self.write(frames)
            self.sync()

    def sync(self) -> None:
        if self.dirty and self.fd is not None:
            self.dirty = False
            os.fdatasync(self.fd)  # (the file only grows: its size is what metadata it needs)

    def close(self) -> None:
        for fd in (self.fd, self.snapshot_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd = self.snapshot_fd = None

    def remove(self) -> None:
        with self.lock:  # (after a write in a thread, and no write after)
            self.removed = True
            self.close()
            for path in (self.path, self.tmp):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["ReplicaFile", "COMPACT_BYTES"]
