"""`--find-max`'s search (workbooks.loadtest.findmax) against a server whose limit is known: the
step runner is injected, so the doubling, the bisection, the precision and the stops on a
generator-bound step are checked exactly (the real runs are load/loadtest_bench.py's figure)."""

from __future__ import annotations

import json

import pytest

from workbooks.errors import UsageError
from workbooks.loadtest import plan as P
from workbooks.loadtest.findmax import find_max


def _plan(**kw):
    return P.build_plan({}, {"target": "page", "url": "http://127.0.0.1:9", "rate": "50",
                             "thresholds": ["latency.p99<50ms"], **kw})


def _server(limit: float, saturate_at: float | None = None, long_limit: float | None = None):
    """A step runner: every threshold holds up to `limit` req/s (up to `long_limit` in a step longer
    than 1 s, the confirmation: a knee where short steps hold by luck); the generator gives out at
    `saturate_at`."""
    rates = []

    def run(plan, out_dir, on_second=None, live=None):
        (rate,) = {s.start for s in plan.stages}
        rates.append(rate)
        assert plan.abort_on_fail and plan.grace <= 2.0  # failing steps are cut short
        secs = sum(s.duration for s in plan.stages)
        ok = rate <= (long_limit if long_limit is not None and secs > 1 else limit)
        out_dir.mkdir(parents=True, exist_ok=True)
        res = {"thresholds": [{"expr": "latency.p99<50ms", "ok": ok, "value": 10 if ok else 90}],
               "rate": {"achieved": rate}, "latency": {"p99": 10 if ok else 90},
               "generator_bound": saturate_at is not None and rate >= saturate_at}
        (out_dir / "run.json").write_text(json.dumps(res))
        return res

    run.rates = rates
    return run


def test_doubles_then_bisects_to_within_the_precision(tmp_path):
    run = _server(730.0)
    out = find_max(_plan(), tmp_path / "fm", run=run, step_s=1, precision=0.05, cooldown=0)
    fm = out["find_max"]
    assert run.rates[:5] == [50, 100, 200, 400, 800]  # doubling until the first break
    assert fm["max_rate"] <= 730 < fm["first_failing_rate"] <= fm["max_rate"] * 1.05
    assert fm["max_rate"] >= 730 / 1.05
    assert out["exit"]["code"] == 0 and len(fm["steps"]) == len(run.rates)
    saved = json.loads((tmp_path / "fm" / "run.json").read_text())
    assert saved["find_max"]["max_rate"] == fm["max_rate"]
    assert (tmp_path / "fm" / "findmax.json").exists() and len(list((tmp_path / "fm" / "steps").iterdir())) == len(run.rates)


def test_the_answer_is_confirmed_by_a_longer_step_and_the_search_goes_below_a_lucky_one(tmp_path):
    """Short steps hold up to 800/s, but 800/s breaks when run twice as long (the true limit, for
    a longer run, is 700/s): find-max does not report the lucky rate; it bisects again below it
    and reports a rate that held its own long step, within the precision of 700."""
    run = _server(800.0, long_limit=700.0)
    out = find_max(_plan(), tmp_path / "fm", run=run, step_s=1, precision=0.05, cooldown=0)
    fm = out["find_max"]
    confirms = [s for s in fm["steps"] if s["confirm"]]
    assert confirms and confirms[0]["rate"] == 800 and confirms[0]["outcome"] == "broke"
    first = fm["steps"].index(confirms[0])
    assert all(s["seconds"] == 1 for s in fm["steps"][:first])  # short steps until one misled
    assert all(s["seconds"] == 2 for s in fm["steps"][first:])  # long ones from then on
    assert any(s["rate"] == fm["max_rate"] and s["outcome"] == "held" and s["seconds"] == 2 for s in fm["steps"])
    assert fm["confirmed"] is True and 700 / 1.05 <= fm["max_rate"] <= 700 < fm["first_failing_rate"]
    assert out["exit"]["code"] == 0


def test_a_rate_that_never_holds_a_long_step_is_not_reported(tmp_path):
    run = _server(800.0, long_limit=10.0)
    out = find_max(_plan(), tmp_path / "fm", run=run, step_s=1, precision=0.05, cooldown=0)
    fm = out["find_max"]
    assert fm["confirmed"] is False and out["exit"]["code"] == 0
    confirms = [s for s in fm["steps"] if s["confirm"]]
    assert len(confirms) == 3 and all(s["outcome"] == "broke" for s in confirms)  # MAX_CONFIRMS, then it stops
    # what it reports is below every rate whose long step broke, and the exit says it is unconfirmed
    assert fm["max_rate"] is not None and fm["max_rate"] < min(s["rate"] for s in confirms)
    assert "not confirmed" in out["exit"]["reason"]


def test_a_first_step_that_breaks_exits_5(tmp_path):
    out = find_max(_plan(), tmp_path / "fm", run=_server(10.0), step_s=1, cooldown=0)
    assert out["find_max"]["max_rate"] is None and out["exit"]["code"] == 5


def test_a_generator_bound_step_ends_the_search_with_a_lower_bound(tmp_path):
    run = _server(5000.0, saturate_at=400.0)
    out = find_max(_plan(), tmp_path / "fm", run=run, step_s=1, cooldown=0)
    fm = out["find_max"]
    assert run.rates == [50, 100, 200, 400]  # no rate above the generator's limit is tried
    assert fm["max_rate"] == 200 and fm["lower_bound_only"] and out["exit"]["code"] == 1
    assert "procs" in out["exit"]["reason"]


def test_find_max_needs_a_threshold(tmp_path):
    plan = P.build_plan({}, {"target": "page", "url": "http://127.0.0.1:9", "rate": "50"})
    plan.thresholds = []
    with pytest.raises(UsageError, match="threshold"):
        find_max(plan, tmp_path / "fm", run=_server(100.0), step_s=1)
