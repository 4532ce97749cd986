"""The message store: every queue log under one data directory, and the group commit.

Queue logs buffer their writes and register here as dirty; ``flush`` writes every dirty log
(the shell calls it once per event-loop turn, through ``on_wake``). A publisher confirm or a
tx.commit that needs its messages on stable storage waits with ``after_sync``; ``start_sync``
takes every file written since the last sync and every waiter into one ``SyncJob``, which the
shell runs in a thread (fdatasync releases the GIL) and then hands to ``finish_sync``, which
runs the waiters. One fdatasync per file covers every message written before it: however many
publishers wait, the number of syncs per second stays bounded by the disk, not by messages.

Two lanes: a log that takes a large record (a body of 1 MiB or more) is heavy until a sync of it
is done; its writes and syncs go to a second thread (``start_heavy_sync``), so the group commit
of every other log never waits for tens of MiB to reach the disk. A waiter whose data may be in
a heavy log waits for both lanes; a confirm batch that went to light logs only (``heavy=False``)
waits for the light one.

A full disk: a write that fails keeps its data in memory (queue_log.py) and is tried again at
each flush; ``on_write_error`` tells the broker at the first failure (its disk alarm blocks the
publishers at once) and no sync (so no confirm) runs until every write has gone through.

Layout of the data directory::

    definitions.sqlite3        exchanges, queues, bindings (definitions.py)
    queues/<id>/               the log of each durable queue (queue_log.py)
    transient/<id>/            logs of non-durable queues paging to disk; wiped at startup
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .log_jobs import CompactJob, WriteJob
from .queue_log import QueueLog

log = logging.getLogger("hare.store")
_O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


def queue_id(vhost: str, name: str) -> str:
    """A queue's directory name: names may hold any byte, so a digest of vhost and name."""
    return hashlib.sha1(f"{vhost}\x00{name}".encode("utf-8", "surrogateescape")).hexdigest()


# a waiter: run once what was written before it is on stable storage, or (if given) told of the
# error when that cannot be done
OnSynced = Callable[[], None]
OnSyncError = Callable[[OSError], None]


class SyncJob:
    """Files to make durable, run in a worker thread; then the waiters run on the loop."""

    __slots__ = ("fds", "logs", "retired", "dirs", "waiters", "error", "fd_logs", "failed_logs", "skipped",
                 "heavy", "after", "done", "epochs")

    def __init__(self, fds: list[int], retired: list[tuple[int, bool]], dirs: list[Path],
                 waiters: list[tuple[OnSynced, OnSyncError | None]],
                 logs: list[QueueLog] | None = None, fd_logs: dict[int, QueueLog | None] | None = None,
                 failed_logs: set[QueueLog] | None = None, heavy: bool = False) -> None:
        self.heavy = heavy  # the heavy lane's job (see MessageStore.start_heavy_sync)
        self.after: SyncJob | None = None  # a light job to wait for first (older segments first)
        self.done = threading.Event()
        self.epochs: dict[QueueLog, int] = {}  # heavy logs covered, and their heavy_epoch then
        self.fd_logs = fd_logs or {}
        # the logs whose WriteJob failed (the same set the worker thread keeps): this job then
        # skips its syncs, which would confirm data that did not reach the files
        self.failed_logs = failed_logs if failed_logs is not None else set()
        self.skipped = False
        self.fds = fds
        self.logs = logs or []  # the logs whose current segments are in fds
        self.retired = retired  # (fd, needs sync): closed once synced
        self.dirs = dirs
        self.waiters = waiters
        self.error: OSError | None = None

    def run(self) -> None:
        # Order matters at a power loss in mid-job: the files a log is done with (older segments)
        # first, then the files being written, then the directories that gained entries. A log
        # thus never depends on an older segment with an unsynced tail: the only damage a power
        # loss can leave is a torn tail in a log's newest segment (and nothing is confirmed
        # before every part of the job is done).
        try:
            if self.after is not None:
                self.after.done.wait()
            self._run()
        finally:
            self.done.set()

    def _run(self) -> None:
        if self.failed_logs:  # a write before it failed: see MessageStore.finish_sync
            self.skipped = True
            return
        try:
            for fd, needs_sync in self.retired:
                if needs_sync:
                    os.fdatasync(fd)
            for fd in self.fds:
                os.fdatasync(fd)
            for d in self.dirs:
                try:
                    dfd = os.open(d, os.O_RDONLY)
                except FileNotFoundError:
                    continue  # the queue was deleted meanwhile: nothing to make durable
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as exc:  # reported by finish_sync on the loop
            self.error = exc


