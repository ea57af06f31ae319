"""Run folders: where an agent run lives on disk, how it is named, and how its state is read back.

A run is `$WB_DATA/wb-runs/<tenant>/run-<n>/`. Everything about it is in that folder, so any
process can answer for it and a runner killed mid-run loses nothing:

    _request.json   what was asked (task, system, model, max_steps, exec, agent), written first
    _status.json    {status: queued|running|done|error|interrupted|cancelled, steps, result, usage, ...}
    _steps.jsonl    one line per tool call (sealed by the ledger at the end)
    _ledger.json    the seal
    events.org      the trace, written at the end

Ids are `run-<n>` with n counting up per tenant; only the runner allocates them (one writer), by an
exclusive mkdir, so two allocations never share a folder even across runner restarts.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from workbooks.errors import BadRequest, NotFound
from workbooks.fsutil import atomic_write, fsync_dir, makedirs_durable
from workbooks.gitstore.tenant import validate_tenant

RUNS_DIR = "wb-runs"
RUN_ID_RE = re.compile(r"run-([1-9][0-9]{0,11})")  # agent runs
ANY_RUN_RE = re.compile(r"(run|wf)-([1-9][0-9]{0,11})")  # agent runs and workflow runs (wf-<n>)
REQUEST_FILE = "_request.json"
STATUS_FILE = "_status.json"
STEPS_FILE = "_steps.jsonl"
LEDGER_FILE = "_ledger.json"
EVENTS_FILE = "events.org"
RECORD_FILES = frozenset({REQUEST_FILE, STATUS_FILE, STEPS_FILE, LEDGER_FILE, EVENTS_FILE})
ACTIVE = frozenset({"queued", "running"})
FINISHED = frozenset({"done", "error", "interrupted", "cancelled"})
LIVE_STEPS = 50  # steps shown in `live` while a run is going


def validate_run_id(run_id: object) -> str:
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
        raise BadRequest(f"invalid run id {str(run_id)[:64]!r}", hint="run ids look like run-12")
    return run_id


def tenant_root(data_dir: str | os.PathLike, tenant: str) -> Path:
    return Path(data_dir) / RUNS_DIR / validate_tenant(tenant)


def run_path(data_dir: str | os.PathLike, tenant: str, run_id: str) -> Path:
    return tenant_root(data_dir, tenant) / validate_run_id(run_id)


def allocate(data_dir: str | os.PathLike, tenant: str, prefix: str = "run") -> tuple[str, Path]:
    """A fresh `<prefix>-<n>` folder (created, durable) and its id (`run` agent runs, `wf` workflows)."""
    if prefix not in ("run", "wf"):
        raise ValueError(f"unknown run prefix {prefix!r}")
    root = tenant_root(data_dir, tenant)
    makedirs_durable(root)
    n = 1 + max((int(m.group(2)) for m in (ANY_RUN_RE.fullmatch(e) for e in os.listdir(root))
                 if m and m.group(1) == prefix), default=0)
    while True:
        path = root / f"{prefix}-{n}"
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            n += 1
            continue
        fsync_dir(root)
        return f"{prefix}-{n}", path


def write_json(path: Path, obj: dict) -> None:
    atomic_write(path, json.dumps(obj, ensure_ascii=False, sort_keys=False).encode("utf-8"))


def read_json(path: Path) -> dict | None:
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read() or b"null")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def read_steps(path: Path, limit: int | None = None) -> list[dict]:
    """The run's step records (torn or foreign lines skipped), the last `limit` if given."""
    try:
        with open(path / STEPS_FILE, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return []
    out = []
    for line in raw.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out[-limit:] if limit else out


def run_view(data_dir: str | os.PathLike, tenant: str, run_id: str) -> dict:
    """GET /api/run/:id — running {id, status, steps, live} / finished {id, status, steps, result, tools, usage}."""
    path = run_path(data_dir, tenant, run_id)
    st = read_json(path / STATUS_FILE)
    if st is None:
        if path.is_dir() and (path / REQUEST_FILE).exists():
            st = {"status": "queued", "steps": 0}
        else:
            raise NotFound(f"no run {run_id}")
    status = st.get("status", "running")
    steps = read_steps(path)
    view = {"id": run_id, "status": status, "steps": len(steps)}
    if status in ACTIVE:
        view["live"] = [
            {k: s.get(k) for k in ("step", "tool", "output", "exit_code", "dur_ms")} for s in steps[-LIVE_STEPS:]
        ]
        for k in ("started_at", "model"):
            if k in st:
                view[k] = st[k]
        return view
    view["result"] = st.get("result")
    view["tools"] = st.get("tools") or list(dict.fromkeys(s.get("tool") for s in steps if s.get("tool")))
    view["usage"] = st.get("usage") or {"prompt_tokens": 0, "completion_tokens": 0}
    for k in ("error", "started_at", "ended_at", "model"):
        if st.get(k) is not None:
            view[k] = st[k]
    return view


def list_runs(data_dir: str | os.PathLike, tenant: str, limit: int = 50) -> list[dict]:
    """The tenant's runs, newest first: {id, status, steps, started_at, task (first 120 chars)}."""
    root = tenant_root(data_dir, tenant)
    try:
        names = [e for e in os.listdir(root) if RUN_ID_RE.fullmatch(e)]
    except FileNotFoundError:
        return []
    names.sort(key=lambda e: int(e[4:]), reverse=True)
    out = []
    for name in names[: max(1, limit)]:
        st = read_json(root / name / STATUS_FILE) or {"status": "queued"}
        req = read_json(root / name / REQUEST_FILE) or {}
        out.append({
            "id": name,
            "status": st.get("status"),
            "steps": st.get("steps", 0),
            "started_at": st.get("started_at"),
            "task": str(req.get("task", ""))[:120],
            "agent": req.get("agent"),
        })
    return out


def iter_all_runs(data_dir: str | os.PathLike):
    """(tenant, run_id, path) of every run folder on disk."""
    base = Path(data_dir) / RUNS_DIR
    try:
        tenants = sorted(os.listdir(base))
    except FileNotFoundError:
        return
    for tenant in tenants:
        try:
            validate_tenant(tenant)
            names = os.listdir(base / tenant)
        except (BadRequest, NotADirectoryError, FileNotFoundError):
            continue
        for name in sorted((n for n in names if ANY_RUN_RE.fullmatch(n)), key=lambda e: (e[:3], int(e.split("-")[1]))):
            yield tenant, name, base / tenant / name
