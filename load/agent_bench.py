"""Agent-run figures (issue 11, "Benchmarks"): table + load/results/agent_bench.json.

    .venv/bin/python load/agent_bench.py [--quick] [--json PATH]

Starts the whole service (`wbx serve`: supervisor, pool, agents process, control plane) in a temp
data dir on free loopback ports, with the scripted fake model server (`tests/fake_llm.py`, a
process of its own speaking the OpenAI wire over real HTTP) as its model, and measures in one run:

1. Runs per second, zero model delay: every run is three model turns (a `shell` step
   `echo hi | rev`, a `vfs_write`, then `done`), C concurrent clients (1 and 8), N runs each. A
   client POSTs /api/run and follows the run's SSE stream to its `done` frame, then starts the next.
2. Step latency: per run, wall time from POST to the `done` frame divided by its steps (the model
   answers at once, so this is loop + tools + loopback model round trips + records), p50/p99; and
   the tools' own time (`dur_ms` of every step in `_steps.jsonl`), p50/p99 per tool.
3. The control plane under agent load: p50/p99 of `GET /healthz` and of a small deploy
   (`PUT /api/workbooks/<id>`, alternating ids, each body new), interleaved on one keep-alive
   connection and spread over a few seconds, in four windows: idle; twice while 50 runs are active
   against a slow model (1 s per reply, enough turns to outlast the windows); idle again once they
   are cancelled and their ledgers sealed. Every run is checked to be running, and the model to
   have been asked by every one of them, before and after the loaded windows. Target (issue):
   loaded p99 <= 2x idle p99 (the first loaded window against the first idle one). Beside it: a
   small fsync timed every 25 ms in the data dir, and the CPU each process (and everything else
   on the machine) used in each window, so a busy neighbour shows.

Every process started here is stopped here (the script checks that none of `wbx serve`'s session
is left). The machine may be shared: compare figures within one run (ratios), not across runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "load" / "results" / "agent_bench.json"
TENANT = "dev"  # the tenant the first run sets up
LLM_KEY = "sk-agent-bench-0000"
TARGET_RATIO = 2.0


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def call(name: str, **args) -> dict:
    return {"name": name, "arguments": json.dumps(args)}


def three_turns(i: int) -> list[dict]:
    """The benchmark run: shell, vfs_write, done (the model answers at once)."""
    return [{"tool_calls": [call("shell", pipeline="echo hi | rev")]},
            {"tool_calls": [call("vfs_write", path=f"out-{i}.txt", content=f"run {i}: ih\n")]},
            {"tool_calls": [call("done", result=f"reversed {i}")]}]


def slow_turns(n: int, delay_s: float) -> list[dict]:
    """A run that stays active: n slow shell turns, then done."""
    return [{"tool_calls": [call("shell", pipeline="echo hi | rev")], "delay_s": delay_s} for _ in range(n)] + \
           [{"tool_calls": [call("done", result="slow run done")], "delay_s": delay_s}]


def _session_members(sid: int) -> list[int]:
    """Live processes of a session (the supervisor's children have groups of their own, same session)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode("latin-1")
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] != "Z" and int(fields[3]) == sid:
                out.append(int(entry))
        except (OSError, ValueError):
            continue
    return out


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().decode("latin-1").rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and of its children it has reaped (a deploy's or a ledger seal's
    `git` runs count for the process that ran it); 0 when it is gone."""
    f = _stat(pid)
    return sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK") if f else 0.0


def session_cpu(sid: int) -> dict[int, float]:
    """{pid: cpu_seconds} of every live process of a session."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat(int(entry))
            if f and f[3] == str(sid):
                out[int(entry)] = sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")
    return out


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (every process, other users' too), from /proc/stat."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU used in a window by each part of the stack, this script and the whole machine."""

    def __init__(self, stack: "Stack"):
        self.stack = stack

    def pids(self) -> dict[str, list[int]]:
        kids = self.stack.http.get("/api/ops/workers").json().get("children", [])
        groups: dict[str, list[int]] = {}
        for k in kids:
            if not k.get("pid"):
                continue
            name = k["id"]
            group = "agents" if name == "agents" else "control plane" if name.startswith("control") else \
                "public plane" if name.startswith("public") else "pool" if name.startswith(("worker", "spare", "broker")) \
                else "other"
            groups.setdefault(group, []).append(k["pid"])
        groups["supervisor"] = [self.stack.proc.pid]
        groups["fake model"] = [self.stack.llm.proc.pid]
        groups["this script"] = [os.getpid()]
        return groups

    def wait_quiet(self, group: str = "agents", timeout: float = 15.0) -> float:
        """Wait (at most `timeout`) until `group` uses under 2% of a core over half a second, so
        an idle window does not start while earlier runs' after-work still goes on; returns the wait."""
        t0 = time.monotonic()
        pids = self.pids().get(group, [])
        while time.monotonic() - t0 < timeout:
            a = sum(cpu_seconds(p) for p in pids)
            time.sleep(0.5)
            if sum(cpu_seconds(p) for p in pids) - a < 0.01:
                break
        return round(time.monotonic() - t0, 2)

    def start(self) -> None:
        self.groups = self.pids()
        self.t0 = time.monotonic()
        self.before = {g: sum(cpu_seconds(p) for p in ps) for g, ps in self.groups.items()}
        self.session0 = session_cpu(self.stack.proc.pid)
        self.m0 = machine_busy_seconds()

    def stop(self) -> dict:
        wall = time.monotonic() - self.t0
        out = {g: round(100 * (sum(cpu_seconds(p) for p in ps) - self.before[g]) / wall, 1)
               for g, ps in self.groups.items()}
        machine = 100 * (machine_busy_seconds() - self.m0) / wall
        session1 = session_cpu(self.stack.proc.pid)
        # processes of wbx serve's session alive at both ends (a dead one's time is in its parent's)
        ours = sum(session1[p] - self.session0[p] for p in session1 if p in self.session0)
        ours = 100 * ours / wall + out["fake model"] + out["this script"]
        out["all of the above"] = round(ours, 1)
        out["machine (all users)"] = round(machine, 1)
        out["everything else"] = round(max(0.0, machine - ours), 1)
        return out  # percent of one core


# -- the service and its fake model ---------------------------------------------------------------
class Stack:
    """`wbx serve` with the fake model as its LLM; `with Stack(tmp) as s:` starts and stops both.

    `s.http` is an httpx client for the control plane with the admin key and tenant header.
    """

    def __init__(self, tmp: Path, *, max_runs: int = 128, workers: int = 1, env: dict | None = None,
                 up_timeout: float = 120):
        self.tmp = tmp
        self.data = tmp / "data"
        self.max_runs = max_runs
        self.workers = workers
        self.extra_env = env or {}
        self.up_timeout = up_timeout
        self.llm = None
        self.proc: subprocess.Popen | None = None
        self.http = None
        self.admin = ""

    def __enter__(self) -> "Stack":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        import httpx

        from tests.fake_llm import FakeLlm
        from workbooks.web_control.launch import free_port

        # the fake model's stderr (a traceback per connection a cancelled run drops) goes to a log
        self.llm = FakeLlm(require_key=LLM_KEY)
        saved = os.dup(2)
        fd = os.open(self.tmp / "fake_llm.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.dup2(fd, 2)
            self.llm.start()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(fd)
        self.cport, self.pport = free_port(), free_port()
        env = dict(os.environ, WB_DATA=str(self.data), WB_LLM_PROVIDER="openai",
                   WB_LLM_BASE_URL=self.llm.openai_base_url, WB_LLM_MODEL="fake-model", WB_LLM_API_KEY=LLM_KEY,
                   WB_AGENT_MAX_RUNS_PER_TENANT=str(self.max_runs), WB_AGENT_MAX_RUNS=str(self.max_runs))
        env.pop("WBX_AGENT", None)
        env.update(self.extra_env)
        self.log = open(self.tmp / "serve.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workbooks", "serve", "--data", str(self.data), "--workers", str(self.workers),
             "--control", f"127.0.0.1:{self.cport}", "--public", f"127.0.0.1:{self.pport}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
            start_new_session=True)
        deadline = time.monotonic() + self.up_timeout
        while not (self.data / "admin.key").exists():
            self._check_alive(deadline)
            time.sleep(0.1)
        self.admin = (self.data / "admin.key").read_text().strip()
        self.http = httpx.Client(base_url=self.control, timeout=60,
                                 headers={"Authorization": f"Bearer {self.admin}", "X-Workbooks-Tenant": TENANT})
        while True:
            self._check_alive(deadline)
            try:
                r = self.http.get("/api/ops/workers")
                states = {k["id"]: k["state"] for k in r.json().get("children", [])} if r.status_code == 200 else {}
                if states.get("agents") == "running" and states.get("first-run") == "stopped":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)

    def _check_alive(self, deadline: float) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"wbx serve exited ({self.proc.returncode}):\n" + self.log_tail())
        if time.monotonic() > deadline:
            raise RuntimeError("wbx serve did not come up (agents process not running):\n" + self.log_tail())

    def log_tail(self, n: int = 4000) -> str:
        try:
            return (self.tmp / "serve.log").read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    @property
    def control(self) -> str:
        return f"http://127.0.0.1:{self.cport}"

    def run_folder(self, run_id: str) -> Path:
        return self.data / "wb-runs" / TENANT / run_id

    def stop(self) -> None:
        """SIGTERM the supervisor (it stops its children in order), then check none is left."""
        if self.http is not None:
            self.http.close()
            self.http = None
        left: list[int] = []
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(45)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            left = _session_members(self.proc.pid)
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            self.log.close()
            self.proc = None
        if self.llm is not None:
            self.llm.stop()
            self.llm = None
        if left:
            raise RuntimeError(f"processes {left} outlived `wbx serve`")

    # -- runs --------------------------------------------------------------------------------------
    def start_run(self, key: str, task: str, client=None, **extra) -> str:
        r = (client or self.http).post("/api/run", json={"task": f"[script:{key}] {task}", **extra})
        if r.status_code != 202:
            raise RuntimeError(f"POST /api/run: {r.status_code} {r.text}")
        return r.json()["id"]

    def follow(self, run_id: str, client=None, timeout: float = 120) -> dict:
        """Read the run's SSE stream up to its done frame; returns that frame."""
        frame_lines: list[str] = []
        with (client or self.http).stream("GET", f"/api/run/{run_id}/stream", timeout=timeout) as r:
            if r.status_code != 200:
                raise RuntimeError(f"stream {run_id}: {r.status_code}")
            for line in r.iter_lines():
                if line.startswith("data:"):
                    frame_lines.append(line[5:].strip())
                elif line == "" and frame_lines:
                    frame = json.loads("\n".join(frame_lines))
                    frame_lines = []
                    if frame.get("type") == "done":
                        return frame
        raise RuntimeError(f"stream of {run_id} ended without a done frame")

    def view(self, run_id: str) -> dict:
        return self.http.get(f"/api/run/{run_id}").json()

    def steps(self, run_id: str) -> list[dict]:
        path = self.run_folder(run_id) / "_steps.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]

    def wait_finished(self, ids: list[str], timeout: float = 60) -> dict[str, str]:
        """Poll until every run is out of queued/running; {id: final status} (raises on timeout)."""
        deadline = time.monotonic() + timeout
        final: dict[str, str] = {}
        while True:
            for run_id in ids:
                if run_id not in final:
                    st = self.view(run_id)["status"]
                    if st not in ("queued", "running"):
                        final[run_id] = st
            if len(final) == len(ids):
                return final
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(ids) - len(final)} runs still active after {timeout}s")
            time.sleep(0.2)


    def wait_sealed(self, ids: list[str], timeout: float = 60) -> int:
        """Wait until every run's ledger is sealed (the runner writes `ledger` into _status.json after
        its git commit); returns how many are."""
        deadline = time.monotonic() + timeout
        while True:
            sealed = 0
            for run_id in ids:
                try:
                    st = json.loads((self.run_folder(run_id) / "_status.json").read_text())
                except (OSError, ValueError):
                    continue
                sealed += bool(st.get("ledger"))
            if sealed == len(ids) or time.monotonic() > deadline:
                return sealed
            time.sleep(0.2)


