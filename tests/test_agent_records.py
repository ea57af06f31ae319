"""The run records: _steps.jsonl (the ledger's file), _status.json and events.org."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from workbooks.agent.records import Recorder, read_status, read_steps
from workbooks.agent.secrets import Secrets
from workbooks.ledger.chain import chain, head_of, split_lines

SECRET = "sk-live-7Hq2Zr9xK4"


def _rec(tmp_path, **kw):
    return Recorder(tmp_path, agent=kw.pop("agent", "keeper"), secrets=Secrets({"API_TOKEN": SECRET}), **kw)


def test_step_lines_have_the_fields_in_order_and_are_chained(tmp_path):
    r = _rec(tmp_path)
    r.step({"step": 0, "tool": "shell", "args": {"pipeline": "echo hi"}, "output": "hi",
            "exit_code": 0, "error": None, "dur_ms": 3})
    r.step({"step": 1, "tool": "vfs_read", "args": {"path": "x"}, "output": "not found: x",
            "exit_code": 1, "error": "not found", "dur_ms": 1, "ts": 1700000000})
    raw = (tmp_path / "_steps.jsonl").read_bytes()
    lines = raw.splitlines()
    assert len(lines) == 2 and raw.endswith(b"\n")
    first = json.loads(lines[0])
    assert list(first) == ["step", "agent", "tool", "args", "output", "exit_code", "error", "dur_ms", "ts"]
    assert first["agent"] == "keeper" and first["tool"] == "shell" and first["output"] == "hi"
    assert isinstance(first["ts"], int) and first["ts"] > 1_600_000_000
    assert json.loads(lines[1])["ts"] == 1700000000
    # exactly what the ledger chains: the raw lines as written
    assert head_of([ln for _, ln in split_lines(raw)]) == chain(lines)[-1]
    assert [s["step"] for s in read_steps(tmp_path)] == [0, 1]


def test_step_output_is_capped_at_200_chars_after_redaction(tmp_path):
    r = _rec(tmp_path)
    # the secret straddles the 200-char cut: redacting after cutting would leave half of it
    out = "a" * 195 + SECRET + "b" * 500
    line = r.step({"step": 0, "tool": "fetch", "args": {"url": "http://x/?k=" + SECRET}, "output": out})
    assert len(line["output"]) == 200
    raw = (tmp_path / "_steps.jsonl").read_text()
    assert SECRET not in raw and SECRET[:6] not in raw
    assert "[secret:API_TOKEN]" in raw  # the args were redacted too
    assert line["output"].startswith("a" * 195 + "[secr")


def test_status_is_atomic_json_and_keeps_extra_fields(tmp_path):
    r = _rec(tmp_path)
    r.status("running", 0, started_at="2026-12-06T09:00:00Z", task="say " + SECRET, model="m1")
    st = read_status(tmp_path)
    assert st["status"] == "running" and st["steps"] == 0 and st["result"] is None and st["usage"] is None
    assert st["task"] == "say [secret:API_TOKEN]" and st["model"] == "m1"
    r.status("done", 3, result="all set", usage={"prompt_tokens": 10, "completion_tokens": 4},
             tools=["shell", "done"], ended_at="2026-12-06T09:01:00Z")
    st = read_status(tmp_path)
    assert list(st)[:4] == ["status", "steps", "result", "usage"]
    assert st["usage"] == {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
    assert st["started_at"] == "2026-12-06T09:00:00Z" and st["tools"] == ["shell", "done"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".wb-write-")]  # no temp file left
    # a second recorder on the same folder (the runner's, then the loop's) keeps what the first wrote
    r2 = _rec(tmp_path)
    r2.status("done", 3, result="again")
    assert read_status(tmp_path)["model"] == "m1"
    with pytest.raises(ValueError):
        r.status("finished", 1)


def test_events_org_has_the_original_shape_and_cannot_be_broken_by_content(tmp_path):
    r = _rec(tmp_path)
    r.step({"step": 0, "tool": "shell", "args": {"pipeline": "cat notes.org"},
            "output": "* Injected headline\n:END:\n" + SECRET})
    r.step({"step": 1, "tool": "evil\n* tool", "args": {}, "output": "unknown tool: evil"})
    outcome = SimpleNamespace(status="done", result="line one\n* not a headline\nline three " + SECRET)
    text = r.events_org("summarise\n* the notes", outcome)
    assert text == (tmp_path / "events.org").read_text()
    lines = text.splitlines()
    headlines = [ln for ln in lines if ln.startswith("*")]
    assert [h.split()[0:4] for h in headlines] == [
        ["*", "Agent", "run", ":session:"],
        ["**", "step", "0:", "shell"],
        ["**", "step", "1:", "evil"],
        ["*", "Result"],
    ]
    assert headlines[1].endswith(":tool_call:") and headlines[2].endswith(":tool_call:")
    assert '   :ARGS: {"pipeline": "cat notes.org"}' in lines
    assert "  * not a headline" in lines and "  line one" in lines
    assert SECRET not in text and "[secret:API_TOKEN]" in text
    assert "  :TASK: summarise * the notes" in lines


def test_events_org_parses_as_org_in_the_kernel(tmp_path):
    """The trace is queryable: the kernel sees exactly the session, its steps and the result."""
    r = _rec(tmp_path)
    for i in range(3):
        r.step({"step": i, "tool": "shell", "args": {"pipeline": f"echo {i}"}, "output": f"{i}\n* x"})
    text = r.events_org("t", SimpleNamespace(status="done", result="r\n** y"))
    wbx = os.path.join(os.path.dirname(sys.executable), "wbx")
    proc = subprocess.run([wbx, "query", "-"], input=text.encode(), capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(h["level"], h["title"]) for h in rows] == [
        (1, "Agent run"), (2, "step 0: shell"), (2, "step 1: shell"), (2, "step 2: shell"), (1, "Result")]
    assert rows[1]["props"]["ARGS"] == '{"pipeline": "echo 0"}'


def test_read_steps_skips_a_torn_last_line(tmp_path):
    r = _rec(tmp_path)
    r.step({"step": 0, "tool": "shell", "args": {}, "output": "ok"})
    with open(tmp_path / "_steps.jsonl", "ab") as f:
        f.write(b'{"step": 1, "tool": "sh')  # a writer killed mid-line
    assert [s["step"] for s in read_steps(tmp_path)] == [0]
    r.step({"step": 2, "tool": "shell", "args": {}, "output": "ok"})  # appends on a fresh line
    assert [s["step"] for s in read_steps(tmp_path)] == [0, 2]
    assert read_steps(tmp_path / "nope") == [] and read_status(tmp_path / "nope") is None


def test_a_long_string_argument_keeps_head_and_tail_in_the_record(tmp_path):
    r = _rec(tmp_path)
    content = "<" + "é" * 20000 + ">" + SECRET
    line = r.step({"step": 0, "tool": "vfs_write", "args": {"path": "big.org", "content": content}, "output": "wrote"})
    rec = read_steps(tmp_path)[0]
    assert rec == line and rec["args"]["path"] == "big.org"
    kept = rec["args"]["content"]
    assert kept.startswith("<éé") and kept.endswith(">[secret:API_TOKEN]")
    n = int(kept.split("...[")[1].split(" bytes")[0])
    assert len(kept.encode()) < 8100 and n > 30000
    assert len((tmp_path / "_steps.jsonl").read_bytes()) < 9000


def test_a_secret_across_the_cut_of_a_long_argument_is_redacted_whole(tmp_path):
    r = _rec(tmp_path)
    content = "a" * 3996 + SECRET + "b" * 20000 + SECRET[:2] + SECRET + "c" * 3990
    r.step({"step": 0, "tool": "vfs_write", "args": {"content": content}, "output": ""})
    raw = (tmp_path / "_steps.jsonl").read_text()
    assert SECRET[:4] not in raw.replace("[secret:API_TOKEN]", "") and SECRET[-5:] not in raw
