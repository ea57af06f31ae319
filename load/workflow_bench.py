"""Workflow figures (issue 12, "Benchmarks"): table + load/results/workflow_bench.json.

    .venv/bin/python load/workflow_bench.py [--quick] [--json PATH] [--lanes js,wat,c,zig,rust] [--zig-cold]

Measures in one run:

1. Per lane (js, wat, c, zig, rust; a lane whose toolchain is missing is listed as unavailable
   with the reason): the cold compile (`build()` of a source nobody built before, a nonce in a
   comment, into an empty build cache), the first run of that fresh module (wasmtime compiles it:
   the step engine's module cache `WB_CACHE` is a temp dir of this run), the warm step (cached
   build + a fresh store + instantiate + run of the uppercase filter on 12 bytes, what
   `LocalExecutor` does per step), and a 1 MB filter's throughput (the same filter on 1 MiB of
   text, checked against Python's `upper()`). Zig's global cache (wasi-libc, compiler-rt) comes
   from WB_ZIG_CACHE_DIR (default the tests' `/tmp/wb-zig-cache-<uid>`); when it is empty, its
   one-off warm-up (~50 s) is measured and reported on its own, never as a cold compile; with
   `--zig-cold` it is measured in an empty cache of this run's own in any case.
2. A 100-step "diamond" DAG: widths 1, 2, 4, 8, 12, 16, 14, 12, 10, 8, 6, 4, 2, 1 (a step reads
   exactly one producer, so the diamond fans out and its branches end; there are no joins), every
   step the trivial wat filter, already built. Overhead per step = run wall time / 100, with the
   engine alone (an executor that returns its input at once), with LocalExecutor (threads in this
   process), and with PoolStepExecutor through `wbx serve`'s runner pool (1 and 2 runners).
3. Runs per second of a 3-step js workflow (a -> b -> c) through the pool: `wbx serve --no-web
   --runners N` (N = 1 and N = 2), the DAG engine here with PoolStepExecutor, C runs in flight
   (default 4). Scaling efficiency = rate2 / (2 x rate1) (issue target >= 0.85 where cores allow),
   with the CPU the machine, the service (its runners), this script and everything else used in
   each window: on a 2-core machine this script and the broker share the cores with the runners,
   so report, do not expect, 0.85.

Both services run side by side and the measurements alternate in rounds (`--rounds`: the DAG on
each executor, then the js runs on 1 and on 2 runners, again and again), so a neighbour's burst of
load weighs on every configuration alike instead of on whichever ran at that moment.

Every process started here is stopped here (the script checks that none of `wbx serve`'s session
is left, nor its brokers' shared-memory directories); temp dirs (data, build caches, WB_CACHE)
are removed. The machine may be shared: compare figures within one run, not across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import string
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "load" / "results" / "workflow_bench.json"
ALL_LANES = ("js", "wat", "c", "zig", "rust")
TENANT = "bench"
DIAMOND = (1, 2, 4, 8, 12, 16, 14, 12, 10, 8, 6, 4, 2, 1)  # 100 steps
TARGET_EFFICIENCY = 0.85
MB = 1 << 20

# -- the components ---------------------------------------------------------------------------------
UPPER = {
    "js": "export function run(s) { return s.toUpperCase(); }\n",
    "wat": """
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (local $n i32) (local $i i32) (local $c i32)
    (block $done
      (loop $read
        (i32.store (i32.const 0) (i32.const 64))
        (i32.store (i32.const 4) (i32.const 65536))
        (br_if $done (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (local.set $n (i32.load (i32.const 8)))
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $i (i32.const 0))
        (block $up_done
          (loop $up
            (br_if $up_done (i32.ge_u (local.get $i) (local.get $n)))
            (local.set $c (i32.load8_u (i32.add (i32.const 64) (local.get $i))))
            (if (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 122)))
              (then (i32.store8 (i32.add (i32.const 64) (local.get $i)) (i32.sub (local.get $c) (i32.const 32)))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $up)))
        (i32.store (i32.const 16) (i32.const 64))
        (i32.store (i32.const 20) (local.get $n))
        (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
        (br $read)))))
""",
    "c": r"""
#include <stdio.h>
#include <ctype.h>
int main(void) {
  static char buf[65536]; size_t n;
  while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) {
    for (size_t i = 0; i < n; i++) buf[i] = (char)toupper((unsigned char)buf[i]);
    fwrite(buf, 1, n, stdout);
  }
  return 0;
}
""",
    "zig": """
const std = @import("std");
pub fn main(init: std.process.Init) !void {
    const io = init.io;
    var buf: [65536]u8 = undefined;
    while (true) {
        const n = std.Io.File.stdin().readStreaming(io, &.{&buf}) catch |e| switch (e) {
            error.EndOfStream => break,
            else => return e,
        };
        if (n == 0) break;
        for (buf[0..n]) |*c| c.* = std.ascii.toUpper(c.*);
        try std.Io.File.stdout().writeStreamingAll(io, buf[0..n]);
    }
}
""",
    "rust": """
