"""`wbx agent run|status|list|runs|cancel`: start agent runs on a server and follow them.

They talk to a running control plane (`--url`, `$WB_CONTROL_URL`, default http://127.0.0.1:4000)
with a key from `--key`, `$WB_API_KEY`, or `$WB_DATA/admin.key` (an admin key names the tenant with
`--tenant`/`$WB_TENANT`, default `dev`). `run` follows the run's event stream: a live step display
on a terminal, one JSON object per frame when piped, and the finished run last. Exit codes: 0 when
the run is done, 1 when it ended otherwise (error, interrupted, cancelled), 3 server unreachable,
4 no such run or agent, 7 key rejected, 2 bad arguments.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

from workbooks.cli.admin_verbs import DEFAULT_URL, _key
from workbooks.cli.output import AGENT, HUMAN, JSON, Output, Style
from workbooks.errors import (AuthRejected, BadRequest, Conflict, NotFound, Unreachable, UsageError,
                              WorkbooksError)


class RunFailed(WorkbooksError):
    code = "run_failed"
    exit_code = 1


class Busy(WorkbooksError):
    code = "too_many_runs"
    exit_code = 1
    retryable = True


def _base(ns) -> str:
    return (getattr(ns, "url", None) or os.environ.get("WB_CONTROL_URL") or DEFAULT_URL).rstrip("/")


def _headers(ns, body: bool = False) -> dict:
    h = {"Authorization": f"Bearer {_key(ns)}", "Accept": "application/json"}
    tenant = getattr(ns, "tenant", None) or os.environ.get("WB_TENANT")
    if tenant:
        h["X-Workbooks-Tenant"] = tenant
    if body:
        h["Content-Type"] = "application/json"
    return h


def _raise_http(e: urllib.error.HTTPError, url: str):
    try:
        err = json.loads(e.read() or b"{}").get("error") or {}
    except ValueError:
        err = {}
    msg = err.get("message") or f"HTTP {e.code}"
    hint = err.get("hint")
    if e.code in (401, 403):
        raise AuthRejected(f"the control plane refused: {msg}", hint=hint or "check --key / $WB_API_KEY") from None
    if e.code == 404:
        raise NotFound(msg, hint=hint) from None
    if e.code == 409:
        raise Conflict(msg, hint=hint) from None
    if e.code in (400, 413, 415):
        raise BadRequest(msg, hint=hint) from None
    if e.code == 429:
        raise Busy(msg, hint=hint or "wait for a run to finish") from None
    if e.code == 503:
        raise Unreachable(msg, hint=hint) from None
    raise WorkbooksError(f"control plane error {e.code}: {msg}", hint=hint) from None


def request(ns, method: str, path: str, body: dict | None = None, timeout: float = 30.0) -> dict:
    url = _base(ns) + path
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=_headers(ns, body is not None))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        _raise_http(e, url)
    except (urllib.error.URLError, OSError) as e:
        raise Unreachable(f"cannot reach the control plane at {_base(ns)}: {getattr(e, 'reason', e)}",
                          hint="is `wbx serve` running? (--url / $WB_CONTROL_URL)") from None


def stream(ns, run_id: str):
    """The run's frames (dicts) from the SSE stream, until `done` or the server closes it."""
    url = f"{_base(ns)}/api/run/{run_id}/stream"
    headers = {**_headers(ns), "Accept": "text/event-stream"}
    req = urllib.request.Request(url, headers=headers)
    try:
        r = urllib.request.urlopen(req, timeout=600)
    except urllib.error.HTTPError as e:
        _raise_http(e, url)
    except (urllib.error.URLError, OSError) as e:
        raise Unreachable(f"cannot reach the control plane at {_base(ns)}: {getattr(e, 'reason', e)}") from None
    with r:
        data: list[str] = []
        for raw in r:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
            elif line == "" and data:
                try:
                    frame = json.loads("\n".join(data))
                except ValueError:
                    frame = None
                data = []
                if isinstance(frame, dict):
                    yield frame
                    if frame.get("type") == "done":
                        return


