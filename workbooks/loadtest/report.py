"""report.html (and report.png) for a `wbx loadtest` run directory.

One self-contained HTML file: the verdict first (thresholds, the generator's own verdict, the
closed-model and abort banners), then inline SVG charts drawn here (latency percentiles over time
with the stage boundaries, target vs achieved rate with errors and dropped, the server's queue and
busy workers, the percentile spectrum of `latency` against `service`, the generator's CPU and lag),
then tables per op and size class, the plan and the environment. Nothing is fetched: no script, no
font, no image by URL, and a Content-Security-Policy that forbids it anyway. Every string taken from
run.json (run names, paths, error kinds are user input) is HTML-escaped.

The page depends on run.json alone (plus latency.hlog when run.json has no spectrum), never on the
directory's location or the clock, so `wbx loadtest report RUN_DIR` rebuilds the same bytes from a
copied directory. report.png is a screenshot by headless Chromium when it is installed.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
import re
import shutil
import signal
import string
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from workbooks.errors import NotFound, UsageError

#: The most points a series is drawn with; longer runs are bucketed (latency: the worst second of a
#: bucket, so a stall never disappears; rates: the bucket's mean).
MAX_POINTS = 720
#: The most rows a table taken from run.json shows (status codes, error kinds, plan entries).
MAX_ROWS = 60
#: The longest string cell shown; longer values are cut (a hostile run.json stays a small report).
MAX_TEXT = 600
CHROMIUM_TIMEOUT_S = 60.0

W, H = 960, 280
ML, MR, MT, MB = 64, 18, 30, 34  # margins: room for the y labels, the legend, the x labels

LAT_KEYS = ("p50", "p90", "p99", "p99.9", "max")
LAT_COLORS = {"p50": "#2b6cb0", "p90": "#2f855a", "p99": "#dd6b20", "p99.9": "#c53030", "max": "#6b46c1"}
SUMMARY_KEYS = ("p50", "p90", "p99", "p99.9", "p99.99", "max", "mean")


# ---------------------------------------------------------------------------------------------
# reading run.json defensively: any field may be missing, null, or of the wrong type


def _num(v) -> float | None:
    """A finite number, or None (bools, strings, NaN and infinities are not numbers here)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _d(v) -> dict:
    return v if isinstance(v, dict) else {}


def _l(v) -> list:
    return v if isinstance(v, list) else []


def _e(v) -> str:
    """Escaped text for element content and attribute values, cut to MAX_TEXT characters."""
    s = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else str(v)
    if len(s) > MAX_TEXT:
        s = s[:MAX_TEXT] + f"… ({len(s) - MAX_TEXT} more characters)"
    return html.escape(s, quote=True)


def load_run(run_dir: str | os.PathLike) -> dict:
    """run.json of a run directory, or a clear error (4 not found, 2 not a run)."""
    f = Path(run_dir) / "run.json"
    try:
        text = f.read_text("utf-8")
    except FileNotFoundError:
        raise NotFound(f"no run.json in {run_dir}", hint="pass a run directory written by `wbx loadtest run`") from None
    except (IsADirectoryError, UnicodeDecodeError, OSError) as e:
        raise UsageError(f"cannot read {f}: {e}", hint="pass a run directory written by `wbx loadtest run`") from None
    try:
        run = json.loads(text)
    except ValueError as e:
        raise UsageError(f"{f} is not JSON: {e}", hint="pass a run directory written by `wbx loadtest run`") from None
    if not isinstance(run, dict):
        raise UsageError(f"{f} is not a run.json (not a JSON object)",
                         hint="pass a run directory written by `wbx loadtest run`")
    return run


# ---------------------------------------------------------------------------------------------
# number formatting


def fmt_ms(v) -> str:
    x = _num(v)
    if x is None:
        return "—"
    if x >= 1000:
        return f"{x / 1000:.2f} s" if x < 10_000 else f"{x / 1000:,.1f} s"
    if x >= 100:
        return f"{x:.0f} ms"
    if x >= 10:
        return f"{x:.1f} ms"
    if x >= 1:
        return f"{x:.2f} ms"
    return f"{x:.3f} ms"


def _fmt_num(v) -> str:
    x = _num(v)
    if x is None:
        return "—"
    if x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:,.3f}".rstrip("0").rstrip(".") if abs(x) < 1000 else f"{x:,.1f}"


def _fmt_rate(v) -> str:
    x = _num(v)
    return "—" if x is None else f"{x:,.1f}/s"


def _fmt_pct(v) -> str:
    x = _num(v)
    if x is None:
        return "—"
    p = x * 100
    return f"{p:.3g} %" if p < 10 else f"{p:.1f} %"


def _fmt_s(v) -> str:
    x = _num(v)
    if x is None:
        return "—"
    if x < 60:
        return f"{x:g} s"
    m, s = divmod(round(x), 60)
    if m < 60:
        return f"{m}m{s:02d}s" if s else f"{m}m"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _fmt_bytes(v) -> str:
    x = _num(v)
    if x is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if x < 1024 or unit == "GiB":
            return f"{x:,.0f} {unit}" if unit == "B" else f"{x:,.1f} {unit}"
        x /= 1024
    return "—"


