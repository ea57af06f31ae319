"""Workflow steps in the pool: a runner broker and runner workers as real processes.

The runners use a stub step function (tests/helpers/workflow_stub_steps.py, through
WB_RUNNER_STEP_FN) so a step can sleep, fail or raise on demand and tell which process ran it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from pool_harness import ROOT, BarePool, Serve, alive, wait_for
from workbooks.agent.secrets import Secrets
from workbooks.pool import endpoints as E
from workbooks.pool import protocol as P
from workbooks.pool.client import AsyncPoolClient
from workbooks.workflow.pool_exec import PoolStepExecutor
from workbooks.workflow.types import Component, Limits, StepContext

HELPERS = ROOT / "tests" / "helpers"
STUB_ENV = {"WB_RUNNER_STEP_FN": "workflow_stub_steps:run",
            "PYTHONPATH": os.pathsep.join([str(HELPERS), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
HB_MS = 300


def control(endpoint: str, op: str, timeout: float = 3.0, **args):
    import zmq

    s = zmq.Context.instance().socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(endpoint)
        s.send(P.pack({"v": 1, "op": op, "args": args}))
        if not s.poll(int(timeout * 1000)):
            raise TimeoutError("runner broker control did not answer")
        reply = P.unpack(s.recv())
    finally:
        s.close(0)
    assert reply["ok"], reply
    return reply["data"]


class RunnerPool:
    """`python -m workbooks.pool.broker --role runner` and N `python -m workbooks.workflow.worker`."""

    def __init__(self, tmp: Path, runners: int = 2, broker_args=(), data: Path | None = None, stub: bool = True):
        self.data = data or tmp / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.logs = tmp / "runner-logs"
        self.logs.mkdir(exist_ok=True)
        self.env = dict(os.environ, WB_DATA=str(self.data), **(STUB_ENV if stub else {}))
        self.env.pop("WBX_AGENT", None)
        if not stub:
            self.env.pop("WB_RUNNER_STEP_FN", None)
        self.procs: list[subprocess.Popen] = []
        self.runners: dict[str, subprocess.Popen] = {}
        try:
            self.broker = self._spawn("broker", [sys.executable, "-m", "workbooks.pool.broker", "--role", "runner",
                                                 "--data", str(self.data), "--heartbeat-ms", str(HB_MS), *broker_args])
            wait_for(lambda: self.stats(timeout=0.5), what="runner broker up")
            for i in range(1, runners + 1):
                self.add_runner(f"r{i}")
            self.wait_runners(runners)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "ab") as out:
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        self.procs.append(p)
        return p

    def add_runner(self, rid: str) -> subprocess.Popen:
        p = self._spawn(rid, [sys.executable, "-m", "workbooks.workflow.worker", "--data", str(self.data),
                              "--id", rid, "--heartbeat-ms", str(HB_MS)])
        self.runners[rid] = p
        return p

    def stats(self, timeout: float = 3.0) -> dict:
        return control(E.runner_control_endpoint(self.data), "stats", timeout=timeout)

    def wait_runners(self, n: int) -> dict:
        def enough():
            s = self.stats()
            return s if sum(w["state"] == "ready" for w in s["workers"]) >= n else None

        return wait_for(enough, 20, what=f"{n} runners registered")

    def log_text(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        broker = getattr(self, "broker", None)
        for group in ([p for p in self.procs if p is not broker], [broker]):
            for p in group:
                if p is not None and p.poll() is None:
                    p.terminate()
            for p in group:
                if p is None:
                    continue
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for p in self.procs:
            assert not alive(p.pid), f"process {p.pid} outlived the test"


def ctx_for(data: Path, name: str = "a", **kw) -> StepContext:
    step_dir = data / "wb-runs" / "dev" / "wf-1" / "steps" / name
    step_dir.mkdir(parents=True, exist_ok=True)
    return StepContext(tenant="dev", workflow="demo", run_id="wf-1", step_dir=step_dir, data_dir=data, **kw)


def stub(name: str = "a", persist: bool = False, **script) -> Component:
    return Component(name=name, lang="stub", src=json.dumps(script), persist=persist)


def run_steps(data: Path, *calls, endpoint: str | None = None, **exec_kw):
    """Run (component, input, ctx) steps concurrently through one PoolStepExecutor; results in order."""
    async def main():
        ex = PoolStepExecutor(endpoint, data_dir=data, **exec_kw)
        out = [None] * len(calls)

        async def one(i, c, inp, ctx):
            out[i] = await ex.run(c, inp, ctx)

        try:
            async with trio.open_nursery() as n:
                for i, call in enumerate(calls):
                    n.start_soon(one, i, *call)
        finally:
            await ex.aclose()
        return out

    return trio.run(main)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    p = RunnerPool(tmp_path_factory.mktemp("runners"), runners=2)
    yield p
    p.stop()


def test_a_step_runs_in_a_runner_process_with_its_context(pool):
    logs: list[str] = []
    ctx = ctx_for(pool.data, secrets=Secrets({"TOKEN": "tok-123456"}), log=logs.append, limits=Limits(timeout_s=7))
    [r] = run_steps(pool.data, (stub(log="hello from the step"), b"the input", ctx))
    assert r.ok and r.code == "ok" and r.attempts == 1, r
    out = json.loads(r.output)
    runner_pids = {p.pid for p in pool.runners.values()}
    assert out["pid"] != os.getpid() and out["pid"] in runner_pids
    assert out["input"] == "the input" and out["tenant"] == "dev"
    assert out["step_dir"] == str(ctx.step_dir)  # on this host the step gets the engine's own step dir
    assert out["secret"] == "tok-123456"  # resolvable at egress inside the runner
    assert out["timeout_s"] == 7.0  # the limits crossed
    assert r.logs == ["hello from the step"] and logs == ["hello from the step"]  # handed to ctx.log


def test_failing_steps_are_results_and_the_runner_lives_on(pool):
    ctx = ctx_for(pool.data, secrets=Secrets({"TOKEN": "tok-123456"}))
    bad_tenant = ctx_for(pool.data)
    bad_tenant.tenant = "../etc"
    failed, raised, refused, fine = run_steps(
        pool.data, (stub(fail="no such thing"), b"", ctx), (stub(**{"raise": "leaked tok-123456"}), b"", ctx),
        (stub(), b"", bad_tenant), (stub(), b"after", ctx))
    assert not failed.ok and failed.code == "trap" and failed.error == "no such thing" and failed.output
    assert not raised.ok and raised.code == "error" and "RuntimeError" in raised.error
    assert "tok-123456" not in raised.error and "[secret:TOKEN]" in raised.error  # redacted in the runner
    assert not refused.ok and refused.code == "error" and "bad tenant" in refused.error
    assert fine.ok and json.loads(fine.output)["input"] == "after"
    assert all(p.poll() is None for p in pool.runners.values())


def test_hostile_step_requests_are_refused_and_the_runners_live_on(pool, tmp_path):
    import msgpack

    from workbooks.pool.client import PoolClient, PoolError
    from workbooks.workflow.pool_exec import step_meta

    good = msgpack.unpackb(step_meta(stub(), ctx_for(pool.data)), raw=False)

    def meta(**ctx_changes):
        m = json.loads(json.dumps(good))
        m["ctx"].update(ctx_changes)
        return msgpack.packb(m, use_bin_type=True)

    bad = {
        "not msgpack": [b"\xc1\xc1", b""],
        "a list": [msgpack.packb([1, 2]), b""],
        "another version": [msgpack.packb({**good, "v": 9}), b""],
        "no component": [msgpack.packb({"v": 1, "ctx": good["ctx"]}), b""],
        "reserved tenant": [meta(tenant="tmp"), b""],
        "traversing run id": [meta(run_id="../../etc"), b""],
        "negative timeout": [meta(limits={"timeout_s": -1}), b""],
        "boolean fuel": [meta(limits={"fuel": True}), b""],
        "secret not text": [meta(secrets={"values": {"K": 1}}), b""],
        "hosts not a list": [meta(allow_hosts="*"), b""],
        "input as text": [step_meta(stub(), ctx_for(pool.data)), "text, not bytes"],
    }
    c = PoolClient(E.runner_client_endpoint(pool.data))
    try:
        for what, args in bad.items():
            with pytest.raises(PoolError) as ei:
                c.call("step", args, deadline_ms=10_000)
            assert ei.value.code == "bad_request", what
        with pytest.raises(PoolError) as ei:
            c.call("render", ["* a"], deadline_ms=10_000)  # a runner broker serves steps only
        assert ei.value.code == "bad_request" and "step" in ei.value.message
        with pytest.raises(PoolError) as ei:
            c.call("step", [b"", b""], deadline_ms=P.RUNNER_MAX_DEADLINE_MS + 1)
        assert ei.value.code == "bad_request"
    finally:
        c.close()
    # paths the runner does not own are never opened: a scratch folder instead, removed after
    outside = tmp_path / "outside"
    outside.mkdir()
    link = pool.data / "wb-runs" / "dev" / "wf-1" / "steps" / "escape"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(outside)
    for step_dir in (outside, link, Path("/etc"), Path("relative/dir")):
        ctx = ctx_for(pool.data)
        ctx.step_dir = step_dir
        [r] = run_steps(pool.data, (stub(), b"", ctx))
        used = json.loads(r.output)["step_dir"]
        assert r.ok and used.startswith(str(pool.data / "tmp" / "runner-steps")) and not os.path.exists(used), step_dir
    assert list(outside.iterdir()) == []
    assert all(p.poll() is None for p in pool.runners.values())
    [r] = run_steps(pool.data, (stub(), b"still", ctx_for(pool.data)))
    assert r.ok


def test_a_big_input_and_output_cross_intact(pool):
    big = os.urandom(300_000).hex().encode()  # over the shared-memory threshold both ways
    [r] = run_steps(pool.data, (stub(), big, ctx_for(pool.data)))
    assert r.ok and json.loads(r.output)["input"].encode() == big
    [r] = run_steps(pool.data, (stub(), b"x" * 101, ctx_for(pool.data, limits=Limits(timeout_s=5))))
    assert r.ok
    [r] = run_steps(pool.data, (stub(), b"x" * 101, ctx_for(pool.data, limits=Limits(timeout_s=5, input_max=100))))
    assert not r.ok and r.code == "input_too_large" and "101 bytes" in r.error


def test_renders_are_not_delayed_by_a_long_step(tmp_path):
    oql = BarePool(tmp_path, workers=1)
    runners = RunnerPool(tmp_path, runners=1, data=oql.data)
    doc = (ROOT / "workbooks" / "samples" / "demo.org").read_text()
    try:
        async def main():
            client = AsyncPoolClient(E.client_endpoint(oql.data))
            ex = PoolStepExecutor(data_dir=runners.data)

            async def render_times(n):
                times = []
                for _ in range(n):
                    t = time.perf_counter()
                    assert (await client.call("render", [doc])).startswith(b"<")
                    times.append(time.perf_counter() - t)
                return times

            idle = await render_times(20)
            box = {}
            async with trio.open_nursery() as n:
                async def step():
                    t = time.perf_counter()
                    box["r"] = await ex.run(stub(sleep=2), b"", ctx_for(runners.data))
                    box["step_s"] = time.perf_counter() - t

                n.start_soon(step)
                with trio.fail_after(5):
                    while not any(w["in_flight"] for w in runners.stats()["workers"]):
                        await trio.sleep(0.02)
                busy = await render_times(40)
                box["busy_still"] = bool(runners.stats()["workers"][0]["in_flight"])
            client.close()
            await ex.aclose()
            return idle, busy, box

        idle, busy, box = trio.run(main)
    finally:
        runners.stop()
        oql.stop()
    assert box["r"].ok and box["step_s"] >= 2.0
    assert box["busy_still"], "the renders were measured while the step occupied the runner"
    idle_p50, busy_p50 = sorted(idle)[len(idle) // 2], sorted(busy)[len(busy) // 2]
    print(f"\nrender p50 idle {idle_p50 * 1000:.2f} ms, during a 2 s step {busy_p50 * 1000:.2f} ms, "
          f"max during {max(busy) * 1000:.2f} ms")
    # Behind the step (one shared queue) every render would wait up to 2 s; on their own pool
    # they take what they take idle (generous bounds: the machine is shared).
    assert max(busy) < 0.5
    assert busy_p50 < max(5 * idle_p50, idle_p50 + 0.05)


WAT_UPPER = r"""
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start") (local $n i32) (local $i i32) (local $c i32)
    (block $done
      (loop $more
        (i32.store (i32.const 0) (i32.const 1024))
        (i32.store (i32.const 4) (i32.const 60000))
        (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (local.set $n (i32.load (i32.const 8)))
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $i (i32.const 0))
        (block $up (loop $each
          (br_if $up (i32.ge_u (local.get $i) (local.get $n)))
          (local.set $c (i32.load8_u (i32.add (i32.const 1024) (local.get $i))))
          (if (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 122)))
            (then (i32.store8 (i32.add (i32.const 1024) (local.get $i)) (i32.sub (local.get $c) (i32.const 32)))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $each)))
        (i32.store (i32.const 4) (local.get $n))
        (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        (br $more)))))
