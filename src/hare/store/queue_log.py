"""One queue's log on disk: append-only segment files, ack files, and a read cursor.

Directory of a queue::

    0000000001.seg   records (see segment.py), appended in queue order
    0000000001.ack   acks of records in 0000000001.seg: position:u64, ~position:u32 (12 bytes)
    delivered        position:u64, the highest position handed to a consumer (pwrite in place)

Every record carries its queue ``position`` (a number that grows with each message the queue
takes). Acks name positions; a segment whose records are all acked is deleted with its ack file.
The queue reads records back in order through a cursor, skipping acked ones, when its in-memory
window runs dry (see paged.py). After a restart, records at or below the ``delivered`` mark come
back with redelivered=true.

Writes go to a buffer and reach the file when the store flushes (once per event-loop batch); a
durable log's persistent writes are then fdatasync'ed by the store's group commit. A
non-durable log (a transient queue paging to disk) is never synced and is wiped at startup.

A full disk: appending does no I/O (a new segment's file is created, with its header, at the
next flush), so a write that fails keeps its bytes in the buffer, for the next flush, and the
read cursor reads them from there; a new segment is started only once the old one is written
whole. A compaction that cannot be written removes its temporary file and leaves the segment as
it was.
"""

from __future__ import annotations

import bisect
import logging
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .log_jobs import BigRecord, Chunk, CompactJob, WriteJob, bit_set
from .segment import (
    FLAG_PERSISTENT,
    HEADER_SIZE,
    MAGIC,
    MESSAGE_SIZE,
    RECORD,
    RECORD_SIZE,
    CorruptRecord,
    encode_message,
    message_info,
    message_position,
    record_head,
    scan,
    segment_name,
)

if TYPE_CHECKING:
    from .message_store import MessageStore

__all__ = ["BIG_RECORD", "CompactJob", "QueueLog", "Segment", "WriteJob"]

log = logging.getLogger("hare.store")

SEGMENT_SIZE = 8 << 20  # a segment is closed and a new one started past this size
# a segment read through whose live records are under 1/COMPACT_RATIO of its records (and that
# holds at least COMPACT_MIN bytes) is rewritten with only those: disk use follows live messages
COMPACT_RATIO = 4
COMPACT_MIN = 1 << 20
READ_CHUNK = 256 << 10  # bytes read at a time when paging messages back in
HEAD_MAX = RECORD_SIZE + MESSAGE_SIZE + 2 * 256  # a record's bytes up to its properties, at most
# a record whose body is this large is not copied into the write buffer: it is written, after
# whatever was buffered before it, by the store's worker thread (WriteJob), with its CRC computed
# there too; read back, its body is a view of what was read (no copy)
BIG_RECORD = 1 << 20
ACK = struct.Struct("<QI")
ACK_SIZE = ACK.size
_pack_ack = ACK.pack
_pack_q = struct.Struct("<Q").pack
_unpack_record = RECORD.unpack_from
_O_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
_O_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


class Segment:
    """What the log keeps in memory of one segment file: a few numbers and an acked bitmap."""

    __slots__ = ("id", "path", "first", "last", "count", "live", "size", "acked", "ack_buf", "ack_fd",
                 "compacting", "purging")

    def __init__(self, segment_id: int, path: Path) -> None:
        self.id = segment_id
        self.path = path
        self.first = -1  # position of its first record (-1: none yet)
        self.last = -1
        self.count = 0  # records in the file
        self.live = 0  # records not yet acked
        self.size = HEADER_SIZE  # bytes of valid records (file size, once flushed)
        self.acked = bytearray()  # bit (position - first): acked, or not a live record
        self.ack_buf = bytearray()
        self.ack_fd = -1
        self.compacting = False  # a CompactJob is rewriting its file (off the event loop)
        self.purging = 0  # purges acking its records in slices (neither dropped nor compacted meanwhile)

    def is_acked(self, position: int) -> bool:
        i = position - self.first
        byte = i >> 3
        return byte < len(self.acked) and bool(self.acked[byte] & (1 << (i & 7)))

    def set_acked(self, position: int) -> bool:
        """Mark acked; False when it already was."""
        i = position - self.first
        byte = i >> 3
        acked = self.acked
        if byte >= len(acked):
            acked.extend(bytes(byte + 1 - len(acked) + 64))
        bit = 1 << (i & 7)
        if acked[byte] & bit:
            return False
        acked[byte] |= bit
        return True

    @property
    def ack_path(self) -> Path:
        return self.path.with_suffix(".ack")


