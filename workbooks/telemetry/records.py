"""What one step line and one `_status.json` mean for telemetry, whatever a file holds.

A run folder is written by our recorders, but its files are still read as untrusted input: a
field of the wrong type is dropped (null), strings are capped, integers clamped to SQLite's range.
A step is an error when its exit code is non-zero or it names an error (the original's rule).
"""

from __future__ import annotations

import json
import re
from typing import Any

TOOL_CHARS = 200
ERROR_CHARS = 2000
LANE_CHARS = 64
TITLE_CHARS = 500
TASK_OUTPUT_CHARS = 600  # the original keeps 600 characters of a task's output
STAGE_CHARS = 64
RECENT_STEPS = 15  # the original's `recent`: the last 15 steps
INT_MAX = (1 << 63) - 1
DUR_MS_MAX = 10**9  # a step's duration is capped at ~11.6 days, so sums stay within SQLite's integers
KNOWN_STATUSES = ("queued", "running", "done", "error", "interrupted", "cancelled")
_LANE_OK = re.compile(r"[^A-Za-z0-9_.+-]")


def _int(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return None
        v = int(v)
    return max(-INT_MAX, min(INT_MAX, v))


def _text(v: Any, cap: int) -> str | None:
    if v is None or v is False:
        return None
    s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else str(v)
    s = s.encode("utf-8", "replace").decode("utf-8")[:cap]
    return s or None


def lane_of(tool: str | None) -> str:
    """The histogram lane of a step: the part of `tool` before `:` (`js:fetch` -> js), else the tool."""
    if not tool:
        return "unknown"
    lane = tool.split(":", 1)[0] if ":" in tool else tool
    lane = _LANE_OK.sub("_", lane)[:LANE_CHARS]
    return lane or "unknown"


def step_row(raw: bytes) -> dict | None:
    """One `_steps.jsonl` line as {step, tool, exit_code, error, dur_ms, ts, lane}; None for a
    line that is not a JSON object (torn, foreign)."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    tool = _text(doc.get("tool"), TOOL_CHARS)
    dur = _int(doc.get("dur_ms"))
    return {
        "step": _int(doc.get("step")),
        "tool": tool,
        "exit_code": _int(doc.get("exit_code")),
        "error": _text(doc.get("error"), ERROR_CHARS),
        "dur_ms": None if dur is None else max(0, min(DUR_MS_MAX, dur)),
        "ts": _int(doc.get("ts")),
        "lane": lane_of(tool),
    }


def is_error(row: dict) -> bool:
    return bool(row.get("error")) or (row.get("exit_code") is not None and row["exit_code"] != 0)


def status_label(status: Any) -> str | None:
    """The run's status as a Prometheus-safe label: one of KNOWN_STATUSES, `other`, or None."""
    if status is None:
        return None
    return status if status in KNOWN_STATUSES else "other"


def run_kind(run_id: str, status_doc: dict) -> str:
    kind = status_doc.get("kind")
    if isinstance(kind, str) and kind in ("agent", "workflow", "todo"):
        return kind
    if isinstance(status_doc.get("tasks"), list) and run_id.startswith("wf-") and "workflow" not in status_doc:
        return "todo"
    return "agent" if run_id.startswith("run-") else "workflow"


def status_fields(run_id: str, doc: dict | None) -> dict:
    """From `_status.json`: status, stage (the original's `stage`, else the status), started_at,
    kind and the task records [{id, idx, title, state, output}]."""
    doc = doc if isinstance(doc, dict) else {}
    status = _text(doc.get("status"), STAGE_CHARS)
    stage = _text(doc.get("stage"), STAGE_CHARS) or status
    started = doc.get("started_at")
    if not isinstance(started, (int, float, str)) or isinstance(started, bool):
        started = None
    elif isinstance(started, str):
        started = started[:64]
    return {"status": status, "stage": stage, "started_at": started, "kind": run_kind(run_id, doc),
            "tasks": tasks_of(doc.get("tasks"))}


def tasks_of(tasks: Any) -> list[dict]:
    """Task records in the original's shape {id, idx, title, state, output}: a list of task maps
    (TODO outlines), or a map component -> output / component -> {state, ...} (workflows)."""
    out: list[dict] = []
    if isinstance(tasks, list):
        items = [(None, t) for t in tasks]
    elif isinstance(tasks, dict):
        items = list(tasks.items())
    else:
        return out
    for idx, (key, t) in enumerate(items[:10000]):
        if isinstance(t, dict):
            tid = _text(t.get("id") if t.get("id") is not None else key, TITLE_CHARS)
            rec = {
                "id": tid,
                "idx": _int(t.get("idx")) if _int(t.get("idx")) is not None else idx,
                "title": _text(t.get("title"), TITLE_CHARS) or tid,
                "state": _text(t.get("state") or t.get("status"), STAGE_CHARS),
                "output": _text(t.get("output"), TASK_OUTPUT_CHARS),
            }
            for extra in ("parent", "kind", "reason"):  # TODO outlines: the tree and why an item is left
                if t.get(extra) is not None:
                    rec[extra] = _text(t.get(extra), TITLE_CHARS)
        else:
            tid = _text(key, TITLE_CHARS) if key is not None else str(idx)
            rec = {"id": tid, "idx": idx, "title": tid, "state": None, "output": _text(t, TASK_OUTPUT_CHARS)}
        out.append(rec)
    return out