"""


def test_real_steps_run_in_a_runner_as_they_do_in_process(tmp_path):
    """The runner's default step function is W1's build + W2's step: same results as LocalExecutor."""
    from workbooks.workflow.local_exec import LocalExecutor

    pool = RunnerPool(tmp_path, runners=1, stub=False)
    comps = [Component(name="twice", lang="js", src="export function run(x) { return {twice: x * 2}; }"),
             Component(name="logs", lang="js", uses=("log",),
                       src="export function run(x) { host.log('saw ' + x); return x + 1; }"),
             Component(name="upper", lang="wat", src=WAT_UPPER),
             Component(name="broken", lang="wat", src="(module (func $f (result i32)))")]
    spin = Component(name="spin", lang="js", src="export function run() { for (;;) {} }")
    try:
        async def main():
            ex, local = PoolStepExecutor(data_dir=pool.data), LocalExecutor()
            got = {}
            for c in comps:
                lines: list[str] = []
                got[c.name] = (await ex.run(c, b"21", ctx_for(pool.data, c.name, log=lines.append)), lines,
                               await local.run(c, b"21", ctx_for(pool.data, c.name)))
            got["spin"] = await ex.run(spin, b"", ctx_for(pool.data, "spin", limits=Limits(timeout_s=1)))
            got["after"] = await ex.run(comps[0], b"2", ctx_for(pool.data, "twice"))
            # per-step cost, warm: the same js step in this process and through a runner
            figures = {}
            for name, executor in (("local", local), ("pool", ex)):
                times = []
                for i in range(25):
                    t = time.perf_counter()
                    r = await executor.run(comps[0], b"21", ctx_for(pool.data, "twice"))
                    times.append(time.perf_counter() - t)
                    assert r.ok
                figures[name] = sorted(times)[len(times) // 2]
            await ex.aclose()
            await local.aclose()
            return got, figures

        got, figures = trio.run(main)
    finally:
        pool.stop()
    for c in comps:
        remote, _, local = got[c.name]
        assert (remote.ok, remote.code, remote.output) == (local.ok, local.code, local.output), c.name
        assert remote.lane == local.lane and remote.attempts == 1
    assert json.loads(got["twice"][0].output) == {"twice": 42}
    assert got["logs"][0].output == b"22" and got["logs"][1] == ["saw 21"]  # log lines reach ctx.log
    assert got["upper"][0].output == b"21"
    assert got["broken"][0].code == "build_failed" and got["broken"][0].error
    assert not got["spin"].ok and got["spin"].code in ("timeout", "fuel")  # stopped inside the runner
    assert got["after"].ok and json.loads(got["after"].output) == {"twice": 4}  # which lives on
    print(f"\nwarm js step p50: in process {figures['local'] * 1000:.2f} ms, through a runner "
          f"{figures['pool'] * 1000:.2f} ms (overhead {(figures['pool'] - figures['local']) * 1000:.2f} ms)")
    assert figures["pool"] < figures["local"] + 0.05


def _busy_runner(pool: RunnerPool) -> dict:
    return wait_for(lambda: next((w for w in pool.stats()["workers"] if w["in_flight"]), None), 10,
                    what="a runner busy with the step")


def _kill_mid_step(tmp_path, persist: bool):
    pool = RunnerPool(tmp_path, runners=2)
    try:
        async def main():
            ex = PoolStepExecutor(data_dir=pool.data)
            box = {}
            async with trio.open_nursery() as n:
                async def step():
                    box["r"] = await ex.run(stub(sleep=1.5, persist=persist), b"payload", ctx_for(pool.data))
                    box["done"] = time.monotonic()

                n.start_soon(step)
                w = await trio.to_thread.run_sync(_busy_runner, pool)
                os.kill(w["pid"], signal.SIGKILL)
                box["killed"], box["victim"] = time.monotonic(), w
            await ex.aclose()
            return box

        box = trio.run(main)
        box["pids"] = {rid: p.pid for rid, p in pool.runners.items()}
        box["stats"] = pool.stats()
        return box
    finally:
        pool.stop()


def test_kill_9_mid_step_is_retried_once_on_the_other_runner(tmp_path):
    box = _kill_mid_step(tmp_path, persist=False)
    r, victim = box["r"], box["victim"]
    assert r.ok and r.code == "ok" and r.attempts == 2, r
    ran = json.loads(r.output)
    assert ran["pid"] != victim["pid"] and ran["pid"] in box["pids"].values()
    assert ran["input"] == "payload"
    assert box["stats"]["lost_total"].get("disconnected") == 1
    assert box["stats"]["retries"] == 0  # the broker did not re-send: the executor decided


def test_kill_9_of_a_persist_step_is_runner_lost_at_once(tmp_path):
    box = _kill_mid_step(tmp_path, persist=True)
    r = box["r"]
    assert not r.ok and r.code == "runner_lost" and r.attempts == 1, r
    assert "persist" in r.error and box["victim"]["child_id"] in r.error
    assert box["done"] - box["killed"] < 1.0  # known at once (the connection closed), not at a deadline


def test_no_runner_is_a_clear_code_after_a_short_wait(tmp_path):
    pool = RunnerPool(tmp_path, runners=0, broker_args=("--no-workers-ms", "400"))
    try:
        t = time.monotonic()
        [r] = run_steps(pool.data, (stub(), b"", ctx_for(pool.data)))
        took = time.monotonic() - t
    finally:
        pool.stop()
    assert not r.ok and r.code == "no_runner" and "--runners" in r.error, r
    assert 0.3 < took < 3


def test_the_queue_is_bounded(tmp_path):
    pool = RunnerPool(tmp_path, runners=1, broker_args=("--max-queue", "1"))
    try:
        async def main():
            ex = PoolStepExecutor(data_dir=pool.data)
            out = {}
            async with trio.open_nursery() as n:
                async def one(key, c):
                    out[key] = await ex.run(c, key.encode(), ctx_for(pool.data, key))
                    out[key + "_at"] = time.monotonic()

                n.start_soon(one, "running", stub(sleep=1))
                await trio.to_thread.run_sync(_busy_runner, pool)
                n.start_soon(one, "queued", stub())
                with trio.fail_after(5):
                    while not pool.stats()["queue_depth"]:
                        await trio.sleep(0.02)
                t = time.monotonic()
                await one("refused", stub())
                out["refused_s"] = time.monotonic() - t
            await ex.aclose()
            return out

        out = trio.run(main)
    finally:
        pool.stop()
    assert out["running"].ok and out["queued"].ok
    assert not out["refused"].ok and out["refused"].code == "overloaded" and out["refused_s"] < 0.5


def test_a_step_past_its_deadline_never_hangs_the_run(tmp_path):
    pool = RunnerPool(tmp_path, runners=1)
    try:
        t = time.monotonic()
        [r] = run_steps(pool.data, (stub(sleep=4), b"", ctx_for(pool.data, limits=Limits(timeout_s=0.5))),
                        queue_s=0, margin_s=0.5)
        took = time.monotonic() - t
        assert not r.ok and r.code == "timeout" and "within 1 s" in r.error, r
        assert took < 3.0
        # the runner answers late, then serves the next step
        [r] = run_steps(pool.data, (stub(), b"next", ctx_for(pool.data)))
        assert r.ok
    finally:
        pool.stop()


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-runners")
    data = tmp / "data"
    env = dict(os.environ, WB_DATA=str(data))
    r = subprocess.run([sys.executable, "-m", "workbooks", "ops", "keys"], capture_output=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    from workbooks.web_control.launch import free_port

    port = free_port()
    s = Serve(tmp, workers=1, spares=0, heartbeat_ms=HB_MS, env=STUB_ENV,
              args=("--runners", "2", "--runner-tcp", f"tcp://127.0.0.1:{port}"))
    s.runner_tcp = f"tcp://127.0.0.1:{port}"
    try:
        wait_for(lambda: sum(w["state"] == "ready" for w in s.ctl("runner_stats")["workers"]) == 2, 20,
                 what="two runners registered")
    except BaseException:
        s.stop()
        raise
    yield s
    s.stop()


def test_serve_supervises_runners_and_restarts_a_killed_one(serve):
    kids = {c["id"]: c for c in serve.status()["children"]}
    assert kids["runner-broker"]["state"] == "running"
    assert kids["runner-1"]["group"] == kids["runner-2"]["group"] == "runner"
    old = kids["runner-1"]["pid"]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: serve.child("runner-1")["pid"] not in (None, old) and serve.child("runner-1")["state"] == "running",
             20, what="runner-1 restarted")
    assert serve.child("runner-1")["last_exit"]["reason"] == "killed by SIGKILL"
    new = serve.child("runner-1")["pid"]
    wait_for(lambda: any(w["pid"] == new and w["state"] == "ready" for w in serve.ctl("runner_stats")["workers"]),
             20, what="the new runner-1 registered")
    # two steps at once take both runners: the restarted one serves
    r1, r2 = run_steps(serve.data, (stub("a", sleep=0.5), b"1", ctx_for(serve.data, "a")),
                       (stub("b", sleep=0.5), b"2", ctx_for(serve.data, "b")))
    assert r1.ok and r2.ok
    ran = {json.loads(r.output)["pid"] for r in (r1, r2)}
    assert ran == {new, serve.child("runner-2")["pid"]}
    assert {json.loads(r.output)["child_id"] for r in (r1, r2)} == {"runner-1", "runner-2"}
    # renders still go to the OQL worker, never to a runner
    assert serve.client().call("lint", ["* still here"]).startswith(b"[")
    # `wbx ops status` shows the runners with the runner broker's figures, and the loss
    st = json.loads(serve.wbx("ops", "status").stdout)
    runners = {c["id"]: c for c in st["children"] if c["group"] == "runner"}
    assert set(runners) == {"runner-1", "runner-2"} and runners["runner-1"]["pid"] == new
    assert runners["runner-1"]["pool"]["served"] >= 1 and runners["runner-2"]["pool"]["served"] >= 1
    assert any(ev["worker"] == "runner-1" and ev["pid"] == old for ev in st["runners"]["lost"])
    assert st["pool"]["workers_lost"] == []  # the OQL pool lost nothing
    # runners log JSON lines as `runner`; a secret a step saw or raised never reaches the log
    ctx = ctx_for(serve.data, secrets=Secrets({"TOKEN": "tok-in-serve-987"}))
    [r] = run_steps(serve.data, (stub(**{"raise": "boom tok-in-serve-987", "log": "x"}), b"", ctx))
    assert r.code == "error" and "tok-in-serve-987" not in r.error
    wait_for(lambda: any(rec.get("id") == "runner-1" and rec.get("role") == "runner"
                         for rec in (json.loads(x) for x in serve.log().splitlines() if x.startswith("{"))),
             what="runner-1's log records")
    assert "tok-in-serve-987" not in serve.log()
    # and /metrics has the runners' figures beside the pool's
    from prometheus_client.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families(serve.ctl("metrics")["text"])}
    steps = {s.labels["outcome"]: s.value for s in fams["wb_runner_steps"].samples if s.name == "wb_runner_steps_total"}
    assert steps.get("ok", 0) >= 2
    assert {s.labels["source"]: s.value for s in fams["wb_up"].samples}["runner-broker"] == 1
    assert any(s.labels.get("reason") == "disconnected" and s.value >= 1 for s in fams["wb_runner_lost"].samples)