class MessageStore:
    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        self.queues_dir = self.data_dir / "queues"
        self.transient_dir = self.data_dir / "transient"
        if not self.queues_dir.is_dir():
            self.queues_dir.mkdir(parents=True, exist_ok=True)
            sync_directory(self.data_dir)  # its entry in the data directory
        shutil.rmtree(self.transient_dir, ignore_errors=True)  # transient queues did not survive
        self.dirty: list[QueueLog] = []
        self.sync_fds: dict[int, QueueLog | None] = {}
        self.retired: list[tuple[int, bool]] = []
        self.dirs: dict[Path, None] = {}
        self.waiters: list[tuple[OnSynced, OnSyncError | None]] = []
        self.syncing = False
        self.light_job: SyncJob | None = None  # the light job running
        # The heavy lane: a log that took a large record (queue_log.BIG_RECORD) is heavy until a
        # heavy sync started after it is done. Its large writes (WriteJobs), its files and the
        # syncs of them are done by the shell's second thread, so the group commit of every
        # other log (the light lane) never waits for tens of MiB to reach the disk. A waiter
        # that may depend on a heavy log waits for a sync of each lane.
        self.heavy_logs: set[QueueLog] = set()
        self.heavy_retired: list[tuple[int, bool]] = []
        self.heavy_waiters: list[tuple[OnSynced, OnSyncError | None]] = []
        self.heavy_syncing = False
        self.heavy_retry = False  # (as retry_sync, for the heavy lane)
        self.write_error: OSError | None = None  # the last flush failed: retry before confirming
        self.sync_error: OSError | None = None  # the last sync failed: its files are synced again
        self.retry_sync = False  # (on the shell's timer) until one succeeds
        self.on_wake: Callable[[], None] = _noop  # the shell: schedule flush / sync soon
        self.on_sync_error: Callable[[OSError | None], None] = _ignore  # the broker's alarm
        self.on_write_error: Callable[[OSError], None] = _ignore_write  # the broker's disk alarm
        self.pending_files: dict[Path, str] = {}  # small files a full disk refused (write_synced)
        # segment compactions: run by the shell in a worker thread (one at a time) when it sets
        # compact_in_thread, else at once, in the caller's thread (no event loop: tests, tools)
        self.compact_in_thread = False
        self.compactions: list[CompactJob] = []
        self.logs: dict[Path, QueueLog] = {}
        # large records (queue_log.BIG_RECORD) are written by the shell's sync thread when it sets
        # write_in_thread (submit_write runs a WriteJob there, wait_write waits for one); else
        # they are written at once, as the rest
        self.write_in_thread = False
        self.submit_write: Callable[[WriteJob], None] = _run_write
        self.wait_write: Callable[[WriteJob], None] = _ignore_job
        self.writing = 0  # WriteJobs submitted and not yet finished on the loop
        self.failed_logs: set[QueueLog] = set()  # logs whose last WriteJob failed (thread's view)
        self.thread_write_error: OSError | None = None  # a WriteJob failed, not yet written again
        # file system work that can take a while (unlinking large files): the shell runs it in a
        # worker thread when it sets in_thread, else it is done at once
        self.in_thread: Callable[[Callable[[], None]], None] = _call
        # work done in slices across loop turns (the broker's Background.add; at once by default)
        self.later: Callable[[Iterator[None], str], None] = _run_through

    # -- queue logs --------------------------------------------------------------------------------

    def queue_dir(self, vhost: str, name: str, durable: bool) -> Path:
        return (self.queues_dir if durable else self.transient_dir) / queue_id(vhost, name)

    def open_log(self, vhost: str, name: str, durable: bool) -> QueueLog:
        """A new, empty log for a queue (a durable one's leftovers from an older queue of the
        same name are removed)."""
        d = self.queue_dir(vhost, name, durable)
        old = self.logs.pop(d, None)
        if old is not None:
            old.destroy()
        shutil.rmtree(d, ignore_errors=True)
        try:
            d.mkdir(parents=True)
        except OSError as exc:  # a full disk: the log makes it at its first flush
            self.write_failed(exc)
        if durable:  # the directory's entry in queues/ and its name file: synced with the log's data
            self.sync_dir(self.queues_dir)
            self.write_synced(d / "name", f"{vhost}\n{name}\n")
        qlog = self.logs[d] = QueueLog(d, durable, self)
        return qlog

    def recover_log(self, vhost: str, name: str) -> QueueLog | None:
        """The log of a durable queue as the last run left it, or None when it has none."""
        d = self.queue_dir(vhost, name, True)
        if not d.is_dir():
            return None
        qlog = self.logs[d] = QueueLog(d, True, self)
        qlog.recover()
        return qlog

    def remove_files(self, directory: Path, names: tuple[str, ...]) -> None:
        """Delete files of a log (a dropped segment), by name in ``directory`` as it is now: the
        deletion may run later (in_thread), after the queue was deleted and one of the same name
        made a new directory there, whose files it must not touch."""
        try:
            dfd = os.open(directory, _O_DIR)
        except OSError:  # the directory is gone (or never made: a full disk), and its files with it
            return
        self.in_thread(lambda: _unlink_at(dfd, names))

    def forget(self, qlog: QueueLog) -> None:
        self.logs.pop(qlog.dir, None)

    def remove_orphans(self, keep: set[Path]) -> None:
        """Delete the logs of durable queues that no longer exist."""
        for d in self.queues_dir.iterdir():
            if d not in keep and d not in self.logs:
                log.info("removing the log of a deleted queue: %s", d)
                shutil.rmtree(d, ignore_errors=True)

    # -- writes ------------------------------------------------------------------------------------

    def mark_dirty(self, qlog: QueueLog) -> None:
        if not self.dirty:
            self.on_wake()
        self.dirty.append(qlog)

    def flush(self) -> None:
        """Write what every dirty log buffered (to the OS: it survives a crash of the process).
        A log whose write fails (a full disk) keeps its data and stays dirty; until every write
        has gone through, no sync answers its waiters."""
        dirty = self.dirty
        if dirty or self.pending_files or self.write_error is not None:
            self.dirty = []
            failed = self._write_pending_files()
            for qlog in dirty:
                try:
                    qlog.flush()
                except OSError as exc:
                    failed = exc
                    qlog.dirty = True
                    self.dirty.append(qlog)
            if failed is not None:
                self.write_failed(failed)
            else:
                if self.write_error is not None:
                    log.info("the message store can write again")
                self.write_error = None

    def write_failed(self, exc: OSError) -> None:
        """A write failed (its data is kept, to write again): confirms wait, the broker is told."""
        if self.write_error is None:
            log.error("cannot write the message store: %s; what could not be written is kept in "
                      "memory and confirms wait until it is written", exc)
        self.write_error = exc
        self.on_write_error(exc)

    def queue_write(self, job: WriteJob) -> None:
        self.writing += 1
        self.submit_write(job)

    def finish_write(self, job: WriteJob) -> None:
        """On the loop, after a WriteJob ran in the shell's thread."""
        self.writing -= 1
        job.log.finish_write(job)
        if job.error is not None:
            if self.thread_write_error is None:
                log.error("cannot write the message store: %s; confirms wait until it can", job.error)
            self.thread_write_error = job.error
            self.on_write_error(job.error)  # the disk alarm, at once (as a failed inline write)
        elif job.retry and self.thread_write_error is not None and not self.failed_logs:
            log.info("the message store can write again")
            self.thread_write_error = None

    def sync_fd(self, fd: int, qlog: QueueLog | None = None) -> None:
        self.sync_fds[fd] = qlog

    def retire_fd(self, fd: int, needs_sync: bool, heavy: bool = False) -> None:
        """A log is done with a file: close it after the next sync (synced first if asked) of
        its lane (a heavy log's: the thread that may still be writing it)."""
        if fd < 0:
            return
        if fd in self.sync_fds:
            del self.sync_fds[fd]
            needs_sync = True
        (self.heavy_retired if heavy else self.retired).append((fd, needs_sync))
        self.on_wake()

    def made_heavy(self, qlog: QueueLog) -> None:
        """``qlog`` took a large record (or started a segment while heavy)."""
        qlog.heavy_epoch += 1
        if not qlog.heavy:
            qlog.heavy = True
            self.heavy_logs.add(qlog)

    def sync_dir(self, path: Path) -> None:
        """``path`` gained (or lost) an entry: fsync it in the next sync."""
        self.dirs[path] = None

    def write_synced(self, path: Path, text: str) -> None:
        """Create a small file whose data the next sync makes durable (its entry: sync_dir). On a
        full disk it is written by a later flush."""
        try:
            self._write_file(path, text)
        except OSError as exc:
            self.pending_files[path] = text
            self.write_failed(exc)
            self.on_wake()

    def _write_file(self, path: Path, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            data = text.encode("utf-8", "surrogateescape")
            if os.write(fd, data) != len(data):
                raise OSError(28, os.strerror(28))
        except BaseException:
            os.close(fd)
            raise
        self.retire_fd(fd, True)

    def _write_pending_files(self) -> OSError | None:
        for path, text in list(self.pending_files.items()):
            try:
                if path.parent in self.logs or path.parent.is_dir():  # (else its queue is gone)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    self._write_file(path, text)
            except OSError as exc:
                return exc
            del self.pending_files[path]
        return None

    # -- compaction --------------------------------------------------------------------------------

    def compact(self, job: CompactJob) -> None:
        """Rewrite a segment (log_jobs.CompactJob) and hand it back to its log."""
        job.open_dir()
        if self.compact_in_thread:
            self.compactions.append(job)
            self.on_wake()
        else:
            job.run()
            job.log.finish_compaction(job)

    def next_compaction(self) -> CompactJob | None:
        return self.compactions.pop(0) if self.compactions else None

    def drop_compactions(self) -> None:
        """Shutdown: compactions not started stay undone (the segments stay as they are)."""
        jobs, self.compactions = self.compactions, []
        for job in jobs:
            job.cancel()

    # -- group commit ------------------------------------------------------------------------------

    def after_sync(self, callback: OnSynced, on_error: OnSyncError | None = None,
                   heavy: bool = True) -> None:
        """Run ``callback`` once everything written so far is on stable storage; if a sync fails
        first, ``on_error(exc)`` instead (no callback at all without one). ``heavy`` False: the
        caller's data is in no heavy log (a confirm batch that went to light logs only), so the
        light lane's sync is enough."""
        if heavy and self.heavy_logs:
            both = _BothLanes(callback, on_error)
            callback, on_error = both.synced, both.failed
            if not self.heavy_waiters:
                self.on_wake()
            self.heavy_waiters.append((callback, on_error))
        if not self.waiters:
            self.on_wake()
        self.waiters.append((callback, on_error))

    @property
    def sync_wanted(self) -> bool:
        """A sync should start now. After a failed one, the files it had are synced again only
        when the shell's timer says so (retry_sync), or for new waiters."""
        if self.waiters:
            return True
        return self.retry_sync if self.sync_error is not None else bool(self.retired)

    @property
    def heavy_sync_wanted(self) -> bool:
        if self.heavy_waiters:
            return True
        return self.heavy_retry if self.sync_error is not None else bool(self.heavy_retired)

    def start_sync(self) -> SyncJob | None:
        """Flush, then take the files to sync and the waiters into a job (None: nothing to do,
        or a sync is already running: its end starts the next)."""
        self.flush()
        if (self.syncing or self.write_error is not None or self.thread_write_error is not None
                or self.failed_logs or not self.sync_wanted):
            return None
        self.retry_sync = False
        fd_logs = self._take_fds(heavy=False)
        logs = [qlog for qlog in fd_logs.values() if qlog is not None]
        job = SyncJob(list(fd_logs), self.retired, list(self.dirs), self.waiters, logs, fd_logs,
                      self.failed_logs)
        self.retired = []
        self.dirs = {}
        self.waiters = []
        self.syncing = True
        self.light_job = job
        return job

    def start_heavy_sync(self) -> SyncJob | None:
        """The heavy lane's job: the files of the heavy logs, and the waiters of that lane (None:
        nothing to do, or one runs). The shell runs it in the thread that does the large writes,
        after them; it waits for the light job running when it starts (a log that just became
        heavy: its older segments are synced before its newer ones)."""
        self.flush()
        if (self.heavy_syncing or self.write_error is not None or self.thread_write_error is not None
                or self.failed_logs or not self.heavy_sync_wanted):
            return None
        if self.retired and self.syncing:
            # files retired to the light lane wait for its next job (a log that has just become
            # heavy may have an older segment among them): this job follows that one
            return None
        self.heavy_retry = False
        fd_logs = self._take_fds(heavy=True)
        logs = [qlog for qlog in fd_logs.values() if qlog is not None]
        job = SyncJob(list(fd_logs), self.heavy_retired, [], self.heavy_waiters, logs, fd_logs,
                      self.failed_logs, heavy=True)
        job.after = self.light_job if self.syncing else None
        job.epochs = {qlog: qlog.heavy_epoch for qlog in self.heavy_logs}
        self.heavy_retired = []
        self.heavy_waiters = []
        self.heavy_syncing = True
        return job

    def _take_fds(self, heavy: bool) -> dict[int, QueueLog | None]:
        """The files to sync of one lane (taken out of sync_fds)."""
        if not self.heavy_logs:
            if heavy:
                return {}
            taken, self.sync_fds = self.sync_fds, {}
            return taken
        taken = {}
        kept = {}
        for fd, qlog in self.sync_fds.items():
            if (qlog is not None and qlog.heavy) == heavy:
                taken[fd] = qlog
            else:
                kept[fd] = qlog
        self.sync_fds = kept
        return taken

    def finish_sync(self, job: SyncJob) -> None:
        if job.heavy:
            self.heavy_syncing = False
            if job.error is None and not job.skipped:
                for qlog, epoch in job.epochs.items():
                    # covered: light again, unless it took a large record or a new segment since,
                    # or has data written since that still waits for a sync (its waiters count on
                    # the heavy lane for it)
                    if qlog.closed or (qlog.heavy_epoch == epoch and not qlog._threaded()
                                       and not qlog.dirty and qlog.wfd not in self.sync_fds):
                        qlog.heavy = False
                        self.heavy_logs.discard(qlog)
        else:
            self.syncing = False
            self.light_job = None
        if job.skipped:  # a write before it failed: everything waits for the next sync, as it was
            (self.heavy_waiters if job.heavy else self.waiters)[:0] = job.waiters
            (self.heavy_retired if job.heavy else self.retired)[:0] = job.retired
            for fd, qlog in job.fd_logs.items():
                self.sync_fds.setdefault(fd, qlog)
            for d in job.dirs:
                self.dirs[d] = None
            return
        if job.error is not None:
            self._sync_failed(job, job.error)
            return
        for fd, _ in job.retired:
            os.close(fd)
        if self.sync_error is not None and (job.fds or job.retired):
            self.sync_error = None
            log.warning("the message store syncs to disk again")
            self.on_sync_error(None)
        for callback, _ in job.waiters:
            callback()

    def _sync_failed(self, job: SyncJob, exc: OSError) -> None:
        """The data may not be on disk: confirm none of it. Every waiter is told (confirms are
        nacked, tx.commits fail), those that came during the job too (their data may sit in the
        same files, behind pages the kernel could not write). The job's files are synced again
        on the shell's timer, and the logs go on in new segments: nothing confirmed later lies
        behind a hole. RabbitMQ stops the node here; hare raises an alarm (publishers blocked)
        until a sync succeeds."""
        if job.heavy:
            waiters = job.waiters + self.heavy_waiters
            self.heavy_waiters = []
            lane_retired = self.heavy_retired
        else:
            waiters = job.waiters + self.waiters
            self.waiters = []
            lane_retired = self.retired
        for fd, needs_sync in job.retired:
            if needs_sync:
                lane_retired.append((fd, True))  # synced (then closed) at the retry
            else:
                os.close(fd)
        retired = {fd for fd, _ in lane_retired}
        for fd in job.fds:
            if fd not in retired:  # still a log's write segment (else the retry syncs it anyway)
                self.sync_fds.setdefault(fd, job.fd_logs.get(fd) if job.heavy else None)
        for d in job.dirs:
            self.dirs[d] = None
        for qlog in job.logs:
            qlog.roll_at = 0  # its next append starts a new segment
        first = self.sync_error is None
        self.sync_error = exc
        if waiters or first:
            log.error("cannot sync the message store to disk: %s: %d confirm batches (or tx.commits) "
                      "waiting for it are refused (basic.nack; a tx.commit closes its channel)%s",
                      exc, sum(1 for _, on_error in waiters if on_error is not None),
                      "; publishers are blocked until a sync succeeds (retried every second)"
                      if first else "")
        if first:
            self.on_sync_error(exc)
        for _, on_error in waiters:
            if on_error is not None:
                on_error(exc)

    def sync_now(self) -> None:
        """Flush and sync in this thread, both lanes (shutdown, tests without an event loop)."""
        while True:
            job = self.start_sync()
            if job is not None:
                job.run()
                self.finish_sync(job)
            heavy = self.start_heavy_sync()
            if heavy is not None:
                heavy.run()
                self.finish_sync(heavy)
            if job is None and heavy is None:
                return

    def close(self) -> None:
        """Clean shutdown: flush every log, sync, close the files."""
        self.retry_sync = self.heavy_retry = True
        self.sync_now()  # waiters first: they may still write (a delayed exchange's acks)
        for qlog in list(self.logs.values()):
            qlog.close()
        self.logs.clear()
        self.retry_sync = self.heavy_retry = True
        self.sync_now()
        if self.sync_error is not None:  # the last syncs failed too: give the files up
            log.error("closing the message store with files that could not be synced: %s",
                      self.sync_error)
            for fd, _ in self.retired + self.heavy_retired:
                os.close(fd)
            self.retired = []
            self.heavy_retired = []


def sync_directory(path: Path) -> None:
    """fsync a directory now (its new entries survive a power loss)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _BothLanes:
    """A waiter that may depend on a heavy log: its callback runs once a sync of each lane has
    succeeded; the first failure of either runs its on_error instead (once)."""

    __slots__ = ("callback", "on_error", "left")

    def __init__(self, callback: OnSynced, on_error: OnSyncError | None) -> None:
        self.callback = callback
        self.on_error = on_error
        self.left = 2  # lanes to succeed; -1: failed

    def synced(self) -> None:
        if self.left > 0:
            self.left -= 1
            if not self.left:
                self.callback()

    def failed(self, exc: OSError) -> None:
        if self.left > 0:
            self.left = -1
            if self.on_error is not None:
                self.on_error(exc)


def _call(fn: Callable[[], None]) -> None:
    fn()


def _unlink_at(dfd: int, names: tuple[str, ...]) -> None:
    try:
        for name in names:
            try:
                os.unlink(name, dir_fd=dfd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove %s of a queue log: %s", name, exc)
    finally:
        os.close(dfd)


def _noop() -> None:
    pass


def _run_through(steps: Iterator[None], what: str) -> None:
    for _ in steps:
        pass


def _run_write(job: WriteJob) -> None:
    raise AssertionError("write_in_thread without a shell to run the writes")


def _ignore_job(job: WriteJob) -> None:
    pass


def _ignore(_exc: OSError | None) -> None:
    pass


def _ignore_write(_exc: OSError) -> None:
    pass
