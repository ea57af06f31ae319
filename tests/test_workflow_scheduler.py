"""The workflow scheduler (issue #12, Schedules): cron and SCHEDULED worlds of deployed workbooks fire
at the right moment in the tenant's zone, never overlap themselves, survive restarts without losing
or doubling a fire, and report bad schedules instead of crashing.

Real pieces: the SQLite index (workbooks deployed with Store.put_workbook), the real kernel
(tangle_plan/validate), run folders on disk (`wf-<n>` allocated by workbooks.agent.runs), and for
the process form a real `python -m workbooks.workflow.scheduler` talking over ZeroMQ to a stand-in
`agents` actor (the real actor protocol) with its clock in a WB_SCHEDULER_CLOCK file.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio

from workbooks.agent import runs as R
from workbooks.store.db import Store
from workbooks.workflow import scheduler as S

ROOT = Path(__file__).resolve().parent.parent


def at(y, mo, d, h=0, mi=0, s=0) -> float:
    return float(calendar.timegm((y, mo, d, h, mi, s)))


def org_cron(*worlds: tuple[str, str]) -> str:
    out = []
    for name, cron in worlds:
        out.append(f"* {name} :workflow:\n:PROPERTIES:\n:SCHEDULE: {cron}\n:END:\n"
                   f"** step :component:\n#+begin_src js :out x\nexport function run(i) {{ return i; }}\n#+end_src\n")
    return "".join(out)


def org_at(name: str, ts: str) -> str:
    return (f"* {name} :workflow:\nSCHEDULED: {ts}\n"
            f"** step :component:\n#+begin_src js :out x\nexport function run(i) {{ return i; }}\n#+end_src\n")


def deploy(store: Store, tenant: str, wid: str, source: str) -> None:
    if not store.tenant_exists(tenant):
        store.create_tenant(tenant)
    store.put_workbook(tenant, wid, source=source, fragment="", page="<p>x</p>", headlines=[], meta={},
                       sha=hashlib.sha256(source.encode()).hexdigest())


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


class Runs:
    """The test double of `fire`: starts a real run folder (wf-<n>, `_request.json`, `_status.json`
    running) as the agents process would, and records every call."""

    def __init__(self, data: Path):
        self.data = data
        self.calls: list[tuple[str, str, str, float]] = []

    def __call__(self, tenant: str, workbook: str, world: str, scheduled_for: float) -> str:
        self.calls.append((tenant, workbook, world, scheduled_for))
        rid, path = R.allocate(self.data, tenant, prefix="wf")
        R.write_json(path / R.REQUEST_FILE, {"workbook": workbook, "world": world, "scheduled_for": scheduled_for,
                                             "trigger": "schedule"})
        R.write_json(path / R.STATUS_FILE, {"status": "running"})
        return rid

    def finish_all(self, tenant: str = "acme") -> None:
        root = R.tenant_root(self.data, tenant)
        for name in os.listdir(root):
            R.write_json(root / name / R.STATUS_FILE, {"status": "done"})

    def worlds(self) -> list[tuple[str, float]]:
        return [(c[2], c[3]) for c in self.calls]


@pytest.fixture
def env(tmp_path):
    data = tmp_path / "data"
    store = Store(data)
    store.create_tenant("acme")
    runs = Runs(data)
    yield data, store, runs
    store.close()


def sched(data, runs, clock, policy="once") -> S.Scheduler:
    return S.Scheduler(data, fire=runs, now=clock, policy=policy, scan_s=0.0)


def steps(s: S.Scheduler, clock: Clock, *times: float) -> None:
    async def go():
        for t in times:
            clock.t = t
            await s.step()
    trio.run(go)


def row(data, world: str, tenant: str | None = None) -> dict:
    rows = [r for r in S.schedule_table(data, tenant) if r["world"] == world]
    assert len(rows) == 1, S.schedule_table(data)
    return rows[0]


def test_cron_fires_at_its_minute_once_and_again_the_next_day(env):
    data, store, runs = env
    deploy(store, "acme", "daily", org_cron(("digest", "30 7 * * *")))
    clock = Clock(at(2026, 12, 7, 7, 0))
    s = sched(data, runs, clock)
    steps(s, clock, at(2026, 12, 7, 7, 0), at(2026, 12, 7, 7, 29, 59))
    assert runs.calls == []
    r = row(data, "digest")
    assert r["next_fire"] == "2026-12-07T07:30:00+00:00" and r["next_fire_unix"] == at(2026, 12, 7, 7, 30)
    steps(s, clock, at(2026, 12, 7, 7, 30, 0), at(2026, 12, 7, 7, 30, 1), at(2026, 12, 7, 7, 31))
    assert runs.calls == [("acme", "daily", "digest", at(2026, 12, 7, 7, 30))]
    runs.finish_all()
    steps(s, clock, at(2026, 12, 8, 7, 29, 59))
    assert len(runs.calls) == 1
    steps(s, clock, at(2026, 12, 8, 7, 30, 2))
    assert runs.worlds()[1] == ("digest", at(2026, 12, 8, 7, 30))
    r = row(data, "digest")
    assert r["fires"] == 2 and r["last_lag_s"] == 2.0 and r["last_run"] == "wf-2"
    assert r["next_fire"] == "2026-12-09T07:30:00+00:00" and r["tz"] == "UTC"


def test_the_tenant_time_zone_is_respected_winter_and_summer(env):
    data, store, runs = env
    store.put_var("acme", "TZ", "Europe/Paris", False)
    store.create_tenant("other")  # no TZ: UTC, and never sees acme's worlds
    deploy(store, "acme", "wb", org_cron(("morning", "0 7 * * *")))
    deploy(store, "other", "wb", org_cron(("morning", "0 7 * * *")))
    clock = Clock(at(2026, 12, 7, 5, 0))
    s = sched(data, runs, clock)
    steps(s, clock, at(2026, 12, 7, 5, 0), at(2026, 12, 7, 5, 59, 59))
    assert runs.calls == []
    assert row(data, "morning", "acme")["next_fire"] == "2026-12-07T07:00:00+01:00"
    assert row(data, "morning", "other")["next_fire"] == "2026-12-07T07:00:00+00:00"
    steps(s, clock, at(2026, 12, 7, 6, 0))  # 07:00 in Paris (CET, UTC+1)
    assert runs.calls == [("acme", "wb", "morning", at(2026, 12, 7, 6, 0))]
    steps(s, clock, at(2026, 12, 7, 7, 0))  # 07:00 UTC
    assert runs.calls[1] == ("other", "wb", "morning", at(2026, 12, 7, 7, 0))
    # summer time (CEST, UTC+2): 05:00 UTC; the table shows the tenant's own offset
    runs.finish_all("acme")
    runs.finish_all("other")
    steps(s, clock, at(2027, 7, 1, 4, 59))
    assert sorted(c[0] for c in runs.calls[2:]) == ["acme", "other"]  # both were missed: once each
    steps(s, clock, at(2027, 7, 2, 4, 59, 59))
    assert len(runs.calls) == 4
    runs.finish_all("acme")
    runs.finish_all("other")
    steps(s, clock, at(2027, 7, 2, 5, 0))
    assert runs.calls[4] == ("acme", "wb", "morning", at(2027, 7, 2, 5, 0))
    assert row(data, "morning", "acme")["next_fire"] == "2027-07-03T07:00:00+02:00"
    assert [r["tenant"] for r in S.schedule_table(data, "other")] == ["other"]


def test_scheduled_timestamp_with_a_daily_repeater_and_a_one_shot(env):
    data, store, runs = env
    store.put_var("acme", "TZ", "America/New_York", False)
    deploy(store, "acme", "wb", org_at("daily", "<2026-12-01 Tue 08:30 +1d>") + org_at("once", "<2026-12-09 Wed 12:00>")
           + org_at("past", "<2026-11-01 Sun 10:00>"))
    clock = Clock(at(2026, 12, 7, 12, 0))  # 07:00 in New York (EST, UTC-5)
    s = sched(data, runs, clock)
    steps(s, clock, clock.t)
    assert runs.calls == []
    assert row(data, "daily")["next_fire"] == "2026-12-07T08:30:00-05:00"
    assert row(data, "past")["next_fire"] is None  # a one-shot in the past at first sight never fires
    steps(s, clock, at(2026, 12, 7, 13, 29, 59), at(2026, 12, 7, 13, 30))
    assert runs.worlds() == [("daily", at(2026, 12, 7, 13, 30))]
    runs.finish_all()
    steps(s, clock, at(2026, 12, 8, 13, 30))
    assert runs.worlds()[1] == ("daily", at(2026, 12, 8, 13, 30))
    runs.finish_all()
    steps(s, clock, at(2026, 12, 9, 13, 30))
    assert runs.worlds()[2] == ("daily", at(2026, 12, 9, 13, 30))
    runs.finish_all()
    steps(s, clock, at(2026, 12, 9, 17, 0), at(2026, 12, 9, 17, 1))
    assert runs.worlds()[3:] == [("once", at(2026, 12, 9, 17, 0))]
    assert row(data, "once")["next_fire"] is None and row(data, "once")["fires"] == 1
    runs.finish_all()
    steps(s, clock, at(2026, 12, 31, 0, 0))
    assert runs.worlds()[4:] == [("daily", at(2026, 12, 30, 13, 30))]  # 21 missed days: once
    assert row(data, "daily")["missed"] == 20
    assert "past" not in [w for w, _ in runs.worlds()]


def test_repeater_arithmetic_months_clamp_hours_are_absolute_and_dot_plus_follows_the_last_fire():
    from zoneinfo import ZoneInfo

    paris = ZoneInfo("Europe/Paris")
    m = S.AtSpec.parse({"at": "2026-01-31T09:00", "repeat": "+1m"})
    t = m.next_after(at(2026, 1, 31, 9, 0), paris, None)
    assert S._iso(t, paris) == "2026-02-28T09:00:00+01:00"
    t = m.next_after(t, paris, None)
    assert S._iso(t, paris) == "2026-03-31T09:00:00+02:00"  # from the timestamp, not from Feb 28; DST kept
    h = S.AtSpec.parse({"at": "2026-03-29T01:30", "repeat": "++1h"})
    assert S._iso(h.next_after(at(2026, 3, 29, 0, 30), paris, None), paris) == "2026-03-29T03:30:00+02:00"
    dp = S.AtSpec.parse({"at": "2026-12-01T08:00", "repeat": ".+2d"})
    fired = at(2026, 12, 5, 10, 17)  # fired late: the next one is 2 days after that fire
    assert dp.next_after(fired, paris, fired) == fired + 2 * 86400
    assert S.AtSpec.parse({"at": "2026-12-01", "repeat": "+1w"}).latest_until(at(2026, 12, 20), paris, None) == \
        at(2026, 12, 14, 23, 0)
    for bad in ({"at": "2026-02-30"}, {"at": "2026-12-01T25:00"}, {"at": "2026-12-01", "repeat": "+0d"},
                {"at": "2026-12-01", "repeat": "+1q"}):
        with pytest.raises(S.ScheduleError):
            S.AtSpec.parse(bad)
    huge = S.AtSpec.parse({"at": "2026-12-01", "repeat": "+999999y"})
    assert huge.next_after(at(2026, 12, 2), paris, None) is None


def test_cron_macros_sunday_as_7_and_the_spring_forward_gap():
    from zoneinfo import ZoneInfo

    paris = ZoneInfo("Europe/Paris")
    assert S._iso(S.CronSpec("@DAILY").next_after(at(2026, 12, 7, 12), paris, None), paris) == "2026-12-08T00:00:00+01:00"
    assert S._iso(S.CronSpec("0 9 * * 7").next_after(at(2026, 12, 7), paris, None), paris) == "2026-12-13T09:00:00+01:00"
    # 02:30 does not exist in Paris on 2027-03-28: the fire happens when the clock jumps, once
    gap = S.CronSpec("30 2 * * *")
    first = gap.next_after(at(2027, 3, 27, 12), paris, None)
    assert S._iso(first, paris) == "2027-03-28T03:00:00+02:00"
    assert S._iso(gap.next_after(first, paris, None), paris) == "2027-03-29T02:30:00+02:00"
    assert gap.count_between(at(2027, 3, 27, 12), at(2027, 3, 29, 12), paris, None) == 2


def test_an_overlapping_fire_is_skipped_and_counted(env):
    data, store, runs = env
    deploy(store, "acme", "wb", org_cron(("busy", "* * * * *")))
    clock = Clock(at(2026, 12, 7, 9, 0, 30))
    s = sched(data, runs, clock)
    steps(s, clock, at(2026, 12, 7, 9, 0, 30), at(2026, 12, 7, 9, 1, 0))
    assert len(runs.calls) == 1
    steps(s, clock, at(2026, 12, 7, 9, 2, 0), at(2026, 12, 7, 9, 3, 0), at(2026, 12, 7, 9, 3, 40))
    assert len(runs.calls) == 1
    r = row(data, "busy")
    assert r["skipped"] == 2 and r["last_run"] == "wf-1" and r["next_fire"] == "2026-12-07T09:04:00+00:00"
    assert 'workbooks_schedule_skipped_overlap_total{tenant="acme",workbook="wb",world="busy"} 2' in \
        S.schedule_metrics(data)
    runs.finish_all()
    steps(s, clock, at(2026, 12, 7, 9, 4, 0))
    assert runs.worlds()[1] == ("busy", at(2026, 12, 7, 9, 4))
    assert row(data, "busy")["skipped"] == 2


def test_restart_neither_loses_nor_doubles_a_fire(env):
    data, store, runs = env
    deploy(store, "acme", "wb", org_cron(("hourly", "0 * * * *")))
    clock = Clock(at(2026, 12, 7, 9, 30))
    steps(sched(data, runs, clock), clock, clock.t, at(2026, 12, 7, 10, 0, 1))
    assert len(runs.calls) == 1
    runs.finish_all()
    # a new scheduler (same data): the 10:00 fire is not repeated
    steps(sched(data, runs, clock), clock, at(2026, 12, 7, 10, 0, 5))
    assert len(runs.calls) == 1

    # killed right after the agents process started the run, before the fire was recorded
    class Crash(BaseException):
        pass

    def fire_then_crash(*a):
        runs(*a)
        raise Crash()

    s = S.Scheduler(data, fire=fire_then_crash, now=clock, policy="once", scan_s=0.0)
    with pytest.raises(BaseException):
        steps(s, clock, at(2026, 12, 7, 11, 0, 1))
    assert len(runs.calls) == 2
    steps(sched(data, runs, clock), clock, at(2026, 12, 7, 11, 0, 3))
    assert len(runs.calls) == 2  # found the run it had started: adopted, not fired again
    assert row(data, "hourly")["last_run"] == "wf-2" and row(data, "hourly")["fires"] == 2
    runs.finish_all()

    # killed after recording the intent, before the fire reached the agents process
    def crash_before(*a):
        raise Crash()

    s = S.Scheduler(data, fire=crash_before, now=clock, policy="once", scan_s=0.0)
    with pytest.raises(BaseException):
        steps(s, clock, at(2026, 12, 7, 12, 0, 1))
    assert len(runs.calls) == 2
    steps(sched(data, runs, clock), clock, at(2026, 12, 7, 12, 0, 4))
    assert runs.worlds()[2:] == [("hourly", at(2026, 12, 7, 12, 0))]  # not lost
    assert row(data, "hourly")["last_lag_s"] == 4.0


@pytest.mark.parametrize("policy", ["once", "skip"])
def test_missed_while_down_runs_once_or_is_skipped(env, policy):
    data, store, runs = env
    deploy(store, "acme", "wb", org_cron(("hourly", "0 * * * *")))
    clock = Clock(at(2026, 12, 7, 10, 30))
    steps(sched(data, runs, clock, policy), clock, clock.t)  # seen at 10:30, then down until 13:20
    s = sched(data, runs, clock, policy)
    steps(s, clock, at(2026, 12, 7, 13, 20), at(2026, 12, 7, 13, 21))
    r = row(data, "hourly")
    if policy == "once":
        assert runs.worlds() == [("hourly", at(2026, 12, 7, 13, 0))]  # one fire, for the latest missed
        assert r["missed"] == 2 and r["last_lag_s"] == 20 * 60
    else:
        assert runs.calls == [] and r["missed"] == 3
    runs.finish_all() if runs.calls else None
    steps(s, clock, at(2026, 12, 7, 14, 0))
    assert runs.worlds()[-1] == ("hourly", at(2026, 12, 7, 14, 0))
    assert len(runs.calls) == (2 if policy == "once" else 1)


def test_missed_policy_setting_is_checked():
    assert S.missed_policy_from_env({}) == "once"
    assert S.missed_policy_from_env({"WB_SCHEDULE_MISSED": "SKIP"}) == "skip"
    with pytest.raises(S.ScheduleError, match="WB_SCHEDULE_MISSED"):
        S.missed_policy_from_env({"WB_SCHEDULE_MISSED": "twice"})


def test_bad_schedules_are_reported_and_the_good_ones_still_fire(env):
    data, store, runs = env
    deploy(store, "acme", "bad", org_cron(("minute61", "61 * * * *"), ("feb31", "0 0 31 2 *"), ("good", "0 8 * * *"),
                                          ("good", "0 9 * * *"))
           + org_at("inactive", "[2026-12-07 Mon 08:00 +1d]") + org_at("baddate", "<2026-02-30 Mon>")
           + "* parent :workflow:\n** nested :workflow:\n:PROPERTIES:\n:SCHEDULE: 0 8 * * *\n:END:\n")
    store.create_tenant("zoneless")
    store.put_var("zoneless", "TZ", "Mars/Olympus_Mons", False)
    deploy(store, "zoneless", "wb", org_cron(("z", "0 8 * * *")))
    store.create_tenant("secretzone")
    store.put_var("secretzone", "TZ", "Asia/Kathmandu", True)
    deploy(store, "secretzone", "wb", org_cron(("z", "0 8 * * *")))
    clock = Clock(at(2026, 12, 7, 7, 0))
    s = sched(data, runs, clock)
    steps(s, clock, clock.t, at(2026, 12, 7, 8, 0))
    assert runs.calls == [("acme", "bad", "good", at(2026, 12, 7, 8, 0))]
    errors = {(r["tenant"], r["world"]): r["error"] for r in S.schedule_table(data) if r["error"]}
    assert "minute value 61 out of range 0-59" in errors[("acme", "minute61")]
    assert "never fires" in errors[("acme", "feb31")]
    assert "inactive" in errors[("acme", "inactive")]
    assert "not a valid date" in errors[("acme", "baddate")]
    assert "another world" in errors[("acme", "good")]
    assert "sub-workflow of 'parent'" in errors[("acme", "nested")]
    assert "Mars/Olympus_Mons" in errors[("zoneless", "z")] and "IANA" in errors[("zoneless", "z")]
    assert "secret" in errors[("secretzone", "z")] and "Kathmandu" not in json.dumps(S.schedule_table(data))
    good = [r for r in S.schedule_table(data) if r["world"] == "good" and not r["error"]]
    assert len(good) == 1 and good[0]["cron"] == "0 8 * * *" and good[0]["fires"] == 1


def test_a_deleted_workbook_fires_no_more(env):
    data, store, runs = env
    deploy(store, "acme", "gone", org_cron(("w", "*/5 * * * *")))
    deploy(store, "acme", "kept", org_cron(("k", "*/5 * * * *")))
    clock = Clock(at(2026, 12, 7, 9, 1))
    s = sched(data, runs, clock)
    steps(s, clock, clock.t, at(2026, 12, 7, 9, 5))
    assert sorted(runs.worlds()) == [("k", at(2026, 12, 7, 9, 5)), ("w", at(2026, 12, 7, 9, 5))]
    runs.finish_all()
    store.delete_workbook("acme", "gone")
    steps(s, clock, at(2026, 12, 7, 9, 10), at(2026, 12, 7, 9, 15))
    assert [w for w, _ in runs.worlds()[2:]] == ["k"]  # the second was still running at 9:15: skipped
    assert [r["workbook"] for r in S.schedule_table(data)] == ["kept"]
    # deleted between the index scan and the fire: the sha check right before firing stops it
    runs.finish_all()
    s.scan_s = 3600
    deploy(store, "acme", "late", org_cron(("l", "*/5 * * * *")))
    steps(s, clock, at(2026, 12, 7, 9, 16))
    trio.run(lambda: s.step(force_scan=True))
    store.delete_workbook("acme", "late")
    steps(s, clock, at(2026, 12, 7, 9, 20))
    assert "l" not in [w for w, _ in runs.worlds()]
    # redeployed: starts afresh from now (nothing of its past is fired)
    s.scan_s = 0.0
    deploy(store, "acme", "gone", org_cron(("w", "*/5 * * * *")))
    steps(s, clock, at(2026, 12, 7, 9, 21), at(2026, 12, 7, 9, 24))
    assert [w for w, _ in runs.worlds()].count("w") == 1


def test_a_document_the_kernel_cannot_read_is_an_error_not_a_crash_and_keeps_its_state(env):
    data, store, runs = env
    deploy(store, "acme", "huge", "* w :workflow:\n:PROPERTIES:\n:SCHEDULE: 0 8 * * *\n:END:\n"
           + "** c :component:\n#+begin_src js :out x\nx\n#+end_src\n" * 40000)
    clock = Clock(at(2026, 12, 7, 7, 0))
    steps(sched(data, runs, clock), clock, clock.t, at(2026, 12, 7, 8, 0))
    assert runs.calls == [("acme", "huge", "w", at(2026, 12, 7, 8, 0))]
    runs.finish_all()
    # the same workbook past the kernel's deadline (a loaded machine): reported, nothing fired, state kept
    s = S.Scheduler(data, fire=runs, now=clock, policy="once", scan_s=0.0, kernel_deadline_ms=1)
    steps(s, clock, at(2026, 12, 8, 7, 0), at(2026, 12, 8, 8, 0))
    assert len(runs.calls) == 1
    (r,) = S.schedule_table(data)
    assert r["workbook"] == "huge" and r["world"] is None and "deadline" in r["error"]
    # read in time again: the 8:00 missed meanwhile runs once (it was not forgotten)
    steps(sched(data, runs, clock), clock, at(2026, 12, 8, 8, 5))
    assert runs.calls[1:] == [("acme", "huge", "w", at(2026, 12, 8, 8, 0))]
    assert row(data, "w")["fires"] == 2


def test_a_failing_fire_is_retried_and_a_refused_one_recorded(env):
    from workbooks.errors import BadRequest, Unreachable

    data, store, runs = env
    deploy(store, "acme", "wb", org_cron(("w", "0 8 * * *")))
    answers = [Unreachable("agents down"), BadRequest("no such world")]

    def flaky(*a):
        if answers:
            raise answers.pop(0)
        return runs(*a)

    clock = Clock(at(2026, 12, 7, 7, 0))
    s = S.Scheduler(data, fire=flaky, now=clock, policy="once", scan_s=0.0)
    steps(s, clock, clock.t, at(2026, 12, 7, 8, 0))
    r = row(data, "w")
    assert r["pending"] and "agents down" in r["error"] and runs.calls == []
    s._retry_at.clear()  # the back-off is real time; do not wait for it
    steps(s, clock, at(2026, 12, 7, 8, 0, 2))
    r = row(data, "w")
    assert not r["pending"] and "no such world" in r["error"] and r["errors"] == 2 and runs.calls == []
    steps(s, clock, at(2026, 12, 8, 8, 0))
    assert runs.worlds() == [("w", at(2026, 12, 8, 8, 0))] and row(data, "w")["error"] is None


@pytest.mark.parametrize("bad", ["{not json", '{"version": 1, "worlds": [{"tenant": "acme", "workbook": "wb", '
                                 '"world": "w", "state": {"since": "yesterday", "fires": 1}}]}', '[]'])
def test_a_corrupt_state_file_is_set_aside(env, bad):
    data, store, runs = env
    (data / ".workbooks" / "schedule.json").write_text(bad)
    deploy(store, "acme", "wb", org_cron(("w", "0 8 * * *")))
    clock = Clock(at(2026, 12, 7, 7, 0))
    steps(sched(data, runs, clock), clock, clock.t, at(2026, 12, 7, 8, 0))
    assert len(runs.calls) == 1
    assert list((data / ".workbooks").glob("schedule.json.corrupt-*"))
    assert json.loads((data / ".workbooks" / "schedule.json").read_text())["version"] == 1


# -- the process form -----------------------------------------------------------------------------

AGENTS = textwrap.dedent("""
    import json, sys, trio
    from workbooks.actors import Actor, open_actor_system
    from workbooks.agent import runs as R

    data, endpoint, log = sys.argv[1], sys.argv[2], sys.argv[3]

    class Agents(Actor):
        def on_start_workflow(self, tenant, workbook, world, trigger, scheduled_for):
            rid, path = R.allocate(data, tenant, prefix="wf")
            req = dict(workbook=workbook, world=world, trigger=trigger, scheduled_for=scheduled_for)
            R.write_json(path / R.REQUEST_FILE, req)
            R.write_json(path / R.STATUS_FILE, {"status": "running"})
            with open(log, "a") as f:
                f.write(json.dumps(dict(req, tenant=tenant, id=rid)) + "\\n")
            return {"id": rid, "status": "running"}

    async def main():
        async with open_actor_system() as system:
            system.spawn(Agents(), "agents")
            await system.serve_zmq(endpoint, default="agents")
            print("READY", flush=True)
            await trio.sleep_forever()

    trio.run(main)