def _cell(v) -> str:
    """A table cell for an arbitrary run.json value."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if _num(v) is not None:
        return _fmt_num(v)
    return _e(v)


# ---------------------------------------------------------------------------------------------
# SVG drawing


class _Scale:
    """Maps data values to pixels, linear or log10."""

    def __init__(self, lo: float, hi: float, p0: float, p1: float, log: bool = False):
        self.log = log
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        if hi <= lo:
            hi = lo + 1
        self.lo, self.hi, self.p0, self.p1 = lo, hi, p0, p1

    def __call__(self, v: float) -> float:
        if self.log:
            v = math.log10(v)
        return self.p0 + (v - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0)


def _nice_step(span: float, n: int = 5) -> float:
    raw = span / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _lin_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    step = _nice_step(hi - lo, n)
    first = math.ceil(lo / step) * step
    out, v = [], first
    while v <= hi + step * 1e-9 and len(out) < 50:
        out.append(round(v, 10))
        v += step
    return out


def _log_bounds(values: list[float]) -> tuple[float, float]:
    pos = [v for v in values if v > 0]
    if not pos:
        return 0.1, 10.0
    lo = 10 ** math.floor(math.log10(min(pos)))
    hi = 10 ** math.ceil(math.log10(max(pos)))
    if hi <= lo:
        hi = lo * 10
    return max(lo, 1e-3), max(hi, lo * 10)


def _path(points: list[tuple[float, float | None]], sx: _Scale, sy: _Scale, clamp_lo: float | None = None) -> str:
    """An SVG path through the points; a None value breaks the line (no data that second)."""
    out, pen = [], False
    for x, y in points:
        if y is None:
            pen = False
            continue
        if clamp_lo is not None and y < clamp_lo:
            y = clamp_lo
        out.append(f"{'L' if pen else 'M'}{sx(x):.1f},{sy(y):.1f}")
        pen = True
    return "".join(out)


def _legend(items: list[tuple[str, str, str]], x0: float = ML) -> str:
    """Legend entries (label, color, dash) across the top of a chart."""
    out, x = [], x0
    for label, color, dash in items:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<line x1="{x:.0f}" y1="14" x2="{x + 18:.0f}" y2="14" stroke="{color}" stroke-width="3"{d}/>'
                   f'<text x="{x + 22:.0f}" y="18">{_e(label)}</text>')
        x += 30 + 7 * len(label)
    return "".join(out)


def _time_axis(sx: _Scale, t1: float, h: int) -> str:
    out = []
    for t in _lin_ticks(0, t1, 8):
        x = sx(t)
        out.append(f'<line class="grid" x1="{x:.1f}" y1="{MT}" x2="{x:.1f}" y2="{h - MB}"/>'
                   f'<text x="{x:.1f}" y="{h - MB + 15}" text-anchor="middle">{_e(_fmt_s(t))}</text>')
    return "".join(out)


def _y_axis(sy: _Scale, ticks: list[float], fmt, w: int) -> str:
    out = []
    for v in ticks:
        y = sy(v)
        out.append(f'<line class="grid" x1="{ML}" y1="{y:.1f}" x2="{w - MR}" y2="{y:.1f}"/>'
                   f'<text x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(fmt(v))}</text>')
    return "".join(out)


def _svg(kind: str, label: str, body: str, w: int = W, h: int = H) -> str:
    return (f'<svg class="chart" data-chart="{kind}" role="img" aria-label="{_e(label)}" '
            f'viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">{body}'
            f'<line class="axis" x1="{ML}" y1="{h - MB}" x2="{w - MR}" y2="{h - MB}"/>'
            f'<line class="axis" x1="{ML}" y1="{MT}" x2="{ML}" y2="{h - MB}"/></svg>')


def _series_path(name: str, color: str, d: str, dash: str = "", extra: str = "") -> str:
    da = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<path class="s" data-series="{_e(name)}" stroke="{color}"{da}{extra} d="{d}"/>'


def _stage_lines(sx: _Scale, stages: list[dict], h: int, t1: float) -> str:
    """Dashed verticals at the stage boundaries, each stage labelled with its rate."""
    out = []
    for st in stages[:500]:
        st = _d(st)
        at, dur = _num(st.get("at_s")), _num(st.get("duration"))
        if at is None:
            continue
        if 0 < at < t1:
            x = sx(at)
            out.append(f'<line class="stage" data-stage-at="{at:g}" x1="{x:.1f}" y1="{MT}" x2="{x:.1f}" y2="{h - MB}"/>')
        a, b = _num(st.get("start")), _num(st.get("end"))
        if dur and a is not None and b is not None and sx(min(at + dur, t1)) - sx(at) > 70:
            txt = f"{a:g}/s" if a == b else f"{a:g}→{b:g}/s"
            out.append(f'<text x="{sx(at) + 4:.1f}" y="{MT + 12}" fill="#7d8a96">{_e(txt)}</text>')
    return "".join(out)


def _abort_line(sx: _Scale, aborted: dict, h: int, t1: float) -> str:
    at = _num(aborted.get("at_s"))
    if at is None or not 0 <= at <= t1:
        return ""
    x = sx(at)
    return (f'<line class="abort" data-abort-at="{at:g}" x1="{x:.1f}" y1="{MT}" x2="{x:.1f}" y2="{H - MB}"/>'
            f'<text x="{x - 4:.1f}" y="{MT + 24}" text-anchor="end" fill="#b3261e">aborted</text>')


# ---------------------------------------------------------------------------------------------
# series: sanitising and bucketing


def _series(run: dict) -> tuple[list[dict], int]:
    """The per-second items sorted by t, bucketed to at most MAX_POINTS points (bucket width in s)."""
    items = [it for it in _l(run.get("series")) if isinstance(it, dict) and (_num(it.get("t")) or 0) >= 0
             and _num(it.get("t")) is not None]
    items.sort(key=lambda it: _num(it.get("t")))
    if len(items) <= MAX_POINTS:
        return items, 1
    width = math.ceil(len(items) / MAX_POINTS)
    return [_merge_bucket(items[i:i + width]) for i in range(0, len(items), width)], width


def _merge_bucket(chunk: list[dict]) -> dict:
    """One point for several seconds: latency and server levels at their worst, rates as the mean."""
    def worst(get):
        vals = [v for v in (get(it) for it in chunk) if v is not None]
        return max(vals) if vals else None

    def mean(get):
        vals = [v for v in (get(it) for it in chunk) if v is not None]
        return sum(vals) / len(vals) if vals else None

    out: dict = {"t": _num(chunk[0].get("t"))}
    for k in ("target_rate", "intended", "sent", "ok", "errors", "dropped"):
        out[k] = mean(lambda it, k=k: _num(it.get(k)))
    for m in ("latency", "service"):
        out[m] = {p: worst(lambda it, m=m, p=p: _num(_d(it.get(m)).get(p))) for p in LAT_KEYS}
    out["lag_p99_ms"] = worst(lambda it: _num(it.get("lag_p99_ms")))
    members = sorted({str(k) for it in chunk for k in _d(it.get("gen_cpu"))})
    out["gen_cpu"] = {mb: worst(lambda it, mb=mb: _num(_d(it.get("gen_cpu")).get(mb))) for mb in members}
    srv = {}
    for k in ("busy_workers", "workers", "queue_depth"):
        srv[k] = worst(lambda it, k=k: _num(_d(it.get("server")).get(k)))
    srv["renders_s"] = mean(lambda it: _num(_d(it.get("server")).get("renders_s")))
    out["server"] = srv
    return out


def _t_end(run: dict, series: list[dict], width: int) -> float:
    ends = [_num(run.get("duration_s")) or 0.0]
    if series:
        ends.append(_num(series[-1].get("t")) + width)
    for st in _l(run.get("stages")):
        if isinstance(st, dict) and _num(st.get("at_s")) is not None:
            ends.append(_num(st.get("at_s")) + (_num(st.get("duration")) or 0))
    return max(max(ends), 1.0)


def _latency_limits(run: dict, metric: str) -> list[tuple[str, float]]:
    """Threshold lines to draw on a latency chart: (expr, limit in ms) of the metric's thresholds."""
    out = []
    for th in _l(run.get("thresholds")):
        th = _d(th)
        m, lim = th.get("metric"), _num(th.get("limit"))
        if isinstance(m, str) and m.split("{")[0].split(".")[0] == metric and lim is not None and lim > 0 \
                and th.get("unit") in (None, "ms"):
            out.append((str(th.get("expr", m)), lim))
    return out[:6]


