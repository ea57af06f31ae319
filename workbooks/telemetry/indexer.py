"""The indexer: scan `$WB_DATA/wb-runs/<tenant>/<run>/` every ~0.5 s and bring the index up to date.

Per run it remembers (in the `runs` row, so a restart resumes) the `_status.json` signature
(inode, size, mtime) and how many bytes and lines of `_steps.jsonl` it has read. A pass stats the
two files; a changed status is re-read whole (it is small), new step bytes are read from the
stored offset up to the last complete line, so a 10k-step run is never read again and a torn last
line waits for its newline. A steps file that shrank or was replaced (another inode) is read
again from the start; a run folder that is gone is removed from the index. Every run is updated in
one transaction, so a kill at any point leaves offsets and rows in agreement, and INSERT OR
IGNORE on (tenant, run, line) makes a replay harmless.

Files are opened with O_NOFOLLOW and folders are taken only when they are real directories: a
symlink planted in a run folder never makes the indexer read a file outside it.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from workbooks.agent.runs import ANY_RUN_RE, FINISHED, REQUEST_FILE, RUNS_DIR, STATUS_FILE, STEPS_FILE
from workbooks.telemetry import db as D
from workbooks.telemetry.records import is_error, status_fields, step_row

CHUNK = 4 << 20  # bytes of one run's steps read per pass (a huge backlog is spread over passes)
STATUS_MAX = 8 << 20  # a larger _status.json is not read (ours are a few KB)
SETTLED_EVERY = 10  # passes between two looks at a finished run (its files rarely change again)
MAX_LANES = 64  # distinct histogram lanes; more are counted as "other" (bounded metric labels)
TENANT_RE_CHARS = 63


@dataclass
class RunState:
    status_sig: str | None = None
    steps_ino: int | None = None
    steps_offset: int = 0
    steps_lines: int = 0
    skipping: bool = False
    status: str | None = None
    settled: bool = False  # finished and read to its end: looked at less often
    more: bool = False  # the last read stopped at CHUNK: read on next pass whatever the size says
    seen_size: int = -1  # steps size at the last look (in memory): a torn tail that does not grow is not re-read


class Indexer:
    def __init__(self, data_dir: str | os.PathLike, log=None):
        self.data_dir = Path(data_dir)
        self.base = self.data_dir / RUNS_DIR
        self.conn = D.open_writer(self.data_dir)
        self.db_ino = os.stat(D.db_path(self.data_dir)).st_ino
        self.log = log
        self._warned: set = set()
        self.passes = 0
        self.state: dict[tuple[str, str], RunState] = {}
        for t, r, sig, ino, off, lines, skip, status in self.conn.execute(
                "SELECT tenant, run_id, status_sig, steps_ino, steps_offset, steps_lines, skipping, status FROM runs"):
            self.state[(t, r)] = RunState(sig, ino, off, lines, bool(skip), status=status)
        self.lanes = {row[0] for row in self.conn.execute("SELECT lane FROM lane_hist")}
        self.bytes_read = int(self._meta("bytes_read") or 0)
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('indexer_pid', ?)", (str(os.getpid()),))
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('indexer_started_at', ?)", (repr(time.time()),))

    def db_is_current(self) -> bool:
        """Whether the file this connection writes is still the one at the index's path."""
        try:
            return os.stat(D.db_path(self.data_dir)).st_ino == self.db_ino
        except OSError:
            return False

    def _meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self.conn.close()

    # -- one pass ---------------------------------------------------------------------------
    def scan(self, stop=None) -> dict:
        """Bring every run up to date once; returns counts {runs, changed, removed, steps}.
        `stop()` true ends the pass early (between runs; nothing is removed then)."""
        seen: set[tuple[str, str]] = set()
        listed_tenants: set[str] = set()
        changed = steps = 0
        for tenant in self._tenants():
            names = self._run_names(tenant)
            if names is None:
                continue
            listed_tenants.add(tenant)
            for name in names:
                if stop is not None and stop():
                    return {"runs": len(seen), "changed": changed, "removed": 0, "steps": steps, "stopped": True}
                seen.add((tenant, name))
                st = self.state.get((tenant, name))
                if st is not None and st.settled and (self.passes + hash(name)) % SETTLED_EVERY:
                    continue  # a finished, fully read run is looked at every SETTLED_EVERY passes
                try:
                    c, s = self._index_run(tenant, name)
                except sqlite3.OperationalError:
                    raise  # the index itself (a full disk, a lock): the pass is retried as a whole
                except Exception as e:  # noqa: BLE001 - one bad run folder never stops the others
                    self._warn_once(tenant, name, e)
                    continue
                changed += c
                steps += s
        gone = [k for k in self.state if k not in seen and (k[0] in listed_tenants or not self._tenant_dir_ok(k[0]))]
        for tenant, run in gone:
            self._remove(tenant, run)
        self.passes += 1
        now = time.time()
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('scanned_at', ?)", (repr(now),))
        if changed or gone:
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('changed_at', ?)", (repr(now),))
        return {"runs": len(seen), "changed": changed, "removed": len(gone), "steps": steps}

    def _warn_once(self, tenant: str, run: str, e: Exception) -> None:
        key = (tenant, run, type(e).__name__, str(e)[:200])
        if key in self._warned:
            return
        if len(self._warned) > 10000:
            self._warned.clear()
        self._warned.add(key)
        if self.log:
            self.log.warning("telemetry_run_unreadable", tenant=tenant, run=run,
                             error=f"{type(e).__name__}: {getattr(e, 'strerror', None) or e}"[:300])

    def _tenants(self) -> list[str]:
        try:
            names = os.listdir(self.base)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(n for n in names if self._tenant_dir_ok(n))

    def _tenant_dir_ok(self, tenant: str) -> bool:
        from workbooks.gitstore.tenant import TENANT_RE

        if not TENANT_RE.fullmatch(tenant):
            return False
        try:
            return stat.S_ISDIR(os.lstat(self.base / tenant).st_mode)
        except OSError:
            return False

    def _run_names(self, tenant: str) -> list[str] | None:
        """The tenant's run folders (real directories; d_type from the listing, no stat each)."""
        try:
            with os.scandir(self.base / tenant) as it:
                out = []
                for e in it:
                    try:
                        if ANY_RUN_RE.fullmatch(e.name) and e.is_dir(follow_symlinks=False):
                            out.append(e.name)
                    except OSError:
                        continue
                return out
        except OSError:
            return None

    # -- one run ----------------------------------------------------------------------------
    def _index_run(self, tenant: str, run: str) -> tuple[int, int]:
        folder = self.base / tenant / run
        st = self.state.get((tenant, run))
        new = st is None
        if new:
            st = RunState()
        status_stat = _lstat_file(folder / STATUS_FILE)
        if status_stat is not None:
            sig = f"{status_stat.st_ino}:{status_stat.st_size}:{status_stat.st_mtime_ns}"
        else:  # no status yet: "request" once the run was asked for (queued), else nothing
            sig = "request" if _lstat_file(folder / REQUEST_FILE) is not None else None
        steps_stat = _lstat_file(folder / STEPS_FILE)
        status_changed = new or sig != st.status_sig
        steps_pending = steps_stat is not None and (
            steps_stat.st_ino != st.steps_ino or steps_stat.st_size < st.steps_offset
            or steps_stat.st_size > st.steps_offset and steps_stat.st_size != st.seen_size)
        steps_vanished = steps_stat is None and st.steps_offset > 0
        if not (status_changed or steps_pending or steps_vanished):
            st.settled = _settled(st, steps_stat)
            return 0, 0
        mtimes = [os.lstat(folder).st_mtime]
        for s in (status_stat, steps_stat):
            if s is not None:
                mtimes.append(s.st_mtime)
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if new:
                conn.execute("INSERT OR IGNORE INTO runs (tenant, run_id, kind) VALUES (?, ?, ?)",
                             (tenant, run, "agent" if run.startswith("run-") else "workflow"))
            if status_changed:
                status = self._read_status(tenant, run, folder, sig)
                if status is not _UNCHANGED:
                    st.status = status
            added = 0
            if steps_vanished or (steps_stat is not None and (
                    steps_stat.st_ino != st.steps_ino and st.steps_ino is not None
                    or steps_stat.st_size < st.steps_offset)):
                self._reset_steps(tenant, run, st)
            if steps_stat is not None and steps_stat.st_size > st.steps_offset or (
                    steps_stat is not None and st.steps_ino is None):
                added = self._tail(tenant, run, folder, st)
            conn.execute("UPDATE runs SET updated_at=?, indexed_at=?, status_sig=?, steps_ino=?, steps_offset=?, "
                         "steps_lines=?, skipping=? WHERE tenant=? AND run_id=?",
                         (max(mtimes), time.time(), sig, st.steps_ino, st.steps_offset, st.steps_lines,
                          int(st.skipping), tenant, run))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('bytes_read', ?)", (str(self.bytes_read),))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.state.pop((tenant, run), None)  # reload from the row next pass
            row = conn.execute("SELECT status_sig, steps_ino, steps_offset, steps_lines, skipping, status FROM runs "
                               "WHERE tenant=? AND run_id=?", (tenant, run)).fetchone()
            if row:
                self.state[(tenant, run)] = RunState(row[0], row[1], row[2], row[3], bool(row[4]), status=row[5])
            self.bytes_read = int(self._meta("bytes_read") or 0)
            raise
        self.state[(tenant, run)] = st
        st.status_sig = sig
        st.seen_size = -1 if steps_stat is None or st.more else steps_stat.st_size
        st.settled = _settled(st, steps_stat)
        return 1, added

    def _read_status(self, tenant: str, run: str, folder: Path, sig: str | None):
        """Update the run's status fields and tasks; returns the status (or _UNCHANGED)."""
        doc = None
        if sig == "request":
            doc = {"status": "queued"}  # asked for, not started (as GET /api/run/:id says)
        elif sig is not None:
            raw = _read_file(folder / STATUS_FILE, STATUS_MAX)
            if raw is not None:
                try:
                    doc = json.loads(raw)
                except (ValueError, UnicodeDecodeError, RecursionError):
                    doc = None  # being replaced, or not ours: the fields stay as they were
                    return _UNCHANGED
        f = status_fields(run, doc)
        self.conn.execute("UPDATE runs SET kind=?, status=?, stage=?, started_at=?, tasks=? WHERE tenant=? AND run_id=?",
                          (f["kind"], f["status"], f["stage"], None if f["started_at"] is None else json.dumps(f["started_at"]),
                           json.dumps(f["tasks"], ensure_ascii=False), tenant, run))
        self.conn.execute("DELETE FROM task_events WHERE tenant=? AND run_id=?", (tenant, run))
        now = int(time.time())
        self.conn.executemany(
            "INSERT INTO task_events (run_id, task_id, idx, title, state, output, ts, tenant) VALUES (?,?,?,?,?,?,?,?)",
            [(run, t["id"], t["idx"], t["title"], t["state"], t["output"] or "", now, tenant) for t in f["tasks"]])
        return f["status"]

    def _reset_steps(self, tenant: str, run: str, st: RunState) -> None:
        self.conn.execute("DELETE FROM step_events WHERE tenant=? AND run_id=?", (tenant, run))
        self.conn.execute("UPDATE runs SET tool_calls=0, errors=0, total_ms=0 WHERE tenant=? AND run_id=?", (tenant, run))
        st.steps_ino, st.steps_offset, st.steps_lines, st.skipping = None, 0, 0, False

    def _tail(self, tenant: str, run: str, folder: Path, st: RunState) -> int:
        """Read new complete lines from the stored offset; returns how many steps were added."""
        try:
            fd = os.open(folder / STEPS_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                return 0
            raise
        try:
            fst = os.fstat(fd)
            if not stat.S_ISREG(fst.st_mode):
                return 0
            if st.steps_ino is not None and fst.st_ino != st.steps_ino or fst.st_size < st.steps_offset:
                self._reset_steps(tenant, run, st)
            st.steps_ino = fst.st_ino
            chunk = os.pread(fd, CHUNK, st.steps_offset)
            st.more = len(chunk) == CHUNK
        finally:
            os.close(fd)
        if not chunk:
            return 0
        end = chunk.rfind(b"\n")
        if end < 0:
            if len(chunk) < CHUNK:
                return 0  # a torn (or still being written) last line: wait for its newline
            # one line longer than CHUNK: not a step of ours; skip it up to its newline
            st.steps_offset += len(chunk)
            st.skipping = True
            self.bytes_read += len(chunk)
            return 0
        body = chunk[: end + 1]
        self.bytes_read += len(body)
        lines = body.split(b"\n")[:-1]
        rows = []
        first_line = st.steps_lines
        for i, raw in enumerate(lines):
            if st.skipping:  # the tail of an over-long line
                st.skipping = False
                continue
            if not raw.strip():
                continue
            r = step_row(raw)
            if r is not None:
                r["line"] = first_line + i + 1
                rows.append(r)
        st.steps_offset += len(body)
        st.steps_lines += len(lines)
        if not rows:
            return 0
        cur = self.conn.executemany(
            "INSERT OR IGNORE INTO step_events (run_id, step, tool, exit_code, error, dur_ms, ts, tenant, lane, line) "
            "VALUES (?,?,?,?,?,?,?,?,?,?)",
            [(run, r["step"], r["tool"], r["exit_code"], r["error"], r["dur_ms"], r["ts"], tenant, r["lane"], r["line"])
             for r in rows])
        if cur.rowcount != len(rows):  # a replay over rows already there: recount from the table
            self.conn.execute(
                "UPDATE runs SET tool_calls=(SELECT count(*) FROM step_events s WHERE s.tenant=runs.tenant AND "
                "s.run_id=runs.run_id), errors=(SELECT count(*) FROM step_events s WHERE s.tenant=runs.tenant AND "
                "s.run_id=runs.run_id AND (s.error IS NOT NULL OR coalesce(s.exit_code, 0) != 0)), "
                "total_ms=(SELECT coalesce(sum(dur_ms), 0) FROM step_events s WHERE s.tenant=runs.tenant AND "
                "s.run_id=runs.run_id) WHERE tenant=? AND run_id=?", (tenant, run))
        else:
            self.conn.execute("UPDATE runs SET tool_calls=tool_calls+?, errors=errors+?, total_ms=total_ms+? "
                              "WHERE tenant=? AND run_id=?",
                              (len(rows), sum(1 for r in rows if is_error(r)), sum(r["dur_ms"] or 0 for r in rows),
                               tenant, run))
        self._histogram(rows)
        return len(rows)

    def _histogram(self, rows: list[dict]) -> None:
        per_lane: dict[str, list] = {}
        for r in rows:
            if r["dur_ms"] is None:
                continue
            lane = r["lane"]
            if lane not in self.lanes and len(self.lanes) >= MAX_LANES:
                lane = "other"
            acc = per_lane.setdefault(lane, [0, 0, [0] * len(D.BUCKETS)])
            acc[0] += 1
            acc[1] += r["dur_ms"]
            secs = r["dur_ms"] / 1000.0
            for i, le in enumerate(D.BUCKETS):
                if secs <= le:
                    acc[2][i] += 1
        for lane, (n, total, buckets) in per_lane.items():
            row = self.conn.execute("SELECT count, sum_ms, buckets FROM lane_hist WHERE lane=?", (lane,)).fetchone()
            if row:
                old = json.loads(row[2])
                buckets = [a + b for a, b in zip(old, buckets)]
                n, total = n + row[0], min(total + row[1], (1 << 63) - 1)
            self.conn.execute("INSERT OR REPLACE INTO lane_hist VALUES (?, ?, ?, ?)", (lane, n, total, json.dumps(buckets)))
            self.lanes.add(lane)

    def _remove(self, tenant: str, run: str) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for table in ("runs", "step_events", "task_events"):
                self.conn.execute(f"DELETE FROM {table} WHERE tenant=? AND run_id=?", (tenant, run))  # noqa: S608
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.state.pop((tenant, run), None)


_UNCHANGED = object()


def _settled(st: RunState, steps_stat) -> bool:
    return st.status in FINISHED and not st.more and (steps_stat is None or steps_stat.st_size == st.steps_offset)


def _lstat_file(path: Path) -> os.stat_result | None:
    """The file's stat when it is a regular file (not a symlink), else None."""
    try:
        s = os.lstat(path)
    except OSError:
        return None
    return s if stat.S_ISREG(s.st_mode) else None


def _read_file(path: Path, cap: int) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, cap + 1)
        return None if len(data) > cap else data
    finally:
        os.close(fd)


