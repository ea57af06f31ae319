"""The scheduler: fires every deployed workbook's scheduled worlds, on time, once.

Why a process of its own (`python -m workbooks.workflow.scheduler --data D`, a supervised child): it
only decides *when*; runs happen in the agents process (`fire` → its `start_workflow` op), so a
wedged run never delays a fire and a restarted scheduler does not touch running work.

What is scheduled (the kernel's `tangle_plan`, top-level worlds: a sub-workflow runs inside its parent,
so a schedule of its own is reported, not fired): a world's `:SCHEDULE:`
cron (5 fields or an `@daily`-style macro, validated by the kernel's `validate`), else its
`SCHEDULED:` timestamp (active `<...>` only) with its repeater (`+Nu` and `++Nu`: a fixed series
from the timestamp; `.+Nu`: N units after the previous fire; units h d w m y, months clamp to the
month's last day). Times are in the tenant's time zone (tenant variable `TZ`, an IANA name;
default UTC). A world without a repeater fires once.

Rules:
- At most one run of a world at a time: an occurrence that comes due while the world's previous
  run is still queued/running (its `_status.json`) is skipped and counted (`skipped`).
- Durable: the last handled occurrence of every world is in `$WB_DATA/.workbooks/schedule.json`
  (atomic, fsynced). An occurrence is written as `pending` before it is fired and as done after;
  a scheduler killed in between finds the pending one on start-up and first looks for the run it
  started (a `wf-*` folder whose `_request.json`/`_status.json` names the same workbook, world
  and `scheduled_for`) before firing it again: a restart neither loses nor doubles a fire.
- Missed occurrences (the scheduler was down, or the machine slept): `WB_SCHEDULE_MISSED=once`
  (default) fires once, for the latest missed occurrence; `skip` drops occurrences found more than
  MISSED_AFTER_S late. Several missed occurrences never become a burst (`missed` counts them).
- A world first seen (a new deploy, a changed schedule or TZ) starts from that moment: nothing in
  its past is fired.
- A workbook deleted (or a world removed) is dropped from the state: no more fires; the
  workbook's sha is checked again right before each fire.
- Bad input (an invalid cron, an impossible date, an unknown TZ, a document the kernel refuses)
  is an `error` in the status, logged once, never a crash.

Status for `wbx workflow schedule`, the API and Prometheus: `$WB_DATA/wb-runs/schedule-status.json`
(`schedule_table(data_dir)`, `schedule_metrics(data_dir)`).

Clock: `now()` may be injected; the process reads `WB_SCHEDULER_CLOCK` (a file holding unix seconds)
when set, so tests drive the process form too.
"""

from __future__ import annotations

import argparse
import calendar
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog

from workbooks.errors import Unreachable, UsageError, WorkbooksError

log = structlog.get_logger()

MISSED_POLICIES = ("once", "skip")
MISSED_AFTER_S = 60.0  # an occurrence found later than this is "missed" (the loop ticks every second)
STATE_FILE = Path(".workbooks") / "schedule.json"
STATUS_FILE = Path("wb-runs") / "schedule-status.json"
STATE_VERSION = 1
KERNEL_DEADLINE_MS = 10_000
FIRE_TIMEOUT_S = 5.0
FIRE_PARALLEL = 8
RETRY_MAX_S = 60.0
COUNT_CAP = 1_000  # missed occurrences counted at most per catch-up (a `* * * * *` down for a week)
RESCAN_S = 60.0  # a full index scan at least this often, whatever the fingerprint says
KERNEL_RETRY_S = 600.0  # a workbook the kernel could not read (deadline, memory) is tried again after this
NO_STATUS_GRACE_S = 120.0  # a run folder without `_status.json` counts as starting for this long
MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
          "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
REPEAT_RE = re.compile(r"(\+\+|\.\+|\+)([0-9]{1,6})([hdwmy])")
AT_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?:T([0-9]{1,2}):([0-9]{2}))?")
RUN_ID_RE = re.compile(r"wf-[1-9][0-9]{0,11}")
TRANSIENT_CODES = frozenset({"too_many_runs", "overloaded", "timeout", "unreachable", "actor_stopped"})

Fire = Callable[[str, str, str, float], str]


class ScheduleError(UsageError):
    code = "bad_schedule"


# -- settings ------------------------------------------------------------------------------------

def missed_policy_from_env(env=None) -> str:
    """WB_SCHEDULE_MISSED: `once` (default) or `skip`; anything else is a usage error naming both."""
    env = os.environ if env is None else env
    raw = (env.get("WB_SCHEDULE_MISSED") or "once").strip().lower()
    if raw not in MISSED_POLICIES:
        raise ScheduleError(f"WB_SCHEDULE_MISSED={raw[:40]!r} is not a policy", hint="once or skip")
    return raw


def _env_seconds(name: str, default: float) -> float:
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return default
    try:
        v = float(raw)
    except ValueError:
        raise ScheduleError(f"{name}={raw[:40]!r} is not a number of seconds") from None
    if not (0 < v <= 3600):
        raise ScheduleError(f"{name} must be in (0, 3600] seconds")
    return v