# ---------------------------------------------------------------------------------------------
# the charts


def chart_latency(run: dict, series: list[dict], width: int, t1: float) -> str:
    sx = _Scale(0, t1, ML, W - MR)
    pts = {p: [(_num(it["t"]) + width / 2, _num(_d(it.get("latency")).get(p))) for it in series] for p in LAT_KEYS}
    limits = _latency_limits(run, "latency")
    vals = [y for p in pts.values() for _, y in p if y is not None] + [lim for _, lim in limits]
    lo, hi = _log_bounds(vals)
    sy = _Scale(lo, hi, H - MB, MT, log=True)
    ticks = [10 ** k for k in range(round(math.log10(lo)), round(math.log10(hi)) + 1)]
    body = [_y_axis(sy, ticks, fmt_ms, W), _time_axis(sx, t1, H), _stage_lines(sx, _l(run.get("stages")), H, t1)]
    for expr, lim in limits:
        y = sy(lim)
        body.append(f'<line class="limit" x1="{ML}" y1="{y:.1f}" x2="{W - MR}" y2="{y:.1f}"/>'
                    f'<text x="{W - MR - 4}" y="{y - 4:.1f}" text-anchor="end" fill="#b3261e">{_e(expr)}</text>')
    for p in LAT_KEYS:
        body.append(_series_path(p, LAT_COLORS[p], _path(pts[p], sx, sy, clamp_lo=lo)))
    body.append(_abort_line(sx, _d(run.get("aborted")), H, t1))
    body.append(_legend([(p, LAT_COLORS[p], "") for p in LAT_KEYS] + [("stage boundary", "#7d8a96", "4 3")]))
    return _svg("latency", "latency percentiles over time (log scale)", "".join(body))


def chart_rate(run: dict, series: list[dict], width: int, t1: float) -> str:
    sx = _Scale(0, t1, ML, W - MR)
    xs = [_num(it["t"]) for it in series]

    def col(k, sub=None):
        return [(_num(_d(it.get(sub)).get(k)) if sub else _num(it.get(k))) for it in series]

    target, sent = col("target_rate"), col("sent")
    ok, err, drop = col("ok"), col("errors"), col("dropped")
    renders = col("renders_s", "server")
    has_renders = any(v is not None for v in renders)
    stack1 = [(o or 0) + (e or 0) for o, e in zip(ok, err)]
    stack2 = [s + (d or 0) for s, d in zip(stack1, drop)]
    vals = [v for v in target + sent + stack2 + (renders if has_renders else []) if v is not None]
    hi = max(vals) * 1.08 if vals and max(vals) > 0 else 1.0
    sy = _Scale(0, hi, H - MB, MT)
    ticks = _lin_ticks(0, hi, 5)

    def band(name, color, lower, upper):
        """A filled area between two step lines (one step per bucket of `width` seconds)."""
        if not xs:
            return ""
        top = "".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(u):.1f}L{sx(x + width):.1f},{sy(u):.1f}"
                      for i, (x, u) in enumerate(zip(xs, upper)))
        bottom = "".join(f"L{sx(x + width):.1f},{sy(lo):.1f}L{sx(x):.1f},{sy(lo):.1f}"
                         for x, lo in reversed(list(zip(xs, lower))))
        return f'<path data-series="{name}" fill="{color}" fill-opacity="0.55" stroke="none" d="{top}{bottom}Z"/>'

    zeros = [0.0] * len(xs)
    body = [_y_axis(sy, ticks, lambda v: f"{v:g}/s", W), _time_axis(sx, t1, H),
            _stage_lines(sx, _l(run.get("stages")), H, t1),
            band("ok", "#68b37f", zeros, [o or 0 for o in ok]),
            band("errors", "#e05a4f", [o or 0 for o in ok], stack1),
            band("dropped", "#f0a830", stack1, stack2)]
    mid = [x + width / 2 for x in xs]
    body.append(_series_path("target", "#1d2329", _path(list(zip(mid, target)), sx, sy), dash="6 4"))
    body.append(_series_path("achieved", "#2b6cb0", _path(list(zip(mid, sent)), sx, sy)))
    legend = [("target", "#1d2329", "6 4"), ("achieved (sent)", "#2b6cb0", ""), ("ok", "#68b37f", ""),
              ("errors", "#e05a4f", ""), ("dropped", "#f0a830", "")]
    if has_renders:
        body.append(_series_path("server renders/s", "#805ad5", _path(list(zip(mid, renders)), sx, sy), dash="2 2"))
        legend.append(("server renders/s", "#805ad5", "2 2"))
    body.append(_abort_line(sx, _d(run.get("aborted")), H, t1))
    body.append(_legend(legend))
    return _svg("rate", "target vs achieved rate, errors and dropped per second", "".join(body))


def _has_server_series(series: list[dict]) -> bool:
    return any(_num(_d(it.get("server")).get(k)) is not None
               for it in series for k in ("busy_workers", "queue_depth", "workers"))