# -- 1 + 2: runs per second, step latency ---------------------------------------------------------
def bench_runs(stack: Stack, clients: int, n: int, label: str) -> dict:
    """n runs of three turns through `clients` concurrent clients, model delay 0."""
    import httpx

    keys = [f"{label}-{i}" for i in range(n)]
    for i, key in enumerate(keys):
        stack.llm.script(three_turns(i), key=key)
    todo = list(range(n))
    lock = threading.Lock()
    walls: dict[str, float] = {}
    clock: dict[str, tuple[float, float]] = {}  # wall-clock POST and done-frame times, vs the runner's
    ids: list[str] = []
    errors: list[str] = []

    def client() -> None:
        with httpx.Client(base_url=stack.control, timeout=60, headers=dict(stack.http.headers)) as c:
            while True:
                with lock:
                    if not todo or errors:
                        return
                    i = todo.pop(0)
                try:
                    t, posted = time.perf_counter(), time.time()
                    run_id = stack.start_run(keys[i], "reverse hi, write it down, then say done", client=c)
                    frame = stack.follow(run_id, client=c)
                    wall, ended = time.perf_counter() - t, time.time()
                except Exception as e:  # noqa: BLE001 - reported below, the bench fails loudly
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    return
                with lock:
                    ids.append(run_id)
                    walls[run_id] = wall
                    clock[run_id] = (posted, ended)
                if frame.get("status") not in (None, "done"):
                    with lock:
                        errors.append(f"{run_id} ended {frame.get('status')}: {frame}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{label}: {errors[0]}")
    # every run really did the work: done, three steps, the shell reversed, the file written
    per_step, server_step, tools, nsteps, lead_in, lead_out = [], [], {}, [], [], []
    for run_id in ids:
        view = stack.view(run_id)
        steps = stack.steps(run_id)
        if view["status"] != "done" or [s["tool"] for s in steps][:2] != ["shell", "vfs_write"] \
                or steps[0]["output"].strip() != "ih":
            raise RuntimeError(f"{run_id} did not do the benchmark's work: {view} {steps}")
        nsteps.append(view["steps"])
        per_step.append(walls[run_id] * 1000 / max(1, view["steps"]))
        if isinstance(view.get("started_at"), (int, float)) and isinstance(view.get("ended_at"), (int, float)):
            server_step.append((view["ended_at"] - view["started_at"]) * 1000 / max(1, view["steps"]))
            lead_in.append((view["started_at"] - clock[run_id][0]) * 1000)
            lead_out.append((clock[run_id][1] - view["ended_at"]) * 1000)
        for s in steps:
            tools.setdefault(s["tool"], []).append(float(s.get("dur_ms") or 0))
    run_ms = [w * 1000 for w in walls.values()]
    return {
        "clients": clients, "runs": n, "seconds": round(total, 3), "runs_s": round(n / total, 2),
        "steps_per_run": round(statistics.mean(nsteps), 2),
        "run_ms": {"p50": round(pct(run_ms, 50), 1), "p99": round(pct(run_ms, 99), 1)},
        "step_ms": {"p50": round(pct(per_step, 50), 1), "p99": round(pct(per_step, 99), 1)},
        # the runner's own started_at -> ended_at (no HTTP, no stream), per step
        "runner_step_ms": {"p50": round(pct(server_step, 50), 1), "p99": round(pct(server_step, 99), 1)}
        if server_step else None,
        # POST -> the runner's started_at; its ended_at -> the done frame (events.org, the ledger's
        # seal and git commit, the publish, the stream)
        "start_ms": {"p50": round(pct(lead_in, 50), 1), "p99": round(pct(lead_in, 99), 1)} if lead_in else None,
        "finish_ms": {"p50": round(pct(lead_out, 50), 1), "p99": round(pct(lead_out, 99), 1)} if lead_out else None,
        "tool_dur_ms": {t: {"n": len(v), "p50": round(pct(v, 50), 2), "p99": round(pct(v, 99), 2)}
                        for t, v in sorted(tools.items())},
    }


