"""One broker per data directory: an exclusive lock on ``<data dir>/hare.lock``.

The broker takes it before it reads or writes anything else in the directory and holds it until
it closes; the file holds the holder's pid, for the message a second broker gives when it is
refused. ``flock`` locks belong to the open file, so two brokers in one process (embedded ones)
exclude each other as two processes do; the kernel drops the lock when its holder dies (kill -9
included), so a stale file never keeps a broker from starting. The file itself stays.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "hare.lock"


class DataDirLocked(OSError):
    """Another broker holds the data directory's lock."""


class DataDirLock:
    __slots__ = ("path", "fd")

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self.fd = -1

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise DataDirLocked(f"data directory {self.path.parent} is in use by another broker "
                                f"(pid {holder}, holding {self.path})") from None
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:  # a full disk: the lock holds all the same, only the pid is not shown
            pass

    def release(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            try:
                os.ftruncate(fd, 0)  # no stale pid for the next reader
            finally:
                os.close(fd)  # closing the last descriptor of the open file drops the lock