def chart_server(run: dict, series: list[dict], width: int, t1: float) -> str:
    sx = _Scale(0, t1, ML, W - MR)
    mid = [_num(it["t"]) + width / 2 for it in series]
    cols = {k: [_num(_d(it.get("server")).get(k)) for it in series] for k in ("busy_workers", "workers", "queue_depth")}
    vals = [v for c in cols.values() for v in c if v is not None]
    hi = max(vals) * 1.1 if vals and max(vals) > 0 else 1.0
    sy = _Scale(0, hi, H - MB, MT)
    body = [_y_axis(sy, _lin_ticks(0, hi, 5), lambda v: f"{v:g}", W), _time_axis(sx, t1, H),
            _stage_lines(sx, _l(run.get("stages")), H, t1)]
    styles = {"workers": ("#98a4ae", "5 3"), "busy_workers": ("#2b6cb0", ""), "queue_depth": ("#c53030", "")}
    for k, (color, dash) in styles.items():
        body.append(_series_path(k, color, _path(list(zip(mid, cols[k])), sx, sy), dash=dash))
    body.append(_abort_line(sx, _d(run.get("aborted")), H, t1))
    body.append(_legend([("workers", "#98a4ae", "5 3"), ("busy workers", "#2b6cb0", ""), ("queue depth", "#c53030", "")]))
    return _svg("server", "server busy workers and queue depth", "".join(body))


def _spectrum_points(raw) -> list[tuple[float, float]]:
    """[(percentile %, ms)] sorted, cleaned; percentiles given as fractions (<= 1) are scaled."""
    pts = []
    for row in _l(raw):
        if isinstance(row, (list, tuple)) and len(row) >= 2:
            p, v = _num(row[0]), _num(row[1])
            if p is not None and v is not None and 0 <= p <= 100 and v >= 0:
                pts.append((p, v))
    if pts and max(p for p, _ in pts) <= 1.0 and len(pts) > 2:
        pts = [(p * 100, v) for p, v in pts]
    pts.sort()
    return pts


def chart_spectrum(run: dict, spectrum: dict) -> str:
    """HdrHistogram's percentile plot: x = 1/(1-p) on a log axis ("1 in N"), latency vs service."""
    series = {}
    n_max = 10.0
    for m in ("latency", "service"):
        count = _num(_d(run.get(m)).get("count")) or 0
        pts = []
        for p, v in _spectrum_points(spectrum.get(m)):
            if p >= 100:
                if count < 2:
                    continue
                n = max(count, 10.0)  # the maximum: the worst one of all `count` samples
            else:
                n = 1 / (1 - p / 100)
            pts.append((n, v))
        series[m] = pts
        if pts:
            n_max = max(n_max, max(n for n, _ in pts))
    n_max = 10 ** math.ceil(math.log10(n_max) - 1e-9)
    sx = _Scale(1, n_max, ML, W - MR, log=True)
    limits = _latency_limits(run, "latency")
    vals = [v for pts in series.values() for _, v in pts] + [lim for _, lim in limits]
    lo, hi = _log_bounds(vals)
    sy = _Scale(lo, hi, H - MB, MT, log=True)
    body = [_y_axis(sy, [10 ** k for k in range(round(math.log10(lo)), round(math.log10(hi)) + 1)], fmt_ms, W)]
    k = 0
    while 10 ** k <= n_max:
        n = 10 ** k
        x = sx(n)
        pct = "p0" if k == 0 else f"p{100 - 100 / n:.{max(k - 2, 0)}f}"
        anchor = "start" if k == 0 else "end" if 10 ** (k + 1) > n_max else "middle"
        body.append(f'<line class="grid" x1="{x:.1f}" y1="{MT}" x2="{x:.1f}" y2="{H - MB}"/>'
                    f'<text x="{x:.1f}" y="{H - MB + 13}" text-anchor="{anchor}">{_e(pct)}</text>'
                    f'<text x="{x:.1f}" y="{H - MB + 25}" text-anchor="{anchor}" fill="#7d8a96">1 in {n:,}</text>')
        k += 1
    for expr, lim in limits:
        y = sy(lim)
        body.append(f'<line class="limit" x1="{ML}" y1="{y:.1f}" x2="{W - MR}" y2="{y:.1f}"/>'
                    f'<text x="{ML + 4}" y="{y - 4:.1f}" fill="#b3261e">{_e(expr)}</text>')
    colors = {"latency": "#c53030", "service": "#2b6cb0"}
    # service under latency, wider and paler: where they coincide (no queueing) both stay visible
    body.append(_series_path("service", colors["service"], _path(series.get("service", []), sx, sy, clamp_lo=lo),
                             extra=' style="stroke-width:4;stroke-opacity:.5"'))
    body.append(_series_path("latency", colors["latency"], _path(series.get("latency", []), sx, sy, clamp_lo=lo)))
    body.append(_legend([("latency (from intended start)", colors["latency"], ""),
                         ("service (from send)", colors["service"], "")]))
    return _svg("spectrum", "percentile spectrum, latency and service", "".join(body), h=H + 10)


def chart_generator(run: dict, series: list[dict], width: int, t1: float) -> str:
    """The generator's own health: CPU per member and scheduler lag p99, with the Judge's limits."""
    h = 220
    sx = _Scale(0, t1, ML, W - MR)
    mid = [_num(it["t"]) + width / 2 for it in series]
    members = sorted({str(k) for it in series for k in _d(it.get("gen_cpu"))})[:16]
    lag = [_num(it.get("lag_p99_ms")) for it in series]
    cpu_max = max([v for it in series for v in (_num(x) for x in _d(it.get("gen_cpu")).values()) if v is not None],
                  default=0)
    lag_max = max([v for v in lag if v is not None], default=0)
    # CPU as % of a core on the left axis; lag in ms drawn on the same 0..100 grid, scaled to fit.
    cpu_hi = max(100.0, cpu_max * 110)
    sy = _Scale(0, cpu_hi, h - MB, MT)
    lag_hi = max(10.0, lag_max * 1.1)
    sy_lag = _Scale(0, lag_hi, h - MB, MT)
    body = [_y_axis(sy, _lin_ticks(0, cpu_hi, 4), lambda v: f"{v:g} %", W), _time_axis(sx, t1, h)]
    for v in _lin_ticks(0, lag_hi, 4):
        body.append(f'<text x="{W - MR - 2}" y="{sy_lag(v) - 3:.1f}" text-anchor="end" fill="#dd6b20">{_e(fmt_ms(v))}</text>')
    y85 = sy(85)
    body.append(f'<line class="limit" x1="{ML}" y1="{y85:.1f}" x2="{W - MR}" y2="{y85:.1f}"/>')
    y5 = sy_lag(5)
    body.append(f'<line class="limit" stroke-dasharray="2 3" x1="{ML}" y1="{y5:.1f}" x2="{W - MR}" y2="{y5:.1f}"'
                f' style="stroke:#dd6b20"/>')
    palette = ["#2b6cb0", "#2f855a", "#6b46c1", "#319795", "#b7791f", "#4a5568"]
    legend = []
    for i, mb in enumerate(members):
        color = palette[i % len(palette)]
        pts = [(x, (_num(_d(it.get("gen_cpu")).get(mb)) * 100) if _num(_d(it.get("gen_cpu")).get(mb)) is not None else None)
               for x, it in zip(mid, series)]
        body.append(_series_path(f"cpu:{mb}", color, _path(pts, sx, sy)))
        legend.append((f"cpu {mb}", color, ""))
    body.append(_series_path("lag_p99", "#dd6b20", _path(list(zip(mid, lag)), sx, sy_lag)))
    legend.append(("lag p99 (right scale)", "#dd6b20", ""))
    body.append(_legend(legend[-8:]))
    return _svg("generator", "generator CPU per process and scheduling lag p99", "".join(body), h=h)


