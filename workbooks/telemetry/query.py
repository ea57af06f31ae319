"""Reading the index: the tenant's run list with its roll-up, and one run's summary.

Readers never write: a read-only connection answers from what is indexed, with `index`
{scanned_at, age_s, live} saying how fresh that is (`live` while the indexer scanned in the last
few seconds). A run folder that exists but is not indexed yet (the indexer is down, or the run is
seconds old) is summarised from its files instead (`index.source` = "files"), so a run never
answers 404 while it is on disk. Rows are always filtered by tenant: another tenant's run is 404.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from pathlib import Path

from workbooks.agent.runs import ANY_RUN_RE, REQUEST_FILE, RUNS_DIR, STATUS_FILE, STEPS_FILE
from workbooks.errors import BadRequest, NotFound, WorkbooksError
from workbooks.gitstore.tenant import validate_tenant
from workbooks.telemetry import db as D
from workbooks.telemetry.records import RECENT_STEPS, is_error, status_fields, step_row

LIVE_WITHIN_S = 5.0
ERRORS_SHOWN = 200  # a run's `errors` lists its last 200 failing steps; `error_count` counts them all
FILES_FALLBACK_MAX = 64 << 20
_SHOWN = "tool_calls > 0 OR stage IS NOT NULL"  # the original drops runs with neither


class TelemetryUnavailable(WorkbooksError):
    code = "telemetry_unavailable"
    http_status = 503
    retryable = True


def _guarded(fn):
    """An unreadable index (corrupt, or a disk error) is a 503 naming the file, never a 500."""
    def wrapper(data_dir, *a, **kw):
        try:
            return fn(data_dir, *a, **kw)
        except sqlite3.Error as e:
            raise TelemetryUnavailable(f"the telemetry index cannot be read: {e}",
                                       hint=f"stop the telemetry child, remove {D.db_path(data_dir).name} and start "
                                            "it again: it re-indexes every run folder") from None
    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


def validate_any_run_id(run_id: object) -> str:
    if not isinstance(run_id, str) or not ANY_RUN_RE.fullmatch(run_id):
        raise BadRequest(f"invalid run id {str(run_id)[:64]!r}", hint="run ids look like run-12 or wf-3")
    return run_id


def freshness(conn: sqlite3.Connection | None, source: str = "index") -> dict:
    if conn is None:
        return {"scanned_at": None, "age_s": None, "live": False, "source": source}
    row = conn.execute("SELECT value FROM meta WHERE key='scanned_at'").fetchone()
    if not row:
        return {"scanned_at": None, "age_s": None, "live": False, "source": source}
    at = float(row[0])
    age = max(0.0, time.time() - at)
    return {"scanned_at": round(at, 3), "age_s": round(age, 3), "live": age < LIVE_WITHIN_S, "source": source}


def _started(v):
    if v is None:
        return None
    try:
        return json.loads(v)
    except ValueError:
        return v


def _run_row(r) -> dict:
    return {"id": r[0], "kind": r[1], "status": r[2], "stage": r[3], "tool_calls": r[4], "errors": r[5],
            "total_ms": r[6], "started_at": _started(r[7]), "updated_at": None if r[8] is None else round(r[8], 3)}


@_guarded
def overview(data_dir: str | os.PathLike, tenant: str, limit: int = 50) -> dict:
    """GET /api/telemetry: {rollup: {runs, with_errors, tool_calls}, runs: [...newest first], index}.
    The roll-up covers every indexed run of the tenant; `runs` the `limit` most recently active."""
    validate_tenant(tenant)
    conn = D.open_reader(data_dir)
    if conn is None:
        return {"rollup": {"runs": 0, "with_errors": 0, "tool_calls": 0}, "runs": [], "index": freshness(None)}
    try:
        n, with_errors, calls = conn.execute(
            f"SELECT count(*), coalesce(sum(errors > 0 OR status = 'error'), 0), coalesce(sum(tool_calls), 0) "
            f"FROM runs WHERE tenant=? AND ({_SHOWN})", (tenant,)).fetchone()  # noqa: S608
        rows = conn.execute(
            f"SELECT run_id, kind, status, stage, tool_calls, errors, total_ms, started_at, updated_at FROM runs "
            f"WHERE tenant=? AND ({_SHOWN}) ORDER BY updated_at DESC, "  # noqa: S608
            f"CAST(substr(run_id, instr(run_id, '-') + 1) AS INTEGER) DESC LIMIT ?", (tenant, limit)).fetchall()
        return {"rollup": {"runs": n, "with_errors": with_errors, "tool_calls": calls},
                "runs": [_run_row(r) for r in rows], "index": freshness(conn)}
    finally:
        conn.close()


@_guarded
def run_summary(data_dir: str | os.PathLike, tenant: str, run_id: str) -> dict:
    """GET /api/telemetry/:run: {id, stage, status, tasks, tool_calls, total_ms, errors, error_count,
    recent, index} (the original's summary: errors are the failing steps {step, tool, exit_code,
    error}; recent the last 15 steps {step, tool, exit_code, dur_ms})."""
    validate_tenant(tenant)
    validate_any_run_id(run_id)
    conn = D.open_reader(data_dir)
    try:
        row = None if conn is None else conn.execute(
            "SELECT kind, status, stage, tasks, tool_calls, total_ms, errors, started_at, updated_at FROM runs "
            "WHERE tenant=? AND run_id=?", (tenant, run_id)).fetchone()
        if row is None:
            return _from_files(data_dir, tenant, run_id, freshness(conn, "files"))
        kind, status, stage, tasks, calls, total, nerr, started, updated = row
        errs = conn.execute(
            "SELECT step, tool, exit_code, error FROM step_events WHERE tenant=? AND run_id=? AND "
            "(error IS NOT NULL OR coalesce(exit_code, 0) != 0) ORDER BY line DESC LIMIT ?",
            (tenant, run_id, ERRORS_SHOWN)).fetchall()
        recent = conn.execute(
            "SELECT step, tool, exit_code, dur_ms FROM step_events WHERE tenant=? AND run_id=? ORDER BY line DESC LIMIT ?",
            (tenant, run_id, RECENT_STEPS)).fetchall()
        try:
            task_list = json.loads(tasks) if tasks else []
        except ValueError:
            task_list = []
        return {
            "id": run_id, "kind": kind, "status": status, "stage": stage, "tasks": task_list,
            "tool_calls": calls, "total_ms": total,
            "errors": [{"step": s, "tool": t, "exit_code": c, "error": e} for s, t, c, e in reversed(errs)],
            "error_count": nerr,
            "recent": [{"step": s, "tool": t, "exit_code": c, "dur_ms": d} for s, t, c, d in reversed(recent)],
            "started_at": _started(started), "updated_at": None if updated is None else round(updated, 3),
            "index": freshness(conn),
        }
    finally:
        if conn is not None:
            conn.close()


def _from_files(data_dir, tenant: str, run_id: str, index: dict) -> dict:
    """The same summary read straight from the run folder (not indexed yet)."""
    folder = Path(data_dir) / RUNS_DIR / tenant / run_id
    try:
        if not (stat.S_ISDIR(os.lstat(folder.parent).st_mode) and stat.S_ISDIR(os.lstat(folder).st_mode)):
            raise NotFound(f"no run {run_id}")
    except OSError:
        raise NotFound(f"no run {run_id}") from None
    from workbooks.telemetry.indexer import STATUS_MAX, _read_file

    raw_status = _read_file(folder / STATUS_FILE, STATUS_MAX)
    try:
        doc = json.loads(raw_status) if raw_status else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        doc = None
    if raw_status is None and _read_file(folder / REQUEST_FILE, STATUS_MAX) is not None:
        doc = {"status": "queued"}
    raw_steps = _read_file(folder / STEPS_FILE, FILES_FALLBACK_MAX) or b""
    steps = [r for r in (step_row(line) for line in raw_steps.split(b"\n")[:-1] if line.strip()) if r]
    f = status_fields(run_id, doc)
    errs = [s for s in steps if is_error(s)]
    return {
        "id": run_id, "kind": f["kind"], "status": f["status"], "stage": f["stage"], "tasks": f["tasks"],
        "tool_calls": len(steps), "total_ms": sum(s["dur_ms"] or 0 for s in steps),
        "errors": [{k: s[k] for k in ("step", "tool", "exit_code", "error")} for s in errs[-ERRORS_SHOWN:]],
        "error_count": len(errs),
        "recent": [{k: s[k] for k in ("step", "tool", "exit_code", "dur_ms")} for s in steps[-RECENT_STEPS:]],
        "started_at": f["started_at"], "updated_at": None, "index": index,
    }
