"""Prometheus figures from the index and the scheduler's status file (appended to /metrics).

- `workbooks_runs{status}`: indexed runs by `_status.json` status (gauge; every known status is
  shown, 0 included; an unknown one counts as `other`).
- `workbooks_step_seconds{lane}`: histogram of step durations; the lane is the part of the step's
  `tool` before `:` (`js:fetch` -> js) or else the tool name (agent tools, TODO `check`/`agent`).
  Counters: they only grow, deleting a run does not take its steps back.
- `workbooks_scheduler_lag_seconds{tenant,workbook,world}`: the last fire's lag (fired at minus
  scheduled for) of every scheduled world, from `$WB_DATA/wb-runs/schedule-status.json` when the
  scheduler has written it.
- `workbooks_telemetry_index_age_seconds`: seconds since the indexer's last pass.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from pathlib import Path

from workbooks.agent.runs import RUNS_DIR
from workbooks.telemetry import db as D
from workbooks.telemetry.records import KNOWN_STATUSES

SCHEDULE_STATUS = "schedule-status.json"
SCHEDULE_STATUS_MAX = 16 << 20
LAG_KEYS = ("last_lag_s", "lag_s", "lag_seconds", "lag")  # the scheduler writes last_lag_s
MAX_LAG_SERIES = 1000


def _esc(v: object) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _le(b: float) -> str:
    return repr(float(b))


def telemetry_metrics(data_dir: str | os.PathLike) -> str:
    lines: list[str] = []
    conn = D.open_reader(data_dir)
    by_status = dict.fromkeys(KNOWN_STATUSES, 0)
    lanes: list[tuple] = []
    age = None
    if conn is not None:
        try:  # an unreadable index shows no run figures rather than failing the whole scrape
            for status, n in conn.execute("SELECT status, count(*) FROM runs WHERE status IS NOT NULL GROUP BY status"):
                key = status if status in by_status else "other"
                by_status[key] = by_status.get(key, 0) + n
            lanes = conn.execute("SELECT lane, count, sum_ms, buckets FROM lane_hist ORDER BY lane").fetchall()
            row = conn.execute("SELECT value FROM meta WHERE key='scanned_at'").fetchone()
            if row:
                age = max(0.0, time.time() - float(row[0]))
        except (sqlite3.Error, ValueError):
            lanes, age = [], None
        finally:
            conn.close()
    lines += ["# HELP workbooks_runs Runs in the telemetry index, by status.", "# TYPE workbooks_runs gauge"]
    lines += [f'workbooks_runs{{status="{_esc(s)}"}} {n}' for s, n in by_status.items()]
    lines += ["# HELP workbooks_step_seconds Duration of run steps (tool calls, workflow steps, checks), by lane.",
              "# TYPE workbooks_step_seconds histogram"]
    for lane, count, sum_ms, buckets in lanes:
        lbl = f'lane="{_esc(lane)}"'
        try:
            counts = json.loads(buckets)
        except ValueError:
            continue
        for le, c in zip(D.BUCKETS, counts):
            lines.append(f'workbooks_step_seconds_bucket{{{lbl},le="{_le(le)}"}} {c}')
        lines.append(f'workbooks_step_seconds_bucket{{{lbl},le="+Inf"}} {count}')
        lines.append(f"workbooks_step_seconds_sum{{{lbl}}} {sum_ms / 1000.0}")
        lines.append(f"workbooks_step_seconds_count{{{lbl}}} {count}")
    lines += ["# HELP workbooks_telemetry_index_age_seconds Seconds since the telemetry indexer's last pass.",
              "# TYPE workbooks_telemetry_index_age_seconds gauge"]
    if age is not None:
        lines.append(f"workbooks_telemetry_index_age_seconds {age:.3f}")
    lines += ["# HELP workbooks_scheduler_lag_seconds Lag of a scheduled world's last fire (fired minus scheduled).",
              "# TYPE workbooks_scheduler_lag_seconds gauge"]
    for (tenant, workbook, world), lag in scheduler_lags(data_dir):
        lines.append(f'workbooks_scheduler_lag_seconds{{tenant="{_esc(tenant)}",workbook="{_esc(workbook)}",'
                     f'world="{_esc(world)}"}} {lag:.3f}')
    return "\n".join(lines) + "\n"


def scheduler_lags(data_dir: str | os.PathLike) -> list[tuple[tuple[str, str, str], float]]:
    """((tenant, workbook, world), lag seconds) of every world in the scheduler's status file that
    has fired; [] when there is no file or it cannot be read."""
    path = Path(data_dir) / RUNS_DIR / SCHEDULE_STATUS
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return []
    try:
        raw = os.read(fd, SCHEDULE_STATUS_MAX + 1)
    except OSError:
        return []
    finally:
        os.close(fd)
    if len(raw) > SCHEDULE_STATUS_MAX:
        return []
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return []
    if isinstance(doc, dict):
        entries = next((doc[k] for k in ("worlds", "schedules", "entries") if isinstance(doc.get(k), list)), None)
        if entries is None:  # {"<key>": {...entry...}, ...}
            entries = [v for v in doc.values() if isinstance(v, dict)]
    elif isinstance(doc, list):
        entries = doc
    else:
        return []
    out: dict[tuple[str, str, str], float] = {}
    for e in entries:
        if not isinstance(e, dict):
            continue
        lag = next((e[k] for k in LAG_KEYS if k in e), None)
        if isinstance(lag, dict):
            lag = lag.get("last", lag.get("s"))
        if isinstance(lag, bool) or not isinstance(lag, (int, float)) or not math.isfinite(lag):
            continue
        key = tuple(str(e.get(k) or "")[:128] for k in ("tenant", "workbook", "world"))
        out[key] = float(lag)
        if len(out) >= MAX_LAG_SERIES:
            break
    return sorted(out.items())
