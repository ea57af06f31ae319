"""`wbx loadtest` thresholds (parse every metric family and unit, evaluate on a run.json-shaped
summary, bad expressions refused with the metric list) and the generator self-check Judge."""

from __future__ import annotations

import random

import pytest

from workbooks.errors import UsageError
from workbooks.loadtest import hist as H
from workbooks.loadtest import thresholds as T
from workbooks.loadtest.selfcheck import Judge


# -- parse ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("expr,metric,op,limit,unit", [
    ("latency.p99<50ms", "latency.p99", "<", 50.0, "ms"),
    ("latency.p99 < 50", "latency.p99", "<", 50.0, "ms"),
    ("  service.p50 <= 500us ", "service.p50", "<=", 0.5, "ms"),
    ("ttfb.max < 1.5s", "ttfb.max", "<", 1500.0, "ms"),
    ("conn_wait.p99.9 < 2ms", "conn_wait.p99.9", "<", 2.0, "ms"),
    ("lag.p99.99<5ms", "lag.p99.99", "<", 5.0, "ms"),
    ("latency.mean > 0.1ms", "latency.mean", ">", 0.1, "ms"),
    ("latency.p90 != 7µs", "latency.p90", "!=", 0.007, "ms"),
    ("latency{op=render}.p99 < 50ms", "latency{op=render}.p99", "<", 50.0, "ms"),
    ("latency{ size = XL }.p99 < 2s", "latency{size=XL}.p99", "<", 2000.0, "ms"),
    ("errors.rate < 0.1%", "errors.rate", "<", 0.001, ""),
    ("errors.rate<0.001", "errors.rate", "<", 0.001, ""),
    ("errors{op=query}.count == 0", "errors{op=query}.count", "==", 0.0, ""),
    ("dropped.rate <= 1%", "dropped.rate", "<=", 0.01, ""),
    ("dropped.count == 0", "dropped.count", "==", 0.0, ""),
    ("rate.achieved >= 99%", "rate.achieved", ">=", 0.99, ""),
    ("rate.achieved >= 400", "rate.achieved", ">=", 400.0, "/s"),
    ("rate.achieved >= 400/s", "rate.achieved", ">=", 400.0, "/s"),
    ("server.overloaded == 0", "server.overloaded", "==", 0.0, ""),
    ("server.deadline <= 3", "server.deadline", "<=", 3.0, ""),
    ("server.restarts == 0", "server.restarts", "==", 0.0, ""),
    ("server.http_5xx < 10", "server.http_5xx", "<", 10.0, ""),
])
def test_parse(expr, metric, op, limit, unit):
    th = T.parse(expr)
    assert (th.metric, th.op, th.unit) == (metric, op, unit)
    assert th.limit == pytest.approx(limit)
    assert th.expr == expr.strip()


@pytest.mark.parametrize("expr", [
    "", "latency", "latency.p99", "latency.p99 <", "latency.p42 < 5ms", "latency.p99 < 5 parsecs",
    "latency.p99 = 5ms", "latency.p99 << 5ms", "latency.p99 < -5ms", "latency.p99 < 1e999", "lag{op=x}.p99 < 5ms",
    "service{op=render}.p99 < 5ms", "latency{op=render,size=S}.p99 < 5ms", "latency{colour=red}.p99 < 5ms",
    "latency{op=a b}.p99 < 5ms", "latency{op=render,op=query}.p99<5ms", "errors.rate < 150%", "errors.rate < 2",
    "errors.count < 1.5", "errors.p99 < 5ms", "errors{size=S}.rate < 1%", "rate.target > 5", "rate.achieved > 9 fish",
    "server.cpu < 1", "server{op=x}.restarts == 0", "throughput.p99 < 5ms", "latency.p99 < 5ms; rm -rf /",
    "x" * 400, 42, None,
])
def test_bad_expressions_list_the_metrics(expr):
    with pytest.raises(UsageError) as e:
        T.parse(expr)
    for family in ("latency.", "errors.rate", "dropped.count", "rate.achieved", "server.overloaded", "lag."):
        assert family in e.value.hint
    assert "threshold" in e.value.message


