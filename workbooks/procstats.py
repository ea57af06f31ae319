"""Request counters of a web plane that add up across its processes (and their restarts).

A plane runs as several processes on one port (SO_REUSEPORT), so a scrape of /metrics lands on
whichever process accepted it. Counting in process memory would make totals jump from scrape to
scrape. Instead each process keeps its counters in a small file it maps into memory,
`<metrics_dir()>/<plane>-<pid>.bin` (a tmpfs; see metrics_dir), and updates them in place (a store into shared memory:
no syscall, no lock per request). Any process of the plane reads every file of the plane, so
/metrics answers the same totals wherever it lands.

Counters never go backwards: the file of a process that is gone (its pid is dead, or reused by a
process started at another time) is folded into `<plane>-retired.json` and then removed, under an
exclusive `flock` that readers take too. The retired file remembers which files it folded, so a
crash between writing it and removing a file cannot count that file twice.

The counting API (both planes; a request path that answers outside `CountResponses`, e.g. a
canned refusal written before the app, calls `record` itself, once per response):

    stats = PlaneStats.open(data_dir, "control")       # once per process
    stats.record(status, body_bytes, seconds)          # once per response
    opened("control")                                  # the process's PlaneStats (None before open):
                                                       # for a layer built without a handle on it
    app = CountResponses(app, stats)                   # or: count every response of an ASGI app
    snap = read_plane(data_dir, "control")             # every process of the plane, + retired
    text = prometheus_lines("wb_control", snap)        # per-process series and plane totals

The layout is fixed (unsigned 64-bit slots, little-endian): a header (magic, version, pid, the
process's start time in clock ticks since boot, creation time), then responses by status 100-599
(one slot each, and one for anything else), body bytes, and a duration histogram (the pool's
buckets, a count and a sum in nanoseconds).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import json
import mmap
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from workbooks.pool.metrics import BUCKETS

MAGIC = int.from_bytes(b"WBPSTAT1", "little")
VERSION = 1
HEADER = 8  # slots: magic, version, pid, start ticks, created ns, 3 spare
STATUS0 = HEADER  # statuses 100..599, then one slot for anything else
N_STATUS = 501
BYTES = STATUS0 + N_STATUS
HIST = BYTES + 1  # len(BUCKETS) + 1 bucket counts (the last is +Inf), then count, then sum (ns)
N_BUCKETS = len(BUCKETS) + 1
H_COUNT = HIST + N_BUCKETS
H_SUM = H_COUNT + 1
SLOTS = H_SUM + 1
SIZE = (SLOTS * 8 + 4095) // 4096 * 4096
PLANES = ("control", "public")
_OPENED: dict = {}  # plane -> this process's PlaneStats (see opened())


def opened(plane: str) -> "PlaneStats | None":
    """The counters this process opened for `plane` (the last, if it opened several), else None:
    how a layer outside the app (e.g. a refusal written before the server parses a request)
    records its responses."""
    return _OPENED.get(plane)


def metrics_dir(data_dir) -> Path:
    """Where the plane processes of `data_dir` keep their counters (0700; the operator's).

    A tmpfs (`$WB_METRICS_ROOT`, default /dev/shm) as `wb-<uid>-<hash of the data dir>-metrics`:
    runtime counters are not data, and on the data disk they would take blocks the full-disk
    contract promises to deploys (a plane starting on a nearly full disk allocated its file
    there). Without a usable tmpfs: `$WB_DATA/run/metrics`."""
    d = _tmpfs_dir(data_dir)
    if d is not None:
        try:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.lstat(d)
            if st.st_uid == os.getuid() and not os.path.islink(d):
                os.chmod(d, 0o700)
                return d
        except OSError:
            pass
    d = Path(data_dir) / "run" / "metrics"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    return d


def _tmpfs_dir(data_dir) -> Path | None:
    import hashlib

    root = os.environ.get("WB_METRICS_ROOT") or ("/dev/shm" if os.path.isdir("/dev/shm") else "")
    if not root:
        return None
    digest = hashlib.sha256(os.path.realpath(str(data_dir)).encode()).hexdigest()[:16]
    return Path(root) / f"wb-{os.getuid()}-{digest}-metrics"


def remove_metrics_dir(data_dir) -> None:
    """Remove the counters of `data_dir`'s planes (both places metrics_dir may have used): called
    by `wbx serve` once every child is gone and before it releases the data dir, so a stopped
    service leaves nothing on /dev/shm. (Counters restart from zero with the next start, as any
    process's do; a scraper sees a counter reset.)"""
    import shutil

    for d in (_tmpfs_dir(data_dir), Path(data_dir) / "run" / "metrics"):
        if d is not None and not os.path.islink(d) and d.is_dir():
            try:
                if d.stat().st_uid == os.getuid():
                    shutil.rmtree(d, ignore_errors=True)
            except OSError:
                pass


def _check_plane(plane: str) -> str:
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}; one of {', '.join(PLANES)}")
    return plane


def start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot), None if no such process: with the pid, what
    tells a live process from a later one that reuses its pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()
    if fields[0] == b"Z":
        return None  # a zombie counts nothing more
    return int(fields[19])


