"""Pass/fail thresholds: `latency.p99 < 50ms`, `errors.rate < 0.1%`, `rate.achieved >= 99%`, …

`parse(expr)` checks an expression once (a bad one is a `UsageError` whose hint lists every
metric); `evaluate(thresholds, summary)` measures each against a run.json-shaped summary (the run's
or, with `--abort-on-fail`, the run so far). A threshold whose value is missing (no request
completed, server metrics not scraped) does not hold, and says why.

Units: latency-family limits are milliseconds (a bare number) or carry `us`, `ms` or `s`;
`errors.rate`/`dropped.rate` are fractions (`0.001`) or percentages (`0.1%`); `rate.achieved` is a
fraction of the target rate with `%` (`99%`) and req/s without (`400`, `400/s`); counts are
whole numbers. Evaluated values and limits are in the same unit as `unit` says ("ms", "/s", "" for
fractions and counts).
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass, field

from workbooks.errors import UsageError

HIST_METRICS = ("latency", "service", "ttfb", "conn_wait", "lag", "admitted", "failed")
STATS = ("p50", "p90", "p99", "p99.9", "p99.99", "max", "mean")
SERVER = ("overloaded", "deadline", "restarts", "http_5xx")
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
       "!=": operator.ne}

HINT = ("METRIC OP LIMIT with OP one of < <= > >= == != and METRIC one of: "
        + ", ".join(f"{m}.{{{'|'.join(STATS)}}}" for m in HIST_METRICS)
        + " (ms; limits in us, ms or s; latency may be narrowed with {op=NAME} or {size=S|M|L|XL}), "
        "errors.rate, errors.count, dropped.rate, dropped.count (rates as 0.001 or 0.1%; errors and "
        "dropped may be narrowed with {op=NAME}), rate.achieved (99% of the target, or req/s), "
        + ", ".join(f"server.{s}" for s in SERVER)
        + " (counts over the run). Example: 'latency.p99 < 50ms'")

_EXPR = re.compile(
    r"\s*(?P<family>[a-z_0-9]+)\s*(?:\{(?P<filter>[^{}]*)\})?\s*\.\s*(?P<stat>[a-z_0-9]+(?:\.[0-9]+)?)"
    r"\s*(?P<op><=|>=|==|!=|<|>|=)\s*(?P<value>[^\s].*?)\s*")
_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_TOKEN = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_TIME_UNITS = {"": 1.0, "us": 1e-3, "µs": 1e-3, "μs": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class Threshold:
    expr: str
    metric: str  # canonical, e.g. "latency.p99", "latency{op=render}.p99", "rate.achieved"
    op: str
    limit: float
    unit: str  # "ms", "/s", "" (fractions and counts)
    filter: tuple = field(default=())  # (("op", "render"),) or (("size", "S"),)
    family: str = ""
    stat: str = ""


def _bad(expr: str, why: str) -> UsageError:
    return UsageError(f"threshold {expr!r}: {why}", hint=HINT)


def _number(expr: str, text: str) -> float:
    if not re.fullmatch(_NUM, text):
        raise _bad(expr, f"limit {text!r} is not a number")
    x = float(text)
    if not math.isfinite(x):
        raise _bad(expr, f"limit {text!r} is too large")
    return x


def parse(expr: str) -> Threshold:
    """One expression -> Threshold (see the module docstring); UsageError with the metric list otherwise."""
    if not isinstance(expr, str):
        raise UsageError(f"threshold {expr!r}: expected a string"[:300], hint=HINT)
    if len(expr) > 300:
        raise _bad(expr[:60] + "…", "longer than 300 characters")
    m = _EXPR.fullmatch(expr)
    if not m:
        raise _bad(expr, "not METRIC OP LIMIT")
    family, stat, op, value = m.group("family"), m.group("stat"), m.group("op"), m.group("value")
    if op == "=":
        raise _bad(expr, "use == to compare for equality")
    filt: tuple = ()
    if m.group("filter") is not None:
        items = []
        for part in m.group("filter").split(","):
            k, eq, v = (x.strip() for x in part.partition("="))
            if not eq or k not in ("op", "size") or not _TOKEN.fullmatch(v):
                raise _bad(expr, f"filter {part.strip()!r}: expected op=NAME or size=CLASS")
            items.append((k, v))
        if len({k for k, _ in items}) != len(items):
            raise _bad(expr, "a filter names the same key twice")
        if len(items) != 1:
            raise _bad(expr, "narrow by one of op= or size=, not both (run.json keeps them apart)")
        filt = tuple(items)

    if family in HIST_METRICS:
        if stat not in STATS:
            raise _bad(expr, f"{family} has no statistic {stat!r}")
        if filt and family != "latency":
            raise _bad(expr, f"{family} cannot be narrowed by op or size (only latency can)")
        vm = re.fullmatch(rf"({_NUM})\s*(us|µs|μs|ms|s)?", value)
        if not vm:
            raise _bad(expr, f"limit {value!r} is not a time such as 50ms, 500us or 1.5s")
        limit = _number(expr, vm.group(1)) * _TIME_UNITS[vm.group(2) or ""]
        unit = "ms"
    elif family in ("errors", "dropped"):
        if stat not in ("rate", "count"):
            raise _bad(expr, f"{family} has rate and count, not {stat!r}")
        if filt and filt[0][0] != "op":
            raise _bad(expr, f"{family} can be narrowed by op only")
        if stat == "rate":
            limit = _fraction(expr, value)
        else:
            limit = _count(expr, value)
        unit = ""
    elif family == "rate":
        if stat != "achieved":
            raise _bad(expr, f"rate has achieved, not {stat!r}")
        if filt:
            raise _bad(expr, "rate.achieved cannot be narrowed")
        if value.endswith("%"):
            limit, unit = _number(expr, value[:-1].strip()) / 100, ""
        else:
            vm = re.fullmatch(rf"({_NUM})\s*(/\s*s)?", value)
            if not vm:
                raise _bad(expr, f"limit {value!r}: a percentage of the target (99%) or req/s (400)")
            limit, unit = _number(expr, vm.group(1)), "/s"
    elif family == "server":
        if stat not in SERVER:
            raise _bad(expr, f"server has {', '.join(SERVER)}, not {stat!r}")
        if filt:
            raise _bad(expr, "server figures cannot be narrowed")
        limit, unit = _count(expr, value), ""
    else:
        raise _bad(expr, f"unknown metric {family!r}")
    fs = "{" + ",".join(f"{k}={v}" for k, v in filt) + "}" if filt else ""
    metric = f"{family}{fs}.{stat}"
    return Threshold(expr=expr.strip(), metric=metric, op=op, limit=limit, unit=unit, filter=filt,
                     family=family, stat=stat)


def _fraction(expr: str, value: str) -> float:
    if value.endswith("%"):
        x = _number(expr, value[:-1].strip()) / 100
    else:
        x = _number(expr, value)
    if x > 1:
        raise _bad(expr, f"limit {value!r}: a rate is a fraction 0..1 or a percentage 0%..100%")
    return x


def _count(expr: str, value: str) -> float:
    x = _number(expr, value)
    if x != int(x):
        raise _bad(expr, f"limit {value!r}: a count is a whole number")
    return float(int(x))


def _get(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _num(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return v if math.isfinite(v) else None


def measure(th: Threshold, summary: dict) -> tuple[float | None, str | None]:
    """(value, why-it-is-missing) of one threshold's metric in a run.json-shaped summary."""
    f, s = th.family, th.stat
    filt = dict(th.filter)
    if f in HIST_METRICS:
        if "op" in filt:
            v = _get(summary, "by_op", filt["op"], "latency", s)
            where = f"by_op.{filt['op']}.latency.{s}"
        elif "size" in filt:
            v = _get(summary, "by_size", filt["size"], "latency", s)
            where = f"by_size.{filt['size']}.latency.{s}"
        else:
            v = _get(summary, f, s)
            where = f"{f}.{s}"
        if _num(v) is None:
            count = _get(summary, "by_op", filt["op"], "latency", "count") if "op" in filt else \
                _get(summary, "by_size", filt["size"], "latency", "count") if "size" in filt else _get(summary, f, "count")
            if count == 0:
                return None, f"no {f} sample was recorded ({where} is empty)"
            return None, f"run.json has no {where}"
        return float(v), None
    if f in ("errors", "dropped"):
        if "op" in filt:
            row = _get(summary, "by_op", filt["op"])
            if not isinstance(row, dict):
                return None, f"run.json has no by_op.{filt['op']} (no such op was sent)"
            n = _num(row.get(f))
            if n is None:
                return None, f"run.json has no by_op.{filt['op']}.{f}"
            if s == "count":
                return float(n), None
            if f == "errors":
                done = (_num(row.get("ok")) or 0) + n
            else:
                done = (_num(row.get("ok")) or 0) + (_num(row.get("errors")) or 0) + n
            return (n / done if done else 0.0), None
        v = _num(_get(summary, f, s))
        return (float(v), None) if v is not None else (None, f"run.json has no {f}.{s}")
    if f == "rate":
        key = "achieved" if th.unit == "/s" else "achieved_ratio"
        v = _num(_get(summary, "rate", key))
        return (float(v), None) if v is not None else (None, f"run.json has no rate.{key}")
    if f == "server":
        server = summary.get("server") if isinstance(summary, dict) else None
        if not isinstance(server, dict) or server.get("scraped") is False:
            note = (server or {}).get("note") if isinstance(server, dict) else None
            return None, "the server's metrics were not scraped" + (f": {note}" if note else "")
        v = _num(server.get(s))
        return (float(v), None) if v is not None else (None, f"run.json has no server.{s}")
    return None, f"unknown metric {th.metric}"