def test_restarting_a_busy_runner_lets_its_step_finish(serve):
    async def main():
        ex = PoolStepExecutor(data_dir=serve.data)
        box = {}
        async with trio.open_nursery() as n:
            async def step():
                box["r"] = await ex.run(stub(sleep=1.5), b"in", ctx_for(serve.data))

            n.start_soon(step)
            busy = await trio.to_thread.run_sync(lambda: wait_for(
                lambda: next((w for w in serve.ctl("runner_stats")["workers"] if w["in_flight"]), None), 10,
                what="a runner busy"))
            box["busy"] = busy
            box["restart"] = await trio.to_thread.run_sync(lambda: serve.wbx("ops", "restart", busy["child_id"]))
        await ex.aclose()
        return box

    box = trio.run(main)
    assert box["restart"].returncode == 0, box["restart"].stderr
    r = box["r"]
    assert r.ok and r.attempts == 1 and json.loads(r.output)["pid"] == box["busy"]["pid"], r  # not killed mid-step
    assert serve.child(box["busy"]["child_id"])["pid"] != box["busy"]["pid"]
    wait_for(lambda: sum(w["state"] == "ready" for w in serve.ctl("runner_stats")["workers"]) == 2, 15,
             what="two runners again")


def test_runners_scale_like_workers(serve):
    r = serve.wbx("ops", "scale", "3", "--group", "runner")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: sum(w["state"] == "ready" for w in serve.ctl("runner_stats")["workers"]) == 3, 20,
             what="a third runner registered")
    assert serve.child("runner-3")["group"] == "runner"
    r = serve.wbx("ops", "scale", "2", "--group", "runner")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: sorted(w["child_id"] for w in serve.ctl("runner_stats")["workers"]) == ["runner-1", "runner-2"], 20,
             what="back to two runners")