use std::io::{Read, Write};
fn main() {
    let mut s = Vec::new();
    std::io::stdin().read_to_end(&mut s).unwrap();
    std::io::stdout().write_all(&s.to_ascii_uppercase()).unwrap();
}
""",
}
COMMENT = {"js": "//", "wat": ";;", "c": "//", "zig": "//", "rust": "//"}

JS_FLOW = [  # the 3-step js workflow: a -> b -> c
    {"name": "fetch", "lang": "js", "out": "raw",
     "src": "export function run(x) { return {items: (x.words || []).map((w, i) => ({title: w, n: i + 1}))}; }"},
    {"name": "enrich", "lang": "js", "in": "raw", "out": "rich",
     "src": "export function run(r) { return r.items.map((i) => ({...i, up: i.title.toUpperCase()})); }"},
    {"name": "summarize", "lang": "js", "in": "rich", "out": "summary",
     "src": "export function run(xs) { return xs.map((i) => `${i.up}=${i.n}`).join(', '); }"},
]
JS_FLOW_INPUT = json.dumps({"words": ["alpha", "beta", "gamma"]}).encode()
JS_FLOW_OUTPUT = b"ALPHA=1, BETA=2, GAMMA=3"


def with_nonce(lang: str, src: str, nonce: str) -> str:
    return f"{COMMENT[lang]} bench nonce {nonce}\n{src}"


def text(n: int, seed: int = 12) -> bytes:
    rnd = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + " .,\n"
    return "".join(rnd.choices(alphabet, k=n)).encode()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary(xs: list[float], nd: int = 3) -> dict:
    return {"n": len(xs), "p50": round(pct(xs, 50), nd), "p99": round(pct(xs, 99), nd),
            "min": round(min(xs), nd), "max": round(max(xs), nd)}


# -- CPU accounting (from /proc) -------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().decode("latin-1").rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes of a session."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat(int(entry))
            if f and f[0] != "Z" and f[3] == str(sid):
                out.append(int(entry))
    return out


def session_cpu(sid: int) -> dict[int, float]:
    out = {}
    for pid in session_members(sid):
        f = _stat(pid)
        if f:
            out[pid] = sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")
    return out


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def machine_busy_seconds() -> float:
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuWindow:
    """CPU used during a `with` block: this script, a session (wbx serve's), the whole machine."""

    def __init__(self, sid: int | None = None, groups: dict[str, list[int]] | None = None):
        self.sid = sid
        self.groups = groups or {}  # e.g. {"runners": [pid, ...]}: shown on their own as well

    @staticmethod
    def _pids_cpu(pids: list[int]) -> float:
        total = 0.0
        for pid in pids:
            f = _stat(pid)
            if f:
                total += sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")
        return total

    def __enter__(self) -> "CpuWindow":
        self.g0 = {g: self._pids_cpu(p) for g, p in self.groups.items()}
        self.t0 = time.monotonic()
        self.m0 = machine_busy_seconds()
        self.s0 = self_cpu()
        self.sess0 = session_cpu(self.sid) if self.sid else {}
        return self

    def __exit__(self, *exc) -> None:
        wall = max(1e-9, time.monotonic() - self.t0)
        sess1 = session_cpu(self.sid) if self.sid else {}
        serve = sum(sess1[p] - self.sess0[p] for p in sess1 if p in self.sess0)
        self.result = {"this script": round(100 * (self_cpu() - self.s0) / wall, 1),
                       "wbx serve": round(100 * serve / wall, 1),
                       "machine": round(100 * (machine_busy_seconds() - self.m0) / wall, 1)}
        self.result["everything else"] = round(max(0.0, self.result["machine"] - self.result["this script"]
                                                   - self.result["wbx serve"]), 1)
        for g, pids in self.groups.items():  # part of "wbx serve"
            self.result[g] = round(100 * (self._pids_cpu(pids) - self.g0[g]) / wall, 1)


# -- the service ------------------------------------------------------------------------------------
class Serve:
    """`wbx serve --no-web --runners N` in a data dir of its own; `with Serve(...) as s:`."""

    def __init__(self, tmp: Path, runners: int, env: dict, up_timeout: float = 90):
        self.tmp = tmp
        self.data = tmp / f"data-r{runners}"
        self.runners = runners
        self.env = env
        self.up_timeout = up_timeout
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Serve":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        env = dict(os.environ, **self.env, WB_DATA=str(self.data))
        env.pop("WBX_AGENT", None)
        env.pop("WB_RUNNER_STEP_FN", None)
        self.log_path = self.tmp / f"serve-r{self.runners}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workbooks", "serve", "--data", str(self.data), "--no-web", "--workers", "1",
             "--spares", "0", "--runners", str(self.runners)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
            start_new_session=True)
        deadline = time.monotonic() + self.up_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"wbx serve exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                stats = self.runner_stats(timeout=0.5)
                if sum(w.get("state") == "ready" for w in stats.get("workers", [])) >= self.runners:
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"wbx serve: {self.runners} runners not ready in {self.up_timeout} s:\n"
                                   + self.log_tail())
            time.sleep(0.2)

    def runner_stats(self, timeout: float = 3.0) -> dict:
        import zmq

        from workbooks.pool import endpoints as E
        from workbooks.pool import protocol as P

        s = zmq.Context.instance().socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        try:
            s.connect(E.runner_control_endpoint(self.data))
            s.send(P.pack({"v": 1, "op": "stats", "args": {}}))
            if not s.poll(int(timeout * 1000)):
                raise TimeoutError("the runner broker did not answer")
            reply = P.unpack(s.recv())
        finally:
            s.close(0)
        if not reply.get("ok"):
            raise RuntimeError(f"runner broker stats: {reply}")
        return reply["data"]

    def runner_served(self) -> dict[str, int]:
        return {w.get("child_id") or w.get("id") or "?": int(w.get("served") or 0)
                for w in self.runner_stats().get("workers", [])}

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the supervisor (it stops its children in order); then no process of its session may be left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(45)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 5
        left = session_members(self.proc.pid)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = session_members(self.proc.pid)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.log.close()
        self.proc = None
        if left:
            raise RuntimeError(f"processes {left} outlived `wbx serve`")
        from workbooks.pool import bulk
        from workbooks.pool import endpoints as E

        shm = [d for d in (bulk.dir_for(E.client_endpoint(self.data)), bulk.dir_for(E.runner_client_endpoint(self.data)))
               if d is not None and d.exists()]
        if shm:
            raise RuntimeError(f"`wbx serve` left shared-memory directories behind: {shm}")


