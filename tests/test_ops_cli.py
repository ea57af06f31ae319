"""`wbx serve` and `wbx ops` as an operator uses them: real processes, real sockets."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import read_pty_to_end
from pool_harness import ROOT, Serve, alive, descendants
from workbooks.pool import endpoints as E
from workbooks.pool.client import PoolClient, PoolError


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    s = Serve(tmp_path_factory.mktemp("ops"), workers=2)
    yield s
    s.stop()


def wbx(*args, env_extra=None, timeout=30):
    env = dict(os.environ)
    env.pop("WBX_AGENT", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "workbooks", *args], capture_output=True, env=env, timeout=timeout,
                          cwd=ROOT)


@pytest.mark.parametrize("verb", [["status"], ["restart", "worker-1"], ["scale", "3"], ["drain", "worker-1"], ["metrics"]])
def test_ops_without_a_running_supervisor_exit_3_with_a_hint(tmp_path, verb):
    r = wbx("ops", *verb, "--data", str(tmp_path / "nothing-here"))
    assert r.returncode == 3, (r.stdout, r.stderr)
    err = json.loads(r.stderr)["error"]
    assert err["code"] == 3 and err["kind"] == "unreachable" and "wbx serve" in err["hint"]


def test_status_json_lists_every_child_with_pool_figures(serve):
    PoolClient(E.client_endpoint(serve.data)).call("lint", ["* one"])
    r = serve.wbx("ops", "status")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    ids = [c["id"] for c in st["children"]]
    assert ids == ["broker", "worker-1", "worker-2", "spare-1"]
    for c in st["children"]:
        assert {"id", "pid", "state", "uptime_s", "restarts", "last_exit"} <= set(c)
        assert c["state"] == "running" and alive(c["pid"])
    for c in st["children"][1:]:
        p = c["pool"]
        assert {"served", "in_flight", "last_heartbeat_at", "rss_bytes", "state", "role", "covering"} <= set(p)
        assert p["rss_bytes"] > 1 << 20 or p["last_heartbeat_age_s"] < 1.5  # memory arrives with the first heartbeat
    assert sum(c["pool"]["served"] for c in st["children"][1:3]) >= 1
    spare = st["children"][3]["pool"]  # a standby: registered and watched, given no work
    assert (spare["role"], spare["state"], spare["covering"], spare["served"]) == ("spare", "standby", None, 0)
    assert st["pool"]["spares"]["standby"] == 1
    # --json wraps the same data in the envelope
    env = json.loads(serve.wbx("--json", "ops", "status").stdout)
    assert env["ok"] is True and [c["id"] for c in env["data"]["children"]] == ids


def test_status_on_a_tty_is_a_table(serve):
    master, slave = pty.openpty()
    env = dict(serve.env, NO_COLOR="1")
    p = subprocess.Popen([sys.executable, "-m", "workbooks", "ops", "status"], stdout=slave, stderr=slave, env=env, cwd=ROOT)
    os.close(slave)
    out = read_pty_to_end(master)
    os.close(master)
    assert p.wait(30) == 0
    text = out.decode()
    assert re.search(r"^ID\s+PID\s+STATE\s+UP\s+RESTARTS\s+SERVED\s+INFL\s+HB\s+MEM\s+LAST EXIT", text, re.M), text
    assert re.search(r"^worker-1\s+\d+\s+running", text, re.M), text
    assert re.search(r"^spare-1\s+\d+\s+standby", text, re.M), text  # registered, given no work
    assert not text.lstrip().startswith("{")


def test_metrics_are_prometheus_text(serve):
    c = PoolClient(E.client_endpoint(serve.data))
    c.call("render", ["* a"])
    with pytest.raises(PoolError):
        c.call("lint", [b"\xff"])
    c.call("render", ["* big\n" + "text " * 40000])  # 200 KB: its body goes through shared memory
    r = serve.wbx("ops", "metrics")  # stdout is a pipe: Prometheus text, not JSON
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}  # a real exposition parser
    assert families["wb_pool_request_duration_seconds"].type == "histogram"
    assert families["wb_pool_workers_target"].samples[0].value == 2
    render_inf = [s for s in families["wb_pool_request_duration_seconds"].samples
                  if s.name.endswith("_bucket") and s.labels == {"op": "render", "le": "+Inf"}]
    assert render_inf and render_inf[0].value >= 2
    for needle in ("wb_pool_workers_target 2", 'wb_pool_workers_current{state="ready"}', "wb_pool_queue_depth 0",
                   'wb_pool_request_duration_seconds_bucket{op="render",le="+Inf"}', 'wb_pool_errors_total{code="bad_request"} ',
                   "# TYPE wb_supervisor_restarts_total counter", "# TYPE wb_pool_request_duration_seconds histogram"):
        assert needle in text, needle
    assert int(re.search(r"^wb_pool_bulk_requests_total (\d+)$", text, re.M).group(1)) >= 1
    status = json.loads(serve.wbx("--json", "ops", "status").stdout)["data"]
    assert status["pool"]["bulk"]["dir"].startswith(os.environ["WB_POOL_BULK_ROOT"])
    # every sample line parses as `name{labels} value`
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert re.match(r'^[a-z_:][a-z0-9_:]*(\{[^}]*\})? [-+0-9.eInf]+$', line), line
    # --json: the envelope, with the text and the content type as data
    env = json.loads(serve.wbx("--json", "ops", "metrics").stdout)
    assert env["ok"] is True and env["verb"] == "ops metrics"
    assert env["data"]["content_type"].startswith("text/plain; version=0.0.4")
    assert {f.name for f in text_string_to_metric_families(env["data"]["text"])} >= {"wb_pool_queue_depth"}


def test_a_second_serve_on_the_same_data_dir_is_refused(serve):
    r = subprocess.run([sys.executable, "-m", "workbooks", "serve", "--data", str(serve.data), "--workers", "1"],
                       capture_output=True, env=serve.env, timeout=60, cwd=ROOT)
    assert r.returncode == 78
    assert b"already running for data dir" in r.stderr and r.stdout == b""
    serve.wait_ready(2)  # the running one is untouched


def test_bad_usage_is_exit_2(serve):
    assert serve.wbx("ops", "scale", "-1").returncode == 2
    assert serve.wbx("ops", "scale", "lots").returncode == 2
    r = serve.wbx("ops", "restart", "no-such-child")
    assert r.returncode == 4, r.stderr


def test_sigterm_stops_everything_cleanly(tmp_path):
    s = Serve(tmp_path, workers=2)
    pids = descendants(s.proc.pid)
    assert len(pids) >= 3  # broker + 2 workers
    c = PoolClient(E.client_endpoint(s.data))
    assert c.call("lint", ["* up"]).startswith(b"[")
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(20) == 0
    for pid in pids:
        assert not alive(pid), pid
    assert not os.path.exists(E.supervisor_endpoint(s.data)[len("ipc://"):])
    log = s.log()
    # workers stop before the broker (reverse start order), each said goodbye
    assert log.index('"worker_stopped"') < log.index('"broker_stopping"')
    s.stop()


def test_status_table_shows_a_spare_covering_a_lost_worker():
    """What an operator sees while a spare stands in for a worker that died (the window is too
    short to catch on a live pool, so the broker's and supervisor's snapshots are given)."""
    import time

    from workbooks.cli.ops_verbs import _status_table, merge_status
    from workbooks.cli.output import Style

    now = time.time()
    status = {"supervisor": {"pid": 1, "uptime_s": 5, "restarts_in_window": 1, "max_restarts": 10, "max_seconds": 5},
              "children": [
                  {"id": "worker-1", "pid": 11, "state": "starting", "uptime_s": 0.05, "restarts": 1, "group": "worker",
                   "last_exit": {"reason": "killed by SIGKILL", "at": now - 0.05}},
                  {"id": "spare-1", "pid": 12, "state": "running", "uptime_s": 5, "restarts": 0, "group": "spare",
                   "last_exit": None}]}
    pool = {"workers": [{"child_id": "spare-1", "pid": 12, "state": "busy", "served": 3, "in_flight": 1,
                         "last_heartbeat_age_s": 0.2, "rss_bytes": 50 << 20, "role": "spare", "covering": "worker-1"}],
            "queue_depth": 0, "max_queue": 256, "errors": {}, "retries": 1, "lost_recent": [],
            "spares": {"standby": 0, "covering": {"spare-1": "worker-1"}, "uncovered": [], "promotions_total": 1,
                       "promotions_recent": [{"at": now - 0.04, "spare": "spare-1", "covering": "worker-1"}]}}
    d = merge_status(status, pool)
    spare = next(c for c in d["children"] if c["id"] == "spare-1")
    assert spare["pool"]["covering"] == "worker-1" and d["pool"]["spares"]["promotions_total"] == 1
    text = _status_table(d, Style(False))
    assert re.search(r"^spare-1\s+12\s+covers worker-1\s", text, re.M), text
    assert re.search(r"^spare promotions 1; spare-1 covered worker-1", text, re.M), text
