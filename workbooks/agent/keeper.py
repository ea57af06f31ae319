"""The keeper: one agent run on an interval, on the box (the original's `Workbooks.Keeper`).

Settings (environment, the original's names and defaults):
  WB_KEEPER_DEF            the agent: a deployed agent's slug, or a path to an Org file with an
                           `:agent:` headline (contains "/" or ends in ".org"; re-read every tick).
                           Unset: the keeper is idle.
  WB_KEEPER_INTERVAL_MS    3600000 (1 h) between ticks.
  WB_KEEPER_MODE           plan (critique and backlog only) | edit; goes into the task line.
  WB_KEEPER_RUN_TIMEOUT_MS 900000: a run still active after this is cancelled.
  WB_KEEPER_CONTINUOUS     1: a short breather between ticks instead of the interval ...
  WB_KEEPER_BREATHER_MS    ... of 45000 ms.
  WB_KEEPER_BOOT_GRACE_MS  60000: the wait before the first tick after a start (ours; 0 in tests).
  WB_TENANT                the tenant whose repo the keeper works in (ours defaults to `dev`,
                           the CLI's default tenant; the original's was `local`).
A bad value is not fatal to the process: the keeper stays idle, logs `keeper_config_invalid`
naming the variable, and its status says `error`.

Cadence, as the original: the first tick comes a boot grace (60 s) after start, or later when the
last tick (kept in `$WB_DATA/.workbooks/keeper-last-run`, unix seconds; the original kept it at
the data dir's top, where a tenant could be called that) was less than an interval ago, so
restarts do not reset the clock. Each tick starts one run (`exec`, at most 60 steps, task
"MODE: <mode>\\nPerform one keeper run per your loop. Your working directory is this page's git
repo."). The keeper never overlaps itself: a tick that finds its previous run still active is
skipped. A run whose result begins with NO-WORK backs the next tick off to max(base, 1 min ·
2^(streak-1)), at most 30 min; any other outcome resets the streak.

Status (the dict `keeper_loop` keeps up to date, read at any time; times in unix seconds), the
original's shape plus `agent`, `run_id`, `error`:
  {"active": bool, "running": bool, "last_run": int|null, "next_run": int|null,
   "interval_ms": int|null, "lifecycle": null, "agent": str|null, "run_id": str|null,
   "error": str|null}
`agent` is the agent's slug (never a file path: the status is public), `error` the kind of the
last failure (`not_found`, `bad_request`, ...; the message goes to the log only). Idle (no
WB_KEEPER_DEF): active false, every other field null or false.

Where the original shows it (the public plane, anonymous GETs on the site's host; the routes are
wired elsewhere):
  GET /_changes  -> {"changes": [{"sha", "ts", "author", "msg"}, ...newest first, at most 30],
                     "agent": <keeper status>}
  GET /_activity -> {"agent": <keeper status>,
                     "steps": [{"tool", "ts", "agent", "target"}, ...the last 8 steps],
                     "thought": str|null}
  where a step's `target` is the first of its args' path, cmd, pipeline, query, url (at most 120
  characters; `activity_tail` builds the list from a run's `_steps.jsonl`).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from workbooks.log import get_logger

DEFAULT_INTERVAL_MS = 3_600_000
DEFAULT_RUN_TIMEOUT_MS = 900_000
DEFAULT_BREATHER_MS = 45_000
BOOT_GRACE_MS = 60_000
NO_WORK_BASE_MS = 60_000
NO_WORK_CAP_MS = 1_800_000
MAX_STEPS = 60
MODES = ("plan", "edit")
LAST_RUN_FILE = "keeper-last-run"
ACTIVITY_STEPS = 8
TARGET_KEYS = ("path", "cmd", "pipeline", "query", "url")
MAX_MS = 366 * 24 * 3_600_000  # a year: anything longer is a typo
NO_WORK = re.compile(r"\s*NO-WORK\b", re.I)  # a run's result that says its kind of work had none


def idle_status() -> dict:
    return {"active": False, "running": False, "last_run": None, "next_run": None, "interval_ms": None,
            "lifecycle": None, "agent": None, "run_id": None, "error": None}


@dataclass(frozen=True)
class KeeperConfig:
    definition: str | None  # WB_KEEPER_DEF: a slug or a path
    tenant: str = "dev"
    data_dir: Path = Path("wb-data")
    interval_ms: int = DEFAULT_INTERVAL_MS
    mode: str = "plan"
    run_timeout_ms: int = DEFAULT_RUN_TIMEOUT_MS
    continuous: bool = False
    breather_ms: int = DEFAULT_BREATHER_MS
    boot_grace_ms: int = BOOT_GRACE_MS
    max_steps: int = MAX_STEPS
    exec: bool = True
    poll_s: float = 1.0  # how often an active run is looked at (timeout, end)
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def enabled(self) -> bool:
        """WB_KEEPER_DEF is set: keeper_loop should run (it reports `problems` and stays idle)."""
        return self.definition is not None

    @property
    def is_path(self) -> bool:
        d = self.definition or ""
        return "/" in d or d.endswith(".org")

    def task(self) -> str:
        return (f"MODE: {self.mode}\nPerform one keeper run per your loop. "
                "Your working directory is this page's git repo.")

    def base_delay_ms(self) -> int:
        return self.breather_ms if self.continuous else self.interval_ms

    def delay_ms(self, no_work_streak: int = 0) -> int:
        """Time to the next tick: the base cadence, backed off after consecutive NO-WORK results."""
        base = self.base_delay_ms()
        if no_work_streak <= 0:
            return base
        return max(base, min(NO_WORK_CAP_MS, NO_WORK_BASE_MS << min(no_work_streak - 1, 20)))

    def first_delay_ms(self, last_run: int | None, now: float) -> int:
        """Catch-up: a boot grace after start, or the rest of the interval since the last tick."""
        if last_run is None:
            return self.boot_grace_ms
        elapsed = int((now - last_run) * 1000)
        return max(self.boot_grace_ms, self.interval_ms - elapsed)

    @classmethod
    def from_env(cls, env) -> "KeeperConfig":
        problems: list[str] = []

        def ms(name: str, default: int, minimum: int = 1) -> int:
            raw = (env.get(name) or "").strip()
            if not raw:
                return default
            try:
                v = int(raw)
            except ValueError:
                v = -1
            if not minimum <= v <= MAX_MS:
                problems.append(f"{name}={raw[:40]!r} is not a number of milliseconds ({minimum}..{MAX_MS})")
                return default
            return v

        definition = env.get("WB_KEEPER_DEF")
        definition = definition.strip() if isinstance(definition, str) and definition.strip() else None
        if definition is not None and ("\x00" in definition or len(definition) > 4096):
            problems.append("WB_KEEPER_DEF is not a slug or a path")
        mode = (env.get("WB_KEEPER_MODE") or "plan").strip()
        if mode not in MODES:
            problems.append(f"WB_KEEPER_MODE={mode[:40]!r} is not one of {', '.join(MODES)}")
            mode = "plan"
        tenant = (env.get("WB_TENANT") or "dev").strip()
        from workbooks.gitstore.tenant import InvalidTenant, validate_tenant

        try:
            validate_tenant(tenant)
        except InvalidTenant as e:
            problems.append(f"WB_TENANT: {e.message}")
        continuous = (env.get("WB_KEEPER_CONTINUOUS") or "").strip().lower() in ("1", "true", "yes")
        return cls(
            definition=definition,
            tenant=tenant,
            data_dir=Path(env.get("WB_DATA") or "wb-data"),
            interval_ms=ms("WB_KEEPER_INTERVAL_MS", DEFAULT_INTERVAL_MS),
            mode=mode,
            run_timeout_ms=ms("WB_KEEPER_RUN_TIMEOUT_MS", DEFAULT_RUN_TIMEOUT_MS),
            continuous=continuous,
            breather_ms=ms("WB_KEEPER_BREATHER_MS", DEFAULT_BREATHER_MS),
            boot_grace_ms=ms("WB_KEEPER_BOOT_GRACE_MS", BOOT_GRACE_MS, minimum=0),
            problems=tuple(problems),
        )

    def with_(self, **kw) -> "KeeperConfig":
        return replace(self, **kw)


# -- cadence persistence ----------------------------------------------------------------------------
def last_run_path(cfg: KeeperConfig) -> Path:
    return Path(cfg.data_dir) / ".workbooks" / LAST_RUN_FILE


def read_last_run(cfg: KeeperConfig) -> int | None:
    try:
        with open(last_run_path(cfg), "rb") as fh:
            return int(fh.read(32).strip())
    except (OSError, ValueError):
        return None


def write_last_run(cfg: KeeperConfig, ts: int) -> None:
    try:
        from workbooks.fsutil import atomic_write

        p = last_run_path(cfg)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p, str(ts).encode(), mode=0o600, durable=False)
    except OSError:
        pass  # cadence is best effort: a read-only volume must not stop the keeper


# -- /_activity --------------------------------------------------------------------------------------
def activity_tail(steps_file: str | os.PathLike, n: int = ACTIVITY_STEPS, *, max_bytes: int = 256 << 10) -> list[dict]:
    """The last `n` steps of a `_steps.jsonl`, slimmed to what the page shows: {tool, ts, agent,
    target}. A missing file is no steps; a line that is not a JSON object is skipped."""
    try:
        with open(steps_file, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read(max_bytes)
    except OSError:
        return []
    lines = data.split(b"\n")
    if size > max_bytes:
        lines = lines[1:]  # the first one is cut
    out = []
    for line in lines:
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if not isinstance(ev, dict):
            continue
        args = ev.get("args") if isinstance(ev.get("args"), dict) else {}
        target = next((args[k] for k in TARGET_KEYS if args.get(k)), "")
        out.append({"tool": ev.get("tool"), "ts": ev.get("ts"), "agent": ev.get("agent"),
                    "target": str(target)[:120]})
    return out[-n:] if n > 0 else []


# -- the loop ---------------------------------------------------------------------------------------
async def _maybe_await(value):
    return await value if inspect.isawaitable(value) else value


async def _resolve(cfg: KeeperConfig, oql: Any):
    """(slug, AgentDef or None) for this tick: a path is read and parsed each tick (as the original)."""
    if not cfg.is_path:
        return cfg.definition, None
    from workbooks.agent.definitions import load_agent_file

    if oql is None:
        agent = await trio.to_thread.run_sync(load_agent_file, cfg.definition)
    else:
        agent = await load_agent_file(cfg.definition, oql=oql)
    return agent.slug, agent


async def keeper_loop(cfg: KeeperConfig, start_run: Callable[..., Awaitable[str]], *, status: dict,
                      is_active: Callable[[str], Any] | None = None,
                      result_of: Callable[[str], Any] | None = None,
                      cancel_run: Callable[[str], Any] | None = None,
                      oql: Any = None) -> None:
    """Run the keeper until cancelled; returns at once (status idle) when it is not configured.

    `start_run(agent=slug, task=..., definition=AgentDef|None, tenant=..., exec=True, max_steps=60)`
    starts one run and returns its id (`definition` is set when WB_KEEPER_DEF is a file: the agent
    is not a deployed one). `is_active(run_id)` says whether it still runs (sync or async; without
    it start_run is taken to return when the run is over). Optional: `result_of(run_id)` its result
    text (for the NO-WORK back-off), `cancel_run(run_id)` to stop a run past the run timeout, `oql`
    an async kernel caller for parsing a definition file (else this process's kernel, on a thread).
    `status` is updated in place (see the module docstring)."""
    log = get_logger(component="keeper", tenant=cfg.tenant)
    status.clear()
    status.update(idle_status())
    if cfg.problems:
        status["error"] = "invalid_config"
        for p in cfg.problems:
            log.error("keeper_config_invalid", problem=p)
        return
    if cfg.definition is None:
        log.info("keeper_idle", reason="WB_KEEPER_DEF is not set")
        return

    last = await trio.to_thread.run_sync(read_last_run, cfg)
    first = cfg.first_delay_ms(last, time.time())
    status.update(active=True, interval_ms=cfg.interval_ms, last_run=last,
                  next_run=int(time.time() + first / 1000), agent=None if cfg.is_path else cfg.definition)
    log.info("keeper_active", interval_ms=cfg.interval_ms, mode=cfg.mode, continuous=cfg.continuous,
             first_tick_ms=first, definition="file" if cfg.is_path else cfg.definition)

    run_id: str | None = None
    run_started = 0.0
    streak = 0
    next_at = trio.current_time() + first / 1000

    def schedule(delay_ms: int) -> None:
        nonlocal next_at
        next_at = trio.current_time() + delay_ms / 1000
        status["next_run"] = int(time.time() + delay_ms / 1000)

    async def still_active(rid: str) -> bool:
        if is_active is None:
            return False
        try:
            return bool(await _maybe_await(is_active(rid)))
        except Exception as e:  # a broken probe must not wedge the keeper: treat the run as over
            log.error("keeper_probe_failed", run=rid, error=str(e)[:200])
            return False

    async def watch() -> None:
        """Look at the active run: cancel it past the timeout; when it is over, note the outcome."""
        nonlocal run_id, streak
        if run_id is None:
            return
        if await still_active(run_id):
            if cancel_run is not None and trio.current_time() - run_started > cfg.run_timeout_ms / 1000:
                log.error("keeper_run_killed", run=run_id, timeout_ms=cfg.run_timeout_ms)
                try:
                    await _maybe_await(cancel_run(run_id))
                except Exception as e:
                    log.error("keeper_cancel_failed", run=run_id, error=str(e)[:200])
                status["error"] = "run_timeout"
                run_id = None
                status["running"] = False
                streak = 0
            return
        outcome = "done"
        if result_of is not None:
            try:
                result = await _maybe_await(result_of(run_id))
            except Exception:
                result = None
            if isinstance(result, str) and NO_WORK.match(result):
                outcome = "no_work"
        streak = streak + 1 if outcome == "no_work" else 0
        log.info("keeper_run_over", run=run_id, outcome=outcome, no_work_streak=streak)
        run_id = None
        status["running"] = False
        if streak:  # back off from when it ended
            schedule(cfg.delay_ms(streak))

    while True:
        while trio.current_time() < next_at:
            await trio.sleep(max(0.0, min(cfg.poll_s, next_at - trio.current_time())))
            await watch()
        if run_id is not None and await still_active(run_id):
            log.info("keeper_tick_skipped", run=run_id, reason="the previous run is still active")
            schedule(cfg.delay_ms(streak))
            continue
        await watch()  # a run that ended since the last look: its outcome counts first
        now = int(time.time())
        await trio.to_thread.run_sync(write_last_run, cfg, now)
        status.update(running=True, last_run=now)
        try:
            slug, definition = await _resolve(cfg, oql)
            status["agent"] = slug
            rid = await start_run(agent=slug, task=cfg.task(), definition=definition, tenant=cfg.tenant,
                                  exec=cfg.exec, max_steps=cfg.max_steps)
        except trio.Cancelled:
            raise
        except Exception as e:  # a failed tick is logged and the next one comes on time (crash-safe)
            log.error("keeper_tick_failed", error=getattr(e, "message", None) or str(e)[:300],
                      kind=getattr(e, "code", type(e).__name__))
            status.update(running=False, run_id=None, error=str(getattr(e, "code", "error")))
            schedule(cfg.delay_ms(streak))
            continue
        log.info("keeper_tick", run=rid, agent=slug, mode=cfg.mode)
        run_id, run_started = rid, trio.current_time()
        status.update(run_id=rid, error=None)
        schedule(cfg.delay_ms(streak))
        await watch()
