"""Large request and reply bodies through shared memory between processes on one host.

Why: a render moves the document in and its HTML out, and through the broker every byte crosses
two unix sockets each way: about 14 copies plus the zmq I/O threads waking per socket-buffer's
worth. For a 550 KB document with 1.5 MB of HTML that was ~0.9 ms of the broker's CPU and
~0.6 ms of the client's per render, on a machine where the workers need every core. With a
body in shared memory the broker forwards a few dozen bytes and the payload is copied about
five times in all.

How: a local client (ipc endpoint) writes an argument of at least THRESHOLD bytes to a file in
the pool's bulk directory and sends `{"bulk": name, "len": n}` in its place; for inputs from
THRESHOLD/16 up it also names a reply file of its own (`reply_bulk: name`), into which a local
worker may write a big output and answer with header `bulk: {name, len}` and an empty body.
The client owns every file: it
keeps a few for reuse (tmpfs pages allocated and freed per call cost as much as the copies they
save) and deletes the rest when a call ends, and all of them on close. A reply file of a call
that did not end in an ok reply is deleted, never reused (a worker past its deadline may still
write to it). Remote workers never see a reference: the broker inlines the bodies before
sending a request over tcp, and remote (tcp) clients may not send references at all.

Where: `/dev/shm/wb-<uid>-<hash of the pool's socket directory>/`, mode 0700, files 0600,
opened relative to the directory (no path ever comes from a message: names must match NAME_RE).
Whatever fails here (no /dev/shm, a full tmpfs such as Docker's 64 MB default, a directory
someone else owns) makes that body travel inline instead; nothing is lost. Files of a client
that died are swept by the broker (`sweep`). `WB_POOL_BULK=0` turns the path off for a client.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
from pathlib import Path

THRESHOLD = max(1, int(os.environ.get("WB_POOL_BULK_MIN_KB", "128"))) << 10
NAME_RE = re.compile(r"^[qr]-[0-9]{1,10}-[0-9a-f]{16}$")
SHM_ROOT = Path(os.environ.get("WB_POOL_BULK_ROOT", "/dev/shm"))
# A file older than the longest deadline plus this is garbage whoever made it; a dead
# process's files are garbage after DEAD_OWNER_AGE_S (its pid may be another namespace's).
ORPHAN_GRACE_S = 60.0
DEAD_OWNER_AGE_S = float(os.environ.get("WB_POOL_BULK_ORPHAN_AGE_S", "30"))
SWEEP_EVERY_S = float(os.environ.get("WB_POOL_BULK_SWEEP_S", "30"))  # how often the broker sweeps


class BulkError(Exception):
    """A body reference that cannot be honoured; the message says which and why."""

    code = "bad_request"  # the pool's typed error for it


def enabled() -> bool:
    return os.environ.get("WB_POOL_BULK", "1").strip().lower() not in ("0", "false", "no", "off")


def dir_for(endpoint: str) -> Path | None:
    """The bulk directory shared by everyone on this ipc endpoint's socket directory."""
    if not endpoint.startswith("ipc://"):
        return None
    sock_dir = os.path.realpath(os.path.dirname(endpoint[len("ipc://"):]))
    digest = hashlib.sha256(sock_dir.encode()).hexdigest()[:16]
    return SHM_ROOT / f"wb-{os.getuid()}-{digest}"


def _open_dir(path: Path) -> int | None:
    """Make (0700) and open the directory; None unless it is ours and private."""
    try:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        return None
    return fd


