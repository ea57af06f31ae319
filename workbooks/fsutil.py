"""Small file-system helpers shared by the stores: durable writes and the free-space floor.

Durable before acknowledged: `atomic_write` flushes the file and then its directory (a rename
is only on disk once the directory is), `fsync_file`/`fsync_dir` do the same for callers that
write their own files. `WB_FSYNC=0` turns every flush off (these helpers, git's `core.fsync`,
SQLite's `synchronous`): a TEST-ONLY switch for the power-cut test's negative control; a
process that sees it logs a loud warning once.

Full disk: `check_free_space(data_dir)` raises `InsufficientStorage` (HTTP 507 with
`Retry-After`) when the data dir's file system has less than `WB_MIN_FREE_MB` (default 64) free,
so a write is refused before anything is half-written; `is_no_space(exc)` recognises the
ENOSPC/EDQUOT paths that get past the floor.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
from pathlib import Path

from workbooks.errors import WorkbooksError

DEFAULT_MIN_FREE_MB = 64
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
NO_SPACE_TEXTS = ("no space left on device", "disk quota exceeded", "database or disk is full")
RETRY_AFTER_S = "30"

_warned = False


class InsufficientStorage(WorkbooksError):
    """The data dir's file system is (nearly) full: writes are refused until space is back."""

    code = "insufficient_storage"
    http_status = 507
    retryable = True
    hint = "free space on the data volume (or raise it), then retry; reads keep working"

    def __init__(self, message: str, **kw):
        super().__init__(message, **kw)
        self.headers = {"Retry-After": RETRY_AFTER_S}


def fsync_enabled() -> bool:
    """False only when the test-only `WB_FSYNC=0` is set (then warned about, once per process)."""
    if os.environ.get("WB_FSYNC", "1").strip() != "0":
        return True
    global _warned
    if not _warned:
        _warned = True
        msg = "WB_FSYNC=0: durability is OFF (no fsync in git, SQLite or files); a TEST-ONLY setting, never for real data"
        try:
            sys.stderr.write(f"workbooks: WARNING {msg}\n")
            from workbooks import log

            if getattr(log, "_configured", False):
                log.get_logger().warning("durability_off", setting="WB_FSYNC=0", message=msg)
        except Exception:  # noqa: BLE001 - a warning must never break a write
            pass
    return False


def fsync_fd(fd: int) -> None:
    if fsync_enabled():
        os.fsync(fd)


def _fsync_path(path: str | os.PathLike, flags: int) -> None:
    if not fsync_enabled():
        return
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's data and metadata (no-op under WB_FSYNC=0)."""
    _fsync_path(path, 0)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory, so that names created, renamed or removed in it survive a power cut."""
    _fsync_path(path, os.O_DIRECTORY)


def atomic_write(path: str | os.PathLike, data: bytes, *, tmp_dir: str | os.PathLike | None = None,
                 mode: int | None = None, durable: bool = True) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never half of one.

    The temporary file lives in `tmp_dir` (default: beside `path`; it must be on the same file
    system) and is removed if anything fails. With `durable` (the default) the file is fsynced
    before the rename and the directory after it: once this returns, the new content survives
    a power cut.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".wb-write-", dir=str(tmp_dir or path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            if durable:
                fh.flush()
                fsync_fd(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)


def min_free_bytes() -> int:
    raw = os.environ.get("WB_MIN_FREE_MB", str(DEFAULT_MIN_FREE_MB)).strip()
    try:
        mb = float(raw)
    except ValueError:
        mb = DEFAULT_MIN_FREE_MB
    return max(0, int(mb * 1024 * 1024))


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def disk_status(path: str | os.PathLike) -> dict:
    """{free_bytes, min_free_bytes, writable} for readiness checks and metrics."""
    free = free_bytes(path)
    floor = min_free_bytes()
    return {"free_bytes": free, "min_free_bytes": floor, "writable": free >= floor}


def check_free_space(path: str | os.PathLike, need: int = 0) -> None:
    """Refuse a write (InsufficientStorage) when less than the floor (+ `need` bytes) is free."""
    try:
        free = free_bytes(path)
    except FileNotFoundError:
        return  # the directory is about to be created; the write itself will say if it cannot
    floor = min_free_bytes()
    if free < floor + max(0, need):
        raise InsufficientStorage(
            f"the data volume has {free // (1024 * 1024)} MB free, below the {floor // (1024 * 1024)} MB floor"
            " (WB_MIN_FREE_MB); nothing was written",
            data={"free_bytes": free, "min_free_bytes": floor},
        )


def is_no_space(exc: BaseException) -> bool:
    """True for the out-of-space failures of the OS (ENOSPC/EDQUOT), SQLite (SQLITE_FULL) and git
    (a GitError the git wrapper marked `no_space`)."""
    if isinstance(exc, InsufficientStorage) or getattr(exc, "no_space", False):
        return True
    if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
        return True
    import sqlite3

    return isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def stderr_says_no_space(stderr: str) -> bool:
    """git reports ENOSPC only as text on stderr: its fixed strerror wording."""
    low = stderr.lower()
    return any(t in low for t in NO_SPACE_TEXTS)


def as_insufficient_storage(exc: BaseException) -> InsufficientStorage:
    return InsufficientStorage(f"the data volume is full ({type(exc).__name__}); nothing was written")


def disk_metrics(path: str | os.PathLike) -> str:
    """Prometheus gauges of the data volume (alert on free < floor: writes answer 507 then)."""
    try:
        d = disk_status(path)
    except OSError:
        return ""
    return (
        "# HELP workbooks_data_free_bytes Bytes free for writes on the data volume.\n"
        "# TYPE workbooks_data_free_bytes gauge\n"
        f"workbooks_data_free_bytes {d['free_bytes']}\n"
        "# HELP workbooks_data_min_free_bytes The free-space floor (WB_MIN_FREE_MB) below which writes answer 507.\n"
        "# TYPE workbooks_data_min_free_bytes gauge\n"
        f"workbooks_data_min_free_bytes {d['min_free_bytes']}\n"
        "# HELP workbooks_data_writable 1 while the data volume is above its free-space floor.\n"
        "# TYPE workbooks_data_writable gauge\n"
        f"workbooks_data_writable {1 if d['writable'] else 0}\n"
    )


def makedirs_durable(path: str | os.PathLike, mode: int = 0o777) -> None:
    """`mkdir -p` whose new directories survive a power cut (each new one's parent is fsynced)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    for d in reversed(missing):
        fsync_dir(d.parent)
    if missing:
        fsync_dir(path)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and directory under `root`, and root's name in its parent: a small tree
    another program just made (a `git init`)."""
    if not fsync_enabled():
        return
    root = Path(root)
    for dirpath, _dirnames, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                fsync_file(p)
        fsync_dir(dirpath)
    fsync_dir(root.parent)
