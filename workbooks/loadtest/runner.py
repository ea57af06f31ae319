"""One load-test run: generators started and joined, seconds merged as they close, a run directory.

`run(plan, out_dir)` is what `wbx loadtest run` (and `--find-max`, step by step) calls. It

- starts `plan.procs` local generator processes and waits for `plan.remote` remote ones
  (`coordinator.Coordinator`), hands every one the plan and its member number, and starts them
  all at one common wall-clock instant about a second ahead;
- merges their per-second interval histograms exactly (`hist.Merger`) as each second closes
  (every generator has reported it, or it is STRAGGLER_S late), writes the second to
  `latency.hlog`, feeds the generator self-check (`selfcheck.Judge`: lag p99 and CPU per process
  per second), samples the server's /metrics beside it (`scrape.Scraper`), and hands the series
  item to `on_second` and the live view;
- with `abort_on_fail`, evaluates the thresholds on the data so far after every second once the
  grace period is over, and stops the generators on the first breach (within 2 s);
- at the end evaluates the thresholds on the whole run, decides the exit code
  (0 held · 5 threshold_failed · 1 generator_saturated unless allow_saturated · 1 generator_lost ·
  130/143 interrupted), writes run.json atomically and builds the report (a report that cannot be
  drawn is noted, the run stands).

Every process started is stopped and reaped on every exit path (normal end, abort, an exception,
Ctrl-C). A first Ctrl-C (SIGINT) or SIGTERM ends the run early and still writes run.json; a
second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from workbooks.loadtest import coordinator as C

STRAGGLER_S = 2.0  # a second closes this long after its end even if a generator has not reported it
SCRAPE_WAIT_S = 0.5  # how long closing a second waits for its server sample
ABORT_STOP_S = 1.5  # after an abort, generators get this long to report their last seconds
START_AHEAD_S = 1.0
SERIES_PCTS = ("p50", "p90", "p99", "p99.9", "max")
SPECTRUM = (0, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 95, 97.5, 99, 99.5, 99.9, 99.95, 99.99, 99.999, 100)


def run(plan, out_dir, *, on_second=None, live=None, data=None, remote_wait_s: float | None = None) -> dict:
    """Run `plan`, write `out_dir` (run.json, latency.hlog, report), return run.json's content.

    `data`: the data directory whose CURVE keys admit remote generators (default $WB_DATA);
    `remote_wait_s`: how long to wait for them (default coordinator.REMOTE_WAIT_S)."""
    import trio

    from workbooks.loadtest import thresholds as TH

    ths = [TH.parse(e) for e in (plan.thresholds or [])]  # a bad expression fails before anything starts
    C.check_closed_split(plan)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    r = _Run(plan, out_dir, ths, on_second=on_second, live=live, data=data,
             remote_wait_s=C.REMOTE_WAIT_S if remote_wait_s is None else remote_wait_s)
    try:
        try:
            result = trio.run(r.main)
        except BaseExceptionGroup as eg:  # one failure in a task (trio groups them): raise it as itself
            leaf = _single(eg)
            if leaf is None:
                raise
            raise leaf from None
    finally:
        r.close()
    if result is None:  # interrupted before the load started: nothing to write
        raise KeyboardInterrupt
    return result


def _single(eg: BaseExceptionGroup):
    """The one exception inside (nested) groups, or None when there are several."""
    while isinstance(eg, BaseExceptionGroup):
        if len(eg.exceptions) != 1:
            return None
        eg = eg.exceptions[0]
    return eg


def _logger():
    from workbooks import log as wblog

    return wblog.get_logger(component="loadtest")


class _Run:
    def __init__(self, plan, out_dir: Path, ths, *, on_second, live, data, remote_wait_s):
        from workbooks.loadtest import hist, selfcheck

        self.plan = plan
        self.out_dir = out_dir
        self.ths = ths
        self.on_second = on_second
        self.live = live
        self.log = _logger()
        self.hist = hist
        self.coord = C.Coordinator(plan, data=data, log=self.log, stderr_path=out_dir / "generators.log",
                                   remote_wait_s=remote_wait_s)
        # a second stays whole (late samples still in its percentiles) until requests that
        # started in it have finished or timed out
        self.merger = hist.Merger(keep_s=int(min(max(10.0, float(plan.timeout or 0) + 2), 60)))
        self.judge = selfcheck.Judge()
        self.hlog = None
        self.t0 = None  # perf_counter of the common start
        self.start_wall = None
        self.next_close = 0
        self.max_t = -1
        self.cum: dict = {}  # key -> HdrHistogram over the closed seconds (for abort checks)
        self.cum_counts: dict = {}
        self.series: list[dict] = []
        self.gen_cpu: dict[int, dict] = {}
        self.gen_lag: dict[int, dict] = {}
        self.cpu_max: dict[str, float] = {}
        self.lag_max: dict[str, float] = {}
        self.samples: dict[int, dict] = {}
        self.keys: set[str] = set()
        self.scraper = None
        self.scrape_note = None
        self.aborted = None
        self.interrupted = None
        self.running = False
        self.setup_scope = None
        self.lost: list[str] = []
        self.stopped_s = None
        self.stop_at = None  # perf_counter by which the generators must have finished (after an abort)

    def close(self) -> None:
        try:
            self.coord.close()
        finally:
            if self.hlog is not None:
                with contextlib.suppress(Exception):
                    self.hlog.close()
                self.hlog = None

    # -- the run -------------------------------------------------------------------------------
    async def main(self):
        import trio

        async with trio.open_nursery() as nursery:
            if threading.current_thread() is threading.main_thread():
                nursery.start_soon(self._signals)
            try:
                self.setup_scope = trio.CancelScope()
                with self.setup_scope:
                    await self._setup()
                if self.interrupted is not None and not self.running:
                    return None
                if self.scraper is not None:
                    nursery.start_soon(self._scrape_loop)
                await self._collect()
                return self._finish()
            finally:
                nursery.cancel_scope.cancel()

    async def _signals(self) -> None:
        import trio

        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as sigs:
            async for sig in sigs:
                if self.interrupted is not None and sig == signal.SIGINT:
                    raise KeyboardInterrupt  # a second Ctrl-C: stop now (close() still reaps)
                self.interrupted = sig
                self.log.warning("interrupted", signal=signal.Signals(sig).name, running=self.running)
                if self.running:
                    self.coord.abort("interrupted")
                    self._stop_soon()
                elif self.setup_scope is not None:
                    self.setup_scope.cancel()

    async def _setup(self) -> None:
        plan = self.plan
        self.coord.open()
        self.coord.spawn()
        self.log.info("generators_joining", procs=plan.procs, remote=plan.remote, listen=self.coord.tcp_endpoint)
        await self.coord.join()
        await self.coord.prepare(plan.to_dict(), plan.api_key())
        self._make_scraper()
        self.start_wall = self.coord.start(START_AHEAD_S)
        self.hlog = self.hist.HlogWriter(self.out_dir / "latency.hlog", start_wall=self.start_wall)
        self.t0 = time.perf_counter() + (self.start_wall - time.time())
        self.running = True
        self.log.info("run_started", members=[m.name for m in self.coord.members], duration_s=plan.duration)

    def _make_scraper(self) -> None:
        plan = self.plan
        if not plan.scrape:
            self.scrape_note = "not scraped (--no-scrape)"
            return
        url = plan.metrics_url
        if not url:
            self.scrape_note = f"not scraped: no metrics URL for the {plan.target} target (--metrics-url)"
            return
        key = plan.api_key()
        if not key:
            self.scrape_note = "not scraped: no API key for /metrics (--key or $WB_API_KEY)"
            return
        try:
            from workbooks.loadtest import scrape
        except ImportError as e:  # pragma: no cover - the scraper ships with the package
            self.scrape_note = f"not scraped: {e}"
            return
        self.scraper = scrape.Scraper(url, key, public_url=plan.public_metrics_url, public_key=key)

    async def _scrape_loop(self) -> None:
        import trio

        with contextlib.suppress(Exception):
            await self.scraper.sample()  # the baseline the first second's deltas are taken from
        s = 0
        while True:
            await trio.sleep_until(self._trio_at(s + 1))
            try:
                self.samples[s] = await self.scraper.sample()
            except Exception as e:  # the scraper records a down server itself; anything else is noted
                self.samples[s] = None
                self.log.warning("scrape_failed", error=str(e))
            s += 1

    def _trio_at(self, rel_s: float) -> float:
        """trio.current_time() of the instant `rel_s` after the common start."""
        import trio

        return trio.current_time() + (self.t0 + rel_s - time.perf_counter())

    def _stop_soon(self) -> None:
        at = time.perf_counter() + ABORT_STOP_S
        self.stop_at = at if self.stop_at is None else min(self.stop_at, at)

    async def _collect(self) -> None:
        while True:
            msgs, lost = await self.coord.collect()
            for m, msg in msgs:
                kind = msg.get("type")
                if kind == "tick":
                    self._on_tick(m, msg)
                elif kind == "failed" and m.lost is None:
                    err = msg.get("error") if isinstance(msg.get("error"), dict) else {}
                    m.lost = f"failed: {str(err.get('message'))[:500]}"
                    lost.append(m)
            for m in lost:
                self.lost.append(f"{m.name}: {m.lost}")
            if lost and self.aborted is None and self.interrupted is None:
                self.coord.abort("a generator was lost")
                self._stop_soon()
            self._close_ready()
            if not self.coord.active():
                break
            if self.stop_at is not None and time.perf_counter() > self.stop_at:
                for m in self.coord.active():
                    m.lost = m.lost or "did not stop in time after the abort"
                break
        # everything the generators reported, closed (with the server's sample of each second)
        seconds = list(self.merger.seconds())
        last = min(max([self.max_t, *seconds]) if seconds else self.max_t, self._last_second())
        if self.scraper is not None and self.interrupted is None:
            import trio

            with trio.move_on_at(self._trio_at(last + 1 + SCRAPE_WAIT_S)):
                while any(s not in self.samples for s in range(self.next_close, last + 1)):
                    await trio.sleep(0.02)
        while self.next_close <= last:
            self._close_second(self.next_close)
        self.stopped_s = round(time.perf_counter() - self.t0, 3)

    def _last_second(self) -> int:
        """The last second the series may hold: the stages, the last requests' timeout, a margin."""
        return int(math.ceil(float(self.plan.duration) + float(self.plan.timeout or 0))) + 5

    def _on_tick(self, m, msg: dict) -> None:
        t = msg.get("t")
        snaps = msg.get("snapshots") or []
        for snap in snaps:
            try:
                self.merger.add(snap, m.name)
            except self.hist.BadSnapshot as e:  # all of it or none of it was merged: none
                self.log.error("bad_snapshot", member=m.name, error=str(e))
                if m.lost is None:
                    m.lost = f"sent a bad snapshot: {e}"
                    self.lost.append(f"{m.name}: {m.lost}")
                    self.coord.send(m, "abort", why="bad snapshot")
                continue
            st = snap["t"]
            self.keys.update((snap.get("hists") or {}).keys())
            self.max_t = max(self.max_t, st)
            if st < self.next_close:
                self._late(snap)
        cpu, lag = msg.get("cpu"), msg.get("lag_p99_ms")
        if isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= self._last_second() \
                and isinstance(cpu, (int, float)) and math.isfinite(cpu):
            lag = float(lag) if isinstance(lag, (int, float)) and math.isfinite(lag) else 0.0
            self.judge.observe(m.name, t, lag, float(cpu))
            self.gen_cpu.setdefault(t, {})[m.name] = round(float(cpu), 4)
            self.gen_lag.setdefault(t, {})[m.name] = lag
            self.cpu_max[m.name] = max(self.cpu_max.get(m.name, 0.0), float(cpu))
            self.lag_max[m.name] = max(self.lag_max.get(m.name, 0.0), lag)

    def _late(self, snap: dict) -> None:
        """A snapshot of a second already closed: into the running totals and the hlog as an extra
        interval of that second (log readers sum intervals, so the log stays exact)."""
        st = snap["t"]
        for key, enc in (snap.get("hists") or {}).items():
            h = _decode(enc)
            self._cum_add(key, h)
            if self.hlog is not None:
                self.hlog.write(key, st, st + 1, h)
        _add_counts(self.cum_counts, snap.get("counts") or {})

    def _cum_add(self, key: str, h) -> None:
        if key in self.cum:
            self.cum[key].add(h)
        else:
            c = self.hist.new()
            c.add(h)
            self.cum[key] = c

    def _close_ready(self) -> None:
        now = time.perf_counter()
        while self.t0 is not None:
            s = self.next_close
            end = self.t0 + s + 1
            if now < end:
                return
            members = self.coord.members
            reported = all(not m.active or m.through >= s for m in members)
            scraped = self.scraper is None or s in self.samples or now > end + SCRAPE_WAIT_S
            if not ((reported and scraped) or now > end + STRAGGLER_S):
                return
            if (not any(m.active for m in members) and s > self.max_t) or s > self._last_second():
                return
            self._close_second(s)

    def _close_second(self, s: int) -> None:
        hists, counts = _merged_second(self.merger, s)
        for key, h in hists.items():
            self._cum_add(key, h)
            if self.hlog is not None:
                self.hlog.write(key, s, s + 1, h)
        _add_counts(self.cum_counts, counts)
        item = {"t": s, "target_rate": round(_mean_rate(self.plan, s), 3)}
        for k in ("intended", "sent", "ok", "errors", "dropped"):
            item[k] = int(counts.get(k, 0) or 0)
        pct = self.hist.percentiles
        for metric in ("latency", "service"):
            h = _metric(hists, metric, self.hist)
            p = pct(h) if h is not None else {}
            item[metric] = {k: p.get(k) for k in SERIES_PCTS}
        lag = _metric(hists, "lag", self.hist)
        item["lag_p99_ms"] = pct(lag).get("p99") if lag is not None else None
        item["gen_cpu"] = dict(self.gen_cpu.get(s, {}))
        item["gen_lag_p99_ms"] = dict(self.gen_lag.get(s, {}))  # each member's scheduler lateness
        item["server"] = self.samples.get(s)
        self.series.append(item)
        self.next_close = s + 1
        verdict = self.judge.verdict()
        if self.on_second is not None:
            try:
                self.on_second(item)
            except Exception as e:  # a consumer's failure must not lose the run
                self.log.warning("on_second_failed", error=str(e))
        if self.live is not None:
            try:
                self.live.update(item, verdict)
            except Exception as e:
                self.log.warning("live_failed", error=str(e))
        self._check_abort(s)

    def _check_abort(self, s: int) -> None:
        plan = self.plan
        if not (plan.abort_on_fail and self.ths and self.aborted is None and self.running):
            return
        if s + 1 < float(plan.grace or 0):
            return
        from workbooks.loadtest import thresholds as TH

        summary = self._summary(self.cum, self.cum_counts, elapsed=s + 1, final=False)
        for res in TH.evaluate(self.ths, summary):
            if not res.get("ok"):
                at = round(time.perf_counter() - self.t0, 3)
                self.aborted = {"at_s": at, "second": s, "expr": res.get("expr"), "value": res.get("value"),
                                "limit": res.get("limit")}
                self.log.warning("threshold_breached", expr=res.get("expr"), value=res.get("value"), at_s=at)
                self.coord.abort(f"threshold breached: {res.get('expr')}")
                self._stop_soon()
                return

    # -- figures -------------------------------------------------------------------------------
    def _summary(self, by_key: dict, counts: dict, *, elapsed: float, final: bool) -> dict:
        """The run.json figures (percentiles, counts, rates, server totals) from histograms by key.
        While running (abort checks, each second) only what the thresholds read is computed."""
        hist = self.hist
        pct = hist.percentiles
        empty = pct(None)
        if final:
            metrics, filtered = set(hist.METRICS), True
        else:
            metrics = {th.family for th in self.ths}
            filtered = any(th.filter for th in self.ths) or bool(metrics & {"errors", "dropped"})
        out: dict = {}
        for metric in hist.METRICS:
            h = _metric(by_key, metric, hist) if metric in metrics else None
            out[metric] = pct(h) if h is not None else dict(empty)
        if "admitted" in metrics or final:
            # the requests the server admitted and answered: latency minus failed (e.g. fast 503s)
            out["admitted"] = pct(hist.difference(_metric(by_key, "latency", hist), _metric(by_key, "failed", hist)))
        else:
            out["admitted"] = dict(empty)
        lat_keys = [k.split("|") for k in by_key if k.startswith("latency|") and k.count("|") == 2]
        ops = sorted({p[1] for p in lat_keys} | set((counts.get("by_op") or {}).keys()))
        sizes = sorted({p[2] for p in lat_keys})
        by_op, by_size, by_op_size = {}, {}, {}
        if filtered:
            for op in ops:
                h = _metric(by_key, "latency", hist, op=op)
                c = (counts.get("by_op") or {}).get(op) or {}
                by_op[op] = {"latency": pct(h) if h is not None else dict(empty), "ok": int(c.get("ok", 0) or 0),
                             "errors": int(c.get("errors", 0) or 0), "dropped": int(c.get("dropped", 0) or 0)}
            for sz in sizes:
                h = _metric(by_key, "latency", hist, size=sz)
                by_size[sz] = {"latency": pct(h) if h is not None else dict(empty),
                               "count": int(h.get_total_count()) if h is not None else 0}
        if final:
            for op, sz in ((p[1], p[2]) for p in lat_keys):
                h = by_key["|".join(("latency", op, sz))]
                by_op_size.setdefault(op, {})[sz] = {"latency": pct(h), "count": int(h.get_total_count())}
        req = {k: int(counts.get(k, 0) or 0) for k in ("intended", "sent", "ok", "errors", "dropped", "bytes")}
        req["by_status"] = {str(k): int(v) for k, v in (counts.get("status") or {}).items()}
        req["by_error"] = {str(k): int(v) for k, v in (counts.get("error") or {}).items()}
        done = req["ok"] + req["errors"]
        out["by_op"] = by_op
        out["by_size"] = by_size
        out["by_op_size"] = by_op_size
        out["requests"] = req
        out["errors"] = {"rate": round(req["errors"] / done, 6) if done else 0.0, "count": req["errors"]}
        out["dropped"] = {"rate": round(req["dropped"] / req["intended"], 6) if req["intended"] else 0.0,
                          "count": req["dropped"]}
        out["rate"] = self._rate(req, elapsed, final)
        out["server"] = self._server()
        return out

    def _rate(self, req: dict, elapsed: float, final: bool) -> dict:
        plan = self.plan
        if plan.model == "closed":
            dur = max(float(plan.duration), 1e-9) if final and self.aborted is None else max(elapsed, 1e-9)
            return {"target": None, "achieved": round(req["sent"] / dur, 3), "achieved_ratio": None}
        full = final and self.aborted is None and self.interrupted is None and not self.lost
        span = float(plan.duration) if full else min(float(plan.duration), max(float(elapsed), 1e-9))
        expected = _expected(plan, span) if not full else self._expected_total()
        target = expected / span if span > 0 else 0.0
        achieved = req["sent"] / span if span > 0 else 0.0
        return {"target": round(target, 3), "achieved": round(achieved, 3),
                "achieved_ratio": round(req["sent"] / expected, 6) if expected else None}

    def _expected_total(self) -> float:
        from workbooks.loadtest import schedule

        try:
            return float(schedule.expected_count(self.plan.stages, self.plan.arrival))
        except Exception:
            return _expected(self.plan, float(self.plan.duration))

    def _server(self) -> dict:
        if self.scraper is None:
            return {"overloaded": None, "deadline": None, "restarts": None, "http_5xx": None, "scraped": False,
                    "note": self.scrape_note}
        try:
            tot = dict(self.scraper.totals())
        except Exception as e:
            return {"overloaded": None, "deadline": None, "restarts": None, "http_5xx": None, "scraped": False,
                    "note": f"scraper failed: {e}"}
        tot.setdefault("scraped", True)
        return tot

    def _finish(self) -> dict:
        from workbooks.loadtest import thresholds as TH

        plan = self.plan
        hist = self.hist
        by_key = {}
        for key in sorted(self.keys):
            metric, _, rest = key.partition("|")
            op, _, size = rest.partition("|")
            by_key[key] = _total(self.merger, metric, op, size, hist)
        counts = self.merger.counts_total()
        self._final_series()
        elapsed = self.aborted["at_s"] if self.aborted else (
            self.stopped_s if (self.interrupted or self.lost) else float(plan.duration))
        summary = self._summary(by_key, counts, elapsed=elapsed, final=True)
        verdict = self.judge.verdict()
        results = TH.evaluate(self.ths, summary) if self.ths else []
        failed = [r for r in results if not r.get("ok")]
        bound = bool(verdict.get("generator_bound"))
        if self.interrupted is not None:
            code, reason = 128 + int(self.interrupted), "interrupted"
        elif self.lost:
            code, reason = 1, "generator_lost: " + "; ".join(self.lost)
        elif bound and not plan.allow_saturated:
            code, reason = 1, "generator_saturated: " + str(verdict.get("reason") or "")
        elif failed:
            f = failed[0]
            code, reason = 5, f"threshold_failed: {f.get('expr')} (measured {f.get('value')})"
        else:
            code, reason = 0, "every threshold held" if results else "ok"
        members = []
        for m in self.coord.members:
            info = m.info()
            info["cpu_max"] = round(self.cpu_max.get(m.name, 0.0), 4)
            info["lag_p99_max_ms"] = self.lag_max.get(m.name, 0.0)
            info["target"] = m.describe
            members.append(info)
        spectrum = {}
        for metric in ("latency", "service"):
            h = _metric(by_key, metric, hist) or hist.new()
            spectrum[metric] = [[p, round(h.get_value_at_percentile(p) / 1000.0, 3)] for p in SPECTRUM] \
                if h.get_total_count() else []
        stages, at = [], 0.0
        for s in plan.stages:
            stages.append({"at_s": round(at, 6), "duration": s.duration, "start": s.start, "end": s.end})
            at += s.duration
        aborted = dict(self.aborted) if self.aborted else None
        if aborted is not None:
            aborted["stopped_s"] = self.stopped_s
        result = {
            "version": 1, "tool": "wbx loadtest", "name": plan.name or "",
            "plan": plan.to_dict(), "env": self._env(),
            "model": plan.model, "omits_queueing": plan.model == "closed",
            "duration_s": round(float(elapsed), 3),
            **{k: summary[k] for k in (*hist.METRICS, "admitted")},
            "by_op": summary["by_op"], "by_size": summary["by_size"], "by_op_size": summary["by_op_size"],
            "requests": summary["requests"], "errors": summary["errors"], "dropped": summary["dropped"],
            "rate": summary["rate"], "generator_bound": bound,
            "generator": {"members": members, "verdict": verdict},
            "server": summary["server"], "thresholds": results, "aborted": aborted,
            "stages": stages, "series": self.series, "spectrum": spectrum,
            "target": members[0]["target"] if members else {},
            "files": {"hlog": "latency.hlog", "html": None, "png": None, "generators_log": "generators.log"},
            "exit": {"code": code, "reason": reason},
        }
        if self.hlog is not None:
            self.hlog.close()
            self.hlog = None
        write_json_atomic(self.out_dir / "run.json", result)
        try:
            from workbooks.loadtest import report

            made = report.build(self.out_dir)
            result["files"].update({k: (Path(v).name if v else None) for k, v in (made or {}).items()
                                    if k in ("html", "png")})
        except Exception as e:  # the run stands without its report
            result["report_error"] = f"{type(e).__name__}: {e}"
            self.log.warning("report_failed", error=result["report_error"])
        write_json_atomic(self.out_dir / "run.json", result)
        self.log.info("run_finished", exit=code, reason=reason)
        return result

    def _final_series(self) -> None:
        """The series as run.json keeps it: each second's counters and percentiles with the samples
        that arrived after it closed (a request counts `intended` in its start second when it
        ends, so the live view saw a provisional figure)."""
        for item in self.series:
            sec = self.merger.second(item["t"])
            counts = sec.get("counts") or {}
            for k in ("intended", "sent", "ok", "errors", "dropped"):
                item[k] = int(counts.get(k, 0) or 0)
            pcts = sec.get("percentiles") or {}
            for metric in ("latency", "service"):
                if pcts.get(metric):
                    item[metric] = {k: pcts[metric].get(k) for k in SERIES_PCTS}
            if pcts.get("lag"):
                item["lag_p99_ms"] = pcts["lag"].get("p99")

    def _env(self) -> dict:
        from workbooks import __version__

        started = datetime.fromtimestamp(self.start_wall, timezone.utc).isoformat() if self.start_wall else None
        return {"host": socket.gethostname(), "cpus": os.cpu_count(), "python": platform.python_version(),
                "wbx": __version__, "platform": platform.platform(), "started_at": started,
                "start_wall": self.start_wall}