# -- 3: the control plane with 50 active runs -----------------------------------------------------
def deploy_body(wid: str, rev: int) -> bytes:
    return (f"#+TITLE: bench {wid}\n* Notes :bench:\nRevision {rev} of a small workbook.\n"
            f"- one\n- two\n* TODO follow up\n").encode()


class Sampler:
    """Interleaved control-plane samples on one keep-alive connection: GET /healthz, and every
    `deploy_every`-th request a deploy of a small workbook (ids alternate, every body is new)."""

    def __init__(self, stack: Stack, ids: tuple[str, ...] = ("bench-a", "bench-b")):
        import httpx

        self.c = httpx.Client(base_url=stack.control, timeout=60, headers=dict(stack.http.headers))
        self.ids = ids
        self.rev = 0

    def close(self) -> None:
        self.c.close()

    def deploy(self) -> float:
        wid = self.ids[self.rev % len(self.ids)]
        self.rev += 1
        t = time.perf_counter()
        r = self.c.put(f"/api/workbooks/{wid}", content=deploy_body(wid, self.rev),
                       headers={"Content-Type": "text/org"})
        ms = (time.perf_counter() - t) * 1000
        if r.status_code != 200:
            raise RuntimeError(f"deploy {wid}: {r.status_code} {r.text}")
        return ms

    def healthz(self) -> float:
        t = time.perf_counter()
        r = self.c.get("/healthz")
        ms = (time.perf_counter() - t) * 1000
        if r.status_code != 200 or r.json().get("ok") is not True:
            raise RuntimeError(f"healthz: {r.status_code} {r.text}")
        return ms

    def sample(self, n_health: int, deploy_every: int, min_seconds: float = 0.0) -> dict:
        """n_health healthz samples (a deploy after every `deploy_every`-th), spread evenly over at
        least `min_seconds` so a window spans several model cycles of the runs."""
        hz, dep = [], []
        pace = min_seconds / n_health
        t0 = time.perf_counter()
        for i in range(n_health):
            wait = t0 + i * pace - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            hz.append(self.healthz())
            if deploy_every and i % deploy_every == deploy_every - 1:
                dep.append(self.deploy())
        return {"healthz": hz, "deploy": dep, "seconds": time.perf_counter() - t0}