class FileClock:
    """`now()` from a file holding unix seconds (WB_SCHEDULER_CLOCK; tests move it by rewriting the file).

    A file that cannot be read at the start is a usage error; later, a torn or missing read keeps the
    last good value (the clock never jumps back to the real time)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.last = self._read()
        if self.last is None:
            raise ScheduleError(f"WB_SCHEDULER_CLOCK: {str(self.path)[:200]} does not hold unix seconds")

    def _read(self) -> float | None:
        try:
            v = float(self.path.read_text().strip())
        except (OSError, ValueError):
            return None
        return v if math.isfinite(v) and 0 <= v < 253402300800 else None

    def __call__(self) -> float:
        v = self._read()
        if v is not None:
            self.last = v
        return self.last


def clock_from_env(env=None) -> Callable[[], float]:
    env = os.environ if env is None else env
    path = (env.get("WB_SCHEDULER_CLOCK") or "").strip()
    return FileClock(path) if path else time.time


# -- schedules -----------------------------------------------------------------------------------

def _local(ts: float, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ts, tz)


def _ts(naive: datetime, tz: ZoneInfo) -> float:
    """Wall time in `tz` to unix seconds (an ambiguous time is its first occurrence; a time in a
    spring-forward gap is read with the offset before the gap, i.e. as the hour after)."""
    return naive.replace(tzinfo=tz, fold=0).timestamp()


@dataclass(frozen=True)
class CronSpec:
    expr: str  # as written in :SCHEDULE:

    def _normal(self) -> str:
        e = self.expr.strip().lower()
        return MACROS.get(e, " ".join(e.split()))

    def check(self, tz: ZoneInfo) -> None:
        from cronsim import CronSim, CronSimError

        try:
            CronSim(self._normal(), datetime(2000, 1, 1, tzinfo=tz))
        except (CronSimError, ValueError) as e:
            raise ScheduleError(f"cron expression `{self.expr.strip()}` never fires: {e}") from None

    def next_after(self, t: float, tz: ZoneInfo, anchor: float | None) -> float | None:
        from cronsim import CronSim

        try:
            return next(CronSim(self._normal(), _local(t, tz))).timestamp()
        except (StopIteration, ValueError, OverflowError):
            return None

    def latest_until(self, t: float, tz: ZoneInfo, anchor: float | None) -> float | None:
        from cronsim import CronSim

        try:
            for d in CronSim(self._normal(), _local(t + 0.001, tz), reverse=True):
                if d.timestamp() <= t:
                    return d.timestamp()
        except (StopIteration, ValueError, OverflowError):
            return None
        return None

    def count_between(self, a: float, b: float, tz: ZoneInfo, anchor: float | None) -> int:
        """Occurrences in (a, b] (at most COUNT_CAP)."""
        from cronsim import CronSim

        n = 0
        try:
            for d in CronSim(self._normal(), _local(a, tz)):
                if d.timestamp() > b or n >= COUNT_CAP:
                    break
                n += 1
        except (ValueError, OverflowError):
            pass
        return n


def _add_months(d: datetime, months: int) -> datetime:
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    if not 1 <= year <= 9999:
        raise OverflowError("year out of range")
    return d.replace(year=year, month=month, day=min(d.day, calendar.monthrange(year, month)[1]))


@dataclass(frozen=True)
class AtSpec:
    """A SCHEDULED timestamp: `start` (wall time) and an optional repeater (`kind`, `n`, `unit`)."""

    at: str  # as the kernel gave it: 2026-12-01 or 2026-12-01T08:30
    repeat: str | None
    start: datetime
    kind: str | None = None  # "+", "++", ".+"
    n: int = 0
    unit: str = ""

    @classmethod
    def parse(cls, sched: dict) -> "AtSpec":
        at = str(sched.get("at") or "")
        m = AT_RE.fullmatch(at)
        if not m:
            raise ScheduleError(f"SCHEDULED timestamp `{at[:40]}` is not a date")
        y, mo, d, hh, mm = m.groups()
        try:
            start = datetime(int(y), int(mo), int(d), int(hh or 0), int(mm or 0))
        except ValueError as e:
            raise ScheduleError(f"SCHEDULED timestamp `{at}` is not a valid date/time: {e}") from None
        rep = sched.get("repeat")
        if not rep:
            return cls(at=at, repeat=None, start=start)
        rm = REPEAT_RE.fullmatch(str(rep))
        if not rm:
            raise ScheduleError(f"SCHEDULED repeater `{str(rep)[:40]}` is not +N, ++N or .+N with a unit of h d w m y")
        n = int(rm.group(2))
        if n < 1:
            raise ScheduleError(f"SCHEDULED repeater `{rep}` repeats every 0 {rm.group(3)}: use at least 1")
        return cls(at=at, repeat=str(rep), start=start, kind=rm.group(1), n=n, unit=rm.group(3))

    def check(self, tz: ZoneInfo) -> None:
        return None

    def _occ(self, base: datetime, k: int, tz: ZoneInfo) -> float:
        """The k-th occurrence of the series starting at wall time `base`."""
        if k == 0 or self.kind is None:
            return _ts(base, tz)
        if self.unit == "h":
            return _ts(base, tz) + k * self.n * 3600
        if self.unit in "dw":
            return _ts(base + timedelta(days=k * self.n * (7 if self.unit == "w" else 1)), tz)
        return _ts(_add_months(base, k * self.n * (12 if self.unit == "y" else 1)), tz)

    def _approx_s(self) -> float:
        return self.n * {"h": 3600, "d": 86400, "w": 604800, "m": 2629746, "y": 31556952}[self.unit]

    def _series(self, tz: ZoneInfo, anchor: float | None) -> tuple[datetime, int]:
        """(start wall time, first k): `.+` after a fire runs from that fire (its first element is one
        interval after it); everything else from the timestamp."""
        if self.kind == ".+" and anchor is not None:
            return _local(anchor, tz).replace(tzinfo=None, microsecond=0), 1
        return self.start, 0

    def _first_k_after(self, t: float, tz: ZoneInfo, base: datetime, k0: int) -> int | None:
        """The smallest k >= k0 whose occurrence is > t (None past year 9999)."""
        try:
            if self.kind is None:
                return k0 if _ts(base, tz) > t else None
            k = max(k0, int((t - _ts(base, tz)) // self._approx_s()) - 2)
            for _ in range(64):
                if self._occ(base, k, tz) > t:
                    # step back while the previous one is still after t (the estimate may overshoot)
                    while k > k0 and self._occ(base, k - 1, tz) > t:
                        k -= 1
                    return k
                k += 1
        except (OverflowError, ValueError):
            return None
        return None

    def next_after(self, t: float, tz: ZoneInfo, anchor: float | None) -> float | None:
        base, k0 = self._series(tz, anchor)
        k = self._first_k_after(t, tz, base, k0)
        if k is None:
            return None
        try:
            return self._occ(base, k, tz)
        except (OverflowError, ValueError):
            return None

    def latest_until(self, t: float, tz: ZoneInfo, anchor: float | None) -> float | None:
        base, k0 = self._series(tz, anchor)
        k = self._first_k_after(t, tz, base, k0)
        try:
            if k is None:  # no occurrence after t: the last one is the only one (no repeater)
                return _ts(base, tz) if self.kind is None and _ts(base, tz) <= t else None
            return self._occ(base, k - 1, tz) if k > k0 else None
        except (OverflowError, ValueError):
            return None

    def count_between(self, a: float, b: float, tz: ZoneInfo, anchor: float | None) -> int:
        base, k0 = self._series(tz, anchor)
        ka = self._first_k_after(a, tz, base, k0)
        if ka is None:
            return 0
        kb = self._first_k_after(b, tz, base, k0)
        if kb is None:
            return 1 if self.kind is None and _ts(base, tz) <= b else 0
        return min(COUNT_CAP, max(0, kb - ka))


# -- what the index holds ----------------------------------------------------------------------

@dataclass
class Entry:
    """One scheduled world of one deployed workbook (or, with world None, a workbook the kernel refused)."""

    tenant: str
    workbook: str
    world: str | None
    sha: str
    tz: str
    spec: CronSpec | AtSpec | None = None
    schedule: dict = field(default_factory=dict)  # {"cron"} or {"at", "repeat"} as shown
    error: str | None = None
    unread: bool = False  # the kernel could not read the workbook (its worlds keep their state meanwhile)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.tenant, self.workbook, self.world or "")

    @property
    def spec_id(self) -> str:
        return json.dumps([self.schedule, self.tz], sort_keys=True)


def _walk_worlds(worlds: Iterable, parent: str | None = None) -> Iterable[tuple[dict, str | None]]:
    """(world, its parent's name or None): top-level worlds first, then the nested ones."""
    top = [w for w in worlds or () if isinstance(w, dict)]
    for w in top:
        yield w, parent
    for w in top:
        yield from _walk_worlds(w.get("workflows"), str(w.get("name") or ""))


def entries_of(tenant: str, workbook: str, sha: str, source: str, tz_name: str, kernel,
               tz_error: str | None = None, deadline_ms: int = KERNEL_DEADLINE_MS) -> list[Entry]:
    """The scheduled worlds of one workbook source (the kernel tangles and validates it)."""
    try:
        plan = kernel.call_json("tangle_plan", source, deadline_ms=deadline_ms)
        diags = kernel.call_json("validate", source, deadline_ms=deadline_ms)
    except WorkbooksError as e:
        return [Entry(tenant, workbook, None, sha, tz_name, unread=True,
                      error=f"the kernel could not read the workbook: {e.message}"[:500])]
    bad_cron = {}
    for d in diags if isinstance(diags, list) else ():
        if isinstance(d, dict) and d.get("level") == "error" and str(d.get("message", "")).startswith("invalid cron expression"):
            bad_cron.setdefault(str(d.get("scope")), str(d.get("message")))
    tz = None
    if tz_error is None:
        try:
            tz = _zone(tz_name)
        except ScheduleError as e:
            tz_error = e.message
    out: list[Entry] = []
    seen: set[str] = set()
    for w, parent in _walk_worlds((plan or {}).get("worlds") if isinstance(plan, dict) else ()):
        sched = w.get("schedule")
        if not isinstance(sched, dict):
            continue
        name = str(w.get("name") or "")
        e = Entry(tenant, workbook, name, sha, tz_name)
        try:
            if "cron" in sched:
                e.schedule = {"cron": str(sched["cron"]).strip()}
                e.spec = CronSpec(str(sched["cron"]))
                if name in bad_cron:
                    raise ScheduleError(bad_cron[name])
            else:
                e.schedule = {"at": sched.get("at"), "repeat": sched.get("repeat")}
                if not sched.get("active", True):
                    raise ScheduleError("an inactive timestamp [...] never fires: write it as <...>")
                e.spec = AtSpec.parse(sched)
            if parent is not None:  # start_workflow runs top-level worlds; a sub-workflow runs inside its parent
                raise ScheduleError(f"a sub-workflow of {parent!r} runs with its parent: its own schedule is not fired")
            if name in seen:
                raise ScheduleError(f"another world of this workbook is named {name!r}: only the first is scheduled")
            if tz_error:
                raise ScheduleError(tz_error)
            e.spec.check(tz)
        except ScheduleError as err:
            e.spec, e.error = None, err.message
        seen.add(name)
        out.append(e)
    return out


def _zone(name: str) -> ZoneInfo:
    if not name or name.upper() == "UTC":
        return ZoneInfo("UTC")
    try:
        if len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(f"tenant variable TZ={name[:64]!r} is not an IANA time zone (e.g. Europe/Paris)") from None


class IndexReader:
    """Deployed workbooks from the SQLite index (read only), tangled again only when their sha changes."""

    def __init__(self, data_dir: Path, kernel=None, deadline_ms: int = KERNEL_DEADLINE_MS):
        self.data_dir = Path(data_dir)
        self._kernel = kernel
        self.deadline_ms = deadline_ms
        self._store = None
        # (tenant, wid) -> (sha, tz, entries, monotonic time to read it again when the kernel could not)
        self._cache: dict[tuple[str, str], tuple[str, str, list[Entry], float]] = {}

    @property
    def kernel(self):
        if self._kernel is None:
            from workbooks.oql import default_kernel

            self._kernel = default_kernel()
        return self._kernel

    def store(self):
        from workbooks.store.db import Store, db_path

        if self._store is None:
            if not db_path(self.data_dir).exists():
                return None
            self._store = Store(self.data_dir)
        return self._store

    def fingerprint(self) -> tuple | None:
        """Changes whenever a workbook or a TZ variable is added, replaced or removed (a scan is
        skipped while it stays the same: an idle scheduler costs one small query per pass)."""
        store = self.store()
        if store is None:
            return None
        c = store.conn()
        return (tuple(c.execute("SELECT count(*), max(updated_at), total(created_at) FROM workbooks").fetchone()),
                tuple(c.execute("SELECT count(*), max(updated_at) FROM vars WHERE key='TZ'").fetchone()),
                tuple(c.execute("SELECT count(*), total(created_at) FROM tenants").fetchone()))

    def scan(self) -> list[Entry]:
        store = self.store()
        if store is None:
            return []
        out: list[Entry] = []
        live: set[tuple[str, str]] = set()
        for t in store.list_tenants():
            tenant = t["name"]
            tz_var = store.get_var(tenant, "TZ")
            tz_name, tz_error = "UTC", None
            if tz_var is not None and tz_var["secret"]:
                tz_name, tz_error = "", "tenant variable TZ is a secret: set it as a plain variable (an IANA name)"
            elif tz_var is not None:
                tz_name = str(tz_var["value"]).strip()
            for wb in store.list_workbooks(tenant):
                k = (tenant, wb["id"])
                live.add(k)
                hit = self._cache.get(k)
                if hit is None or hit[0] != wb["sha"] or hit[1] != tz_name or time.monotonic() >= hit[3]:
                    row = store.workbook_sha(tenant, wb["id"])
                    if row is None:  # deleted since the listing
                        continue
                    sha, source = row
                    entries = entries_of(tenant, wb["id"], sha, source, tz_name, self.kernel, tz_error, self.deadline_ms)
                    again = time.monotonic() + KERNEL_RETRY_S if any(e.unread for e in entries) else math.inf
                    hit = (sha, tz_name, entries, again)
                    self._cache[k] = hit
                    for e in hit[2]:
                        if e.error:
                            log.warning("schedule_invalid", tenant=tenant, workbook=wb["id"], world=e.world, error=e.error)
                out.extend(hit[2])
        for k in list(self._cache):
            if k not in live:
                del self._cache[k]
        return out

    def still_deployed(self, tenant: str, workbook: str, sha: str) -> bool:
        store = self.store()
        row = store.workbook_sha(tenant, workbook) if store is not None else None
        return row is not None and row[0] == sha


# -- runs ----------------------------------------------------------------------------------------

def _run_dir(data_dir: Path, tenant: str, run_id: str) -> Path | None:
    from workbooks.agent.runs import tenant_root

    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
        return None
    try:
        return tenant_root(data_dir, tenant) / run_id
    except WorkbooksError:
        return None


def is_running(data_dir: str | os.PathLike, tenant: str, run_id: str | None) -> bool:
    """Whether a workflow run is still queued or running, from its `_status.json`."""
    from workbooks.agent.runs import ACTIVE, STATUS_FILE, read_json

    if not run_id:
        return False
    d = _run_dir(Path(data_dir), tenant, run_id)
    if d is None:
        return False
    st = read_json(d / STATUS_FILE)
    if st is None:
        try:  # allocated a moment ago, status not written yet
            return time.time() - d.stat().st_mtime < NO_STATUS_GRACE_S
        except OSError:
            return False
    return st.get("status") in ACTIVE


def find_fired_run(data_dir: str | os.PathLike, tenant: str, workbook: str, world: str, scheduled_for: float,
                   since_wall: float) -> str | None:
    """The run a fire started, when its request or status records the same `scheduled_for` (used
    after a crash or a time-out between firing and recording the fire)."""
    from workbooks.agent.runs import REQUEST_FILE, STATUS_FILE, read_json, tenant_root

    try:
        root = tenant_root(data_dir, tenant)
        names = os.listdir(root)
    except (OSError, WorkbooksError):
        return None
    for name in names:
        if not RUN_ID_RE.fullmatch(name):
            continue
        try:
            if os.stat(root / name).st_mtime < since_wall - 60:
                continue
        except OSError:
            continue
        for f in (REQUEST_FILE, STATUS_FILE):
            doc = read_json(root / name / f) or {}
            sf = doc.get("scheduled_for")
            if (isinstance(sf, (int, float)) and abs(float(sf) - scheduled_for) < 1e-3
                    and doc.get("world") == world and doc.get("workbook") in (None, workbook)):
                return name
    return None


def agents_fire(endpoint: str, timeout: float = FIRE_TIMEOUT_S) -> Fire:
    """The production `fire`: the agents process's `start_workflow` op over the actor layer."""
    from workbooks.actors.remote import request_sync

    def fire(tenant: str, workbook: str, world: str, scheduled_for: float) -> str:
        reply = request_sync(endpoint, "start_workflow",
                             {"tenant": tenant, "workbook": workbook, "world": world,
                              "trigger": "schedule", "scheduled_for": scheduled_for},
                             to="agents", timeout=timeout)
        rid = reply.get("id") if isinstance(reply, dict) else reply
        if not isinstance(rid, str) or not rid:
            raise WorkbooksError(f"start_workflow answered without a run id: {str(reply)[:200]}")
        return rid

    return fire


def _transient(e: BaseException) -> bool:
    if isinstance(e, WorkbooksError):
        return isinstance(e, Unreachable) or e.retryable or e.code in TRANSIENT_CODES
    return isinstance(e, OSError) or type(e).__module__.startswith("zmq")


# -- the scheduler -------------------------------------------------------------------------------

def _iso(ts: float | None, tz: ZoneInfo | None) -> str | None:
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, tz or timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):
        return None


