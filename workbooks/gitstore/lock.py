"""One writer per tenant repo, across threads and processes.

A process-local re-entrant lock serialises threads; an `fcntl.flock` on a lock file inside
`.git` serialises processes. Re-entrant within a thread so composite operations (write a file,
then commit) can hold it across steps. The kernel drops a flock when its holder dies, so a
crashed writer never wedges the tenant.
"""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager
from typing import Iterator

_registry_guard = threading.Lock()
_locks: dict[str, "_RepoLock"] = {}


class _RepoLock:
    def __init__(self, lock_path: str):
        self.lock_path = lock_path
        self.rlock = threading.RLock()
        self.depth = 0
        self.fd: int | None = None


def _get(lock_path: str) -> _RepoLock:
    key = os.path.realpath(lock_path)
    with _registry_guard:
        lk = _locks.get(key)
        if lk is None:
            lk = _locks[key] = _RepoLock(key)
        return lk


@contextmanager
def tenant_lock(lock_path: str) -> Iterator[None]:
    """Hold the exclusive lock for the repo whose lock file is `lock_path` (its directory must exist)."""
    lk = _get(lock_path)
    with lk.rlock:
        if lk.depth == 0:
            fd = os.open(lk.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            lk.fd = fd
        lk.depth += 1
        try:
            yield
        finally:
            lk.depth -= 1
            if lk.depth == 0 and lk.fd is not None:
                fd, lk.fd = lk.fd, None
                try:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                finally:
                    os.close(fd)
