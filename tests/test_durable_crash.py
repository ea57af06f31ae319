"""One deploy = one atomic unit across crashes: kill -9 the control plane while it runs `git add` or
`git commit` for a deploy, restart it, and git HEAD agrees with the index for every workbook,
no commit carries another deploy's file, and every acknowledged deploy is there."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from conftest import index_intents
from workbooks.web_control.launch import Planes, free_port

ROUNDS = 20
WRITERS = 4
ROUND_TIMEOUT_S = 4.0


def start_planes(data: Path, cport: int, pport: int, logs: Path) -> Planes:
    """The real planes (one control, one public process) on fixed ports, logs kept across rounds."""
    return Planes(data, control_port=cport, public_port=pport, log_dir=logs).start()


def children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def git_verb(pid: int) -> str | None:
    """'add'/'commit' when `pid` is a git process running that verb."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if not argv or not argv[0].endswith(b"git"):
        return None
    i = 1
    while i < len(argv) and argv[i] == b"-c":  # skip every `-c key=value`
        i += 2
    verb = argv[i] if i < len(argv) else b""
    return verb.decode() if verb in (b"add", b"commit") else None


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "safe.directory=*", *args], cwd=repo, capture_output=True, check=True,
                          env={**os.environ, "GIT_CONFIG_GLOBAL": os.devnull}).stdout.decode("utf-8", "replace")


def index_rows(data: Path, tenant: str) -> dict[str, str]:
    c = sqlite3.connect(data / ".workbooks" / "index.db")
    try:
        return dict(c.execute("SELECT id, source FROM workbooks WHERE tenant=?", (tenant,)).fetchall())
    finally:
        c.close()