class FsyncProbe:
    """A 4 KB write + fsync in the data dir every 25 ms, in a thread, while a window runs: how long
    the file system makes a durable write wait (deploys fsync through git; every agent step fsyncs
    its records)."""

    def __init__(self, folder: Path):
        self.path = folder / "bench-fsync-probe"
        self.lat: list[float] = []

    def __enter__(self) -> "FsyncProbe":
        self.stop_ev = threading.Event()
        self.lat = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            while not self.stop_ev.is_set():
                os.pwrite(fd, os.urandom(4096), 0)
                t = time.perf_counter()
                os.fsync(fd)
                self.lat.append((time.perf_counter() - t) * 1000)
                self.stop_ev.wait(0.025)
        finally:
            os.close(fd)

    def __exit__(self, *exc) -> None:
        self.stop_ev.set()
        self.thread.join(10)
        try:
            self.path.unlink()
        except OSError:
            pass


def summary(xs: list[float]) -> dict:
    return {"n": len(xs), "p50": round(pct(xs, 50), 2), "p99": round(pct(xs, 99), 2), "max": round(max(xs), 2)}


def active_check(stack: Stack, ids: list[str], keys: list[str]) -> dict:
    """Every run is running and the model has been asked by every one of them; returns counts."""
    views = {run_id: stack.view(run_id) for run_id in ids}
    not_running = {k: v["status"] for k, v in views.items() if v["status"] != "running"}
    received = stack.llm.received()
    asked = {r["key"] for r in received}
    return {"running": len(ids) - len(not_running), "not_running": not_running,
            "asked": sum(1 for k in keys if k in asked), "model_requests": len(received)}


