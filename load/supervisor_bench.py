"""Supervisor figures: how fast a killed child is seen and replaced, control round trips, idle CPU.

    .venv/bin/python load/supervisor_bench.py [--quick]

Children are `sleep` processes so the numbers are the supervisor's own cost (pidfd wake-up, spawn),
not a child's start-up. Times come from the supervisor's JSON log (kill -> `child_exited` ->
`child_started`), so no polling inflates them. Prints a table; writes load/results/supervisor_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbooks.supervisor import ControlClient  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def ts(event) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def run_supervisor(tmp: Path, children: int, env: dict):
    ep = f"ipc://{tmp}/sup.sock"
    cfg = {"children": [{"id": f"c{i}", "argv": ["sleep", "1000"], "shutdown": 500} for i in range(children)],
           "max_restarts": 100000, "max_seconds": 1, "control_endpoint": ep}
    (tmp / "cfg.json").write_text(json.dumps(cfg))
    log = open(tmp / "sup.log", "wb")
    p = subprocess.Popen([sys.executable, "-m", "workbooks.supervisor", str(tmp / "cfg.json")],
                         stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=str(ROOT))
    c = ControlClient(ep, timeout=10)
    deadline = time.monotonic() + 20
    while True:
        try:
            st = c.request("status", _timeout=0.5)
            if all(ch["state"] == "running" for ch in st["children"]):
                break
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("supervisor did not start")
        time.sleep(0.05)
    return p, c, log


def events(tmp: Path):
    out = []
    for line in (tmp / "sup.log").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def restart_latency(kills: int, env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="supbench-") as d:
        tmp = Path(d)
        p, c, log = run_supervisor(tmp, 2, env)
        try:
            kill_times = []
            for _ in range(kills):
                child = c.request("status")["children"][0]
                t = time.time()
                os.kill(child["pid"], signal.SIGKILL)
                kill_times.append((child["pid"], t))
                while c.request("status")["children"][0]["pid"] in (None, child["pid"]):
                    time.sleep(0.002)
                time.sleep(0.02)
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(30)
            log.close()
        ev = events(tmp)
        exited = {e["child_pid"]: ts(e) for e in ev if e.get("event") == "child_exited" and e.get("id") == "c0"}
        started = [ts(e) for e in ev if e.get("event") == "child_started" and e.get("id") == "c0"]
        seen, spawn = [], []
        for pid, t_kill in kill_times:
            t_exit = exited[pid]
            t_new = min(s for s in started if s >= t_exit)
            seen.append((t_exit - t_kill) * 1000)
            spawn.append((t_new - t_exit) * 1000)
        total = [a + b for a, b in zip(seen, spawn)]
        return {"kills": kills,
                "exit_seen_ms": {"p50": pct(seen, 50), "p99": pct(seen, 99)},
                "respawn_ms": {"p50": pct(spawn, 50), "p99": pct(spawn, 99)},
                "kill_to_respawn_ms": {"p50": pct(total, 50), "p99": pct(total, 99)}}


def control_and_idle(n: int, children: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="supbench-") as d:
        tmp = Path(d)
        p, c, log = run_supervisor(tmp, children, {})
        try:
            rt = []
            for _ in range(n):
                t0 = time.perf_counter()
                c.request("status")
                rt.append((time.perf_counter() - t0) * 1000)

            def ticks():
                f = Path(f"/proc/{p.pid}/stat").read_text()
                f = f[f.rindex(")") + 2:].split()
                return int(f[11]) + int(f[12])

            t0, c0 = time.monotonic(), ticks()
            time.sleep(2.0)
            cpu = (ticks() - c0) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0) * 100
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(30)
            log.close()
        return {"status_round_trip_ms": {"p50": pct(rt, 50), "p99": pct(rt, 99), "n": n},
                "idle_cpu_percent": round(cpu, 2), "children": children}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ns = ap.parse_args()
    kills = 15 if ns.quick else 60
    res = {
        "restart_setpriv": restart_latency(kills, {}),
        "restart_preexec": restart_latency(kills, {"WB_SUPERVISOR_NO_SETPRIV": "1"}),
        "control": control_and_idle(100 if ns.quick else 500, 16),
        "cores": os.cpu_count(),
        "load_avg": os.getloadavg(),
    }
    rows = [("kill -> exit seen (pidfd)", res["restart_setpriv"]["exit_seen_ms"]),
            ("exit seen -> respawned (setpriv)", res["restart_setpriv"]["respawn_ms"]),
            ("exit seen -> respawned (preexec fork)", res["restart_preexec"]["respawn_ms"]),
            ("kill -> respawned (setpriv)", res["restart_setpriv"]["kill_to_respawn_ms"]),
            ("control `status` round trip (REQ)", res["control"]["status_round_trip_ms"])]
    print(f"{'measure':42} {'p50 ms':>8} {'p99 ms':>8}")
    for name, v in rows:
        print(f"{name:42} {v['p50']:8.2f} {v['p99']:8.2f}")
    print(f"{'idle supervisor CPU, 16 children':42} {res['control']['idle_cpu_percent']:7.2f}%")
    print(f"(load average {res['load_avg'][0]:.1f} on {res['cores']} cores)")
    out = ROOT / "load" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "supervisor_bench.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