def _new_world_state(now: float, spec_id: str) -> dict:
    return {"spec": spec_id, "since": now, "last_fire": None, "anchor": None, "last_run": None, "last_actual": None,
            "last_lag_s": None, "max_lag_s": None, "fires": 0, "skipped": 0, "missed": 0, "errors": 0,
            "last_error": None, "pending": None}


def _checked_state(raw) -> dict:
    """A world's state as read from the file, each field of its expected type (else a ValueError)."""
    if not isinstance(raw, dict):
        raise ValueError("a world's state is not an object")
    st = _new_world_state(0.0, "")
    num = (int, float)
    for k, v in raw.items():
        if k not in st:
            continue
        if k in ("since",) and not isinstance(v, num):
            raise ValueError(f"{k} is not a number")
        if k in ("last_fire", "anchor", "last_actual", "last_lag_s", "max_lag_s") and v is not None and not isinstance(v, num):
            raise ValueError(f"{k} is not a number")
        if k in ("fires", "skipped", "missed", "errors") and not isinstance(v, int):
            raise ValueError(f"{k} is not a count")
        if k == "pending" and v is not None and not (isinstance(v, dict) and isinstance(v.get("scheduled_for"), num)):
            raise ValueError("pending has no scheduled_for")
        st[k] = v
    return st