def test_kill9_during_git_add_or_commit_leaves_git_and_index_in_agreement(tmp_path):
    data, logs = tmp_path / "data", tmp_path / "logs"
    data.mkdir()
    logs.mkdir()
    cport, pport = free_port(), free_port()
    base = f"http://127.0.0.1:{cport}"
    planes = start_planes(data, cport, pport, logs)
    proc = planes.procs[0]  # the control-plane process
    acked: dict[str, str] = {}  # workbook -> the source its last acknowledged deploy sent
    kills = {"add": 0, "commit": 0, "timeout": 0}
    try:
        http = httpx.Client(timeout=30)
        admin = {"Authorization": "Bearer " + (data / "admin.key").read_text().strip()}
        tenant = "crash"
        assert http.post(base + "/api/tenants", json={"name": tenant}, headers=admin).status_code == 201
        key = http.post(base + f"/api/tenants/{tenant}/keys", json={"scope": "tenant"}, headers=admin).json()["key"]
        auth = {"Authorization": f"Bearer {key}"}
        repo = data / tenant
        lock = threading.Lock()

        for rnd in range(ROUNDS):
            stop = threading.Event()
            acked_now = threading.Semaphore(0)

            def writer(w: int) -> None:
                n = 0
                with httpx.Client(timeout=10) as c:
                    while not stop.is_set():
                        n += 1
                        # fresh ids, and every other deploy a new version of the writer's previous one
                        wid = f"r{rnd}-w{w}-{n if n % 2 else n - 1}"
                        src = f"#+TITLE: {wid}\n* round {rnd} writer {w} deploy {n}\n"
                        try:
                            r = c.put(f"{base}/api/workbooks/{wid}", content=src.encode(), headers=auth)
                        except httpx.HTTPError:
                            return  # the plane died under us: this deploy was never acknowledged
                        if r.status_code == 200 and "sha" in r.json():
                            with lock:
                                acked[wid] = src
                            acked_now.release()

            threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
            for t in threads:
                t.start()
            want_either = (rnd // 2) % 2 == 1  # half the rounds wait for a `git commit` child specifically
            for _ in range(random.randint(1, 4)):  # let a few deploys of this round be acknowledged first
                acked_now.acquire(timeout=ROUND_TIMEOUT_S)
            deadline = time.monotonic() + ROUND_TIMEOUT_S
            victim = None
            while time.monotonic() < deadline and victim is None:
                for child in children(proc.pid):
                    verb = git_verb(child)
                    if verb and (verb == "commit" or want_either):
                        victim = (child, verb)
                        break
            os.kill(proc.pid, signal.SIGKILL)  # the control plane dies mid-deploy
            if victim is not None:
                kills[victim[1]] += 1
                if rnd % 2:  # odd rounds: its git child dies too (a stale index.lock is left behind)
                    try:
                        os.kill(victim[0], signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            else:
                kills["timeout"] += 1
            proc.wait()
            stop.set()
            for t in threads:
                t.join()
            planes.stop()  # the public process; the killed control one is reaped
            planes = start_planes(data, cport, pport, logs)
            proc = planes.procs[0]

            # the restarted plane reconciled at start: HEAD and the index agree for every workbook
            rows = index_rows(data, tenant)
            for wid, source in rows.items():
                assert git(repo, "show", f"HEAD:{wid}.org") == source, (rnd, wid)
            for wid, source in acked.items():
                assert rows.get(wid) == source, f"acknowledged deploy {wid} lost in round {rnd}"
            has_head = subprocess.run(["git", "-c", "safe.directory=*", "rev-parse", "-q", "--verify", "HEAD"], cwd=repo,
                                      capture_output=True).returncode == 0
            listed = git(repo, "ls-tree", "--name-only", "HEAD") if has_head else ""
            head_files = {f for f in listed.split("\n") if f.endswith(".org")}
            assert head_files == {f"{w}.org" for w in rows}, rnd
            assert not (repo / ".git" / "index.lock").exists()
            assert index_intents(data) == []  # every unfinished write was resolved
            if acked:  # the public page is the acknowledged version too
                wid = sorted(acked)[-1]
                page = http.get(f"http://127.0.0.1:{pport}/", headers={"Host": f"{wid}.{tenant}.localhost"})
                assert page.status_code == 200 and acked[wid].split("\n")[1][2:] in page.text, (wid, page.status_code)
            assert git(repo, "diff", "--cached", "--name-only") == ""  # nothing a dead deploy staged survives

        print(f"kills: {kills}, acknowledged deploys: {len(acked)}")
        assert len(acked) >= ROUNDS * 2, len(acked)  # deploys were acknowledged between the kills
        # the kills landed inside git (a round whose hunt timed out on a starved machine still kills)
        assert kills["add"] + kills["commit"] >= ROUNDS * 3 // 4, kills
        assert kills["commit"] >= ROUNDS // 5, kills

        # every commit touches exactly its own deploy's file
        for line in git(repo, "log", "--format=%H %s").strip().split("\n"):
            sha, subject = line.split(" ", 1)
            files = {f for f in git(repo, "show", "--name-only", "--format=", sha).split("\n") if f}
            if subject.startswith("deploy "):
                wid = subject.split(" ", 1)[1]
                assert files - {".gitignore"} == {f"{wid}.org"}, (subject, files)
            else:
                assert subject.startswith("reconcile: "), subject
                named = subject.split("(", 1)[1].rstrip(")")
                assert files and all(f in named for f in files), (subject, files)

        # the same verdict from the CLI, and a clean object store
        fsck = subprocess.run([sys.executable, "-m", "workbooks", "repo", "fsck", "--tenant", tenant, "--data",
                               str(data), "--json"], capture_output=True, text=True, timeout=60)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        assert json.loads(fsck.stdout)["data"]["disagreements"] == []
        subprocess.run(["git", "-c", "safe.directory=*", "fsck", "--strict"], cwd=repo, check=True, capture_output=True)
        # each repair was logged as a structlog event
        events = [json.loads(x) for x in (logs / "web_control-1.log").read_text().splitlines() if x.startswith("{")]
        repairs = [e for e in events if e.get("event") == "reconcile_repair"]
        assert repairs and all(e["tenant"] == tenant and e["action"] for e in repairs)
        http.close()
    finally:
        planes.stop()
