"""Workers dying and going silent under a real `wbx serve`: callers never notice."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from pool_harness import Serve, alive, wait_for
from workbooks.pool.client import PoolError


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    s = Serve(tmp_path_factory.mktemp("serve"), workers=2, heartbeat_ms=400)
    yield s
    s.stop()


class Stream:
    """A few client threads sending renders back to back until stopped."""

    def __init__(self, serve, threads: int = 3):
        self.serve = serve
        self.ok = 0
        self.failures: list = []
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, i: int) -> None:
        c = self.serve.client()
        n = 0
        while not self.stop_flag.is_set():
            n += 1
            try:
                c.call("parse_headlines", [f"* stream {i} request {n}\n"], deadline_ms=10000)
                with self.lock:
                    self.ok += 1
            except PoolError as e:
                with self.lock:
                    self.failures.append((e.code, e.message))
        c.close()

    def finish(self) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(30)


def worker_child(serve, cid="worker-1"):
    return serve.child(cid)


def test_kill_9_mid_stream_loses_nothing_and_status_shows_why(serve):
    stream = Stream(serve)
    try:
        wait_for(lambda: stream.ok > 50, what="requests flowing")
        victim = worker_child(serve)
        os.kill(victim["pid"], signal.SIGKILL)
        wait_for(lambda: (c := worker_child(serve))["pid"] not in (None, victim["pid"]) and c["state"] == "running",
                 what="worker-1 replaced")
        before = stream.ok
        wait_for(lambda: stream.ok > before + 50, what="requests flowing after the restart")
    finally:
        stream.finish()
    assert stream.failures == []
    r = serve.wbx("ops", "status")  # not a TTY: JSON
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    w1 = next(c for c in st["children"] if c["id"] == "worker-1")
    assert w1["restarts"] >= 1
    assert w1["last_exit"]["reason"] == "killed by SIGKILL" and w1["last_exit"]["signal"] == 9
    assert w1["pid"] != victim["pid"] and w1["pool"]["state"] in ("ready", "busy")
    assert any(ev["pid"] == victim["pid"] for ev in st["pool"]["workers_lost"])
    # The standby covered worker-1 while it restarted, then went back to standby.
    assert any(ev["covering"] == "worker-1" and ev["spare"] == "spare-1" for ev in st["pool"]["spares"]["promotions_recent"])
    serve.wait_ready(2)
    spare = next(c for c in json.loads(serve.wbx("ops", "status").stdout)["children"] if c["id"] == "spare-1")
    assert spare["pool"]["state"] == "standby" and spare["pool"]["covering"] is None
    metrics = serve.ctl("metrics")["text"]
    assert 'wb_supervisor_restarts_total{reason="killed by SIGKILL"}' in metrics
    assert re.search(r"^wb_pool_spare_promotions_total [1-9]", metrics, re.M), metrics


def test_broker_crash_workers_reregister_and_clients_carry_on(serve):
    serve.wait_ready(2)
    c = serve.client()
    assert c.call("lint", ["* before"]).startswith(b"[")
    broker = serve.child("broker")
    workers = {ch["pid"] for ch in serve.status()["children"] if ch["group"] == "worker"}
    os.kill(broker["pid"], signal.SIGKILL)
    wait_for(lambda: serve.child("broker")["pid"] not in (None, broker["pid"]), what="broker restarted")
    serve.wait_ready(2)  # the same worker processes announced themselves to the new broker
    assert {ch["pid"] for ch in serve.status()["children"] if ch["group"] == "worker"} == workers
    assert c.call("lint", ["* after"], deadline_ms=5000).startswith(b"[")  # same client socket, reconnected
    assert serve.child("broker")["last_exit"]["reason"] == "killed by SIGKILL"


def test_a_silent_worker_is_detected_killed_and_replaced(serve):
    serve.wait_ready(2)
    victim = worker_child(serve, "worker-2")
    os.kill(victim["pid"], signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        # requests keep succeeding on the other worker meanwhile
        c = serve.client()
        for i in range(20):
            c.call("lint", [f"* {i}"])
        wait_for(lambda: worker_child(serve, "worker-2")["pid"] not in (None, victim["pid"]), timeout=10,
                 what="silent worker replaced")
        detected = time.monotonic() - t0
    finally:
        if alive(victim["pid"]):
            os.kill(victim["pid"], signal.SIGCONT)
    assert not alive(victim["pid"]), "the silent worker was not killed"
    assert detected < 8.0  # 3 missed heartbeats of 400 ms, plus the kill and the restart
    w2 = worker_child(serve, "worker-2")
    assert w2["last_exit"]["reason"] == "missed heartbeats", w2["last_exit"]
    lost = serve.pool()["lost_recent"]
    assert any(ev["pid"] == victim["pid"] and ev["reason"] == "missed_heartbeats" for ev in lost)
    serve.wait_ready(2)
    assert c.call("lint", ["* after"]).startswith(b"[")


def test_ops_restart_under_load_loses_no_request(serve):
    serve.wait_ready(2)
    stream = Stream(serve, threads=4)
    try:
        wait_for(lambda: stream.ok > 30, what="requests flowing")
        old = worker_child(serve, "worker-1")
        r = serve.wbx("ops", "restart", "worker-1")
        assert r.returncode == 0, r.stderr
        new = json.loads(r.stdout)
        assert new["pid"] != old["pid"] and new["state"] == "running"
        assert not alive(old["pid"])
        before = stream.ok
        wait_for(lambda: stream.ok > before + 30, what="requests flowing after restart")
    finally:
        stream.finish()
    assert stream.failures == []
    st = worker_child(serve, "worker-1")
    assert st["last_exit"]["reason"] == "normal"  # drained and exited cleanly, not killed


def test_scale_up_and_down_under_load(serve):
    serve.wait_ready(2)
    stream = Stream(serve, threads=3)
    try:
        r = serve.wbx("ops", "scale", "3")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["started"] == ["worker-3"]
        serve.wait_ready(3)
        wait_for(lambda: any(w["child_id"] == "worker-3" and w["served"] > 0 for w in serve.pool()["workers"]),
                 what="the new worker serves")
        r = serve.wbx("ops", "scale", "1")
        assert r.returncode == 0, r.stderr
        assert sorted(json.loads(r.stdout)["stopped"]) == ["worker-2", "worker-3"]
        serve.wait_ready(1)
        before = stream.ok
        wait_for(lambda: stream.ok > before + 20, what="requests flowing on one worker")
    finally:
        stream.finish()
    assert stream.failures == []
    assert [c["id"] for c in serve.status()["children"] if c["group"] == "worker"] == ["worker-1"]
    r = serve.wbx("ops", "scale", "2")
    assert r.returncode == 0
    serve.wait_ready(2)


def test_drain_stops_routing_to_a_worker(serve):
    serve.wait_ready(2)
    r = serve.wbx("ops", "drain", "worker-2")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: next(w for w in serve.pool()["workers"] if w["child_id"] == "worker-2")["state"] == "draining")
    served = next(w for w in serve.pool()["workers"] if w["child_id"] == "worker-2")["served"]
    c = serve.client()
    for i in range(30):
        c.call("lint", [f"* {i}"])
    assert next(w for w in serve.pool()["workers"] if w["child_id"] == "worker-2")["served"] == served
    st = json.loads(serve.wbx("ops", "status").stdout)
    assert next(ch for ch in st["children"] if ch["id"] == "worker-2")["pool"]["state"] == "draining"
    r = serve.wbx("ops", "drain", "worker-2", "--undo")
    assert r.returncode == 0
    wait_for(lambda: next(w for w in serve.pool()["workers"] if w["child_id"] == "worker-2")["state"] == "ready")
    r = serve.wbx("ops", "drain", "no-such-worker")
    assert r.returncode == 4 and b"no worker" in r.stderr


def test_restarting_the_broker_finishes_accepted_requests(serve):
    """SIGTERM to the broker: it refuses new work (typed, retryable) but finishes what it took."""
    from workbooks.pool.client import PoolClient

    serve.wait_ready(2)
    demo = (Path(__file__).resolve().parent.parent / "workbooks" / "samples" / "demo.org").read_text()
    doc = demo * 3000  # ~3 MB: a render of tens of ms, long enough to be seen in flight
    result = {}

    def slow():
        try:
            result["value"] = PoolClient(serve.client_endpoint).call("render", [doc], deadline_ms=20000)
        except PoolError as e:
            result["error"] = e

    t = threading.Thread(target=slow)
    t.start()
    wait_for(lambda: any(w["in_flight"] for w in serve.pool()["workers"]), interval=0.005, what="render in flight")
    old = serve.child("broker")["pid"]
    serve.ctl("restart", id="broker")
    t.join(30)
    assert "value" in result, result
    assert result["value"].lstrip().startswith(b"<")
    assert serve.child("broker")["pid"] != old
    serve.wait_ready(2)
    assert serve.child("broker")["last_exit"]["reason"] == "normal"
