"""`wbx loadtest` end to end against a real `wbx serve`: the CLI process from start to exit.

- the stall drill (issue 19, item 1): 400 req/s at the demo page, the public-plane process stopped
  for 1.0 s at t ~ 4 s: open-model latency shows the stall (share over 100 ms ~ 10 %, p99 ~ 1 s)
  while the generator's own lag stays low and the run is not flagged;
- `--quick` passes against a local serve in under a minute (item 9);
- the verbs' contracts: usage errors exit 2 with a hint, `report` rebuilds, `compare` exits 5 on
  a regression, the key never lands in the run directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from pool_harness import wait_for
from serve_proc import ROOT, ServeProc
from workbooks.pool import endpoints as E
from workbooks.supervisor import ControlClient


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    s = ServeProc(tmp_path_factory.mktemp("lt") / "data", "--workers", "2")
    try:
        with httpx.Client(timeout=10) as http:
            def up():
                assert s.proc.poll() is None, s.stderr_text()[-3000:]
                return (http.get(s.public + "/readyz").status_code == 200
                        and http.get(s.public + "/", headers={"Host": "demo.localhost"}).status_code == 200)
            wait_for(up, timeout=120, interval=0.1, what="wbx serve up with the demo")
        s.key = (s.data / "admin.key").read_text().strip()
        yield s
    finally:
        assert s.stop() == 0


def wbx(serve, *args, timeout=120, env=None, **kw):
    e = dict(os.environ, WB_DATA=str(serve.data))
    e.pop("WBX_AGENT", None)
    e.pop("WB_API_KEY", None)
    e.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "workbooks", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=e, cwd=ROOT, **kw)


def finish(p, timeout=120):
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out.decode(), err.decode()


def public_pid(serve) -> int:
    st = ControlClient(E.supervisor_endpoint(serve.data), timeout=30).request("status")
    return next(c["pid"] for c in st["children"] if c["group"] == "public" and c["state"] == "running")


def share_over(run_dir, ms: float) -> float:
    """Share of requests whose latency (done - intended) exceeded `ms`, from the run's latency.hlog."""
    from workbooks.loadtest import hist

    total = None
    for tag, _s, _e, h in hist.read_hlog(run_dir / "latency.hlog"):
        if tag and tag.startswith("latency|"):
            if total is None:
                total = hist.new()
            total.add(h)
    assert total is not None and total.get_total_count() > 0
    below = sum(c for v, c in ((it.value_iterated_to, it.count_at_value_iterated_to)
                               for it in total.get_recorded_iterator()) if v <= ms * 1000)
    return 1 - below / total.get_total_count()


def test_the_stall_drill_shows_the_stall_and_not_the_generator(serve, tmp_path):
    out = tmp_path / "stall"
    p = wbx(serve, "loadtest", "run", "--url", serve.public, "--host", "demo.localhost", "--path", "/",
            "--rate", "400", "--duration", "10s", "--out", str(out), "--no-scrape")
    pid = public_pid(serve)
    stopped = {}

    def drill():
        for raw in iter(p.stdout.readline, b""):
            line = json.loads(raw)
            if line.get("event") == "second" and line.get("t") == 3 and "at" not in stopped:
                os.kill(pid, signal.SIGSTOP)
                stopped["at"] = time.monotonic()
                time.sleep(1.0)
                os.kill(pid, signal.SIGCONT)
            lines.append(line)

    lines: list = []
    t = threading.Thread(target=drill, daemon=True)
    t.start()
    try:
        p.wait(timeout=90)
    finally:
        os.kill(pid, signal.SIGCONT)
    t.join(10)
    err = p.stderr.read().decode()
    assert "at" in stopped, (lines, err[-2000:])
    assert p.returncode == 0, err[-3000:]
    run = json.loads((out / "run.json").read_text())
    over = share_over(out, 100)
    # 10 % of the arrivals fell in the stop; the plane then drains ~400 queued requests, and the
    # arrivals during that drain wait too: 9.5-11 % on a quiet box (load/loadtest_bench.py reports
    # it), more while a loaded box drains slowly; a closed loop would have shown ~0 %
    assert 0.095 <= over <= 0.13, (over, run["latency"])
    assert 850 <= run["latency"]["p99"] <= 1050, run["latency"]
    assert run["lag"]["p99"] < 5, run["lag"]
    assert run["generator_bound"] is False
    assert run["requests"]["dropped"] == 0 and run["requests"]["errors"] == 0
    # a closed loop would have hidden it: the server-side time of the same requests stays small
    assert run["service"]["p50"] < 50, run["service"]
    final = lines[-1]
    assert final.get("run_dir") == str(out) and final["latency"]["p99"] == run["latency"]["p99"]