def bench_control(stack: Stack, *, runs: int, delay_s: float, n_health: int, deploy_every: int,
                  min_seconds: float, idle_after: bool = True, loaded_windows: int = 1,
                  fsync_probe: bool = True) -> dict:
    """Idle, then `loaded_windows` windows back to back with `runs` active runs against a slow
    model (`loaded`, `loaded_2`, ...), then (optionally) idle again after cancelling them and their
    ledgers are sealed. Each window is spread over at least `min_seconds`; with `fsync_probe` a
    thread times a small fsync in the data dir every 25 ms during each window."""
    sampler = Sampler(stack)
    meter = CpuMeter(stack)
    probe = FsyncProbe(stack.data)
    cpu: dict[str, dict] = {}
    windows: dict[str, dict] = {}

    def window(name: str) -> None:
        meter.start()
        if fsync_probe:
            with probe:
                res = sampler.sample(n_health, deploy_every, min_seconds)
            res["fsync"] = list(probe.lat)
        else:
            res = sampler.sample(n_health, deploy_every, min_seconds)
        cpu[name] = meter.stop()
        windows[name] = res

    loaded_names = ["loaded"] + [f"loaded_{k}" for k in range(2, loaded_windows + 1)]
    try:
        for _ in range(4):  # warm-up: both workbooks exist, connections are open
            sampler.deploy()
            sampler.healthz()
        meter.wait_quiet("agents")
        window("idle")
        # enough slow turns to outlast the loaded windows (the idle window's length, wide margin)
        turns = max(5, min(150, int(math.ceil((windows["idle"]["seconds"] * (1 + loaded_windows) + 15) / delay_s))))
        stack.llm.reset()
        keys = [f"slow-{i}" for i in range(runs)]
        for key in keys:
            stack.llm.script(slow_turns(turns, delay_s), key=key)
        ids = [stack.start_run(key, "stay busy", max_steps=turns + 2) for key in keys]
        # wait until every run is waiting on the model
        deadline = time.monotonic() + 60
        while True:
            before = active_check(stack, ids, keys)
            if before["asked"] == runs and before["running"] == runs:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {runs} runs did not all become active: {before}")
            time.sleep(0.2)
        t_loaded = time.monotonic()
        for name in loaded_names:
            window(name)
        loaded_s = time.monotonic() - t_loaded
        after = active_check(stack, ids, keys)
        # cancel what is left, wait for every run to be out of running
        cancelled = 0
        for run_id in ids:
            r = stack.http.delete(f"/api/run/{run_id}")
            if r.status_code == 200:
                cancelled += 1
            elif r.status_code != 409:  # 409: it had already finished
                raise RuntimeError(f"cancel {run_id}: {r.status_code} {r.text}")
        final = stack.wait_finished(ids, timeout=60)
        sealed = stack.wait_sealed(ids)  # 50 ledger commits: not in the next idle window
        meter.wait_quiet("agents")
        # and idle again, for the noise of a shared box
        if idle_after:
            window("idle_after")
    finally:
        sampler.close()
    steps_done = 0
    for run_id in ids:
        steps_done += len(stack.steps(run_id)) if (stack.run_folder(run_id) / "_steps.jsonl").exists() else 0
    out = {
        "runs": runs, "model_delay_s": delay_s, "turns_per_run": turns + 1,
        "window_s": round(loaded_s, 2),
        "active_before": {k: v for k, v in before.items() if k != "not_running"},
        "active_after": {k: v for k, v in after.items() if k != "not_running"},
        "not_running_after": after["not_running"],
        "model_requests_in_window": after["model_requests"] - before["model_requests"],
        "cancelled": cancelled, "final": {s: sum(1 for v in final.values() if v == s) for s in set(final.values())},
        "steps_recorded": steps_done, "sealed": sealed,
        "cpu_percent": cpu,
    }
    # the agents process's CPU per model turn (a step) while the runs were active
    turns_in_window = max(1, out["model_requests_in_window"])
    agents_cpu_s = sum(cpu[n]["agents"] / 100 * windows[n]["seconds"] for n in loaded_names)
    out["agents_cpu_ms_per_step"] = round(agents_cpu_s * 1000 / turns_in_window, 2)
    for name, res in windows.items():
        out[name] = {"healthz_ms": summary(res["healthz"]), "deploy_ms": summary(res["deploy"]),
                     "seconds": round(res["seconds"], 2)}
        if "fsync" in res:
            out[name]["fsync_ms"] = summary(res["fsync"])
    for what in ("healthz_ms", "deploy_ms"):
        out[f"ratio_{what[:-3]}_p99"] = round(out["loaded"][what]["p99"] / out["idle"][what]["p99"], 2)
    return out


