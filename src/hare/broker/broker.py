"""The broker: virtual hosts, users and settings shared by every connection."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..auth.users import UserStore, user_from_record
from ..store import delayed as delayed_store
from ..store.definitions import Definitions
from ..store.lock import DataDirLock
from ..store.message_store import MessageStore, sync_directory
from .background import Background
from .commands import Commands
from .definitions_file import load_definitions_file
from .timers import Timers
from .vhost import VirtualHost

log = logging.getLogger("hare.broker")

MiB = 1 << 20
NO_LIMIT = 1 << 62
# Memory pressure (set_memory_pressure): past PRESSURE_ON of the memory high watermark each
# channel may hold at most max(UNACKED_SHARE_MIN, watermark * UNACKED_SHARE) bytes of unacked
# deliveries; the limit goes when the memory is back under PRESSURE_OFF.
PRESSURE_ON = 0.5
PRESSURE_OFF = 0.4
UNACKED_SHARE_MIN = 4 * MiB
UNACKED_SHARE = 1 / 16


@dataclass
class BrokerConfig:
    """Settings RabbitMQ users know from rabbitmq.conf, with RabbitMQ's defaults."""

    channel_max: int = 2047
    frame_max: int = 131072
    heartbeat: int = 60
    default_user: str = "guest"
    default_pass: str = "guest"
    default_vhost: str = "/"
    # what the default user gets when it is created (first start): RabbitMQ's default_user_tags
    # and default_permissions (configure, write, read)
    default_user_tags: tuple[str, ...] = ("administrator",)
    default_permissions: tuple[str, str, str] = (".*", ".*", ".*")
    loopback_users: tuple[str, ...] = ("guest",)
    max_message_size: int = 128 * 1024 * 1024  # RabbitMQ 3.10 default: 128 MiB
    disk_free_limit: int = 50_000_000  # RabbitMQ's default: block publishers under 50 MB free
    # the memory alarm (server/memory.py): over this share of the RAM, or over the absolute number
    # of bytes if one is set, publishers are blocked; the RAM can be given (containers)
    vm_memory_high_watermark: float = 0.4
    vm_memory_high_watermark_absolute: int | None = None
    total_memory_available_override_value: int | None = None
    handshake_timeout: int | None = 10_000  # ms from the socket's accept to connection.open-ok
    connection_max: int | None = None  # open connections at most (None: no limit)
    # ms a channel may keep a delivery unacknowledged before it is closed (406) and the delivery
    # requeued; RabbitMQ's default, 30 minutes. None: no limit. Per queue: x-consumer-timeout.
    consumer_timeout: int | None = 1_800_000
    load_definitions: str | None = None  # a definitions JSON file applied at start (policies, ...)
    # SASL mechanisms offered (RabbitMQ's default; EXTERNAL: the TLS client certificate, offered on
    # TLS connections only) and where EXTERNAL takes the user name from (auth/external.py)
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "AMQPLAIN")
    ssl_cert_login_from: str = "distinguished_name"
    # what connection.start says the server is: the RabbitMQ release whose behaviour hare follows
    # (clients such as kombu pick their semantics by product and version); see server_properties
    product: str = "RabbitMQ"
    product_version: str = "3.10.8"


def make_dirs(path: Path) -> None:
    """mkdir -p, with each new directory's entry synced in its parent (a power loss right after
    must not take the data directory away with everything confirmed in it)."""
    missing = []
    d = path
    while not d.is_dir():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        sync_directory(d.parent)


