"""A FUSE passthrough file system that knows what has been made durable, for power-cut tests.

Every write reaches the backing directory at once (readers see it, as with a page cache), and the
file system keeps, beside it, the *durable* state a disk would hold after a power cut:

- per inode (a file, whatever names it has): the bytes as of its last fsync/fdatasync;
- per directory: its entries (name -> inode) as of its last fsync of the directory itself.

A new file whose data was fsynced but whose directory was not is gone after a cut; a rename of a new
file over an old one whose directory was not fsynced brings the old file back, with the old file's
durable bytes. Nothing else is flushed implicitly (no close-to-open flush, no journal ordering): the
strictest POSIX reading, so that anything the service forgets to flush shows.

`cut()` rewrites the backing directory into that durable state (call it only once every process
using the mount is dead; the mount is then thrown away and mounted afresh, like a reboot). The
file system can also refuse space: `set_budget(n)` lets n more bytes be allocated (writes past a
file's end, new names) and then answers ENOSPC, and statfs reports the budget as the free space
(or, `visible=False`, keeps reporting the real free space: the ENOSPC a free-space check misses).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
from dataclasses import dataclass, field

from mfusepy import FuseOSError, Operations

_STAT_KEYS = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime_ns", "st_mtime_ns",
              "st_ctime_ns", "st_blocks", "st_blksize", "st_rdev")


@dataclass
class Node:
    """One inode. `durable` is the file's bytes at its last fsync (None: never synced, empty after a
    cut); `entries` is a directory's durable name -> node id map; `lo`/`hi` the range written since."""

    id: int
    kind: str  # "file" | "dir" | "symlink" | "other"
    mode: int
    durable: bytearray | None = None
    entries: dict[str, int] = field(default_factory=dict)
    target: str = ""
    rdev: int = 0
    lo: int | None = None
    hi: int = 0

    def touch(self, lo: int, hi: int) -> None:
        if hi <= lo:
            return
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = max(self.hi, hi)