# -- helpers ---------------------------------------------------------------------------------


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON next to `path`, fsync, rename over it: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = json.dumps(obj, sort_keys=True, allow_nan=False, default=_json_default).encode()
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def _decode(enc):
    from workbooks.loadtest import hist

    return hist.decode(enc)


def _merged_second(merger, s: int) -> tuple[dict, dict]:
    """(histograms by key, counts) of one merged second; empty when no generator recorded in it."""
    try:
        sec = merger.second(s)
    except KeyError:
        return {}, {}
    if not sec:
        return {}, {}
    return dict(sec.get("hists") or {}), dict(sec.get("counts") or {})


def _metric(by_key: dict, metric: str, hist, op: str | None = None, size: str | None = None):
    """The sum of the histograms of one metric (optionally one op / size class), or None."""
    total = None
    for key, h in by_key.items():
        parts = key.split("|")
        if parts[0] != metric:
            continue
        if op is not None and (len(parts) < 2 or parts[1] != op):
            continue
        if size is not None and (len(parts) < 3 or parts[2] != size):
            continue
        if total is None:
            total = hist.new()
        total.add(h)
    return total


def _total(merger, metric: str, op: str, size: str, hist):
    """The whole-run histogram of one key (the merger's exact total)."""
    return merger.total(metric, op=op, size=size)


def _add_counts(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict):
            _add_counts(dst.setdefault(k, {}), v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            dst[k] = dst.get(k, 0) + v


def _mean_rate(plan, s: int) -> float:
    """The target rate averaged over second s (a ramp's mean, a stage boundary inside it)."""
    return _expected(plan, s + 1) - _expected(plan, s)


def _expected(plan, t: float) -> float:
    """Arrivals the stages ask for in [0, t): the integral of the rate."""
    total, at = 0.0, 0.0
    for st in plan.stages:
        if t <= at:
            break
        d = min(st.duration, t - at)
        if st.duration > 0:
            end_rate = st.start + (st.end - st.start) * d / st.duration
            total += (st.start + end_rate) / 2 * d
        at += st.duration
    return total if math.isfinite(total) else 0.0