# -- 1. lanes ---------------------------------------------------------------------------------------
def step_ctx(data: Path, step_dirs, name: str, cache: Path):
    from workbooks.workflow.types import StepContext

    return StepContext(tenant=TENANT, workflow="bench", run_id="wf-bench", step_dir=step_dirs(name),
                       data_dir=data, cache_dir=cache)


def zig_warmup(tmp: Path, zig_cache: Path, cold: bool = False) -> dict:
    """The zig global cache's one-off build (wasi-libc, compiler-rt): measured when the cache is
    empty, so it is never counted as a cold compile."""
    from workbooks.workflow.build import build
    from workbooks.workflow.types import Component

    warm = (zig_cache / "o").is_dir() and any((zig_cache / "o").iterdir())
    out: dict = {"dir": str(zig_cache), "was_warm": bool(warm)}
    if cold:  # --zig-cold: measure the one-off build in an empty cache of our own (removed afterwards)
        saved = os.environ["WB_ZIG_CACHE_DIR"]
        os.environ["WB_ZIG_CACHE_DIR"] = str(tmp / "zig-cold")
        try:
            for lang in ("c", "zig"):
                t = time.perf_counter()
                build(Component(name=f"{lang}-cold", lang=lang, src=with_nonce(lang, UPPER[lang], uuid.uuid4().hex)),
                      cache_dir=tmp / f"zig-cold-{lang}")
                out[f"empty_cache_first_{lang}_s"] = round(time.perf_counter() - t, 2)
                print(f"  empty zig global cache, first {lang} build: {out[f'empty_cache_first_{lang}_s']} s", flush=True)
        finally:
            os.environ["WB_ZIG_CACHE_DIR"] = saved
            shutil.rmtree(tmp / "zig-cold", ignore_errors=True)
    if warm:
        return out
    for lang in ("c", "zig"):
        t = time.perf_counter()
        build(Component(name=f"{lang}-warmup", lang=lang, src=with_nonce(lang, UPPER[lang], uuid.uuid4().hex)),
              cache_dir=tmp / f"warmup-{lang}")
        out[f"{lang}_s"] = round(time.perf_counter() - t, 2)
        print(f"  zig global cache warm-up ({lang}): {out[f'{lang}_s']} s", flush=True)
    return out


