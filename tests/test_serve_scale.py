"""`wbx ops scale` / `drain` and `POST /api/ops/scale` against a real `wbx serve` pinned to one
CPU: no more workers than the machine holds, never no serving worker, unless forced; and a pool
forced down to no worker is served by its spare."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import httpx
import pytest

from pool_harness import wait_for
from serve_proc import ROOT, ServeProc
from workbooks.pool import endpoints as E
from workbooks.pool.client import PoolClient
from workbooks.supervisor import ControlClient


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    s = ServeProc(tmp_path_factory.mktemp("scale") / "data", "--workers", "1", "--spares", "1",
                  prefix=("taskset", "-c", "0"))  # one core: the limit is at most 4 workers
    try:
        with httpx.Client(timeout=10) as http:
            def up():
                assert s.proc.poll() is None, s.stderr_text()[-3000:]
                return http.get(s.public + "/readyz").status_code == 200
            wait_for(up, timeout=120, interval=0.1, what="wbx serve up")
        s.key = (s.data / "admin.key").read_text().strip()
        yield s
    finally:
        assert s.stop() == 0


def wbx(serve, *args):
    env = dict(os.environ, WB_DATA=str(serve.data))
    env.pop("WBX_AGENT", None)
    return subprocess.run([sys.executable, "-m", "workbooks", *args], capture_output=True, env=env, cwd=ROOT,
                          timeout=120)


def ctl(serve, op, **args):
    return ControlClient(E.supervisor_endpoint(serve.data), timeout=30).request(op, **args)


def workers(serve, group="worker"):
    return [c for c in ctl(serve, "status")["children"] if c["group"] == group and c["state"] == "running"]


def pool_worker(serve, child_id):
    return next(w for w in ctl(serve, "pool_stats")["workers"] if w["child_id"] == child_id)


def scale_http(serve, n, **extra):
    return httpx.post(serve.control + "/api/ops/scale", json={"group": "worker", "n": n, **extra},
                      headers={"Authorization": f"Bearer {serve.key}"}, timeout=120)


def test_scale_above_the_machines_limit_is_refused_by_cli_and_http_alike(serve):
    r = wbx(serve, "ops", "scale", "1000")
    assert r.returncode == 6, (r.returncode, r.stderr)
    err = json.loads(r.stderr)["error"]
    assert err["code"] == 6 and err["kind"] == "over_capacity", err
    limit = int(re.search(r"limit is (\d+)", err["message"]).group(1))
    assert "4 x 1 cores = 4" in err["message"] and 1 <= limit <= 4, err  # from this process's one core
    assert "--force" in err["hint"]
    over = limit + 1
    r = wbx(serve, "ops", "scale", str(over))
    assert r.returncode == 6 and f"limit is {limit}" in r.stderr.decode()
    h = scale_http(serve, over)
    assert h.status_code == 409, h.text
    body = h.json()["error"]
    assert body["code"] == "over_capacity" and f"limit is {limit}" in body["message"]
    assert len(workers(serve)) == 1  # nothing was started
    # forced, it goes above the limit, and back
    r = wbx(serve, "ops", "scale", str(over), "--force")
    assert r.returncode == 0, r.stderr
    assert len(workers(serve)) == over
    h = scale_http(serve, 1)
    assert h.status_code == 200, h.text
    assert [c["id"] for c in workers(serve)] == ["worker-1"]


def test_no_serving_worker_only_when_forced_and_then_the_spare_serves(serve):
    doc = "* served while drained\n"
    # the last serving worker: neither scaled to 0 nor drained without --force
    r = wbx(serve, "ops", "scale", "0")
    err = json.loads(r.stderr)["error"]
    assert r.returncode == 6 and err["kind"] == "no_serving_worker" and "--force" in err["hint"], err
    h = scale_http(serve, 0)
    assert h.status_code == 409 and h.json()["error"]["code"] == "no_serving_worker", h.text
    r = wbx(serve, "ops", "drain", "worker-1")
    assert r.returncode == 6 and "no worker serving" in r.stderr.decode(), r.stderr
    assert pool_worker(serve, "worker-1")["state"] in ("ready", "busy")

    # forced drain: the spare covers and answers
    assert wbx(serve, "ops", "drain", "worker-1", "--force").returncode == 0
    c = PoolClient(E.client_endpoint(serve.data))
    t0 = time.monotonic()
    assert c.call("parse_headlines", [doc], deadline_ms=5000).startswith(b"[")
    assert time.monotonic() - t0 < 2.0  # served, not a no_workers after waiting
    spare = pool_worker(serve, "spare-1")
    assert spare["covering"] == "no-worker" and spare["served"] >= 1
    assert wbx(serve, "ops", "drain", "worker-1", "--undo").returncode == 0
    wait_for(lambda: pool_worker(serve, "spare-1")["state"] == "standby", timeout=10, what="spare back on standby")

    # forced scale to 0: the worker goes, the spare serves, and steps back when a worker returns
    r = wbx(serve, "ops", "scale", "0", "--force")
    assert r.returncode == 0, r.stderr
    assert workers(serve) == []
    served = pool_worker(serve, "spare-1")["served"]
    assert c.call("lint", [doc], deadline_ms=5000).startswith(b"[")
    assert pool_worker(serve, "spare-1")["served"] == served + 1
    assert wbx(serve, "ops", "scale", "1").returncode == 0
    wait_for(lambda: pool_worker(serve, "spare-1")["state"] == "standby", timeout=10, what="spare back on standby")
    assert c.call("lint", [doc], deadline_ms=5000).startswith(b"[")
    assert pool_worker(serve, "spare-1")["served"] == served + 1  # the worker serves again
    c.close()