class Scheduler:
    """The scheduling loop. `step()` is one pass (tests call it with an injected clock); `run()` loops."""

    def __init__(self, data_dir: str | os.PathLike, *, fire: Fire, now: Callable[[], float] | None = None,
                 policy: str | None = None, kernel=None, tick_s: float = 1.0, scan_s: float = 2.0,
                 running: Callable[[str, str], bool] | None = None, kernel_deadline_ms: int = KERNEL_DEADLINE_MS):
        self.data_dir = Path(data_dir)
        self.fire = fire
        self.now = now or time.time
        self.policy = policy or missed_policy_from_env()
        if self.policy not in MISSED_POLICIES:
            raise ScheduleError(f"missed-fire policy {self.policy!r} is not once or skip")
        self.tick_s = tick_s
        self.scan_s = scan_s
        self.index = IndexReader(self.data_dir, kernel, kernel_deadline_ms)
        self.running = running or (lambda tenant, run_id: is_running(self.data_dir, tenant, run_id))
        self.entries: dict[tuple[str, str, str], Entry] = {}
        self.problems: list[Entry] = []  # workbooks the kernel refused, duplicate world names
        self.state = self._load_state()
        self._scanned_at = -math.inf  # monotonic: the last look at the index
        self._full_scan_at = -math.inf  # monotonic: the last full scan
        self._fingerprint: tuple | None = None
        self._next: dict[tuple, tuple] = {}  # key -> ((spec, base, anchor), next occurrence)
        self._retry_at: dict[tuple[str, str, str], float] = {}  # monotonic
        self._retries: dict[tuple[str, str, str], int] = {}
        self._status_written: str | None = None
        self.scans = 0

    # -- durable state --------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    def _load_state(self) -> dict:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION or not isinstance(doc.get("worlds"), list):
                raise ValueError("not a schedule state")
            worlds = {}
            for w in doc["worlds"]:
                worlds[(str(w["tenant"]), str(w["workbook"]), str(w["world"]))] = _checked_state(w["state"])
            return worlds
        except (ValueError, KeyError, TypeError) as e:
            aside = self.state_path.with_name(f"schedule.json.corrupt-{int(time.time())}")
            os.replace(self.state_path, aside)
            log.error("schedule_state_unreadable", path=str(self.state_path), moved_to=str(aside), error=str(e)[:200])
            return {}

    def _state_bytes(self) -> bytes:
        worlds = [{"tenant": k[0], "workbook": k[1], "world": k[2], "state": v} for k, v in sorted(self.state.items())]
        return json.dumps({"version": STATE_VERSION, "worlds": worlds}, ensure_ascii=False, sort_keys=True).encode()

    def _save_state(self) -> None:
        from workbooks.fsutil import atomic_write, makedirs_durable

        makedirs_durable(self.state_path.parent, mode=0o700)
        atomic_write(self.state_path, self._state_bytes(), mode=0o600)

    # -- one pass -------------------------------------------------------------------------------
    async def step(self, *, force_scan: bool = False) -> None:
        import trio

        now = self.now()
        changed = self._status_written is None
        if force_scan or time.monotonic() - self._scanned_at >= self.scan_s:
            entries = await trio.to_thread.run_sync(self._scan_if_changed, force_scan)
            self._scanned_at = time.monotonic()
            if entries is not None:
                self.scans += 1
                changed |= self._reconcile(entries, now)
        due: list[tuple[tuple, Entry, float]] = []
        for key, e in self.entries.items():
            st = self.state.get(key)
            if e.spec is None or st is None:
                continue
            if st.get("pending"):
                if time.monotonic() >= self._retry_at.get(key, -math.inf):
                    due.append((key, e, float(st["pending"]["scheduled_for"])))
                continue
            before = (st["last_fire"], st["skipped"], st["missed"])
            try:
                sf = self._due(e, st, now)
            except Exception as exc:  # noqa: BLE001 - one world's failure never blocks the others
                e.spec, e.error = None, f"cannot compute the next fire: {type(exc).__name__}: {exc}"[:300]
                log.error("schedule_world_failed", tenant=e.tenant, workbook=e.workbook, world=e.world, error=e.error)
                changed = True
                continue
            if sf is not None:
                due.append((key, e, sf))
            changed |= sf is not None or before != (st["last_fire"], st["skipped"], st["missed"])
        if due:
            await self._fire_all(due)
            changed = True
        if changed:
            await trio.to_thread.run_sync(self._save_state)
            await trio.to_thread.run_sync(self._write_status, now)

    def _scan_if_changed(self, force: bool) -> list[Entry] | None:
        fp = self.index.fingerprint()
        if not force and fp is not None and fp == self._fingerprint and time.monotonic() - self._full_scan_at < RESCAN_S:
            return None
        entries = self.index.scan()
        self._fingerprint, self._full_scan_at = fp, time.monotonic()
        return entries

    def _reconcile(self, entries: list[Entry], now: float) -> bool:
        """Take a fresh scan: new or changed worlds start from now, vanished ones are forgotten."""
        changed = False
        fresh: dict[tuple[str, str, str], Entry] = {}
        problems: list[Entry] = []
        for e in entries:
            if e.world is None or e.key in fresh:
                problems.append(e)
            else:
                fresh[e.key] = e
        for key, e in fresh.items():
            st = self.state.get(key)
            if e.spec is None:
                continue
            if st is None:
                self.state[key] = _new_world_state(now, e.spec_id)
                changed = True
            elif st.get("spec") != e.spec_id:
                st.update(spec=e.spec_id, since=now, anchor=None)
                changed = True
        unread = {(e.tenant, e.workbook) for e in problems if e.unread}
        for key in list(self.state):
            if (key[0], key[1]) in unread:  # not read this time (kernel deadline): keep what we know
                continue
            if key not in fresh or fresh[key].spec is None:
                del self.state[key]
                self._next.pop(key, None)
                self._retry_at.pop(key, None)
                self._retries.pop(key, None)
                changed = True
        changed |= [(e.key, e.error) for e in problems] != [(e.key, e.error) for e in self.problems]
        changed |= {k: e.error for k, e in fresh.items()} != {k: e.error for k, e in self.entries.items()}
        self.entries, self.problems = fresh, problems
        return changed

    def _base(self, st: dict) -> float:
        return max(st["since"], st["last_fire"] if st["last_fire"] is not None else -math.inf)

    def _next_fire(self, e: Entry, st: dict, tz: ZoneInfo) -> float | None:
        """The next occurrence after the last handled one (cached until the state moves on)."""
        ck = (e.spec_id, self._base(st), st.get("anchor"))
        hit = self._next.get(e.key)
        if hit is None or hit[0] != ck:
            hit = (ck, e.spec.next_after(ck[1], tz, ck[2]))
            self._next[e.key] = hit
        return hit[1]

    def _due(self, e: Entry, st: dict, now: float) -> float | None:
        """The occurrence to fire now (None when nothing is due); skips and missed ones are counted here."""
        tz = _zone(e.tz)
        base = self._base(st)
        nxt = self._next_fire(e, st, tz)
        if nxt is None or nxt > now:
            return None
        latest = max(e.spec.latest_until(now, tz, st.get("anchor")) or nxt, nxt)
        collapsed = max(0, e.spec.count_between(base, latest, tz, st.get("anchor")) - 1)
        ctx = dict(tenant=e.tenant, workbook=e.workbook, world=e.world)
        if collapsed:
            st["missed"] += collapsed
            log.info("schedule_missed", **ctx, occurrences=collapsed, policy=self.policy)
        if self.policy == "skip" and now - latest > MISSED_AFTER_S:
            st["missed"] += 1
            st.update(last_fire=latest, anchor=now)
            log.info("schedule_missed_skipped", **ctx, scheduled_for=latest, late_s=round(now - latest, 3))
            return None
        if self.running(e.tenant, st.get("last_run")):
            st["skipped"] += 1
            st.update(last_fire=latest, anchor=now)
            log.info("schedule_skipped_overlap", **ctx, scheduled_for=latest, running=st.get("last_run"),
                     skipped=st["skipped"])
            return None
        return latest

    async def _fire_all(self, due: list) -> None:
        import trio

        fresh = set()
        for key, e, sf in due:  # durable intent first: a crash from here on is recovered, not doubled
            st = self.state[key]
            if not st.get("pending"):
                st["pending"] = {"scheduled_for": sf, "wall": time.time()}
                fresh.add(key)
        if fresh:
            await trio.to_thread.run_sync(self._save_state)
        limiter = trio.CapacityLimiter(FIRE_PARALLEL)
        async with trio.open_nursery() as n:
            for key, e, sf in due:
                n.start_soon(self._fire_one, key, e, sf, key not in fresh, limiter)

    async def _fire_one(self, key, e: Entry, sf: float, look_first: bool, limiter) -> None:
        """Fire one occurrence (after a crash or a time-out, first look for the run it may have started)."""
        import trio

        st = self.state[key]
        ctx = dict(tenant=e.tenant, workbook=e.workbook, world=e.world, scheduled_for=sf)
        wall = float(st["pending"].get("wall") or 0)

        def attempt() -> tuple[str, str | None]:
            if look_first:
                found = find_fired_run(self.data_dir, e.tenant, e.workbook, e.world, sf, wall)
                if found:
                    return "adopted", found
            if not self.index.still_deployed(e.tenant, e.workbook, e.sha):
                return "gone", None
            return "fired", self.fire(e.tenant, e.workbook, e.world, sf)

        try:
            how, run_id = await trio.to_thread.run_sync(attempt, limiter=limiter)
        except Exception as exc:  # noqa: BLE001 - a failing fire is recorded, never fatal
            msg = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"[:500]
            st["last_error"] = msg
            st["errors"] += 1
            if _transient(exc):
                n = self._retries[key] = self._retries.get(key, 0) + 1
                self._retry_at[key] = time.monotonic() + min(RETRY_MAX_S, 2.0 ** min(n, 6))
                log.warning("schedule_fire_retry", **ctx, error=msg, attempt=n)
            else:  # refused for good: this occurrence is done
                st.update(pending=None, last_fire=sf, anchor=self.now())
                self._retries.pop(key, None)
                log.error("schedule_fire_failed", **ctx, error=msg)
            return
        self._retries.pop(key, None)
        self._retry_at.pop(key, None)
        if how == "gone":
            st.update(pending=None, last_fire=sf)
            log.info("schedule_workbook_gone", **ctx)
            return
        actual = self.now()
        lag = round(actual - sf, 3)
        st.update(pending=None, last_fire=sf, anchor=actual, last_run=run_id, last_actual=actual, last_lag_s=lag,
                  max_lag_s=lag if st.get("max_lag_s") is None else max(st["max_lag_s"], lag), last_error=None)
        st["fires"] += 1
        log.info("schedule_fired" if how == "fired" else "schedule_fire_recovered", **ctx, run_id=run_id, lag_s=lag)

    # -- status ---------------------------------------------------------------------------------
    def table(self, now: float | None = None) -> list[dict]:
        now = self.now() if now is None else now
        rows = []
        for e in sorted([*self.entries.values(), *self.problems], key=lambda e: (e.key, e.error or "")):
            st = (self.state.get(e.key) or {}) if self.entries.get(e.key) is e else {}
            try:
                tz = _zone(e.tz)
            except ScheduleError:
                tz = None
            nxt = None
            if e.spec is not None and tz is not None and st:
                if st.get("pending"):
                    nxt = float(st["pending"]["scheduled_for"])
                else:
                    nxt = self._next_fire(e, st, tz)
            rows.append({
                "tenant": e.tenant, "workbook": e.workbook, "world": e.world, **(e.schedule or {}),
                "kind": "cron" if "cron" in (e.schedule or {}) else ("timestamp" if e.schedule else None),
                "tz": e.tz, "next_fire": _iso(nxt, tz), "next_fire_unix": nxt,
                "last_fire": _iso(st.get("last_fire"), tz), "last_fire_unix": st.get("last_fire"),
                "last_run": st.get("last_run"), "last_lag_s": st.get("last_lag_s"), "max_lag_s": st.get("max_lag_s"),
                "fires": st.get("fires", 0), "skipped": st.get("skipped", 0), "missed": st.get("missed", 0),
                "errors": st.get("errors", 0), "pending": bool(st.get("pending")),
                "error": e.error or st.get("last_error"),
            })
        return rows

    def _write_status(self, now: float) -> None:
        from workbooks.fsutil import atomic_write, makedirs_durable

        rows = self.table(now)
        body = json.dumps({"policy": self.policy, "worlds": rows}, ensure_ascii=False, sort_keys=True)
        if body == self._status_written:
            return
        path = self.data_dir / STATUS_FILE
        makedirs_durable(path.parent)
        doc = {"policy": self.policy, "worlds": rows, "written_at": time.time(), "clock": now, "pid": os.getpid()}
        atomic_write(path, json.dumps(doc, ensure_ascii=False).encode(), durable=False)
        self._status_written = body

    # -- the loop -------------------------------------------------------------------------------
    async def run(self, task_status=None) -> None:
        """Loop until cancelled: a pass every tick (index rescans every scan_s)."""
        import trio

        await self.step(force_scan=True)
        if task_status is not None:
            task_status.started()
        while True:
            await trio.sleep(self.tick_s)
            try:
                await self.step()
            except Exception as e:  # noqa: BLE001 - a full disk or a locked index delays the schedule, never stops it
                log.error("schedule_step_failed", error=f"{type(e).__name__}: {e}"[:300])


