"""After 500 deploys, the control plane has no git child process left (and no fd leak)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from conftest import child_pids, proc_stats


def _children_named(pid: int, name: str) -> list[str]:
    out = []
    for c in child_pids(pid):
        try:
            cmd = Path(f"/proc/{c}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if name in cmd.split(" ", 1)[0]:
            out.append(f"{c}: {cmd}")
    return out


def _zombies(pid: int) -> list[int]:
    return [p for p, state, ppid, _ in proc_stats() if state == "Z" and ppid == pid]


def test_500_deploys_leave_no_git_process(web):
    control_pid = web.planes.procs[0].pid
    fds_before = len(os.listdir(f"/proc/{control_pid}/fd"))
    tenants = [web.new_tenant("leak") for _ in range(4)]
    errors: list = []

    def run(tenant_key: tuple[str, str], n: int) -> None:
        _, key = tenant_key
        for i in range(n):
            r = web.deploy(key, f"doc{i % 7}", f"#+TITLE: leak {i}\n* version {i}\n")
            if r.status_code != 200 or "sha" not in r.json():
                errors.append(r.text)

    threads = [threading.Thread(target=run, args=(t, 125)) for t in tenants]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    # every deploy is a commit
    for tenant, key in tenants:
        log = web.http.get(web.control + "/api/git/log?limit=1000", headers=web.auth(key)).json()["commits"]
        assert len(log) == 125
    assert _children_named(control_pid, "git") == []
    assert _zombies(control_pid) == []
    fds_after = len(os.listdir(f"/proc/{control_pid}/fd"))
    assert fds_after < fds_before + 40, (fds_before, fds_after)
