"""`wbx loadtest compare BASE RUN`: did a run regress against a baseline?

Rows for the figures users hold a service to: latency p50/p90/p99/p99.9/max, service p99, the
achieved rate and the error rate. A row regresses when it is worse by more than `max_regression`
(a fraction: 0.1 = 10 %): latency up, rate down, errors up. Error rates are compared against a
noise floor (ERROR_FLOOR) so that one error after a clean baseline is not a regression while a
real error rate is. Runs that cannot be compared fairly (different target rate, model, target,
a generator-bound side) are compared anyway, with a note saying why the verdict may mislead.
"""

from __future__ import annotations

import math

from workbooks.errors import UsageError

#: Error rates below this fraction count as noise when the baseline had (almost) no errors:
#: the allowed increase is max_regression × max(base rate, ERROR_FLOOR).
ERROR_FLOOR = 0.001

#: (metric, section, key, worse when: "up" | "down", unit)
ROWS = (
    ("latency.p50", "latency", "p50", "up", "ms"),
    ("latency.p90", "latency", "p90", "up", "ms"),
    ("latency.p99", "latency", "p99", "up", "ms"),
    ("latency.p99.9", "latency", "p99.9", "up", "ms"),
    ("latency.max", "latency", "max", "up", "ms"),
    ("service.p99", "service", "p99", "up", "ms"),
    ("rate.achieved", "rate", "achieved", "down", "/s"),
    ("errors.rate", "errors", "rate", "up", "fraction"),
)


def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _get(run: dict, section: str, key: str) -> float | None:
    sec = run.get(section)
    return _num(sec.get(key)) if isinstance(sec, dict) else None


def _fraction(max_regression) -> float:
    v = max_regression
    if isinstance(v, str):
        t = v.strip()
        try:
            v = float(t[:-1]) / 100 if t.endswith("%") else float(t)
        except ValueError:
            raise UsageError(f"max regression {max_regression!r} is not a number or a percentage",
                             hint="e.g. 10% or 0.1") from None
    x = _num(v)
    if x is None or x < 0:
        raise UsageError(f"max regression {max_regression!r} must be a finite fraction >= 0", hint="e.g. 10% or 0.1")
    return x


def _row(metric: str, base: float | None, run: float | None, worse: str, unit: str, limit: float) -> dict:
    row = {"metric": metric, "base": base, "run": run, "unit": unit, "worse_when": worse, "change": None,
           "regression": False}
    if base is None or run is None:
        row["note"] = "missing in " + " and ".join(n for n, v in (("base", base), ("run", run)) if v is None)
        return row
    if base > 0:
        row["change"] = round((run - base) / base, 6)
    if metric == "errors.rate":
        row["regression"] = run - base > limit * max(base, ERROR_FLOOR)
    elif base <= 0:
        # nothing to scale against: latency/rate of 0 means the baseline measured nothing
        row["note"] = "base is 0"
        row["regression"] = worse == "up" and run > 0 and metric != "rate.achieved"
    elif worse == "up":
        row["regression"] = run > base * (1 + limit)
    else:
        row["regression"] = run < base * (1 - limit)
    return row


def _notes(base: dict, run: dict) -> list[str]:
    notes = []
    bt, rt = _get(base, "rate", "target"), _get(run, "rate", "target")
    if bt and rt and abs(rt - bt) / bt > 0.01:
        notes.append(f"target rate differs (base {bt:g}/s, run {rt:g}/s): the runs loaded the service differently")
    bm, rm = base.get("model") or "open", run.get("model") or "open"
    if bm != rm:
        notes.append(f"model differs (base {bm}, run {rm})")
    if "closed" in (bm, rm):
        notes.append("a closed-model run omits queueing: its latency understates what users see")
    for side, r in (("base", base), ("run", run)):
        if r.get("generator_bound") is True:
            notes.append(f"the {side} was generator-bound: its numbers are the generator's, not the server's")
        if isinstance(r.get("aborted"), dict):
            notes.append(f"the {side} was aborted at {r['aborted'].get('at_s')} s")
    bp, rp = base.get("plan"), run.get("plan")
    if isinstance(bp, dict) and isinstance(rp, dict):
        for k in ("target", "url", "host"):
            if bp.get(k) != rp.get(k):
                notes.append(f"plan {k} differs (base {bp.get(k)!r}, run {rp.get(k)!r})")
    return notes


def compare(base: dict, run: dict, max_regression) -> dict:
    """{"rows": [...], "ok": no row regressed, "max_regression", "regressions": [metric...], "notes"}."""
    for side, r in (("base", base), ("run", run)):
        if not isinstance(r, dict) or not any(isinstance(r.get(s), dict) for s in ("latency", "rate", "errors")):
            raise UsageError(f"the {side} is not a run.json (no latency, rate or errors)",
                             hint="pass run directories written by `wbx loadtest run`")
    limit = _fraction(max_regression)
    rows = [_row(m, _get(base, s, k), _get(run, s, k), worse, unit, limit) for m, s, k, worse, unit in ROWS]
    regressions = [r["metric"] for r in rows if r["regression"]]
    return {"ok": not regressions, "max_regression": limit, "regressions": regressions, "rows": rows,
            "notes": _notes(base, run)}


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "—"
    if unit == "ms":
        if v >= 1000:
            return f"{v / 1000:.2f} s"
        return f"{v:.0f} ms" if v >= 100 else f"{v:.1f} ms" if v >= 10 else f"{v:.2f} ms" if v >= 1 else f"{v:.3f} ms"
    if unit == "/s":
        return f"{v:,.1f}/s"
    if unit == "fraction":
        return f"{v * 100:.3g} %"
    return f"{v:g}"


def format_table(result: dict) -> str:
    """The comparison as a plain-text table for a terminal."""
    rows = result.get("rows") or []
    lines = [f"{'metric':<15} {'base':>11} {'run':>11} {'change':>9}  verdict"]
    for r in rows:
        ch = r.get("change")
        change = "—" if ch is None else f"{ch * 100:+.1f}%"
        verdict = "REGRESSION" if r.get("regression") else ("n/a" if r.get("note", "").startswith("missing") else "ok")
        lines.append(f"{r.get('metric', ''):<15} {_fmt(r.get('base'), r.get('unit', '')):>11} "
                     f"{_fmt(r.get('run'), r.get('unit', '')):>11} {change:>9}  {verdict}")
    n = len(result.get("regressions") or [])
    limit = result.get("max_regression")
    head = f"max regression {limit * 100:g}%: " if isinstance(limit, (int, float)) else ""
    lines.append(head + (f"{n} regression{'s' if n != 1 else ''}" if n else "no regression"))
    for note in result.get("notes") or []:
        lines.append(f"note: {note}")
    return "\n".join(lines)