# -- readers for the CLI, the API and Prometheus ------------------------------------------------

def read_status(data_dir: str | os.PathLike) -> dict:
    try:
        doc = json.loads((Path(data_dir) / STATUS_FILE).read_bytes())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def schedule_table(data_dir: str | os.PathLike, tenant: str | None = None) -> list[dict]:
    """Every scheduled world (one tenant's only, when given): tenant, workbook, world, cron or
    at/repeat, tz, next_fire (ISO in the tenant's zone) + next_fire_unix, last_fire, skipped, missed,
    fires, last_lag_s, error. Empty when the scheduler has not written its status yet."""
    rows = read_status(data_dir).get("worlds")
    if not isinstance(rows, list):
        return []
    return [r for r in rows if isinstance(r, dict) and (tenant is None or r.get("tenant") == tenant)]


def _label(v: object) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def schedule_metrics(data_dir: str | os.PathLike) -> str:
    """Prometheus text: per scheduled world its fires, overlap skips, missed occurrences and next fire
    time (the last fire's lag is workbooks.telemetry.prom's `workbooks_scheduler_lag_seconds`, from
    the same file)."""
    rows = schedule_table(data_dir)
    if not rows:
        return ""
    metrics = [
        ("workbooks_schedule_fires_total", "counter", "Scheduled runs started.", "fires"),
        ("workbooks_schedule_skipped_overlap_total", "counter",
         "Occurrences skipped because the previous run of the world was still running.", "skipped"),
        ("workbooks_schedule_missed_total", "counter", "Occurrences missed (scheduler down) and not fired.", "missed"),
        ("workbooks_schedule_next_fire_timestamp_seconds", "gauge", "Unix time of the next fire.", "next_fire_unix"),
    ]
    out = []
    for name, kind, help_, col in metrics:
        out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
        for r in rows:
            v = r.get(col)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                labels = f'tenant="{_label(r.get("tenant"))}",workbook="{_label(r.get("workbook"))}",world="{_label(r.get("world"))}"'
                out.append(f"{name}{{{labels}}} {v}")
    return "\n".join(out) + "\n"


