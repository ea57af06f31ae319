"""Agent runs through the whole service: `wbx serve` (supervisor, pool, agents process, planes) and
the fake model server over real HTTP. What a user of POST /api/run and `wbx agent` sees: runs that
finish with their records and a sealed ledger, the live stream (SSE and WebSocket), cancel, the
per-tenant limit, a runner killed with kill -9 mid-run, exec runs whose commit goes live, secrets
that never reach the model, and agents defined in a deployed workbook."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.fake_llm import FakeLlm
from tests.serve_proc import ROOT, ServeProc

PLANTED = "pl4nted-S3CRET-value-7731"
LLM_KEY = "sk-fake-llm-key-000111222"


class Echo(BaseHTTPRequestHandler):
    """A site that echoes what it was asked (so a resolved secret comes back in the tool output)."""

    def do_GET(self):
        body = f"<html><body><p>you asked for {self.path}</p></body></html>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def echo():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def llm():
    with FakeLlm(require_key=LLM_KEY) as f:
        yield f


def _wait_up(sp: ServeProc, key: str, deadline_s: float = 90) -> None:
    deadline = time.time() + deadline_s
    with httpx.Client(timeout=10) as c:
        while time.time() < deadline:
            if sp.proc.poll() is not None:
                pytest.fail("wbx serve exited:\n" + sp.stderr_text()[-3000:] + sp.stdout_text()[-3000:])
            try:
                r = c.get(sp.control + "/api/ops/workers", headers={"Authorization": f"Bearer {key}"})
                kids = r.json().get("children", []) if r.status_code == 200 else []
                states = {k["id"]: k["state"] for k in kids}
                if states.get("agents") == "running" and states.get("first-run") == "stopped":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
    pytest.fail("agents process not running:\n" + sp.stdout_text()[-4000:])


@pytest.fixture(scope="module")
def svc(tmp_path_factory, llm, echo):
    data = tmp_path_factory.mktemp("agents") / "data"
    env = {"WB_LLM_PROVIDER": "openai", "WB_LLM_BASE_URL": llm.openai_base_url, "WB_LLM_MODEL": "fake-model",
           "WB_LLM_API_KEY": LLM_KEY, "WB_FETCH_ALLOW_HOSTS": "127.0.0.1", "WB_AGENT_MAX_RUNS_PER_TENANT": "3"}
    sp = ServeProc(data, "--workers", "1", env=env)
    try:
        deadline = time.time() + 60
        while not (data / "admin.key").exists() and time.time() < deadline:
            time.sleep(0.1)
        admin = (data / "admin.key").read_text().strip()
        _wait_up(sp, admin)
        c = httpx.Client(base_url=sp.control, timeout=30, headers={"Authorization": f"Bearer {admin}",
                                                                     "X-Workbooks-Tenant": "dev"})
        r = c.put("/api/vars/TOKEN", json={"value": PLANTED, "secret": True})
        assert r.status_code == 200, r.text
        yield {"sp": sp, "data": data, "http": c, "admin": admin, "llm": llm, "echo": echo}
        c.close()
    finally:
        sp.stop()


def start(svc, key: str, task: str, **extra) -> str:
    r = svc["http"].post("/api/run", json={"task": f"[script:{key}] {task}", **extra})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "running" and body["id"].startswith("run-")
    assert r.headers["Location"] == f"/api/run/{body['id']}"
    return body["id"]


def wait_done(svc, run_id: str, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        view = svc["http"].get(f"/api/run/{run_id}").json()
        if view["status"] not in ("running", "queued"):
            return view
        time.sleep(0.1)
    pytest.fail(f"{run_id} still running: {view}")


def call(name: str, **args) -> dict:
    return {"name": name, "arguments": json.dumps(args)}


def run_folder(svc, run_id: str) -> Path:
    return svc["data"] / "wb-runs" / "dev" / run_id


def test_a_run_uses_the_tools_and_leaves_records_and_a_sealed_ledger(svc):
    svc["llm"].script([
        {"tool_calls": [call("vfs_write", path="notes.org", content="* One\n* Two\n* Three\n")]},
        {"tool_calls": [call("shell", pipeline="cat notes.org | wc -l")]},
        {"tool_calls": [call("done", result="three headlines")]},
    ], key="happy")
    run_id = start(svc, "happy", "count the headlines")
    view = wait_done(svc, run_id)
    assert view["status"] == "done", view
    assert view["result"] == "three headlines"
    assert view["steps"] == 3
    assert view["tools"] == ["vfs_write", "shell", "done"] or view["tools"][:2] == ["vfs_write", "shell"]
    assert view["usage"]["prompt_tokens"] > 0 and view["usage"]["completion_tokens"] > 0
    folder = run_folder(svc, run_id)
    steps = [json.loads(line) for line in (folder / "_steps.jsonl").read_text().splitlines()]
    assert [s["tool"] for s in steps][:2] == ["vfs_write", "shell"]
    assert steps[0]["output"].startswith("wrote ") and steps[1]["output"].strip() == "3"
    assert set(steps[0]) >= {"step", "agent", "tool", "args", "output", "exit_code", "error", "dur_ms", "ts"}
    assert (folder / "notes.org").read_text() == "* One\n* Two\n* Three\n"
    assert (folder / "events.org").read_text().strip()
    status = json.loads((folder / "_status.json").read_text())
    assert status["status"] == "done" and (status.get("ledger") or {}).get("head"), \
        (status, [x for x in svc["sp"].stdout_text().splitlines() if "seal" in x or "ledger" in x][-5:])
    # the ledger: sealed, anchored in git as ledger-<run>, verified by the CLI
    env = dict(os.environ, WB_DATA=str(svc["data"]))
    v = subprocess.run([sys.executable, "-m", "workbooks", "--json", "ledger", "verify", run_id, "--tenant", "dev"],
                       cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert v.returncode == 0, v.stdout + v.stderr
    log = subprocess.run(["git", "-C", str(svc["data"] / "dev"), "log", "--format=%s"], capture_output=True,
                         check=True).stdout.decode()
    assert f"ledger-{run_id}" in log.splitlines()
    # tamper with a step: verify names the first bad line and exits 5
    lines = (folder / "_steps.jsonl").read_text().splitlines()
    lines[1] = lines[1].replace('"shell"', '"shelL"')
    (folder / "_steps.jsonl").write_text("\n".join(lines) + "\n")
    v = subprocess.run([sys.executable, "-m", "workbooks", "--json", "ledger", "verify", run_id, "--tenant", "dev"],
                       cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert v.returncode == 5, v.stdout + v.stderr
    assert "2" in json.dumps(json.loads(v.stdout)["data"].get("first_bad_line", json.loads(v.stdout)["data"]))


def sse_frames(svc, run_id: str, timeout: float = 30) -> list[dict]:
    frames = []
    with svc["http"].stream("GET", f"/api/run/{run_id}/stream", timeout=timeout) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        data = []
        for line in r.iter_lines():
            if line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and data:
                frames.append(json.loads("\n".join(data)))
                data = []
                if frames[-1]["type"] == "done":
                    break
    return frames


def test_stream_over_sse_sends_subscribed_steps_deltas_and_done(svc):
    svc["llm"].script([
        {"tool_calls": [call("shell", pipeline="echo hello | rev")], "delay_s": 0.5},
        {"text": "All finished: olleh", "delay_s": 0.3, "text_split": 3},
    ], key="sse")
    run_id = start(svc, "sse", "reverse hello")
    frames = sse_frames(svc, run_id)
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "subscribed" and frames[0]["id"] == run_id
    assert kinds[-1] == "done" and frames[-1]["result"] == "All finished: olleh"
    steps = [f for f in frames if f["type"] == "step"]
    assert [s["tool"] for s in steps] == ["shell"] and steps[0]["output"].strip() == "olleh"
    deltas = "".join(f.get("content", "") for f in frames if f["type"] == "delta")
    assert deltas == "" or "olleh" in deltas  # deltas are live-only; when seen they add up to the text
    # a stream opened after the end replays the steps and the result
    again = sse_frames(svc, run_id)
    assert [f["type"] for f in again] == ["subscribed", "step", "done"]


def ws_frames(svc, run_id: str, key: str) -> list[dict]:
    """A WebSocket client on a plain socket (wsproto, which hypercorn itself uses)."""
    import wsproto
    from wsproto.events import AcceptConnection, CloseConnection, Message, Request, TextMessage

    sp = svc["sp"]
    sock = socket.create_connection(("127.0.0.1", sp.cport), timeout=20)
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host=f"127.0.0.1:{sp.cport}", target=f"/api/run/{run_id}/stream",
                                 extra_headers=[(b"authorization", f"Bearer {key}".encode()),
                                                (b"x-workbooks-tenant", b"dev")])))
    frames, text, done = [], "", False
    while not done:
        data = sock.recv(65536)
        if not data:
            break
        ws.receive_data(data)
        for ev in ws.events():
            if isinstance(ev, AcceptConnection):
                continue
            if isinstance(ev, TextMessage):
                text += ev.data
                if ev.message_finished:
                    frames.append(json.loads(text))
                    text = ""
            elif isinstance(ev, CloseConnection):
                sock.sendall(ws.send(ev.response()))
                done = True
            elif isinstance(ev, Message):
                pass
    sock.close()
    return frames


def test_stream_over_websocket_has_the_original_frames(svc):
    svc["llm"].script([
        {"tool_calls": [call("shell", pipeline="seq 5 | head -n 3 | wc -l")], "delay_s": 0.3},
        {"tool_calls": [call("done", result="3")]},
    ], key="ws")
    run_id = start(svc, "ws", "count")
    frames = ws_frames(svc, run_id, svc["admin"])
    assert frames[0] == {"type": "subscribed", "id": run_id}
    assert any(f["type"] == "step" and f["tool"] == "shell" and f["output"].strip() == "3" for f in frames)
    assert frames[-1]["type"] == "done" and frames[-1]["result"] == "3"
    # an unknown run: one error frame, as in the original
    assert ws_frames(svc, "run-999999", svc["admin"]) == [{"type": "error", "error": "no such run"}]


def test_cancel_stops_a_running_run(svc):
    svc["llm"].script([{"tool_calls": [call("shell", pipeline="echo a")], "delay_s": 20}], key="slow-c")
    run_id = start(svc, "slow-c", "wait")
    time.sleep(0.5)
    r = svc["http"].delete(f"/api/run/{run_id}")
    assert r.status_code == 200 and r.json() == {"id": run_id, "status": "cancelled"}
    view = wait_done(svc, run_id, timeout=15)
    assert view["status"] == "cancelled"
    r = svc["http"].delete(f"/api/run/{run_id}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    assert svc["http"].delete("/api/run/run-424242").status_code == 404
    assert svc["http"].get("/api/run/not-a-run").status_code == 400


def test_a_tenant_gets_429_beyond_its_concurrency_limit(svc):
    for i in range(3):
        svc["llm"].script([{"text": "late", "delay_s": 20}], key=f"busy{i}")
    ids = [start(svc, f"busy{i}", "wait") for i in range(3)]
    r = svc["http"].post("/api/run", json={"task": "one too many"})
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "too_many_runs" and r.headers.get("Retry-After")
    for run_id in ids:
        assert svc["http"].delete(f"/api/run/{run_id}").status_code == 200
    for run_id in ids:
        assert wait_done(svc, run_id, timeout=15)["status"] == "cancelled"


def test_bad_requests_are_clear_400s_and_exec_needs_an_exec_key(svc):
    c = svc["http"]
    assert c.post("/api/run", json={}).json()["error"]["code"] == "missing_field"
    assert c.post("/api/run", json={"task": "x", "max_steps": 0}).status_code == 400
    assert c.post("/api/run", json={"task": "x", "bogus": 1}).status_code == 400
    assert c.post("/api/run", content=b"task", headers={"Content-Type": "text/plain"}).status_code == 415
    key = c.post("/api/tenants/dev/keys", json={"scope": "tenant"}).json()["key"]
    r = httpx.post(svc["sp"].control + "/api/run", json={"task": "x", "exec": True},
                   headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "exec_not_allowed"


def test_secrets_reach_egress_but_never_the_model_or_the_records(svc):
    llm = svc["llm"]
    llm.script([
        {"tool_calls": [call("fetch", url=svc["echo"] + "/page?t={{secret:TOKEN}}")]},
        {"tool_calls": [call("vfs_write", path="leak.txt", content="{{secret:TOKEN}}")]},
        {"tool_calls": [call("done", result="fetched")]},
    ], key="secret")
    run_id = start(svc, "secret", "fetch the page")
    view = wait_done(svc, run_id)
    assert view["status"] == "done", view
    received = json.dumps(llm.received())
    assert PLANTED not in received
    assert "[secret:TOKEN]" in received  # the site echoed the resolved value; the model saw it redacted
    for path in run_folder(svc, run_id).rglob("*"):
        if path.is_file():
            assert PLANTED.encode() not in path.read_bytes(), path
    # the agents process's log lines too
    assert PLANTED not in svc["sp"].stdout_text()


def test_kill_9_of_the_runner_marks_the_run_interrupted_and_the_next_runner_serves(svc):
    c = svc["http"]
    svc["llm"].script([
        {"tool_calls": [call("shell", pipeline="echo first")]},
        {"text": "never", "delay_s": 30},
    ], key="killed")
    run_id = start(svc, "killed", "work slowly")
    folder = run_folder(svc, run_id)
    deadline = time.time() + 20
    while time.time() < deadline and not (folder / "_steps.jsonl").exists():
        time.sleep(0.05)
    kids = c.get("/api/ops/workers").json()["children"]
    pid = next(k["pid"] for k in kids if k["id"] == "agents")
    os.kill(pid, signal.SIGKILL)
    view = wait_done(svc, run_id, timeout=30)
    assert view["status"] == "interrupted" and view["steps"] == 1
    assert json.loads((folder / "_steps.jsonl").read_text().splitlines()[0])["output"].strip() == "first"
    # the next runner takes new runs at once
    svc["llm"].script([{"tool_calls": [call("done", result="after restart")]}], key="after")
    deadline = time.time() + 30
    while True:
        r = c.post("/api/run", json={"task": "[script:after] go"})
        if r.status_code == 202 or time.time() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 202, r.text
    assert wait_done(svc, r.json()["id"])["result"] == "after restart"


def test_an_exec_run_commits_and_its_content_goes_live(svc):
    c = svc["http"]
    key = c.post("/api/tenants/dev/keys", json={"scope": "exec"}).json()["key"]
    svc["llm"].script([
        {"tool_calls": [call("vfs_write", path="content/hello.org", content="* Hello from the agent\n")]},
        {"tool_calls": [call("git", message="agent: add hello")]},
        {"tool_calls": [call("wb", args="var set GREETING hello"), call("wb", args="var set TOKEN overwritten")]},
        {"tool_calls": [call("done", result="published")]},
    ], key="exec")
    r = httpx.post(svc["sp"].control + "/api/run", json={"task": "[script:exec] publish", "exec": True},
                   headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 202, r.text
    view = wait_done(svc, r.json()["id"])
    assert view["status"] == "done", view
    steps = [json.loads(x) for x in (run_folder(svc, r.json()["id"]) / "_steps.jsonl").read_text().splitlines()]
    receipt = next(s["output"] for s in steps if s["tool"] == "git")
    assert "(committed; no origin remote to push)" in receipt, receipt
    log = subprocess.run(["git", "-C", str(svc["data"] / "dev"), "log", "--format=%s"], capture_output=True,
                         check=True).stdout.decode().splitlines()
    assert "agent: add hello" in log
    var_steps = [s["output"] for s in steps if s["tool"] == "wb"]
    assert var_steps[0] == "set GREETING" and "is a secret" in var_steps[1], var_steps
    assert c.get("/api/vars/GREETING").json()["value"] == "hello"
    page = httpx.get(svc["sp"].public + "/content/hello.org", headers={"Host": "demo.localhost"})
    assert page.status_code == 200 and "Hello from the agent" in page.text


def test_an_agent_defined_in_a_deployed_workbook_is_listed_and_runs(svc):
    c = svc["http"]
    org = ("#+TITLE: Helpers\n* Site keeper :agent:\n:PROPERTIES:\n:ID: keeper\n:TAGLINE: keeps the site tidy\n"
           ":END:\n** System prompt\nYou keep the site tidy. [script:defined]\n")
    r = c.put("/api/workbooks/helpers", content=org.encode(), headers={"Content-Type": "text/org"})
    assert r.status_code == 200, r.text
    agents = c.get("/api/agents/list").json()["agents"]
    assert any(a["slug"] == "keeper" for a in agents), agents
    svc["llm"].script([{"tool_calls": [call("done", result="tidy")]}], key="defined")
    r = c.post("/api/agent/run", json={"agent_slug": "keeper", "prompt": "tidy up"})
    assert r.status_code == 202, r.text
    assert wait_done(svc, r.json()["id"])["result"] == "tidy"
    system = [json.loads(x["body"]) for x in svc["llm"].received() if "[script:defined]" in x["body"]][-1]
    assert system["messages"][0]["role"] == "system" and "You keep the site tidy." in system["messages"][0]["content"]
    assert c.post("/api/agent/run", json={"agent_slug": "nobody", "prompt": "x"}).status_code == 404


def test_wbx_agent_run_follows_the_run_and_exits_by_its_outcome(svc):
    svc["llm"].script([
        {"tool_calls": [call("shell", pipeline="echo a ; echo b")]},
        {"tool_calls": [call("done", result="a and b")]},
    ], key="cli")
    env = dict(os.environ, WB_CONTROL_URL=svc["sp"].control, WB_API_KEY=svc["admin"], WB_TENANT="dev")
    p = subprocess.run([sys.executable, "-m", "workbooks", "agent", "run", "[script:cli]", "say", "a", "and", "b"],
                       cwd=ROOT, env=env, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in p.stdout.decode().splitlines()]
    assert lines[0]["type"] == "subscribed"
    assert any(x.get("type") == "step" and x["tool"] == "shell" for x in lines)
    assert lines[-1]["status"] == "done" and lines[-1]["result"] == "a and b"
    run_id = lines[-1]["id"]
    p = subprocess.run([sys.executable, "-m", "workbooks", "--json", "agent", "status", run_id], cwd=ROOT, env=env,
                       capture_output=True, timeout=30)
    assert p.returncode == 0 and json.loads(p.stdout)["data"]["result"] == "a and b"
    # a run that ends in error exits 1
    svc["llm"].script([{"status": 400, "message": "bad model"}], key="clierr")
    p = subprocess.run([sys.executable, "-m", "workbooks", "agent", "run", "[script:clierr]", "fail"], cwd=ROOT,
                       env=env, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 1, p.stdout + p.stderr
    p = subprocess.run([sys.executable, "-m", "workbooks", "agent", "status", "run-99999"], cwd=ROOT, env=env,
                       capture_output=True, timeout=30)
    assert p.returncode == 4


def test_the_openai_wire_streams(svc):
    bodies = [json.loads(x["body"]) for x in svc["llm"].received() if x["path"].endswith("/chat/completions")]
    assert bodies and all(b.get("stream") is True for b in bodies)
    assert all(x["headers"].get("authorization") == f"Bearer {LLM_KEY}" for x in svc["llm"].received())


def test_a_run_over_the_anthropic_wire(tmp_path, llm):
    """The same service with WB_LLM_PROVIDER=anthropic: Messages API, streamed, tool_use/tool_result."""
    env = {"WB_LLM_PROVIDER": "anthropic", "WB_LLM_BASE_URL": llm.anthropic_base_url, "WB_LLM_MODEL": "fake-model",
           "WB_LLM_API_KEY": LLM_KEY, "WB_FIRST_RUN": "1"}
    sp = ServeProc(tmp_path / "data", "--workers", "1", env=env)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "data" / "admin.key").exists() and time.time() < deadline:
            time.sleep(0.1)
        admin = (tmp_path / "data" / "admin.key").read_text().strip()
        _wait_up(sp, admin)
        llm.script([
            {"tool_calls": [call("vfs_write", path="a.txt", content="alpha\nbeta\n"),
                            call("shell", pipeline="sort -r a.txt | head -n 1")]},
            {"text": "beta comes last"},
        ], key="anthropic")
        with httpx.Client(base_url=sp.control, timeout=30, headers={"Authorization": f"Bearer {admin}",
                                                                     "X-Workbooks-Tenant": "dev"}) as c:
            r = c.post("/api/run", json={"task": "[script:anthropic] sort"})
            assert r.status_code == 202, r.text
            run_id = r.json()["id"]
            deadline = time.time() + 60
            while (view := c.get(f"/api/run/{run_id}").json())["status"] == "running" and time.time() < deadline:
                time.sleep(0.1)
        assert view["status"] == "done" and view["result"] == "beta comes last", view
        steps = [json.loads(x) for x in (tmp_path / "data" / "wb-runs" / "dev" / run_id / "_steps.jsonl")
                 .read_text().splitlines()]
        assert [s["tool"] for s in steps] == ["vfs_write", "shell"] and steps[1]["output"].strip() == "beta"
        mine = [x for x in llm.received() if "[script:anthropic]" in x["body"]]
        assert mine and all(x["path"] == "/v1/messages" for x in mine)
        last = json.loads(mine[-1]["body"])
        assert last["stream"] is True and "[script:anthropic]" not in json.dumps(last.get("system", ""))
        results = [b for m in last["messages"] if m["role"] == "user" and isinstance(m["content"], list)
                   for b in m["content"] if b.get("type") == "tool_result"]
        assert len(results) == 2  # both results of the turn in one user message, as the wire requires
    finally:
        sp.stop()


def test_the_keeper_runs_on_its_interval_and_shows_on_changes_and_activity(tmp_path, llm):
    agent = tmp_path / "keeper.org"
    agent.write_text("* Site keeper :agent:\n:PROPERTIES:\n:ID: site-keeper\n:END:\n"
                     "** System prompt\nKeep the site. [script:keeper]\n")
    env = {"WB_LLM_BASE_URL": llm.openai_base_url, "WB_LLM_MODEL": "fake-model", "WB_LLM_API_KEY": LLM_KEY,
           "WB_KEEPER_DEF": str(agent), "WB_KEEPER_INTERVAL_MS": "500", "WB_KEEPER_BOOT_GRACE_MS": "0",
           "WB_TENANT": "dev"}
    llm.script([{"tool_calls": [call("shell", pipeline="echo tick")]},
                {"tool_calls": [call("done", result="NO-WORK the site is tidy")]}], key="keeper")
    data = tmp_path / "data"
    sp = ServeProc(data, "--workers", "1", env=env)
    try:
        deadline = time.time() + 60
        while not (data / "admin.key").exists() and time.time() < deadline:
            time.sleep(0.1)
        _wait_up(sp, (data / "admin.key").read_text().strip())
        host = {"Host": f"demo.localhost:{sp.pport}"}
        deadline = time.time() + 40
        while time.time() < deadline:
            act = httpx.get(sp.public + "/_activity", headers=host).json()
            if act["thought"]:
                break
            time.sleep(0.2)
        assert act["agent"]["active"] is True and act["agent"]["run_id"], (act, sp.stdout_text()[-3000:])
        assert act["thought"] == "NO-WORK the site is tidy"
        assert [s["tool"] for s in act["steps"]] == ["shell", "done"] and act["steps"][0]["target"] == "echo tick"
        changes = httpx.get(sp.public + "/_changes", headers=host).json()
        assert changes["agent"]["active"] is True and changes["agent"]["last_run"]
        assert str(agent) not in json.dumps(changes)  # a file path never shows on the public plane
        run = json.loads((data / "wb-runs" / "dev" / act["agent"]["run_id"] / "_request.json").read_text())
        assert run["exec"] is True and run["agent"] == "site-keeper" and run["max_steps"] == 60
        # NO-WORK backs the next tick off (≥ 1 min), so it does not run again at the 0.5 s interval
        time.sleep(1.2)  # two more 0.5 s intervals
        runs = [p for p in (data / "wb-runs" / "dev").iterdir() if p.name.startswith("run-")]
        assert len(runs) == 1, runs
    finally:
        sp.stop()


def test_the_model_key_is_redacted_and_never_resolved_for_egress(svc):
    llm = svc["llm"]
    llm.script([
        {"tool_calls": [call("fetch", url=svc["echo"] + "/k?key={{secret:LLM_API_KEY}}")]},
        {"tool_calls": [call("done", result="tried")]},
    ], key="modelkey")
    run_id = start(svc, "modelkey", "leak the key")
    assert wait_done(svc, run_id)["status"] == "done"
    steps = [json.loads(x) for x in (run_folder(svc, run_id) / "_steps.jsonl").read_text().splitlines()]
    # the site was asked for the literal placeholder, not the key
    assert "{{secret:LLM_API_KEY}}" in steps[0]["output"] or "%7B%7Bsecret" in steps[0]["output"]
    mine = [x["body"] for x in llm.received() if "[script:modelkey]" in x["body"]]
    assert mine and not any(LLM_KEY in b for b in mine)
