"""The run writers as they are used, indexed by the real indexer process: a workflow run recorded
by the DAG engine (steps `<lang>:<component>`, a failure and its skipped dependant) and a TODO
outline run (checks in the WASI shell, tasks in `_status.json`)."""

from __future__ import annotations

import trio

from tests.test_telemetry_index import Indexer, indexed, wait_for
from workbooks.agent.records import read_steps
from workbooks.agent.runs import allocate
from workbooks.workflow.types import Component, StepContext, StepResult


class TinyExecutor:
    """`ok TEXT` outputs TEXT after 20 ms; `fail MSG` fails (code trap)."""

    async def run(self, component: Component, input: bytes, ctx: StepContext) -> StepResult:
        cmd, _, arg = component.src.strip().partition(" ")
        await trio.sleep(0.02)
        if cmd == "ok":
            return StepResult(ok=True, output=arg.encode(), lane=component.lang, ms=20.0)
        return StepResult(ok=False, code="trap", error=arg, lane=component.lang, ms=20.0)

    async def aclose(self) -> None:
        pass


def _comp(name, src, inp=None, out=None, lang="js"):
    return {"name": name, "lang": lang, "src": src, "in": inp, "out": out, "uses": [], "deps": [],
            "persist": False, "dir": None}


def test_a_workflow_run_of_the_engine_is_indexed(tmp_path):
    from workbooks.workflow.engine import run_workflow_dir

    data = tmp_path / "data"
    rid, run_dir = allocate(data, "acme", prefix="wf")
    world = {"name": "digest", "edges": [], "imports": [], "schedule": None, "workflows": [], "components": [
        _comp("fetch", "ok news", out="raw"), _comp("summarize", "fail no model", inp="raw", out="sum", lang="wat"),
        _comp("send", "ok sent", inp="sum"), _comp("archive", "ok kept", inp="raw", lang="c")]}
    n = [0]

    def ctx_for(c: Component) -> StepContext:
        n[0] += 1
        d = tmp_path / "steps" / str(n[0])
        d.mkdir(parents=True)
        return StepContext(tenant="acme", workflow="digest", run_id=rid, step_dir=d, data_dir=data)

    with Indexer(data, interval=0.1):
        record = trio.run(lambda: run_workflow_dir(run_dir, world, b"in", executor=TinyExecutor(),
                                                   ctx_for=ctx_for, tenant="acme", data_dir=data))
        assert record["status"] == "error"
        lines = read_steps(run_dir)
        s, _ = wait_for(lambda: indexed(data, "acme", rid, stage="error", tool_calls=len(lines)), what="the wf run")
    assert s["kind"] == "workflow"
    by_tool = {r["tool"]: r for r in s["recent"]}
    assert set(by_tool) == {line["tool"] for line in lines}
    assert {"js:fetch", "wat:summarize", "c:archive"} <= set(by_tool)
    assert by_tool["js:fetch"]["exit_code"] == 0 and by_tool["c:archive"]["exit_code"] == 0
    failing = {e["tool"]: e for e in s["errors"]}
    assert "wat:summarize" in failing and "no model" in (failing["wat:summarize"]["error"] or "")
    assert "js:fetch" not in failing and "c:archive" not in failing
    # the failed step's dependant is recorded as skipped: no exit code, an error saying why
    assert by_tool["js:send"]["exit_code"] is None and "not run" in failing["js:send"]["error"]
    assert s["total_ms"] == sum(int(line.get("dur_ms") or 0) for line in lines)


def test_a_todo_outline_run_is_indexed(tmp_path):
    from workbooks.workflow.todo import run_todo

    data = tmp_path / "data"
    rid, run_dir = allocate(data, "acme", prefix="wf")
    (run_dir / "a.txt").write_text("ok\n")
    org = ("* TODO Release\n:PROPERTIES:\n:ORDERED: t\n:END:\n"
           "** TODO Build\n:DONE-WHEN: grep -q ok < a.txt\n"
           "** TODO Publish\n:DONE-WHEN: grep -q ok < missing.txt\n")
    with Indexer(data, interval=0.1):
        final = trio.run(lambda: run_todo(org, run_dir, tenant="acme", data_dir=data))
        lines = read_steps(run_dir)
        s, _ = wait_for(lambda: indexed(data, "acme", rid, stage=final["stage"], tool_calls=len(lines)),
                        what="the TODO run")
    assert s["kind"] == "todo"
    states = {t["title"]: t["state"] for t in s["tasks"]}
    assert states["Build"] == "DONE" and states["Publish"] != "DONE" and states["Release"] != "DONE"
    assert {r["tool"] for r in s["recent"]} == {"check"}
    assert [e["tool"] for e in s["errors"]] == ["check"]  # Publish's check failed