# ---------------------------------------------------------------------------------------------
# the page


def _spectrum(run: dict, run_dir: Path) -> dict:
    """run.json's spectrum, else one computed from latency.hlog (when A's reader can read it)."""
    sp = _d(run.get("spectrum"))
    if any(_spectrum_points(sp.get(m)) for m in ("latency", "service")):
        return sp
    hlog = run_dir / "latency.hlog"
    if not hlog.is_file():
        return {}
    try:
        from workbooks.loadtest import hist

        totals: dict = {}
        for tag, _s, _e2, h in hist.read_hlog(hlog):
            metric = str(tag or "").split("|")[0]
            if metric in ("latency", "service"):
                if metric in totals:
                    totals[metric].add(h)
                else:
                    totals[metric] = h
        return {m: spectrum_of(h) for m, h in totals.items()}
    except Exception:  # noqa: BLE001 - the page is still useful without the spectrum
        return {}


def spectrum_of(h) -> list[list[float]]:
    """[[percentile %, ms], …] of an HdrHistogram (µs values), HdrHistogram's own iteration."""
    out = []
    if h.get_total_count() == 0:
        return out
    for it in h.get_percentile_iterator(5):
        out.append([round(it.percentile_level_iterated_to, 6), round(it.value_iterated_to / 1000, 3)])
    return out