@dataclass
class Counts:
    """One process's (or the retired, or the plane's) counters as plain numbers."""

    statuses: dict = field(default_factory=dict)  # "200" -> n ("other" for codes outside 100-599)
    bytes: int = 0
    buckets: list = field(default_factory=lambda: [0] * N_BUCKETS)
    count: int = 0
    sum_ns: int = 0

    def add(self, other: "Counts") -> None:
        for k, n in other.statuses.items():
            self.statuses[k] = self.statuses.get(k, 0) + n
        self.bytes += other.bytes
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets)]
        self.count += other.count
        self.sum_ns += other.sum_ns

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def to_json(self) -> dict:
        return {"statuses": self.statuses, "bytes": self.bytes, "buckets": self.buckets, "count": self.count,
                "sum_ns": self.sum_ns}

    @classmethod
    def from_json(cls, d: dict) -> "Counts":
        buckets = [int(x) for x in d.get("buckets") or []]
        if len(buckets) != N_BUCKETS:
            buckets = [0] * N_BUCKETS
        return cls({str(k): int(v) for k, v in (d.get("statuses") or {}).items()}, int(d.get("bytes", 0)),
                   buckets, int(d.get("count", 0)), int(d.get("sum_ns", 0)))

    def histogram(self) -> dict:
        """The shape `workbooks.pool.metrics` writes (`_Out.histogram`)."""
        return {"buckets": list(BUCKETS), "counts": list(self.buckets), "sum": self.sum_ns / 1e9, "count": self.count}


def _counts_of(slots) -> Counts:
    statuses = {}
    for i in range(N_STATUS - 1):
        n = slots[STATUS0 + i]
        if n:
            statuses[str(100 + i)] = n
    if slots[STATUS0 + N_STATUS - 1]:
        statuses["other"] = slots[STATUS0 + N_STATUS - 1]
    return Counts(statuses, slots[BYTES], list(slots[HIST:HIST + N_BUCKETS]), slots[H_COUNT], slots[H_SUM])


class PlaneStats:
    """This process's counters for one plane, in its shared file (see the module docstring)."""

    def __init__(self, path: Path | None, mm: mmap.mmap, plane: str, data_dir: Path):
        self.path = path  # None: the file could not be made, the counts stay in this process (see open)
        self.plane = plane
        self.data_dir = data_dir
        self._mm = mm
        self._slots = memoryview(mm).cast("Q")
        self._closed = False

    @classmethod
    def open(cls, data_dir, plane: str) -> "PlaneStats":
        """This process's file for `plane` (created; a file this process already has is reused, so
        two apps of one process share their counts). A left-over file of a dead process with our
        pid is folded into the retired counts first. Its blocks are allocated up front (a write
        into a mapped hole of a full disk would kill the process with SIGBUS); when the file
        cannot be made (full or read-only disk), the counts stay in this process's memory and
        the plane serves on: metrics never stop a plane from starting."""
        _check_plane(plane)
        data_dir = Path(data_dir)
        pid = os.getpid()
        me = start_ticks(pid) or 0
        try:
            d = metrics_dir(data_dir)
            path = d / f"{plane}-{pid}.bin"
            with _locked(d, plane):
                _fold_dead(d, plane)  # our pid's file, if any, is live only when it is our own
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                try:
                    if os.fstat(fd).st_size != SIZE:
                        os.ftruncate(fd, 0)
                        try:
                            os.posix_fallocate(fd, 0, SIZE)
                        except OSError as e:
                            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                                raise
                            os.pwrite(fd, bytes(SIZE), 0)  # no fallocate here: real zeros
                    mm = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                except BaseException:
                    os.close(fd)
                    with contextlib.suppress(OSError):
                        path.unlink()
                    raise
                os.close(fd)
                _init_header(mm, pid, me)
        except (OSError, ValueError):
            path, mm = None, mmap.mmap(-1, SIZE)
            _init_header(mm, pid, me)
        inst = cls(path, mm, plane, data_dir)
        _OPENED[plane] = inst
        return inst

    @property
    def shared(self) -> bool:
        """False when the counts could only be kept in this process (no file)."""
        return self.path is not None

    def record(self, status: int, nbytes: int, seconds: float) -> None:
        """Count one response: its status, its body bytes, its duration (request start to its end)."""
        s = self._slots
        i = status - 100
        s[STATUS0 + (i if 0 <= i < N_STATUS - 1 else N_STATUS - 1)] += 1
        if nbytes:
            s[BYTES] += nbytes
        s[HIST + bisect.bisect_left(BUCKETS, seconds)] += 1
        s[H_COUNT] += 1
        s[H_SUM] += int(seconds * 1e9) if seconds > 0 else 0

    def counts(self) -> Counts:
        return _counts_of(self._slots.tolist())

    def close(self) -> None:
        """A clean exit: fold this process's counts into the retired total and remove its file."""
        if self._closed:
            return
        self._closed = True
        if _OPENED.get(self.plane) is self:
            del _OPENED[self.plane]
        if self.path is not None:
            d = self.path.parent
            try:
                with _locked(d, self.plane):
                    _fold_files(d, self.plane, [self.path])
            except OSError:
                pass
        slots, self._slots = self._slots, memoryview(bytearray(SLOTS * 8)).cast("Q")  # late responses: not counted
        slots.release()
        self._mm.close()


