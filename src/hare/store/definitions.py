"""Durable definitions (vhosts, exchanges, queues, bindings, policies, users with their permissions
and limits, vhost limits) in SQLite.

Definitions are small and change rarely; SQLite gives atomic, crash-safe updates without
rewriting everything on each change. Every change is its own transaction, committed with
``synchronous=FULL`` before the client gets its declare-ok. Argument tables are stored as their
AMQP field-table encoding, so every value type survives a restart.

A full disk (SQLite's "database or disk is full", or an I/O error) does not fail the change: the
model has it already, so its statements are kept, in order, and run again (``retry``, on the
shell's free-disk timer) until they go through; ``on_write_error`` tells the broker, which raises
its disk alarm. When WAL's shared-memory file cannot be made at open (a full disk), the
database is opened in exclusive locking mode, which needs none (the data directory's lock keeps
other brokers out anyway).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..amqp.table import decode_table, encode_table

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vhosts (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS exchanges (
    vhost TEXT NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL, auto_delete INTEGER NOT NULL,
    internal INTEGER NOT NULL, arguments BLOB NOT NULL, PRIMARY KEY (vhost, name));
CREATE TABLE IF NOT EXISTS queues (
    vhost TEXT NOT NULL, name TEXT NOT NULL, arguments BLOB NOT NULL, PRIMARY KEY (vhost, name));
CREATE TABLE IF NOT EXISTS bindings (
    vhost TEXT NOT NULL, source TEXT NOT NULL, kind TEXT NOT NULL, destination TEXT NOT NULL,
    routing_key TEXT NOT NULL, arguments BLOB NOT NULL,
    PRIMARY KEY (vhost, source, kind, destination, routing_key, arguments));
CREATE TABLE IF NOT EXISTS policies (
    vhost TEXT NOT NULL, name TEXT NOT NULL, pattern TEXT NOT NULL, apply_to TEXT NOT NULL,
    priority INTEGER NOT NULL, definition TEXT NOT NULL, PRIMARY KEY (vhost, name));
CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, user TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vhost_limits (vhost TEXT PRIMARY KEY, limits TEXT NOT NULL);
"""
SCHEMA_VERSION = "1"

# a binding's destination kind
QUEUE, EXCHANGE = "queue", "exchange"

log = logging.getLogger("hare.store")

# a change: its statements, run in one transaction
Change = list[tuple[str, tuple[Any, ...]]]
_FULL_CODES = (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN)


