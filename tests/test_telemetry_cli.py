"""`wbx telemetry [RUN]` against a real control plane and indexer: JSON when piped, a table on a
terminal, typed exit codes."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys

from tests.conftest import ROOT, read_pty_to_end, run_wbx
from tests.test_telemetry_index import Indexer, new_run, wait_for


def test_wbx_telemetry(web):
    tenant, key = web.new_tenant("telc")
    data = web.data_dir
    rid, _, rec = new_run(data, tenant, prefix="wf")
    rec.step({"step": 0, "tool": "js:fetch", "output": "x", "exit_code": 0, "dur_ms": 1500})
    rec.step({"step": 1, "tool": "js:send", "output": "", "exit_code": 3, "error": "host.http: denied", "dur_ms": 4})
    rec.status("error", 2)
    flags = ["--url", web.control, "--key", key]
    with Indexer(data, interval=0.1):
        def indexed():
            p = run_wbx("telemetry", rid, *flags)
            d = json.loads(p.stdout) if p.returncode == 0 else {}
            return d if d.get("index", {}).get("source") == "index" and d.get("tool_calls") == 2 else None

        d, _ = wait_for(indexed, timeout=20, what="the run through wbx")
        assert d["stage"] == "error" and d["total_ms"] == 1504
        assert d["errors"] == [{"step": 1, "tool": "js:send", "exit_code": 3, "error": "host.http: denied"}]

        p = run_wbx("telemetry", *flags)  # piped: the route's JSON
        assert p.returncode == 0, p.stderr
        ov = json.loads(p.stdout)
        assert ov["rollup"] == {"runs": 1, "with_errors": 1, "tool_calls": 2}
        assert [r["id"] for r in ov["runs"]] == [rid]

        env = dict(os.environ, NO_COLOR="1", WB_CONTROL_URL=web.control, WB_API_KEY=key)
        env.pop("WBX_AGENT", None)
        for args, patterns in (
            ([], [r"^1 run\(s\) · 1 with errors · 2 tool call\(s\)", r"^RUN\s+KIND\s+STAGE\s+CALLS\s+ERRORS\s+TIME\s+ACTIVE",
                  rf"^{rid}\s+workflow\s+error\s+2\s+1\s+1\.5s\s+\d+[smhd] ago", r"index updated \d+\.\ds ago"]),
            ([rid], [rf"^{rid} · workflow · error · 2 tool call\(s\) · 1\.5s · 1 error\(s\)",
                     r"^\s+STEP\s+TOOL\s+EXIT\s+TIME", r"^\s+1\s+js:send\s+3\s+4ms", r"^\s+1\. js:send: host\.http: denied"]),
        ):
            master, slave = pty.openpty()
            p = subprocess.Popen([sys.executable, "-m", "workbooks", "telemetry", *args], stdout=slave, stderr=slave,
                                 env=env, cwd=ROOT)
            os.close(slave)
            out = read_pty_to_end(master).decode()
            os.close(master)
            assert p.wait(30) == 0, out
            for pat in patterns:
                assert re.search(pat, out, re.M), (pat, out)
            assert not out.lstrip().startswith("{")

    # typed failures: another tenant's run, a malformed id, a bad limit, a rejected key, no server
    _, other = web.new_tenant("telx")
    p = run_wbx("telemetry", rid, "--url", web.control, "--key", other)
    assert p.returncode == 4 and json.loads(p.stderr)["error"]["kind"] == "not_found", p.stderr
    assert run_wbx("telemetry", "run-x", *flags).returncode == 2
    assert run_wbx("telemetry", "--limit", "0", *flags).returncode == 2
    assert run_wbx("telemetry", "--url", web.control, "--key", "wbk_nope").returncode == 7
    assert run_wbx("telemetry", "--url", "http://127.0.0.1:9", "--key", key).returncode == 3
