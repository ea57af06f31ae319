"""A deploy's flushes come before its answer: `strace -f -y` on the running control plane.

Traced during one deploy (the control-plane process, its threads and the git children it starts),
every byte written to a file of the data dir must be fsynced (fsync/fdatasync) before the syscall
that sends the HTTP response, and every name the deploy creates by rename or link must have its
directory fsynced after the rename and before the response. Flushed, in order, for: git's objects
and ref, the work-tree file, the page files, SQLite's WAL.

Not required (rebuilt, or not state): SQLite's -shm, git's staging index and reflogs,
COMMIT_EDITMSG, the run/ sockets, and a workbook's work-tree file (`<tenant>/<id>.org`, written
through `.git/.wb-write-*`): by the storage design git's blob and the index row are what is
durable, and `wbx repo fsck` puts the work-tree file back from them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from fusefs.service import Serve, tenant_with_key

TRACED = "fsync,fdatasync,sync_file_range,write,pwrite64,writev,pwritev,pwritev2,sendto,sendmsg,rename,renameat,renameat2,link,linkat"
NOT_STATE = re.compile(r"(-shm$|/\.git/index$|/\.git/index\.lock$|/\.git/next-index-[^/]*$|/\.git/logs/|/\.git/COMMIT_EDITMSG$|/run/)")
LINE = re.compile(r"^(\d+)\s+\S+\s+(?:<\.\.\. (\w+) resumed>(.*)|(\w+)\((.*))$")
QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def parse(trace: str) -> list[dict]:
    """Syscalls in trace order: {call, args, start (line of entry), end (line of exit), ret}."""
    events, open_calls = [], {}
    for i, raw in enumerate(trace.splitlines()):
        m = LINE.match(raw)
        if not m:
            continue
        pid = m.group(1)
        if m.group(2):  # "<... call resumed> rest) = ret"
            ev = open_calls.pop(pid, None)
            if ev is None or ev["call"] != m.group(2):
                continue
            ev["args"] += m.group(3)
            ev["end"] = i
            ev["ret"] = ev["args"].rsplit("=", 1)[-1].strip()
            continue
        call, rest = m.group(4), m.group(5)
        ev = {"pid": pid, "call": call, "args": rest, "start": i, "end": i, "ret": ""}
        events.append(ev)
        if rest.endswith("<unfinished ...>"):
            ev["args"] = rest[: -len("<unfinished ...>")]
            open_calls[pid] = ev
        else:
            ev["ret"] = rest.rsplit("=", 1)[-1].strip()
    return events


def is_state(path: str, data: str) -> bool:
    """Whether a file of the data dir must be durable once a deploy is answered (see the docstring)."""
    if not path.startswith(data + "/") or NOT_STATE.search(path):
        return False
    parts = path[len(data) + 1:].split("/")
    if len(parts) < 2 or parts[0].startswith("."):
        return True  # the data dir's own files, the index, pages, keys
    if parts[1] == ".git":
        return not (len(parts) == 3 and parts[2].startswith(".wb-write-"))  # (a work-tree file's temp)
    return len(parts) > 2  # a repo's subfolders (runs/ ...) are state; its top-level files are the work tree


def _fd_path(args: str) -> str | None:
    m = re.match(r"\d+<([^>]*)>", args)
    return m.group(1) if m else None


def flush_order_problems(trace: str, data: str, sha: str) -> tuple[list[str], dict]:
    """What the deploy wrote or named without flushing it before its answer; and what it flushed."""
    events = parse(trace)
    answer = next((e for e in events if e["call"] in ("sendto", "sendmsg", "write", "writev")
                   and "HTTP/1.1 200" in e["args"] and sha[:20] in e["args"]), None)
    if answer is None:
        return [f"no HTTP response carrying {sha[:12]} in the trace"], {}
    before = [e for e in events if e["start"] < answer["start"]]
    syncs = [e for e in before if e["call"] in ("fsync", "fdatasync") and e["ret"] == "0"]
    problems: list[str] = []
    flushed = sorted({_fd_path(e["args"]) or "?" for e in syncs})

    def synced_after(path: str, line: int) -> bool:
        return any(_fd_path(e["args"]) == path and e["start"] > line and e["end"] < answer["start"] for e in syncs)

    # every write to a file of the data dir is flushed before the answer
    for e in before:
        if e["call"] not in ("write", "pwrite64", "writev", "pwritev", "pwritev2"):
            continue
        path = _fd_path(e["args"])
        if not path or not is_state(path, data):
            continue
        if not synced_after(path, e["start"]):  # (a temp file counts under its temp name, before its rename)
            problems.append(f"written, not fsynced before the answer: {path}")
    # every name the deploy made by rename/link: its directory is fsynced after it, before the answer
    for e in before:
        if e["call"] not in ("rename", "renameat", "renameat2", "link", "linkat") or e["ret"] != "0":
            continue
        names = QUOTED.findall(e["args"])
        if len(names) < 2:
            continue
        target = names[1] if names[1].startswith("/") else _resolve(names[1], e, events, data)
        if target is None or not is_state(target, data):
            continue
        if not synced_after(os.path.dirname(target), e["end"]):
            problems.append(f"{e['call']} to {target}: its directory not fsynced before the answer")
    return sorted(set(problems)), {"flushed": flushed, "answer_line": answer["start"]}


def _resolve(rel: str, ev: dict, events: list, data: str) -> str | None:
    """git links objects by names relative to the repo: find the repo from the same process's fds."""
    for e in events:
        if e["pid"] == ev["pid"]:
            p = _fd_path(e["args"])
            if p and "/.git/" in p:
                return p.split("/.git/")[0] + "/" + rel
    return None


