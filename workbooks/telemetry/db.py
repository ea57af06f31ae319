"""The index's SQLite file: schema, the writer's connection, read-only connections for readers.

`task_events` and `step_events` keep the original's columns first (run_id, task_id, idx, title,
state, output, ts / run_id, step, tool, exit_code, error, dur_ms, ts) and add what a multi-tenant
index needs: the tenant, the step's lane, and the line number the step was read from (the key that
makes re-indexing idempotent). `runs` is one row per run folder with its roll-up and how far its
`_steps.jsonl` was read; `lane_hist` holds the step-duration histogram as counters (they only
grow, as Prometheus expects, even when runs are deleted); `meta` says when the indexer last scanned.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from workbooks.telemetry import DB_FILE

SCHEMA_VERSION = "1"
# le bounds of the step-duration histogram, in seconds (+Inf is the count)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  tenant TEXT NOT NULL, run_id TEXT NOT NULL, kind TEXT, status TEXT, stage TEXT, started_at TEXT,
  tool_calls INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0, total_ms INTEGER NOT NULL DEFAULT 0,
  tasks TEXT, updated_at REAL, indexed_at REAL,
  status_sig TEXT, steps_ino INTEGER, steps_offset INTEGER NOT NULL DEFAULT 0,
  steps_lines INTEGER NOT NULL DEFAULT 0, skipping INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (tenant, run_id)
);
CREATE INDEX IF NOT EXISTS runs_recent ON runs (tenant, updated_at);
CREATE TABLE IF NOT EXISTS step_events (
  run_id TEXT, step INTEGER, tool TEXT, exit_code INTEGER, error TEXT, dur_ms INTEGER, ts INTEGER,
  tenant TEXT NOT NULL, lane TEXT, line INTEGER NOT NULL,
  PRIMARY KEY (tenant, run_id, line)
);
CREATE TABLE IF NOT EXISTS task_events (
  run_id TEXT, task_id TEXT, idx INTEGER, title TEXT, state TEXT, output TEXT, ts INTEGER,
  tenant TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS task_events_run ON task_events (tenant, run_id, idx);
CREATE TABLE IF NOT EXISTS lane_hist (
  lane TEXT PRIMARY KEY, count INTEGER NOT NULL DEFAULT 0, sum_ms INTEGER NOT NULL DEFAULT 0,
  buckets TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


def db_path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / DB_FILE


def open_writer(data_dir: str | os.PathLike) -> sqlite3.Connection:
    """The indexer's connection (WAL, synchronous=NORMAL: a crash loses at most the last scan,
    which the next start re-reads from the files)."""
    path = db_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    os.chmod(path, 0o600)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    # one transaction: a reader never sees some of the tables and not the others
    conn.executescript("BEGIN IMMEDIATE;" + SCHEMA
                       + f"INSERT OR REPLACE INTO meta VALUES ('schema', '{SCHEMA_VERSION}');COMMIT;")
    return conn


def open_reader(data_dir: str | os.PathLike) -> sqlite3.Connection | None:
    """A read-only connection, or None when nothing was ever indexed (no file yet)."""
    path = db_path(data_dir)
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5, check_same_thread=False)
        conn.execute("PRAGMA query_only=1")
        conn.execute("SELECT 1 FROM runs, meta LIMIT 1")
    except sqlite3.Error:
        return None
    return conn
