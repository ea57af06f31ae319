"""Starting `wbx serve`: refusals that say what is wrong at once (exit 78), the restart intensity
an operator sets, and readiness that means the demo is served."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from pool_harness import wait_for
from serve_proc import ROOT, ServeProc
from workbooks.pool import endpoints as E
from workbooks.supervisor import ControlClient


def _wbx(*args, env=None, timeout=60):
    e = dict(os.environ)
    e.pop("WBX_AGENT", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "workbooks", *args], capture_output=True, env=e, cwd=ROOT,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_a_second_serve_on_the_same_data_dir_exits_78_at_once(tmp_path):
    data = tmp_path / "data"
    first = ServeProc(data, "--workers", "1", "--spares", "0", web=False)
    try:
        wait_for(lambda: ControlClient(E.supervisor_endpoint(data), timeout=1).request("status"), timeout=60,
                 what="first serve up")
        t0 = time.monotonic()
        r = _wbx("serve", "--data", str(data), "--workers", "1", "--no-web", timeout=30)
        took = time.monotonic() - t0
        assert r.returncode == 78, (r.returncode, r.stderr[-2000:])
        assert took < 3.0, took
        line = _one_line(r.stderr.decode())
        assert str(data) in line and "already running" in line and "--data" in line, line
        assert r.stdout == b""
        # the first one is untouched and still answers
        st = ControlClient(E.supervisor_endpoint(data), timeout=5).request("status")
        assert st["supervisor"]["pid"] == first.proc.pid
    finally:
        assert first.stop() == 0


def test_two_serves_started_together_on_one_data_dir_leave_one_running(tmp_path):
    """The data dir is locked from the first check on, through the slow part of start-up
    (compiling the kernel), so the one that lost finds out at once, not after its warm-up."""
    data = tmp_path / "data"
    a = ServeProc(data, "--workers", "1", "--spares", "0", web=False)
    b = ServeProc(data, "--workers", "1", "--spares", "0", web=False)
    try:
        wait_for(lambda: a.proc.poll() is not None or b.proc.poll() is not None, timeout=30, interval=0.02,
                 what="one of them to give up")
        loser, winner = (a, b) if a.proc.poll() is not None else (b, a)
        assert loser.wait(10) == 78, loser.stderr_text()
        assert time.monotonic() - loser.started < 3.0
        assert "already running" in _one_line(loser.stderr_text())
        st = wait_for(lambda: ControlClient(E.supervisor_endpoint(data), timeout=1).request("status"), timeout=60,
                      what="the other one up")
        assert st["supervisor"]["pid"] == winner.proc.pid
    finally:
        assert a.stop() in (0, 78) and b.stop() in (0, 78)


def test_a_port_in_use_exits_78_at_once_naming_it(tmp_path):
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    port = squatter.getsockname()[1]
    try:
        t0 = time.monotonic()
        serve = ServeProc(tmp_path / "data", "--workers", "1", "--spares", "0", public_port=port)
        rc = serve.wait(30)
        took = time.monotonic() - t0
        assert rc == 78, (rc, serve.stderr_text()[-2000:])
        assert took < 3.0, took
        line = _one_line(serve.stderr_text())
        assert f"127.0.0.1:{port}" in line and "public plane" in line and "--public" in line, line
        assert serve.lines == []  # nothing was started, so nothing logged
        assert not os.path.exists(E.supervisor_endpoint(tmp_path / "data")[6:])
        serve.stop()
    finally:
        squatter.close()


def test_restart_intensity_is_set_by_flags_and_documented(tmp_path):
    from workbooks import serve as S

    help_text = _wbx("serve", "--help").stdout.decode()
    assert f"(default {S.DEFAULT_MAX_RESTARTS})" in help_text and f"(default {S.DEFAULT_MAX_SECONDS:g})" in help_text
    readme = (ROOT / "README.md").read_text()
    assert f"{S.DEFAULT_MAX_RESTARTS} restarts in {S.DEFAULT_MAX_SECONDS:g} s" in readme

    serve = ServeProc(tmp_path / "data", "--workers", "1", "--spares", "0", "--max-restarts", "1",
                      "--max-seconds", "30", web=False)
    try:
        ctl = ControlClient(E.supervisor_endpoint(serve.data), timeout=5)

        def worker_pid():
            c = next(c for c in ctl.request("status")["children"] if c["id"] == "worker-1")
            return c["pid"] if c["state"] == "running" else None

        st = wait_for(lambda: ctl.request("status"), timeout=60, what="serve up")
        assert st["supervisor"]["max_restarts"] == 1 and st["supervisor"]["max_seconds"] == 30
        first = wait_for(worker_pid, timeout=60, what="worker-1 running")
        os.kill(first, signal.SIGKILL)  # restart 1 of 1: allowed
        second = wait_for(lambda: (p := worker_pid()) not in (None, first) and p, timeout=30, what="worker-1 restarted")
        os.kill(second, signal.SIGKILL)  # restart 2 within 30 s: over the intensity
        assert serve.wait(30) == 70
    finally:
        serve.stop()
    gave_up = [json.loads(ln) for ln in serve.lines if b"supervisor_give_up" in ln]
    assert gave_up and gave_up[0]["max_restarts"] == 1


def test_public_plane_is_healthy_only_when_the_demo_is_served(tmp_path):
    serve = ServeProc(tmp_path / "data", "--workers", "1", "--spares", "0")
    try:
        host = {"Host": f"demo.localhost:{serve.pport}"}
        seen = {}
        with httpx.Client(timeout=5) as http:
            deadline = time.time() + 90
            while len(seen) < 2:
                assert serve.proc.poll() is None and time.time() < deadline, serve.stderr_text()[-3000:]
                for path in ("/healthz", "/readyz"):
                    if path in seen:
                        continue
                    try:
                        r = http.get(serve.public + path)
                    except httpx.HTTPError:
                        continue
                    if r.status_code == 200:
                        # the first healthy answer: the demo must be there right now
                        page = http.get(serve.public + "/", headers=host)
                        seen[path] = page.status_code
                        assert page.status_code == 200, (path, page.status_code, page.text[:300])
                        assert "<html" in page.text.lower()
                time.sleep(0.01)
    finally:
        assert serve.stop() == 0
    assert seen == {"/healthz": 200, "/readyz": 200}
    recs = [json.loads(ln) for ln in serve.lines]
    order = [r["id"] for r in recs if r.get("event") == "child_ready"]
    assert order.index("first-run") < order.index("public-1"), order