# -- evaluate on a summary built from real recorded data ------------------------------------------
def _summary():
    rec = H.Recorder(0.0)
    rng = random.Random(8)
    for k in range(4000):
        t = k / 400
        op = "render" if k % 4 else "query"
        size = "S" if k % 3 else "XL"
        service = rng.uniform(0.001, 0.004) + (0.5 if size == "XL" and k % 50 == 0 else 0)
        if k % 400 in (7, 8):  # 10 render and 10 query failures
            rec.fail(op, size, t, t, t + service, "http_503", 503)
        else:
            rec.ok(op, size, t, t, t + service / 2, t + service, 200, 1000)
        rec.lag(t, t + 0.0001)
    for k in range(12):
        rec.dropped("render", "S", 5 + k / 100)
    m = H.Merger()
    for s in rec.take_all():
        m.add(s, "0")
    c = m.counts_total()
    done = c["ok"] + c["errors"]
    return {
        **{metric: H.percentiles(m.total(metric)) for metric in H.METRICS},
        "by_op": {op: {"latency": H.percentiles(m.total("latency", op=op)), **c["by_op"][op]} for op in m.ops()},
        "by_size": {s: {"latency": H.percentiles(m.total("latency", size=s))} for s in m.sizes()},
        "errors": {"rate": c["errors"] / done, "count": c["errors"]},
        "dropped": {"rate": c["dropped"] / c["intended"], "count": c["dropped"]},
        "rate": {"target": 400.0, "achieved": c["ok"] / 10.0, "achieved_ratio": c["ok"] / 10.0 / 400.0},
        "server": {"overloaded": 0, "deadline": 2, "restarts": 0, "http_5xx": 20, "scraped": True, "note": None},
    }, m


def test_evaluate_measures_each_family_against_the_recorded_figures():
    summary, m = _summary()
    p99 = H.percentiles(m.total("latency"))["p99"]
    xl_p99 = H.percentiles(m.total("latency", size="XL"))["p99"]
    assert xl_p99 > 400 > p99  # the XL stalls dominate XL's p99 and stay out of the overall p99
    exprs = [
        f"latency.p99 < {p99 + 0.01}ms", f"latency.p99 < {p99}ms", f"latency.p99 <= {p99}ms",
        "latency{size=S}.p99 < 10ms", "latency{size=XL}.p99 < 10ms", "latency{op=query}.max >= 400ms",
        "service.p50 < 5ms", "ttfb.p50 < 2.5ms", "conn_wait.max == 0", "lag.p99 < 0.2ms",
        "errors.rate < 1%", "errors.rate < 0.1%", "errors.count == 20", "errors{op=query}.count > 0",
        "errors{op=render}.rate < 1%", "dropped.count == 12", "dropped.rate < 0.1%",
        "rate.achieved >= 99%", "rate.achieved >= 390/s", "server.overloaded == 0", "server.deadline == 0",
        "server.http_5xx != 0",
    ]
    got = {r["expr"]: r for r in T.evaluate(exprs, summary)}
    want_ok = {
        f"latency.p99 < {p99 + 0.01}ms": True, f"latency.p99 < {p99}ms": False, f"latency.p99 <= {p99}ms": True,
        "latency{size=S}.p99 < 10ms": True, "latency{size=XL}.p99 < 10ms": False,
        "latency{op=query}.max >= 400ms": True, "service.p50 < 5ms": True, "ttfb.p50 < 2.5ms": True,
        "conn_wait.max == 0": True, "lag.p99 < 0.2ms": True, "errors.rate < 1%": True, "errors.rate < 0.1%": False,
        "errors.count == 20": True, "errors{op=query}.count > 0": True, "errors{op=render}.rate < 1%": True,
        "dropped.count == 12": True, "dropped.rate < 0.1%": False, "rate.achieved >= 99%": True,
        "rate.achieved >= 390/s": True, "server.overloaded == 0": True, "server.deadline == 0": False,
        "server.http_5xx != 0": True,
    }
    assert {e: r["ok"] for e, r in got.items()} == want_ok
    r = got[f"latency.p99 < {p99}ms"]
    assert r["value"] == p99 and r["limit"] == pytest.approx(p99) and r["unit"] == "ms" and r["op"] == "<"
    assert got["errors.count == 20"]["value"] == 20
    assert got["errors.rate < 0.1%"]["value"] == pytest.approx(20 / 4000)
    assert got["rate.achieved >= 99%"]["value"] == pytest.approx(3980 / 10 / 400)
    assert "0.5%" in got["errors.rate < 0.1%"]["display"]
    for row in got.values():
        assert set(row) >= {"expr", "metric", "op", "limit", "value", "unit", "ok"}


