"""stdout of `wbx serve` (and of `python -m workbooks.supervisor`) is a stream of whole JSON
records: one object per line, each with `role` and `id`, however many processes log at once and
however long a record is. Children's stdout comes back through the supervisor (log_relay)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from serve_proc import ServeProc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _records(raw_lines: list[bytes]) -> list[dict]:
    out = []
    for i, line in enumerate(raw_lines):
        assert line.endswith(b"\n"), f"line {i} is not a whole line: {line[:200]!r}"
        rec = json.loads(line)  # raises on a glued or cut line
        assert isinstance(rec, dict), line[:200]
        assert isinstance(rec.get("role"), str) and rec["role"], line[:300]
        assert isinstance(rec.get("id"), str) and rec["id"], line[:300]
        out.append(rec)
    return out


def test_serve_stdout_is_one_json_record_per_line_under_load(tmp_path):
    serve = ServeProc(tmp_path / "data", "--workers", "1", "--spares", "0", "--control-procs", "2",
                      "--public-procs", "2")
    try:
        http = httpx.Client(timeout=30)
        deadline = time.time() + 90
        while True:
            try:
                if http.get(serve.public + "/", headers={"Host": f"demo.localhost:{serve.pport}"}).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert serve.proc.poll() is None and time.time() < deadline, serve.stderr_text()[-3000:]
            time.sleep(0.1)
        key = (serve.data / "admin.key").read_text().strip()
        auth = {"Authorization": f"Bearer {key}", "X-Workbooks-Tenant": "dev"}
        long_tail = "x" * 480

        def hit(i: int) -> int:
            with httpx.Client(timeout=30) as c:
                kind = i % 4
                if kind == 0:
                    r = c.get(serve.public + "/", headers={"Host": f"demo.localhost:{serve.pport}"})
                elif kind == 1:  # long path, query and host: the longest access records there are
                    r = c.get(serve.public + f"/{long_tail}{i}?q={long_tail}&token=secret{i}",
                              headers={"Host": f"{'h' * 60}.localhost:{serve.pport}"})
                elif kind == 2:
                    r = c.post(serve.control + "/api/oql/render", headers={**auth, "Content-Type": "text/org"},
                               content=(f"* heading {i}\n" + "text " * 200).encode())
                else:
                    r = c.get(serve.control + f"/api/nothing/{long_tail}?k={i}", headers=auth)
                return r.status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(hit, range(400)))
        assert statuses.count(200) >= 200, statuses  # pages and renders answered
        http.close()
    finally:
        rc = serve.stop()
    assert rc == 0, serve.stderr_text()[-2000:]
    recs = _records(serve.lines)
    access = [r for r in recs if r.get("event") == "access"]
    assert len(access) >= 400, len(access)
    # several processes logged into the one stream, each line bound to the one that wrote it
    assert {r["id"] for r in access} >= {"control-1", "control-2"} or len({r["pid"] for r in access}) >= 3
    assert {"supervisor", "broker", "worker-1", "first-run"} <= {r["id"] for r in recs}
    assert recs[-1]["event"] == "serve_stopped" and recs[-1]["exit_code"] == 0
    # the human banner is on stderr, not mixed into the records
    assert "workbooks is up" in serve.stderr_text() and b"workbooks is up" not in b"".join(serve.lines)
    assert "secret" not in serve.stdout_text()


CHATTY = r"""
import os, sys, time
from workbooks import log
lg = log.configure("chatty")
me = os.environ["WB_CHILD_ID"]
for i in range(300):
    size = (300_000 if i % 50 == 7 else 20_000 if i % 10 == 3 else 40)
    lg.info("tick", n=i, who=me, blob=me[-1] * size)
print("a plain line from", me, flush=True)
print({"python": "repr, not JSON"}, flush=True)
sys.stdout.write('{"event": "no identity", "n": 1}\n'); sys.stdout.flush()
sys.stdout.write("half a line at exit"); sys.stdout.flush()
"""


def test_supervisor_relays_long_records_from_many_children_whole(tmp_path):
    cfg = {"control_endpoint": f"ipc://{tmp_path}/sup.sock", "max_restarts": 0,
           "children": [{"id": f"chatty-{k}", "argv": [sys.executable, "-c", CHATTY], "restart": "temporary",
                         "group": "chatty"} for k in range(1, 5)]}
    (tmp_path / "sup.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "workbooks.supervisor", str(tmp_path / "sup.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT})
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, b"")), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 60
        while sum(1 for ln in lines if b'"child_not_restarted"' in ln) < 4:
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)
        reader.join(5)
    assert rc == 0
    recs = _records(lines)
    for k in range(1, 5):
        me = f"chatty-{k}"
        ticks = [r for r in recs if r.get("event") == "tick" and r.get("who") == me]
        assert [r["n"] for r in ticks] == list(range(300))  # all of them, in order
        for r in ticks:
            assert r["id"] == me and r["role"] == "chatty"
            assert r["blob"] == me[-1] * len(r["blob"]) and len(r["blob"]) in (40, 20_000, 300_000)
        mine = [r for r in recs if r.get("id") == me and r.get("event") != "tick"]
        texts = [r.get("text") for r in mine if r.get("event") == "child_output"]
        assert f"a plain line from {me}" in texts
        assert "{'python': 'repr, not JSON'}" in texts
        assert "half a line at exit" in texts
        assert any(r.get("event") == "no identity" and r["role"] == "chatty" for r in mine)


def test_on_a_terminal_serve_shows_short_lines_not_json(tmp_path):
    import pty
    import re

    from conftest import read_pty_to_end

    master, slave = pty.openpty()
    env = dict(os.environ, WB_DATA=str(tmp_path / "data"), NO_COLOR="1")
    env.pop("WBX_AGENT", None)
    proc = subprocess.Popen([sys.executable, "-m", "workbooks", "serve", "--data", str(tmp_path / "data"),
                             "--workers", "1", "--spares", "0", "--no-web"],
                            stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT, env=env)
    os.close(slave)
    out = b""
    try:
        deadline = time.time() + 60
        while b"worker-1    child_ready" not in out:
            assert proc.poll() is None and time.time() < deadline, out[-2000:]
            try:
                out += os.read(master, 65536)
            except OSError:
                break
        proc.send_signal(signal.SIGTERM)
        out += read_pty_to_end(master)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    lines = [ln for ln in out.decode().replace("\r", "").splitlines() if ln.strip()]
    assert not any(ln.lstrip().startswith("{") for ln in lines), lines[:5]
    assert all(re.match(r"^\d\d:\d\d:\d\d \S+ +\S+", ln) for ln in lines[:-1]), lines
    assert any(re.match(r"^\d\d:\d\d:\d\d broker +child_ready child_pid=\d+", ln) for ln in lines), lines
    assert lines[-1] == "wbx serve stopped (exit 0)"