class PowerCutFS(Operations):
    """Passthrough over `backing` with a durable shadow; see the module docstring."""

    use_ns = True

    def __init__(self, backing: str):
        self.root = os.path.realpath(backing)
        self.mutex = threading.RLock()
        self.nodes: dict[int, Node] = {}
        self.live: dict[tuple[int, int], int] = {}  # backing (dev, ino) -> node id, for names that exist now
        self.fh: dict[int, int] = {}  # open backing fd -> node id
        self.next_id = 1
        self.budget: int | None = None
        self.budget_visible = True
        self.frozen = False
        self.counts = {"fsync": 0, "fsyncdir": 0, "write": 0, "enospc": 0}
        self.synced: dict[str, int] = {}  # path (at the time) -> fsyncs, for the tests' evidence
        self.root_id = self._adopt_tree()

    # -- the durable model ------------------------------------------------------------------------
    def _new(self, kind: str, st: os.stat_result, durable: bytearray | None = None, target: str = "") -> Node:
        node = Node(self.next_id, kind, stat.S_IMODE(st.st_mode), durable=durable, target=target, rdev=st.st_rdev)
        if kind == "other":
            node.mode = st.st_mode
        self.next_id += 1
        self.nodes[node.id] = node
        self.live[(st.st_dev, st.st_ino)] = node.id
        return node

    @staticmethod
    def _kind(st: os.stat_result) -> str:
        if stat.S_ISDIR(st.st_mode):
            return "dir"
        if stat.S_ISREG(st.st_mode):
            return "file"
        if stat.S_ISLNK(st.st_mode):
            return "symlink"
        return "other"

    def _adopt(self, path: str, st: os.stat_result) -> Node:
        """A node for what is at `path` now, everything about it taken as durable (mount time)."""
        known = self.live.get((st.st_dev, st.st_ino))
        if known is not None:
            return self.nodes[known]
        kind = self._kind(st)
        if kind == "file":
            with open(path, "rb") as fh:
                return self._new(kind, st, durable=bytearray(fh.read()))
        if kind == "symlink":
            return self._new(kind, st, target=os.readlink(path))
        node = self._new(kind, st)
        if kind == "dir":
            for name in os.listdir(path):
                child = os.path.join(path, name)
                node.entries[name] = self._adopt(child, os.lstat(child)).id
        return node

    def _adopt_tree(self) -> int:
        return self._adopt(self.root, os.lstat(self.root)).id

    def _node_at(self, full: str) -> Node:
        st = os.lstat(full)
        nid = self.live.get((st.st_dev, st.st_ino))
        if nid is None:  # appeared behind our back: treat as new, nothing durable
            kind = self._kind(st)
            return self._new(kind, st, target=os.readlink(full) if kind == "symlink" else "")
        return self.nodes[nid]

    def _forget_if_last(self, st: os.stat_result | None) -> None:
        """After a name went away: if it was the inode's last name, its (dev, ino) may be reused."""
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode) or st.st_nlink <= 1:
            self.live.pop((st.st_dev, st.st_ino), None)

    def sync_node_data(self, node: Node, fd: int) -> None:
        size = os.fstat(fd).st_size
        data = node.durable if node.durable is not None else bytearray()
        if len(data) > size:
            del data[size:]
        elif len(data) < size:
            data.extend(bytes(size - len(data)))
        if node.lo is not None:
            lo, hi = min(node.lo, size), min(node.hi, size)
            if hi > lo:  # the caller's fd may be write-only: read through a fresh one
                rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
                try:
                    data[lo:hi] = os.pread(rfd, hi - lo, lo)
                finally:
                    os.close(rfd)
        node.durable = data
        node.lo, node.hi = None, 0

    def sync_dir_entries(self, node: Node, full: str) -> None:
        entries = {}
        for name in os.listdir(full):
            entries[name] = self._node_at(os.path.join(full, name)).id
        node.entries = entries

    def sync_all(self) -> None:
        """Make everything durable now (what `sync` and an orderly shutdown give)."""
        with self.mutex:
            self._sync_tree(self.root)

    def _sync_tree(self, full: str) -> None:
        node = self._node_at(full)
        if node.kind == "dir":
            self.sync_dir_entries(node, full)
            for name in os.listdir(full):
                self._sync_tree(os.path.join(full, name))
        elif node.kind == "file":
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                self.sync_node_data(node, fd)
            finally:
                os.close(fd)

    def losses(self) -> list[str]:
        """What a cut now would lose or bring back, path by path (the evidence for a failed test)."""
        with self.mutex:
            out: list[str] = []
            self._losses(self.root, self.nodes[self.root_id], "", out)
            return out

    def _losses(self, full: str, durable: Node, rel: str, out: list[str]) -> None:
        live_names = set(os.listdir(full))
        for name in sorted(live_names):
            path, child_full = f"{rel}/{name}", os.path.join(full, name)
            live = self._node_at(child_full)
            did = durable.entries.get(name)
            if did is None:
                out.append(f"{path}: created, name not durable (gone after a cut)")
            elif did != live.id:
                out.append(f"{path}: replaced, new name not durable (the old {self.nodes[did].kind} comes back)")
            elif live.kind == "dir":
                self._losses(child_full, live, path, out)
            elif live.kind == "file":
                with open(child_full, "rb") as fh:
                    now = fh.read()
                kept = bytes(live.durable or b"")
                if now != kept:
                    out.append(f"{path}: data not durable ({len(kept)} of {len(now)} bytes kept as written)")
        for name in sorted(set(durable.entries) - live_names):
            out.append(f"{rel}/{name}: removed, removal not durable (comes back)")

    def cut(self) -> None:
        """Replace the backing tree by its durable state; the mount answers EIO from now on."""
        with self.mutex:
            self.frozen = True
            for fd in list(self.fh):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.fh.clear()
            fresh = self.root + ".powercut-restore"
            old = self.root + ".powercut-old"
            shutil.rmtree(fresh, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
            self._restore(self.nodes[self.root_id], fresh, {}, set())
            os.rename(self.root, old)
            os.rename(fresh, self.root)
            shutil.rmtree(old, ignore_errors=True)

    def _restore(self, node: Node, path: str, made: dict[int, str], above: set[int]) -> None:
        """Write `node` at `path` as the disk holds it; a second durable name of a file is a hard link."""
        if node.id in made and node.kind != "dir":
            os.link(made[node.id], path)
            return
        made[node.id] = path
        if node.kind == "dir":
            os.mkdir(path)
            for name, cid in sorted(node.entries.items()):
                if cid not in above:  # stale entries can never make a directory its own ancestor
                    self._restore(self.nodes[cid], os.path.join(path, name), made, above | {node.id})
            os.chmod(path, node.mode)
        elif node.kind == "file":
            with open(path, "wb") as fh:
                fh.write(bytes(node.durable or b""))
            os.chmod(path, node.mode)
        elif node.kind == "symlink":
            os.symlink(node.target, path)
        else:
            os.mknod(path, node.mode, node.rdev)

    def _note_synced(self, full: str) -> None:
        rel = os.path.relpath(full, self.root) if full.startswith(self.root) else full
        rel = "/" if rel == "." else "/" + rel.rstrip("/") + ("/" if full.endswith("/") else "")
        self.synced[rel] = self.synced.get(rel, 0) + 1

    # -- space -----------------------------------------------------------------------------------
    def set_budget(self, n: int | None, *, visible: bool = True) -> None:
        """n more bytes, then ENOSPC (None: unlimited). Invisible: statfs keeps reporting the backing
        volume's free space, as when a quota or another writer fills the disk between a check and a write."""
        with self.mutex:
            self.budget = n
            self.budget_visible = visible

    def _allocate(self, n: int) -> int:
        """How many of n new bytes may be allocated (ENOSPC when none may)."""
        if self.budget is None or n <= 0:
            return n
        if self.budget <= 0:
            self.counts["enospc"] += 1
            raise FuseOSError(errno.ENOSPC)
        n = min(n, self.budget)
        self.budget -= n
        return n

    def _need_a_name(self) -> None:
        if self.budget is not None and self.budget <= 0:
            self.counts["enospc"] += 1
            raise FuseOSError(errno.ENOSPC)

    # -- FUSE operations -------------------------------------------------------------------------
    def _full(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _check(self) -> None:
        if self.frozen:
            raise FuseOSError(errno.EIO)

    def getattr(self, path, fh=None):
        st = os.fstat(fh) if fh else os.lstat(self._full(path))
        return {k.replace("_ns", ""): getattr(st, k) for k in _STAT_KEYS}

    def access(self, path, amode):
        if not os.access(self._full(path), amode, follow_symlinks=False):
            raise FuseOSError(errno.EACCES)
        return 0

    def readlink(self, path):
        return os.readlink(self._full(path))

    def readdir(self, path, fh):
        # with use_ino, an entry of inode 0 is hidden by readdir(3): give each its real mode and inode
        full = self._full(path)
        out = []
        for name in (".", "..", *os.listdir(full)):
            try:
                st = os.lstat(os.path.join(full, name))
            except FileNotFoundError:
                continue
            out.append((name, {"st_mode": st.st_mode, "st_ino": st.st_ino}, 0))
        return out

    def statfs(self, path):
        sv = os.statvfs(self.root)
        out = {k: getattr(sv, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                                           "f_ffree", "f_favail", "f_flag", "f_namemax")}
        if self.budget is not None and self.budget_visible:
            free = max(self.budget, 0) // sv.f_frsize
            out["f_bfree"] = out["f_bavail"] = free
        return out

    def open(self, path, flags):
        self._check()
        full = self._full(path)
        with self.mutex:
            old = None
            if flags & os.O_TRUNC:
                try:
                    old = os.lstat(full).st_size
                except FileNotFoundError:
                    old = 0
            fd = os.open(full, flags & ~(os.O_APPEND | os.O_DIRECT | os.O_CREAT | os.O_EXCL))
            node = self._node_at(full)
            self.fh[fd] = node.id
            if old:
                node.touch(0, old)
            return fd

    def create(self, path, mode, flags=os.O_RDWR):
        self._check()
        full = self._full(path)
        with self.mutex:
            self._need_a_name()
            fd = os.open(full, (flags & ~(os.O_APPEND | os.O_DIRECT)) | os.O_CREAT, mode)
            st = os.fstat(fd)
            nid = self.live.get((st.st_dev, st.st_ino))
            node = self.nodes[nid] if nid is not None else self._new("file", st)
            self.fh[fd] = node.id
            return fd

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        self._check()
        with self.mutex:
            node = self.nodes[self.fh[fh]]
            size = os.fstat(fh).st_size
            n = len(data)
            past_end = offset + n - max(size, offset)
            if past_end > 0:  # only bytes past the end take new space; a short write when it runs out
                n -= past_end - self._allocate(past_end)
            written = os.pwrite(fh, data[:n], offset)
            node.touch(offset, offset + written)
            self.counts["write"] += 1
            return written

    def truncate(self, path, length, fh=None):
        self._check()
        with self.mutex:
            full = None if fh else self._full(path)
            size = os.fstat(fh).st_size if fh else os.lstat(full).st_size
            if length > size:
                if self.budget is not None and self.budget < length - size:
                    self.counts["enospc"] += 1
                    raise FuseOSError(errno.ENOSPC)
                self._allocate(length - size)
            node = self.nodes[self.fh[fh]] if fh else self._node_at(full)
            if fh:
                os.ftruncate(fh, length)
            else:
                os.truncate(full, length)
            node.touch(min(size, length), max(size, length))
            return 0

    def fsync(self, path, datasync, fh):
        self._check()
        with self.mutex:
            self.sync_node_data(self.nodes[self.fh[fh]], fh)
            self.counts["fsync"] += 1
            self._note_synced(os.readlink(f"/proc/self/fd/{fh}"))
            return 0

    def fsyncdir(self, path, datasync, fh):
        self._check()
        with self.mutex:
            full = self._full(path)
            self.sync_dir_entries(self._node_at(full), full)
            self.counts["fsyncdir"] += 1
            self._note_synced(full + "/")
            return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        with self.mutex:
            if self.fh.pop(fh, None) is not None:
                os.close(fh)
        return 0

    def mkdir(self, path, mode):
        self._check()
        with self.mutex:
            self._need_a_name()
            full = self._full(path)
            os.mkdir(full, mode)
            self._new("dir", os.lstat(full))
            return 0

    def mknod(self, path, mode, dev):
        self._check()
        with self.mutex:
            self._need_a_name()
            full = self._full(path)
            os.mknod(full, mode, dev)
            st = os.lstat(full)
            self._new("file" if stat.S_ISREG(st.st_mode) else "other", st)
            return 0

    def symlink(self, target, source):
        self._check()
        with self.mutex:
            self._need_a_name()
            full = self._full(target)
            os.symlink(source, full)
            self._new("symlink", os.lstat(full), target=source)
            return 0

    def link(self, target, source):
        self._check()
        with self.mutex:
            self._need_a_name()
            src = self._full(source)
            self._node_at(src)
            os.link(src, self._full(target))
            return 0

    def unlink(self, path):
        self._check()
        with self.mutex:
            full = self._full(path)
            st = os.lstat(full)
            os.unlink(full)
            self._forget_if_last(st)
            return 0

    def rmdir(self, path):
        self._check()
        with self.mutex:
            full = self._full(path)
            st = os.lstat(full)
            os.rmdir(full)
            self._forget_if_last(st)
            return 0

    def rename(self, old, new):
        self._check()
        with self.mutex:
            src, dst = self._full(old), self._full(new)
            self._node_at(src)
            try:
                gone = os.lstat(dst)
            except FileNotFoundError:
                gone = None
            s = os.lstat(src)
            os.rename(src, dst)
            if gone is not None and (gone.st_dev, gone.st_ino) != (s.st_dev, s.st_ino):
                self._forget_if_last(gone)
            return 0

    def chmod(self, path, mode):
        self._check()
        with self.mutex:
            if path is None:
                raise FuseOSError(errno.ENOENT)
            full = self._full(path)
            if not os.path.islink(full):
                os.chmod(full, mode)
            node = self._node_at(full)
            node.mode = stat.S_IMODE(mode) if node.kind != "other" else mode
            return 0

    def chown(self, path, uid, gid):
        self._check()
        os.chown(self._full(path), uid, gid, follow_symlinks=False)
        return 0

    def utimens(self, path, times=None):
        self._check()
        os.utime(self._full(path), ns=times, follow_symlinks=False)
        return 0
