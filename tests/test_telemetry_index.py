"""The telemetry indexer as a real process over real run folders: runs show up while they are
written, torn lines wait, deleted runs leave, a restart (or a lost index) re-indexes without
duplicates, a 10k-step run is read incrementally, symlinks are not followed.

The helpers at the top are shared by the other telemetry tests (routes, CLI)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbooks.agent.records import Recorder
from workbooks.agent.runs import allocate
from workbooks.telemetry import query as Q


# -- helpers (shared) -----------------------------------------------------------------------------
class Indexer:
    """`python -m workbooks.telemetry --data D` as a subprocess; stopped (SIGTERM) on exit."""

    def __init__(self, data: Path, interval: float | None = None):
        argv = [sys.executable, "-m", "workbooks.telemetry", "--data", str(data)]
        if interval is not None:
            argv += ["--interval", str(interval)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=dict(os.environ, WB_LOG_LEVEL="DEBUG"))
        self.data = data

    def wait_started(self, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"indexer exited {self.proc.returncode}: {self.proc.stderr.read()!r}")
            if Q.freshness(_reader(self.data))["scanned_at"] is not None:
                return
            time.sleep(0.05)
        raise AssertionError("the indexer never finished a pass")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        out = self.proc.stdout.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        self.output = out
        return self.proc.returncode

    def __enter__(self):
        try:
            self.wait_started()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()


def _reader(data: Path):
    from workbooks.telemetry.db import open_reader

    return open_reader(data)


def new_run(data: Path, tenant: str, prefix: str = "run", **status) -> tuple[str, Path, Recorder]:
    rid, path = allocate(data, tenant, prefix=prefix)
    rec = Recorder(path, agent="tester")
    rec.status("running", 0, started_at=time.time(), **status)
    return rid, path, rec


def step_line(step: int, tool: str = "shell", exit_code: int | None = 0, dur_ms: int | None = 5,
              error: str | None = None) -> bytes:
    """One `_steps.jsonl` line exactly as the ledger's append writes it."""
    rec = {"step": step, "agent": "tester", "tool": tool, "args": {}, "output": "ok", "exit_code": exit_code,
           "error": error, "dur_ms": dur_ms, "ts": int(time.time())}
    return json.dumps(rec, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def wait_for(fn, timeout: float = 10.0, what: str = "condition"):
    """Poll `fn` until it returns a truthy value; (value, seconds it took)."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        try:
            last = fn()
        except Exception as e:  # noqa: BLE001 - e.g. not indexed yet (NotFound)
            last = e
        if last and not isinstance(last, Exception):
            return last, time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def indexed(data: Path, tenant: str, run: str, **want):
    """The run's summary once it comes from the index with the wanted fields, else None."""
    s = Q.run_summary(data, tenant, run)
    if s["index"]["source"] != "index":
        return None
    return s if all(s.get(k) == v for k, v in want.items()) else None


def db_rows(data: Path, sql: str, *args) -> list:
    conn = sqlite3.connect(f"file:{data / 'telemetry.db'}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


# -- tests ----------------------------------------------------------------------------------------
def test_a_run_shows_up_while_it_is_written(tmp_path):
    data = tmp_path
    with Indexer(data):  # the default pass interval (0.5 s)
        rid, path, rec = new_run(data, "acme")
        s, _ = wait_for(lambda: indexed(data, "acme", rid, stage="running"), what="the new run")
        assert s["tool_calls"] == 0 and s["kind"] == "agent"
        lags = []
        for i in range(3):
            rec.step({"step": i, "tool": "shell", "output": "x", "exit_code": 2 if i == 1 else 0, "dur_ms": 10 + i})
            _, lag = wait_for(lambda i=i: indexed(data, "acme", rid, tool_calls=i + 1), what=f"step {i}")
            lags.append(lag)
        # a step appended is in the index within ~1 s (the pass is every 0.5 s; generous for a shared machine)
        print("step -> index lags (s):", [round(x, 3) for x in lags])
        assert max(lags) < 3.0, lags
        rec.status("done", 3, result="fine")
        s, _ = wait_for(lambda: indexed(data, "acme", rid, stage="done"), what="done")
        assert s["status"] == "done"
        assert s["total_ms"] == 10 + 11 + 12
        assert s["errors"] == [{"step": 1, "tool": "shell", "exit_code": 2, "error": None}]
        assert [r["step"] for r in s["recent"]] == [0, 1, 2]
        assert s["index"]["live"] is True


def test_torn_last_line_waits_for_its_newline_and_a_torn_fragment_is_skipped(tmp_path):
    data = tmp_path
    rid, path, rec = new_run(data, "acme")
    steps = path / "_steps.jsonl"
    whole = step_line(2, tool="js:fetch", dur_ms=7)
    steps.write_bytes(step_line(0) + step_line(1) + whole[:25])  # the third line is half written
    with Indexer(data, interval=0.1):
        wait_for(lambda: indexed(data, "acme", rid, tool_calls=2), what="two whole lines")
        time.sleep(0.5)  # several passes: the half line is still not a step
        assert indexed(data, "acme", rid)["tool_calls"] == 2
        with open(steps, "ab") as f:
            f.write(whole[25:])
        s, _ = wait_for(lambda: indexed(data, "acme", rid, tool_calls=3), what="the completed line")
        assert s["recent"][-1] == {"step": 2, "tool": "js:fetch", "exit_code": 0, "dur_ms": 7}
        # a writer that died mid-line, then the next append (which starts on a new line)
        with open(steps, "ab") as f:
            f.write(b'{"step":3,"tool":"sh')
        rec.step({"step": 4, "tool": "shell", "output": "after", "exit_code": 0, "dur_ms": 1})
        s, _ = wait_for(lambda: indexed(data, "acme", rid, tool_calls=4), what="the step after a torn one")
        assert [r["step"] for r in s["recent"]] == [0, 1, 2, 4]
    rows = db_rows(data, "SELECT line, step FROM step_events WHERE run_id=? ORDER BY line", rid)
    assert rows == [(1, 0), (2, 1), (3, 2), (5, 4)]  # physical line numbers; line 4 was the torn fragment


def test_a_deleted_run_leaves_the_index_and_a_reused_id_starts_afresh(tmp_path):
    data = tmp_path
    with Indexer(data, interval=0.1):
        keep, _, krec = new_run(data, "acme")
        krec.step({"step": 0, "tool": "shell", "exit_code": 0, "dur_ms": 1})
        gone, gpath, grec = new_run(data, "acme")
        for i in range(5):
            grec.step({"step": i, "tool": "shell", "exit_code": 0, "dur_ms": 1})
        wait_for(lambda: indexed(data, "acme", gone, tool_calls=5), what="5 steps")
        wait_for(lambda: indexed(data, "acme", keep, tool_calls=1), what="the other run")
        shutil.rmtree(gpath)
        wait_for(lambda: [r["id"] for r in Q.overview(data, "acme")["runs"]] == [keep], what="the run to leave")
        with pytest.raises(Exception) as e:
            Q.run_summary(data, "acme", gone)
        assert getattr(e.value, "http_status", None) == 404
        assert db_rows(data, "SELECT count(*) FROM step_events WHERE run_id=?", gone) == [(0,)]
        # the id is allocated again (max + 1 after a delete): a new run, its own steps only
        again, _, arec = new_run(data, "acme")
        assert again == gone
        arec.step({"step": 0, "tool": "shell", "exit_code": 1, "dur_ms": 1})
        s, _ = wait_for(lambda: indexed(data, "acme", again, tool_calls=1), what="the new run with the old id")
        assert s["error_count"] == 1


def test_restart_and_a_lost_index_reindex_without_duplicates(tmp_path):
    data = tmp_path
    runs = {}
    for t in ("acme", "beta"):
        for _ in range(3):
            rid, path, _rec = new_run(data, t, prefix="wf")
            n = len(runs) + 2
            (path / "_steps.jsonl").write_bytes(b"".join(step_line(i, tool="wat:c", exit_code=i % 2) for i in range(n)))
            runs[(t, rid)] = (path, n)
    ix = Indexer(data, interval=0.1)
    ix.wait_started()
    for (t, rid), (_, n) in runs.items():
        wait_for(lambda t=t, rid=rid, n=n: indexed(data, t, rid, tool_calls=n), what=f"{t}/{rid}")
    ix.kill()  # no clean stop
    (t, rid), (path, n) = next(iter(runs.items()))
    with open(path / "_steps.jsonl", "ab") as f:
        f.write(step_line(n, tool="wat:c"))
    runs[(t, rid)] = (path, n + 1)

    def figures():
        return {k: (s["tool_calls"], s["error_count"], s["total_ms"])
                for k in runs for s in [Q.run_summary(data, *k)]}

    with Indexer(data, interval=0.1):
        wait_for(lambda: indexed(data, t, rid, tool_calls=n + 1), what="the step written while it was down")
        first = figures()
    for (t2, r2), (_, n2) in runs.items():
        assert db_rows(data, "SELECT count(*), count(DISTINCT line) FROM step_events WHERE tenant=? AND run_id=?",
                       t2, r2) == [(n2, n2)]
        assert first[(t2, r2)] == (n2, n2 // 2, 5 * n2)
    for f in data.glob("telemetry.db*"):
        f.unlink()  # the index is lost: the run folders are the truth, it is rebuilt from them
    with Indexer(data, interval=0.1):
        for (t2, r2), (_, n2) in runs.items():
            wait_for(lambda t2=t2, r2=r2, n2=n2: indexed(data, t2, r2, tool_calls=n2), what="rebuilt")
        assert figures() == first
        assert Q.overview(data, "acme")["rollup"] == {"runs": 3, "with_errors": 3,
                                                      "tool_calls": sum(n for (tt, _), (_, n) in runs.items() if tt == "acme")}


def test_a_10k_step_run_is_indexed_incrementally(tmp_path):
    data = tmp_path
    rid, path, rec = new_run(data, "acme")
    body = b"".join(step_line(i, tool="js:step", dur_ms=i % 100) for i in range(10_000))
    with Indexer(data, interval=0.2):
        wait_for(lambda: indexed(data, "acme", rid, stage="running"), what="the run")
        (path / "_steps.jsonl").write_bytes(body)
        _, took = wait_for(lambda: indexed(data, "acme", rid, tool_calls=10_000), timeout=60, what="10k steps")
        print(f"10k steps indexed in {took:.2f} s")
        assert took < 15, took
        read = int(db_rows(data, "SELECT value FROM meta WHERE key='bytes_read'")[0][0])
        assert read == len(body)  # each byte once
        line = step_line(10_000, tool="js:step", dur_ms=3, exit_code=9)
        with open(path / "_steps.jsonl", "ab") as f:
            f.write(line)
        s, _ = wait_for(lambda: indexed(data, "acme", rid, tool_calls=10_001), what="step 10001")
        # only the new line was read, not the 10k before it
        assert int(db_rows(data, "SELECT value FROM meta WHERE key='bytes_read'")[0][0]) == len(body) + len(line)
        assert s["total_ms"] == sum(i % 100 for i in range(10_000)) + 3
        assert s["errors"] == [{"step": 10_000, "tool": "js:step", "exit_code": 9, "error": None}]
        assert [r["step"] for r in s["recent"]] == list(range(9_986, 10_001))


def test_symlinks_are_not_followed(tmp_path):
    data = tmp_path
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes(step_line(0) + step_line(1))
    rid, path, _ = new_run(data, "acme")
    os.symlink(outside, path / "_steps.jsonl")
    victim, vpath, vrec = new_run(data, "beta")
    vrec.step({"step": 0, "tool": "shell", "exit_code": 0, "dur_ms": 1})
    os.symlink(vpath, data / "wb-runs" / "acme" / "run-77")  # acme pointing at beta's run
    with Indexer(data, interval=0.1):
        wait_for(lambda: indexed(data, "beta", victim, tool_calls=1), what="beta's run")
        s, _ = wait_for(lambda: indexed(data, "acme", rid, stage="running"), what="acme's run")
        assert s["tool_calls"] == 0
        assert [r["id"] for r in Q.overview(data, "acme")["runs"]] == [rid]
        with pytest.raises(Exception) as e:
            Q.run_summary(data, "acme", "run-77")
        assert getattr(e.value, "http_status", None) == 404


def test_tasks_from_the_status_and_a_second_indexer_is_refused(tmp_path):
    data = tmp_path
    tasks = [{"id": "fetch", "idx": 0, "title": "Fetch", "state": "DONE", "output": "ok"},
             {"id": "send", "idx": 1, "title": "Send", "state": "FAILED", "output": "no"}]
    rid, path, rec = new_run(data, "acme", prefix="wf", stage="running", tasks=tasks)
    with Indexer(data, interval=0.1):
        s, _ = wait_for(lambda: indexed(data, "acme", rid, stage="running"), what="the TODO run")
        assert [(t["id"], t["state"]) for t in s["tasks"]] == [("fetch", "DONE"), ("send", "FAILED")]
        assert s["kind"] == "todo"
        assert db_rows(data, "SELECT task_id, idx, title, state, output FROM task_events WHERE run_id=? ORDER BY idx",
                       rid) == [("fetch", 0, "Fetch", "DONE", "ok"), ("send", 1, "Send", "FAILED", "no")]
        second = subprocess.run([sys.executable, "-m", "workbooks.telemetry", "--data", str(data)],
                                capture_output=True, timeout=30)
        assert second.returncode == 78
        assert b"telemetry_already_running" in second.stdout


def test_hostile_run_files_do_not_stop_the_indexer(tmp_path):
    data = tmp_path
    rid, path, _ = new_run(data, "acme")
    hostile = [
        b'{"step": 99999999999999999999999999, "tool": "shell", "exit_code": 1e400, "dur_ms": 1e300, "ts": -5}\n',
        b"[1, 2, 3]\n", b'"a string"\n', b"\xff\xfe not utf-8\n", b"[" * 100000 + b"\n",
        b'{"step": "one", "tool": {"x": 1}, "exit_code": true, "error": false, "dur_ms": -7}\n',
        b'{"step": 1, "tool": "js:' + "é\u2028".encode() * 200 + b'", "exit_code": 0, "dur_ms": 1}\n',
        b"x" * (5 << 20) + b"\n",  # one line longer than a read chunk
        step_line(2, tool="shell", dur_ms=4),
    ]
    (path / "_steps.jsonl").write_bytes(b"".join(hostile))
    fifo_run, fpath, _ = new_run(data, "acme")
    os.mkfifo(fpath / "_steps.jsonl")  # a reader that opened it blocking would hang here
    queued, qpath = allocate(data, "acme")
    (qpath / "_request.json").write_text('{"task": "later"}')
    bad_status, bpath = allocate(data, "acme")
    (bpath / "_status.json").write_text('{"status": ' * 50000)
    good, _, grec = new_run(data, "beta")
    grec.step({"step": 0, "tool": "shell", "exit_code": 0, "dur_ms": 1})
    with Indexer(data, interval=0.1) as ix:
        wait_for(lambda: indexed(data, "beta", good, tool_calls=1), what="the good run")
        s, _ = wait_for(lambda: indexed(data, "acme", rid, tool_calls=4), what="the hostile run's steps")
        # numbers out of range are clamped, values of the wrong type are null: never an overflow
        assert [r["step"] for r in s["recent"]] == [2**63 - 1, None, 1, 2]
        assert [r["exit_code"] for r in s["recent"]] == [None, None, 0, 0]
        assert [r["dur_ms"] for r in s["recent"]] == [10**9, 0, 1, 4]
        assert s["total_ms"] == 10**9 + 0 + 1 + 4
        assert s["recent"][2]["tool"].startswith("js:é\u2028") and len(s["recent"][2]["tool"]) == 200
        assert s["error_count"] == 0
        assert indexed(data, "acme", fifo_run)["tool_calls"] == 0
        assert indexed(data, "acme", queued)["stage"] == "queued"
        assert indexed(data, "acme", bad_status)["stage"] is None
        assert ix.proc.poll() is None
        # and it still follows new steps
        grec.step({"step": 1, "tool": "shell", "exit_code": 0, "dur_ms": 1})
        wait_for(lambda: indexed(data, "beta", good, tool_calls=2), what="a later step")


def test_an_index_file_removed_under_the_indexer_is_rebuilt(tmp_path):
    data = tmp_path
    rid, _, rec = new_run(data, "acme")
    rec.step({"step": 0, "tool": "shell", "exit_code": 0, "dur_ms": 1})
    with Indexer(data, interval=0.1):
        wait_for(lambda: indexed(data, "acme", rid, tool_calls=1), what="indexed")
        for f in data.glob("telemetry.db*"):
            if not f.name.endswith(".lock"):
                f.unlink()
        rec.step({"step": 1, "tool": "shell", "exit_code": 0, "dur_ms": 1})
        wait_for(lambda: indexed(data, "acme", rid, tool_calls=2), what="rebuilt with the new step")
