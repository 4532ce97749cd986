"""The message store's side of the asyncio shell.

- Flush: when a queue log has buffered writes, one flush runs at the end of the loop turn.
- Group commit: when confirms or tx.commits wait for stable storage, the files written since the
  last sync are fdatasync'ed in a worker thread; the next sync starts as soon as one ends, so
  every waiter that arrived meanwhile shares it.
- A failed sync: its waiters are refused (confirms nacked), and its files synced again every
  second until it succeeds (the broker's "disk_sync" alarm is on meanwhile).
- Large writes: a record with a large body (queue_log.BIG_RECORD), and what its log buffers after
  it, is written in the heavy lane's thread (log_jobs.WriteJob), before the heavy sync submitted
  after it; the logs that took one are synced there too (message_store.py, "two lanes").
- Compaction: a segment rewrite (log_jobs.CompactJob) runs in another worker thread, one at a
  time, and is adopted by its log on the loop when done; unlinks of dropped segments run there.
- Free disk: checked every second; under ``disk_free_limit`` the broker raises its disk alarm
  (publishers are blocked) and clears it when space returns. A write that fails (a full disk)
  raises it at once (``Broker.set_disk_full``); then each check first writes what was kept (the
  message store's buffers, the definitions' changes), and the alarm clears only when that went
  through and the free space is over the limit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..broker.broker import Broker
from ..store.log_jobs import CompactJob, WriteJob
from ..store.message_store import MessageStore, SyncJob

log = logging.getLogger("hare.server")

DISK_CHECK_INTERVAL = 1.0


class StoreDriver:
    def __init__(self, broker: Broker, store: MessageStore, loop: asyncio.AbstractEventLoop) -> None:
        self.broker = broker
        self.store = store
        self.loop = loop
        self.scheduled = False
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="hare-sync")
        self.running: asyncio.Future[None] | None = None
        # segment compactions (log_jobs.CompactJob): in a thread of their own, one at a time, so
        # that neither the loop nor the group commit waits for a rewrite
        self.compact_executor = ThreadPoolExecutor(1, thread_name_prefix="hare-compact")
        self.compacting: asyncio.Future[None] | None = None
        store.compact_in_thread = True
        store.in_thread = self._in_thread  # (unlinks of dropped segments: the compaction thread)
        # the heavy lane (MessageStore.start_heavy_sync): large writes and the syncs of the logs
        # that took them, in a thread of their own (one thread: a sync submitted after a write
        # covers it), so that the group commit of the others does not wait for them
        self.heavy_executor = ThreadPoolExecutor(1, thread_name_prefix="hare-heavy")
        self.heavy_running: asyncio.Future[None] | None = None
        self.writes: dict[WriteJob, concurrent.futures.Future[None]] = {}
        store.submit_write = self._submit_write
        store.wait_write = self._wait_write
        store.write_in_thread = True
        self.disk_timer: asyncio.TimerHandle | None = None
        store.on_wake = self.wake
        self.check_disk()

    def wake(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.tick)

    def tick(self) -> None:
        self.scheduled = False
        job = self.store.start_sync()  # flushes; None when there is nothing to sync (or one runs)
        if job is not None:
            self.running = self.loop.run_in_executor(self.executor, job.run)
            self.running.add_done_callback(lambda _f: self._synced(job))
        heavy = self.store.start_heavy_sync()
        if heavy is not None:
            self.heavy_running = self.loop.run_in_executor(self.heavy_executor, heavy.run)
            self.heavy_running.add_done_callback(lambda _f: self._heavy_synced(heavy))
        if self.compacting is None and self.store.compactions:
            self._start_compaction()

    def _submit_write(self, job: WriteJob) -> None:
        future = self.heavy_executor.submit(job.run)
        self.writes[job] = future
        future.add_done_callback(lambda _f: self.loop.call_soon_threadsafe(self._written, job))

    def _wait_write(self, job: WriteJob) -> None:
        """The loop needs a log's data in its file now (a read of what was just written)."""
        future = self.writes.get(job)
        if future is not None:
            future.exception()  # waits; job.run reports its errors in the job

    def _written(self, job: WriteJob) -> None:
        if self.writes.pop(job, None) is None:
            return
        self.store.finish_write(job)
        self.wake()  # a sync may wait for it, the log may have more to write

    def _in_thread(self, fn: Callable[[], None]) -> None:
        self.compact_executor.submit(fn)

    def _start_compaction(self) -> None:
        cjob = self.store.next_compaction()
        if cjob is None:
            return
        self.compacting = self.loop.run_in_executor(self.compact_executor, cjob.run)
        self.compacting.add_done_callback(lambda _f: self._compacted(cjob))

    def _compacted(self, cjob: CompactJob) -> None:
        self.compacting = None
        cjob.log.finish_compaction(cjob)  # may write (acks): the next tick flushes them
        if self.store.compactions:
            self._start_compaction()

    def _synced(self, job: SyncJob) -> None:
        self.running = None
        self.store.finish_sync(job)
        if self.store.sync_wanted or self.store.heavy_sync_wanted:
            self.wake()

    def _heavy_synced(self, job: SyncJob) -> None:
        self.heavy_running = None
        self.store.finish_sync(job)
        if self.store.sync_wanted or self.store.heavy_sync_wanted:
            self.wake()

    def check_disk(self) -> None:
        broker = self.broker
        defs = broker.definitions
        if broker.disk_full is not None or self.store.write_error is not None:
            self.store.flush()  # write what a full disk refused (and what came since)
            if (self.store.write_error is None and self.store.thread_write_error is None
                    and (defs is None or defs.retry())):
                log.info("the data directory can be written again: every kept write went through")
                broker.set_disk_full(None)
        try:
            free = shutil.disk_usage(self.store.data_dir).free
        except OSError as exc:
            log.warning("cannot read free disk space of %s: %s", self.store.data_dir, exc)
        else:
            broker.set_disk_alarm(free < broker.config.disk_free_limit, free)
        if self.store.write_error is None and (self.store.sync_wanted or self.store.heavy_sync_wanted):
            self.wake()  # the syncs (and confirms) that waited for the writes
        if self.store.sync_error is not None:
            self.store.retry_sync = self.store.heavy_retry = True  # and the syncs
            self.wake()
        self.disk_timer = self.loop.call_later(DISK_CHECK_INTERVAL, self.check_disk)

    async def close(self) -> None:
        """After the connections are gone: finish the running sync, then close the store."""
        if self.disk_timer is not None:
            self.disk_timer.cancel()
        self.store.drop_compactions()  # those not started; the running one is finished
        while self.compacting is not None:
            await asyncio.shield(self.compacting)
            await asyncio.sleep(0)
        self.store.compact_in_thread = False
        self.store.in_thread = _call
        while self.writes:
            for job, future in list(self.writes.items()):
                await asyncio.wrap_future(future)
                self._written(job)
        self.store.write_in_thread = False
        while self.running is not None or self.heavy_running is not None:
            await asyncio.shield(self.running or self.heavy_running)  # type: ignore[arg-type]
            await asyncio.sleep(0)
        self.store.on_wake = _noop
        self.broker.close()
        self.executor.shutdown(wait=True)
        self.heavy_executor.shutdown(wait=True)
        self.compact_executor.shutdown(wait=True)


def _call(fn: Callable[[], None]) -> None:
    fn()


def _noop() -> None:
    pass
