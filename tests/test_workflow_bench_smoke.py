"""load/workflow_bench.py really measures what it says, end to end, on a tiny budget.

One short run (wat lane only, a few pool runs): the wat filter builds and converts 1 MiB, the
diamond runs on every executor (alternating rounds), `wbx serve` comes up with 1 and then 2 runners and its broker saw
every step of every measured run; a lane whose toolchain is missing is reported with the reason,
not measured; nothing is left behind (processes, temp dirs), also when the bench is sent SIGTERM
while both services are running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_measures_every_part_and_leaves_nothing(tmp_path):
    out = tmp_path / "bench.json"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch), WB_RUSTC=str(tmp_path / "no-rustc"))
    env.pop("WBX_AGENT", None)
    runs = 4
    cp = subprocess.run([sys.executable, "load/workflow_bench.py", "--quick", "--lanes", "wat,rust", "--runs", str(runs),
                         "--clients", "2", "--dag-reps", "2", "--rounds", "2", "--json", str(out)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-3000:]
    res = json.loads(out.read_text())

    wat = res["lanes"]["wat"]
    assert wat["cold_build_ms"]["p50"] > 0 and wat["warm_step_ms"]["n"] == 20 and wat["mb_s"] > 0
    assert "rust" not in res["lanes"] and "no-rustc" in res["unavailable"]["rust"]
    assert "rust  unavailable" in cp.stdout and "no-rustc" in cp.stdout

    dag = {row["executor"]: row for row in res["dag"]}
    assert set(dag) == {"engine alone (no-op steps)", "LocalExecutor", "PoolStepExecutor, 1 runner",
                        "PoolStepExecutor, 2 runners"}
    assert all(row["steps"] == 100 and row["runs"] == 2 and row["wall_ms_per_step"]["p50"] > 0 for row in dag.values())

    assert [r["runners"] for r in res["runs"]] == [1, 2]
    for r in res["runs"]:
        assert r["runs"] == runs and r["runs_s"] > 0 and len(r["round_runs_s"]) == 2
        # the runner broker's own counters: every step of every measured run went through a runner
        assert sum(r["steps_per_runner"].values()) == 3 * runs, r["steps_per_runner"]
        assert len(r["steps_per_runner"]) == r["runners"]
    assert res["efficiency"] == round(res["runs"][1]["runs_s"] / (2 * res["runs"][0]["runs_s"]), 3)
    assert "scaling efficiency" in cp.stdout

    assert list(scratch.iterdir()) == [], "the bench left temp files"


def _processes_mentioning(needle: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if needle.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_sigterm_mid_run_stops_both_services_and_removes_everything(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch))
    env.pop("WBX_AGENT", None)
    p = subprocess.Popen([sys.executable, "load/workflow_bench.py", "--quick", "--lanes", "wat", "--runs", "100000",
                          "--rounds", "1", "--dag-reps", "1", "--json", str(tmp_path / "never.json")],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL)
    try:
        seen = []
        for line in p.stdout:  # both services are up and runs are going through them
            seen.append(line)
            if "3-step js runs" in line:
                break
        else:
            raise AssertionError("the bench ended before its runs: " + "".join(seen) + p.stderr.read()[-3000:])
        assert len(_processes_mentioning(str(scratch))) >= 2, "both wbx serve should be running now"
        p.terminate()
        out, err = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 143, (p.returncode, err[-3000:])
    assert "interrupted" in err and "Traceback" not in err, err[-3000:]
    assert _processes_mentioning(str(scratch)) == []
    assert list(scratch.iterdir()) == [] and not (tmp_path / "never.json").exists()