def _table(headers: list[str], rows: list[list[str]], left: int = 1, cls: str = "") -> str:
    """A table of already-escaped cells; the first `left` columns align left."""
    th = "".join(f'<th class="l">{h}</th>' if i < left else f"<th>{h}</th>" for i, h in enumerate(headers))
    body = []
    for r in rows:
        body.append("<tr>" + "".join(c if c.startswith("<td") else (f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>")
                                     for i, c in enumerate(r)) + "</tr>")
    c = f' class="{cls}"' if cls else ""
    return f"<table{c}><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _capped(items: list, n: int = MAX_ROWS) -> tuple[list, str]:
    if len(items) <= n:
        return items, ""
    return items[:n], f'<p class="more">… {len(items) - n} more not shown (see run.json)</p>'


def _verdict(run: dict) -> str:
    ex = _d(run.get("exit"))
    code = _num(ex.get("code"))
    reason = ex.get("reason")
    ths = [_d(t) for t in _l(run.get("thresholds"))]
    failed = [t for t in ths if not t.get("ok")]
    if code is None:
        code = 5 if failed else (1 if run.get("generator_bound") is True else 0)
    if code == 0:
        text = "PASS — every threshold held" if ths else "DONE — no thresholds set"
        cls = "pass" if ths else "none"
    else:
        why = reason if isinstance(reason, str) and reason else ("threshold_failed" if failed else "failed")
        text = f"FAIL — {why} (exit {int(code)})"
        cls = "fail"
    return f'<div class="verdict {cls}" data-exit="{int(code)}">{_e(text)}</div>'


def _banners(run: dict) -> str:
    out = []
    gen = _d(run.get("generator"))
    v = _d(gen.get("verdict"))
    if run.get("generator_bound") is True or v.get("generator_bound") is True:
        bits = [b for b in (
            v.get("reason") and f"reason: {v.get('reason')}",
            _num(v.get("since")) is not None and f"since {_fmt_s(v.get('since'))}",
            v.get("member") is not None and f"process {v.get('member')}",
            _num(v.get("worst_lag_p99_ms")) is not None and f"worst lag p99 {fmt_ms(v.get('worst_lag_p99_ms'))}",
            _num(v.get("worst_cpu")) is not None and f"worst CPU {_fmt_pct(v.get('worst_cpu'))} of a core") if b]
        out.append('<div class="banner red" data-banner="generator-bound"><b>Generator-bound: the numbers are the '
                   "generator's, not the server's.</b>" + _e("; ".join(bits)) +
                   (". " if bits else "") + "Add generator processes (--procs N) or remote generators and run again.</div>")
    if run.get("model") == "closed" or run.get("omits_queueing") is True:
        out.append('<div class="banner amber" data-banner="closed-model"><b>Closed model: this run omits queueing.</b>'
                   "Each connection waited for its previous answer before sending, so time a request would have "
                   "waited for a slow server is not in these latencies (coordinated omission). Use the open model "
                   "(the default) for latencies users see.</div>")
    ab = run.get("aborted")
    if isinstance(ab, dict):
        out.append(f'<div class="banner red" data-banner="aborted"><b>Aborted at {_e(_fmt_s(ab.get("at_s")))}'
                   f"{' of ' + _e(_fmt_s(run.get('duration_s'))) if _num(run.get('duration_s')) else ''}.</b>"
                   f"Threshold broken: <code>{_e(ab.get('expr', '?'))}</code>. The figures cover the run up to the "
                   "abort" + (f" (load stopped at {_e(_fmt_s(ab.get('stopped_s')))})"
                              if _num(ab.get("stopped_s")) is not None else "") + ".</div>")
    notes = [n for n in _l(run.get("notes")) if n][:MAX_ROWS]
    if notes:
        out.append('<div class="banner grey" data-banner="notes"><b>Notes from the run</b>'
                   + "<br>".join(_e(n) for n in notes) + "</div>")
    srv = _d(run.get("server"))
    if srv and srv.get("scraped") is False:
        note = srv.get("note")
        out.append('<div class="banner grey" data-banner="not-scraped"><b>Server figures not scraped.</b>'
                   + (_e(note) if note else "The run did not read the service's /metrics.") + "</div>")
    return "".join(out)


def _figures(run: dict) -> str:
    lat, svc = _d(run.get("latency")), _d(run.get("service"))
    rate, req = _d(run.get("rate")), _d(run.get("requests"))
    err, drop = _d(run.get("errors")), _d(run.get("dropped"))
    items = [("latency p50", fmt_ms(lat.get("p50"))), ("latency p99", fmt_ms(lat.get("p99"))),
             ("latency p99.9", fmt_ms(lat.get("p99.9"))), ("latency max", fmt_ms(lat.get("max"))),
             ("service p99", fmt_ms(svc.get("p99"))),
             ("achieved rate", _fmt_rate(rate.get("achieved"))),
             ("target rate", _fmt_rate(rate.get("target"))),
             ("of target", _fmt_pct(rate.get("achieved_ratio"))),
             ("requests ok", _fmt_num(req.get("ok"))),
             ("errors", f"{_fmt_num(err.get('count'))} ({_fmt_pct(err.get('rate'))})"),
             ("dropped", f"{_fmt_num(drop.get('count'))} ({_fmt_pct(drop.get('rate'))})"),
             ("duration", _fmt_s(run.get("duration_s")))]
    return '<div class="figures">' + "".join(
        f'<div class="fig"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div></div>' for k, v in items) + "</div>"


def _th_fmt(v, t: dict) -> str:
    """A threshold's value or limit in its unit: ms, req/s, a percentage for fractions, a count."""
    unit = t.get("unit") if isinstance(t.get("unit"), str) else ""
    metric = t.get("metric") if isinstance(t.get("metric"), str) else ""
    if _num(v) is None:
        return "—"
    if unit == "ms":
        return fmt_ms(v)
    if unit == "/s":
        return _fmt_rate(v)
    if not unit and (metric.endswith(".rate") or metric == "rate.achieved"):
        return f"{_num(v) * 100:.4g} %"
    return f"{_fmt_num(v)} {unit}".strip()


def _thresholds(run: dict) -> str:
    ths = [_d(t) for t in _l(run.get("thresholds"))]
    if not ths:
        return "<p>No thresholds were set (add <code>--threshold 'latency.p99&lt;50ms'</code>).</p>"
    rows = []
    shown, more = _capped(ths)
    for t in shown:
        op = t.get("op") if isinstance(t.get("op"), str) else ""
        lim = _th_fmt(t.get("limit"), t)
        ok = t.get("ok") is True
        res = f'<td class="{"pass" if ok else "fail"}">{"pass" if ok else "FAIL"}</td>'
        why = _e(t.get("why")) if t.get("why") else ""
        rows.append([f"<code>{_e(t.get('expr', ''))}</code>", _e(_th_fmt(t.get("value"), t)),
                     _e(f"{op} {lim}".strip() if lim != "—" else lim), res, f'<td class="wrap">{why}</td>'])
    return _table(["threshold", "measured", "limit", "result", "note"], rows) + more


def _find_max(run: dict) -> str:
    """The --find-max search: the answer, then every step it ran."""
    fm = run.get("find_max")
    if not isinstance(fm, dict):
        return ""
    best, broke = _num(fm.get("max_rate")), _num(fm.get("first_failing_rate"))
    if best is None:
        head = "No rate held: the first step already broke a threshold."
    else:
        head = f"Highest rate with every threshold held: {_fmt_rate(best)}"
        if fm.get("lower_bound_only") is True:
            head += f" — a lower bound: the generator was the bottleneck at {_fmt_rate(fm.get('generator_bound_at'))}"
        elif broke is not None:
            head += f" (broke at {_fmt_rate(broke)})"
    rows = []
    shown, more = _capped(_l(fm.get("steps")))
    for st in shown:
        st = _d(st)
        outcome = st.get("outcome")
        cls = "pass" if outcome == "held" else "fail"
        rows.append([_cell(st.get("step")), _e(_fmt_rate(st.get("rate"))), f'<td class="{cls}">{_e(outcome or "—")}</td>',
                     _e(_fmt_rate(st.get("achieved"))), _e(fmt_ms(st.get("latency_p99_ms"))),
                     f'<td class="wrap">{_e(", ".join(str(x) for x in _l(st.get("failed"))))}</td>',
                     _e(os.path.basename(str(st.get("dir") or "")))])
    table = _table(["step", "rate", "outcome", "achieved", "latency p99", "broken thresholds", "step directory"],
                   rows) + more if rows else ""
    return f'<h2>Find max</h2><p data-find-max="{_e(best if best is not None else "")}"><b>{_e(head)}</b>. ' \
           f"This page shows the best step's run.</p>{table}"


def _lat_row(name: str, h: dict) -> list[str]:
    h = _d(h)
    return [_e(name)] + [_e(fmt_ms(h.get(k))) for k in SUMMARY_KEYS] + [_fmt_num(h.get("count"))]


def _latency_table(run: dict) -> str:
    rows = [_lat_row(m, run.get(m)) for m in ("latency", "service", "ttfb", "conn_wait", "lag") if _d(run.get(m))]
    return _table(["metric", *SUMMARY_KEYS, "count"], rows) if rows else "<p>No latency recorded.</p>"


def _by_op(run: dict) -> str:
    ops = _d(run.get("by_op"))
    if not ops:
        return "<p>No per-op figures.</p>"
    rows = []
    shown, more = _capped(sorted(ops.items(), key=lambda kv: str(kv[0])))
    for op, v in shown:
        v = _d(v)
        lat = _d(v.get("latency"))
        okn, errn = _num(v.get("ok")) or 0, _num(v.get("errors")) or 0
        er = errn / (okn + errn) if okn + errn else None
        rows.append([_e(op), _fmt_num(v.get("ok")), _fmt_num(v.get("errors")), _e(_fmt_pct(er)), _fmt_num(v.get("dropped"))]
                    + [_e(fmt_ms(lat.get(k))) for k in LAT_KEYS])
    return _table(["op", "ok", "errors", "error rate", "dropped", *LAT_KEYS], rows) + more


SIZE_ORDER = {"S": 0, "M": 1, "L": 2, "XL": 3}


def _by_size(run: dict) -> str:
    sizes = _d(run.get("by_size"))
    if not sizes:
        return "<p>No per-size figures.</p>"
    rows = []
    shown, more = _capped(sorted(sizes.items(), key=lambda kv: (SIZE_ORDER.get(kv[0], 9), str(kv[0]))))
    for cls, v in shown:
        v = _d(v)
        lat = _d(v.get("latency"))
        rows.append([_e(cls), _fmt_num(v.get("count"))] + [_e(fmt_ms(lat.get(k))) for k in LAT_KEYS])
    return _table(["size class", "count", *LAT_KEYS], rows) + more


def _requests(run: dict) -> str:
    req = _d(run.get("requests"))
    head = _table(["intended", "sent", "ok", "errors", "dropped", "bytes"],
                  [[_fmt_num(req.get("intended")), _fmt_num(req.get("sent")), _fmt_num(req.get("ok")),
                    _fmt_num(req.get("errors")), _fmt_num(req.get("dropped")), _e(_fmt_bytes(req.get("bytes")))]], left=0)
    parts = [head, '<div class="cols">']
    for title, key in (("HTTP status", "by_status"), ("error kind", "by_error")):
        d = _d(req.get(key))
        items = sorted(d.items(), key=lambda kv: (-(_num(kv[1]) or 0), str(kv[0])))
        shown, more = _capped(items)
        body = _table([title, "count"], [[_e(k), _fmt_num(v)] for k, v in shown]) + more if items else f"<p>No {title}s.</p>"
        parts.append(f"<div>{body}</div>")
    parts.append("</div>")
    return "".join(parts)


def _server(run: dict) -> str:
    srv = _d(run.get("server"))
    if not srv:
        return "<p>No server figures in run.json.</p>"
    keys = ("overloaded", "deadline", "restarts", "http_5xx", "scraped", "note")
    return _table(list(keys), [[_cell(srv.get(k)) if k != "note" else f'<td class="wrap">{_cell(srv.get(k))}</td>'
                                for k in keys]], left=0)


def _generator(run: dict) -> str:
    gen = _d(run.get("generator"))
    v = _d(gen.get("verdict"))
    rows = [[_e(k), f'<td class="wrap">{_cell(val)}</td>'] for k, val in sorted(v.items(), key=lambda kv: str(kv[0]))]
    out = _table(["verdict", "value"], rows) if rows else "<p>No generator verdict.</p>"
    members = _l(gen.get("members"))
    if members:
        shown, more = _capped(members)
        if all(isinstance(m, dict) for m in shown):
            keys = sorted({str(k) for m in shown for k in m})[:12]
            out += _table(keys, [[_cell(m.get(k)) for k in keys] for m in shown], left=len(keys)) + more
        else:
            out += "<p>processes: " + ", ".join(_e(m) for m in shown) + "</p>" + more
    return out


def _kv(d: dict, title: str) -> str:
    items = sorted(_d(d).items(), key=lambda kv: str(kv[0]))
    if not items:
        return f"<p>No {title}.</p>"
    shown, more = _capped(items)
    rows = []
    for k, v in shown:
        if k == "stages" and isinstance(v, list):
            v = ", ".join(_stage_text(s) for s in v[:MAX_ROWS])
        elif k == "started_at":
            v = _started(d)
        rows.append([_e(k), f'<td class="wrap">{_cell(v)}</td>'])
    return _table([title, "value"], rows) + more


def _stage_text(s) -> str:
    s = _d(s)
    dur, a, b = _fmt_s(s.get("duration")), _num(s.get("start")), _num(s.get("end"))
    if a is None or b is None:
        return f"{dur} ?"
    return f"{dur} at {a:g}/s" if a == b else f"{dur} {a:g}→{b:g}/s"


def _started(env: dict) -> str:
    """When the run started, as UTC (run.json has an ISO time or epoch seconds)."""
    v = env.get("started_at")
    x = _num(v)
    try:
        if x is not None and 1e8 < x < 1e11:
            when = _dt.datetime.fromtimestamp(x, _dt.timezone.utc)
        elif isinstance(v, str):
            when = _dt.datetime.fromisoformat(v)
            when = when.astimezone(_dt.timezone.utc) if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)
        else:
            return "" if v is None else str(v)
        return when.strftime("%Y-%m-%d %H:%M:%S UTC")
    except (ValueError, OverflowError, OSError):
        return str(v)


