"""A workflow run's records in its folder, in the same files and shapes as an agent run's.

A workflow run lives in `$WB_DATA/wb-runs/<tenant>/wf-<n>/` (or any folder `wbx workflow run --out`
names) and holds:

    _status.json   {status: running|done|error|cancelled, steps, result, usage: null} (the agent
                   runs' core keys) + {id, kind: "workflow", workflow, tenant, started_at, ended_at,
                   ms, tasks, input_bytes, errors: [{workflow, component, code, error}], ledger}
                   (while it runs, `steps` is refreshed at most every 0.5 s; `_steps.jsonl` is live)
    _steps.jsonl   one line per step as it finishes (fsynced): {step, agent, tool: "<lang>:<component>",
                   args: {in, uses, workflow}, output (first 200 chars), exit_code (0 ok, 1 failed,
                   null skipped), error ("<code>: <message>"), dur_ms, ts}
    run.json       the run record (see workbooks.workflow.engine)
    _ledger.json   the seal (when the tenant has a repo: commit `ledger-<id>`)

Outputs are bytes; in a record they are JSON text when they are valid UTF-8, else an object
`{"base64": "<standard base64>"}` (a text output is always a JSON string, so the object form cannot
be mistaken for one). `encode_output`/`decode_output` convert both ways.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from workbooks.agent.records import Recorder
from workbooks.agent.secrets import Secrets
from workbooks.fsutil import atomic_write

RUN_FILE = "run.json"
BINARY_KEY = "base64"  # the marker of a non-UTF-8 output in a record
SUMMARY_CHARS = 500  # _status.json's `result` (a one-line summary)
_SLUG_RE = re.compile(r"[^A-Za-z0-9_-]+")
STATUS_EVERY_S = 0.5  # while a run goes, `_status.json`'s step count is brought up to date at most this often


def encode_output(data: bytes) -> str | dict:
    """An output as it appears in a record: text when it is UTF-8, else {"base64": ...}."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {BINARY_KEY: base64.b64encode(data).decode("ascii")}


def decode_output(value: Any) -> bytes | None:
    """The bytes an encoded output stands for (None for a missing output; ValueError when it is neither form)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {BINARY_KEY} and isinstance(value[BINARY_KEY], str):
        try:
            return base64.b64decode(value[BINARY_KEY], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("an output's base64 is not valid") from None
    raise ValueError("an output is a string or {\"base64\": ...}")


def output_preview(data: bytes) -> str:
    """What a step line keeps of an output: its text (the recorder keeps 200 chars), or a note for bytes."""
    head = data[:1024]
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as e:
        if len(data) > len(head) and e.reason == "unexpected end of data":  # a character cut at the 1 KB mark
            return head[:e.start].decode("utf-8", "replace")
        return f"<{len(data)} bytes, not UTF-8>"


def flat_errors(record: dict) -> list[dict]:
    """Every failed or skipped step of a run record and its sub-workflows, in order."""
    out = [{"workflow": record.get("workflow"), "component": name, **err} for name, err in (record.get("errors") or {}).items()]
    for sub in record.get("sub_workflows") or []:
        out.extend(flat_errors(sub))
    return out


def count_steps(record: dict) -> tuple[int, int]:
    """(steps that succeeded, steps in all) of a run record and its sub-workflows."""
    steps = record.get("steps") or {}
    ok = sum(1 for s in steps.values() if s.get("ok"))
    total = len(steps)
    for sub in record.get("sub_workflows") or []:
        a, b = count_steps(sub)
        ok, total = ok + a, total + b
    return ok, total


def summary(record: dict) -> str:
    """One line for `_status.json`'s result: how many steps went well, and which did not."""
    ok, total = count_steps(record)
    text = f"{ok} of {total} step(s) ok"
    errs = flat_errors(record)
    failed = [f"{e['component']} ({e['code']})" for e in errs if e.get("code") != "skipped"]
    skipped = [e["component"] for e in errs if e.get("code") == "skipped"]
    if failed:
        text += "; failed: " + ", ".join(failed)
    if skipped:
        text += "; skipped: " + ", ".join(skipped)
    return text[:SUMMARY_CHARS]