def _show(x: float, unit: str, th: Threshold) -> str:
    if unit == "ms":
        from workbooks.loadtest.units import fmt_ms

        return fmt_ms(x)
    if unit == "" and th.stat in ("rate", "achieved"):
        return f"{x * 100:.4g}%"
    if unit == "/s":
        return f"{x:.6g}/s"
    return f"{x:.6g}"


def evaluate(ths, summary: dict) -> list[dict]:
    """Each threshold (a Threshold or an expression) measured: {"expr","metric","op","limit","value",
    "unit","ok"} plus "why" when the value is missing and "display" (for people)."""
    out = []
    for th in ths:
        if isinstance(th, str):
            th = parse(th)
        value, why = measure(th, summary if isinstance(summary, dict) else {})
        row = {"expr": th.expr, "metric": th.metric, "op": th.op, "limit": th.limit, "value": value,
               "unit": th.unit, "ok": False}
        if value is None:
            row["why"] = why
            row["display"] = f"{th.metric}: no value ({why})"
        else:
            row["ok"] = bool(OPS[th.op](value, th.limit))
            row["display"] = f"{th.metric} = {_show(value, th.unit, th)} (limit {th.op} {_show(th.limit, th.unit, th)})"
        out.append(row)
    return out


def all_held(results: list[dict]) -> bool:
    return all(r.get("ok") for r in results)