def render_html(run: dict, run_dir: Path | None = None) -> str:
    """The report page for a run.json (pure: same run.json and hlog, same bytes)."""
    series, width = _series(run)
    t1 = _t_end(run, series, width)
    plan, env = _d(run.get("plan")), _d(run.get("env"))
    name = run.get("name") or plan.get("name") or "load test"
    target = plan.get("target") or ""
    where = plan.get("url") or ""
    if plan.get("host"):
        where = f"{where} (Host: {plan.get('host')})"
    sub = " · ".join(_e(x) for x in (target, where, _started(env), f"{_fmt_s(run.get('duration_s'))}",
                                     f"{run.get('model') or plan.get('model') or 'open'} model") if x)
    bucket_note = f" Each point covers {width} s (latency: its worst second)." if width > 1 else ""
    parts = [f"<header><h1>wbx loadtest: {_e(name)}</h1><p class=\"sub\">{sub}</p>", _verdict(run), _banners(run),
             "</header>", _figures(run), "<h2>Thresholds</h2>", _thresholds(run), _find_max(run)]

    parts.append("<h2>Latency over time</h2>")
    if series:
        parts.append(f"<figure>{chart_latency(run, series, width, t1)}<figcaption>Percentiles of each second's "
                     "latency, timed from each request's intended start (log scale); dashed verticals are stage "
                     f"boundaries.{bucket_note}</figcaption></figure>")
        parts.append(f"<figure>{chart_rate(run, series, width, t1)}<figcaption>Requests per second: the plan's "
                     "target, what was sent, and how each second's arrivals ended (ok, errors, dropped at the "
                     f"in-flight cap).{bucket_note}</figcaption></figure>")
        if _has_server_series(series):
            parts.append(f"<figure>{chart_server(run, series, width, t1)}<figcaption>The server's own figures, "
                         "scraped once a second: busy workers of all workers, and requests queued for a worker."
                         "</figcaption></figure>")
        else:
            note = _d(run.get("server")).get("note")
            parts.append("<p>No server series (the service's metrics were not scraped"
                         + (f": {_e(note)}" if note else "") + ").</p>")
    else:
        parts.append("<p>No per-second series in run.json.</p>")

    spectrum = _spectrum(run, run_dir) if run_dir is not None else _d(run.get("spectrum"))
    parts.append("<h2>Percentile spectrum</h2>")
    if any(_spectrum_points(spectrum.get(m)) for m in ("latency", "service")):
        parts.append(f"<figure>{chart_spectrum(run, spectrum)}<figcaption>The whole run's latency by percentile "
                     "(x: one request in N is slower). <b>latency</b> counts from the intended start, so it "
                     "includes time queued behind a slow server; <b>service</b> counts from the moment the "
                     "request was sent. The gap between them is queueing.</figcaption></figure>")
    else:
        parts.append("<p>No spectrum recorded.</p>")
    parts.append(_latency_table(run))

    if series:
        parts.append("<h2>Generator</h2>")
        parts.append(f"<figure>{chart_generator(run, series, width, t1)}<figcaption>CPU of each generator process "
                     "(% of a core; dashed: the 85 % limit) and its scheduling lag p99 (right scale; dotted: 5 ms). "
                     "Past either limit for 5 s the run is generator-bound.</figcaption></figure>")
    else:
        parts.append("<h2>Generator</h2>")
    parts.append(_generator(run))

    parts += ["<h2>Per op</h2>", _by_op(run), "<h2>Per size class</h2>", _by_size(run),
              "<h2>Requests</h2>", _requests(run), "<h2>Server totals</h2>", _server(run),
              "<h2>Plan</h2>", _kv(plan, "plan")]
    if _d(run.get("target")):
        parts += ["<h2>Target</h2>", _kv(run.get("target"), "target")]
    parts += ["<h2>Environment</h2>", _kv(env, "environment")]
    # the run's own files; not report.html/png, which the runner names in run.json only after the
    # report is built (a rebuild must give the same bytes)
    files = [(k, v) for k, v in sorted(_d(run.get("files")).items(), key=lambda kv: str(kv[0]))
             if v and k not in ("html", "png")]
    if files:
        parts += ["<h2>Files</h2>", _table(["file", "name"], [[_e(k), _e(os.path.basename(str(v)))]
                                                            for k, v in files[:MAX_ROWS]])]
    tool = env.get("wbx")
    parts.append(f"<footer>Written by {_e(run.get('tool') or 'wbx loadtest')}"
                 f"{' ' + _e(tool) if tool else ''} from run.json"
                 f" (version {_e(run.get('version', '?'))}).</footer>")
    tpl = string.Template(resources.files("workbooks.loadtest").joinpath("report_template.html").read_text("utf-8"))
    return tpl.substitute(title=_e(f"wbx loadtest: {name}"), body="\n".join(parts))


