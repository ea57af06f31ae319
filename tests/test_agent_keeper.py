"""The keeper: the original's settings and defaults, its cadence (boot grace, catch-up, interval,
NO-WORK back-off), never overlapping itself, the run timeout, crash-safe ticks, a definition file
re-read each tick, its status shape, and the /_activity step tail."""

from __future__ import annotations

import json
import time
from functools import partial

import pytest
import trio

from workbooks.agent.keeper import (
    DEFAULT_BREATHER_MS,
    KeeperConfig,
    activity_tail,
    idle_status,
    keeper_loop,
    last_run_path,
    read_last_run,
)

STATUS_KEYS = {"active", "running", "last_run", "next_run", "interval_ms", "lifecycle", "agent", "run_id", "error"}
AGENT_ORG = "* Lander :agent:\n:PROPERTIES:\n:ID: lander\n:MODEL: small\n:END:\n** System prompt\nKeep the page alive.\n"


def test_from_env_defaults_are_the_originals(tmp_path):
    cfg = KeeperConfig.from_env({})
    assert not cfg.enabled and cfg.definition is None and cfg.problems == ()
    cfg = KeeperConfig.from_env({"WB_KEEPER_DEF": "lander", "WB_DATA": str(tmp_path)})
    assert cfg.enabled and not cfg.is_path
    assert (cfg.interval_ms, cfg.mode, cfg.run_timeout_ms, cfg.continuous, cfg.breather_ms) == (3_600_000, "plan", 900_000, False, 45_000)
    assert (cfg.tenant, cfg.max_steps, cfg.exec, cfg.boot_grace_ms) == ("dev", 60, True, 60_000)
    assert cfg.task() == "MODE: plan\nPerform one keeper run per your loop. Your working directory is this page's git repo."
    cfg = KeeperConfig.from_env({"WB_KEEPER_DEF": "/srv/keeper.org", "WB_KEEPER_MODE": "edit", "WB_KEEPER_INTERVAL_MS": "5000",
                                 "WB_KEEPER_CONTINUOUS": "1", "WB_KEEPER_BREATHER_MS": "700", "WB_TENANT": "site"})
    assert cfg.is_path and cfg.task().startswith("MODE: edit\n") and cfg.tenant == "site"
    assert (cfg.base_delay_ms(), cfg.interval_ms) == (700, 5000)
    assert KeeperConfig.from_env({"WB_KEEPER_DEF": "keeper.org"}).is_path


def test_bad_settings_are_named_and_leave_the_keeper_idle_with_an_error():
    cfg = KeeperConfig.from_env({"WB_KEEPER_DEF": "x", "WB_KEEPER_INTERVAL_MS": "soon", "WB_KEEPER_MODE": "yolo",
                                 "WB_KEEPER_RUN_TIMEOUT_MS": "0", "WB_TENANT": "../etc"})
    assert cfg.enabled  # set, so the loop runs and reports
    text = "\n".join(cfg.problems)
    for name in ("WB_KEEPER_INTERVAL_MS='soon'", "WB_KEEPER_MODE='yolo'", "WB_KEEPER_RUN_TIMEOUT_MS='0'", "WB_TENANT"):
        assert name in text
    calls = []

    async def start_run(**kw):
        calls.append(kw)
        return "run-1"

    status = {"stale": True}
    trio.run(partial(keeper_loop, cfg, start_run, status=status))  # returns: nothing to run
    assert status == {**idle_status(), "error": "invalid_config"} and not calls


def test_unset_keeper_is_idle_with_the_original_shape():
    status: dict = {}
    trio.run(partial(keeper_loop, KeeperConfig.from_env({}), None, status=status))
    assert status == idle_status() and set(status) == STATUS_KEYS
    assert status["active"] is False and status["running"] is False and status["lifecycle"] is None


def test_catch_up_scheduling_and_the_no_work_back_off():
    cfg = KeeperConfig(definition="k", interval_ms=3_600_000)
    now = 1_000_000.0
    assert cfg.first_delay_ms(None, now) == 60_000  # boot grace
    assert cfg.first_delay_ms(int(now) - 600, now) == 3_000_000  # the rest of the interval
    assert cfg.first_delay_ms(int(now) - 7200, now) == 60_000  # overdue: after the grace
    assert [cfg.delay_ms(s) for s in (0, 1, 3)] == [3_600_000] * 3  # the interval is longer than the back-off
    c = cfg.with_(continuous=True)
    assert [c.delay_ms(s) for s in (0, 1, 2, 3, 6, 40)] == [DEFAULT_BREATHER_MS, 60_000, 120_000, 240_000, 1_800_000, 1_800_000]