def test_quick_passes_against_a_local_serve_in_under_a_minute(serve, tmp_path):
    t0 = time.monotonic()
    p = wbx(serve, "loadtest", "run", "--quick", "--url", serve.public, "--host", "demo.localhost",
            "--metrics-url", serve.control, "--out", str(tmp_path / "q"))
    rc, out, err = finish(p)
    took = time.monotonic() - t0
    assert rc == 0, (out[-2000:], err[-3000:])
    assert took < 60, took
    run = json.loads((tmp_path / "q" / "run.json").read_text())
    assert all(t["ok"] for t in run["thresholds"]) and len(run["thresholds"]) == 3
    assert run["requests"]["ok"] > 500
    assert run["server"]["scraped"] is True, run["server"]
    assert any((s.get("server") or {}).get("http") for s in run["series"]), "server figures on the time axis"
    html = (tmp_path / "q" / "report.html").read_text()
    assert "<svg" in html and "http://" not in html.split("</head>")[0].lower().replace('xmlns="http://www.w3.org/2000/svg"', "")
    files = b"".join(f.read_bytes() for f in (tmp_path / "q").rglob("*") if f.is_file())
    assert serve.key.encode() not in files, "the API key must never be written to the run directory"


def test_a_threshold_breach_exits_5_with_the_value(serve, tmp_path):
    p = wbx(serve, "loadtest", "run", "--url", serve.public, "--host", "demo.localhost", "--path", "/",
            "--rate", "50", "--duration", "2s", "--threshold", "latency.p50<1us", "--no-scrape",
            "--out", str(tmp_path / "b"))
    rc, out, err = finish(p)
    assert rc == 5, (out[-2000:], err[-2000:])
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    (th,) = run["thresholds"]
    assert th["ok"] is False and th["value"] > 0.001
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["exit"]["code"] == 5


@pytest.mark.parametrize("args, needle", [
    (["--rate", "fast"], "rate"),
    (["--stages", "10s:"], "stages"),
    (["--threshold", "latency.p42<1ms"], "latency"),
    (["--target", "page", "--duration", "-3s", "--rate", "10"], "duration"),
])
def test_bad_arguments_exit_2_with_a_hint(serve, tmp_path, args, needle):
    p = wbx(serve, "--json", "loadtest", "run", "--url", serve.public, "--out", str(tmp_path / "x"), *args)
    rc, out, err = finish(p, timeout=30)
    assert rc == 2, (out, err)
    env = json.loads(out)
    assert env["ok"] is False and env["error"]["code"] == 2
    assert needle in (env["error"]["message"] + env["error"].get("hint", "")).lower()
    assert not (tmp_path / "x" / "run.json").exists()


def test_an_unreachable_target_is_reported_not_hung(serve, tmp_path):
    from workbooks.web_control.launch import free_port

    t0 = time.monotonic()
    p = wbx(serve, "loadtest", "run", "--url", f"http://127.0.0.1:{free_port()}", "--path", "/",
            "--rate", "20", "--duration", "2s", "--no-scrape", "--threshold", "errors.rate<1%",
            "--out", str(tmp_path / "u"))
    rc, out, err = finish(p, timeout=60)
    assert time.monotonic() - t0 < 30
    assert rc == 3, (rc, out[-1000:], err[-2000:])
    assert "failed to connect" in err and "hint" in err
    run = json.loads((tmp_path / "u" / "run.json").read_text())  # the run is still on record
    assert run["requests"]["errors"] == run["requests"]["intended"] > 0
    assert set(run["requests"]["by_error"]) == {"connect"}


def test_report_rebuilds_and_compare_flags_a_regression(serve, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, extra in ((a, []), (b, [])):
        rc, out, err = finish(wbx(serve, "loadtest", "run", "--url", serve.public, "--host", "demo.localhost",
                                  "--path", "/", "--rate", "100", "--duration", "2s", "--no-scrape", "--out", str(d), *extra))
        assert rc == 0, err[-2000:]
    (a / "report.html").unlink()
    rc, out, err = finish(wbx(serve, "loadtest", "report", str(a)))
    assert rc == 0, err
    assert (a / "report.html").stat().st_size > 1000
    # a baseline twice as fast as the run is a regression at 10 %
    run_b = json.loads((b / "run.json").read_text())
    base = json.loads(json.dumps(run_b))
    for k in ("p50", "p90", "p99", "p99.9", "max"):
        base["latency"][k] = run_b["latency"][k] / 2
    (tmp_path / "base.json").write_text(json.dumps(base))
    rc, out, err = finish(wbx(serve, "loadtest", "compare", str(tmp_path / "base.json"), str(b)))
    assert rc == 5, (out, err)
    rc, out, err = finish(wbx(serve, "loadtest", "compare", str(b), str(b)))
    assert rc == 0, (out, err)
    rc, out, err = finish(wbx(serve, "loadtest", "report", str(tmp_path / "nope")))
    assert rc == 4 and "run.json" in err
