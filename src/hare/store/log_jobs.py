"""The work a queue log hands to the store's threads: large record writes and segment compactions.

``WriteJob`` writes a log's queued chunks (a ``BigRecord``'s body by reference, its CRC computed
in the thread) in the heavy lane's thread (``message_store.py``, "two lanes"); ``CompactJob``
rewrites one segment with only its live records in the compaction thread. Neither touches the
log's state while it runs: the log adopts their result on the event loop (``QueueLog.finish_write``,
``QueueLog.finish_compaction``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .segment import MAGIC, frame_record, message_position, scan

if TYPE_CHECKING:
    from .queue_log import QueueLog, Segment

_O_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


class BigRecord:
    """A large message record waiting for the store's thread: its head, and its body by reference."""

    __slots__ = ("head", "body", "checksum")

    def __init__(self, head: bytes, body: bytes, checksum: bool) -> None:
        self.head = head
        self.body = body
        self.checksum = checksum

    def framed(self) -> bytes:
        """The record's length, CRC and head (the body follows them in the file)."""
        return frame_record(self.head, self.body, self.checksum) + self.head


Chunk = bytes | bytearray | memoryview | BigRecord


class WriteJob:
    """A log's queued writes (QueueLog.wq), done in the store's worker thread: the same single
    thread as the group commit's syncs, so a sync started after a write covers it. When a write
    fails (a full disk), this job and every later one of the same log write nothing more (a hole
    in a segment would be corruption) and hand their chunks back: ``left``, written again later
    (QueueLog.finish_write); meanwhile no sync answers its waiters."""

    __slots__ = ("log", "chunks", "retry", "left", "error", "failed_logs")

    def __init__(self, qlog: QueueLog, chunks: list[tuple[int, Chunk]], retry: bool) -> None:
        self.log = qlog
        self.chunks = chunks
        self.retry = retry  # writes what failed before: the log's writes may go on
        self.left: list[tuple[int, Chunk]] = []
        self.error: OSError | None = None
        self.failed_logs = qlog.store.failed_logs  # (touched by the worker thread only)

    def run(self) -> None:
        failed = self.failed_logs
        qlog = self.log
        if qlog in failed and not self.retry:
            self.left = self.chunks
            return
        writer = _Writer(self.chunks)
        try:
            writer.run()
        except OSError as exc:
            self.error = exc
            self.left = writer.chunks
            failed.add(qlog)
            return
        failed.discard(qlog)


class _Writer:
    __slots__ = ("chunks",)

    def __init__(self, chunks: list[tuple[int, Chunk]]) -> None:
        self.chunks = chunks

    def run(self) -> None:
        chunks = self.chunks
        i = 0
        try:
            while i < len(chunks):
                fd, chunk = chunks[i]
                if type(chunk) is BigRecord:
                    chunks[i] = (fd, chunk.framed())
                    chunks.insert(i + 1, (fd, chunk.body))
                    continue
                view = memoryview(chunk)
                written = 0
                try:
                    while written < len(view):
                        written += os.write(fd, view[written:])
                finally:
                    if written < len(view):
                        chunks[i] = (fd, bytes(view[written:]))
                i += 1
        finally:
            self.chunks = chunks[i:]


def bit_set(bitmap: bytes | bytearray, i: int) -> bool:
    byte = i >> 3
    return byte < len(bitmap) and bool(bitmap[byte] & (1 << (i & 7)))


class CompactJob:
    """Rewrite one segment with only its live records, off the event loop: ``run`` touches no
    state of the log (it works from a snapshot of the acked bitmap, on a file nobody appends to);
    ``QueueLog.finish_compaction`` then adopts the result on the loop.

    The new file is written beside the old one, synced, renamed over it, and the directory
    synced; only then (on the loop) is the ack file emptied: a crash in between leaves acks of
    records that are gone, which recovery ignores."""

    __slots__ = ("log", "seg", "name", "dir_fd", "durable", "length", "first", "acked", "size",
                 "positions", "error")

    def __init__(self, qlog: QueueLog, seg: Segment) -> None:
        self.log = qlog
        self.seg = seg
        self.name = seg.path.name
        # the directory, opened now: if the queue is deleted meanwhile (its directory renamed away,
        # maybe a new queue of the same name made), the rewrite stays in the old one
        self.dir_fd = -1
        self.durable = qlog.durable
        self.length = seg.size
        self.first = seg.first
        self.acked = bytes(seg.acked)  # the snapshot: records acked after it are kept
        self.size = 0
        self.positions: list[int] = []  # of the records kept
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            if self.error is None:
                self._run()
        except OSError as exc:  # reported by finish_compaction on the loop
            self.error = exc
        finally:
            if self.dir_fd >= 0:
                os.close(self.dir_fd)
                self.dir_fd = -1

    def cancel(self) -> None:
        """Not run after all (shutdown): the segment stays as it is."""
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1
        self.seg.compacting = False
        self.log.compactions -= 1

    def open_dir(self) -> None:
        """On the loop, before run(): pin the directory (see __init__)."""
        try:
            self.dir_fd = os.open(self.log.dir, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            self.error = exc

    def _run(self) -> None:
        if self.dir_fd < 0:
            return  # open_dir failed: error set
        dfd = self.dir_fd
        fd = os.open(self.name, _O_READ, dir_fd=dfd)
        try:
            data = os.pread(fd, self.length, 0)
        finally:
            os.close(fd)
        out = bytearray(MAGIC)
        acked = self.acked
        first = self.first
        kept = self.positions
        for off, p, e in scan(data, verify=False):
            position = message_position(data, p)[0]
            if not bit_set(acked, position - first):
                out += data[off:e]
                kept.append(position)
        tmp = self.name[: -len(".seg")] + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644,
                     dir_fd=dfd)
        try:
            try:
                view = memoryview(out)
                written = 0
                while written < len(out):
                    written += os.write(fd, view[written:])
                if self.durable:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:  # a full disk: no half-written copy stays; the segment is intact
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
        if self.durable:
            os.fsync(dfd)
        self.size = len(out)