class FakeRuns:
    """start_run/is_active/result_of/cancel_run over runs that last `duration` seconds."""

    def __init__(self, duration: float = 0.0, result: str = "done", fail: Exception | None = None):
        self.duration, self.result, self.fail = duration, result, fail
        self.calls: list[tuple[float, dict]] = []
        self.cancelled: list[str] = []
        self.ends: dict[str, float] = {}

    async def start_run(self, **kw) -> str:
        if self.fail is not None:
            raise self.fail
        rid = f"run-{len(self.calls) + 1}"
        self.calls.append((trio.current_time(), kw))
        self.ends[rid] = trio.current_time() + self.duration
        return rid

    def is_active(self, rid: str) -> bool:
        return rid not in self.cancelled and trio.current_time() < self.ends[rid]

    async def result_of(self, rid: str) -> str:
        return self.result

    async def cancel_run(self, rid: str) -> None:
        self.cancelled.append(rid)


def run_keeper(cfg, runs: FakeRuns, seconds: float, status: dict, samples: list | None = None, **kw) -> float:
    async def main():
        t0 = trio.current_time()
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as n:
                n.start_soon(lambda: keeper_loop(cfg, runs.start_run, status=status, is_active=runs.is_active,
                                                 result_of=runs.result_of, cancel_run=runs.cancel_run, **kw))
                if samples is not None:
                    while True:
                        samples.append((trio.current_time() - t0, dict(status)))
                        await trio.sleep(0.02)
        return t0

    return trio.run(main)


def _cfg(tmp_path, **kw) -> KeeperConfig:
    base = dict(definition="lander", data_dir=tmp_path, interval_ms=200, boot_grace_ms=0, poll_s=0.01)
    return KeeperConfig(**{**base, **kw})


def test_ticks_start_one_run_per_interval_with_the_task_and_record_the_last_run(tmp_path):
    runs, status = FakeRuns(), {}
    before = int(time.time())
    t0 = run_keeper(_cfg(tmp_path), runs, 1.1, status)
    assert 4 <= len(runs.calls) <= 7, [t - t0 for t, _ in runs.calls]  # ~every 0.2 s from the first at once
    gaps = [b[0] - a[0] for a, b in zip(runs.calls, runs.calls[1:])]
    assert all(g >= 0.19 for g in gaps), gaps
    kw = runs.calls[0][1]
    assert kw == {"agent": "lander", "task": _cfg(tmp_path).task(), "definition": None, "tenant": "dev", "exec": True,
                  "max_steps": 60}
    assert set(status) == STATUS_KEYS and status["active"] is True and status["agent"] == "lander"
    assert status["run_id"] == f"run-{len(runs.calls)}" and status["interval_ms"] == 200 and status["error"] is None
    assert before <= read_last_run(_cfg(tmp_path)) <= int(time.time())
    assert last_run_path(_cfg(tmp_path)) == tmp_path / ".workbooks" / "keeper-last-run"


def test_the_first_tick_waits_for_the_rest_of_the_interval_after_a_restart(tmp_path):
    cfg = _cfg(tmp_path, interval_ms=3000)
    (tmp_path / ".workbooks").mkdir()
    last = int(time.time()) - 1  # ran 1-2 s ago (the file has second resolution): 1-2 s to go
    last_run_path(cfg).write_text(str(last))
    runs, status, samples = FakeRuns(), {}, []
    run_keeper(cfg, runs, 0.9, status, samples=samples)
    assert runs.calls == []
    first = next(s for _, s in samples if s.get("active"))
    assert first["last_run"] == last and 1 <= first["next_run"] - int(time.time()) + 1 <= 3


def test_never_overlaps_itself_a_tick_is_skipped_while_the_run_is_active(tmp_path):
    runs, status, samples = FakeRuns(duration=0.7), {}, []
    t0 = run_keeper(_cfg(tmp_path), runs, 1.3, status, samples=samples)
    starts = [t - t0 for t, _ in runs.calls]
    assert len(starts) == 2, starts  # 0.0 and the first tick after 0.7 (ticks at 0.2, 0.4, 0.6 skipped)
    assert 0.7 <= starts[1] <= 1.0, starts
    during = [s for t, s in samples if 0.1 < t < 0.65]
    assert during and all(s["running"] is True and s["run_id"] == "run-1" for s in during)
    assert any(s["running"] is False for t, s in samples if 0.75 < t < starts[1] - 0.01) or starts[1] < 0.8