def _disk_error(exc: sqlite3.Error) -> OSError | None:
    """The OSError a SQLite error stands for when the disk refused a write (None: another error)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None or code & 0xFF not in _FULL_CODES:
        return None
    return OSError(28 if code & 0xFF == sqlite3.SQLITE_FULL else 5, f"definitions store: {exc}")


def _has_surrogates(s: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in s)


def _args(table: dict[str, Any] | None) -> bytes:
    return encode_table(table or {})[4:]  # without the length prefix


def _table(blob: bytes) -> dict[str, Any]:
    return decode_table(len(blob).to_bytes(4, "big") + blob, 0)[0]


class Definitions:
    """The durable definitions of one broker (``data_dir/definitions.sqlite3``)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.pending: list[Change] = []  # changes the disk refused, to run again in order
        self.on_write_error: Callable[[OSError], None] = _ignore  # the broker's disk alarm
        self.db = self._connect(exclusive=False)
        try:
            self.db.executescript(SCHEMA)
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        except sqlite3.Error as exc:  # a full disk: fine if the schema is there (it writes nothing)
            if _disk_error(exc) is None or not self._has_schema():
                raise
            log.warning("definitions store: cannot write at start (%s): the schema is there", exc)

    def _connect(self, exclusive: bool) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            if exclusive:
                db.execute("PRAGMA locking_mode=EXCLUSIVE")  # before WAL: no -shm file to make
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            db.close()
            if exclusive or _disk_error(exc) is None:
                raise
            # a full disk: WAL's shared-memory file cannot be made; exclusive locking needs none
            # (the data directory's lock keeps other brokers out anyway)
            log.warning("definitions store: %s at open: opened in exclusive locking mode", exc)
            return self._connect(exclusive=True)
        return db

    def _has_schema(self) -> bool:
        names = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {"meta", "vhosts", "exchanges", "queues", "bindings", "policies", "users",
                "vhost_limits"} <= names

    def _run(self, sql: str, *params: Any) -> None:
        self._apply([(sql, params)])

    def _apply(self, change: Change) -> None:
        """Run one change (its statements in one transaction); kept for ``retry`` if the disk
        refuses it, or if changes before it wait already (the order is kept)."""
        if self.pending:
            self.pending.append(change)
            return
        exc = self._try(change)
        if exc is not None:
            self.pending.append(change)
            log.error("cannot write the definitions store: %s; the change is kept in memory and "
                      "written when the disk has space", exc)
            self.on_write_error(exc)

    def _try(self, change: Change) -> OSError | None:
        db = self.db
        try:
            if len(change) == 1:
                db.execute(change[0][0], change[0][1])
                return None
            db.execute("BEGIN")
            try:
                for sql, params in change:
                    db.execute(sql, params)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
        except sqlite3.Error as exc:
            err = _disk_error(exc)
            if err is None:
                raise
            return err
        return None

    def retry(self) -> bool:
        """Run the kept changes again, in order; True when none is left."""
        while self.pending:
            exc = self._try(self.pending[0])
            if exc is not None:
                return False
            self.pending.pop(0)
            if not self.pending:
                log.info("the definitions store can write again: the kept changes are written")
        return True

    @staticmethod
    def _s(s: str) -> bytes | str:
        # store names byte-exact: text when it is valid UTF-8, else the raw bytes
        return s.encode("utf-8", "surrogateescape") if _has_surrogates(s) else s

    # -- writes -----------------------------------------------------------------------------------

    def add_vhost(self, name: str) -> None:
        self._run("INSERT OR IGNORE INTO vhosts VALUES (?)", self._s(name))

    def remove_vhost(self, name: str) -> None:
        """A virtual host and everything in it (its users' permissions are in their records)."""
        v = self._s(name)
        self._apply([(f"DELETE FROM {table} = ?", (v,)) for table in (
            "vhosts WHERE name", "exchanges WHERE vhost", "queues WHERE vhost", "bindings WHERE vhost",
            "policies WHERE vhost", "vhost_limits WHERE vhost")])

    def put_user(self, name: str, record: dict[str, Any]) -> None:
        """A user's whole record (hash, tags, permissions, topic permissions, limits) as JSON."""
        self._run("INSERT OR REPLACE INTO users VALUES (?, ?)", name, json.dumps(record, ensure_ascii=False))

    def remove_user(self, name: str) -> None:
        self._run("DELETE FROM users WHERE name = ?", name)

    def set_vhost_limits(self, vhost: str, limits: dict[str, int]) -> None:
        if limits:
            self._run("INSERT OR REPLACE INTO vhost_limits VALUES (?, ?)", self._s(vhost), json.dumps(limits))
        else:
            self._run("DELETE FROM vhost_limits WHERE vhost = ?", self._s(vhost))

    def seeded(self) -> bool:
        """Whether the default user and vhost were created once (on first start, as RabbitMQ:
        deleting them later is not undone by a restart). Marks it done."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'seeded'").fetchone()
        if row is None:
            self._run("INSERT INTO meta VALUES ('seeded', '1')")
        return row is not None

    def add_exchange(self, vhost: str, name: str, type_name: str, auto_delete: bool, internal: bool,
                     arguments: dict[str, Any] | None) -> None:
        self._run("INSERT OR REPLACE INTO exchanges VALUES (?, ?, ?, ?, ?, ?)", self._s(vhost),
                  self._s(name), type_name, int(auto_delete), int(internal), _args(arguments))

    def remove_exchange(self, vhost: str, name: str) -> None:
        v, n = self._s(vhost), self._s(name)
        self._apply([("DELETE FROM exchanges WHERE vhost = ? AND name = ?", (v, n)),
                     ("DELETE FROM bindings WHERE vhost = ? AND (source = ? OR (kind = ? AND "
                      "destination = ?))", (v, n, EXCHANGE, n))])

    def add_queue(self, vhost: str, name: str, arguments: dict[str, Any] | None) -> None:
        self._run("INSERT OR REPLACE INTO queues VALUES (?, ?, ?)", self._s(vhost), self._s(name),
                  _args(arguments))

    def remove_queue(self, vhost: str, name: str) -> None:
        v, n = self._s(vhost), self._s(name)
        self._apply([("DELETE FROM queues WHERE vhost = ? AND name = ?", (v, n)),
                     ("DELETE FROM bindings WHERE vhost = ? AND kind = ? AND destination = ?",
                      (v, QUEUE, n))])

    def add_binding(self, vhost: str, source: str, kind: str, destination: str, routing_key: str,
                    arguments: dict[str, Any] | None) -> None:
        self._run("INSERT OR IGNORE INTO bindings VALUES (?, ?, ?, ?, ?, ?)", self._s(vhost),
                  self._s(source), kind, self._s(destination), self._s(routing_key), _args(arguments))

    def remove_binding(self, vhost: str, source: str, kind: str, destination: str, routing_key: str,
                       arguments: dict[str, Any] | None) -> None:
        self._run("DELETE FROM bindings WHERE vhost = ? AND source = ? AND kind = ? AND destination = ? "
                  "AND routing_key = ? AND arguments = ?", self._s(vhost), self._s(source), kind,
                  self._s(destination), self._s(routing_key), _args(arguments))

    def add_policy(self, vhost: str, name: str, pattern: str, apply_to: str, priority: int,
                   definition: dict[str, Any]) -> None:
        """A policy (``rabbitmqctl set_policy``); its definition is kept as JSON text."""
        self._run("INSERT OR REPLACE INTO policies VALUES (?, ?, ?, ?, ?, ?)", self._s(vhost),
                  self._s(name), self._s(pattern), apply_to, priority,
                  json.dumps(definition, ensure_ascii=False))

    def remove_policy(self, vhost: str, name: str) -> None:
        self._run("DELETE FROM policies WHERE vhost = ? AND name = ?", self._s(vhost), self._s(name))

    # -- reads (at startup) -------------------------------------------------------------------------

    def vhosts(self) -> list[str]:
        return [_str(r[0]) for r in self.db.execute("SELECT name FROM vhosts ORDER BY name")]

    def exchanges(self, vhost: str) -> list[tuple[str, str, bool, bool, dict[str, Any]]]:
        """(name, type, auto_delete, internal, arguments) of each durable exchange."""
        return [(_str(r[0]), _str(r[1]), bool(r[2]), bool(r[3]), _table(r[4])) for r in self.db.execute(
            "SELECT name, type, auto_delete, internal, arguments FROM exchanges WHERE vhost = ? "
            "ORDER BY name", (self._s(vhost),))]

    def queues(self, vhost: str) -> list[tuple[str, dict[str, Any]]]:
        return [(_str(r[0]), _table(r[1])) for r in self.db.execute(
            "SELECT name, arguments FROM queues WHERE vhost = ? ORDER BY name", (self._s(vhost),))]

    def bindings(self, vhost: str) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        """(source, kind, destination, routing_key, arguments) of each durable binding."""
        return [(_str(r[0]), _str(r[1]), _str(r[2]), _str(r[3]), _table(r[4])) for r in self.db.execute(
            "SELECT source, kind, destination, routing_key, arguments FROM bindings WHERE vhost = ? "
            "ORDER BY rowid", (self._s(vhost),))]

    def policies(self, vhost: str) -> list[tuple[str, str, str, int, dict[str, Any]]]:
        """(name, pattern, apply_to, priority, definition) of each policy of ``vhost``."""
        return [(_str(r[0]), _str(r[1]), r[2], r[3], json.loads(r[4])) for r in self.db.execute(
            "SELECT name, pattern, apply_to, priority, definition FROM policies WHERE vhost = ? "
            "ORDER BY name", (self._s(vhost),))]

    def users(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self.db.execute("SELECT user FROM users ORDER BY name")]

    def vhost_limits(self) -> dict[str, dict[str, int]]:
        rows = self.db.execute("SELECT vhost, limits FROM vhost_limits")
        return {_str(r[0]): json.loads(r[1]) for r in rows}

    def close(self) -> None:
        if self.pending and not self.retry():
            log.error("closing the definitions store with %d changes the disk refused: they are lost",
                      len(self.pending))
        try:
            self.db.close()
        except sqlite3.Error as exc:  # the last checkpoint (a full disk): the WAL keeps it
            log.warning("definitions store: %s at close", exc)


def _str(value: str | bytes) -> str:
    """A name stored as a BLOB (it was not valid UTF-8) back to the surrogate-escaped str."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _ignore(_exc: OSError) -> None:
    pass
