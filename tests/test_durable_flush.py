"""Durable before acknowledged: git runs every command with core.fsync on committed objects, refs
and the index (fsync method), SQLite with synchronous=FULL, and our own writes fsync the file
before the rename and the directory after it; ledger appends are fsynced. `WB_FSYNC=0` (test-only)
turns every one of those off, and says so loudly."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from workbooks.web_control.launch import Planes

GIT_VERSION = tuple(int(x) for x in re.findall(r"\d+", subprocess.run(["git", "--version"], capture_output=True,
                                                                      text=True).stdout)[:2])


def git_spy(tmp: Path) -> tuple[Path, Path]:
    """A `git` first on PATH that records its argv and runs the real git."""
    bindir, log = tmp / "spybin", tmp / "git-argv.log"
    bindir.mkdir(parents=True)
    real = subprocess.run(["sh", "-c", "command -v git"], capture_output=True, text=True).stdout.strip()
    (bindir / "git").write_text(f'#!/bin/sh\nprintf "%s\\037" "$@" >> {log}\necho >> {log}\nexec {real} "$@"\n')
    (bindir / "git").chmod(0o755)
    return bindir, log


def deploy_once(tmp: Path, env: dict) -> tuple[list[list[str]], str]:
    bindir, log = git_spy(tmp)
    data = tmp / "data"
    http = httpx.Client(timeout=30)
    with Planes(data, env={"PATH": f"{bindir}:{os.environ['PATH']}", **env}, log_dir=tmp / "logs") as planes:
        admin = {"Authorization": f"Bearer {planes.admin_key()}"}
        assert http.post(planes.control_url + "/api/tenants", json={"name": "fl"}, headers=admin).status_code == 201
        h = {**admin, "X-Workbooks-Tenant": "fl"}
        assert http.put(planes.control_url + "/api/workbooks/doc", content=b"* one\n", headers=h).status_code == 200
        assert http.put(planes.control_url + "/api/workbooks/doc", content=b"* two\n", headers=h).status_code == 200
        assert http.delete(planes.control_url + "/api/workbooks/doc", headers=h).status_code == 200
    http.close()
    calls = [line.split("\x1f")[:-1] for line in log.read_text().splitlines() if line]
    return calls, "".join(p.read_text() for p in (tmp / "logs").glob("*"))


def test_git_supports_core_fsync():
    assert GIT_VERSION >= (2, 36), f"git {GIT_VERSION} has no core.fsync; the durability promise needs >= 2.36"


def test_every_git_call_of_a_deploy_flushes_and_wb_fsync_0_turns_it_off(tmp_path):
    calls, _ = deploy_once(tmp_path / "on", {})
    assert calls and all("core.fsync=committed,index" in c and "core.fsyncMethod=fsync" in c for c in calls), calls[:3]
    assert {"add", "commit", "rm"} <= {a for c in calls for a in c}  # the deploys' and the delete's own writes

    calls, logs = deploy_once(tmp_path / "off", {"WB_FSYNC": "0"})
    assert calls and all("core.fsync=none" in c and "core.fsync=committed,index" not in c for c in calls)
    warnings = [json.loads(x) for x in logs.splitlines() if x.startswith("{") and '"durability_off"' in x]
    assert warnings and warnings[0]["level"] == "warning"
    assert "TEST-ONLY" in logs


def _sync_pragma(env: dict, data: Path) -> int:
    code = ("from workbooks.store import Store; import sys; "
            "print(Store(sys.argv[1]).conn().execute('PRAGMA synchronous').fetchone()[0])")
    out = subprocess.run([sys.executable, "-c", code, str(data)], env={**os.environ, **env}, capture_output=True,
                         text=True, check=True)
    return int(out.stdout)


def test_sqlite_commits_are_synchronous_full(tmp_path):
    assert _sync_pragma({}, tmp_path / "a") == 2  # FULL
    assert _sync_pragma({"WB_FSYNC": "0"}, tmp_path / "b") == 0  # OFF


SCRIPT = """
import sys
from pathlib import Path
from workbooks.fsutil import atomic_write
from workbooks.ledger.chain import append_step
d = Path(sys.argv[1])
atomic_write(d / "state.json", b"{}")
append_step(d, {"step": 1})
"""


def _trace(tmp: Path, env: dict) -> list[str]:
    work = tmp / "w"
    work.mkdir(parents=True)
    out = tmp / "trace"
    subprocess.run(["strace", "-f", "-y", "-qq", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,write",
                    "-o", str(out), sys.executable, "-c", SCRIPT, str(work)],
                   env={**os.environ, **env}, check=True, capture_output=True)
    wanted = []
    for line in out.read_text().splitlines():
        if str(work) not in line:
            continue
        m = re.search(r"(fsync|fdatasync|rename\w*|write)\((.*)", line)
        if m:
            wanted.append(f"{m.group(1)} {m.group(2)[:200]}")
    return wanted


def test_atomic_write_and_ledger_append_flush_file_then_directory(tmp_path):
    ops = _trace(tmp_path / "on", {})
    i_sync_tmp = next(i for i, o in enumerate(ops) if o.startswith("fsync") and ".wb-write-" in o)
    i_rename = next(i for i, o in enumerate(ops) if o.startswith("rename") and "state.json" in o)
    i_sync_dir = next(i for i, o in enumerate(ops) if o.startswith("fsync") and o.split(">")[0].endswith("/w")
                      and i > i_rename)
    assert i_sync_tmp < i_rename < i_sync_dir
    i_append = next(i for i, o in enumerate(ops) if o.startswith("write") and "_steps.jsonl" in o)
    assert any(o.startswith("fsync") and "_steps.jsonl" in o for o in ops[i_append:])

    ops = _trace(tmp_path / "off", {"WB_FSYNC": "0"})
    assert ops and not [o for o in ops if o.startswith(("fsync", "fdatasync"))]
