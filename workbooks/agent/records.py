"""A run's records in its folder: `_steps.jsonl`, `_status.json` and `events.org`, all durable.

Every string is redacted with the run's secrets before it reaches a file. `_steps.jsonl` is the
file the ledger seals, so each step is appended through `workbooks.ledger.chain.append_step` (one
line, locked, fsynced before the call returns): a runner killed mid-run leaves every step so far.
`_status.json` is rewritten whole with `atomic_write` (readers see the old or the new one).
`events.org` is the original's Org trace, written once at the end:

    * Agent run                                                  :session:
    ** step 0: shell                                  :tool_call:
       :PROPERTIES:
       :ARGS: {"pipeline": "echo hi"}
       :END:
       hi

    * Result
      <the result, every line indented>
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from workbooks.agent.secrets import Secrets
from workbooks.fsutil import atomic_write
from workbooks.ledger.chain import STEPS_FILE, append_step, split_lines  # noqa: F401 - STEPS_FILE re-exported beside STATUS_FILE
from workbooks.ledger.chain import read_steps as read_steps_raw

STATUS_FILE = "_status.json"
EVENTS_FILE = "events.org"
STATUSES = frozenset({"running", "done", "error", "interrupted", "cancelled"})
_CORE_STATUS_KEYS = ("status", "steps", "result", "usage")
STEP_KEYS = ("step", "agent", "tool", "args", "output", "exit_code", "error", "dur_ms", "ts")
RECORD_OUTPUT_CHARS = 200  # a step line keeps the first 200 characters of the output (original)
ORG_OUTPUT_CHARS = 300  # events.org keeps 300 (original)
ARG_STRING_BYTES = 8000  # a longer string argument (a whole file for vfs_write) keeps its head and tail
_LINE_BREAKS = re.compile(r"[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


def clean_text(value: Any) -> str:
    """Any value as a str that encodes to UTF-8 (lone surrogates become U+FFFD)."""
    text = value if isinstance(value, str) else str(value)
    return text.encode("utf-8", "replace").decode("utf-8")


def usage_dict(usage: Any) -> dict | None:
    """A Usage dataclass (or a dict) as {prompt_tokens, completion_tokens, total_tokens}."""
    if usage is None:
        return None
    if dataclasses.is_dataclass(usage) and not isinstance(usage, type):
        d = dataclasses.asdict(usage)
    elif isinstance(usage, dict):
        d = dict(usage)
    else:
        return None
    out = {k: int(d.get(k) or 0) for k in ("prompt_tokens", "completion_tokens")}
    out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    return out


def _one_line(text: str) -> str:
    return _LINE_BREAKS.sub(" ", text)


class Recorder:
    """Writes one run's records. Synchronous (each call is a few small writes plus an fsync): the
    loop calls it from a worker thread, a runner may call it directly."""

    def __init__(self, run_dir: str | os.PathLike, *, agent: str | None = None, secrets: Secrets | None = None,
                 owner_finishes: bool = False):
        # owner_finishes: whoever drives the loop (the agents process) writes the terminal status
        # itself, once its ledger is sealed, so a reader never sees "done" before the seal
        self.owner_finishes = owner_finishes
        self.run_dir = Path(run_dir)
        self.agent = agent
        self.secrets = secrets or Secrets()
        self._events: list[dict] = []  # step records with a longer output, for events.org
        self._extra: dict = {}  # extra fields given to status() through this recorder

    def _redact(self, obj: Any) -> Any:
        return self.secrets.redact_obj(obj)

    def step(self, record: dict) -> dict:
        """Append one `_steps.jsonl` line {step, agent, tool, args, output (≤200 chars), exit_code,
        error, dur_ms, ts} and return it as written. Missing keys are null (agent defaults to the
        recorder's, ts to now in whole seconds, as the original)."""
        full_output = clean_text(record.get("output") or "")
        line: dict = {}
        for key in STEP_KEYS:
            line[key] = record.get(key)
        if line["agent"] is None:
            line["agent"] = self.agent
        if line["ts"] is None:
            line["ts"] = int(time.time())
        if line["tool"] is not None:
            line["tool"] = clean_text(line["tool"])
        if line["error"] is not None:
            line["error"] = clean_text(line["error"])
        line["args"] = _json_safe(line["args"])
        line = self._redact(line)
        line["args"] = _cap_strings(line["args"], ARG_STRING_BYTES)  # after redaction: no half secret survives
        full_output = self.secrets.redact(full_output)
        line["output"] = full_output[:RECORD_OUTPUT_CHARS]
        append_step(self.run_dir, line)
        self._events.append({**line, "output": full_output[:ORG_OUTPUT_CHARS]})
        return line

    def status(self, status: str, steps: int, result: str | None = None, usage: Any = None, **extra) -> dict:
        """Rewrite `_status.json` {status, steps, result, usage, ...extra} atomically. Extra fields
        given once (started_at, task, model, ...) are kept by later calls."""
        if status not in STATUSES:
            raise ValueError(f"unknown run status {status!r} (one of {sorted(STATUSES)})")
        self._extra.update(extra)
        if self.owner_finishes and status != "running":
            return {"status": status, "steps": int(steps), "result": result, "usage": usage_dict(usage),
                    **self._extra}
        # Fields such as started_at, task and model stay in _status.json across rewrites, including
        # the ones another writer (the runner) put there.
        kept = {k: v for k, v in (read_status(self.run_dir) or {}).items() if k not in _CORE_STATUS_KEYS}
        kept.update(self._extra)
        doc = {
            "status": status,
            "steps": int(steps),
            "result": None if result is None else clean_text(result),
            "usage": usage_dict(usage),
        }
        for k, v in kept.items():
            doc[k] = _json_safe(v)
        doc = self._redact(doc)
        atomic_write(self.run_dir / STATUS_FILE, json.dumps(doc, ensure_ascii=False).encode("utf-8"))
        return doc

    def events_org(self, task: str, outcome: Any) -> str:
        """Write `events.org` (the original's trace: one `** step` per tool call, then `* Result`)
        and return its text. `outcome` is a LoopOutcome (or anything with `.result`, `.status`)."""
        events = self._events or [
            {**e, "output": e.get("output") or ""} for e in read_steps(self.run_dir)
        ]
        result = self.secrets.redact(clean_text(getattr(outcome, "result", "") or ""))
        status = clean_text(getattr(outcome, "status", "") or "")
        parts = ["* Agent run" + " " * 50 + ":session:\n"]
        props = [("TASK", self.secrets.redact(clean_text(task or ""))), ("STATUS", status)]
        if self.agent:
            props.append(("AGENT", self.secrets.redact(clean_text(self.agent))))
        parts.append("  :PROPERTIES:\n")
        for name, value in props:
            parts.append(f"  :{name}: {_one_line(value)}\n")
        parts.append("  :END:\n")
        for ev in events:
            tool = _one_line(clean_text(ev.get("tool") or "?")).strip() or "?"
            args = json.dumps(ev.get("args"), ensure_ascii=False)
            output = _one_line(clean_text(ev.get("output") or ""))[:ORG_OUTPUT_CHARS]
            parts.append(
                f"** step {ev.get('step')}: {tool}" + " " * 34 + ":tool_call:\n"
                "   :PROPERTIES:\n"
                f"   :ARGS: {_one_line(args)}\n"
                "   :END:\n"
                f"   {output}\n"
            )
        body = "\n  ".join(_LINE_BREAKS.split(result))
        parts.append(f"\n* Result\n  {body}\n")
        text = "".join(parts)
        atomic_write(self.run_dir / EVENTS_FILE, text.encode("utf-8"))
        return text


def _json_safe(value: Any) -> Any:
    """A JSON-encodable copy: strings cleaned to UTF-8, unknown objects as their str()."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _json_safe(dataclasses.asdict(value))
    return clean_text(value)


def _cap_strings(value: Any, cap: int) -> Any:
    """Strings over `cap` UTF-8 bytes cut to head + "...[N bytes truncated]..." + tail, so one step
    line stays small (the ledger reads the whole file)."""
    if isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) <= cap:
            return value
        head = raw[: cap // 2].decode("utf-8", "ignore")
        tail = raw[len(raw) - cap // 2:].decode("utf-8", "ignore")
        dropped = len(raw) - len(head.encode("utf-8")) - len(tail.encode("utf-8"))
        return f"{head}...[{dropped} bytes truncated]...{tail}"
    if isinstance(value, dict):
        return {k: _cap_strings(v, cap) for k, v in value.items()}
    if isinstance(value, list):
        return [_cap_strings(v, cap) for v in value]
    return value


def read_status(run_dir: str | os.PathLike) -> dict | None:
    """`_status.json` as a dict, or None when there is none (or it is not a JSON object)."""
    try:
        with open(Path(run_dir) / STATUS_FILE, "rb") as f:
            doc = json.loads(f.read())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def read_steps(run_dir: str | os.PathLike) -> list[dict]:
    """Every step of `_steps.jsonl` in order; a torn or foreign line (not a JSON object) is skipped."""
    raw = read_steps_raw(run_dir)
    if not raw:
        return []
    out = []
    for _n, line in split_lines(raw):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out
