"""`runner.run` end to end with real generator processes and real ZeroMQ (the synthetic target: no
server, so what is measured is the runner's behaviour):

- issue 19 item 4: a process asked for twice what it can generate is flagged within 5 s and the
  run exits 1 `generator_saturated`; with `allow_saturated` it exits 0 and says generator_bound;
- item 6: thresholds that hold exit 0, a breach exits 5 with the measured value in run.json, and
  `abort_on_fail` (grace 2 s) stops the run within 2 s of the breach;
- nothing is left behind — no generator process, no socket directory — after a run, an abort,
  a generator killed mid-run, Ctrl-C (SIGINT) to the runner's process, and the runner killed
  outright (its generators follow it).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbooks.loadtest import plan as P
from workbooks.loadtest import runner
from workbooks.loadtest.targets import compile_fn

ROOT = Path(__file__).resolve().parents[1]


def _plan(synthetic: dict, **flags):
    flags = {"scrape": False, **flags}
    return P.build_plan({"target": "synthetic", "synthetic": synthetic}, flags)


def _generator_pids(parent: int | None = None) -> set[int]:
    """Live generator processes (optionally only the children of `parent`)."""
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            if b"workbooks.loadtest.generator" not in cmd:
                continue
            if parent is not None and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError, ValueError):
            continue
        if state != "Z":
            out.add(int(d.name))
    return out


def _alive(pids) -> list[int]:
    return [p for p in pids if Path(f"/proc/{p}").exists()
            and b"workbooks.loadtest.generator" in _read(Path(f"/proc/{p}/cmdline"))]


def _read(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError:
        return b""


def _socket_dirs(root: Path) -> set[Path]:
    """The coordinators' socket directories of every run under `root` (their generators log the endpoint)."""
    out = set()
    for log in root.rglob("generators.log"):
        for m in re.finditer(rb'"endpoint": "ipc://([^"]+)/coordinator.sock"', log.read_bytes()):
            out.add(Path(m.group(1).decode()))
    return out


def _local_pids(res: dict) -> list[int]:
    return [m["pid"] for m in res["generator"]["members"] if m["kind"] == "local"]


@pytest.fixture(autouse=True)
def _no_leftovers(monkeypatch, tmp_path):
    monkeypatch.setenv("WB_CHROMIUM", "/nonexistent-chromium")  # the report's png is tested with the report
    yield
    assert not [d for d in _socket_dirs(tmp_path) if d.exists()], "a socket directory was left behind"


class Seconds:
    """A consumer of the live view's interface: the series items and verdicts, with when they came."""

    def __init__(self):
        self.items: list[tuple[float, dict, dict]] = []

    def update(self, item: dict, verdict: dict) -> None:
        self.items.append((time.monotonic(), item, verdict))


# -- item 4: the generator checks itself --------------------------------------------------------------

def _costly_stream() -> tuple[dict, float]:
    """A synthetic target whose every request costs the generator ~0.25 ms of CPU (its latency
    expression is long), and a rate of at least twice what one process can then generate: the
    best of several timings of that expression alone bounds the process's capacity from above."""
    expr = "0*(" + "+".join(["k"] * 300) + ")"
    f = compile_fn(expr)
    best = 1.0
    for _ in range(40):  # many short rounds: the quickest is the one the shared box did not slow down
        t = time.perf_counter()
        for k in range(25):
            f(k)
        best = min(best, (time.perf_counter() - t) / 25)
        time.sleep(0.005)
    return {"fn": expr}, round(2.0 / best)


