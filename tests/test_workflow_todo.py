"""TODO-outline workflows (workbooks.workflow.todo): the outline runs as a task list.

Checks run in the agent's WASI shell against real files; agents are plain async callables standing
in for the agents process; the ledger seals into a real tenant git repo.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import trio

from tests.conftest import proc_stats
from workbooks.agent.records import STEP_KEYS
from workbooks.agent.secrets import Secrets
from workbooks.errors import BadRequest, Conflict
from workbooks.gitstore import GitStore
from workbooks.ledger.api import verify_run
from workbooks.ledger.seal import ok as ledger_ok
from workbooks.workflow.todo import TodoError, run_todo, todo_plan

TENANT = "t1"


@pytest.fixture
def data(tmp_path):
    return tmp_path / "data"


def run_dir_of(data: Path, n: int = 1) -> Path:
    p = data / "wb-runs" / TENANT / f"wf-{n}"
    p.mkdir(parents=True, exist_ok=True)
    return p


def steps_of(run: Path) -> list[dict]:
    try:
        raw = (run / "_steps.jsonl").read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def tasks_by_id(status: dict) -> dict:
    return {t["id"]: t for t in status["tasks"]}


def run(org: str, run_dir: Path, data: Path, **kw) -> dict:
    async def main():
        return await run_todo(org, run_dir, tenant=TENANT, data_dir=data, **kw)

    return trio.run(main)


class Agent:
    """An agent_leaf that records its calls, how many run at once, and answers per item."""

    def __init__(self, delay: float = 0.0, answers: dict | None = None, action=None):
        self.delay = delay
        self.answers = answers or {}
        self.action = action
        self.calls: list[dict] = []
        self.now = 0
        self.peak = 0

    async def __call__(self, item: dict):
        self.calls.append(item)
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await trio.sleep(self.delay)
            if self.action:
                self.action(item)
            answer = self.answers.get(item["id"], (True, f"did {item['title']}"))
            if isinstance(answer, Exception):
                raise answer
            return answer
        finally:
            self.now -= 1


# ── the plan ─────────────────────────────────────────────────────────────────────────────────

PLAN_ORG = """#+TODO: TODO NEXT | DONE(d!) SHIPPED
#+title: plan
Intro text.
* Release
:PROPERTIES:
:ORDERED: t
:END:
** TODO Build
:PROPERTIES:
:DONE-WHEN: cat build.txt | grep -q built
:END:
** NEXT Test
:done-when: grep -q pass < test.txt
** SHIPPED Announce
** TODO Verify
#+begin_src sh :results silent :check
cat a.txt
,* not a headline
#+end_src
** TODO Python check
#+begin_src python :check
print(1)
#+end_src
* Notes
Only prose here.
** More notes
* TODO Same
* TODO Same
* TODO Think about it
"""


def test_plan_gives_each_item_its_kind_check_and_state():
    plan = todo_plan(PLAN_ORG)
    assert plan["count"] == 9 and "SHIPPED" in plan["done_keywords"] and "NEXT" not in plan["done_keywords"]
    release, *rest = plan["items"]
    assert [r["id"] for r in rest] == ["same", "same-2", "think-about-it"]  # prose headlines are not work
    assert release["kind"] == "composite" and release["ordered"] is True and release["state"] is None
    kids = {c["id"]: c for c in release["children"]}
    assert list(kids) == ["build", "test", "announce", "verify", "python-check"]
    assert kids["build"]["kind"] == "check" and kids["build"]["check"] == {"source": "DONE-WHEN", "line": "cat build.txt | grep -q built"}
    assert kids["test"]["state"] == "NEXT" and kids["test"]["check"]["line"] == "grep -q pass < test.txt"  # a bare line
    assert kids["announce"]["done"] is True and kids["announce"]["state"] == "SHIPPED"
    assert kids["verify"]["check"] == {"source": "src", "lang": "sh", "line": "cat a.txt\n* not a headline"}
    assert "cannot run" in kids["python-check"]["check"]["error"]
    assert rest[2]["kind"] == "agent" and rest[2]["check"] is None


def test_plan_refuses_outlines_that_cannot_run():
    with pytest.raises(TodoError, match="no TODO headlines"):
        todo_plan("* Just prose\n** and more\n")
    deep = "".join("*" * n + f" TODO level {n}\n" for n in range(1, 120))
    with pytest.raises(TodoError, match="deep"):
        todo_plan(deep)
    with pytest.raises(BadRequest):
        todo_plan(b"* TODO bytes")  # type: ignore[arg-type]


# ── ordered and parallel ─────────────────────────────────────────────────────────────────────

def _group(ordered: bool, n: int = 4) -> str:
    head = "* Group\n" + (":PROPERTIES:\n:ORDERED: t\n:END:\n" if ordered else "")
    return head + "".join(f"** TODO Task {i}\nDo thing {i}.\n" for i in range(n))


def test_ordered_children_run_in_sequence_and_others_in_parallel(data):
    agent = Agent(delay=0.3)
    t0 = time.monotonic()
    st = run(_group(ordered=False), run_dir_of(data, 1), data, agent_leaf=agent)
    parallel_s = time.monotonic() - t0
    assert st["status"] == "done" and st["state"] == "DONE" and agent.peak == 4
    assert parallel_s < 1.1, parallel_s  # four 0.3 s tasks at once, not 1.2 s in a row

    agent = Agent(delay=0.3)
    t0 = time.monotonic()
    st = run(_group(ordered=True), run_dir_of(data, 2), data, agent_leaf=agent)
    ordered_s = time.monotonic() - t0
    assert st["state"] == "DONE" and agent.peak == 1
    assert [c["id"] for c in agent.calls] == ["task-0", "task-1", "task-2", "task-3"]
    assert ordered_s >= 1.2 and ordered_s > parallel_s + 0.5, (ordered_s, parallel_s)


def test_parallel_leaves_are_capped_across_the_whole_outline(data):
    org = "".join(f"* Group {g}\n" + "".join(f"** TODO Task {g}.{i}\n" for i in range(6)) for g in range(2))
    agent = Agent(delay=0.2)
    st = run(org, run_dir_of(data, 1), data, agent_leaf=agent)
    assert st["counts"]["DONE"] == 14 and agent.peak == 8  # 12 leaves in two groups: never more than 8
    agent = Agent(delay=0.1)
    run(org, run_dir_of(data, 2), data, agent_leaf=agent, max_parallel=3)
    assert agent.peak == 3
    with pytest.raises(BadRequest):
        run(org, run_dir_of(data, 3), data, max_parallel=9)


def test_an_ordered_parent_stops_at_the_first_child_that_is_not_done(data):
    rd = run_dir_of(data)
    (rd / "a.txt").write_text("ok\n")
    org = ("* Pipeline\n:PROPERTIES:\n:ORDERED: t\n:END:\n"
           "** TODO First\n:DONE-WHEN: grep -q ok < a.txt\n"
           "** TODO Second\n:DONE-WHEN: grep -q ok < b.txt\n"
           "** TODO Third\n:DONE-WHEN: grep -q ok < a.txt\n")
    st = run(org, rd, data)
    t = tasks_by_id(st)
    assert (t["first"]["state"], t["second"]["state"], t["third"]["state"]) == ("DONE", "FAILED", "TODO")
    assert t["third"]["reason"] == "waits for second (FAILED)" and t["pipeline"]["state"] == "PARTIAL"
    assert [s["args"]["item"] for s in steps_of(rd)] == ["first", "second"]  # the third never ran


# ── checks ───────────────────────────────────────────────────────────────────────────────────

def test_done_when_passes_and_fails_in_the_wasi_shell(data):
    rd = run_dir_of(data)
    (rd / "done.txt").write_text("all ok\n")
    (rd / "other.txt").write_text("nope\n")
    org = ("* TODO Passing\n:PROPERTIES:\n:DONE-WHEN: cat done.txt | grep -q ok\n:END:\n"
           "* TODO Failing\n:PROPERTIES:\n:DONE-WHEN: cat other.txt | grep -q ok\n:END:\n"
           "* TODO Missing file\n:PROPERTIES:\n:DONE-WHEN: cat absent.txt | grep -q ok\n:END:\n"
           "* TODO Outside\n:PROPERTIES:\n:DONE-WHEN: cat /etc/passwd | grep -q root\n:END:\n")
    st = run(org, rd, data)
    t = tasks_by_id(st)
    assert t["passing"]["state"] == "DONE"
    assert t["failing"]["state"] == "FAILED" and t["failing"]["reason"] == "check failed (exit 1)"
    assert t["missing-file"]["state"] == "FAILED" and "absent.txt" in t["missing-file"]["output"]
    assert t["outside"]["state"] == "FAILED"  # the sandbox sees only the run's folder
    steps = steps_of(rd)
    assert len(steps) == 4 and all(list(s) == list(STEP_KEYS) for s in steps)
    by = {s["args"]["item"]: s for s in steps}
    assert by["passing"]["tool"] == "check" and by["passing"]["exit_code"] == 0 and by["passing"]["agent"] == "todo"
    assert by["failing"]["exit_code"] == 1 and by["failing"]["args"]["pipeline"] == "cat other.txt | grep -q ok"
    assert sorted(s["step"] for s in steps) == [0, 1, 2, 3] and all(s["dur_ms"] >= 0 for s in steps)
    assert st["status"] == "done" and st["stage"] == "done" and st["state"] == "PARTIAL" and st["steps"] == 4


def test_check_blocks_run_and_a_non_shell_check_is_refused(data, tmp_path):
    tree = tmp_path / "tree"  # the workbook's tree as the working directory
    tree.mkdir()
    (tree / "report.md").write_text("# Report\nstatus: green\n")
    org = ("* TODO Report is green\n#+begin_src sh :check\ncat report.md | grep -q 'status: green'\n"
           "grep -c Report < report.md\n#+end_src\n"
           "* TODO Report is red\n#+begin_src bash :check\ngrep -q 'status: red' < report.md\n#+end_src\n"
           "* TODO Unchecked block\n#+begin_src sh\nfalse\n#+end_src\n"
           "* TODO Python\n#+begin_src python :check\nimport os\n#+end_src\n")
    rd = run_dir_of(data)
    st = run(org, rd, data, workdir=tree)
    t = tasks_by_id(st)
    assert t["report-is-green"]["state"] == "DONE" and t["report-is-green"]["output"] == "1"
    assert t["report-is-red"]["state"] == "FAILED"
    assert t["unchecked-block"]["state"] == "TODO" and t["unchecked-block"]["reason"] == "no check and no agent"
    assert t["python"]["state"] == "FAILED" and "cannot run" in t["python"]["output"]
    assert {s["args"]["item"] for s in steps_of(rd)} == {"report-is-green", "report-is-red"}


def test_a_check_cannot_touch_the_run_records(data):
    rd = run_dir_of(data)
    org = "* TODO Sneaky\n:DONE-WHEN: echo forged > _status.json\n* TODO Steps\n:DONE-WHEN: echo x >> _steps.jsonl\n"
    st = run(org, rd, data)
    t = tasks_by_id(st)
    assert t["sneaky"]["state"] == "FAILED" and "write blocked" in t["sneaky"]["output"]
    assert t["steps"]["state"] == "FAILED"
    assert json.loads((rd / "_status.json").read_text())["kind"] == "todo"
    assert all("step" in s for s in steps_of(rd))


def test_checks_spawn_no_native_process(data, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a native process was started for a check")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "execv", "execve", "spawnv"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse)
    rd = run_dir_of(data)
    (rd / "f.txt").write_text("ok\n")
    org = "".join(f"* TODO Check {i}\n:DONE-WHEN: cat f.txt | grep -q ok && echo {i} | wc -l\n" for i in range(10))
    before = {p for p, _s, ppid, _ in proc_stats() if ppid == os.getpid()}
    st = run(org, rd, data)
    after = {p for p, _s, ppid, _ in proc_stats() if ppid == os.getpid()}
    assert st["counts"]["DONE"] == 10 and len(steps_of(rd)) == 10
    assert after <= before


# ── resume, composites, agents ───────────────────────────────────────────────────────────────

RESUME_ORG = """* Project
** TODO Have the config
:DONE-WHEN: grep -q ready < config.txt
** TODO Have the data
:DONE-WHEN: grep -q rows < data.txt
** TODO Write the summary
Summarise the data.
"""


def test_a_second_run_skips_done_items_and_runs_only_what_was_left(data):
    GitStore(data, TENANT).ensure()  # the tenant repo exists: the run is sealed
    rd = run_dir_of(data)
    (rd / "config.txt").write_text("ready\n")
    agent = Agent()
    st1 = run(RESUME_ORG, rd, data, agent_leaf=agent)
    t = tasks_by_id(st1)
    assert (t["have-the-config"]["state"], t["have-the-data"]["state"], t["write-the-summary"]["state"]) == ("DONE", "FAILED", "DONE")
    assert t["project"]["state"] == "PARTIAL" and len(agent.calls) == 2  # the failing check got the agent too
    n1 = len(steps_of(rd))
    assert st1["ledger"]["count"] == n1 and ledger_ok(verify_run(data, TENANT, rd))

    (rd / "data.txt").write_text("rows: 12\n")
    st2 = run(RESUME_ORG, rd, data, agent_leaf=agent)
    t = tasks_by_id(st2)
    assert all(x["state"] == "DONE" for x in t.values()) and st2["state"] == "DONE"
    assert t["have-the-config"]["reason"] == "DONE in an earlier run"
    new = steps_of(rd)[n1:]
    assert [(s["tool"], s["args"]["item"]) for s in new] == [("check", "have-the-data")]
    assert new[0]["step"] == n1 and len(agent.calls) == 2  # nothing DONE ran again
    assert st2["ledger"]["count"] == n1 + 1 and ledger_ok(verify_run(data, TENANT, rd))

    n2 = len(steps_of(rd))
    st3 = run(RESUME_ORG, rd, data, agent_leaf=agent)  # all DONE: nothing runs
    assert st3["state"] == "DONE" and len(steps_of(rd)) == n2 and len(agent.calls) == 2


def test_composites_are_done_or_partial(data):
    rd = run_dir_of(data)
    (rd / "ok.txt").write_text("ok\n")
    org = ("* All good\n** TODO A\n:DONE-WHEN: grep -q ok < ok.txt\n** DONE B\n"
           "** Nested\n*** TODO C\n:DONE-WHEN: grep -q ok < ok.txt\n"
           "* TODO Half\n** TODO D\n:DONE-WHEN: grep -q ok < ok.txt\n** Deeper\n*** TODO E\n:DONE-WHEN: grep -q ok < missing.txt\n"
           "* DONE Finished group\n** TODO Never run\n:DONE-WHEN: grep -q ok < missing.txt\n")
    st = run(org, rd, data)
    t = tasks_by_id(st)
    assert t["all-good"]["state"] == "DONE" and t["nested"]["state"] == "DONE" and t["b"]["output"] == "(already DONE)"
    assert t["half"]["state"] == "PARTIAL" and t["deeper"]["state"] == "PARTIAL" and t["e"]["state"] == "FAILED"
    assert t["finished-group"]["state"] == "DONE" and t["never-run"]["state"] == "TODO"
    assert "never-run" not in {s["args"]["item"] for s in steps_of(rd)}
    assert st["state"] == "PARTIAL" and st["result"].startswith("PARTIAL: ")


def test_leaves_without_a_check_go_to_the_agent_or_stay_todo(data):
    org = ("* Work\n** TODO Write the intro\nTwo paragraphs, friendly.\n** TODO Refuse me\n** TODO Crash\n** TODO Odd answer\n"
           "** TODO Make the file\n:DONE-WHEN: grep -q made < made.txt\n")
    rd = run_dir_of(data, 1)
    st = run(org, rd, data)
    t = tasks_by_id(st)
    assert all(t[i]["state"] == "TODO" and t[i]["reason"] == "no check and no agent"
               for i in ("write-the-intro", "refuse-me", "crash", "odd-answer"))
    assert t["make-the-file"]["state"] == "FAILED" and [s["tool"] for s in steps_of(rd)] == ["check"]

    rd2 = run_dir_of(data, 2)
    agent = Agent(answers={"refuse-me": (False, "cannot do that"), "crash": RuntimeError("model down"),
                           "odd-answer": "just text"},
                  action=lambda item: (Path(item["workdir"]) / "made.txt").write_text("made\n")
                  if item["id"] == "make-the-file" else None)
    st = run(org, rd2, data, agent_leaf=agent)
    t = tasks_by_id(st)
    assert t["write-the-intro"]["state"] == "DONE" and t["write-the-intro"]["output"] == "did Write the intro"
    intro = next(c for c in agent.calls if c["id"] == "write-the-intro")
    assert intro["task"] == "Write the intro\n\nTwo paragraphs, friendly." and intro["parents"] == ["Work"]
    assert t["refuse-me"]["state"] == "FAILED" and t["refuse-me"]["output"] == "cannot do that"
    assert t["crash"]["state"] == "FAILED" and "model down" in t["crash"]["output"]
    assert t["odd-answer"]["state"] == "FAILED" and "not (ok: bool" in t["odd-answer"]["output"]
    assert t["make-the-file"]["state"] == "DONE"  # checked, agent did the work, checked again
    mine = [(s["tool"], s["exit_code"]) for s in steps_of(rd2) if s["args"]["item"] == "make-the-file"]
    assert mine == [("check", 1), ("agent", 0), ("check", 0)]
    agent_steps = {s["args"]["item"]: s for s in steps_of(rd2) if s["tool"] == "agent"}
    assert agent_steps["refuse-me"]["exit_code"] == 1 and agent_steps["crash"]["error"] == "agent_error"


# ── status, events, errors ───────────────────────────────────────────────────────────────────

def test_status_goes_running_then_done_and_events_follow(data):
    rd = run_dir_of(data)
    seen_running: list[dict] = []
    events: list[dict] = []

    async def agent(item):
        await trio.sleep(0.4)  # the status file is rewritten while the run goes
        seen_running.append(json.loads((rd / "_status.json").read_text()))
        return True, "ok"

    async def on_event(ev):
        events.append(ev)

    org = "* TODO One\n* TODO Two\n"
    st = run(org, rd, data, agent_leaf=agent, on_event=on_event)
    assert seen_running and all(s["status"] == "running" and s["stage"] == "running" for s in seen_running)
    assert seen_running[0]["slug"] == "wf-1" and seen_running[0]["kind"] == "todo"
    assert st["status"] == "done" and st["ended_at"] >= st["started_at"] and st["error"] is None
    on_disk = json.loads((rd / "_status.json").read_text())
    assert on_disk == st
    kinds = [e["type"] for e in events]
    assert kinds[0] == "status" and kinds[-1] == "status" and events[-1]["status"] == "done"
    assert {e["id"] for e in events if e["type"] == "item"} == {"one", "two"}
    assert sum(1 for k in kinds if k == "step") == 2


def test_a_bad_outline_ends_in_error_and_a_busy_folder_is_refused(data):
    rd = run_dir_of(data)
    st = run("* Only prose\nno work here\n", rd, data)
    assert st["status"] == "error" and st["stage"] == "error" and st["error_code"] == "bad_todo_outline"
    assert "no TODO headlines" in st["error"] and steps_of(rd) == []

    async def both():
        started = trio.Event()

        async def slow(item):
            started.set()
            await trio.sleep(0.5)
            return True, "ok"

        async with trio.open_nursery() as n:
            n.start_soon(lambda: run_todo("* TODO Slow\n", rd, tenant=TENANT, data_dir=data, agent_leaf=slow))
            await started.wait()
            with pytest.raises(Conflict):
                await run_todo("* TODO Slow\n", rd, tenant=TENANT, data_dir=data)

    trio.run(both)
    assert json.loads((rd / "_status.json").read_text())["status"] == "done"
    with pytest.raises(BadRequest):
        trio.run(lambda: run_todo("* TODO x\n", rd, tenant="../evil", data_dir=data))


def test_cancelling_a_run_leaves_it_cancelled_and_secrets_never_reach_the_records(data):
    rd = run_dir_of(data)
    (rd / "key.txt").write_text("token=s3cr3t-VALUE-42\n")
    secrets = Secrets({"API_TOKEN": "s3cr3t-VALUE-42"})

    async def hang(item):
        await trio.sleep(60)
        return True, "never"

    async def main():
        with trio.move_on_after(1.0):
            await run_todo("* TODO Leak\n:DONE-WHEN: cat key.txt\n* TODO Hang\n", rd, tenant=TENANT, data_dir=data,
                           agent_leaf=hang, secrets=secrets)

    t0 = time.monotonic()
    trio.run(main)
    assert time.monotonic() - t0 < 5
    st = json.loads((rd / "_status.json").read_text())
    assert st["status"] == "cancelled" and tasks_by_id(st)["leak"]["state"] == "DONE"
    text = (rd / "_steps.jsonl").read_text() + (rd / "_status.json").read_text()
    assert "s3cr3t-VALUE-42" not in text and "[secret:API_TOKEN]" in text


class KernelCaller:
    """The pool client's call signature (`await oql.call(op, args) -> bytes`) over the real kernel."""

    def __init__(self):
        from workbooks.oql import default_kernel

        self.kernel = default_kernel()
        self.ops: list[str] = []

    async def call(self, op: str, args: list, deadline_ms: int = 10000) -> bytes:
        self.ops.append(op)
        return (await trio.to_thread.run_sync(lambda: self.kernel.call(op, *args))).encode("utf-8")


def test_headlines_can_come_from_an_async_oql_caller(data):
    rd = run_dir_of(data)
    (rd / "ok.txt").write_text("ok\n")
    caller = KernelCaller()
    st = run("* TODO Via the pool\n:DONE-WHEN: grep -q ok < ok.txt\n", rd, data, oql=caller)
    assert caller.ops == ["parse_headlines"]
    assert st["state"] == "DONE" and st["id"] == "wf-1" and st["tenant"] == TENANT and st["ms"] >= 0