class BulkDir:
    """An open bulk directory; every file operation is relative to its descriptor.

    The directory may be removed under us (the broker removes it on shutdown when it is empty,
    an operator may clean /dev/shm, systemd's RemoveIPC does on logout); a file operation that
    finds nothing then opens the directory now at the path (making it) and tries once more."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd = fd

    @classmethod
    def open(cls, endpoint: str, *, serve: bool = False) -> "BulkDir | None":
        """The directory for `endpoint`, created 0700 if missing; None when bulk bodies cannot
        be used here (not ipc, no shared memory, wrong owner or mode, or - for a client - turned
        off). The broker and workers (`serve`) honour references whenever they can, so a client
        may turn the path off alone."""
        if not serve and not enabled():
            return None
        path = dir_for(endpoint)
        if path is None:
            return None
        fd = _open_dir(path)
        return None if fd is None else cls(path, fd)

    def _reopen(self) -> bool:
        """Our directory was removed: switch to the one at the path now. True if it changed."""
        if self.fd < 0:
            return False
        fd = _open_dir(self.path)
        if fd is None:
            return False
        old, new = os.fstat(self.fd), os.fstat(fd)
        if (old.st_dev, old.st_ino) == (new.st_dev, new.st_ino):
            os.close(fd)
            return False
        os.close(self.fd)
        self.fd = fd
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove_if_empty(self) -> None:
        """Remove the directory if nothing is left in it (on shutdown)."""
        try:
            if not os.listdir(self.fd):
                os.rmdir(self.path)
        except OSError:
            pass

    # -- writing -----------------------------------------------------------------------------
    def new_name(self, kind: str, owner_pid: int) -> str:
        return f"{kind}-{owner_pid}-{os.urandom(8).hex()}"

    def create(self, kind: str, owner_pid: int) -> str | None:
        """A new empty file (a reply slot a worker will write into); None if that fails."""
        name = self.new_name(kind, owner_pid)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                os.close(os.open(name, flags, 0o600, dir_fd=self.fd))
            except FileNotFoundError:
                if not self._reopen():
                    return None
                os.close(os.open(name, flags, 0o600, dir_fd=self.fd))
        except OSError:
            return None
        return name

    def write(self, name: str | None, data, *, kind: str = "q", owner_pid: int = 0) -> str | None:
        """Write `data` (bytes-like) at the start of file `name` (an existing one, reused: its
        pages are already allocated), or of a new file when `name` is None. The file may stay
        longer than `data`; readers take the length from the reference. Returns the name, or
        None if it could not be written (the caller sends the body inline then)."""
        created = name is None
        if created:
            name = self.new_name(kind, owner_pid)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        elif not NAME_RE.match(name):
            return None
        else:
            flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                fd = os.open(name, flags, 0o600, dir_fd=self.fd)
            except FileNotFoundError:
                if not created or not self._reopen():
                    return None
                fd = os.open(name, flags, 0o600, dir_fd=self.fd)
        except OSError:
            return None
        try:
            if not created:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                    return None
            view = memoryview(data).cast("B")
            done = 0
            while done < len(view):
                done += os.pwrite(fd, view[done:], done)
        except OSError:  # ENOSPC on a small tmpfs, most likely
            if created:
                self.discard(name)
            return None
        finally:
            os.close(fd)
        return name

    # -- reading -----------------------------------------------------------------------------
    def read(self, name, length) -> bytes:
        """The body of a reference, checked: a valid name, a regular file of ours, `length` bytes."""
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise BulkError(f"invalid shared-memory body name {str(name)[:40]!r}")
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise BulkError("a shared-memory body needs its length in bytes")
        try:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
            except FileNotFoundError:
                if not self._reopen():
                    raise
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        except FileNotFoundError:
            raise BulkError(f"shared-memory body {name} is gone (its sender gave up or is on another host)") from None
        except OSError as e:
            raise BulkError(f"cannot open shared-memory body {name}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                raise BulkError(f"shared-memory body {name} is not a file of this user")
            if st.st_size < length:
                raise BulkError(f"shared-memory body {name} has {st.st_size} bytes, expected {length}")
            data = os.read(fd, length)  # a regular file gives it all at once; loop to be sure
            if len(data) < length:
                parts = [data]
                got = len(data)
                while got < length:
                    more = os.read(fd, length - got)
                    if not more:
                        raise BulkError(f"shared-memory body {name} ended early")
                    parts.append(more)
                    got += len(more)
                data = b"".join(parts)
            return data
        finally:
            os.close(fd)

    def exists(self, name: str) -> bool:
        try:
            return stat.S_ISREG(os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_mode)
        except OSError:
            return False

    def discard(self, name) -> None:
        if isinstance(name, str) and NAME_RE.match(name):
            try:
                os.unlink(name, dir_fd=self.fd)
            except OSError:
                pass

    # -- housekeeping -----------------------------------------------------------------------------
    def sweep(self, now: float | None = None, max_deadline_s: float = 600.0) -> int:
        """Delete bodies nobody will read: those of processes that are gone, and any older than
        the longest deadline allows. Returns how many were deleted."""
        now = time.time() if now is None else now
        removed = 0
        try:
            names = os.listdir(self.fd)
        except OSError:
            return 0
        for name in names:
            if not NAME_RE.match(name):
                continue
            try:
                st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            except OSError:
                continue
            age = now - st.st_mtime
            pid = int(name.split("-", 2)[1])
            if age > max_deadline_s + ORPHAN_GRACE_S or (age > DEAD_OWNER_AGE_S and not _alive(pid)):
                try:
                    os.unlink(name, dir_fd=self.fd)
                    removed += 1
                except OSError:
                    pass
        return removed


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
