"""`wbx workflow plan|run` end to end, as a subprocess: JSON out, exit codes, `-` for stdin."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_wbx

SAMPLES = Path(__file__).resolve().parent.parent / "workbooks" / "samples"


def envelope_error(p) -> dict:
    return json.loads(p.stderr.decode().strip().splitlines()[-1])["error"]


def test_plan_prints_plan_records():
    p = run_wbx("workflow", "plan", str(SAMPLES / "demo.org"))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [{"workflow": "daily digest", "schedule": {"cron": "0 7 * * *"},
                                     "tasks": ["fetch", "summarize"], "sub_workflows": []}]


def test_plan_from_stdin_with_an_include(tmp_path):
    (tmp_path / "steps.org").write_text("** b :component:\n#+begin_src js :in x\nexport function run(x){return x}\n"
                                        "#+end_src\n")
    org = b"* w :workflow:\n** a :component:\n#+begin_src js :out x\nexport function run(){return 1}\n#+end_src\n" \
          b"#+INCLUDE: \"steps.org\"\n"
    (tmp_path / "w.org").write_bytes(org)
    p = run_wbx("workflow", "plan", str(tmp_path / "w.org"))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)[0]["tasks"] == ["a", "b"]
    p = run_wbx("workflow", "plan", "-", input=b"* w :workflow:\n** only :component:\n")
    assert p.returncode == 0 and json.loads(p.stdout)[0]["tasks"] == ["only"]
    p = run_wbx("--json", "workflow", "plan", "-", input=b"no workflows here\n")
    assert json.loads(p.stdout) == {"ok": True, "verb": "workflow plan", "data": []}


def test_plan_missing_file_is_not_found(tmp_path):
    p = run_wbx("workflow", "plan", str(tmp_path / "nope.org"))
    assert p.returncode == 4 and envelope_error(p)["kind"] == "not_found"


CYCLE = b"""* loop :workflow:
** a :component:
#+begin_src js :in y :out x
export function run(x){return x}
#+end_src
** b :component:
#+begin_src js :in x :out y
export function run(x){return x}
#+end_src
"""

MISSING = b"""* w :workflow:
** a :component:
#+begin_src js :in nowhere
export function run(x){return x}
#+end_src
"""

TWO = b"* one :workflow:\n** a :component:\n* two :workflow:\n** b :component:\n"


def test_run_refuses_a_plan_that_cannot_run(tmp_path):
    out = tmp_path / "out"
    p = run_wbx("workflow", "run", "-", "--out", str(out), input=CYCLE)
    assert p.returncode == 2 and p.stdout == b""
    err = envelope_error(p)
    assert err["kind"] == "invalid_workflow" and "cycle" in err["message"] and "a → b → a" in err["message"]
    assert not out.exists()  # nothing was made, nothing ran
    p = run_wbx("workflow", "run", "-", input=MISSING)
    assert p.returncode == 2 and "'nowhere' has no upstream producer" in envelope_error(p)["message"]


def test_run_picks_the_world(tmp_path):
    p = run_wbx("workflow", "run", "-", input=TWO)
    assert p.returncode == 2 and "'one', 'two'" in envelope_error(p)["message"]
    p = run_wbx("workflow", "run", "-", "--world", "three", input=TWO)
    assert p.returncode == 4 and "'three'" in envelope_error(p)["message"]
    p = run_wbx("workflow", "run", "-", input=b"* just prose\n")
    assert p.returncode == 2 and "no :workflow: headline" in envelope_error(p)["message"]


def test_run_never_writes_over_a_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    p = run_wbx("workflow", "run", "-", "--out", str(out), input=TWO + b"", )
    assert p.returncode == 2  # the world is chosen before any folder is touched
    p = run_wbx("workflow", "run", "-", "--world", "one", "--out", str(out), input=TWO)
    assert p.returncode == 6 and envelope_error(p)["kind"] == "conflict"
    assert sorted(x.name for x in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_run_input_from_stdin_needs_the_workbook_from_a_file(tmp_path):
    p = run_wbx("workflow", "run", "-", "--input", "@-", input=TWO)
    assert p.returncode == 2 and "stdin" in envelope_error(p)["message"]
    p = run_wbx("workflow", "run", str(SAMPLES / "demo.org"), "--input", f"@{tmp_path / 'missing.txt'}")
    assert p.returncode == 4


# -- real runs: the same engine and step runner as the server, here -------------------------------
CHAIN = b"""* shout :workflow:
** upper :component:
#+begin_src js :out loud
export function run(x) { return String(x).toUpperCase(); }
#+end_src
** bang :component:
#+begin_src js :in loud :out done
export function run(x) { return x + "!"; }
#+end_src
"""

BROKEN = b"""* brittle :workflow:
** start :component:
#+begin_src js :out s
export function run(x) { return "s:" + x; }
#+end_src
** crash :component:
#+begin_src js :in s :out c
export function run(x) { throw new Error("no good: " + x); }
#+end_src
** after :component:
#+begin_src js :in c
export function run(x) { return "never"; }
#+end_src
** sibling :component:
#+begin_src js :in s
export function run(x) { return x + " fine"; }
#+end_src
"""


def test_run_a_chain_from_stdin_prints_the_record_and_leaves_nothing(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    p = run_wbx("workflow", "run", "-", "--input", "hello", input=CHAIN, env={"TMPDIR": str(tmp)})
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["status"] == "done" and rec["workflow"] == "shout"
    assert rec["tasks"] == {"upper": "HELLO", "bang": "HELLO!"} and rec["exports"] == {"done": "HELLO!"}
    assert rec["steps"]["bang"]["lane"] == "js" and rec["steps"]["bang"]["wave"] == 1
    assert list(tmp.iterdir()) == []  # the temporary run folder is gone
    p = run_wbx("--json", "workflow", "run", "-", "--input", "@@at", input=CHAIN)
    env = json.loads(p.stdout)
    assert env["ok"] is True and env["verb"] == "workflow run" and env["data"]["tasks"]["bang"] == "@AT!"


def test_a_failing_step_is_exit_1_with_dependants_skipped_and_the_sibling_done(tmp_path):
    out = tmp_path / "run"
    (tmp_path / "in.txt").write_bytes(b"from a file")
    p = run_wbx("workflow", "run", "-", "--input", f"@{tmp_path / 'in.txt'}", "--out", str(out), input=BROKEN)
    assert p.returncode == 1, p.stderr
    rec = json.loads(p.stdout)
    assert rec["status"] == "error"
    assert rec["tasks"] == {"start": "s:from a file", "crash": None, "after": None, "sibling": "s:from a file fine"}
    assert rec["errors"]["crash"]["code"] not in ("ok", "skipped")  # the step runner's code for a JS throw
    assert "no good: s:from a file" in rec["errors"]["crash"]["error"]
    assert rec["errors"]["after"]["code"] == "skipped"
    assert set(rec["errors"]) == {"crash", "after"}
    # the records stay in --out
    assert json.loads((out / "run.json").read_text()) == rec
    status = json.loads((out / "_status.json").read_text())
    assert status["status"] == "error" and status["steps"] == 4
    tools = sorted(json.loads(l)["tool"] for l in (out / "_steps.jsonl").read_text().splitlines())
    assert tools == ["js:after", "js:crash", "js:sibling", "js:start"]


def test_run_with_data_is_a_sealed_wf_run_that_ledger_verify_accepts(tmp_path):
    data = tmp_path / "data"
    assert run_wbx("init", "--tenant", "acme", "--data", str(data)).returncode == 0
    p = run_wbx("workflow", "run", "-", "--data", str(data), "--tenant", "acme", "--input", "x", input=CHAIN)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["run"] == "wf-1" and rec["ledger"]["count"] == 2
    assert (data / "wb-runs" / "acme" / "wf-1" / "_ledger.json").is_file()
    v = run_wbx("ledger", "verify", "wf-1", "--tenant", "acme", "--data", str(data))
    assert v.returncode == 0, v.stdout + v.stderr
    assert json.loads(v.stdout)["count"] == 2
    p = run_wbx("workflow", "run", "-", "--data", str(data), "--tenant", "acme", input=CHAIN)
    assert json.loads(p.stdout)["run"] == "wf-2"


def test_progress_shows_on_a_terminal_stderr_while_stdout_stays_json(tmp_path):
    import os
    import pty
    import subprocess
    import sys

    master, slave = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "workbooks", "workflow", "run", "-", "--input", "hi"],
                              input=BROKEN, stdout=subprocess.PIPE, stderr=slave, timeout=120,
                              env={**os.environ, "NO_COLOR": "1"})
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    shown = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["tasks"]["sibling"] == "s:hi fine"
    code = json.loads(proc.stdout)["errors"]["crash"]["code"]
    assert "✓ start" in shown and f"✗ crash  {code}" in shown and "– after  skipped" in shown and "✓ sibling" in shown
    assert "error" in shown.splitlines()[-1]


# -- --server: the control plane's protocol (POST /api/workflow, then GET /api/workflow/:run) -----
class StandInControlPlane:
    """A loopback HTTP server speaking the control plane's workflow routes (until the real route is
    wired, this is the protocol `--server` must speak): POST → 202 {run, status}, GET → running
    twice, then the finished view; a wrong key is a 401 in the codebase's error shape."""

    def __init__(self, final_status="done"):
        import http.server
        import threading

        self.posted: list[dict] = []
        self.gets = 0
        plane = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body):
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _authorized(self):
                if self.headers.get("Authorization") != "Bearer good-key":
                    self._send(401, {"error": {"code": "unauthorized", "message": "bad key"}})
                    return False
                return True

            def do_POST(self):
                if not self._authorized():
                    return
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n))
                plane.posted.append({"path": self.path, "body": body, "tenant": self.headers.get("X-Workbooks-Tenant")})
                self._send(202, {"run": "wf-7", "status": "running"})

            def do_GET(self):
                if not self._authorized():
                    return
                if self.path != "/api/workflow/wf-7":
                    self._send(404, {"error": {"code": "not_found", "message": "no such run"}})
                    return
                plane.gets += 1
                if plane.gets < 3:
                    self._send(200, {"run": "wf-7", "status": "running", "steps": plane.gets})
                elif final_status == "cancelled":  # no run record
                    self._send(200, {"run": "wf-7", "status": "cancelled", "kind": "workflow",
                                     "state": {"status": "cancelled", "steps": 1}})
                else:
                    self._send(200, {"run": "wf-7", "status": final_status, "kind": "workflow",
                                     "state": {"status": final_status, "steps": 1},
                                     "record": {"run": "wf-7", "workflow": "shout", "status": final_status,
                                                "tasks": {"upper": "X"}}})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_server_runs_post_the_workbook_and_follow_the_run(tmp_path):
    (tmp_path / "steps.org").write_text("** bang :component:\n#+begin_src js :in loud\nexport function run(x){return x}\n"
                                        "#+end_src\n")
    (tmp_path / "w.org").write_bytes(CHAIN.split(b"** bang")[0] + b"#+INCLUDE: \"steps.org\"\n")
    plane = StandInControlPlane()
    try:
        p = run_wbx("workflow", "run", str(tmp_path / "w.org"), "--server", "--url", plane.url, "--key", "good-key",
                    "--tenant", "acme", "--input", "x", "--world", "shout")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout) == {"run": "wf-7", "workflow": "shout", "status": "done", "tasks": {"upper": "X"}}
        assert plane.gets == 3
        sent = plane.posted[0]
        assert sent["path"] == "/api/workflow" and sent["tenant"] == "acme"
        assert sent["body"]["input"] == "x" and sent["body"]["world"] == "shout"
        assert "export function run(x){return x}" in sent["body"]["org"]  # includes expanded before sending
        p = run_wbx("workflow", "run", str(tmp_path / "w.org"), "--server", "--url", plane.url, "--key", "bad",
                    "--input", "@-", input=b"from stdin")
        assert p.returncode == 7 and envelope_error(p)["kind"] == "auth_rejected"
    finally:
        plane.close()
    plane = StandInControlPlane(final_status="error")
    try:
        p = run_wbx("workflow", "run", "-", "--server", "--url", plane.url, "--key", "good-key", input=CHAIN,
                    env={"WB_TENANT": ""})
        assert p.returncode == 1 and json.loads(p.stdout)["status"] == "error"
        assert "input" in plane.posted[0]["body"] and plane.posted[0]["body"]["input"] == ""
    finally:
        plane.close()
    plane = StandInControlPlane(final_status="cancelled")
    try:
        (tmp_path / "bin").write_bytes(b"\xff\x00")
        p = run_wbx("workflow", "run", "-", "--server", "--url", plane.url, "--key", "good-key",
                    "--input", f"@{tmp_path / 'bin'}", input=CHAIN)
        assert p.returncode == 1 and json.loads(p.stdout)["status"] == "cancelled"
        assert plane.posted[0]["body"]["input"] == {"base64": "/wA="}  # bytes that are not UTF-8
    finally:
        plane.close()
    p = run_wbx("workflow", "run", "-", "--server", "--url", plane.url, "--key", "good-key", input=CHAIN)
    assert p.returncode == 3  # nobody listens there any more