def _write_line(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class LiveDisplay:
    """What a person at a terminal sees while a run goes: one line per step, the model's text as it comes."""

    def __init__(self):
        self.st = Style(True)
        self.in_text = False
        self.t0 = time.monotonic()

    def frame(self, f: dict) -> None:
        kind = f.get("type")
        out = sys.stderr
        if kind == "delta":
            out.write(f.get("content") or "")
            self.in_text = True
        else:
            if self.in_text:
                out.write("\n")
                self.in_text = False
            if kind == "subscribed":
                out.write(self.st.dim(f"▸ {f.get('id')} started\n"))
            elif kind == "step":
                first = (str(f.get("output") or "").strip().splitlines() or [""])[0][:100]
                mark = self.st.green("✓") if not f.get("exit_code") else self.st.red("✗")
                out.write(f"{mark} {f.get('step')}. {self.st.bold(str(f.get('tool')))}  {self.st.dim(first)}\n")
            elif kind == "error":
                out.write(self.st.red(f"error: {f.get('error')}\n"))
            elif kind == "done":
                secs = time.monotonic() - self.t0
                out.write(self.st.dim(f"▸ {f.get('status') or 'done'} in {secs:.1f}s\n"))
        out.flush()


def _run_output(view: dict) -> Output:
    status = view.get("status")

    def human(d, st):
        lines = [str(d.get("result") or "")]
        u = d.get("usage") or {}
        lines.append(st.dim(f"{d.get('id')} · {status} · {d.get('steps')} step(s) · tools: "
                            f"{', '.join(d.get('tools') or []) or '-'} · tokens {u.get('prompt_tokens', 0)}"
                            f"+{u.get('completion_tokens', 0)}"))
        return "\n".join(lines)

    return Output(data=view, human=human, exit_code=0 if status == "done" else 1)


def cmd_run(ns) -> Output:
    task = " ".join(ns.task).strip()
    if not task:
        raise UsageError("give the task: wbx agent run TASK…")
    if ns.agent_slug:
        body = {"agent_slug": ns.agent_slug, "prompt": task}
        if ns.max_steps is not None:
            body["max_steps"] = ns.max_steps
        if ns.exec:
            body["exec"] = True
        started = request(ns, "POST", "/api/agent/run", body)
    else:
        body = {"task": task}
        for k in ("system", "model", "max_steps"):
            if getattr(ns, k) is not None:
                body[k] = getattr(ns, k)
        if ns.exec:
            body["exec"] = True
        started = request(ns, "POST", "/api/run", body)
    run_id = started["id"]
    if ns.no_follow:
        return Output(data=started, human=lambda d, st: f"{d['id']} {d['status']}")
    live = ns.mode == HUMAN and sys.stderr.isatty()
    display = LiveDisplay() if live else None
    lines = ns.mode == AGENT
    try:
        for frame in stream(ns, run_id):
            if display is not None:
                display.frame(frame)
            elif lines:
                _write_line(frame)
    except KeyboardInterrupt:
        sys.stderr.write(f"\nstopped following {run_id}; it goes on (wbx agent status {run_id}, "
                         f"wbx agent cancel {run_id})\n")
        raise
    view = request(ns, "GET", f"/api/run/{run_id}")
    for _ in range(50):  # the stream ended on `done`; the status file follows within moments
        if view.get("status") not in ("running", "queued"):
            break
        time.sleep(0.1)
        view = request(ns, "GET", f"/api/run/{run_id}")
    return _run_output(view)


def cmd_status(ns) -> Output:
    view = request(ns, "GET", f"/api/run/{ns.id}")
    if view.get("status") in ("running", "queued"):
        def human(d, st):
            rows = [f"{d['id']} · {d['status']} · {d['steps']} step(s)"]
            for s in d.get("live") or []:
                first = (str(s.get("output") or "").strip().splitlines() or [""])[0][:100]
                rows.append(f"  {s.get('step')}. {s.get('tool')}  {st.dim(first)}")
            return "\n".join(rows)

        return Output(data=view, human=human)
    return _run_output(view)


def cmd_cancel(ns) -> Output:
    reply = request(ns, "DELETE", f"/api/run/{ns.id}")
    return Output(data=reply, human=lambda d, st: f"{d['id']} {d['status']}")


def cmd_list(ns) -> Output:
    data = request(ns, "GET", "/api/agents/list")

    def human(d, st):
        agents = d.get("agents") or []
        if not agents:
            return "no agents defined (deploy a workbook with an :agent: headline)"
        return "\n".join(f"{a.get('slug'):<24} {st.dim(str(a.get('tagline') or a.get('name') or ''))}" for a in agents)

    return Output(data=data, human=human)


def cmd_runs(ns) -> Output:
    data = request(ns, "GET", f"/api/runs?limit={ns.limit}")

    def human(d, st):
        rows = d.get("runs") or []
        if not rows:
            return "no runs yet"
        return "\n".join(f"{r['id']:<10} {str(r.get('status')):<12} {r.get('steps', 0):>4}  {st.dim(r.get('task') or '')}"
                         for r in rows)

    return Output(data=data, human=human)


def register(subs) -> None:
    a = subs.add_parser("agent", help="start agent runs on the server and follow them")
    asubs = a.add_subparsers(dest="agent_cmd", parser_class=type(a), required=True)

    def common(p):
        p.add_argument("--url", help=f"control plane URL (default $WB_CONTROL_URL or {DEFAULT_URL})")
        p.add_argument("--key", help="API key (default $WB_API_KEY or $WB_DATA/admin.key)")
        p.add_argument("--data", help="data dir holding admin.key (default $WB_DATA or ./wb-data)")
        p.add_argument("--tenant", help="with an admin key: the tenant to act for (default $WB_TENANT)")

    p = asubs.add_parser("run", help="start a run and follow it (exit 0 when done, 1 otherwise)")
    p.add_argument("task", nargs="+", help="what the agent should do")
    p.add_argument("--system", help="the system prompt")
    p.add_argument("--model", help="the model (default $WB_LLM_MODEL on the server)")
    p.add_argument("--max-steps", dest="max_steps", type=int, help="cap on tool steps (default 40; 12 for --agent)")
    p.add_argument("--agent", dest="agent_slug", metavar="SLUG", help="run an agent defined in a deployed workbook")
    p.add_argument("--exec", action="store_true", help="work on the tenant's site, with git and publish (exec key)")
    p.add_argument("--no-follow", action="store_true", help="print the run id and return at once")
    common(p)
    p.set_defaults(func=cmd_run)
    p = asubs.add_parser("status", help="a run's state: live steps, or its result")
    p.add_argument("id", help="run id (run-<n>)")
    common(p)
    p.set_defaults(func=cmd_status)
    p = asubs.add_parser("cancel", help="cancel a running run")
    p.add_argument("id", help="run id (run-<n>)")
    common(p)
    p.set_defaults(func=cmd_cancel)
    p = asubs.add_parser("list", help="the agents defined in the tenant's deployed workbooks")
    common(p)
    p.set_defaults(func=cmd_list)
    p = asubs.add_parser("runs", help="the tenant's runs, newest first")
    p.add_argument("--limit", type=int, default=20)
    common(p)
    p.set_defaults(func=cmd_runs)