def bench_lane(lang: str, tmp: Path, *, cold_reps: int, warm_reps: int, mb_reps: int, big: bytes) -> dict:
    from workbooks.workflow.build import BuildError, build
    from workbooks.workflow.local_exec import build_and_run
    from workbooks.workflow.records import StepDirs
    from workbooks.workflow.types import Component

    data = tmp / f"lane-{lang}"
    data.mkdir()
    extra: dict = {}
    if lang == "js":  # QuickJS-NG itself: compiled once per machine (then WB_CACHE), not per component
        from workbooks.workflow.step import qjs_module

        t = time.perf_counter()
        qjs_module()
        extra["quickjs_compile_ms"] = round((time.perf_counter() - t) * 1000, 1)
    (data / "run").mkdir()
    dirs = StepDirs(data / "run")
    cold_ms: list[float] = []
    first_ms: list[float] = []
    comp = None
    for i in range(cold_reps):
        cache = data / f"cache-{i}"  # empty
        comp = Component(name=f"upper-{lang}", lang=lang, src=with_nonce(lang, UPPER[lang], uuid.uuid4().hex))
        t = time.perf_counter()
        try:
            b = build(comp, cache_dir=cache)
        except BuildError as e:
            raise RuntimeError(f"lane {lang}: the bench's filter did not build ({e.code}): {e}") from None
        cold_ms.append((time.perf_counter() - t) * 1000)
        if lang != "js" and b.cached:
            raise RuntimeError(f"lane {lang}: a fresh source in an empty cache came back cached")
        r = build_and_run(comp, b"hello, bench\n", step_ctx(data, dirs, "first", cache))
        if not r.ok or r.output != b"HELLO, BENCH\n":
            raise RuntimeError(f"lane {lang}: first run failed: {r.code} {r.error} {r.output[:80]!r}")
        first_ms.append(r.ms)
    cache = data / f"cache-{cold_reps - 1}"
    warm_ms: list[float] = []
    warm_build_ms: list[float] = []
    for _ in range(warm_reps):
        t = time.perf_counter()
        b = build(comp, cache_dir=cache)
        warm_build_ms.append((time.perf_counter() - t) * 1000)
        r = build_and_run(comp, b"hello, bench\n", step_ctx(data, dirs, "warm", cache))
        if not r.ok or r.output != b"HELLO, BENCH\n" or not r.cached:
            raise RuntimeError(f"lane {lang}: warm run failed: {r.code} {r.error} cached={r.cached}")
        warm_ms.append(r.ms)
    want = big.upper()
    mb_ms: list[float] = []
    for _ in range(mb_reps):
        r = build_and_run(comp, big, step_ctx(data, dirs, "mb", cache))
        if not r.ok or r.output != want:
            raise RuntimeError(f"lane {lang}: the 1 MB filter failed: {r.code} {r.error} "
                               f"({len(r.output)} bytes out of {len(big)})")
        mb_ms.append(r.ms)
    shutil.rmtree(data, ignore_errors=True)
    best = min(mb_ms)
    med = statistics.median(mb_ms)
    return {"lang": lang, "cold_build_ms": summary(cold_ms, 1), "first_run_ms": summary(first_ms, 1),
            "warm_step_ms": summary(warm_ms), "warm_build_lookup_ms": summary(warm_build_ms),
            "mb_ms": summary(mb_ms, 1), "mb_s": round((len(big) / MB) / (med / 1000), 2),
            "mb_s_best": round((len(big) / MB) / (best / 1000), 2), **extra}


# -- 2. the diamond DAG -----------------------------------------------------------------------------
def diamond_world(widths=DIAMOND) -> dict:
    comps = []
    prev: list[str] = []
    for w, width in enumerate(widths):
        layer = []
        for k in range(width):
            name = f"s{w:02d}-{k:02d}"
            c = {"name": name, "lang": "wat", "src": UPPER["wat"], "out": f"o-{name}"}
            if prev:
                c["in"] = f"o-{prev[k % len(prev)]}"
            comps.append(c)
            layer.append(name)
        prev = layer
    return {"name": "diamond", "components": comps, "exports": []}


class NullExecutor:
    """The engine alone: every step answers its input at once."""

    async def run(self, component, input, ctx):
        from workbooks.workflow.types import StepResult

        return StepResult(ok=True, output=input, lane=component.lang, ms=0.001)

    async def aclose(self) -> None:
        pass


