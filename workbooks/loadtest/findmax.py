"""`wbx loadtest run --find-max`: the highest rate at which every threshold holds.

Short constant-rate steps: the rate doubles from the plan's (or MIN_START) until a step breaks a
threshold, then the interval between the last step that held and the first that broke is bisected
until it is narrower than `precision`. Each step aborts within 2 s of a breach, so failing steps are
short. A step whose generator was the bottleneck ends the search: above that rate the figures would
be the generator's, so the answer is reported as a lower bound (use more `--procs`).

Near the knee a tail percentile is noisy: one short step can hold by luck at a rate that breaks
in most runs (measured on the render API: 800/s held an 8 s step where a manual bisection of
10 s runs found 719/s). So the answer is confirmed by a step CONFIRM_FACTOR x as long at the same
rate; when that breaks, the rate counts as broken, and the search bisects again below it (from
the highest rate that held under it) with long steps only, up to MAX_CONFIRMS times. `find_max.confirmed` says whether
the reported rate held its long step.

Every step's run directory is kept under `steps/`; the run directory itself gets the best step's
run.json (plus a `find_max` block), its latency.hlog and a report.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

MIN_START = 50.0
MAX_RATE = 1_000_000.0
DEFAULT_STEP_S = 8.0
DEFAULT_PRECISION = 0.05
CONFIRM_FACTOR = 2.0
MAX_CONFIRMS = 3
#: Pause before a step after one that broke: the server drains the backlog the broken step left,
#: which would otherwise land in the next step's first seconds (and break it at a rate that holds).
COOLDOWN_S = 3.0


def _step_plan(plan, rate: float, step_s: float):
    from workbooks.loadtest.plan import Stage

    return dataclasses.replace(plan, stages=[Stage(step_s, rate, rate)], abort_on_fail=True,
                               grace=min(float(plan.grace or 2.0), 2.0), out=None)


def _start_rate(plan) -> float:
    peak = max((max(s.start, s.end) for s in plan.stages), default=0.0)
    return max(MIN_START, peak / 2) if peak else MIN_START


def find_max(plan, run_dir: Path, *, run=None, step_s: float | None = None, precision: float = DEFAULT_PRECISION,
             on_second=None, live=None, on_step=None, cooldown: float = COOLDOWN_S) -> dict:
    """Search, write the run directory, return the best step's run.json with a `find_max` block."""
    from workbooks.errors import UsageError

    if not plan.thresholds:
        raise UsageError("--find-max needs at least one threshold to search against",
                         hint="e.g. --threshold 'latency.p99<50ms' --threshold 'errors.rate<0.1%'")
    if run is None:
        from workbooks.loadtest.runner import run as run_fn

        run = run_fn
    step_s = float(step_s or getattr(plan, "find_max_step", None) or DEFAULT_STEP_S)
    run_dir = Path(run_dir)
    (run_dir / "steps").mkdir(parents=True, exist_ok=True)
    steps: list[dict] = []
    results: dict[float, tuple[dict, Path]] = {}
    t_begin = time.monotonic()

    held: list[float] = []

    held_long: set[float] = set()
    long_steps = False  # after a confirmation broke: every step is a long one

    def attempt(rate: float, confirm: bool = False) -> str:
        """'held' | 'broke' | 'saturated'"""
        rate = round(rate, 1)
        long = confirm or long_steps
        d = run_dir / "steps" / f"{len(steps) + 1:02d}-{rate:g}{'-confirm' if confirm else ''}"
        secs = step_s * CONFIRM_FACTOR if long else step_s
        if steps and steps[-1]["outcome"] != "held" and cooldown > 0:
            time.sleep(cooldown)
        res = run(_step_plan(plan, rate, secs), d, on_second=on_second, **({"live": live} if live else {}))
        results[rate] = (res, d)
        failed = [t.get("expr") for t in res.get("thresholds") or [] if not t.get("ok")]
        if res.get("generator_bound") and not plan.allow_saturated:
            outcome = "saturated"
        else:
            outcome = "broke" if failed else "held"
        if outcome == "held":
            held.append(rate)
            if long:
                held_long.add(rate)
        row = {"step": len(steps) + 1, "rate": rate, "outcome": outcome, "failed": failed, "confirm": confirm,
               "seconds": secs,
               "achieved": (res.get("rate") or {}).get("achieved"),
               "latency_p99_ms": (res.get("latency") or {}).get("p99"),
               "aborted": bool(res.get("aborted")), "dir": str(d)}
        steps.append(row)
        if on_step is not None:
            on_step(row)
        return outcome

    good, bad, saturated_at = None, None, None
    rate = _start_rate(plan)
    while rate <= MAX_RATE:
        outcome = attempt(rate)
        if outcome == "held":
            good = rate
            rate *= 2
            continue
        if outcome == "saturated":
            saturated_at = rate
        else:
            bad = rate
        break
    def bisect() -> None:
        nonlocal good, bad, saturated_at
        while bad / good > 1 + precision:
            mid = (good + bad) / 2
            outcome = attempt(mid)
            if outcome == "held":
                good = mid
            elif outcome == "broke":
                bad = mid
            else:
                saturated_at = mid
                break

    confirmed = False
    if saturated_at is None and good is not None and bad is not None:
        bisect()
        for _ in range(MAX_CONFIRMS):
            if saturated_at is not None or good is None:
                break
            if round(good, 1) in held_long:  # held a long step in the bisection itself
                confirmed = True
                break
            outcome = attempt(good, confirm=True)
            if outcome == "held":
                confirmed = True
                break
            if outcome == "saturated":
                saturated_at = good
                break
            bad = good  # broke on the long step: the answer lies below it, and short steps mislead here
            long_steps = True
            below = [r for r in held if r < bad]
            good = max(below) if below else None
            if good is not None:
                bisect()

    fm = {"max_rate": round(good, 1) if good is not None else None,
          "first_failing_rate": round(bad, 1) if bad is not None else None,
          "generator_bound_at": round(saturated_at, 1) if saturated_at is not None else None,
          "lower_bound_only": saturated_at is not None, "confirmed": confirmed,
          "precision": precision, "step_s": step_s, "steps": steps,
          "elapsed_s": round(time.monotonic() - t_begin, 1)}
    best_rate = round(good, 1) if good is not None else steps[0]["rate"]
    best, best_dir = results[best_rate]
    out = dict(best)
    out["find_max"] = fm
    if good is None:
        why = "the first step broke" if not held else "no rate that held a short step held its confirmation step"
        out["exit"] = {"code": 5, "reason": f"threshold_failed: no rate held ({why})"}
        if saturated_at is not None:
            out["exit"] = {"code": 1, "reason": "generator_saturated before any rate held; add --procs"}
    elif saturated_at is not None:
        out["exit"] = {"code": 1, "reason": f"generator_saturated at {saturated_at:g}/s: {good:g}/s is a lower bound; add --procs"}
    else:
        out["exit"] = {"code": 0, "reason": f"every threshold held up to {good:g}/s (broke at {bad:g}/s)"
                       + ("" if confirmed or bad is None else
                          f"; not confirmed: {MAX_CONFIRMS} longer steps broke, so treat it as an upper estimate")}
    for name in ("latency.hlog",):
        src = best_dir / name
        if src.exists():
            shutil.copyfile(src, run_dir / name)
    (run_dir / "findmax.json").write_text(json.dumps(fm, indent=1, sort_keys=True))
    tmp = run_dir / ".run.json.tmp"
    tmp.write_text(json.dumps(out, sort_keys=True))
    tmp.replace(run_dir / "run.json")
    try:
        from workbooks.loadtest import report

        made = report.build(run_dir)
        out.setdefault("files", {}).update({k: (Path(v).name if v else None) for k, v in made.items()
                                            if k in ("html", "png")})
    except Exception as e:  # the search stands even when the report cannot be drawn
        out["report_error"] = str(e)
    return out