def _init_header(mm: mmap.mmap, pid: int, ticks: int) -> None:
    slots = memoryview(mm).cast("Q")
    try:
        if slots[0] != MAGIC or slots[2] != pid or slots[3] != ticks:
            slots[1:SLOTS] = memoryview(bytes(8 * (SLOTS - 1))).cast("Q")
            slots[1], slots[2], slots[3], slots[4] = VERSION, pid, ticks, time.time_ns()
            slots[0] = MAGIC
    finally:
        slots.release()


class _locked:
    """Exclusive flock of the plane's lock file: folding and reading never interleave."""

    def __init__(self, d: Path, plane: str):
        self.path = d / f"{plane}.lock"

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the lock


def _read_file(path: Path) -> tuple[int, int, Counts] | None:
    """(pid, start ticks, counts) of a counters file; None if it is not one (wrong size or magic)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size != SIZE:
            return None
        # mapped, not read(): each slot is then read by one aligned 8-byte load, never torn
        with mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ) as mm:
            mv = memoryview(mm).cast("Q")
            try:
                slots = mv.tolist()
            finally:
                mv.release()
    finally:
        os.close(fd)
    if slots[0] != MAGIC or slots[1] != VERSION:
        return None
    return slots[2], slots[3], _counts_of(slots)


def _files(d: Path, plane: str) -> list[Path]:
    out = []
    prefix = plane + "-"
    for name in os.listdir(d):
        if name.startswith(prefix) and name.endswith(".bin") and name[len(prefix):-4].isdigit():
            out.append(d / name)
    return out


def _retired_path(d: Path, plane: str) -> Path:
    return d / f"{plane}-retired.json"


def _read_retired(d: Path, plane: str) -> tuple[Counts, list]:
    try:
        raw = json.loads(_retired_path(d, plane).read_text())
        return Counts.from_json(raw.get("counts") or {}), [str(x) for x in raw.get("folded") or []]
    except (OSError, ValueError, TypeError, AttributeError):
        return Counts(), []


FOLDED_KEEP = 4096  # identities remembered (only the last few can still be on disk)


def _fold_files(d: Path, plane: str, paths: list[Path]) -> None:
    """Add the counts of `paths` to the retired total (once each), then remove them. Lock held."""
    if not paths:
        return
    retired, folded = _read_retired(d, plane)
    seen = set(folded)
    changed = False
    for p in paths:
        got = _read_file(p)
        if got is None:
            continue
        pid, ticks, counts = got
        ident = f"{pid}:{ticks}"
        if ident not in seen:
            retired.add(counts)
            folded.append(ident)
            seen.add(ident)
            changed = True
    if changed:
        tmp = _retired_path(d, plane).with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"counts": retired.to_json(), "folded": folded[-FOLDED_KEEP:]}))
        os.chmod(tmp, 0o600)
        os.replace(tmp, _retired_path(d, plane))
    for p in paths:
        try:
            p.unlink()
        except OSError:
            pass


def _fold_dead(d: Path, plane: str) -> list[tuple[int, Counts]]:
    """Fold the files of processes that are gone; return the live ones' (pid, counts). Lock held."""
    live, dead = [], []
    for p in _files(d, plane):
        got = _read_file(p)
        if got is None:
            dead.append(p)  # not ours to read (truncated by a crash at creation): nothing to count
            continue
        pid, ticks, counts = got
        if start_ticks(pid) == ticks and ticks:
            live.append((pid, counts))
        else:
            dead.append(p)
    _fold_files(d, plane, dead)
    return live