def test_a_run_past_the_timeout_is_cancelled_and_the_next_tick_runs(tmp_path):
    runs, status = FakeRuns(duration=60), {}
    t0 = run_keeper(_cfg(tmp_path, interval_ms=500, run_timeout_ms=250), runs, 0.9, status)
    assert runs.cancelled and runs.cancelled[0] == "run-1"
    assert [t - t0 for t, _ in runs.calls][1] >= 0.45  # the next tick came, on time
    assert len(runs.calls) == 2


def test_no_work_results_back_off_the_next_tick(tmp_path):
    runs, status = FakeRuns(result="NO-WORK: the board is empty"), {}
    run_keeper(_cfg(tmp_path, continuous=True, breather_ms=100), runs, 1.0, status)
    assert len(runs.calls) == 1  # next tick at least a minute away
    assert status["next_run"] >= int(time.time()) + 50
    runs, status = FakeRuns(result="NO-WORKING today, did plenty"), {}  # not the marker: a word boundary
    run_keeper(_cfg(tmp_path, continuous=True, breather_ms=100), runs, 1.0, status)
    assert len(runs.calls) >= 4


def test_a_failing_tick_is_logged_and_the_keeper_carries_on(tmp_path):
    from workbooks.errors import NotFound

    runs, status = FakeRuns(fail=NotFound("no agent 'lander' in tenant 'dev'")), {}
    run_keeper(_cfg(tmp_path), runs, 0.7, status)
    assert status["active"] is True and status["running"] is False and status["error"] == "not_found"
    assert status["next_run"] is not None


def test_a_definition_file_is_read_each_tick_and_its_path_never_shown(tmp_path):
    path = tmp_path / "keeper.org"
    cfg = _cfg(tmp_path, definition=str(path), interval_ms=300)
    runs, status, samples = FakeRuns(), {}, []

    async def main():
        with trio.move_on_after(1.0):
            async with trio.open_nursery() as n:
                n.start_soon(lambda: keeper_loop(cfg, runs.start_run, status=status, is_active=runs.is_active))
                await trio.sleep(0.15)
                samples.append(dict(status))  # the file does not exist yet
                path.write_text(AGENT_ORG)

    trio.run(main)
    assert samples[0]["error"] == "not_found" and samples[0]["running"] is False
    assert runs.calls, "the tick after the file appeared ran"
    kw = runs.calls[0][1]
    assert kw["agent"] == "lander" and kw["definition"].system_prompt == "Keep the page alive."
    assert kw["definition"].model == "small"
    assert status["agent"] == "lander" and str(tmp_path) not in json.dumps(status)


def test_activity_tail_is_the_last_steps_slimmed(tmp_path):
    p = tmp_path / "_steps.jsonl"
    rows = [{"step": i, "agent": "lander", "tool": "vfs_read", "args": {"path": f"content/p{i}.org"}, "ts": 1000 + i,
             "output": "x" * 50} for i in range(12)]
    rows[10] = {"step": 10, "agent": "lander", "tool": "shell", "args": {"pipeline": "seq 5 | " + "x" * 300}, "ts": 1010}
    lines = [json.dumps(r) for r in rows[:5]] + ["not json", "[1,2]"] + [json.dumps(r) for r in rows[5:]]
    p.write_text("\n".join(lines) + "\n")
    tail = activity_tail(p)
    assert len(tail) == 8 and tail[0] == {"tool": "vfs_read", "ts": 1004, "agent": "lander", "target": "content/p4.org"}
    assert tail[6]["tool"] == "shell" and tail[6]["target"].startswith("seq 5 | ") and len(tail[6]["target"]) == 120
    assert activity_tail(tmp_path / "missing.jsonl") == []
    assert activity_tail(p, 0) == []
    big = tmp_path / "big.jsonl"
    big.write_text("\n".join(json.dumps({**rows[1], "ts": i}) for i in range(20000)) + "\n")
    assert [s["ts"] for s in activity_tail(big, 3)] == [19997, 19998, 19999]


@pytest.mark.parametrize("raw", ["", "   "])
def test_blank_definition_is_unset(raw):
    assert not KeeperConfig.from_env({"WB_KEEPER_DEF": raw}).enabled
