"""The live view of a `wbx loadtest run` on a terminal: one `rich` panel, redrawn once a second.

It shows where the run is (elapsed of planned), the plan's target rate against what was sent, the
last second's latency p50/p99/max, errors, dropped and in-flight requests, the generator's own CPU
and scheduling lag (red, "GENERATOR-BOUND", once the Judge says the numbers are the generator's),
and the server's busy workers and queue when they are scraped.

Only on a terminal: when stdout is not a TTY the view writes nothing at all (the CLI prints one
JSON object per second there instead).
"""

from __future__ import annotations

import atexit
import math
import sys
import threading

#: The Judge's limits, for colouring a second that is past them before the run is flagged.
LAG_LIMIT_MS = 5.0
CPU_LIMIT = 0.85


def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _ms(v) -> str:
    x = _num(v)
    if x is None:
        return "—"
    if x >= 1000:
        return f"{x / 1000:.2f} s"
    return f"{x:.0f} ms" if x >= 100 else f"{x:.1f} ms" if x >= 10 else f"{x:.2f} ms"


def _secs(x: float) -> str:
    x = int(round(x))
    if x < 60:
        return f"{x}s"
    m, s = divmod(x, 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def _field(plan, name: str, default=None):
    if isinstance(plan, dict):
        return plan.get(name, default)
    return getattr(plan, name, default)


def planned_duration(plan) -> float | None:
    """The plan's total duration in seconds (Plan.duration, or the sum of its stages)."""
    d = _num(_field(plan, "duration"))
    if d is not None:
        return d
    total = 0.0
    for st in _field(plan, "stages") or []:
        v = _num(st.get("duration") if isinstance(st, dict) else getattr(st, "duration", None))
        if v is None:
            return None
        total += v
    return total or None


class LiveView:
    """`with LiveView(plan) as lv: ... lv.update(series_item, judge_verdict)` once a second.

    Without `with`, the first update starts the view and process exit stops it."""

    def __init__(self, plan, *, console=None):
        self.plan = plan
        self.planned = planned_duration(plan)
        self._console = console
        self._live = None
        self._lock = threading.Lock()
        self._item: dict = {}
        self._verdict: dict = {}
        self._totals = {"ok": 0, "errors": 0, "dropped": 0, "sent": 0}

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> "LiveView":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if self._live is not None:
            return
        console = self._console
        if console is None:
            if not sys.stdout.isatty():
                return
            from rich.console import Console

            console = Console()
        if not console.is_terminal:
            return
        from rich.live import Live

        self._live = Live(get_renderable=self._render, console=console, refresh_per_second=1,
                          transient=False, redirect_stdout=True, redirect_stderr=True)
        self._live.start()

    def stop(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.refresh()
            live.stop()

    @property
    def active(self) -> bool:
        return self._live is not None

    # -- data --------------------------------------------------------------------------------

    def update(self, item: dict, verdict: dict | None = None) -> None:
        """One merged second (a run.json series item) and the Judge's verdict so far."""
        if not isinstance(item, dict):
            return
        with self._lock:
            self._item = item
            self._verdict = verdict if isinstance(verdict, dict) else {}
            for k in self._totals:
                v = _num(item.get(k))
                if v is not None:
                    self._totals[k] += int(v)
        if self._live is None:
            self.start()
            if self._live is not None:  # started here, not by `with`: stop it at exit at the latest
                atexit.register(self.stop)
        if self._live is not None:
            self._live.refresh()

    # -- drawing -----------------------------------------------------------------------------

    def _render(self):
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        with self._lock:
            it, verdict, tot = dict(self._item), dict(self._verdict), dict(self._totals)
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()

        t = _num(it.get("t"))
        elapsed = (t + 1) if t is not None else 0.0
        if self.planned:
            frac = max(0.0, min(1.0, elapsed / self.planned))
            bar = "█" * int(frac * 24) + "░" * (24 - int(frac * 24))
            grid.add_row("elapsed", f"{_secs(elapsed)} / {_secs(self.planned)}  {bar} {frac * 100:.0f}%")
        else:
            grid.add_row("elapsed", _secs(elapsed))

        target, sent = _num(it.get("target_rate")), _num(it.get("sent"))
        rate = Text(f"target {target:,.1f}/s" if target is not None else "target —")
        rate.append(" · achieved ")
        short = target is not None and sent is not None and target > 0 and sent < 0.95 * target
        rate.append(f"{sent:,.1f}/s" if sent is not None else "—", style="yellow" if short else "")
        grid.add_row("rate", rate)

        lat = it.get("latency") if isinstance(it.get("latency"), dict) else {}
        grid.add_row("latency", f"p50 {_ms(lat.get('p50'))} · p99 {_ms(lat.get('p99'))} · max {_ms(lat.get('max'))}"
                                "  (this second)")
        errs = _num(it.get("errors")) or 0
        grid.add_row("errors", Text(f"{tot['errors']:,} total · {int(errs):,} this second",
                                    style="red" if errs else ""))
        drop = _num(it.get("dropped")) or 0
        grid.add_row("dropped", Text(f"{tot['dropped']:,} total · {int(drop):,} this second",
                                     style="yellow" if drop else ""))
        inflight = it.get("inflight")
        if isinstance(inflight, dict):
            vals = [_num(v) for v in inflight.values()]
            inflight = sum(v for v in vals if v is not None) if any(v is not None for v in vals) else None
        grid.add_row("inflight", f"{int(_num(inflight)):,}" if _num(inflight) is not None else "—")

        cpu = it.get("gen_cpu") if isinstance(it.get("gen_cpu"), dict) else {}
        cpus = [v for v in (_num(x) for x in cpu.values()) if v is not None]
        lag = _num(it.get("lag_p99_ms"))
        gen = Text()
        if cpus:
            gen.append(f"cpu {max(cpus) * 100:.0f} %" + (f" (max of {len(cpus)} processes)" if len(cpus) > 1 else ""))
        else:
            gen.append("cpu —")
        gen.append(f" · lag p99 {lag:.2f} ms" if lag is not None else " · lag p99 —")
        bound = verdict.get("generator_bound") is True
        hot = (lag is not None and lag > LAG_LIMIT_MS) or (cpus and max(cpus) > CPU_LIMIT)
        if bound:
            gen.stylize("bold red")
            reason = verdict.get("reason")
            gen.append("  GENERATOR-BOUND: the numbers are the generator's, not the server's"
                       + (f" ({reason})" if isinstance(reason, str) and reason else ""), style="bold red")
        elif hot:
            gen.stylize("yellow")
        grid.add_row(Text("generator", style="bold red" if bound else "bold"), gen)

        srv = it.get("server") if isinstance(it.get("server"), dict) else {}
        busy, workers, queue = _num(srv.get("busy_workers")), _num(srv.get("workers")), _num(srv.get("queue_depth"))
        if busy is not None or queue is not None:
            parts = []
            if busy is not None:
                parts.append(f"busy {busy:g}/{workers:g}" if workers is not None else f"busy {busy:g}")
            if queue is not None:
                parts.append(f"queue {queue:g}")
            rs = _num(srv.get("renders_s"))
            if rs is not None:
                parts.append(f"{rs:,.0f} renders/s")
            grid.add_row("server", " · ".join(parts))

        name = _field(self.plan, "name") or ""
        target_kind = _field(self.plan, "target") or ""
        url = _field(self.plan, "url") or ""
        title = " · ".join(str(x) for x in ("wbx loadtest", name, target_kind, url) if x)
        return Panel(grid, title=Text(title), border_style="red" if bound else "blue", expand=False)