def test_missing_values_do_not_hold_and_say_why():
    summary, _ = _summary()
    summary["server"] = {"scraped": False, "note": "GET /metrics: connection refused"}
    summary["ttfb"] = H.percentiles(None)
    rows = T.evaluate(["server.overloaded == 0", "ttfb.p99 < 1s", "latency{op=deploy}.p99 < 1s",
                       "errors{op=deploy}.rate < 1%"], summary)
    assert [r["ok"] for r in rows] == [False] * 4
    assert all(r["value"] is None for r in rows)
    assert "not scraped" in rows[0]["why"] and "connection refused" in rows[0]["why"]
    assert "no ttfb sample" in rows[1]["why"]
    assert "by_op.deploy" in rows[2]["why"] and "deploy" in rows[3]["why"]
    assert T.evaluate(["latency.p99 < 1s"], {})[0]["why"] == "run.json has no latency.p99"


# -- the generator self-check ---------------------------------------------------------------------
def test_judge_flags_five_consecutive_seconds_of_one_member():
    j = Judge()
    for s in range(20):
        j.observe("0", s, 0.4, 0.30)
        j.observe("1", s, 7.0 if 6 <= s < 10 else 0.5, 0.40)  # 4 bad seconds: not enough
    assert not j.saturated and j.verdict()["generator_bound"] is False
    assert j.verdict()["worst_lag_p99_ms"] == 7.0 and j.verdict()["worst_cpu"] == 0.4
    for s in range(20, 30):
        j.observe("0", s, 0.4, 0.30)
        j.observe("1", s, 0.5, 0.95 if s >= 22 else 0.5)
    v = j.verdict()
    assert j.saturated and v["generator_bound"] and v["member"] == "1" and v["since"] == 22
    assert "CPU above 85%" in v["reason"] and "lag" not in v["reason"].split("generator 1:")[1].split(" for ")[0]
    assert v["worst_cpu"] == 0.95 and v["members"]["0"]["worst_cpu"] == 0.3


def test_judge_lag_limit_streaks_and_gaps():
    j = Judge(lag_p99_ms=5.0, cpu=0.85, window_s=5)
    # over the limit, but a missing second breaks the streak
    for s in (0, 1, 2, 3, 5, 6, 7, 8):
        j.observe("a", s, 9.0, 0.1)
    assert not j.saturated
    j.observe("a", 9, 5.0, 0.1)  # exactly at the limit is not over it
    assert not j.saturated
    for s in range(10, 15):
        j.observe("a", s, 12.5, None)  # no CPU reading: the lag alone decides
    v = j.verdict()
    assert v["generator_bound"] and v["since"] == 10 and "lag p99 above 5 ms (worst 12.5 ms)" in v["reason"]
    # once flagged, a run stays flagged
    for s in range(15, 30):
        j.observe("a", s, 0.1, 0.1)
    assert j.verdict()["generator_bound"] and j.verdict()["since"] == 10


def test_judge_ignores_repeats_and_junk():
    j = Judge(window_s=3)
    for _ in range(5):
        j.observe("m", 1, 50.0, 0.99)  # the same second five times is one second
    j.observe("m", 0, 50.0, 0.99)  # an older second
    j.observe("m", "2", 50.0, 0.99)
    j.observe("m", 2, float("nan"), None)
    assert not j.saturated
    assert j.verdict()["members"]["m"]["seconds"] == 2
    assert Judge().verdict() == {"generator_bound": False, "reason": None, "since": None, "member": None,
                                 "worst_lag_p99_ms": None, "worst_cpu": None,
                                 "limits": {"lag_p99_ms": 5.0, "cpu": 0.85, "window_s": 5}, "members": {}}