# -- the process ---------------------------------------------------------------------------------

async def main_async(data_dir: Path, fire: Fire, now: Callable[[], float], policy: str,
                     tick_s: float, scan_s: float) -> int:
    import signal

    import trio

    from workbooks.readiness import notify_ready

    sched = Scheduler(data_dir, fire=fire, now=now, policy=policy, tick_s=tick_s, scan_s=scan_s)
    async with trio.open_nursery() as n:
        await n.start(sched.run)
        log.info("scheduler_ready", worlds=len(sched.entries), policy=policy, clock="file" if now is not time.time else "system")
        notify_ready()
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("scheduler_stopping", signal=signal.Signals(signum).name)
                break
        n.cancel_scope.cancel()
    return 0


def main(argv=None) -> int:
    import trio

    from workbooks.log import configure

    p = argparse.ArgumentParser(prog="python -m workbooks.workflow.scheduler",
                                description="Fire deployed workbooks' scheduled worlds (supervised).")
    p.add_argument("--data", default=os.environ.get("WB_DATA") or "wb-data")
    p.add_argument("--agents", default=None, help="the agents process's endpoint (default: its ipc socket in the data dir)")
    ns = p.parse_args(argv)
    configure("scheduler", id=os.environ.get("WB_CHILD_ID") or "scheduler")
    data = Path(ns.data).expanduser().resolve()
    try:
        policy = missed_policy_from_env()
        now = clock_from_env()
        tick_s = _env_seconds("WB_SCHEDULER_TICK_S", 1.0)
        scan_s = _env_seconds("WB_SCHEDULER_SCAN_S", 2.0)
    except ScheduleError as e:
        log.error("scheduler_bad_config", error=e.message, hint=e.hint)
        return 78
    if ns.agents:
        endpoint = ns.agents
    else:
        from workbooks.agent.runner import agents_endpoint

        endpoint = agents_endpoint(data)
    try:
        return trio.run(main_async, data, agents_fire(endpoint), now, policy, tick_s, scan_s)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