def run_forever(data_dir: str | os.PathLike, interval: float, stop, log, on_ready=None) -> None:
    """Scan every `interval` seconds until `stop()` is true."""
    idx = Indexer(data_dir, log)
    try:
        if on_ready:  # in service once the index opens: a long first pass (a big backlog) is not a slow start
            on_ready()
        t0 = time.monotonic()
        first = idx.scan(stop)
        log.info("telemetry_indexed", ms=round((time.monotonic() - t0) * 1000, 1), **first)
        while not stop():
            t0 = time.monotonic()
            if not idx.db_is_current():  # the index file was removed (or replaced): build it again
                log.warning("telemetry_index_recreated", path=str(D.db_path(data_dir)))
                idx.close()
                idx = Indexer(data_dir, log)
            try:
                r = idx.scan(stop)
            except sqlite3.OperationalError as e:  # e.g. a full disk: try again next pass
                log.warning("telemetry_scan_failed", error=str(e))
                r = None
            if r and (r["changed"] or r["removed"]):
                log.debug("telemetry_scan", ms=round((time.monotonic() - t0) * 1000, 1), **r)
            left = interval - (time.monotonic() - t0)
            end = time.monotonic() + max(0.0, left)
            while not stop() and time.monotonic() < end:
                time.sleep(min(0.05, max(0.0, end - time.monotonic())))
    finally:
        idx.close()