class DagBench:
    """The diamond on one executor, in rounds (`round()`), so executors can be measured alternately:
    a busy neighbour then weighs on each of them alike. Each round uses a fresh executor and starts
    with one unmeasured run (builds, module caches, runner caches)."""

    def __init__(self, executor_factory, data: Path, cache: Path, label: str, expect: str = "X"):
        from workbooks.workflow.engine import check_world

        self.factory = executor_factory
        self.data = data
        self.cache = cache
        self.label = label
        self.expect = expect
        self.world = check_world(diamond_world())
        self.slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-").lower()[:40]  # a run id runners accept
        self.per_step: list[float] = []
        self.step_ms: list[float] = []
        self.n_runs = 0
        self.seq = 0

    def round(self, reps: int) -> None:
        import trio

        trio.run(self._round, reps)

    async def _round(self, reps: int) -> None:
        from workbooks.workflow.engine import run_world
        from workbooks.workflow.records import StepDirs
        from workbooks.workflow.types import StepContext

        n = len(self.world.components)
        ex = self.factory()
        try:
            for i in range(reps + 1):
                self.seq += 1
                run_id = f"wf-{self.slug}-{self.seq}"
                run_dir = self.data / "wb-runs" / TENANT / run_id
                run_dir.mkdir(parents=True)
                dirs = StepDirs(run_dir)

                def ctx_for(comp, dirs=dirs, run_id=run_id):
                    return StepContext(tenant=TENANT, workflow="diamond", run_id=run_id,
                                       step_dir=dirs(comp.name), data_dir=self.data, cache_dir=self.cache)

                t = time.perf_counter()
                rec = await run_world(self.world, b"x", executor=ex, ctx_for=ctx_for)
                wall = (time.perf_counter() - t) * 1000
                if rec["status"] != "done":
                    raise RuntimeError(f"diamond ({self.label}) failed: {json.dumps(rec['errors'])[:600]}")
                last = rec["tasks"][self.world.components[-1].name]
                if last != self.expect:
                    raise RuntimeError(f"diamond ({self.label}): the last step answered {last!r}, not {self.expect!r}")
                if i == 0:
                    continue  # warm-up
                self.n_runs += 1
                self.per_step.append(wall / n)
                self.step_ms.extend(s["ms"] for s in rec["steps"].values())
        finally:
            await ex.aclose()

    def result(self) -> dict:
        return {"executor": self.label, "steps": len(self.world.components), "runs": self.n_runs,
                "wall_ms_per_step": summary(self.per_step), "step_ms": summary(self.step_ms)}


# -- 3. runs per second through the pool -------------------------------------------------------------
class RunsBench:
    """3-step js runs through one `wbx serve`'s runners, C in flight, in rounds (see DagBench)."""

    def __init__(self, serve: Serve, clients: int):
        from workbooks.workflow.engine import check_world

        self.serve = serve
        self.clients = clients
        self.world = check_world({"name": "three-js", "components": JS_FLOW})
        self.run_ms: list[float] = []
        self.step_ms: list[float] = []
        self.rates: list[float] = []
        self.wall = 0.0
        self.runs = 0
        self.cpu_s: dict[str, float] = {}  # percent x seconds, summed over rounds
        self.served: dict[str, int] = {}
        self.seq = 0
        self.warmed = False

    async def _one_run(self, ex, measured: bool) -> None:
        from workbooks.workflow.engine import run_world
        from workbooks.workflow.records import StepDirs
        from workbooks.workflow.types import StepContext

        data = self.serve.data
        self.seq += 1
        run_id = f"wf-{self.seq}"
        run_dir = data / "wb-runs" / TENANT / run_id
        run_dir.mkdir(parents=True)
        dirs = StepDirs(run_dir)

        def ctx_for(comp):
            return StepContext(tenant=TENANT, workflow=self.world.name, run_id=run_id, step_dir=dirs(comp.name),
                               data_dir=data, cache_dir=data / "build" / "cache")

        t = time.perf_counter()
        rec = await run_world(self.world, JS_FLOW_INPUT, executor=ex, ctx_for=ctx_for)
        if rec["status"] != "done" or rec["tasks"]["summarize"] != JS_FLOW_OUTPUT.decode():
            raise RuntimeError(f"3-step js run failed: {json.dumps(rec['errors'])[:600]} {rec['tasks']}")
        if measured:
            self.run_ms.append((time.perf_counter() - t) * 1000)
            self.step_ms.extend(s["ms"] for s in rec["steps"].values())

    async def _batch(self, ex, n: int, measured: bool) -> float:
        import trio

        left = [n]

        async def client():
            while left[0] > 0:
                left[0] -= 1
                await self._one_run(ex, measured)

        t = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(self.clients):
                nursery.start_soon(client)
        return time.perf_counter() - t

    def round(self, runs: int) -> None:
        import trio

        trio.run(self._round, runs)

    async def _round(self, runs: int) -> None:
        from workbooks.workflow.pool_exec import PoolStepExecutor

        ex = PoolStepExecutor(data_dir=self.serve.data)
        try:
            # warm-up, unmeasured: the first time every runner loads QuickJS and builds; later a few runs
            await self._batch(ex, max(4, 4 * self.serve.runners) if not self.warmed else self.clients, False)
            self.warmed = True
            served0 = self.serve.runner_served()
            runner_pids = [int(w["pid"]) for w in self.serve.runner_stats().get("workers", []) if w.get("pid")]
            with CpuWindow(self.serve.proc.pid, {"runners": runner_pids}) as cpu:
                wall = await self._batch(ex, runs, True)
            served1 = self.serve.runner_served()
        finally:
            await ex.aclose()
        self.wall += wall
        self.runs += runs
        self.rates.append(runs / wall)
        for k, v in cpu.result.items():
            self.cpu_s[k] = self.cpu_s.get(k, 0.0) + v * wall
        for k, v in served1.items():
            self.served[k] = self.served.get(k, 0) + v - served0.get(k, 0)

    def result(self) -> dict:
        return {"runners": self.serve.runners, "clients": self.clients, "runs": self.runs,
                "seconds": round(self.wall, 3), "runs_s": round(self.runs / self.wall, 2),
                "round_runs_s": [round(x, 2) for x in self.rates],
                "cpu_percent": {k: round(v / self.wall, 1) for k, v in self.cpu_s.items()},
                "steps_per_runner": dict(sorted(self.served.items())),
                "run_ms": summary(self.run_ms, 1), "runner_step_ms": summary(self.step_ms, 2)}