class StepDirs:
    """A fresh private folder per step run: `<run>/steps/<nnnn>-<slug>` (mode 0700, made exclusively).

    A component's name is a headline title: `..`, `/` or a name shared with a sub-workflow's step
    must not give a step the run folder or another step's folder, so the name is only a readable
    suffix after a counter."""

    def __init__(self, run_dir: str | os.PathLike):
        self.root = Path(run_dir) / "steps"
        self.n = 0
        self._lock = threading.Lock()

    def __call__(self, name: str) -> Path:
        with self._lock:
            self.n += 1
            n = self.n
        slug = _SLUG_RE.sub("-", str(name)).strip("-")[:40] or "step"
        self.root.mkdir(mode=0o700, exist_ok=True)
        d = self.root / f"{n:04d}-{slug}"
        d.mkdir(mode=0o700)  # exclusive: never an existing folder (or a symlink planted there)
        return d


class WorkflowRecorder:
    """Writes one workflow run's folder. Synchronous, like the agent recorder it builds on (every
    write is fsynced): call it from a worker thread in async code."""

    def __init__(self, run_dir: str | os.PathLike, *, run_id: str, tenant: str, workflow: str,
                 agent: str = "workflow", secrets: Secrets | None = None):
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.tenant = tenant
        self.workflow = workflow
        self.secrets = secrets or Secrets()
        self.rec = Recorder(self.run_dir, agent=agent, secrets=self.secrets)
        self.steps = 0
        self.started = time.time()
        self._status_at = time.monotonic()

    def start(self, *, tasks: int, input_bytes: int) -> dict:
        return self.rec.status("running", 0, None, None, id=self.run_id, kind="workflow", workflow=self.workflow,
                               tenant=self.tenant, started_at=self.started, tasks=tasks, input_bytes=input_bytes)

    def step(self, *, workflow: str, component: dict, output: bytes, exit_code: int | None, error: str | None,
             dur_ms: float) -> dict:
        """Append the step's line to `_steps.jsonl` and bump `_status.json`'s step count."""
        line = self.rec.step({
            "step": self.steps, "tool": f"{component.get('lang') or '?'}:{component.get('name')}",
            "args": {"in": component.get("in"), "uses": list(component.get("uses") or ()), "workflow": workflow},
            "output": output_preview(output), "exit_code": exit_code, "error": error, "dur_ms": int(round(dur_ms)),
        })
        self.steps += 1
        now = time.monotonic()
        if now - self._status_at >= STATUS_EVERY_S:  # a status rewrite costs two fsyncs: not per step
            self._status_at = now
            self.rec.status("running", self.steps)
        return line

    def write_record(self, record: dict) -> dict:
        """Write run.json (secret values redacted) and return the record as written."""
        doc = self.secrets.redact_obj(record)
        atomic_write(self.run_dir / RUN_FILE, json.dumps(doc, ensure_ascii=False).encode("utf-8"))
        return doc

    def finish(self, status: str, record: dict | None, *, result: str | None = None, **extra) -> dict:
        ended = time.time()
        fields = {"ended_at": ended, "ms": int((ended - self.started) * 1000), **extra}
        if record is not None:
            fields["errors"] = flat_errors(record)
            result = result if result is not None else summary(record)
        return self.rec.status(status, self.steps, result, None, **fields)


def read_record(run_dir: str | os.PathLike) -> dict | None:
    """A finished run's record (run.json), or None while it runs / when it never finished."""
    try:
        with open(Path(run_dir) / RUN_FILE, "rb") as f:
            doc = json.loads(f.read())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def workflow_view(run_dir: str | os.PathLike, live: int = 50) -> dict | None:
    """What `GET /api/workflow/:run` answers: while it runs {run, status, steps, tasks, live: the
    last `live` step lines}; once finished the run record with {run, status} (status from
    `_status.json`: done, error, cancelled, interrupted) and `result`. None when there is no such run."""
    from workbooks.agent.records import read_status, read_steps

    run_dir = Path(run_dir)
    st = read_status(run_dir)
    if st is None:
        return None
    status = st.get("status") or "running"
    view = {"run": st.get("id") or run_dir.name, "status": status, "workflow": st.get("workflow")}
    record = read_record(run_dir) if status not in ("running", "queued") else None
    if record is None:
        lines = read_steps(run_dir)
        view.update({"steps": len(lines), "tasks": st.get("tasks"), "result": st.get("result"),
                     "live": lines[-live:] if live else []})
        if status not in ("running", "queued"):
            view["errors"] = st.get("errors") or []
            if st.get("error"):
                view["error"] = st["error"]
        return view
    return {**record, "run": view["run"], "status": status, "result": st.get("result")}