class QueueLog:
    __slots__ = ("dir", "durable", "store", "segments", "firsts", "wseg", "wfd", "wbuf", "rseg", "roff",
                 "rfd", "rfd_seg", "delivered", "delivered_saved", "delivered_fd", "dirty", "needs_sync",
                 "redelivered_upto", "live", "live_bytes", "closed", "roll_at", "compactions", "trash", "wq",
                 "inflight", "failed", "retry", "last_job", "heavy", "heavy_epoch")

    def __init__(self, directory: Path, durable: bool, store: MessageStore) -> None:
        self.dir = directory
        self.durable = durable
        self.store = store
        self.segments: list[Segment] = []
        self.firsts: list[int] = []  # first position of each segment, for bisect
        self.wseg: Segment | None = None  # the segment appends go to
        self.wfd = -1
        self.wbuf = bytearray()
        self.rseg: Segment | None = None  # read cursor: segment and offset of the next record
        self.roff = HEADER_SIZE
        self.rfd = -1
        self.rfd_seg: Segment | None = None
        self.delivered = -1  # highest position delivered (persisted for redelivered flags)
        self.delivered_saved = -1
        self.delivered_fd = -1
        self.dirty = False
        self.needs_sync = False
        self.redelivered_upto = -1  # after recovery: positions <= this were delivered before
        self.live = 0  # records not acked, in all segments
        self.live_bytes = 0  # their body bytes, as recovery found them
        self.closed = False
        self.roll_at = SEGMENT_SIZE  # the write segment's size that starts a new one (0: at once)
        self.compactions = 0  # compactions of this log's segments under way
        self.trash: Path | None = None  # destroyed during a compaction: its directory, to remove after
        # writes for the store's worker thread (store.write_in_thread), in file order: (fd, chunk),
        # a chunk being bytes or a BigRecord. Once a big record is queued, everything after it
        # goes this way too until the thread has written it all (inflight: WriteJobs under way)
        self.wq: list[tuple[int, Chunk]] = []
        self.inflight = 0
        self.failed = False  # a WriteJob failed: the rest is resubmitted once none is in flight
        self.retry: list[tuple[int, Chunk]] = []  # what the failed jobs did not write, in order
        self.last_job: WriteJob | None = None
        # took a large record: written and synced in the store's heavy lane (see MessageStore)
        self.heavy = False
        self.heavy_epoch = 0  # grows with each large record (and each new segment while heavy)

    # -- writing ------------------------------------------------------------------------------------

    def append(self, position: int, enqueued_ms: int, flags: int, route_bytes: bytes, properties: bytes,
               body: bytes) -> None:
        seg = self.wseg
        if seg is None or seg.size >= self.roll_at:
            seg = self._roll()
        if seg.first < 0:
            seg.first = position
            self.firsts[-1] = position
        if (len(body) >= BIG_RECORD and self.store.write_in_thread and self.store.write_error is None
                and self._open_wfd()):
            head = record_head(position, enqueued_ms, flags, route_bytes, properties)
            if self.wbuf:
                self.wq.append((self.wfd, self.wbuf))
                self.wbuf = bytearray()
            self.wq.append((self.wfd, BigRecord(head, body, self.durable)))
            seg.size += RECORD_SIZE + len(head) + len(body)
            self.store.made_heavy(self)
        else:
            seg.size += encode_message(self.wbuf, position, enqueued_ms, flags, route_bytes, properties,
                                       body, self.durable)
        seg.last = position
        seg.count += 1
        seg.live += 1
        self.live += 1
        if flags & FLAG_PERSISTENT and self.durable:
            self.needs_sync = True
        if not self.dirty:
            self.dirty = True
            self.store.mark_dirty(self)

    def skip_to_tail(self) -> None:
        """Move the read cursor past everything appended so far (they are held in memory)."""
        self.rseg = self.wseg
        self.roff = self.wseg.size if self.wseg is not None else HEADER_SIZE

    def _roll(self) -> Segment:
        """Start a new segment (the old one's fd is synced, if needed, and closed by the store).
        Only once the old one is written whole (on a full disk it goes on growing meanwhile); the
        new one's file is made at the next flush."""
        if self.wseg is not None:
            if self._threaded():  # the thread writes them, in order
                if self.wbuf:
                    if not self._open_wfd():  # a full disk: this segment goes on growing
                        return self.wseg
                    self.wq.append((self.wfd, self.wbuf))
                    self.wbuf = bytearray()
            else:
                try:
                    self._flush_writes()
                except OSError as exc:  # a full disk: this segment goes on growing until it is written
                    self.store.write_failed(exc)
                    return self.wseg
            # a durable log's older segments are always synced whole, transient records included:
            # a tail lost at a power loss would be corruption (an error) in any but the last one
            self.store.retire_fd(self.wfd, self.durable, self.heavy)
            if self.heavy:  # (a heavy sync under way does not cover the new segment)
                self.store.made_heavy(self)
            self.needs_sync = False
            self.wfd = -1
        self.roll_at = SEGMENT_SIZE
        next_id = self.segments[-1].id + 1 if self.segments else 1
        seg = Segment(next_id, self.dir / segment_name(next_id))
        self.wbuf += MAGIC  # (seg.size counts it already)
        self.wseg = seg
        self.segments.append(seg)
        self.firsts.append(self.firsts[-1] if self.firsts else 0)
        if self.durable:
            self.store.sync_dir(self.dir)
        if self.rseg is None:
            self.rseg = seg
            self.roff = HEADER_SIZE
        return seg

    def _flush_writes(self) -> None:
        """Write the buffered records (creating the write segment's file first if it is new); on
        an error (a full disk) what was not written stays buffered for the next flush."""
        buf = self.wbuf
        if not buf:
            return
        if self.wfd < 0:
            self._make_file()
        written = 0
        try:
            while written < len(buf):
                written += os.write(self.wfd, buf if not written else bytes(buf[written:]))
        finally:
            if written:
                del buf[:written]

    def _make_file(self) -> None:
        """Create the write segment's file (raises OSError: a full disk)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        assert self.wseg is not None
        self.wfd = os.open(self.wseg.path, _O_APPEND, 0o644)

    def _open_wfd(self) -> bool:
        """The write segment's file is open (made now if it is new); False if it cannot be made
        (a full disk: the alarm is raised and its records stay buffered)."""
        if self.wfd >= 0:
            return True
        try:
            self._make_file()
        except OSError as exc:
            self.store.write_failed(exc)
            return False
        return True

    def _threaded(self) -> bool:
        return bool(self.wq or self.inflight or self.failed)

    def _submit(self) -> None:
        """Hand the queued writes (and the buffer behind them) to the store's worker thread; after
        a failed job, only once every job in flight is back (what they did not write goes first)."""
        if self.wbuf and self._open_wfd():
            self.wq.append((self.wfd, self.wbuf))
            self.wbuf = bytearray()
        if not self.wq or (self.failed and self.inflight):
            return
        if not self.store.write_in_thread:  # the shell is gone (shutdown): write them here
            self._write_queued()
            return
        job = WriteJob(self, self.wq, self.failed)
        self.wq = []
        self.failed = False
        self.inflight += 1
        self.last_job = job
        self.store.queue_write(job)

    def finish_write(self, job: WriteJob) -> None:
        """On the loop, after ``job.run`` in the store's thread."""
        self.inflight -= 1
        if self.last_job is job:
            self.last_job = None
        if job.left:  # failed, or skipped behind a failed one: written again later, in order
            self.failed = True
            self.retry += job.left
        if self.failed and not self.inflight:
            self.wq[:0] = self.retry
            self.retry = []
            if not self.dirty:  # retried at the store's next flush (as a failed inline write)
                self.dirty = True
                self.store.dirty.append(self)

    def _write_queued(self) -> None:
        """Write the queued chunks here and now (raises OSError; what is not written stays)."""
        wq = self.wq
        while wq:
            fd, chunk = wq[0]
            if type(chunk) is BigRecord:
                wq[0] = (fd, chunk.framed())
                wq.insert(1, (fd, chunk.body))
                continue
            data = chunk
            written = 0
            try:
                view = memoryview(data)
                while written < len(data):
                    written += os.write(fd, view[written:])
            finally:
                if written and written < len(data):
                    wq[0] = (fd, bytes(memoryview(data)[written:]))
            del wq[0]

    def _write_now(self) -> None:
        """Everything appended so far is in the files when this returns (blocking on the store's
        thread if it is writing for this log)."""
        if self._threaded():
            if self.wbuf:
                if self.wfd < 0:
                    self._make_file()
                self.wq.append((self.wfd, self.wbuf))
                self.wbuf = bytearray()
            if self.last_job is not None:
                self.store.wait_write(self.last_job)
                if self.last_job is not None and self.last_job.left:
                    raise self.last_job.error or OSError("write failed")
            if self.retry:
                raise OSError("a write of the queue log failed")
            self._write_queued()
        self._flush_writes()

    def flush(self) -> None:
        """Write buffered records, acks and the delivered mark (called by the store)."""
        self.dirty = False
        if self.closed:
            return
        if self._threaded():
            self._submit()
        else:
            self._flush_writes()
        if self.durable:
            for seg in self.segments:
                if seg.ack_buf:
                    if seg.ack_fd < 0:
                        seg.ack_fd = os.open(seg.ack_path, _O_APPEND, 0o644)
                    while seg.ack_buf:  # (a short write on a full disk: the rest stays buffered)
                        del seg.ack_buf[: os.write(seg.ack_fd, seg.ack_buf)]
            if self.delivered != self.delivered_saved:
                if self.delivered_fd < 0:
                    self.delivered_fd = os.open(self.dir / "delivered",
                                                os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                                                0o644)
                os.pwrite(self.delivered_fd, _pack_q(self.delivered), 0)
                self.delivered_saved = self.delivered
        if self.needs_sync:
            self.needs_sync = False
            self.store.sync_fd(self.wfd, self)

    # -- acks -------------------------------------------------------------------------------------

    def segment_of(self, position: int) -> Segment | None:
        i = bisect.bisect_right(self.firsts, position) - 1
        if i < 0:
            return None
        seg = self.segments[i]
        return seg if seg.first <= position <= seg.last else None

    def ack(self, position: int) -> None:
        seg = self.segment_of(position)
        if seg is None or not seg.set_acked(position):
            return
        seg.live -= 1
        self.live -= 1
        if self.durable:
            seg.ack_buf += _pack_ack(position, ~position & 0xFFFFFFFF)
            if not self.dirty:
                self.dirty = True
                self.store.mark_dirty(self)
        if seg is not self.wseg and not seg.compacting and not seg.purging:
            self._settled(seg)

    def _settled(self, seg: Segment) -> None:
        """A segment that is not written to any more lost live records: drop or compact it
        (a compacted one: see finish_compaction; a purged one: at the end of the purge; none
        while a write fails: a full disk)."""
        if not seg.live:
            self._drop_segment(seg)
        elif (seg.live * COMPACT_RATIO < seg.count and seg.size >= COMPACT_MIN
              and (self.rseg is None or self.rseg.id > seg.id) and self.store.write_error is None):
            seg.compacting = True
            self.compactions += 1
            self.store.compact(CompactJob(self, seg))

    def finish_compaction(self, job: CompactJob) -> None:
        """On the loop, after ``job.run`` (in the store's worker thread, or inline): adopt the
        rewritten file. Acks that came meanwhile are kept (written again to the emptied ack file);
        a segment acked through meanwhile is dropped now."""
        seg = job.seg
        seg.compacting = False
        self.compactions -= 1
        if self.closed:  # destroyed meanwhile (or closed at shutdown): nothing to adopt
            if self.trash is not None and not self.compactions:
                shutil.rmtree(self.trash, ignore_errors=True)
                self.trash = None
            return
        if job.error is not None:
            log.warning("queue log %s: cannot compact %s: %s (left as it is)", self.dir, seg.path.name,
                        job.error)
            self.store.write_failed(job.error)  # a full disk: the alarm; no compaction until a write works
        else:
            if self.rfd_seg is seg:
                os.close(self.rfd)
                self.rfd = -1
                self.rfd_seg = None
            if self.durable:
                # the ack file held acks of records that are gone, and of some still there (acked
                # during the rewrite, after its snapshot of the bitmap): keep only those
                seg.ack_buf.clear()
                if seg.ack_fd >= 0:
                    os.ftruncate(seg.ack_fd, 0)
                elif seg.ack_path.exists():
                    os.truncate(seg.ack_path, 0)
                snapshot = job.acked
                for position in job.positions:
                    if seg.is_acked(position) and not bit_set(snapshot, position - seg.first):
                        seg.ack_buf += _pack_ack(position, ~position & 0xFFFFFFFF)
                if seg.ack_buf and not self.dirty:
                    self.dirty = True
                    self.store.mark_dirty(self)
            seg.size = job.size
            seg.count = len(job.positions)
        if not seg.live and seg in self.segments:
            self._drop_segment(seg)

    def mark_delivered(self, position: int) -> None:
        if position > self.delivered:
            self.delivered = position
            if self.durable and not self.dirty:
                self.dirty = True
                self.store.mark_dirty(self)

    def _drop_segment(self, seg: Segment) -> None:
        i = self.segments.index(seg)
        if self.rseg is seg:
            nxt = self.segments[i + 1] if i + 1 < len(self.segments) else None
            self.rseg = nxt
            self.roff = HEADER_SIZE
        del self.segments[i]
        del self.firsts[i]
        if self.rfd_seg is seg:
            os.close(self.rfd)
            self.rfd = -1
            self.rfd_seg = None
        if seg.ack_fd >= 0:
            os.close(seg.ack_fd)
            seg.ack_fd = -1
        # (unlinking a large file can take tens of milliseconds: the store's thread does it)
        self.store.remove_files(self.dir, (seg.path.name, seg.ack_path.name))

    # -- reading ----------------------------------------------------------------------------------

    def read(self, max_count: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """Up to ``max_count`` records (and about ``max_bytes``) from the cursor on, skipping
        acked ones: [(position, payload)]."""
        out: list[tuple[int, bytes]] = []
        taken = 0
        while len(out) < max_count and taken < max_bytes:
            seg = self.rseg
            if seg is None:
                break
            if self.roff >= seg.size:
                if seg is self.wseg:
                    break
                i = self.segments.index(seg)
                self.rseg = self.segments[i + 1] if i + 1 < len(self.segments) else None
                self.roff = HEADER_SIZE
                continue
            want = min(max(READ_CHUNK, max_bytes - taken), seg.size - self.roff)
            data = self._read_span(seg, want, self.roff)
            if data is None:  # a failed write in the thread: read it once it is written
                break
            o = 0
            end = len(data)
            while o + RECORD_SIZE <= end and len(out) < max_count:
                size = _unpack_record(data, o)[0]
                if o + RECORD_SIZE + size > end:
                    if o == 0:  # one record larger than the chunk: read exactly it
                        data = self._read_span(seg, RECORD_SIZE + size, self.roff)
                        if data is None:
                            return out
                        end = len(data)
                        continue
                    break
                p = o + RECORD_SIZE
                position = message_position(data, p)[0]
                if not seg.is_acked(position):
                    # (a large record's payload is a view: its body is not copied again)
                    out.append((position, data[p : p + size] if size < BIG_RECORD
                                else memoryview(data)[p : p + size]))
                    taken += size
                o = p + size
            if o == 0:  # nothing parsed: the file is shorter than we think; stop at it
                log.error("queue log %s: segment %s ends early at offset %d", self.dir, seg.path.name,
                          self.roff)
                seg.size = self.roff
                continue
            self.roff += o
        return out

    def drop_next(self) -> int | None:
        """Ack the next unread record without reading its body (a max-length queue dropping its
        head): its body size, or None when there is none (or it cannot be read: a failed write)."""
        while True:
            seg = self.rseg
            if seg is None:
                return None
            if self.roff >= seg.size:
                if seg is self.wseg:
                    return None
                i = self.segments.index(seg)
                self.rseg = self.segments[i + 1] if i + 1 < len(self.segments) else None
                self.roff = HEADER_SIZE
                continue
            head = self._read_span(seg, min(HEAD_MAX, seg.size - self.roff), self.roff)
            if head is None or len(head) < min(HEAD_MAX, seg.size - self.roff):
                return None  # (a file shorter than we think: read() reports it)
            size = _unpack_record(head, 0)[0]
            position, _flags, body_size = message_info(head, RECORD_SIZE, RECORD_SIZE + size)
            self.roff += RECORD_SIZE + size
            if not seg.is_acked(position):
                self.ack(position)  # (may drop the segment: the cursor moves on with it)
                return body_size

    def _read_span(self, seg: Segment, size: int, offset: int) -> bytes | None:
        """``size`` bytes of ``seg`` at ``offset`` (appended already). While the store's thread
        writes for this log, bytes already in the file are read without waiting for it; only
        those it has not written yet wait (None: its write failed, the alarm is raised)."""
        if self._threaded():  # (any segment: see _roll)
            try:
                data = self._pread(seg, size, offset)
            except FileNotFoundError:
                data = b""
            if len(data) == size:
                return data
            try:
                self._write_now()
            except OSError as exc:
                self.store.write_failed(exc)
                return None
        elif seg is self.wseg and self.wbuf:
            try:
                self._flush_writes()
            except OSError as exc:  # a full disk: what is still buffered is read from memory
                self.store.write_failed(exc)
        return self._read_at(seg, size, offset)

    def _read_at(self, seg: Segment, size: int, offset: int) -> bytes:
        """``size`` bytes of ``seg`` at ``offset``: from its file, and from the write buffer for
        the write segment's bytes that are not in the file yet (the disk is full)."""
        if seg is not self.wseg or not self.wbuf:
            return self._pread(seg, size, offset)
        file_end = seg.size - len(self.wbuf)
        if offset >= file_end:
            return bytes(self.wbuf[offset - file_end : offset - file_end + size])
        data = self._pread(seg, min(size, file_end - offset), offset)
        if len(data) < file_end - offset or len(data) == size:
            return data
        return data + bytes(self.wbuf[: size - len(data)])

    def _pread(self, seg: Segment, size: int, offset: int) -> bytes:
        if self.rfd_seg is not seg:
            if self.rfd >= 0:
                os.close(self.rfd)
            self.rfd = os.open(seg.path, _O_READ)
            self.rfd_seg = seg
        return os.pread(self.rfd, size, offset)

    def drop_unread(self) -> None:
        """Ack every record not yet read (purge). Segments wholly after the cursor hold nothing
        that was delivered: they go at once; the cursor moves past its own segment's records at
        once too, and they are acked in slices (store.later: a purge of millions must not hold
        the event loop), the segment kept meanwhile."""
        seg = self.rseg
        if seg is None:
            return
        i = self.segments.index(seg)
        for later in self.segments[i + 1 :]:
            self.live -= later.live
            later.live = 0
            if later is self.wseg:
                if self._threaded():  # (the thread is done with its file before it goes)
                    try:
                        self._write_now()
                    except OSError as exc:
                        self.store.write_failed(exc)
                self.wbuf.clear()  # its records are dropped with it
                self.store.retire_fd(self.wfd, False, self.heavy)
                self.wfd = -1
                self.wseg = None
                self.needs_sync = False
            self._drop_segment(later)
        start, end = self.roff, seg.size
        if end > start:
            try:
                self._write_now()  # (the records to ack must be in the file)
            except OSError as exc:  # a full disk: those still buffered are read from memory
                self.store.write_failed(exc)
            seg.purging += 1
            self.store.later(self._ack_unread(seg, start, end), f"purge of queue log {self.dir}")
        self.rseg = self.wseg
        self.roff = self.wseg.size if self.wseg is not None else HEADER_SIZE

    def _ack_unread(self, seg: Segment, start: int, end: int) -> Iterator[None]:
        """Ack the records of ``seg`` in [start, end), a slice at a time."""
        off = start
        n = 0
        try:
            while off < end and not self.closed:
                data = self._read_at(seg, min(READ_CHUNK, end - off), off)
                o = 0
                while o + RECORD_SIZE + MESSAGE_SIZE <= len(data):
                    size = _unpack_record(data, o)[0]
                    position = message_position(data, o + RECORD_SIZE)[0]
                    self.ack(position)
                    o += RECORD_SIZE + size
                    n += 1
                    if o > len(data):  # a record larger than the chunk: skip the rest of it
                        break
                if not o:  # the file is shorter than we think: nothing more to ack
                    return
                off += o
                if n >= 2000:
                    n = 0
                    yield
        finally:
            seg.purging -= 1
            if (not self.closed and not seg.purging and seg is not self.wseg and not seg.compacting
                    and seg in self.segments):
                self._settled(seg)

    # -- recovery ---------------------------------------------------------------------------------

    def recover(self) -> int:
        """Rebuild the in-memory index from the files; return the number of live records.

        A torn or corrupt record ends its segment: what precedes it is kept, what follows it in
        that file is reported (with the path) and never served."""
        paths = sorted(self.dir.glob("*.seg"))
        for path in paths:
            try:
                segment_id = int(path.stem)
            except ValueError:
                continue
            seg = Segment(segment_id, path)
            self._recover_segment(seg, is_last=path == paths[-1])
            if seg.count:
                self.segments.append(seg)
                self.firsts.append(seg.first)
            else:
                os.unlink(path)
                if seg.ack_path.exists():
                    os.unlink(seg.ack_path)
        try:
            raw = (self.dir / "delivered").read_bytes()
            if len(raw) >= 8:
                self.redelivered_upto = self.delivered = self.delivered_saved = int.from_bytes(
                    raw[:8], "little")
        except FileNotFoundError:
            pass
        for seg in list(self.segments):
            if not seg.live:
                self._drop_segment(seg)
        self.live = sum(seg.live for seg in self.segments)
        self.rseg = self.segments[0] if self.segments else None
        self.roff = HEADER_SIZE
        return self.live

    def _recover_segment(self, seg: Segment, is_last: bool) -> None:
        data = seg.path.read_bytes()
        if data[:HEADER_SIZE] != MAGIC:
            log.error("queue log: %s is not a segment file (bad header); skipped", seg.path)
            return
        acked: set[int] = set()
        try:
            acks = seg.ack_path.read_bytes()
        except FileNotFoundError:
            acks = b""
        for i in range(0, len(acks) - ACK_SIZE + 1, ACK_SIZE):
            position, check = ACK.unpack_from(acks, i)
            if check == ~position & 0xFFFFFFFF:
                acked.add(position)
        view = memoryview(data)
        live: list[int] = []  # positions of the records still to deliver
        first = last = -1
        count = size = 0
        try:
            for off, p, e in scan(view):
                position, flags, body = message_info(view, p, e)
                if position <= last:
                    raise CorruptRecord(off, "position out of order")
                if first < 0:
                    first = position
                last = position
                count += 1
                seg.size = e
                # acked records, and transient ones of a durable queue, are gone
                if position not in acked and (flags & FLAG_PERSISTENT or not self.durable):
                    live.append(position)
                    size += body
        except CorruptRecord as err:
            if is_last:  # a crash mid-write leaves a torn record at the very end
                log.warning("queue log: torn tail in %s at offset %d (%s): %d bytes dropped", seg.path,
                            err.offset, err.reason, len(data) - err.offset)
                # cut it off: this run writes to a new segment, after which this one is no longer
                # the last, and a tail left in it would read as corruption at the next recovery
                fd = os.open(seg.path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
                try:
                    os.ftruncate(fd, err.offset)
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            else:
                log.error("queue log: corrupt segment %s at offset %d (%s): the %d bytes from there on "
                          "are not served", seg.path, err.offset, err.reason, len(data) - err.offset)
        finally:
            view.release()
        if not count:
            return
        seg.first, seg.last, seg.count, seg.live = first, last, count, len(live)
        # every position of the span starts acked (gaps, acked and dropped records); live ones clear
        bitmap = seg.acked = bytearray(b"\xff") * ((last - first + 8) // 8)
        for position in live:
            i = position - first
            bitmap[i >> 3] &= ~(1 << (i & 7)) & 0xFF
        self.live_bytes += size

    # -- lifetime ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Flush and close every file (clean shutdown); a durable log's files are synced first.
        Files a sync may be using are handed to the store, which closes them after it. (On a full
        disk what cannot be written is lost: nothing of it was confirmed.)"""
        if self.closed:
            return
        try:
            self.flush()
        except OSError as exc:
            log.error("queue log %s: cannot write at close: %s: %d bytes of messages and the acks "
                      "not yet written are lost (none was confirmed)", self.dir, exc, len(self.wbuf))
        self.closed = True
        self._close_fds(sync=self.durable)

    def _close_fds(self, sync: bool) -> None:
        store = self.store
        store.retire_fd(self.wfd, sync, self.heavy)  # (a heavy log's: after its large writes)
        store.retire_fd(self.delivered_fd, sync)
        for seg in self.segments:
            store.retire_fd(seg.ack_fd, sync)
            seg.ack_fd = -1
        if self.rfd >= 0:
            os.close(self.rfd)
        self.wfd = self.rfd = self.delivered_fd = -1
        self.rfd_seg = None

    def destroy(self) -> None:
        """The queue is deleted: close and remove its files (a compaction under way works in the
        directory: it is renamed out of the way first, and removed once the compaction is over)."""
        self.closed = True
        self._close_fds(sync=False)
        self.store.forget(self)
        target = self.dir
        if self.compactions:
            trash = self.dir.with_name(f"{self.dir.name}.deleted.{id(self):x}")
            try:
                os.rename(self.dir, trash)
                target = self.trash = trash
            except OSError:
                pass
        shutil.rmtree(target, ignore_errors=True)