# -- report -----------------------------------------------------------------------------------------
def print_table(res: dict) -> None:
    print(f"\nlanes (uppercase filter; {res['cores']} cores, shared; medians unless noted)")
    print(f"  {'lane':<5} {'cold compile':>13} {'first run':>10} {'warm step p50/p99':>18} {'cache hit':>10} "
          f"{'1 MB filter':>12} {'MB/s':>7} {'toolchain'}")
    for lang in res["lanes_wanted"]:
        lane = res["lanes"].get(lang)
        st = res["lanes_status"].get(lang, {})
        if lane is None:
            print(f"  {lang:<5} unavailable: {st.get('why') or 'not measured (--lanes)'}")
            continue
        w = lane["warm_step_ms"]
        print(f"  {lang:<5} {lane['cold_build_ms']['p50']:>10.1f} ms {lane['first_run_ms']['p50']:>7.1f} ms "
              f"{w['p50']:>8.2f} /{w['p99']:>6.2f} ms {lane['warm_build_lookup_ms']['p50']:>7.3f} ms "
              f"{lane['mb_ms']['p50']:>9.1f} ms {lane['mb_s']:>7.1f} {st.get('toolchain') or ''}")
    z = res.get("zig_cache") or {}
    if "empty_cache_first_c_s" in z:
        print(f"  one-off: with an empty zig global cache the first c build took {z['empty_cache_first_c_s']} s and "
              f"the first zig build after it {z['empty_cache_first_zig_s']} s (--zig-cold)")
    if z:
        if z.get("was_warm"):
            print(f"  zig global cache {z['dir']} was already warm (its one-off build, ~50 s, not measured)")
        else:
            print(f"  zig global cache {z['dir']} was empty: one-off warm-up c {z.get('c_s')} s, then zig "
                  f"{z.get('zig_s')} s (not in the cold compile)")
    js = res["lanes"].get("js", {})
    if "quickjs_compile_ms" in js:
        print(f"  js: QuickJS-NG itself is compiled once per machine (then cached in WB_CACHE): "
              f"{js['quickjs_compile_ms'] / 1000:.1f} s, not in the figures above")
    print("  cold compile: build() of a never-seen source into an empty cache; first run: that module's first")
    print("  step (wasmtime compiles it to machine code; js: the component is evaluated by QuickJS-NG);")
    print("  warm step: cached build + fresh store + instantiate + run of 12 bytes (what LocalExecutor does per")
    print("  step); cache hit: the build() lookup alone; 1 MB filter: the same step on 1 MiB, MB/s from its median")

    d = res.get("dag") or []
    if d:
        print(f"\n100-step diamond DAG (widths {'-'.join(map(str, DIAMOND))}; trivial wat steps, built; <= 8 at once)")
        print(f"  {'executor':<26} {'runs':>5} {'wall/step p50':>14} {'min':>8} {'step ms p50 (its own)':>22}")
        for row in d:
            print(f"  {row['executor']:<26} {row['runs']:>5} {row['wall_ms_per_step']['p50']:>11.3f} ms "
                  f"{row['wall_ms_per_step']['min']:>5.3f} ms {row['step_ms']['p50']:>19.3f} ms")
        print("  wall/step: the run's wall time / 100 (steps overlap up to 8); step ms: as the executor reports it")

    r = res.get("runs") or []
    if r:
        print(f"\n3-step js workflow (fetch -> enrich -> summarize) through wbx serve's runner pool, "
              f"{r[0]['clients']} runs in flight, {len(r[0]['round_runs_s'])} alternating rounds")
        print(f"  {'runners':>7} {'runs':>5} {'runs/s':>7} {'run p50/p99 ms':>16} {'step in runner p50':>19} "
              f"{'steps per runner':>17}   CPU % of one core: script / serve (runners) / machine / else")
        for row in r:
            c = row["cpu_percent"]
            spr = ",".join(str(v) for _, v in sorted(row["steps_per_runner"].items()))
            print(f"  {row['runners']:>7} {row['runs']:>5} {row['runs_s']:>7.2f} "
                  f"{row['run_ms']['p50']:>7.1f} /{row['run_ms']['p99']:>7.1f} {row['runner_step_ms']['p50']:>16.2f} ms "
                  f"{spr:>17}   {c['this script']:.0f} / {c['wbx serve']:.0f} ({c.get('runners', 0):.0f}) / {c['machine']:.0f} / "
                  f"{c['everything else']:.0f}")
        print("  rounds (runs/s): " + "; ".join(f"{row['runners']} runner{'s' if row['runners'] > 1 else ''}: "
                                              + ", ".join(f"{x:.1f}" for x in row["round_runs_s"]) for row in r))
        if "efficiency" in res:
            print("  efficiency per round: " + ", ".join(f"{x:.2f}" for x in res["round_efficiency"]))
            e = res["efficiency"]
            verdict = "met" if e >= TARGET_EFFICIENCY else "NOT met"
            print(f"  scaling efficiency rate2 / (2 x rate1) = {e:.2f} (target >= {TARGET_EFFICIENCY} where cores "
                  f"allow: {verdict}; {res['cores']} cores, shared with this script and the broker)")
            c2 = r[-1]["cpu_percent"]
            print(f"  during the {r[-1]['runners']}-runner window the machine was {min(100.0, c2['machine'] / res['cores']):.0f}% busy "
                  f"({c2['everything else']:.0f}% of one core by processes that are not this benchmark's)")