def test_a_remote_runner_joins_over_curve_tcp(serve, tmp_path):
    kd = E.keys_dir(serve.data)
    remote = tmp_path / "remote"
    (remote / "data").mkdir(parents=True)
    (remote / "server.key").write_bytes((kd / "server.key").read_bytes())
    (remote / "me.key_secret").write_bytes((kd / "client.key_secret").read_bytes())
    env = dict(os.environ, **STUB_ENV, WB_DATA=str(remote / "data"))
    # at the pool's heartbeat interval (a runner heartbeating slower than the broker expects is dropped)
    p = subprocess.Popen([sys.executable, "-m", "workbooks", "worker", "--role", "runner", "--heartbeat-ms", str(HB_MS),
                          "--connect", serve.runner_tcp,
                          "--server-key", str(remote / "server.key"), "--client-key", str(remote / "me.key_secret"),
                          "--id", "faraway"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        wait_for(lambda: any(w["child_id"] == "faraway" and w["remote"] and w["state"] == "ready"
                             for w in serve.ctl("runner_stats")["workers"]), 20, what="remote runner registered")
        for cid in ("runner-1", "runner-2"):  # `wbx ops drain` finds runners on the runner broker
            r = serve.wbx("ops", "drain", cid)
            assert r.returncode == 0, (r.stderr, serve.ctl("runner_stats")["workers"])
        try:
            big = b"y" * 300_000  # in shared memory locally; the broker inlines it for the remote runner
            [r] = run_steps(serve.data, (stub(), big, ctx_for(serve.data)))
        finally:
            for cid in ("runner-1", "runner-2"):
                serve.wbx("ops", "drain", cid, "--undo")
        assert all(w["state"] == "ready" for w in serve.ctl("runner_stats")["workers"])
        assert r.ok, (r, serve.ctl("runner_stats")["workers"], serve.ctl("runner_stats")["lost_recent"])
        ran = json.loads(r.output)
        assert ran["pid"] == p.pid and ran["input"].encode() == big
        # the engine's step dir is not on "that host": the step got a scratch dir, removed after
        assert ran["step_dir"].startswith(str(remote / "data")) and not os.path.exists(ran["step_dir"])
        assert serve.ctl("runner_stats")["bulk"]["inlined_for_remote"] >= 1
    finally:
        p.terminate()
        try:
            out, _ = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
    assert p.returncode == 0, out[-2000:]
    assert b"worker_stopped" in out and not alive(p.pid)


def test_a_runner_with_an_unknown_key_never_joins(serve, tmp_path):
    import zmq.auth

    kd = E.keys_dir(serve.data)
    zmq.auth.create_certificates(str(tmp_path), "rogue")
    p = subprocess.Popen([sys.executable, "-m", "workbooks", "worker", "--role", "runner", "--connect", serve.runner_tcp,
                          "--server-key", str(kd / "server.key"), "--client-key", str(tmp_path / "rogue.key_secret"),
                          "--id", "rogue", "--data", str(tmp_path)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, cwd=ROOT, env=dict(os.environ, **STUB_ENV, WB_POOL_HEARTBEAT_MS=str(HB_MS)))
    try:
        rogue_public, _ = zmq.auth.load_certificate(str(tmp_path / "rogue.key"))
        wait_for(lambda: rogue_public.decode() in [r["key"] for r in serve.ctl("runner_stats")["auth"]["recent"]],
                 what="the rogue runner's key rejected")
        assert not any(w["child_id"] == "rogue" for w in serve.ctl("runner_stats")["workers"])
    finally:
        p.terminate()
        p.wait(10)


@pytest.mark.parametrize("persist", [False, True])
def test_the_runner_broker_killed_mid_step(serve, persist):
    """A step whose runner broker dies is not re-sent behind the caller's back: retried once like a
    lost runner, or runner_lost for a :persist step."""
    async def main():
        ex = PoolStepExecutor(data_dir=serve.data)
        box = {}
        async with trio.open_nursery() as n:
            async def step():
                box["r"] = await ex.run(stub(sleep=1.5, persist=persist), b"in", ctx_for(serve.data))

            n.start_soon(step)
            busy = await trio.to_thread.run_sync(lambda: wait_for(
                lambda: next((w for w in serve.ctl("runner_stats")["workers"] if w["in_flight"]), None), 10,
                what="a runner busy"))
            box["broker"] = serve.child("runner-broker")["pid"]
            os.kill(box["broker"], signal.SIGKILL)
            box["busy"] = busy
        await ex.aclose()
        return box

    box = trio.run(main)
    r = box["r"]
    wait_for(lambda: serve.child("runner-broker")["pid"] not in (None, box["broker"]), what="runner broker restarted")
    if persist:
        assert not r.ok and r.code == "runner_lost" and r.attempts == 1 and "not run twice" in r.error, r
    else:
        assert r.ok and r.attempts == 2, r
        assert json.loads(r.output)["pid"] != box["busy"]["pid"]  # the first runner was still busy with it
    # the pool is whole again: both runners serve
    wait_for(lambda: sum(w["state"] == "ready" for w in serve.ctl("runner_stats")["workers"]) == 2, 15,
             what="both runners registered with the new broker")
    [ok] = run_steps(serve.data, (stub(), b"after", ctx_for(serve.data)))
    assert ok.ok

