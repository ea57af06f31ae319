"""GET /api/telemetry and /api/telemetry/:run on a real control plane, reading the index a real
indexer process writes; tenant isolation; answers while the indexer is down; /metrics figures
parsed with prometheus_client's own parser."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_telemetry_index import Indexer, new_run, wait_for


@pytest.fixture
def indexer(web):
    with Indexer(web.data_dir, interval=0.1) as ix:
        yield ix


def _get(web, path, key, tenant=None):
    return web.http.get(web.control + path, headers=web.auth(key, tenant))


def _until(web, key, run, **want):
    def check():
        r = _get(web, f"/api/telemetry/{run}", key)
        if r.status_code != 200:
            return None
        d = r.json()
        return d if d["index"]["source"] == "index" and all(d.get(k) == v for k, v in want.items()) else None

    return wait_for(check, what=f"{run} {want}")[0]


def _metrics(web) -> dict:
    r = web.http.get(web.control + "/metrics", headers=web.admin())
    assert r.status_code == 200, r.text
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_overview_and_one_run(web, indexer):
    tenant, key = web.new_tenant("tel")
    data = web.data_dir
    a, _, ra = new_run(data, tenant)
    for i in range(2):
        ra.step({"step": i, "tool": "shell", "output": "x", "exit_code": 0, "dur_ms": 100})
    ra.status("done", 2, result="ok")
    w, _, rw = new_run(data, tenant, prefix="wf")
    rw.step({"step": 0, "tool": "js:fetch", "args": {"in": None}, "output": "{}", "exit_code": 0, "dur_ms": 40})
    rw.step({"step": 1, "tool": "js:digest", "output": "", "exit_code": 1, "error": "trap: unreachable", "dur_ms": 3})
    rw.status("error", 2, result=None)
    _until(web, key, w, stage="error", tool_calls=2)
    time.sleep(0.05)
    b, _, rb = new_run(data, tenant)  # the most recently active run
    rb.step({"step": 0, "tool": "fetch", "output": "x", "exit_code": 0, "dur_ms": 7})
    _until(web, key, b, tool_calls=1)
    _until(web, key, a, stage="done", tool_calls=2)

    r = _get(web, "/api/telemetry", key)
    assert r.status_code == 200
    d = r.json()
    assert d["rollup"] == {"runs": 3, "with_errors": 1, "tool_calls": 5}
    assert [x["id"] for x in d["runs"]] == [b, w, a]  # newest activity first
    row = {x["id"]: x for x in d["runs"]}
    assert (row[w]["kind"], row[w]["stage"], row[w]["errors"], row[w]["total_ms"]) == ("workflow", "error", 1, 43)
    assert (row[a]["kind"], row[a]["stage"], row[a]["tool_calls"], row[a]["total_ms"]) == ("agent", "done", 2, 200)
    assert row[b]["stage"] == "running"
    assert d["index"]["live"] is True and d["index"]["age_s"] < 5

    r = _get(web, "/api/telemetry?limit=1", key)
    assert [x["id"] for x in r.json()["runs"]] == [b]
    assert r.json()["rollup"]["runs"] == 3  # the roll-up covers every run, not the page
    for bad in ("0", "1001", "x", "-1", "١"):
        r = _get(web, f"/api/telemetry?limit={bad}", key)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_limit", (bad, r.text)

    v = _get(web, f"/api/telemetry/{w}", key).json()
    assert v["stage"] == "error" and v["tool_calls"] == 2 and v["total_ms"] == 43
    assert v["errors"] == [{"step": 1, "tool": "js:digest", "exit_code": 1, "error": "trap: unreachable"}]
    assert v["recent"] == [{"step": 0, "tool": "js:fetch", "exit_code": 0, "dur_ms": 40},
                           {"step": 1, "tool": "js:digest", "exit_code": 1, "dur_ms": 3}]
    assert v["tasks"] == []


def test_tenants_are_isolated(web, indexer):
    t1, k1 = web.new_tenant("tela")
    t2, k2 = web.new_tenant("telb")
    rid, _, rec = new_run(web.data_dir, t1)
    rec.step({"step": 0, "tool": "shell", "output": "secret stuff", "exit_code": 0, "dur_ms": 1})
    _until(web, k1, rid, tool_calls=1)
    r = _get(web, f"/api/telemetry/{rid}", k2)  # same id, other tenant: not found, not forbidden
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert _get(web, "/api/telemetry", k2).json()["rollup"] == {"runs": 0, "with_errors": 0, "tool_calls": 0}
    assert _get(web, f"/api/telemetry/{rid}", k2, tenant=t1).status_code == 403  # a tenant key names its own only
    assert _get(web, f"/api/telemetry/{rid}", web.admin_key, tenant=t1).json()["tool_calls"] == 1
    assert _get(web, f"/api/telemetry/{rid}", web.admin_key, tenant=t2).status_code == 404
    assert web.http.get(web.control + f"/api/telemetry/{rid}").status_code == 401
    for bad in ("run-0", "run-x", "job-1", "run-1%2F..%2F..", "wf-" + "9" * 13):
        r = _get(web, f"/api/telemetry/{bad}", k1)
        assert r.status_code in (400, 404) and r.json()["error"]["code"] in ("bad_request", "not_found"), (bad, r.text)
    assert _get(web, "/api/telemetry/run-x", k1).status_code == 400


def test_answers_while_the_indexer_is_down(web):
    tenant, key = web.new_tenant("teld")
    data = web.data_dir
    rid, path, rec = new_run(data, tenant)
    rec.step({"step": 0, "tool": "shell", "output": "x", "exit_code": 0, "dur_ms": 5})
    with Indexer(data, interval=0.1):
        _until(web, key, rid, tool_calls=1)
    first = _get(web, "/api/telemetry", key).json()
    rec.step({"step": 1, "tool": "shell", "output": "x", "exit_code": 0, "dur_ms": 5})  # nobody indexes it
    time.sleep(0.3)
    later = _get(web, "/api/telemetry", key).json()
    assert later["rollup"]["tool_calls"] == 1  # what is indexed
    assert later["index"]["scanned_at"] == first["index"]["scanned_at"]
    assert later["index"]["age_s"] > first["index"]["age_s"]  # and how old that is
    # a run the index has never seen is read from its folder
    new, _, nrec = new_run(data, tenant, prefix="wf")
    nrec.step({"step": 0, "tool": "wat:add", "output": "3", "exit_code": 0, "dur_ms": 2})
    v = _get(web, f"/api/telemetry/{new}", key).json()
    assert (v["index"]["source"], v["tool_calls"], v["stage"]) == ("files", 1, "running")


def test_metrics(web, indexer):
    tenant, key = web.new_tenant("telm")
    data = web.data_dir
    lane = "tl" + uuid.uuid4().hex[:8]
    before = _metrics(web)
    runs = []
    for status, durs in (("done", [3, 40]), ("done", [2000]), ("error", [70])):
        rid, _, rec = new_run(data, tenant, prefix="wf")
        for i, d in enumerate(durs):
            rec.step({"step": i, "tool": f"{lane}:c{i}", "output": "", "exit_code": 0, "dur_ms": d})
        rec.status(status, len(durs))
        runs.append((rid, status, len(durs)))
    for rid, status, n in runs:
        _until(web, key, rid, stage=status, tool_calls=n)
    (data / "wb-runs").mkdir(exist_ok=True)
    sched = data / "wb-runs" / "schedule-status.json"
    # the scheduler's status file (workbooks.workflow.scheduler): one row per scheduled world
    sched.write_text(json.dumps({"policy": "once", "written_at": time.time(), "worlds": [
        {"tenant": tenant, "workbook": "digest", "world": "daily", "cron": "0 7 * * *", "kind": "cron",
         "last_lag_s": 1.25, "max_lag_s": 3.5, "fires": 2, "skipped": 0},
        {"tenant": tenant, "workbook": "digest", "world": "never", "cron": "0 7 * * *", "kind": "cron",
         "last_lag_s": None, "max_lag_s": None, "fires": 0, "skipped": 0}]}))
    try:
        after = _metrics(web)
    finally:
        sched.unlink()

    def runs_by(m, status):
        return m.get(("workbooks_runs", (("status", status),)), 0)

    assert runs_by(after, "done") - runs_by(before, "done") == 2
    assert runs_by(after, "error") - runs_by(before, "error") == 1

    def bucket(le):
        return after[("workbooks_step_seconds_bucket", (("lane", lane), ("le", le)))]

    assert bucket("0.005") == 1 and bucket("0.05") == 2 and bucket("0.1") == 3 and bucket("1.0") == 3
    assert bucket("2.5") == 4 and bucket("+Inf") == 4
    assert after[("workbooks_step_seconds_count", (("lane", lane),))] == 4
    assert after[("workbooks_step_seconds_sum", (("lane", lane),))] == pytest.approx(2.113)
    lag = {k: v for k, v in after.items() if k[0] == "workbooks_scheduler_lag_seconds"}
    assert lag == {("workbooks_scheduler_lag_seconds",
                    (("tenant", tenant), ("workbook", "digest"), ("world", "daily"))): 1.25}
    assert after[("workbooks_telemetry_index_age_seconds", ())] < 5
    assert web.http.get(web.control + "/metrics", headers=web.auth(key)).status_code == 403