# -- report ---------------------------------------------------------------------------------------
def print_table(res: dict) -> None:
    nan = {"p50": float("nan"), "p99": float("nan")}
    print("\nagent runs, fake model with zero delay (3 turns: shell `echo hi | rev`, vfs_write, done)")
    print(f"  {'clients':>7} {'runs':>5} {'runs/s':>7} {'run p50/p99 ms':>16} {'step p50/p99 ms':>16} "
          f"{'runner step':>13} {'POST->start':>13} {'end->done':>13}")
    for r in res["throughput"]:
        def pp(d: dict | None) -> str:
            d = d or nan
            return f"{d['p50']:.0f} / {d['p99']:.0f}"
        print(f"  {r['clients']:>7} {r['runs']:>5} {r['runs_s']:>7.2f} {pp(r['run_ms']):>16} {pp(r['step_ms']):>16} "
              f"{pp(r.get('runner_step_ms')):>13} {pp(r.get('start_ms')):>13} {pp(r.get('finish_ms')):>13}")
    print("  run: POST /api/run -> the stream's done frame; step: run / steps (loop, tools, records, the")
    print("  loopback model round trips; the model itself takes no time); runner step: the same from the")
    print("  run's started_at -> ended_at; POST->start: until the runner starts it; end->done: ended_at ->")
    print("  done frame (events.org, ledger seal + git commit, publish). All p50 / p99 in ms.")
    print("\n  tools' own time, dur_ms in _steps.jsonl (whole ms), p50 / p99")
    tools = sorted({t for r in res["throughput"] for t in r["tool_dur_ms"]})
    for t in tools:
        cells = []
        for r in res["throughput"]:
            d = r["tool_dur_ms"].get(t)
            cells.append(f"C={r['clients']}: {d['p50']:.0f} / {d['p99']:.0f} ms" if d else f"C={r['clients']}: -")
        print(f"  {t:<10} " + "   ".join(f"{c:<22}" for c in cells))
    c = res["control"]
    print(f"\ncontrol plane with {c['runs']} active runs (model {c['model_delay_s']} s per reply, {c['turns_per_run']} "
          f"turns each): {c['active_before']['running']}/{c['runs']} running and "
          f"{c['active_before']['asked']}/{c['runs']} waiting on the model before the window, "
          f"{c['active_after']['running']}/{c['runs']} running after it; {c['model_requests_in_window']} model "
          f"requests in the {c['window_s']} s window")
    wins = [w for w in ("idle", "loaded", "loaded_2", "loaded_3", "idle_after") if w in c]
    print(f"  {'p50 / p99 ms':<26}" + "".join(f"{w:>16}" for w in wins) + f"{'loaded/idle p99':>17}")
    for what, label in (("healthz_ms", "GET /healthz"), ("deploy_ms", "PUT workbook"),
                        ("fsync_ms", "4 KB fsync (probe)")):
        if what not in c["idle"]:
            continue
        cells = "".join(f"{c[w][what]['p50']:>8.2f} /{c[w][what]['p99']:>6.2f}" for w in wins)
        ratio = c["loaded"][what]["p99"] / c["idle"][what]["p99"]
        print(f"  {label + ' (n=' + str(c['loaded'][what]['n']) + ')':<26}{cells}{ratio:>16.2f}x")
    ok = c["ratio_healthz_p99"] <= TARGET_RATIO and c["ratio_deploy_p99"] <= TARGET_RATIO
    print(f"  target (issue 11): loaded p99 <= {TARGET_RATIO:.0f}x idle p99 -> {'met' if ok else 'NOT met'}; "
          f"afterwards {c['final']} ({c['cancelled']} cancelled by the bench), {c['sealed']} ledgers sealed")
    print(f"\n  CPU in each window, % of one core ({res['cores']} cores on the machine); the agents process: "
          f"{c['agents_cpu_ms_per_step']} ms of CPU per step while loaded")
    windows = list(c["cpu_percent"])
    print(f"  {'':<22}" + "".join(f"{w:>12}" for w in windows))
    for g in c["cpu_percent"][windows[0]]:
        print(f"  {g:<22}" + "".join(f"{c['cpu_percent'][w].get(g, 0):>12.1f}" for w in windows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Agent runs through the whole service against a fake model: "
                                             "runs/s, step latency, control-plane p99 under 50 active runs.")
    ap.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    ap.add_argument("--json", default=str(RESULTS), help=f"where the JSON goes (default {RESULTS.relative_to(ROOT)})")
    ap.add_argument("--runs", type=int, default=None, help="runs per concurrency level (default 200, quick 40)")
    ap.add_argument("--clients", default="1,8", help="concurrency levels, comma-separated (default 1,8)")
    ap.add_argument("--active", type=int, default=50, help="active runs during the control-plane check (default 50)")
    ap.add_argument("--samples", type=int, default=None, help="healthz samples per window (default 1000, quick 300)")
    ns = ap.parse_args(argv)
    try:
        levels = [int(x) for x in ns.clients.split(",") if x.strip()]
        if not levels or min(levels) < 1:
            raise ValueError
    except ValueError:
        ap.error(f"--clients: expected positive integers separated by commas, got {ns.clients!r}")
    n = ns.runs or (40 if ns.quick else 200)
    samples = ns.samples or (300 if ns.quick else 1000)
    if n < 1 or samples < 10 or ns.active < 1:
        ap.error("--runs and --active must be >= 1, --samples >= 10")
    # SIGTERM unwinds like Ctrl-C, so the service and the fake model are stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="wb-agent-bench-"))
    res: dict = {"cores": os.cpu_count(), "quick": ns.quick}
    print(f"# agent_bench: {os.cpu_count()} cores, {n} runs per level, clients {levels}, "
          f"{ns.active} active runs, {samples} healthz samples per window", flush=True)
    try:
        with Stack(tmp, max_runs=max(ns.active, max(levels)) + 8) as stack:
            stack.llm.script(three_turns(0), key="warm")  # first run: imports, caches
            stack.follow(stack.start_run("warm", "warm up"))
            res["throughput"] = [bench_runs(stack, c, n, f"c{c}") for c in levels]
            res["control"] = bench_control(stack, runs=ns.active, delay_s=1.0, n_health=samples, deploy_every=10,
                                           min_seconds=3.0 if ns.quick else 6.0, loaded_windows=2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(res)
    out = Path(ns.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