_TERMINATED = False


def _on_sigterm(signum, frame) -> None:
    global _TERMINATED
    _TERMINATED = True
    os.kill(os.getpid(), signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Workflow figures: per-lane cold compile / warm step / 1 MB throughput, "
                                             "a 100-step DAG's overhead per step, 3-step js runs/s with 1 and 2 "
                                             "pool runners.")
    ap.add_argument("--quick", action="store_true", help="a short run (a minute or two with a warm zig cache)")
    ap.add_argument("--json", default=str(RESULTS), help=f"where the JSON goes (default {RESULTS.relative_to(ROOT)})")
    ap.add_argument("--lanes", default=",".join(ALL_LANES), help="lanes to measure, comma-separated (default all)")
    ap.add_argument("--runs", type=int, default=None, help="3-step js runs per runner count, split over the rounds "
                    "(default 150, quick 30)")
    ap.add_argument("--clients", type=int, default=4, help="3-step js runs in flight (default 4)")
    ap.add_argument("--dag-reps", type=int, default=None, help="diamond runs per executor, split over the rounds "
                    "(default 10, quick 3)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds that alternate between executors and runner "
                    "counts (default 5, quick 3)")
    ap.add_argument("--no-pool", action="store_true", help="skip everything that starts wbx serve")
    ap.add_argument("--zig-cold", action="store_true", help="also measure zig's one-off global cache build "
                    "(wasi-libc, compiler-rt; ~50 s) in an empty cache of its own")
    ns = ap.parse_args(argv)
    lanes = [x.strip() for x in ns.lanes.split(",") if x.strip()]
    bad = [x for x in lanes if x not in ALL_LANES]
    if not lanes or bad:
        ap.error(f"--lanes: choose from {', '.join(ALL_LANES)} (got {ns.lanes!r})")
    runs = ns.runs if ns.runs is not None else (30 if ns.quick else 150)
    dag_reps = ns.dag_reps if ns.dag_reps is not None else (3 if ns.quick else 10)
    rounds = ns.rounds if ns.rounds is not None else (3 if ns.quick else 5)
    if runs < 1 or ns.clients < 1 or dag_reps < 1 or rounds < 1:
        ap.error("--runs, --clients, --dag-reps and --rounds must be >= 1")
    runs_per_round = -(-runs // rounds)
    dag_per_round = -(-dag_reps // rounds)
    cold_reps, warm_reps, mb_reps = (1, 20, 3) if ns.quick else (3, 100, 7)

    # SIGTERM unwinds like Ctrl-C (services stopped, temp dirs removed): as SIGINT, which trio turns
    # into KeyboardInterrupt at a safe point (an exception raised in a signal handler would not be)
    # (SIGINT's Python handler is put in place even when this runs with SIGINT ignored, e.g. from a
    # background job of a script)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="wb-workflow-bench-"))
    # the step engine's compiled-module cache: this run's own (cold means cold; nothing left behind)
    os.environ["WB_CACHE"] = str(tmp / "wb-cache")
    zig_cache = Path(os.environ.get("WB_ZIG_CACHE_DIR") or f"/tmp/wb-zig-cache-{os.getuid()}")
    os.environ["WB_ZIG_CACHE_DIR"] = str(zig_cache)
    child_env = {"WB_CACHE": os.environ["WB_CACHE"], "WB_ZIG_CACHE_DIR": str(zig_cache)}
    res: dict = {"cores": os.cpu_count(), "quick": ns.quick, "lanes_wanted": lanes, "lanes": {}}
    print(f"# workflow_bench: {os.cpu_count()} cores, lanes {','.join(lanes)}, {runs_per_round * rounds} js runs per "
          f"runner count ({ns.clients} in flight), {dag_per_round * rounds} diamond runs per executor, "
          f"in {rounds} alternating rounds", flush=True)
    try:
        from workbooks.workflow.build import build, lanes_status
        from workbooks.workflow.local_exec import LocalExecutor
        from workbooks.workflow.pool_exec import PoolStepExecutor
        from workbooks.workflow.types import Component

        status = lanes_status()
        res["lanes_status"] = {k: v for k, v in status.items() if k in ALL_LANES}
        res["unavailable"] = {k: status[k]["why"] for k in lanes if not status[k]["available"]}
        if any(x in ("c", "zig") and status[x]["available"] for x in lanes):
            res["zig_cache"] = zig_warmup(tmp, zig_cache, cold=ns.zig_cold)
        big = text(MB)
        for lang in lanes:
            if not status[lang]["available"]:
                print(f"  {lang}: unavailable ({status[lang]['why']})", flush=True)
                continue
            print(f"  lane {lang} ...", flush=True)
            res["lanes"][lang] = bench_lane(lang, tmp, cold_reps=cold_reps, warm_reps=warm_reps, mb_reps=mb_reps,
                                            big=big)

        print("  diamond DAG ...", flush=True)
        dag_data = tmp / "dag-local"
        dag_cache = dag_data / "build" / "cache"
        build(Component(name="w", lang="wat", src=UPPER["wat"]), cache_dir=dag_cache)
        dags = [DagBench(NullExecutor, dag_data, dag_cache, "engine alone (no-op steps)", expect="x"),
                DagBench(LocalExecutor, dag_data, dag_cache, "LocalExecutor")]
        with contextlib.ExitStack() as stack:
            serves: list[Serve] = []
            if not ns.no_pool:
                # QuickJS-NG compiled once into this run's WB_CACHE (done already when the js lane ran),
                # so the runners load it instead of each compiling it in their warm-up
                from workbooks.workflow.step import qjs_module

                qjs_module()
                for n in (1, 2):
                    print(f"  wbx serve --no-web --runners {n} ...", flush=True)
                    serves.append(stack.enter_context(Serve(tmp, n, child_env)))
                    dags.append(DagBench(lambda s=serves[-1]: PoolStepExecutor(data_dir=s.data), serves[-1].data,
                                         serves[-1].data / "build" / "cache",
                                         f"PoolStepExecutor, {n} runner{'s' if n > 1 else ''}"))
            # rounds, alternating between configurations: a neighbour's load weighs on each alike
            for _ in range(rounds):
                for d in dags:
                    d.round(dag_per_round)
            res["dag"] = [d.result() for d in dags]
            if serves:
                print(f"  3-step js runs, {rounds} rounds of {runs_per_round} per runner count ...", flush=True)
                benches = [RunsBench(s, ns.clients) for s in serves]
                for _ in range(rounds):
                    for rb in benches:
                        rb.round(runs_per_round)
                res["runs"] = [rb.result() for rb in benches]
                r1, r2 = res["runs"][0]["runs_s"], res["runs"][1]["runs_s"]
                res["efficiency"] = round(r2 / (2 * r1), 3)
                res["round_efficiency"] = [round(b / (2 * a), 3) for a, b in
                                           zip(res["runs"][0]["round_runs_s"], res["runs"][1]["round_runs_s"])]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(res)
    out = Path(ns.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nJSON: {out}")
    return 0


def _interrupted(e: BaseException) -> bool:
    """Ctrl-C / SIGTERM, alone or as trio's nursery groups them."""
    if isinstance(e, BaseExceptionGroup):
        return all(_interrupted(x) for x in e.exceptions)
    if isinstance(e, KeyboardInterrupt):
        return True
    # a signal landing between two trio.run calls (or in trio's own set-up) surfaces as
    # TrioInternalError caused by the KeyboardInterrupt: still an interruption
    cause = e.__cause__ or e.__context__
    return type(e).__name__ == "TrioInternalError" and cause is not None and _interrupted(cause)


if __name__ == "__main__":
    try:
        code = main()
    except BaseException as e:
        if not _interrupted(e):
            raise
        print("workflow_bench: interrupted; every process it started is stopped", file=sys.stderr)
        code = 143 if _TERMINATED else 130
    sys.exit(code)