# ---------------------------------------------------------------------------------------------
# files


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename (a symlink at `path` is replaced, never followed)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def chromium() -> str | None:
    """The Chromium binary: $WB_CHROMIUM when set (a path; not executable = none), else the first
    chromium on PATH, else /usr/bin/chromium."""
    forced = os.environ.get("WB_CHROMIUM")
    if forced is not None:
        return forced if forced and os.access(forced, os.X_OK) and not os.path.isdir(forced) else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def _page_height(html_text: str) -> int:
    """A window tall enough for the whole page (headless --screenshot takes the window only)."""
    charts = re.findall(r'<svg class="chart"[^>]*viewBox="0 0 (\d+) (\d+)"', html_text)
    chart_px = sum(int(h) * 1216 / int(w) + 50 for w, h in charts)  # drawn 1216 px wide, plus the caption
    h = (300 + chart_px + html_text.count("<tr>") * 25 + html_text.count("<table") * 30
         + html_text.count("<h2>") * 58 + html_text.count('class="banner') * 80 + html_text.count("<p") * 30)
    return int(max(900, min(h, 16_000)))


def screenshot(html_path: Path, png_path: Path, height: int, timeout: float = CHROMIUM_TIMEOUT_S) -> tuple[Path | None, str | None]:
    """report.png by headless Chromium (private profile in a temp dir, a timeout, the process
    group reaped). Returns (path, None) or (None, why not). A failed start is tried once more (a
    browser can lose a race on a loaded machine); a timeout is not."""
    exe = chromium()
    if exe is None:
        if os.environ.get("WB_CHROMIUM") is not None:
            return None, f"WB_CHROMIUM={os.environ['WB_CHROMIUM']!r} is not an executable chromium: no report.png"
        return None, "chromium is not installed: no report.png (ops/setup.sh --test installs it)"
    why = None
    for _ in range(2):
        data, why, retry = _shoot(exe, html_path, height, timeout)
        if data is not None:
            _write_atomic(png_path, data)
            return png_path, None
        if not retry:
            break
    return None, why


def _shoot(exe: str, html_path: Path, height: int, timeout: float) -> tuple[bytes | None, str | None, bool]:
    """One headless screenshot: (png bytes, None, _) or (None, why, worth another try)."""
    with tempfile.TemporaryDirectory(prefix="wbx-report-") as tmp:
        out = Path(tmp) / "shot.png"
        cmd = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--no-default-browser-check", "--disable-extensions", "--disable-sync",
               "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
               "--metrics-recording-only", "--hide-scrollbars", "--mute-audio", "--force-device-scale-factor=1",
               f"--user-data-dir={tmp}/profile", f"--window-size=1280,{height}", f"--screenshot={out}",
               html_path.resolve().as_uri()]
        env = {**os.environ, "HOME": tmp}
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    start_new_session=True, env=env, cwd=tmp)
        except OSError as e:
            return None, f"chromium did not start: {e}", False
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid)
            proc.communicate()
            return None, f"chromium took over {timeout:g} s: no report.png", False
        finally:
            _killpg(proc.pid)  # helpers it left behind (zygote, gpu) go with it
        data = out.read_bytes() if out.is_file() else b""
        if proc.returncode != 0 or not data.startswith(b"\x89PNG\r\n\x1a\n"):
            tail = (err or b"").decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            return None, f"chromium failed (exit {proc.returncode}): {tail[0][:300]}", True
        return data, None, False


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def build(run_dir: str | os.PathLike, *, png: bool = True) -> dict:
    """Write RUN_DIR/report.html (and report.png) from RUN_DIR/run.json.

    Returns {"html": path, "png": path|None, "note": why there is no png, or None}."""
    d = Path(run_dir)
    run = load_run(d)
    text = render_html(run, d)
    html_path = d / "report.html"
    try:
        _write_atomic(html_path, text.encode("utf-8"))
    except OSError as e:
        raise UsageError(f"cannot write {html_path}: {e.strerror or e}",
                         hint="the run directory must be writable to (re)build its report") from None
    out: dict = {"html": html_path, "png": None, "note": None}
    if png:
        out["png"], out["note"] = screenshot(html_path, d / "report.png", _page_height(text))
    else:
        out["note"] = "report.png not requested"
    return out