def test_a_process_asked_for_twice_its_capacity_is_flagged_within_5_s_and_exits_1(tmp_path):
    synthetic, rate = _costly_stream()
    live = Seconds()
    res = runner.run(_plan(synthetic, rate=str(rate), duration="3s", procs=1), tmp_path / "sat", live=live)
    assert res["exit"]["code"] == 1 and res["exit"]["reason"].startswith("generator_saturated"), \
        (rate, res["exit"], res["generator"]["verdict"], [(s["t"], s["gen_lag_p99_ms"], s["gen_cpu"]) for s in res["series"]])
    assert res["generator_bound"] is True
    verdict = res["generator"]["verdict"]
    assert verdict["generator_bound"] and verdict["member"] == "local-0" and "local-0" in verdict["reason"]
    flagged = [item["t"] for _, item, v in live.items if v.get("generator_bound")]
    assert flagged and flagged[0] <= 5, [(i["t"], v.get("worst_lag_p99_ms")) for _, i, v in live.items]
    assert verdict["since"] is not None and verdict["since"] <= 1
    assert res["lag"]["p99"] > 5
    on_disk = json.loads((tmp_path / "sat" / "run.json").read_text())
    assert on_disk["generator_bound"] is True and on_disk["exit"]["code"] == 1
    assert not _alive(_local_pids(res))

    res = runner.run(_plan(synthetic, rate=str(rate), duration="3s", procs=1, allow_saturated=True), tmp_path / "ok")
    assert res["exit"]["code"] == 0, res["exit"]
    assert res["generator_bound"] is True, \
        (rate, res["generator"]["verdict"], [(s["t"], s["gen_lag_p99_ms"], s["gen_cpu"]) for s in res["series"]])
    assert json.loads((tmp_path / "ok" / "run.json").read_text())["generator_bound"] is True
    assert not _alive(_local_pids(res))


def test_waiting_for_slow_last_requests_is_not_the_generator_falling_behind(tmp_path):
    # ten arrivals in the first second; the last one takes 6.5 s: the run drains for 6 s after the
    # schedule ended, which is the server's slowness, not lateness of the generator
    res = runner.run(_plan({"latency_ms": [1] * 9 + [6500]}, rate="10", duration="1s"), tmp_path / "slow")
    assert res["exit"] == {"code": 0, "reason": "ok"}, res["generator"]["verdict"]
    assert res["generator_bound"] is False
    assert res["latency"]["max"] >= 6500 and res["requests"]["ok"] == 10
    assert len(res["series"]) >= 7


def test_a_closed_model_run_is_stamped_as_omitting_queueing(tmp_path):
    plan = P.build_plan({"target": "synthetic", "synthetic": {"latency_ms": [10]}, "model": "closed",
                         "closed_concurrency": 4}, {"duration": "2s", "scrape": False, "procs": 2})
    res = runner.run(plan, tmp_path / "closed")
    assert res["model"] == "closed" and res["omits_queueing"] is True
    assert res["exit"]["code"] == 0, res["exit"]
    # 4 loops in all (2 per process) of ~10 ms for 2 s: at most ~800 requests, each timed from its own send
    assert 100 <= res["requests"]["ok"] <= 820 and res["rate"]["target"] is None
    assert sorted(m["totals"]["max_inflight_seen"] for m in res["generator"]["members"]) == [2, 2]
    assert res["latency"]["p50"] == pytest.approx(res["service"]["p50"], rel=0.2)

    from workbooks.errors import UsageError

    with pytest.raises(UsageError, match="closed_concurrency 1 is less than the 2 generator"):
        runner.run(P.build_plan({"target": "synthetic", "model": "closed", "closed_concurrency": 1},
                                {"duration": "1s", "scrape": False, "procs": 2}), tmp_path / "too-few")


# -- item 6: thresholds ----------------------------------------------------------------------------

