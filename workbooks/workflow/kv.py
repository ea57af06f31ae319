"""The `kv` capability's store: per tenant and per workflow, surviving runs, durable.

Why SQLite (`$WB_DATA/.workbooks/kv.db`): steps run in this process (`wbx workflow run`) and in the
pool's runner workers at the same time; SQLite in WAL mode with `synchronous=FULL` gives every
process the same committed view and a `set` that returns is on disk. A key belongs to exactly one
(tenant, workflow): a step can never name another tenant's or workflow's keys, because both come
from the step's context, never from the step.

Limits (a step is untrusted code): keys 1..512 bytes of UTF-8, values up to 1 MiB, at most 10 000
keys per workflow. Breaking one is a KvError with a message the step sees.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 1 << 20
MAX_KEYS = 10_000
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
  tenant TEXT NOT NULL,
  workflow TEXT NOT NULL,
  key TEXT NOT NULL,
  value BLOB NOT NULL,
  updated_at REAL NOT NULL,
  PRIMARY KEY (tenant, workflow, key)
) WITHOUT ROWID;
"""


class KvError(Exception):
    """A refused kv operation (bad key, value too large, store full); the message is for the step."""


def db_path(data_dir: Path) -> Path:
    return Path(data_dir) / ".workbooks" / "kv.db"


class KvStore:
    """One database file; one connection per process and path, serialised by a lock."""

    _open: dict[str, "KvStore"] = {}
    _open_lock = threading.Lock()

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():  # the tenants' values: readable by the service only
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.lock = threading.Lock()
        self.db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    @classmethod
    def for_data(cls, data_dir: Path) -> "KvStore":
        path = db_path(data_dir)
        key = str(path.resolve())
        with cls._open_lock:
            st = cls._open.get(key)
            if st is None:
                st = cls._open[key] = cls(path)
            return st

    @classmethod
    def close_all(cls) -> None:
        with cls._open_lock:
            for st in cls._open.values():
                with st.lock:
                    st.db.close()
            cls._open.clear()

    @staticmethod
    def _key(key) -> str:
        if not isinstance(key, str):
            raise KvError("kv: the key must be a string")
        try:
            n = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            raise KvError("kv: the key is not valid UTF-8") from None
        if not 0 < n <= MAX_KEY_BYTES:
            raise KvError(f"kv: a key is 1 to {MAX_KEY_BYTES} bytes (got {n})")
        return key

    def get(self, tenant: str, workflow: str, key: str) -> bytes | None:
        key = self._key(key)
        with self.lock:
            row = self.db.execute("SELECT value FROM kv WHERE tenant=? AND workflow=? AND key=?",
                                  (tenant, workflow, key)).fetchone()
        return None if row is None else bytes(row[0])

    def set(self, tenant: str, workflow: str, key: str, value: bytes) -> None:
        key = self._key(key)
        if len(value) > MAX_VALUE_BYTES:
            raise KvError(f"kv: a value is at most {MAX_VALUE_BYTES} bytes (got {len(value)})")
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                exists = self.db.execute("SELECT 1 FROM kv WHERE tenant=? AND workflow=? AND key=?",
                                         (tenant, workflow, key)).fetchone()
                if not exists:
                    (count,) = self.db.execute("SELECT count(*) FROM kv WHERE tenant=? AND workflow=?",
                                               (tenant, workflow)).fetchone()
                    if count >= MAX_KEYS:
                        raise KvError(f"kv: this workflow already has {MAX_KEYS} keys (delete some first)")
                self.db.execute("INSERT INTO kv(tenant, workflow, key, value, updated_at) VALUES (?,?,?,?,?) "
                                "ON CONFLICT(tenant, workflow, key) DO UPDATE SET value=excluded.value, "
                                "updated_at=excluded.updated_at", (tenant, workflow, key, value, time.time()))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def delete(self, tenant: str, workflow: str, key: str) -> bool:
        key = self._key(key)
        with self.lock:
            cur = self.db.execute("DELETE FROM kv WHERE tenant=? AND workflow=? AND key=?", (tenant, workflow, key))
            return cur.rowcount > 0

    def keys(self, tenant: str, workflow: str) -> list[str]:
        with self.lock:
            return [r[0] for r in self.db.execute("SELECT key FROM kv WHERE tenant=? AND workflow=? ORDER BY key",
                                                  (tenant, workflow))]


_inherited: list[KvStore] = []


def _after_fork_in_child() -> None:
    # a SQLite connection must not be used across fork: the child opens its own; the parent's are
    # kept (never closed here, which could disturb the parent's locks)
    _inherited.extend(KvStore._open.values())
    KvStore._open = {}
    KvStore._open_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