@dataclass
class PlaneSnapshot:
    plane: str
    processes: dict  # pid -> Counts (live processes)
    retired: Counts
    total: Counts


def read_plane(data_dir, plane: str) -> PlaneSnapshot:
    """Every live process's counters of `plane`, the retired total and their sum (files of dead
    processes folded on the way). Blocking file I/O: call it from a thread in async code."""
    _check_plane(plane)
    try:
        d = metrics_dir(Path(data_dir))
        with _locked(d, plane):
            live = _fold_dead(d, plane)
            retired, _ = _read_retired(d, plane)
    except OSError:  # no counters directory (a read-only disk): what this process counted itself
        own = opened(plane)
        live, retired = ([(os.getpid(), own.counts())] if own is not None else []), Counts()
    own = opened(plane)
    if own is not None and not own.shared and all(pid != os.getpid() for pid, _ in live):
        live.append((os.getpid(), own.counts()))  # counted in memory only (its file could not be made)
    total = Counts()
    total.add(retired)
    procs = {}
    for pid, c in sorted(live):
        procs[pid] = c
        total.add(c)
    return PlaneSnapshot(plane, procs, retired, total)


def prometheus_lines(prefix: str, snap: PlaneSnapshot) -> str:
    """Per-process series (label pid; the processes that are gone as pid="retired", so the series
    of a family add up to the plane's total and never go backwards) and the plane's totals
    (`<prefix>_plane_*`, the same on every process of the plane)."""
    from workbooks.pool.metrics import _Out

    o = _Out()
    plane = snap.plane
    rows = [(str(pid), c) for pid, c in snap.processes.items()] + [("retired", snap.retired)]
    name = f"{prefix}_requests_total"
    o.family(name, "counter", f"Responses of the {plane} plane by process (pid; retired: processes since gone) and status.")
    for pid, c in rows:
        for code, n in sorted(c.statuses.items()):
            o.sample(name, n, pid=pid, status=code)
    name = f"{prefix}_bytes_sent_total"
    o.family(name, "counter", f"Response body bytes sent by each {plane}-plane process.")
    for pid, c in rows:
        o.sample(name, c.bytes, pid=pid)
    name = f"{prefix}_request_duration_seconds"
    o.family(name, "histogram", f"Time from a request's start to the end of its response, per {plane}-plane process.")
    for pid, c in rows:
        o.histogram(name, c.histogram(), pid=pid)
    t = snap.total
    name = f"{prefix}_plane_requests_total"
    o.family(name, "counter", f"Responses of all {plane}-plane processes, live and gone, by status.")
    for code, n in sorted(t.statuses.items()):
        o.sample(name, n, status=code)
    name = f"{prefix}_plane_bytes_sent_total"
    o.family(name, "counter", f"Response body bytes of all {plane}-plane processes, live and gone.")
    o.sample(name, t.bytes)
    name = f"{prefix}_plane_request_duration_seconds"
    o.family(name, "histogram", f"Request durations of all {plane}-plane processes, live and gone.")
    o.histogram(name, t.histogram())
    name = f"{prefix}_plane_processes"
    o.family(name, "gauge", f"Live {plane}-plane processes counted in the totals.")
    o.sample(name, len(snap.processes))
    return "\n".join(o.lines) + "\n"


class CountResponses:
    """ASGI layer: record every HTTP response (status, body bytes, duration) of the app inside it.

    The duration runs from the request's arrival at this layer to its last body message (or to the
    app returning). An app that raises before starting a response is counted as 500 (what the
    server then answers)."""

    def __init__(self, inner, stats: PlaneStats):
        self.inner = inner
        self.stats = stats

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        t0 = time.perf_counter()
        st = [0, 0, False]  # status, bytes, recorded

        async def counting_send(message):
            t = message["type"]
            if t == "http.response.start":
                st[0] = int(message["status"])
            elif t == "http.response.body":
                st[1] += len(message.get("body", b""))
                if not message.get("more_body", False) and not st[2]:
                    st[2] = True
                    self.stats.record(st[0], st[1], time.perf_counter() - t0)
            await send(message)

        try:
            return await self.inner(scope, receive, counting_send)
        finally:
            if not st[2]:  # no final body: the app raised, or the client went away mid-response
                self.stats.record(st[0] or 500, st[1], time.perf_counter() - t0)
