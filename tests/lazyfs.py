"""A FUSE file system that can lose power, in the manner of LazyFS.

It keeps every file and directory in memory, twice: as the running system sees it, and as a disk
would hold it after a power loss, that is, as of the last ``fsync``/``fdatasync`` of each file
and the last ``fsync`` of each directory. A "cut" drops everything not yet synced: the data written
to a file since its last sync, and every entry added to, removed from or renamed in a directory
since that directory's last sync (a file whose entry was never synced is gone with its data).

Run as ``python lazyfs.py MOUNTPOINT`` (foreground; libfuse unmounts on SIGTERM). It is driven by
writing commands to ``MOUNTPOINT/.lazyfs`` (reading it gives counters):

``cut``                 power loss now: the tree becomes what the disk holds
``torn 1``              a cut also keeps the unsynced writes of each file but the last one, and all
                        of that one but its last byte (write-back reached the disk partly: torn)
``entry-on-fsync 1``    an fsync of a file also makes its name durable in its directory (ext4's
                        behaviour for a new file; POSIX does not promise it)
``cut-after NAME``      the power is lost right after the next fsync of a file named NAME: a later
                        ``cut`` restores the state of that moment; until then the system runs on,
                        but that fsync and every later one fail with EIO (nothing after the
                        moment may be confirmed)
``fail-fsync SUFFIX``   fsync/fdatasync of files whose name ends with SUFFIX fail with EIO and
                        make nothing durable; ``fail-fsync`` alone: they succeed again
``capacity BYTES``      the disk holds BYTES of file data: a write (or a truncate) that would go
                        past it fails with ENOSPC and writes nothing (so a big write fails while
                        statfs, which reports the free space, still shows some);
                        ``capacity`` alone: unlimited again (statfs: 64 GiB, all free)

The test helper ``LazyFS`` (below) mounts it in a temporary directory.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CTL = ".lazyfs"


class Node:
    __slots__ = ("is_dir", "mode", "data", "durable", "writes", "entries", "durable_entries", "mtime")

    def __init__(self, is_dir: bool, mode: int) -> None:
        self.is_dir = is_dir
        self.mode = mode
        self.data = bytearray()  # a file's content as the system sees it
        self.durable = b""  # as of its last sync
        self.writes: list[tuple[int, bytes] | tuple[int, None]] = []  # since then: (offset, data) or
        # (length, None) for a truncate
        self.entries: dict[str, Node] = {}
        self.durable_entries: dict[str, Node] = {}
        self.mtime = time.time_ns()


def _fs_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class PowerLossFS:
    use_ns = True

    def __init__(self) -> None:
        self.root = Node(True, stat.S_IFDIR | 0o755)
        self.handles: dict[int, Node] = {}
        self.next_fh = 1
        self.torn = False
        self.entry_on_fsync = False
        self.cut_after: str | None = None
        self.cut_state: Node | None = None  # the tree to restore at the next cut (cut-after)
        self.fail_suffix: str | None = None
        self.dead = False  # the power went (cut-after): no sync succeeds any more
        self.capacity: int | None = None  # bytes of file data the disk holds (None: no limit)
        self.counters = {"fsync": 0, "fsyncdir": 0, "failed": 0, "cuts": 0}

    # -- the tree ---------------------------------------------------------------------------------

    def _lookup(self, path: str) -> Node:
        node = self.root
        for part in path.split("/"):
            if not part:
                continue
            if not node.is_dir:
                raise _fs_error(errno.ENOTDIR)
            child = node.entries.get(part)
            if child is None:
                raise _fs_error(errno.ENOENT)
            node = child
        return node

    def _parent(self, path: str) -> tuple[Node, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self._lookup(head or "/")
        if not parent.is_dir:
            raise _fs_error(errno.ENOTDIR)
        return parent, name

    def _node(self, path: str | None, fh: Any) -> Node:
        if fh:
            node = self.handles.get(fh)
            if node is None:
                raise _fs_error(errno.EBADF)
            return node
        if path is None:
            raise _fs_error(errno.EBADF)
        return self._lookup(path)

    def _power_state(self) -> Node:
        """The tree a power loss now would leave: fresh nodes, built from what is durable."""
        done: dict[int, Node] = {}

        def rebuild(node: Node) -> Node:
            if id(node) in done:
                return done[id(node)]
            new = done[id(node)] = Node(node.is_dir, node.mode)
            if node.is_dir:
                new.entries = {name: rebuild(child) for name, child in node.durable_entries.items()}
                new.durable_entries = dict(new.entries)
            else:
                data = bytearray(node.durable)
                if self.torn and node.writes:
                    for i, (off, chunk) in enumerate(node.writes):
                        if chunk is None:
                            del data[off:]
                            continue
                        if i == len(node.writes) - 1:
                            chunk = chunk[:-1]
                        if len(data) < off:
                            data.extend(bytes(off - len(data)))
                        data[off : off + len(chunk)] = chunk
                new.data = data
                new.durable = bytes(data)
            return new

        return rebuild(self.root)

    def _command(self, text: str) -> None:
        for line in text.splitlines():
            word, _, arg = line.strip().partition(" ")
            if word == "cut":
                self.root = self.cut_state if self.cut_state is not None else self._power_state()
                self.cut_state = None
                self.cut_after = None
                self.dead = False
                self.handles.clear()
                self.counters["cuts"] += 1
            elif word == "torn":
                self.torn = arg == "1"
            elif word == "entry-on-fsync":
                self.entry_on_fsync = arg == "1"
            elif word == "cut-after":
                self.cut_after = arg or None
                self.cut_state = None
            elif word == "fail-fsync":
                self.fail_suffix = arg or None
            elif word == "capacity":
                self.capacity = int(arg) if arg else None
            elif word:
                raise _fs_error(errno.EINVAL)

    def _status(self) -> bytes:
        s = " ".join(f"{k}={v}" for k, v in self.counters.items())
        return f"{s} cut_pending={int(self.cut_state is not None)} used={self._used():012d}\n".encode()

    def _used(self) -> int:
        """Bytes of file data in the tree (open files already unlinked are not counted)."""
        seen: set[int] = set()
        total = 0
        stack = [self.root]
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.is_dir:
                stack.extend(node.entries.values())
            else:
                total += len(node.data)
        return total

    def _room(self, node: Node, end: int) -> int:
        """How far ``node`` may grow towards a length of ``end`` bytes."""
        if self.capacity is None or end <= len(node.data):
            return end
        free = self.capacity - self._used()
        return len(node.data) + max(0, free)

    # -- operations -------------------------------------------------------------------------------

    def init(self, path: str) -> None:
        pass

    def destroy(self, path: str) -> None:
        pass

    def getattr(self, path: str | None, fh: Any = None) -> dict[str, Any]:
        if path == "/" + CTL:
            return {"st_mode": stat.S_IFREG | 0o666, "st_nlink": 1, "st_size": len(self._status())}
        node = self._node(path, fh)
        return {"st_mode": node.mode, "st_nlink": 2 if node.is_dir else 1,
                "st_size": len(node.data) if not node.is_dir else 4096, "st_uid": 0, "st_gid": 0,
                "st_atime": node.mtime, "st_mtime": node.mtime, "st_ctime": node.mtime,
                "st_blksize": 4096, "st_blocks": (len(node.data) + 511) // 512}

    def access(self, path: str, amode: int) -> int:
        if path != "/" + CTL:
            self._lookup(path)
        return 0

    def readdir(self, path: str, fh: Any) -> list[str]:
        node = self._lookup(path)
        if not node.is_dir:
            raise _fs_error(errno.ENOTDIR)
        names = [".", ".."] + list(node.entries)
        if node is self.root:
            names.append(CTL)
        return names

    def opendir(self, path: str) -> int:
        if not self._lookup(path).is_dir:
            raise _fs_error(errno.ENOTDIR)
        return 0

    def releasedir(self, path: str, fh: Any) -> int:
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        parent, name = self._parent(path)
        if name in parent.entries:
            raise _fs_error(errno.EEXIST)
        parent.entries[name] = Node(True, stat.S_IFDIR | (mode & 0o7777))
        parent.mtime = time.time_ns()
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:  # the control socket (hare-ctl.sock)
        parent, name = self._parent(path)
        if name in parent.entries:
            raise _fs_error(errno.EEXIST)
        parent.entries[name] = Node(False, mode)
        return 0

    def rmdir(self, path: str) -> int:
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            raise _fs_error(errno.ENOENT)
        if not node.is_dir:
            raise _fs_error(errno.ENOTDIR)
        if node.entries:
            raise _fs_error(errno.ENOTEMPTY)
        del parent.entries[name]
        return 0

    def unlink(self, path: str) -> int:
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            raise _fs_error(errno.ENOENT)
        if node.is_dir:
            raise _fs_error(errno.EISDIR)
        del parent.entries[name]
        return 0

    def rename(self, old: str, new: str) -> int:
        op, oname = self._parent(old)
        np, nname = self._parent(new)
        node = op.entries.get(oname)
        if node is None:
            raise _fs_error(errno.ENOENT)
        target = np.entries.get(nname)
        if target is not None and target.is_dir and target.entries:
            raise _fs_error(errno.ENOTEMPTY)
        del op.entries[oname]
        np.entries[nname] = node
        return 0

    def _open_node(self, node: Node) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = node
        return fh

    def create(self, path: str, mode: int, flags: int = 0) -> int:
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            node = parent.entries[name] = Node(False, stat.S_IFREG | (mode & 0o7777))
        elif flags & os.O_TRUNC:
            self._truncate(node, 0)
        return self._open_node(node)

    def open(self, path: str, flags: int) -> int:
        if path == "/" + CTL:
            return 0
        node = self._lookup(path)
        if flags & os.O_TRUNC:
            self._truncate(node, 0)
        return self._open_node(node)

    def release(self, path: str | None, fh: Any) -> int:
        self.handles.pop(fh, None)
        return 0

    def flush(self, path: str | None, fh: Any) -> int:
        return 0

    def read(self, path: str | None, size: int, offset: int, fh: Any) -> bytes:
        if path == "/" + CTL and not fh:
            return self._status()[offset : offset + size]
        node = self._node(path, fh)
        return bytes(node.data[offset : offset + size])

    def write(self, path: str | None, data: bytes, offset: int, fh: Any) -> int:
        if path == "/" + CTL and not fh:
            self._command(data.decode())
            return len(data)
        node = self._node(path, fh)
        if self._room(node, offset + len(data)) < offset + len(data):
            raise _fs_error(errno.ENOSPC)
        buf = node.data
        if len(buf) < offset:
            buf.extend(bytes(offset - len(buf)))
        buf[offset : offset + len(data)] = data
        node.writes.append((offset, bytes(data)))
        node.mtime = time.time_ns()
        return len(data)

    def _truncate(self, node: Node, length: int) -> None:
        if node.is_dir:
            raise _fs_error(errno.EISDIR)
        if length < len(node.data):
            del node.data[length:]
        elif self._room(node, length) < length:
            raise _fs_error(errno.ENOSPC)
        else:
            node.data.extend(bytes(length - len(node.data)))
        node.writes.append((length, None))

    def truncate(self, path: str | None, length: int, fh: Any = None) -> int:
        if path == "/" + CTL:
            return 0
        self._truncate(self._node(path, fh), length)
        return 0

    def fsync(self, path: str | None, datasync: int, fh: Any) -> int:
        node = self._node(path, fh)
        self.counters["fsync"] += 1
        name = (path or "").rpartition("/")[2]
        if self.dead or self.fail_suffix is not None and name.endswith(self.fail_suffix):
            self.counters["failed"] += 1
            raise _fs_error(errno.EIO)
        node.durable = bytes(node.data)
        node.writes.clear()
        if self.entry_on_fsync and path is not None:
            parent, pname = self._parent(path)
            if parent.entries.get(pname) is node:
                parent.durable_entries[pname] = node
        if self.cut_after is not None and name == self.cut_after:
            self.cut_state = self._power_state()
            self.cut_after = None
            self.dead = True  # this sync reached the disk, but nobody hears of it
            raise _fs_error(errno.EIO)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: Any) -> int:
        node = self._lookup(path)
        self.counters["fsyncdir"] += 1
        if self.dead:
            raise _fs_error(errno.EIO)
        node.durable_entries = dict(node.entries)
        return 0

    def chmod(self, path: str | None, mode: int) -> int:
        node = self._lookup(path or "/")
        node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
        return 0

    def chown(self, path: str | None, uid: int, gid: int) -> int:
        return 0

    def utimens(self, path: str | None, times: Any = None) -> int:
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        if self.capacity is None:
            blocks = free = 1 << 24  # 64 GiB of 4 KiB blocks, all free: no disk alarm
        else:
            blocks = self.capacity // 4096
            free = max(0, self.capacity - self._used()) // 4096
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": blocks, "f_bfree": free,
                "f_bavail": free, "f_files": 1 << 20, "f_ffree": 1 << 20, "f_namemax": 255}


def main(mountpoint: str) -> None:
    import mfusepy

    ops = PowerLossFS()  # mfusepy sets up the callbacks of the methods it finds by name
    mfusepy.FUSE(ops, mountpoint, foreground=True, nothreads=True, hard_remove=True,
                 attr_timeout=0, entry_timeout=0, negative_timeout=0)


# -- the test helper ---------------------------------------------------------------------------------


def unavailable() -> str | None:
    """Why a LazyFS cannot be mounted here (None: it can)."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: libfuse itself is missing
        return f"mfusepy or libfuse is not installed ({exc})"
    if shutil.which("fusermount3") is None and os.geteuid() != 0:
        return "fusermount3 is not installed (Debian's fuse3) and not root"
    return None