def test_thresholds_that_hold_exit_0_and_a_breach_exits_5_with_the_value(tmp_path, monkeypatch):
    monkeypatch.delenv("WB_API_KEY", raising=False)
    res = runner.run(_plan({"latency_ms": [5]}, rate="100", duration="2s", scrape=True, metrics_url="http://127.0.0.1:9",
                           thresholds=["latency.p99<2s", "errors.rate<1%", "rate.achieved>=95%"]), tmp_path / "pass")
    # no key for /metrics: the run goes on without server figures and says why
    assert res["server"]["scraped"] is False and "API key" in res["server"]["note"]
    assert res["exit"] == {"code": 0, "reason": "every threshold held"}
    assert [t["ok"] for t in res["thresholds"]] == [True, True, True]
    assert 5 <= res["thresholds"][0]["value"] < 2000 and res["thresholds"][1]["value"] == 0
    assert res["thresholds"][2]["value"] == pytest.approx(1.0)
    assert res["requests"]["ok"] == 200 and res["rate"]["target"] == pytest.approx(100)

    # every 10th request answers 503: errors.rate is exactly 0.1; every one takes >= 20 ms
    res = runner.run(_plan({"latency_ms": [20], "error_every": 10}, rate="100", duration="2s",
                           thresholds=["latency.p50<5ms", "errors.rate<5%", "latency.p99<2s"]), tmp_path / "fail")
    assert res["exit"]["code"] == 5 and res["exit"]["reason"].startswith("threshold_failed: latency.p50<5ms")
    p50, errs, p99 = res["thresholds"]
    assert p50["ok"] is False and 20 <= p50["value"] < 2000 and p50["limit"] == 5
    assert errs["ok"] is False and errs["value"] == pytest.approx(0.1)
    assert p99["ok"] is True
    assert res["server"]["scraped"] is False and "--no-scrape" in res["server"]["note"]
    on_disk = json.loads((tmp_path / "fail" / "run.json").read_text())
    assert on_disk["thresholds"] == res["thresholds"] and on_disk["exit"]["code"] == 5
    assert on_disk["requests"]["by_error"] == {"http_503": 20} and on_disk["requests"]["errors"] == 20
    assert (tmp_path / "fail" / "latency.hlog").stat().st_size > 0
    assert not _alive(_local_pids(res))


def test_abort_on_fail_stops_the_run_within_2_s_of_the_breach_after_the_grace(tmp_path):
    live = Seconds()
    t_call = time.monotonic()
    res = runner.run(_plan({"latency_ms": [30]}, rate="100", duration="30s", procs=2, thresholds=["latency.p50<10ms"],
                           abort_on_fail=True, grace="2s"), tmp_path / "abort", live=live)
    took = time.monotonic() - t_call
    assert res["exit"]["code"] == 5, res["exit"]
    ab = res["aborted"]
    assert ab["expr"] == "latency.p50<10ms" and ab["value"] >= 30
    # not before the grace, and at the first second evaluated after it
    assert 2.0 <= ab["at_s"] <= 4.5, ab
    assert ab["stopped_s"] - ab["at_s"] <= 2.0, ab
    # the same from this side: the second the breach was found in, then the last one the run reported
    breach_at = next(w for w, item, _ in live.items if item["t"] == ab["second"])
    assert live.items[-1][0] - breach_at <= 2.0 + 0.5, [(round(w - breach_at, 2), i["t"]) for w, i, _ in live.items]
    assert took < 20, took  # a 30 s plan
    assert res["requests"]["intended"] < 800 and res["duration_s"] == ab["at_s"]
    assert res["thresholds"][0]["ok"] is False
    assert not _alive(_local_pids(res))


def test_a_target_a_generator_cannot_set_up_is_the_runs_error_with_its_kind(tmp_path):
    from workbooks.errors import UsageError

    with pytest.raises(UsageError) as ei:
        runner.run(_plan({"latency_ms": [1], "colour": "blue"}, rate="10", duration="1s", procs=2), tmp_path / "bad")
    assert "local-" in str(ei.value) and "colour" in str(ei.value) and ei.value.exit_code == 2
    assert not (tmp_path / "bad" / "run.json").exists()
    assert not _generator_pids(parent=os.getpid())


# -- no leftovers ----------------------------------------------------------------------------------

_SCRIPT = r"""
import json, sys
from workbooks.loadtest import plan as P, runner
p = P.build_plan({"target": "synthetic", "synthetic": {"latency_ms": [2]}},
                 {"rate": "50", "duration": "30s", "procs": 2, "scrape": False})
def second(item):
    print(json.dumps({"t": item["t"]}), flush=True)
res = runner.run(p, sys.argv[1], on_second=second)
print(json.dumps({"exit": res["exit"]}), flush=True)
sys.exit(res["exit"]["code"])
"""


