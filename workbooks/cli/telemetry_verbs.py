"""`wbx telemetry [RUN]`: the tenant's runs with their roll-up, or one run's telemetry.

Talks to a running control plane like `wbx agent` (`--url`/`$WB_CONTROL_URL`, `--key`/`$WB_API_KEY`
or `$WB_DATA/admin.key`, `--tenant`/`$WB_TENANT` with an admin key). A table on a terminal, the
route's JSON otherwise. Exit codes: 0, 2 bad arguments, 3 control plane unreachable, 4 no such
run, 7 key rejected.
"""

from __future__ import annotations

import time

from workbooks.cli.output import Output
from workbooks.errors import UsageError

MAX_LIMIT = 1000


def _ago(ts) -> str:
    if not isinstance(ts, (int, float)):
        return "-"
    s = max(0, time.time() - ts)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{int(s // n)}{unit} ago"
    return f"{int(s)}s ago"


def _ms(v) -> str:
    if not isinstance(v, (int, float)):
        return "-"
    return f"{v / 1000:.1f}s" if v >= 1000 else f"{int(v)}ms"


def _freshness(index: dict, st) -> str:
    if not index or index.get("scanned_at") is None:
        return st.yellow("index: nothing indexed yet (is the telemetry child running?)")
    if index.get("source") == "files":
        return st.dim("read from the run folder (not indexed yet)")
    age = index.get("age_s") or 0
    note = f"index updated {age:.1f}s ago"
    return st.dim(note) if index.get("live") else st.yellow(note + " (the telemetry child is not running)")


def _table(rows: list[list[str]], st) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        line = "  ".join(c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r))
        out.append(st.bold(line) if n == 0 else line)
    return out


def _overview_human(d: dict, st) -> str:
    r = d.get("rollup") or {}
    lines = [f"{r.get('runs', 0)} run(s) · {r.get('with_errors', 0)} with errors · {r.get('tool_calls', 0)} tool call(s)"]
    runs = d.get("runs") or []
    if runs:
        rows = [["RUN", "KIND", "STAGE", "CALLS", "ERRORS", "TIME", "ACTIVE"]]
        for x in runs:
            rows.append([str(x.get("id")), str(x.get("kind") or "-"), str(x.get("stage") or "-"),
                         str(x.get("tool_calls", 0)), str(x.get("errors", 0)), _ms(x.get("total_ms")),
                         _ago(x.get("updated_at"))])
        lines += _table(rows, st)
    lines.append(_freshness(d.get("index") or {}, st))
    return "\n".join(lines)


def _run_human(d: dict, st) -> str:
    lines = [f"{d.get('id')} · {d.get('kind') or '-'} · {d.get('stage') or '-'} · {d.get('tool_calls', 0)} tool call(s) · "
             f"{_ms(d.get('total_ms'))} · {d.get('error_count', len(d.get('errors') or []))} error(s)"]
    tasks = d.get("tasks") or []
    if tasks:
        lines.append(st.bold("tasks"))
        lines += [f"  {str(t.get('state') or '-'):<9} {t.get('title') or t.get('id')}" for t in tasks]
    recent = d.get("recent") or []
    if recent:
        rows = [["STEP", "TOOL", "EXIT", "TIME"]]
        for s in recent:
            rows.append([str(s.get("step")), str(s.get("tool")), str(s.get("exit_code")), _ms(s.get("dur_ms"))])
        lines.append(st.bold("recent steps"))
        lines += ["  " + x for x in _table(rows, st)]
    errors = d.get("errors") or []
    if errors:
        lines.append(st.bold("errors"))
        for e in errors[-15:]:
            what = e.get("error") or f"exit {e.get('exit_code')}"
            lines.append(st.red(f"  {e.get('step')}. {e.get('tool')}: {str(what).splitlines()[0][:160] if what else ''}"))
    lines.append(_freshness(d.get("index") or {}, st))
    return "\n".join(lines)


def cmd_telemetry(ns) -> Output:
    from workbooks.cli.agent_verbs import request

    if ns.run:
        from workbooks.agent.runs import ANY_RUN_RE

        if not ANY_RUN_RE.fullmatch(ns.run):
            raise UsageError(f"invalid run id {ns.run[:64]!r}", hint="run ids look like run-12 or wf-3")
        return Output(data=request(ns, "GET", f"/api/telemetry/{ns.run}"), human=_run_human)
    if not 1 <= ns.limit <= MAX_LIMIT:
        raise UsageError(f"--limit must be from 1 to {MAX_LIMIT}")
    return Output(data=request(ns, "GET", f"/api/telemetry?limit={ns.limit}"), human=_overview_human)


def register(subs) -> None:
    from workbooks.cli.admin_verbs import DEFAULT_URL

    p = subs.add_parser("telemetry", help="runs with their tool calls, errors and time (or one run's detail)")
    p.add_argument("run", nargs="?", help="a run id (run-<n>, wf-<n>): that run's telemetry")
    p.add_argument("--limit", type=int, default=20, help="runs listed (default 20)")
    p.add_argument("--url", help=f"control plane URL (default $WB_CONTROL_URL or {DEFAULT_URL})")
    p.add_argument("--key", help="API key (default $WB_API_KEY or $WB_DATA/admin.key)")
    p.add_argument("--data", help="data dir holding admin.key (default $WB_DATA or ./wb-data)")
    p.add_argument("--tenant", help="with an admin key: the tenant to act for (default $WB_TENANT)")
    p.set_defaults(func=cmd_telemetry)
