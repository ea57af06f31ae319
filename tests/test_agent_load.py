"""Fifty agent runs do not hurt the control plane (issue 11, "Benchmarks"), as a test.

The real service (`wbx serve`: supervisor, pool, agents process, control plane) with the fake model
server (`tests/fake_llm.py`, its own process, OpenAI wire over HTTP) answering every turn after 1 s.
On one keep-alive connection, 300 `GET /healthz` interleaved with 60 small deploys (`PUT
/api/workbooks/<id>`, two ids alternating, every body new) are spread over at least 3 s, four
times: idle; twice back to back while 50 runs are active (each checked to be running, and the model
to have been asked by every one of them, before and after those windows; the model keeps getting
requests throughout them); and idle again once the runs are cancelled and their ledgers sealed.

Assertion, for both healthz and deploys: loaded p99 <= max(2 x idle p99, idle p99 + FLOOR), where
loaded p99 is the smaller of the two loaded windows' and idle p99 the larger of the two idle
windows' (they bracket the loaded ones), so one burst of a neighbour on this shared box does not
decide it while a control plane the runs really slow down fails both windows; FLOOR = 15 ms for
healthz, 40 ms for deploys: the 2x is the issue's target, the floor keeps a scheduler hiccup on a
shared 2-core box (a few ms on a ~2 ms request, tens of ms on a ~20 ms git commit) from deciding it. Afterwards every run is finished
(cancelled, or done if it got there first) with its ledger sealed, and `wbx serve` leaves no process
behind. The same measurement, larger and with CPU per process, is `load/agent_bench.py`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_spec = importlib.util.spec_from_file_location("agent_bench", ROOT / "load" / "agent_bench.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

RUNS = 50
DELAY_S = 1.0
FLOOR_MS = {"healthz_ms": 15.0, "deploy_ms": 40.0}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with bench.Stack(tmp_path_factory.mktemp("agent-load"), max_runs=RUNS + 8) as s:
        yield s


def test_fifty_active_runs_keep_control_plane_p99_within_twice_idle(stack):
    res = bench.bench_control(stack, runs=RUNS, delay_s=DELAY_S, n_health=300, deploy_every=5,
                              min_seconds=3.0, idle_after=True, loaded_windows=2, fsync_probe=False)
    # all 50 were really active through the window
    assert res["active_before"] == {"running": RUNS, "asked": RUNS, "model_requests": res["active_before"]["model_requests"]}
    assert res["active_after"]["running"] == RUNS, res["not_running_after"]
    assert res["model_requests_in_window"] >= 0.5 * RUNS * res["window_s"] / DELAY_S, res
    # and every one of them finished afterwards
    assert sum(res["final"].values()) == RUNS and set(res["final"]) <= {"done", "cancelled"}, res["final"]
    assert res["sealed"] == RUNS
    assert res["loaded"]["healthz_ms"]["n"] == 300 and res["loaded"]["deploy_ms"]["n"] == 60
    for what, floor in FLOOR_MS.items():
        idle = max(res["idle"][what]["p99"], res["idle_after"][what]["p99"])
        loaded = min(res["loaded"][what]["p99"], res["loaded_2"][what]["p99"])
        bound = max(2 * idle, idle + floor)
        assert loaded <= bound, f"{what}: loaded p99 {loaded} ms > {bound:.1f} ms (idle p99 {idle} ms): {res}"


def test_concurrent_zero_delay_runs_each_do_their_three_steps(stack):
    res = bench.bench_runs(stack, clients=4, n=8, label="t4")
    assert res["runs"] == 8 and res["runs_s"] > 0 and res["steps_per_run"] == 3
    assert set(res["tool_dur_ms"]) == {"shell", "vfs_write", "done"}
    assert all(d["n"] == 8 for d in res["tool_dur_ms"].values())
    # each run's folder holds what its vfs_write wrote
    written = sorted((q.read_text() for q in (stack.data / "wb-runs" / "dev").glob("run-*/out-*.txt")))
    assert written == sorted(f"run {i}: ih\n" for i in range(8))