def _start_runner(out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), WB_CHROMIUM="/nonexistent-chromium")
    return subprocess.Popen([sys.executable, "-c", _SCRIPT, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)


def _wait_second(p: subprocess.Popen, t: int) -> None:
    for raw in iter(p.stdout.readline, b""):
        if json.loads(raw).get("t") == t:
            return
    raise AssertionError(p.stderr.read().decode()[-3000:])


def _gone_soon(pids, timeout=5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _alive(pids)


def test_ctrl_c_to_the_runner_stops_the_run_writes_run_json_and_leaves_nothing(tmp_path):
    p = _start_runner(tmp_path / "int")
    try:
        _wait_second(p, 1)
        pids = _generator_pids(parent=p.pid)
        assert len(pids) == 2
        t = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=15)
        took = time.monotonic() - t
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err.decode()[-3000:]
    assert took < 5, took
    assert b"Traceback" not in err
    run = json.loads((tmp_path / "int" / "run.json").read_text())
    assert run["exit"] == {"code": 130, "reason": "interrupted"}
    assert run["requests"]["ok"] >= 50 and len(run["series"]) >= 2
    assert not _alive(pids), "generators left running"


def test_a_killed_generator_ends_the_run_with_exit_1_and_the_rest_is_reaped(tmp_path):
    p = _start_runner(tmp_path / "lost")
    try:
        _wait_second(p, 1)
        pids = sorted(_generator_pids(parent=p.pid))
        os.kill(pids[0], signal.SIGKILL)
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 1, err.decode()[-3000:]
    run = json.loads((tmp_path / "lost" / "run.json").read_text())
    assert run["exit"]["reason"].startswith("generator_lost") and str(pids[0]) in run["exit"]["reason"]
    assert not _alive(pids)


def test_a_generator_whose_coordinator_falls_silent_stops_after_5_s(tmp_path):
    """The coordinator's process lives on but stops answering (hung, or the network is cut): the
    generator, told nothing, stops by itself after 5 s of silence. The coordinator's side is played
    here with a real ROUTER socket speaking the generator protocol."""
    import zmq

    from workbooks.loadtest import generator as G

    endpoint = f"ipc://{tmp_path}/c.sock"
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    log = tmp_path / "gen.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop(G.PARENT_ENV, None)
    gen = subprocess.Popen([sys.executable, "-m", "workbooks.loadtest.generator", "--connect", endpoint],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env=env)
    try:
        def recv(kind, timeout=30):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if router.poll(200):
                    ident, raw = router.recv_multipart()
                    msg = G.unpack(raw)
                    if msg["type"] == kind:
                        return ident, msg
            raise AssertionError(f"no {kind}: " + log.read_text()[-2000:])

        ident, hello = recv("hello")
        assert hello["pid"] == gen.pid
        plan = _plan({"latency_ms": [1]}, rate="20", duration="60s")
        router.send_multipart([ident, G.pack({"type": "assign", "plan": plan.to_dict(), "member": 0, "members": 1})])
        recv("ready")
        router.send_multipart([ident, G.pack({"type": "start", "start_wall": time.time() + 0.2})])
        silent_from = time.monotonic()  # the last word it hears: no ping from here on
        _, tick = recv("tick", timeout=10)
        assert tick["t"] == 0 and tick["snapshots"][0]["counts"]["intended"] == 20
        rc = gen.wait(15)
        took = time.monotonic() - silent_from
    finally:
        if gen.poll() is None:
            gen.kill()
            gen.wait()
        router.close(0)
        ctx.term()
    assert rc == 3, log.read_text()[-2000:]
    assert 4.9 <= took <= 8.0, took
    assert "coordinator_gone" in log.read_text()


def test_generators_die_with_a_runner_killed_outright(tmp_path):
    p = _start_runner(tmp_path / "kill9")
    try:
        _wait_second(p, 0)
        pids = _generator_pids(parent=p.pid)
        assert len(pids) == 2
        p.kill()
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert not _gone_soon(pids), "generators outlived their coordinator"