NESTED = b"""* outer :workflow:
** greet :component:
#+begin_src js :out g
export function run(x) { return "outer got " + x; }
#+end_src
** inner :workflow:
*** echo :component:
#+begin_src js
export function run(x) { return "inner got " + x; }
#+end_src
"""


def test_sub_workflows_run_with_the_same_input_and_world_picks_a_nested_one():
    p = run_wbx("workflow", "run", "-", "--input", "7", input=NESTED)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["tasks"] == {"greet": "outer got 7"} and rec["exports"] == {"g": "outer got 7"}
    assert [(s["workflow"], s["tasks"]) for s in rec["sub_workflows"]] == [("inner", {"echo": "inner got 7"})]
    p = run_wbx("workflow", "run", "-", "--input", "8", "--world", "inner", input=NESTED)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["workflow"] == "inner" and rec["tasks"] == {"echo": "inner got 8"} and rec["sub_workflows"] == []


def test_server_run_through_the_whole_service(tmp_path):
    """`--server` against a real `wbx serve`: the control plane's route, the agents process, the
    runner workers; the run is recorded and sealed on the server."""
    import time

    import httpx
    import pytest

    from tests.serve_proc import ServeProc

    data = tmp_path / "data"
    sp = ServeProc(data, "--workers", "1")
    try:
        deadline = time.time() + 60
        while not (data / "admin.key").exists() and time.time() < deadline:
            time.sleep(0.1)
        admin = (data / "admin.key").read_text().strip()
        with httpx.Client(timeout=10) as c:
            while True:
                if sp.proc.poll() is not None or time.time() > deadline + 60:
                    pytest.fail("wbx serve did not come up:\n" + sp.stderr_text()[-3000:] + sp.stdout_text()[-3000:])
                try:
                    r = c.get(sp.control + "/api/ops/workers", headers={"Authorization": f"Bearer {admin}"})
                    states = {k["id"]: k["state"] for k in (r.json().get("children", []) if r.status_code == 200 else [])}
                    if states.get("agents") == "running" and states.get("first-run") == "stopped":  # `dev` made
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                time.sleep(0.2)
        p = run_wbx("workflow", "run", "-", "--server", "--url", sp.control, "--key", admin, "--tenant", "dev",
                    "--input", "served", input=CHAIN, timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        rec = json.loads(p.stdout)
        assert rec["status"] == "done" and rec["tasks"] == {"upper": "SERVED", "bang": "SERVED!"}
        run_id = rec["run"]
        assert (data / "wb-runs" / "dev" / run_id / "run.json").is_file()
        v = run_wbx("ledger", "verify", run_id, "--tenant", "dev", "--data", str(data))
        assert v.returncode == 0, v.stdout + v.stderr
        p = run_wbx("workflow", "run", "-", "--server", "--url", sp.control, "--key", admin, "--tenant", "dev",
                    input=CYCLE, timeout=60)
        assert p.returncode != 0 and "cycle" in envelope_error(p)["message"]
    finally:
        sp.stop()


SPIN = b"""* spin :workflow:
** a :component:
#+begin_src js :out x
export function run(x) { return "a"; }
#+end_src
** b :component:
#+begin_src js :in x
export function run(x) { while (true) {} }
#+end_src
"""


def test_ctrl_c_cancels_the_run_records_it_and_exits_130(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    env = {**os.environ, "WB_STEP_FUEL": "900000000000", "WB_STEP_TIMEOUT_S": "3"}
    env.pop("WBX_AGENT", None)
    proc = subprocess.Popen([sys.executable, "-m", "workbooks", "workflow", "run", "-", "--out", str(out)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        proc.stdin.write(SPIN)
        proc.stdin.close()
        deadline = time.monotonic() + 60
        while not ((out / "_steps.jsonl").exists() and (out / "_steps.jsonl").read_bytes().count(b"\n") >= 1):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # after the first step, while `b` starts or spins
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 130
    assert proc.stdout.read() == b""  # no record: the run did not finish
    status = json.loads((out / "_status.json").read_text())
    assert status["status"] == "cancelled" and status["steps"] == 1
    assert not (out / "run.json").exists()