class LazyFS:
    """``with LazyFS(tmp_path / "mnt") as fs: ... fs.cut()``: the file system in a child process.
    Raises ``OSError`` when it cannot be mounted (callers skip)."""

    def __init__(self, mountpoint: Path, log: Path | None = None) -> None:
        self.mountpoint = mountpoint
        self.log = log or mountpoint.parent / "lazyfs.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LazyFS:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, __file__, str(self.mountpoint)],
                                         stdout=out, stderr=out)
        deadline = time.monotonic() + 15
        while not (self.mountpoint / CTL).exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise OSError(f"cannot mount a FUSE file system: {self.log.read_text(errors='replace')}")
            time.sleep(0.05)
        return self

    def command(self, *lines: str) -> None:
        with open(self.mountpoint / CTL, "w") as f:
            f.write("\n".join(lines) + "\n")

    def status(self) -> dict[str, int]:
        text = (self.mountpoint / CTL).read_text()
        return {k: int(v) for k, v in (w.split("=") for w in text.split())}

    def set_capacity(self, capacity: int | None) -> None:
        """The disk holds ``capacity`` bytes of file data (None: no limit)."""
        self.command("capacity" if capacity is None else f"capacity {capacity}")

    def fill(self, spare: int = 0) -> None:
        """The disk is full from now on (but ``spare`` bytes): its capacity becomes what it holds."""
        self.set_capacity(self.status()["used"] + spare)

    def cut(self) -> None:
        """The power goes (the processes writing here must be dead: kill -9 them first)."""
        self.command("cut")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # libfuse unmounts and exits
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if os.path.ismount(self.mountpoint):
            subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)
        self.proc = None


@contextmanager
def mounted(mountpoint: Path) -> Iterator[LazyFS]:
    """A LazyFS at ``mountpoint`` for a test, or the test skipped (saying why) where none can be
    mounted."""
    import pytest  # (not in the file system's own process)

    if (why := unavailable()) is not None:
        pytest.skip(f"no FUSE file system: {why}")
    try:
        fs = LazyFS(mountpoint).__enter__()
    except OSError as exc:
        pytest.skip(str(exc))
    try:
        yield fs
    finally:
        fs.__exit__()


if __name__ == "__main__":
    main(sys.argv[1])
