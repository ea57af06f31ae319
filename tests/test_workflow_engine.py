"""The workflow DAG engine: plan records, edges from :in/:out, waves in parallel, failures that skip
dependants only, sub-workflows, plan errors before anything runs, and the recorded + sealed run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import trio

from tests.conftest import run_wbx
from workbooks.agent.runs import allocate
from workbooks.oql import default_kernel
from workbooks.workflow.engine import PlanError, check_world, plan_records, run_workflow_dir, run_world
from workbooks.workflow.records import decode_output, read_record
from workbooks.workflow.types import Component, StepContext, StepResult

SAMPLES = Path(__file__).resolve().parent.parent / "workbooks" / "samples"


class ScriptExecutor:
    """A tiny executor for the engine's tests: a component's `src` is one command.

    `const TEXT` outputs TEXT; `upper` the input upper-cased; `suffix X` the input + X; `sleep S CMD`
    sleeps S seconds then does CMD; `fail MSG` fails (code trap); `raise` raises; `bytes` outputs
    non-UTF-8 bytes. It keeps what it ran and how many steps ran at once."""

    def __init__(self):
        self.ran: list[tuple[str, bytes]] = []
        self.active = 0
        self.most = 0

    async def run(self, component: Component, input: bytes, ctx: StepContext) -> StepResult:
        self.ran.append((component.name, input))
        self.active += 1
        self.most = max(self.most, self.active)
        t0 = time.monotonic()
        try:
            return await self._do(component.src.strip(), input, ctx)
        finally:
            self.active -= 1
            self.ms = (time.monotonic() - t0) * 1000

    async def _do(self, src: str, input: bytes, ctx: StepContext) -> StepResult:
        cmd, _, arg = src.partition(" ")
        if cmd == "sleep":
            secs, _, rest = arg.partition(" ")
            await trio.sleep(float(secs))
            return await self._do(rest, input, ctx)
        if cmd == "const":
            return StepResult(ok=True, output=arg.encode())
        if cmd == "upper":
            return StepResult(ok=True, output=input.upper())
        if cmd == "suffix":
            return StepResult(ok=True, output=input + arg.encode())
        if cmd == "fail":
            return StepResult(ok=False, code="trap", error=arg)
        if cmd == "raise":
            raise RuntimeError("executor blew up")
        if cmd == "bytes":
            return StepResult(ok=True, output=b"\xff\x00\xfe")
        if cmd == "whoami":
            return StepResult(ok=True, output=f"{ctx.tenant}/{ctx.workflow}/{ctx.step_dir.name}".encode())
        return StepResult(ok=False, code="lane_unavailable", error=f"no such command {cmd!r}")

    async def aclose(self) -> None:
        pass


def comp(name, src, *, inp=None, out=None, lang="test"):
    return {"name": name, "lang": lang, "src": src, "in": inp, "out": out, "uses": [], "deps": [], "persist": False,
            "dir": None}


def world(name, comps, subs=(), exports=None):
    w = {"name": name, "components": comps, "edges": [], "imports": [], "schedule": None, "workflows": list(subs)}
    if exports is not None:
        w["exports"] = exports
    return w


def ctx_maker(tmp_path: Path, tenant="acme"):
    n = [0]

    def ctx_for(c: Component) -> StepContext:
        n[0] += 1
        d = tmp_path / "steps" / f"{n[0]:04d}"
        d.mkdir(parents=True)
        return StepContext(tenant=tenant, workflow="w", run_id="wf-1", step_dir=d, data_dir=tmp_path)

    return ctx_for


def run(w, input=b"", tmp_path=None, **kw):
    ex = kw.pop("executor", None) or ScriptExecutor()
    events: list[dict] = []

    async def on_event(e):
        events.append(e)

    async def main():
        return await run_world(w, input, executor=ex, ctx_for=ctx_maker(tmp_path), on_event=on_event, **kw)

    return trio.run(main), ex, events


# -- plan records -------------------------------------------------------------------------------
def test_plan_records_of_the_demo():
    org = (SAMPLES / "demo.org").read_bytes()
    plan = default_kernel().call_json("tangle_plan", org)
    recs = plan_records(plan)
    assert recs == [{"workflow": "daily digest", "schedule": {"cron": "0 7 * * *"}, "tasks": ["fetch", "summarize"],
                     "sub_workflows": []}]


def test_plan_records_nest_sub_workflows():
    org = ("* outer :workflow:\n** a :component:\n#+begin_src js :out x\nrun\n#+end_src\n"
           "** inner :workflow:\n*** b :component:\n#+begin_src js\nrun\n#+end_src\n")
    recs = plan_records(default_kernel().call_json("tangle_plan", org))
    assert recs == [{"workflow": "outer", "schedule": None, "tasks": ["a"],
                     "sub_workflows": [{"workflow": "inner", "schedule": None, "tasks": ["b"], "sub_workflows": []}]}]


# -- running ------------------------------------------------------------------------------------
def test_three_step_chain_pipes_each_output_into_the_next(tmp_path):
    w = world("chain", [comp("c", "suffix !", inp="y", out="z"), comp("a", "upper", out="x"),
                        comp("b", "suffix -b", inp="x", out="y")])
    rec, ex, events = run(w, b"hello", tmp_path)
    assert rec["status"] == "done" and rec["errors"] == {}
    assert rec["tasks"] == {"a": "HELLO", "b": "HELLO-b", "c": "HELLO-b!"}
    assert [name for name, _ in ex.ran] == ["a", "b", "c"]  # producers first, whatever the document order
    assert ex.ran[0][1] == b"hello"  # only the root reads the workflow input
    assert rec["exports"] == {"z": "HELLO-b!"}  # no `exports` given: the outputs nobody consumes
    assert [rec["steps"][n]["wave"] for n in "abc"] == [0, 1, 2]
    assert [e["status"] for e in events if e["type"] == "step" and e["component"] == "b"] == ["running", "ok"]
    assert events[-1]["type"] == "done" and events[-1]["status"] == "done"


def test_diamond_each_step_reads_exactly_its_producer(tmp_path):
    w = world("diamond", [comp("src", "const v", out="s"), comp("left", "suffix L", inp="s", out="l"),
                          comp("right", "suffix R", inp="s", out="r"), comp("join", "upper", inp="l", out="j")],
              exports=["j", "r"])
    rec, ex, _ = run(w, b"ignored", tmp_path)
    assert rec["tasks"] == {"src": "v", "left": "vL", "right": "vR", "join": "VL"}
    assert dict(ex.ran)["join"] == b"vL"
    assert rec["exports"] == {"j": "VL", "r": "vR"}


def test_two_independent_steps_take_the_time_of_one(tmp_path):
    t0 = time.monotonic()
    rec, ex, _ = run(world("two", [comp("a", "sleep 0.3 const a"), comp("b", "sleep 0.3 const b")]), b"", tmp_path)
    took = time.monotonic() - t0
    assert rec["tasks"] == {"a": "a", "b": "b"} and ex.most == 2
    assert 0.29 < took < 0.58, took  # ~0.3 s, not 0.6


def test_independent_steps_run_at_once(tmp_path):
    w = world("par", [comp("a", "sleep 0.3 const a"), comp("b", "sleep 0.3 const b"),
                      comp("c", "sleep 0.3 suffix c", inp="ao"), comp("d", "sleep 0.3 const d")])
    w["components"][0]["out"] = "ao"
    t0 = time.monotonic()
    rec, ex, _ = run(w, b"", tmp_path)
    took = time.monotonic() - t0
    assert rec["status"] == "done"
    assert ex.most == 3  # a, b, d together; then c
    assert 0.55 < took < 1.1, took  # two waves of 0.3 s, not four steps one after another (1.2 s)


def test_at_most_max_parallel_at_once(tmp_path):
    w = world("wide", [comp(f"s{i}", "sleep 0.1 const x") for i in range(10)])
    t0 = time.monotonic()
    rec, ex, _ = run(w, b"", tmp_path, max_parallel=4)
    took = time.monotonic() - t0
    assert rec["status"] == "done" and ex.most == 4
    assert took >= 0.29, took  # 10 steps, 4 at a time: three rounds


def test_a_failing_step_skips_its_dependants_and_the_sibling_branch_goes_on(tmp_path):
    w = world("fail", [comp("root", "const r", out="r"),
                       comp("bad", "fail division by zero", inp="r", out="b"),
                       comp("after", "upper", inp="b", out="a"),
                       comp("after2", "upper", inp="a"),
                       comp("good", "sleep 0.1 suffix !", inp="r", out="g")])
    rec, ex, events = run(w, b"", tmp_path)
    assert rec["status"] == "error"
    assert rec["tasks"] == {"root": "r", "bad": None, "good": "r!", "after": None, "after2": None}
    assert rec["errors"]["bad"] == {"code": "trap", "error": "division by zero"}
    assert rec["errors"]["after"]["code"] == "skipped" and "'bad'" in rec["errors"]["after"]["error"]
    assert rec["errors"]["after2"]["code"] == "skipped" and "'after'" in rec["errors"]["after2"]["error"]
    assert "good" not in rec["errors"]
    assert sorted(n for n, _ in ex.ran) == ["bad", "good", "root"]  # skipped steps never reach the executor
    finals = {e["component"]: e["status"] for e in events if e["type"] == "step" and e["status"] != "running"}
    assert finals == {"root": "ok", "bad": "error", "after": "skipped", "after2": "skipped", "good": "ok"}
    assert events[-1] == {**events[-1], "type": "done", "status": "error", "errors": 3}


def test_an_executor_that_raises_is_a_failed_step(tmp_path):
    rec, _, _ = run(world("boom", [comp("a", "raise"), comp("b", "const fine")]), b"", tmp_path)
    assert rec["status"] == "error"
    assert rec["errors"]["a"]["code"] == "error" and "executor blew up" in rec["errors"]["a"]["error"]
    assert rec["tasks"]["b"] == "fine"


def test_binary_outputs_are_base64_with_a_marker(tmp_path):
    rec, ex, _ = run(world("bin", [comp("a", "bytes", out="x"), comp("b", "suffix !", inp="x")]), b"", tmp_path)
    assert rec["tasks"]["a"] == {"base64": "/wD+"}
    assert decode_output(rec["tasks"]["a"]) == b"\xff\x00\xfe"
    assert dict(ex.ran)["b"] == b"\xff\x00\xfe"  # the consumer gets the bytes, not the encoding
    assert decode_output(rec["tasks"]["b"]) == b"\xff\x00\xfe!"


def test_sub_workflows_run_with_the_same_input_and_nest_their_records(tmp_path):
    inner = world("inner", [comp("i1", "suffix -inner", out="q"), comp("i2", "fail nope", inp="q")])
    leaf = world("leaf", [comp("l1", "upper")])
    mid = world("mid", [comp("m1", "suffix -mid")], subs=[leaf])
    w = world("outer", [comp("o1", "suffix -outer")], subs=[inner, mid])
    rec, ex, events = run(w, b"in", tmp_path)
    assert rec["tasks"] == {"o1": "in-outer"}
    assert [s["workflow"] for s in rec["sub_workflows"]] == ["inner", "mid"]
    assert rec["sub_workflows"][0]["tasks"] == {"i1": "in-inner", "i2": None}
    assert rec["sub_workflows"][0]["status"] == "error"
    assert rec["sub_workflows"][1]["status"] == "done"
    assert rec["sub_workflows"][1]["sub_workflows"][0]["tasks"] == {"l1": "IN"}
    assert rec["status"] == "error" and rec["errors"] == {}  # the failure is the sub-workflow's
    assert {e["workflow"] for e in events if e["type"] == "step"} == {"outer", "inner", "mid", "leaf"}


@pytest.mark.parametrize("w, words", [
    (world("cyc", [comp("a", "upper", inp="y", out="x"), comp("b", "upper", inp="x", out="y"),
                   comp("c", "upper", out="z")]), ["cycle", "a → b → a"]),
    (world("self", [comp("a", "upper", inp="x", out="x")]), ["cycle", "a → a"]),
    (world("miss", [comp("a", "upper", out="x"), comp("b", "upper", inp="nothing")]),
     ["'b'", "'nothing'", "no upstream producer"]),
    (world("two", [comp("a", "upper", out="x"), comp("b", "upper", out="x")]), ["'x'", "more than one producer"]),
    (world("dup", [comp("a", "upper"), comp("a", "upper")]), ["duplicate component name 'a'"]),
    (world("outer", [comp("a", "upper")], subs=[world("deep", [comp("b", "upper", inp="q")])]), ["'deep'", "'q'"]),
    (world("bad", [{**comp("a", "upper"), "uses": "http"}]), ["`uses`"]),
    (world("bad", [{"lang": "js"}]), ["has no name"]),
])
def test_plan_errors_are_clear_and_nothing_runs(tmp_path, w, words):
    ex = ScriptExecutor()
    with pytest.raises(PlanError) as e:
        run(w, b"", tmp_path, executor=ex)
    for word in words:
        assert word in e.value.message
    assert ex.ran == []
    assert e.value.code == "invalid_workflow" and e.value.http_status == 400


def test_hostile_nesting_and_size_are_refused():
    w = world("w0", [comp("a", "upper")])
    cur = w
    for i in range(1, 40):
        sub = world(f"w{i}", [comp("a", "upper")])
        cur["workflows"] = [sub]
        cur = sub
    with pytest.raises(PlanError, match="nested"):
        check_world(w)
    with pytest.raises(PlanError, match="at most"):
        check_world(world("big", [comp(f"c{i}", "upper") for i in range(10_001)]))


# -- the recorded run -----------------------------------------------------------------------------
def test_recorded_run_writes_status_steps_record_and_seals_the_ledger(tmp_path):
    data = tmp_path / "data"
    init = run_wbx("init", "--tenant", "acme", "--data", str(data))
    assert init.returncode == 0, init.stderr
    run_id, run_dir = allocate(data, "acme", prefix="wf")
    w = world("recorded", [comp("a", "const {\"n\": 1}", out="x"), comp("b", "fail bad input", inp="x", out="y"),
                           comp("c", "upper", inp="y"), comp("d", "sleep 0.7 whoami")])
    ex = ScriptExecutor()
    seen: list[dict] = []

    async def on_event(e):
        if e["type"] == "step" and e["status"] != "running":  # the status file follows the steps
            seen.append(json.loads((run_dir / "_status.json").read_text()))

    async def main():
        return await run_workflow_dir(run_dir, w, b"payload", executor=ex, ctx_for=ctx_maker(tmp_path), tenant="acme",
                                      on_event=on_event)

    rec = trio.run(main)
    assert rec["run"] == run_id and rec["status"] == "error"
    # while it runs the status says so; its step count is refreshed (at most every 0.5 s), never ahead
    assert all(s["status"] == "running" for s in seen) and seen[-1]["steps"] == 4
    status = json.loads((run_dir / "_status.json").read_text())
    assert status["status"] == "error" and status["steps"] == 4 and status["kind"] == "workflow"
    assert status["id"] == run_id and status["workflow"] == "recorded" and status["tasks"] == 4
    assert status["result"].startswith("2 of 4 step(s) ok") and "b (trap)" in status["result"]
    assert {(e["component"], e["code"]) for e in status["errors"]} == {("b", "trap"), ("c", "skipped")}
    assert status["ledger"]["count"] == 4 and status["ended_at"] >= status["started_at"]
    lines = [json.loads(l) for l in (run_dir / "_steps.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [0, 1, 2, 3]
    by_tool = {l["tool"]: l for l in lines}
    assert set(by_tool) == {"test:a", "test:b", "test:c", "test:d"}
    assert by_tool["test:a"]["output"] == '{"n": 1}' and by_tool["test:a"]["exit_code"] == 0
    assert by_tool["test:b"]["exit_code"] == 1 and by_tool["test:b"]["error"] == "trap: bad input"
    assert by_tool["test:c"]["exit_code"] is None and by_tool["test:c"]["error"].startswith("skipped:")
    assert by_tool["test:b"]["args"] == {"in": "x", "uses": [], "workflow": "recorded"}
    assert all(l["agent"] == "workflow" and isinstance(l["dur_ms"], int) for l in lines)
    assert read_record(run_dir) == rec
    v = run_wbx("ledger", "verify", run_id, "--tenant", "acme", "--data", str(data))
    assert v.returncode == 0, v.stdout + v.stderr
    out = json.loads(v.stdout)
    assert out["tamper_evident"] and out["attributable"] and out["count"] == 4
    # a line changed afterwards is caught
    raw = (run_dir / "_steps.jsonl").read_bytes().replace(b"bad input", b"all good!")
    (run_dir / "_steps.jsonl").write_bytes(raw)
    assert run_wbx("ledger", "verify", run_id, "--tenant", "acme", "--data", str(data)).returncode == 5


def test_recorded_plan_error_leaves_an_error_status(tmp_path):
    run_dir = tmp_path / "wf-1"
    run_dir.mkdir()

    async def main():
        await run_workflow_dir(run_dir, world("cyc", [comp("a", "upper", inp="x", out="x")]), b"",
                               executor=ScriptExecutor(), ctx_for=ctx_maker(tmp_path), tenant="acme")

    with pytest.raises(PlanError):
        trio.run(main)
    status = json.loads((run_dir / "_status.json").read_text())
    assert status["status"] == "error" and "cycle" in status["result"] and status["steps"] == 0
    assert status["error"]["code"] == "invalid_workflow"
    assert not (run_dir / "_ledger.json").exists()  # no tenant repo here: nothing to seal


def test_a_cancelled_run_is_recorded_as_cancelled(tmp_path):
    run_dir = tmp_path / "wf-2"
    run_dir.mkdir()
    w = world("slow", [comp("a", "const a", out="x"), comp("b", "sleep 30 upper", inp="x")])

    async def main():
        with trio.move_on_after(0.5):
            await run_workflow_dir(run_dir, w, b"", executor=ScriptExecutor(), ctx_for=ctx_maker(tmp_path),
                                   tenant="acme")

    t0 = time.monotonic()
    trio.run(main)
    assert time.monotonic() - t0 < 5
    status = json.loads((run_dir / "_status.json").read_text())
    assert status["status"] == "cancelled" and status["steps"] == 1


def test_secret_values_never_reach_the_records(tmp_path):
    from workbooks.agent.secrets import Secrets

    run_dir = tmp_path / "wf-3"
    run_dir.mkdir()
    w = world("leaky", [comp("a", "const token=s3cr3t-VALUE-42", out="x"), comp("b", "fail saw s3cr3t-VALUE-42", inp="x")])

    async def main():
        return await run_workflow_dir(run_dir, w, b"", executor=ScriptExecutor(), ctx_for=ctx_maker(tmp_path),
                                      tenant="acme", secrets=Secrets({"API_TOKEN": "s3cr3t-VALUE-42"}))

    rec = trio.run(main)
    assert rec["tasks"]["a"] == "token=[secret:API_TOKEN]"
    for name in ("_steps.jsonl", "_status.json", "run.json"):
        text = (run_dir / name).read_text()
        assert "s3cr3t" not in text and "[secret:API_TOKEN]" in text, name


def test_workflow_view_while_running_and_when_finished(tmp_path):
    from workbooks.workflow.records import workflow_view

    run_dir = tmp_path / "wf-4"
    run_dir.mkdir()
    assert workflow_view(run_dir) is None
    w = world("viewed", [comp("a", "const A", out="x"), comp("b", "sleep 0.6 suffix b", inp="x")])
    views: list[dict] = []

    async def main():
        async with trio.open_nursery() as n:
            async def watch():
                while not (run_dir / "_status.json").exists():
                    await trio.sleep(0.01)
                await trio.sleep(0.3)
                views.append(workflow_view(run_dir))

            n.start_soon(watch)
            return await run_workflow_dir(run_dir, w, b"", executor=ScriptExecutor(), ctx_for=ctx_maker(tmp_path),
                                          tenant="acme")

    rec = trio.run(main)
    mid = views[0]
    assert mid["status"] == "running" and mid["run"] == "wf-4" and mid["steps"] == 1 and mid["tasks"] == 2
    assert [l["tool"] for l in mid["live"]] == ["test:a"]
    done = workflow_view(run_dir)
    assert done == {**rec, "status": "done", "result": "2 of 2 step(s) ok"}


def test_step_dirs_never_hand_out_the_run_folder_or_a_shared_one(tmp_path):
    from workbooks.workflow.records import StepDirs

    run_dir = tmp_path / "wf-5"
    run_dir.mkdir()
    dirs = StepDirs(run_dir)
    got = [dirs(n) for n in ("..", ".", "a/../../b", "same", "same", "", "x" * 300)]
    assert len(set(got)) == len(got)
    for d in got:
        assert d.parent == run_dir / "steps" and d.is_dir() and not d.is_symlink()
        assert (d.stat().st_mode & 0o777) == 0o700
    assert [d.name for d in got[:3]] == ["0001-step", "0002-step", "0003-a-b"]
    # a folder (or symlink) planted where the next one goes is refused, never reused
    (run_dir / "steps" / "0008-evil").symlink_to(tmp_path)
    with pytest.raises(FileExistsError):
        dirs("evil")