class Broker:
    """Everything one node serves. With a ``data_dir`` the durable definitions and messages are
    kept there and restored at start; without one, everything is in memory."""

    def __init__(self, config: BrokerConfig | None = None, data_dir: Path | str | None = None) -> None:
        self.config = config or BrokerConfig()
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.store: MessageStore | None = None
        self.definitions: Definitions | None = None
        self.lock: DataDirLock | None = None
        self.background = Background()  # big jobs in slices (background.py); the shell runs them
        if self.data_dir is not None:
            make_dirs(self.data_dir)
            # before anything in the directory is read or written: one broker per directory
            lock = DataDirLock(self.data_dir)
            lock.acquire()  # raises DataDirLocked, naming the holder's pid
            self.lock = lock
        try:
            self._open()
        except BaseException:
            self.close()  # a broker that failed to start leaves the directory to the next
            raise

    def _open(self) -> None:
        if self.data_dir is not None:
            self.store = MessageStore(self.data_dir)
            self.store.on_sync_error = self.set_sync_alarm
            self.store.on_write_error = self.set_disk_full
            self.definitions = Definitions(self.data_dir / "definitions.sqlite3")
            self.definitions.on_write_error = self.set_disk_full
            sync_directory(self.data_dir)  # the entries of hare.lock, queues/, the database files
        self.timers = Timers()  # expiries and timeouts; the shell runs them when due
        if self.store is not None:
            self.store.later = self.background.add
        self.vhosts: dict[str, VirtualHost] = {}
        self.users = UserStore()
        self.commands = Commands(self)  # the one path for metadata changes (commands.py)
        self.connections: set[Any] = set()
        # resource alarms in effect ("disk": free space; "disk_sync": the store cannot sync to
        # disk): publishers are blocked
        self.alarms: set[str] = set()
        self.sync_error: str | None = None  # why "disk_sync" is on
        # a write failed for want of space (its data is kept in memory): "disk" is on until the
        # free-disk poll sees space and every kept write has gone through (server/storage.py)
        self.disk_full: str | None = None
        # memory pressure (set_memory_pressure): the bytes of unacked deliveries a channel may hold
        self.memory_pressure = False
        self.unacked_limit = NO_LIMIT
        if self.definitions is None or not self.definitions.seeded():
            self._seed()
        if self.definitions is not None:
            self._restore()
        if self.config.load_definitions:
            load_definitions_file(self, self.config.load_definitions)

    def add_vhost(self, name: str) -> VirtualHost:
        """The model of a vhost (made if there is none): ``commands.add_vhost`` adds one and
        keeps it, recovery reads it back."""
        vhost = self.vhosts.get(name)
        if vhost is None:
            vhost = self.vhosts[name] = VirtualHost(name, store=self.store, timers=self.timers)
            commands = self.commands
            vhost.on_expired = lambda q: commands.queue_expired(vhost, q)
        return vhost

    def _seed(self) -> None:
        """The default vhost and user, on the first start only (as RabbitMQ: once deleted, they
        stay deleted)."""
        c = self.config
        self.commands.add_vhost(c.default_vhost)
        self.commands.add_user(c.default_user, c.default_pass, list(c.default_user_tags))
        self.commands.set_permissions(c.default_user, c.default_vhost, *c.default_permissions)

    def _restore(self) -> None:
        """Durable exchanges, queues (with their messages) and bindings, as the last run left them.
        A read into the model: nothing is written back to the definitions store, nothing is
        announced to the command layer's listeners."""
        assert self.definitions is not None and self.store is not None
        started = time.monotonic()
        defs = self.definitions
        kept = set()
        queues = messages = 0
        for vname in defs.vhosts():
            vhost = self.add_vhost(vname)
            for name, pattern, apply_to, priority, definition in defs.policies(vname):
                try:  # first: the exchanges and queues restored next get theirs at once
                    vhost.restore_policy(name, pattern, apply_to, priority, definition)
                except ValueError as exc:
                    log.error("policy '%s' in vhost '%s' is not valid, ignored: %s", name, vname, exc)
            for name, type_name, auto_delete, internal, arguments in defs.exchanges(vname):
                vhost.restore_exchange(name, type_name, auto_delete, internal, arguments)
            for name, arguments in defs.queues(vname):
                q = vhost.restore_queue(name, arguments)
                kept.add(self.store.queue_dir(vname, name, True))
                queues += 1
                messages += q.message_count
            for source, kind, destination, routing_key, arguments in defs.bindings(vname):
                vhost.restore_binding(source, kind, destination, routing_key, arguments)
        for name, limits in defs.vhost_limits().items():
            if name in self.vhosts:
                self.vhosts[name].limits = limits
        for record in defs.users():
            user = user_from_record(record, record["name"] in self.config.loopback_users)
            self.users.users[user.name] = user
        self.store.remove_orphans(kept)
        delayed_store.remove_orphans(self.store)  # delayed exchanges that no longer exist
        if queues:
            log.info("recovered %d durable queues with %d messages in %.2fs", queues, messages,
                     time.monotonic() - started)

    def set_disk_alarm(self, on: bool, free: int = 0) -> None:
        """Free disk space fell under ``disk_free_limit`` (or came back): block publishers (or
        let them go), as RabbitMQ's disk alarm does. After a failed write (``set_disk_full``)
        the alarm stays on until the shell has cleared ``disk_full``."""
        on = on or self.disk_full is not None
        if on == ("disk" in self.alarms):
            return
        if on:
            log.warning("free disk space (%d bytes) is under the limit of %d bytes: publishers are "
                        "blocked", free, self.config.disk_free_limit)
            self.alarms.add("disk")
        else:
            log.info("free disk space (%d bytes) is back over the limit: publishers may go on", free)
            self.alarms.discard("disk")
        for conn in list(self.connections):
            conn.alarm_changed()

    def set_disk_full(self, error: OSError | None) -> None:
        """A write to the data directory failed (error: the disk is full; what was not written
        is kept in memory), or every kept write has gone through (None). The first failure
        raises the disk alarm at once, without waiting for the free-disk poll."""
        if error is None:
            self.disk_full = None  # the next set_disk_alarm (the poll) may clear the alarm
            return
        first = self.disk_full is None
        self.disk_full = str(error)
        if first and "disk" not in self.alarms:
            log.error("alarm set: disk (a write failed: %s); publishers are blocked until the disk "
                      "has space again and what could not be written is written", error)
            self.alarms.add("disk")
            for conn in list(self.connections):
                conn.alarm_changed()

    def set_sync_alarm(self, error: OSError | None) -> None:
        """A sync of the message store failed (error), or one succeeded again (None). The store
        logs the failure; meanwhile publishers are blocked, as under the disk alarm."""
        if (error is not None) == ("disk_sync" in self.alarms):
            return
        if error is not None:
            self.alarms.add("disk_sync")
            self.sync_error = str(error)
            log.error("alarm set: disk_sync (the message store cannot sync to disk: %s); publishers "
                      "are blocked", error)
        else:
            self.alarms.discard("disk_sync")
            self.sync_error = None
            log.warning("alarm cleared: disk_sync (the message store syncs again); publishers may go on")
        for conn in list(self.connections):
            conn.alarm_changed()

    def set_memory_alarm(self, on: bool, used: int = 0, limit: int = 0) -> None:
        """The broker's memory went over its high watermark (or back under it): block publishers
        (or let them go), as RabbitMQ's memory alarm does."""
        if on == ("memory" in self.alarms):
            return
        if on:
            log.warning("memory resource limit alarm set: %d MiB (%d bytes) in use, over the high "
                        "watermark of %d MiB (%d bytes): publishers are blocked", used >> 20, used,
                        limit >> 20, limit)
            self.alarms.add("memory")
        else:
            log.info("memory resource limit alarm cleared: %d MiB (%d bytes) in use, under the high "
                     "watermark of %d MiB (%d bytes)", used >> 20, used, limit >> 20, limit)
            self.alarms.discard("memory")
        for conn in list(self.connections):
            conn.alarm_changed()

    def set_memory_pressure(self, used: int, watermark: int) -> None:
        """The memory monitor's reading (``server/memory.py``). Past half the high watermark, a
        channel whose consumers hold more than its share of unacked bytes gets no more deliveries
        until acks bring it back under (the messages wait in their queues, paged to disk): a
        consumer that never acks cannot fill the memory alone. Under 40 % the limit goes. (hare's
        own: RabbitMQ has no such limit, only the memory alarm at 100 %, which blocks publishers.)"""
        if self.memory_pressure:
            on = used >= watermark * PRESSURE_OFF
        else:
            on = used > watermark * PRESSURE_ON
        limit = max(UNACKED_SHARE_MIN, int(watermark * UNACKED_SHARE)) if on else NO_LIMIT
        if on == self.memory_pressure and limit == self.unacked_limit:
            return
        if on != self.memory_pressure:
            if on:
                log.warning("memory pressure: %d MiB in use, over %d%% of the high watermark (%d MiB): "
                            "each channel may hold at most %d MiB of unacknowledged messages",
                            used >> 20, PRESSURE_ON * 100, watermark >> 20, limit >> 20)
            else:
                log.info("memory pressure over: %d MiB in use, under %d%% of the high watermark "
                         "(%d MiB)", used >> 20, PRESSURE_OFF * 100, watermark >> 20)
        self.memory_pressure = on
        self.unacked_limit = limit
        for conn in list(self.connections):
            conn.unacked_limit_changed(limit)

    def close(self) -> None:
        """Write out and close the store (after the connections are gone), then let the data
        directory go."""
        self.background.finish()  # requeues still under way end first: their acks are written
        try:
            if self.store is not None:
                self.store.close()
            if self.definitions is not None:
                self.definitions.close()
        finally:
            if self.lock is not None:
                self.lock.release()
