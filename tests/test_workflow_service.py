"""Workflows through the whole service (`wbx serve`: supervisor, pool, runner workers, agents process,
scheduler, telemetry, planes): the demo's daily digest really runs, plans, failures that say what
failed, an agent step, a TODO outline, and a scheduled fire driven by a controllable clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.fake_llm import FakeLlm
from tests.serve_proc import ROOT, ServeProc

LLM_KEY = "sk-fake-llm-key-wf-424242"
# 2026-12-07 06:59:50 UTC: ten seconds before the demo's `0 7 * * *` fires
CLOCK_START = 1796626790.0


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    root = tmp_path_factory.mktemp("wfsvc")
    clock = root / "clock"
    clock.write_text(str(CLOCK_START))
    with FakeLlm(require_key=LLM_KEY) as llm:
        env = {"WB_LLM_BASE_URL": llm.openai_base_url, "WB_LLM_MODEL": "fake-model", "WB_LLM_API_KEY": LLM_KEY,
               "WB_SCHEDULER_CLOCK": str(clock), "WB_SCHEDULE_MISSED": "skip"}
        sp = ServeProc(root / "data", "--workers", "1", env=env)
        try:
            deadline = time.time() + 90
            key = None
            while time.time() < deadline:
                if sp.proc.poll() is not None:
                    pytest.fail("wbx serve exited:\n" + sp.stderr_text()[-3000:])
                kf = root / "data" / "admin.key"
                if kf.exists():
                    key = kf.read_text().strip()
                    try:
                        r = httpx.get(sp.control + "/api/ops/workers", headers={"Authorization": f"Bearer {key}"})
                        kids = {k["id"]: k["state"] for k in r.json().get("children", [])}
                        if kids.get("first-run") == "stopped" and all(
                                kids.get(c) == "running" for c in ("agents", "scheduler", "telemetry")):
                            break
                    except (httpx.HTTPError, ValueError):
                        pass
                time.sleep(0.2)
            else:
                pytest.fail("service not up:\n" + sp.stdout_text()[-4000:])
            c = httpx.Client(base_url=sp.control, timeout=30,
                             headers={"Authorization": f"Bearer {key}", "X-Workbooks-Tenant": "dev"})
            yield {"sp": sp, "http": c, "llm": llm, "clock": clock, "data": root / "data", "key": key}
            c.close()
        finally:
            sp.stop()


def wait_wf(svc, run: str, timeout: float = 90) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        view = svc["http"].get(f"/api/workflow/{run}").json()
        if view.get("status") not in ("running", "queued"):
            return view
        time.sleep(0.2)
    pytest.fail(f"{run} still running: {view}")


def test_the_demo_daily_digest_runs_on_the_server_and_is_sealed_and_indexed(svc):
    c = svc["http"]
    r = c.post("/api/workflow", json={"workbook": "demo"})
    assert r.status_code == 202, r.text
    run = r.json()["run"]
    assert run.startswith("wf-") and r.headers["Location"] == f"/api/workflow/{run}"
    view = wait_wf(svc, run)
    assert view["status"] == "done", view
    rec = view["record"]
    assert rec["workflow"] == "daily digest" and rec["schedule"] == {"cron": "0 7 * * *"}
    assert rec["exports"]["digest"].startswith("Digest #") and "Read the guide" in rec["exports"]["digest"]
    assert set(rec["tasks"]) == {"fetch", "summarize"}
    # the kv capability persists across runs: the second digest counts on
    again = wait_wf(svc, c.post("/api/workflow", json={"workbook": "demo"}).json()["run"])
    n1 = int(rec["exports"]["digest"].split("#")[1].split(":")[0])
    assert again["record"]["exports"]["digest"].startswith(f"Digest #{n1 + 1}:")
    # the page's activity shows the workbook's last digest
    act = httpx.get(svc["sp"].public + "/_activity", headers={"Host": f"demo.localhost:{svc['sp'].pport}"}).json()
    digest = next(w for w in act["workflows"] if w["workflow"] == "daily digest")
    assert digest["status"] == "done" and digest["exports"]["digest"].startswith("Digest #")
    # sealed in the ledger like agent runs
    env = dict(os.environ, WB_DATA=str(svc["data"]))
    v = subprocess.run([sys.executable, "-m", "workbooks", "ledger", "verify", run, "--tenant", "dev"], cwd=ROOT,
                       env=env, capture_output=True, timeout=60)
    assert v.returncode == 0, v.stdout + v.stderr
    # indexed by telemetry
    deadline = time.time() + 20
    while time.time() < deadline:
        t = c.get(f"/api/telemetry/{run}")
        if t.status_code == 200 and t.json().get("tool_calls") == 2:
            break
        time.sleep(0.3)
    assert t.status_code == 200 and t.json()["tool_calls"] == 2, t.text


def test_plan_records_and_bad_requests(svc):
    c = svc["http"]
    org = (ROOT / "workbooks" / "samples" / "demo.org").read_text()
    r = c.post("/api/workflow?plan=1", json={"org": org})
    assert r.status_code == 200, r.text
    plans = r.json()["plans"]
    assert plans[0]["workflow"] == "daily digest" and plans[0]["schedule"] == {"cron": "0 7 * * *"}
    assert c.post("/api/workflow", json={}).status_code == 400
    assert c.post("/api/workflow", json={"org": org, "workbook": "demo"}).status_code == 400
    assert c.post("/api/workflow", json={"workbook": "nope"}).status_code == 404
    assert c.post("/api/workflow", json={"org": "* no workflow here\n"}).status_code == 400
    assert c.get("/api/workflow/wf-99999").status_code == 404
    assert c.get("/api/workflow/run-1").status_code == 400


def test_a_failing_build_and_an_undeclared_capability_say_what_failed(svc):
    org = """* broken :workflow:
** good :component:
#+begin_src js :out a
export function run(x) { return "fine"; }
#+end_src
** cbad :component:
#+begin_src c :out b
int main(void) { return not_declared(; }
#+end_src
** sneaky :component:
#+begin_src js :in a :out c
export function run(x) { return host.http.get("http://127.0.0.1:9/"); }
#+end_src
"""
    r = svc["http"].post("/api/workflow", json={"org": org})
    assert r.status_code == 202, r.text
    view = wait_wf(svc, r.json()["run"])
    assert view["status"] == "error"
    rec = view["record"]
    assert rec["tasks"]["good"] == "fine"
    assert rec["errors"]["cbad"]["code"] in ("build_failed", "lane_unavailable")
    assert rec["errors"]["sneaky"]["code"] in ("capability", "trap", "error")
    assert "http" in rec["errors"]["sneaky"]["error"]


def test_an_agent_step_runs_the_agent_loop(svc):
    svc["llm"].script([{"tool_calls": [{"name": "done", "arguments": json.dumps({"result": "SHOUTED: HELLO"})}]}],
                      key="wfagent")
    org = """* shout :workflow:
** loud :component:
#+begin_src agent :out y
You shout. [script:wfagent]
#+end_src
"""
    r = svc["http"].post("/api/workflow", json={"org": org, "input": "hello"})
    assert r.status_code == 202, r.text
    view = wait_wf(svc, r.json()["run"])
    assert view["status"] == "done", view
    assert view["record"]["tasks"]["loud"] == "SHOUTED: HELLO"
    sent = [json.loads(x["body"]) for x in svc["llm"].received() if "[script:wfagent]" in x["body"]][-1]
    assert sent["messages"][0]["content"].startswith("You shout.") and sent["messages"][1]["content"] == "hello"


def test_a_todo_outline_runs_its_checks_in_the_wasi_shell(svc):
    org = """* TODO Ship it
:PROPERTIES:
:ORDERED: t
:END:
** TODO Say yes
:PROPERTIES:
:DONE-WHEN: echo yes | grep yes
:END:
** TODO Say no
:PROPERTIES:
:DONE-WHEN: echo no | grep yes
:END:
"""
    r = svc["http"].post("/api/workflow/todo", json={"org": org})
    assert r.status_code == 202, r.text
    slug = r.json()["slug"]
    assert slug.startswith("wf-") and r.json()["status"] == "running"
    view = wait_wf(svc, slug)
    tasks = {t["title"]: t["state"] for t in view["state"]["tasks"]}
    assert tasks["Say yes"] == "DONE" and tasks["Say no"] != "DONE"


def test_the_scheduler_fires_the_demo_at_its_cron_time(svc):
    c = svc["http"]
    before = {p.name for p in (svc["data"] / "wb-runs" / "dev").iterdir()}
    svc["clock"].write_text(str(CLOCK_START + 15))  # 07:00:05 UTC: past the demo's 0 7 * * *
    deadline = time.time() + 30
    fired = None
    while time.time() < deadline and fired is None:
        for p in (svc["data"] / "wb-runs" / "dev").iterdir():
            if p.name in before or not p.name.startswith("wf-"):
                continue
            req = json.loads((p / "_request.json").read_text()) if (p / "_request.json").exists() else {}
            if req.get("trigger") == "schedule":
                fired = p.name
        time.sleep(0.2)
    assert fired, "no scheduled run"
    req = json.loads((svc["data"] / "wb-runs" / "dev" / fired / "_request.json").read_text())
    assert req["world"] == "daily digest" and req["workbook"] == "demo"
    assert req["scheduled_for"] == CLOCK_START + 10
    assert wait_wf(svc, fired)["status"] == "done"
    # the same minute never fires twice
    time.sleep(3)
    scheduled = [p for p in (svc["data"] / "wb-runs" / "dev").iterdir() if p.name.startswith("wf-")
                 and (p / "_request.json").exists()
                 and json.loads((p / "_request.json").read_text()).get("trigger") == "schedule"]
    assert len(scheduled) == 1
    env = dict(os.environ, WB_DATA=str(svc["data"]))
    out = subprocess.run([sys.executable, "-m", "workbooks", "--json", "workflow", "schedule"], cwd=ROOT, env=env,
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["data"]
    assert any(r["world"] == "daily digest" and r["fires"] >= 1 for r in rows)