""")


class SchedulerProc:
    def __init__(self, data: Path, agents: str, clock_file: Path, **env):
        e = dict(os.environ, WB_SCHEDULER_CLOCK=str(clock_file), WB_SCHEDULER_TICK_S="0.05",
                 WB_SCHEDULER_SCAN_S="0.1", **env)
        self.out = open(data.parent / f"sched-{time.monotonic_ns()}.log", "wb+")
        self.proc = subprocess.Popen([sys.executable, "-m", "workbooks.workflow.scheduler", "--data", str(data),
                                      "--agents", agents], stdout=self.out, stderr=subprocess.STDOUT, env=e, cwd=ROOT)

    def events(self) -> list[dict]:
        out = []
        for line in Path(self.out.name).read_bytes().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def wait_event(self, name: str, n: int = 1, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [e for e in self.events() if e.get("event") == name]
            if len(got) >= n:
                return got
            assert self.proc.poll() is None, Path(self.out.name).read_text()
            time.sleep(0.05)
        raise AssertionError(f"no {n}x {name}: {Path(self.out.name).read_text()[-3000:]}")

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(15)
        finally:
            self.out.close()


@pytest.fixture
def agents(tmp_path):
    data = tmp_path / "data"
    endpoint = f"ipc://{tmp_path}/agents.sock"
    log = tmp_path / "fired.jsonl"
    p = subprocess.Popen([sys.executable, "-c", AGENTS, str(data), endpoint, str(log)], stdout=subprocess.PIPE,
                         text=True, cwd=ROOT)
    try:
        assert p.stdout.readline().strip() == "READY"
        yield data, endpoint, log
    finally:
        p.terminate()
        p.wait(10)


def fired(log: Path) -> list[dict]:
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def set_clock(path: Path, t: float) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(repr(t))
    os.replace(tmp, path)


def test_the_process_fires_on_its_file_clock_survives_kill_9_and_stops_on_sigterm(agents, tmp_path):
    data, endpoint, log = agents
    store = Store(data)
    store.create_tenant("acme")
    store.put_var("acme", "TZ", "Europe/Paris", False)
    deploy(store, "acme", "wb", org_cron(("morning", "0 7 * * *")) + org_cron(("bad", "61 * * * *")))
    clock = tmp_path / "clock"
    set_clock(clock, at(2026, 12, 7, 5, 59))
    p = SchedulerProc(data, endpoint, clock)
    try:
        ready = p.wait_event("scheduler_ready")[0]
        assert ready["role"] == "scheduler" and ready["clock"] == "file"
        p.wait_event("schedule_invalid")
        assert row(data, "morning")["next_fire"] == "2026-12-07T07:00:00+01:00"
        assert "minute value 61" in row(data, "bad")["error"]
        time.sleep(0.3)
        assert fired(log) == []
        set_clock(clock, at(2026, 12, 7, 6, 0, 1))
        ev = p.wait_event("schedule_fired")[0]
        assert ev["run_id"] == "wf-1" and ev["lag_s"] == 1.0
        assert [(f["world"], f["scheduled_for"], f["trigger"]) for f in fired(log)] == \
            [("morning", at(2026, 12, 7, 6, 0), "schedule")]
        assert p.stop(signal.SIGKILL) == -signal.SIGKILL
        # restarted in the same minute: no second fire; down over the next 07:00 (run finished): once
        p = SchedulerProc(data, endpoint, clock)
        p.wait_event("scheduler_ready")
        time.sleep(0.5)
        assert len(fired(log)) == 1
        assert p.stop() == 0
        R.write_json(R.tenant_root(data, "acme") / "wf-1" / R.STATUS_FILE, {"status": "done"})
        set_clock(clock, at(2026, 12, 9, 9, 0))
        p = SchedulerProc(data, endpoint, clock)
        p.wait_event("schedule_fired")
        time.sleep(0.5)
        assert [f["scheduled_for"] for f in fired(log)] == [at(2026, 12, 7, 6, 0), at(2026, 12, 9, 6, 0)]
        assert row(data, "morning")["missed"] == 1
        assert p.stop() == 0
        assert any(e.get("event") == "scheduler_stopping" for e in p.events())
    finally:
        p.stop(signal.SIGKILL)
        store.close()


@pytest.mark.parametrize("setting", [("WB_SCHEDULE_MISSED", "sometimes"), ("WB_SCHEDULER_CLOCK", "/nonexistent/clock"),
                                     ("WB_SCHEDULER_TICK_S", "0")])
def test_the_process_refuses_a_bad_setting_with_a_clear_line(tmp_path, setting):
    out = subprocess.run([sys.executable, "-m", "workbooks.workflow.scheduler", "--data", str(tmp_path / "d")],
                         env=dict(os.environ, **dict([setting])), capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 78
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    assert rec["event"] == "scheduler_bad_config" and setting[0] in rec["error"]
    assert not (tmp_path / "d").exists()  # refused before touching anything


def test_with_the_real_agents_process_a_fire_is_a_workflow_run_and_a_restart_adopts_it(tmp_path):
    """The production `fire` against the agents process's own start_workflow: the run records what
    the scheduler asked (trigger, scheduled_for), so recovery after a crash finds it."""
    data = tmp_path / "data"
    store = Store(data)
    store.create_tenant("acme")
    deploy(store, "acme", "wb", org_cron(("ticker", "*/10 * * * *")))
    agents_out = open(tmp_path / "agents.log", "wb")
    env = dict(os.environ, WB_DATA=str(data))
    agents = subprocess.Popen([sys.executable, "-m", "workbooks.agent.runner", "--data", str(data)],
                              stdout=agents_out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    clock = tmp_path / "clock"
    set_clock(clock, at(2026, 12, 7, 9, 5))
    from workbooks.agent.runner import agents_endpoint

    p = None
    try:
        deadline = time.monotonic() + 30
        while b"agents_ready" not in (tmp_path / "agents.log").read_bytes():
            assert agents.poll() is None and time.monotonic() < deadline, (tmp_path / "agents.log").read_text()
            time.sleep(0.05)
        p = SchedulerProc(data, agents_endpoint(data), clock)
        p.wait_event("scheduler_ready")
        set_clock(clock, at(2026, 12, 7, 9, 10))
        assert p.wait_event("schedule_fired")[0]["run_id"] == "wf-1"
        req = json.loads((R.tenant_root(data, "acme") / "wf-1" / R.REQUEST_FILE).read_text())
        assert (req["workbook"], req["world"], req["trigger"], req["scheduled_for"]) == \
            ("wb", "ticker", "schedule", at(2026, 12, 7, 9, 10))
        deadline = time.monotonic() + 60
        while S.is_running(data, "acme", "wf-1"):
            assert time.monotonic() < deadline, "the workflow run never finished"
            time.sleep(0.1)
        # a crash between the fire and its record: the pending intent finds wf-1 and adopts it
        state_path = data / ".workbooks" / "schedule.json"
        p.stop()
        doc = json.loads(state_path.read_text())
        st = doc["worlds"][0]["state"]
        st.update(pending={"scheduled_for": st["last_fire"], "wall": time.time()}, last_fire=None, fires=0)
        state_path.write_text(json.dumps(doc))
        p = SchedulerProc(data, agents_endpoint(data), clock)
        assert p.wait_event("schedule_fire_recovered")[0]["run_id"] == "wf-1"
        time.sleep(0.3)
        assert sorted(os.listdir(R.tenant_root(data, "acme"))) == ["wf-1"]
        assert row(data, "ticker")["fires"] == 1 and row(data, "ticker")["last_run"] == "wf-1"
        set_clock(clock, at(2026, 12, 7, 9, 20))
        assert p.wait_event("schedule_fired")[0]["run_id"] == "wf-2"
        assert p.stop() == 0
    finally:
        if p is not None:
            p.stop(signal.SIGKILL)
        agents.terminate()
        agents.wait(20)
        agents_out.close()
        store.close()