def _trace_one_deploy(tmp_path, env: dict) -> tuple[list[str], dict]:
    data = tmp_path / "data"
    s = Serve(data, tmp_path, env)
    tracer = None
    try:
        s.start()
        h = tenant_with_key(s, "order")
        warm = s.http.put(s.control + "/api/workbooks/warm", content=b"#+TITLE: warm\n* a\n", headers=h)
        assert warm.status_code == 200, warm.text  # the repo exists and the tenant is reconciled
        kids = {c["id"]: c for c in s.http.get(s.control + "/api/ops/workers", headers=s.admin()).json()["children"]}
        pid = kids["control-1"]["pid"]
        out, err = tmp_path / "strace.out", tmp_path / "strace.err"
        with open(err, "wb") as errf:
            tracer = subprocess.Popen(["strace", "-f", "-tt", "-y", "-s", "400", "-e", f"trace={TRACED}", "-o", str(out),
                                       "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=errf)
        deadline = time.time() + 20
        while f"Process {pid} attached" not in err.read_text():
            assert tracer.poll() is None and time.time() < deadline, err.read_text()
            time.sleep(0.05)
        time.sleep(0.3)  # every thread attached
        src = "#+TITLE: Traced\n* Flushed before answered\nThe deploy under strace.\n"
        r = s.http.put(s.control + "/api/workbooks/traced", content=src.encode(), headers=h)
        assert r.status_code == 200, r.text
        sha = r.json()["sha"]
        deadline = time.time() + 10
        while sha[:20] not in (out.read_text() if out.exists() else ""):
            assert time.time() < deadline, "the response never showed in the trace"
            time.sleep(0.05)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(20)
        tracer = None
        return flush_order_problems(out.read_text(errors="replace"), str(data.resolve()), sha)
    finally:
        if tracer is not None and tracer.poll() is None:
            tracer.kill()
            tracer.wait()
        s.close()


def test_a_deploy_flushes_git_the_index_and_its_files_before_it_answers(tmp_path):
    problems, seen = _trace_one_deploy(tmp_path, {})
    assert problems == [], "\n".join(problems) + "\n\nfsynced before the answer:\n" + "\n".join(seen.get("flushed", []))
    flushed = "\n".join(seen["flushed"])
    assert "/.git/objects/" in flushed and "/.git/refs/heads/" in flushed and "index.db" in flushed, flushed


def test_negative_control_without_fsync_the_trace_shows_unflushed_writes(tmp_path):
    problems, seen = _trace_one_deploy(tmp_path, {"WB_FSYNC": "0"})
    assert any("/.git/objects/" in p for p in problems), problems
    assert any("index.db" in p for p in problems), problems


def test_what_counts_as_state():
    assert is_state("/d/.workbooks/index.db-wal", "/d") and is_state("/d/admin.key", "/d")
    assert is_state("/d/t/.git/objects/ab/cd", "/d") and is_state("/d/t/.git/refs/heads/main", "/d")
    assert is_state("/d/t/runs/r1/_steps.jsonl", "/d")
    assert not is_state("/d/t/w.org", "/d") and not is_state("/d/t/.git/.wb-write-x1", "/d")
    assert not is_state("/d/.workbooks/index.db-shm", "/d") and not is_state("/d/t/.git/logs/HEAD", "/d")
    assert not is_state("/elsewhere/x", "/d")


@pytest.mark.parametrize("trace, ok", [
    # the WAL is written and fdatasynced, then the answer: fine
    ('1 00:00:00.1 pwrite64(5</d/.workbooks/index.db-wal>, "x", 1, 0) = 1\n'
     '1 00:00:00.2 fdatasync(5</d/.workbooks/index.db-wal>) = 0\n'
     '2 00:00:00.3 sendto(9<socket:[1]>, "HTTP/1.1 200 \\r\\netag: \\"abcdefabcdefabcdefabcdef\\"", 40, 0, NULL, 0) = 40\n', True),
    # the answer before the fdatasync
    ('1 00:00:00.1 pwrite64(5</d/.workbooks/index.db-wal>, "x", 1, 0) = 1\n'
     '2 00:00:00.2 sendto(9<socket:[1]>, "HTTP/1.1 200 \\r\\netag: \\"abcdefabcdefabcdefabcdef\\"", 40, 0, NULL, 0) = 40\n'
     '1 00:00:00.3 fdatasync(5</d/.workbooks/index.db-wal>) = 0\n', False),
    # an fsync still running when the answer starts does not count
    ('1 00:00:00.1 pwrite64(5</d/.workbooks/index.db-wal>, "x", 1, 0) = 1\n'
     '1 00:00:00.2 fdatasync(5</d/.workbooks/index.db-wal> <unfinished ...>\n'
     '2 00:00:00.3 sendto(9<socket:[1]>, "HTTP/1.1 200 \\r\\netag: \\"abcdefabcdefabcdefabcdef\\"", 40, 0, NULL, 0) = 40\n'
     '1 00:00:00.4 <... fdatasync resumed>) = 0\n', False),
    # a rename whose directory is never fsynced
    ('1 00:00:00.1 write(5</d/t/.git/refs/heads/main.lock>, "x", 1) = 1\n'
     '1 00:00:00.2 fsync(5</d/t/.git/refs/heads/main.lock>) = 0\n'
     '1 00:00:00.3 rename("/d/t/.git/refs/heads/main.lock", "/d/t/.git/refs/heads/main") = 0\n'
     '2 00:00:00.4 sendto(9<socket:[1]>, "HTTP/1.1 200 \\r\\netag: \\"abcdefabcdefabcdefabcdef\\"", 40, 0, NULL, 0) = 40\n', False),
    # ... and with it
    ('1 00:00:00.1 write(5</d/t/.git/refs/heads/main.lock>, "x", 1) = 1\n'
     '1 00:00:00.2 fsync(5</d/t/.git/refs/heads/main.lock>) = 0\n'
     '1 00:00:00.3 rename("/d/t/.git/refs/heads/main.lock", "/d/t/.git/refs/heads/main") = 0\n'
     '1 00:00:00.35 fsync(6</d/t/.git/refs/heads>) = 0\n'
     '2 00:00:00.4 sendto(9<socket:[1]>, "HTTP/1.1 200 \\r\\netag: \\"abcdefabcdefabcdefabcdef\\"", 40, 0, NULL, 0) = 40\n', True),
])
def test_the_order_check_itself(trace, ok):
    """The checker on hand-written traces: a check that passes everything would prove nothing."""
    problems, _ = flush_order_problems(trace, "/d", "abcdefabcdefabcdefabcdef")
    assert (problems == []) is ok, problems
