"""The `agents` process: every agent run is a trio task here, never inside a web process.

Why a process of its own: a run drives a model for minutes, runs wasm tools and commits to git; a
crashing run or a wedged tool must not take the control plane with it, and the supervisor restarts
this process alone. It is a client of the OQL pool like the web planes (the `wb` tool's verbs go
through the pool).

Reached over the actor layer (ipc `agents.sock` next to the pool's sockets), actor `agents`:
    start  {tenant, task, system?, model?, max_steps?, exec?, agent?}  -> {id, status: "running"}
    cancel {tenant, id}                                                -> {id, status}
    status {}                                                          -> {active, per_tenant, keeper}
Live frames go out on a PUB socket (`agents-events.sock`), topic `<tenant>/<run-id>/`, JSON bodies
`{type: step|delta|done|error, ...}`; the control plane's stream route subscribes and also replays
the run folder, so a late subscriber misses nothing but token deltas.

State is on disk (workbooks.agent.runs): a runner killed with kill -9 leaves `_status.json` at
"running"; the next runner marks such runs `interrupted` (steps kept, ledger sealed) before it
serves, then takes new runs at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import trio
import zmq

from workbooks.actors import Actor, open_actor_system
from workbooks.agent import runs as R
from workbooks.agent.secrets import Secrets
from workbooks.errors import BadRequest, Conflict, NotFound, WorkbooksError

log = structlog.get_logger()

DEFAULT_STEPS_API = 40  # POST /api/run
DEFAULT_STEPS_AGENT = 12  # a defined agent's run (the loop's own default)
MAX_STEPS_CAP = 200
MAX_TASK_BYTES = 64 * 1024


class TooManyRuns(WorkbooksError):
    code = "too_many_runs"
    http_status = 429
    retryable = True
    hint = "wait for a run to finish (GET /api/run/:id), or raise WB_AGENT_MAX_RUNS_PER_TENANT"


class ModelNotConfigured(WorkbooksError):
    code = "llm_not_configured"
    http_status = 503
    hint = ("set WB_LLM_BASE_URL (an OpenAI-compatible or Anthropic endpoint) and WB_LLM_API_KEY, "
            "or the tenant secret LLM_API_KEY; WB_LLM_PROVIDER=openai|anthropic, WB_LLM_MODEL")


def agents_endpoint(data_dir) -> str:
    from workbooks.pool.endpoints import run_dir

    return f"ipc://{run_dir(data_dir) / 'agents.sock'}"


def events_endpoint(data_dir) -> str:
    from workbooks.pool.endpoints import run_dir

    return f"ipc://{run_dir(data_dir) / 'agents-events.sock'}"


def topic(tenant: str, run_id: str) -> bytes:
    return f"{tenant}/{run_id}/".encode()


def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, "") or default))
    except ValueError:
        return default


@dataclass
class Active:
    tenant: str
    run_id: str
    scope: trio.CancelScope
    started: float
    agent: str | None = None
    cancel_requested: bool = False
    interrupted: bool = False  # the runner is stopping (SIGTERM): recorded as interrupted, not cancelled


@dataclass
class RunnerState:
    data_dir: Path
    pool_endpoint: str | None
    boot: str = field(default_factory=lambda: f"{os.getpid()}-{time.time_ns()}")
    active: dict[tuple[str, str], Active] = field(default_factory=dict)
    max_per_tenant: int = field(default_factory=lambda: _env_int("WB_AGENT_MAX_RUNS_PER_TENANT", 8))
    max_total: int = field(default_factory=lambda: _env_int("WB_AGENT_MAX_RUNS", 64))
    keeper: dict = field(default_factory=dict)
    finishing: set = field(default_factory=set)  # runs whose records are being written and sealed
    workflows: dict = field(default_factory=dict)  # (tenant, wf-id) -> CancelScope of a workflow/TODO run
    started_total: int = 0
    finished: dict[str, int] = field(default_factory=dict)


# -- what a run needs ----------------------------------------------------------------------------
class Tenancy:
    """The index (SQLite) as the runner needs it: a tenant's variables and secrets."""

    def __init__(self, data_dir: Path):
        from workbooks.store.db import Store

        self.store = Store(data_dir)

    def tenant_exists(self, tenant: str) -> bool:
        return self.store.tenant_exists(tenant)

    def secrets(self, tenant: str) -> dict[str, str]:
        out = {}
        for row in self.store.list_vars(tenant):
            if row.get("secret"):
                v = self.store.secret_value(tenant, row["key"])
                if v is not None:
                    out[row["key"]] = v
        return out

    def set_plain_var(self, tenant: str, key: str, value: str) -> None:
        """`wb var set` in an exec run: plain variables only; a secret is never overwritten by a run."""
        row = self.store.get_var(tenant, key)
        if row is not None and row.get("secret"):
            raise Conflict(f"{key} is a secret; an agent run cannot change it")
        self.store.put_var(tenant, key, value, False)

    def var(self, tenant: str, key: str) -> tuple[str, bool] | None:
        row = self.store.get_var(tenant, key)
        if row is None:
            return None
        if row.get("secret"):
            return self.store.secret_value(tenant, key) or "", True
        return str(row.get("value") or ""), False


def normalize_request(args: dict) -> dict:
    """The run request as stored in _request.json (validated: this is the runner's own contract)."""
    task = args.get("task")
    if not isinstance(task, str) or not task.strip():
        raise BadRequest("task must be a non-empty string", hint='POST /api/run {"task": "…"}')
    if len(task.encode()) > MAX_TASK_BYTES:
        raise BadRequest(f"task is larger than {MAX_TASK_BYTES} bytes")
    system = args.get("system")
    if system is not None and not isinstance(system, str):
        raise BadRequest("system must be a string")
    model = args.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip() or len(model) > 200):
        raise BadRequest("model must be a non-empty string of at most 200 chars")
    max_steps = args.get("max_steps", DEFAULT_STEPS_API)
    if max_steps is None:
        max_steps = DEFAULT_STEPS_API
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or not 1 <= max_steps <= MAX_STEPS_CAP:
        raise BadRequest(f"max_steps must be an integer from 1 to {MAX_STEPS_CAP}")
    exec_ = args.get("exec", False)
    if not isinstance(exec_, bool):
        raise BadRequest("exec must be true or false")
    agent = args.get("agent")
    if agent is not None and not isinstance(agent, str):
        raise BadRequest("agent must be a string")
    return {"task": task, "system": system, "model": model, "max_steps": max_steps, "exec": exec_,
            "agent": agent, "requested_at": time.time()}


DEFAULT_SYSTEM = (
    "You are a careful assistant working in a sandboxed directory of Org-mode workbooks. "
    "Use the tools to inspect and change files; when finished, call `done` with your result."
)


class AgentRunner(Actor):
    """The actor `agents` (see the module docstring for its ops)."""

    concurrent_ops = frozenset({"status", "cancel", "start", "start_agent", "start_workflow", "start_todo"})

    def __init__(self, state: RunnerState, nursery: trio.Nursery, publish):
        self.s = state
        self.nursery = nursery
        self.publish = publish
        self._tenancy: Tenancy | None = None
        self._oql = None

    # -- shared resources --------------------------------------------------------------------
    def tenancy(self) -> Tenancy:
        if self._tenancy is None:
            self._tenancy = Tenancy(self.s.data_dir)
        return self._tenancy

    def oql(self):
        if self._oql is None:
            from workbooks.web_control.oql import InProcessOql, PoolOql

            self._oql = PoolOql(self.s.pool_endpoint) if self.s.pool_endpoint else InProcessOql()
        return self._oql

    # -- ops ---------------------------------------------------------------------------------
    def on_status(self) -> dict:
        per: dict[str, int] = {}
        for a in self.s.active.values():
            per[a.tenant] = per.get(a.tenant, 0) + 1
        return {
            "pid": os.getpid(),
            "active": len(self.s.active),
            "per_tenant": per,
            "runs": [{"tenant": a.tenant, "id": a.run_id, "agent": a.agent, "age_s": round(time.time() - a.started, 1)}
                     for a in self.s.active.values()],
            "limits": {"per_tenant": self.s.max_per_tenant, "total": self.s.max_total},
            "started_total": self.s.started_total,
            "finished": dict(self.s.finished),
            "keeper": dict(self.s.keeper),
        }

    async def on_start(self, tenant: str, **args) -> dict:
        from workbooks.gitstore.tenant import validate_tenant

        validate_tenant(tenant)
        req = normalize_request(args)
        tenancy = self.tenancy()
        if not await trio.to_thread.run_sync(tenancy.tenant_exists, tenant):
            raise NotFound(f"no tenant {tenant!r}")
        mine = sum(1 for a in self.s.active.values() if a.tenant == tenant)
        if mine >= self.s.max_per_tenant:
            raise TooManyRuns(f"tenant {tenant} already has {mine} active runs (limit {self.s.max_per_tenant})")
        if len(self.s.active) >= self.s.max_total:
            raise TooManyRuns(f"{len(self.s.active)} runs are active on this server (limit {self.s.max_total})")
        settings = await self._model_settings(tenant, req)
        run_id, path = await trio.to_thread.run_sync(R.allocate, self.s.data_dir, tenant)
        await trio.to_thread.run_sync(R.write_json, path / R.REQUEST_FILE, {**req, "tenant": tenant, "id": run_id})
        await trio.to_thread.run_sync(R.write_json, path / R.STATUS_FILE, {
            "status": "running", "steps": 0, "result": None, "usage": None, "started_at": time.time(),
            "model": settings.model, "runner": self.s.boot})
        active = Active(tenant, run_id, trio.CancelScope(), time.time(), agent=req.get("agent"))
        self.s.active[(tenant, run_id)] = active
        self.s.started_total += 1
        self.nursery.start_soon(self._execute, active, path, req, settings)
        log.info("agent_run_started", tenant=tenant, run=run_id, exec=req["exec"], agent=req.get("agent"),
                 model=settings.model)
        return {"id": run_id, "status": "running"}

    async def on_start_agent(self, tenant: str, agent_slug: str, prompt: str, exec: bool = False,
                             max_steps: int | None = None) -> dict:
        """Run a deployed workbook's agent (its first :agent: headline): POST /api/agent/run."""
        from workbooks.agent.definitions import find_agent
        from workbooks.agent.toolkits import system_prompt_with_toolkits, toolkit_summary_async

        if not isinstance(agent_slug, str) or not agent_slug:
            raise BadRequest("agent_slug must be a non-empty string", hint="GET /api/agents/list names them")
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadRequest("prompt must be a non-empty string")
        d = await find_agent(self.s.data_dir, tenant, agent_slug, self.oql())
        system = d.system_prompt
        if d.toolkits:
            summary = await toolkit_summary_async(list(d.toolkits), self.oql(), data_dir=str(self.s.data_dir),
                                                  tenant=tenant)
            system = system_prompt_with_toolkits(system, summary)
        return await self.on_start(tenant, task=prompt, system=system, model=d.model or None,
                                   max_steps=max_steps or DEFAULT_STEPS_AGENT, exec=exec, agent=d.slug)

    async def on_start_workflow(self, tenant: str, org: str | None = None, workbook: str | None = None,
                                world: str | None = None, input=None, trigger: str = "api",
                                scheduled_for: float | None = None, plan: bool = False) -> dict:
        """A workflow run (workbooks.workflow.service): POST /api/workflow and the scheduler."""
        from workbooks.workflow.service import start_workflow

        return await start_workflow(self, tenant, org=org, workbook=workbook, world=world, input=input,
                                    trigger=trigger if trigger in ("api", "schedule", "cli") else "api",
                                    scheduled_for=scheduled_for, plan_only=bool(plan))

    async def on_start_todo(self, tenant: str, org: str) -> dict:
        from workbooks.workflow.service import start_todo

        return await start_todo(self, tenant, org=org)

    async def agent_step(self, tenant: str, *, system: str, task: str, max_steps: int, workdir: Path,
                         secrets: Secrets) -> str:
        """One agent loop inside another run (a `lang=agent` workflow step, a TODO leaf): its result.

        Records go to `workdir` (the step's own folder), tools are the non-exec ones confined to it."""
        from workbooks.agent.llm import make_model
        from workbooks.agent.loop import LoopConfig, run_loop
        from workbooks.agent.records import Recorder
        from workbooks.agent.tools import tools_for
        from workbooks.agent.tools.base import ToolContext

        settings = await self._model_settings(tenant, {})
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        ctx = ToolContext(tenant=tenant, run_id=workdir.name, data_dir=self.s.data_dir, workdir=workdir.resolve(),
                          exec=False, secrets=secrets, oql=self.oql(), read_only=R.RECORD_FILES)
        model = make_model(settings)
        try:
            outcome = await run_loop(model=model, tools=tools_for(False), ctx=ctx, task=task, system=system,
                                     config=LoopConfig.from_env(os.environ, max_steps=max_steps),
                                     recorder=Recorder(workdir, agent="workflow-step", secrets=secrets))
        finally:
            with trio.CancelScope(shield=True):
                await model.aclose()
        if outcome.status != "done":
            raise WorkbooksError(outcome.error or outcome.result or "the agent step failed")
        return outcome.result or ""

    async def on_cancel(self, tenant: str, id: str) -> dict:
        if isinstance(id, str) and id.startswith("wf-"):
            scope = self.s.workflows.get((tenant, id))
            if scope is None:
                raise Conflict(f"workflow run {id} is not running")
            scope.cancel()
            return {"id": id, "status": "cancelled"}
        R.validate_run_id(id)
        a = self.s.active.get((tenant, id))
        if a is None:
            view = await trio.to_thread.run_sync(R.run_view, self.s.data_dir, tenant, id)  # NotFound if none
            raise Conflict(f"run {id} is already {view['status']}", data={"status": view["status"]})
        a.cancel_requested = True
        a.scope.cancel()
        return {"id": id, "status": "cancelled"}

    # -- one run -----------------------------------------------------------------------------
    async def _model_settings(self, tenant: str, req: dict):
        from workbooks.agent.llm import ModelSettings

        tenancy = self.tenancy()
        key = await trio.to_thread.run_sync(tenancy.var, tenant, "LLM_API_KEY")
        from workbooks.agent.llm import LlmError

        try:
            settings = ModelSettings.from_env(os.environ, tenant_api_key=key[0] if key else None, model=req.get("model"))
        except LlmError as e:
            raise ModelNotConfigured(f"no model is configured for agent runs: {e.message}") from None
        if not settings.model:
            raise ModelNotConfigured("no model is configured for agent runs: WB_LLM_MODEL is not set",
                                     hint="set WB_LLM_MODEL (or pass model in the request), WB_LLM_BASE_URL and "
                                          "WB_LLM_API_KEY or the tenant secret LLM_API_KEY")
        return settings

    async def _execute(self, a: Active, path: Path, req: dict, settings) -> None:
        from workbooks.agent.llm import make_model
        from workbooks.agent.loop import LoopConfig, run_loop
        from workbooks.agent.records import Recorder
        from workbooks.agent.tools import tools_for
        from workbooks.agent.tools.base import ToolContext

        tenant, run_id = a.tenant, a.run_id
        tenancy = self.tenancy()
        status, result, error, outcome = "error", None, None, None
        secrets = Secrets({})
        recorder = None
        try:
            values = await trio.to_thread.run_sync(tenancy.secrets, tenant)
            if settings.api_key:
                values.setdefault("LLM_API_KEY", settings.api_key)
            secrets = Secrets(values, redact_only=frozenset({"LLM_API_KEY"}))
            recorder = Recorder(path, agent=req.get("agent") or "agent", secrets=secrets, owner_finishes=True)
            workdir = path
            if req["exec"]:
                from workbooks.gitstore import GitStore

                store = GitStore(self.s.data_dir, tenant)
                await trio.to_thread.run_sync(store.ensure)
                workdir = store.path

            async def var_get(key: str):
                return await trio.to_thread.run_sync(tenancy.var, tenant, key)

            async def var_set(key: str, value: str) -> None:
                await trio.to_thread.run_sync(tenancy.set_plain_var, tenant, key, value)

            allow = frozenset(h.strip().lower() for h in os.environ.get("WB_FETCH_ALLOW_HOSTS", "").split(",") if h.strip())
            ctx = ToolContext(
                tenant=tenant, run_id=run_id, data_dir=self.s.data_dir, workdir=workdir.resolve(),
                exec=req["exec"], secrets=secrets, oql=self.oql(), var_get=var_get,
                fetch_allow_hosts=allow, read_only=R.RECORD_FILES if workdir == path else frozenset(),
                extra={"var_set": var_set} if req["exec"] else {},
            )
            model = make_model(settings)
            config = LoopConfig.from_env(os.environ, max_steps=req["max_steps"])

            async def on_event(ev: dict) -> None:
                if ev.get("type") in ("done", "error"):
                    return  # the runner sends the end frames itself, once records are final and sealed
                await self.publish(tenant, run_id, ev)

            try:
                with a.scope:
                    outcome = await run_loop(model=model, tools=tools_for(req["exec"]), ctx=ctx, task=req["task"],
                                             system=req.get("system") or DEFAULT_SYSTEM, config=config,
                                             recorder=recorder, on_event=on_event)
            finally:
                with trio.CancelScope(shield=True):
                    try:
                        await model.aclose()
                    except Exception:  # noqa: BLE001 - closing a client never fails a run
                        pass
            if outcome is None and a.interrupted:
                status, result = "interrupted", "interrupted: the agents process was stopped"
            elif outcome is None:  # the scope was cancelled
                status, result = "cancelled", "cancelled"
            else:
                status, result, error = outcome.status, outcome.result, outcome.error
        except Exception as e:  # noqa: BLE001 - a failing run is recorded, never a crash of the runner
            status, error = "error", f"{type(e).__name__}: {e}"
            result = result or f"error: {e}"
            log.error("agent_run_failed", tenant=tenant, run=run_id, error=secrets.redact(error)[:500])
        finally:
            with trio.CancelScope(shield=True):
                await self._finish(a, path, req, recorder, secrets, status, result, error, outcome)

    async def _finish(self, a: Active, path: Path, req: dict, recorder, secrets: Secrets, status: str,
                      result, error, outcome) -> None:
        tenant, run_id = a.tenant, a.run_id
        steps = len(await trio.to_thread.run_sync(R.read_steps, path))
        usage = None
        tools = None
        if outcome is not None:
            u = outcome.usage
            usage = {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens}
            tools = list(outcome.tools)
        compactions = getattr(outcome, "compactions", None)
        # no longer active (a cancel now answers 409, the tenant's slot is free) but still finishing
        self.s.active.pop((tenant, run_id), None)
        self.s.finishing.add((tenant, run_id))
        prev = R.read_json(path / R.STATUS_FILE) or {}
        final = {**prev, "status": status, "steps": steps, "result": secrets.redact(result) if isinstance(result, str) else result,
                 "usage": usage or prev.get("usage") or {"prompt_tokens": 0, "completion_tokens": 0},
                 "tools": tools, "ended_at": time.time()}
        if compactions is not None and outcome is not None:
            final["compactions"] = compactions
        if error:
            final["error"] = secrets.redact(str(error))[:2000]
        try:
            if recorder is not None:
                await trio.to_thread.run_sync(lambda: recorder.events_org(req["task"], outcome if outcome is not None
                                                                           else _Outcome(status, final["result"], steps)))
        except Exception as e:  # noqa: BLE001
            log.warning("agent_events_org_failed", tenant=tenant, run=run_id, error=str(e)[:300])
        # sealed first, then the final status in one write: whoever sees "done" sees its ledger too
        sealed = await seal(self.s.data_dir, tenant, path)
        if sealed is not None:
            final["ledger"] = sealed
        await trio.to_thread.run_sync(R.write_json, path / R.STATUS_FILE, final)
        self.s.finishing.discard((tenant, run_id))
        self.s.finished[status] = self.s.finished.get(status, 0) + 1
        frame = {"type": "done", "result": final["result"], "status": status}
        if status == "error":
            await self.publish(tenant, run_id, {"type": "error", "error": final.get("error") or final["result"]})
        await self.publish(tenant, run_id, frame)
        log.info("agent_run_finished", tenant=tenant, run=run_id, status=status, steps=steps,
                 ms=int((time.time() - a.started) * 1000))


@dataclass
class _Outcome:
    """Stand-in for a LoopOutcome when the loop never returned (cancelled, crashed)."""

    status: str
    result: object
    steps: int
    error: str | None = None
    tools: list = field(default_factory=list)

    @property
    def usage(self):
        from workbooks.agent.llm import Usage

        return Usage()


async def seal(data_dir: Path, tenant: str, path: Path) -> dict | None:
    """Seal the run's _steps.jsonl with the tenant's key and commit `ledger/<run>.json` (`ledger-<run>`)."""
    from workbooks.ledger.api import seal_run

    if not (path / R.STEPS_FILE).exists():
        (path / R.STEPS_FILE).touch()
    try:
        d = await trio.to_thread.run_sync(lambda: seal_run(data_dir, tenant, path))
    except Exception as e:  # noqa: BLE001 - an unsealed run is reported, the run itself stands
        log.error("agent_ledger_seal_failed", tenant=tenant, run=path.name, error=f"{type(e).__name__}: {e}"[:300])
        return None
    return {k: d.get(k) for k in ("head", "count", "did", "checkpoint") if k in d}


async def recover(state: RunnerState) -> int:
    """Mark runs another runner left at running/queued as interrupted (steps kept, ledger sealed)."""
    n = 0
    for tenant, run_id, path in list(R.iter_all_runs(state.data_dir)):
        st = R.read_json(path / R.STATUS_FILE)
        if st is None:
            if not (path / R.REQUEST_FILE).exists():
                continue
            st = {"status": "queued"}
        if st.get("status") not in R.ACTIVE or st.get("runner") == state.boot:
            continue
        steps = len(R.read_steps(path))
        st.update({"status": "interrupted", "steps": steps, "ended_at": time.time(),
                   "result": st.get("result") or f"interrupted: the agents process stopped after {steps} step(s)"})
        sealed = await seal(state.data_dir, tenant, path)
        if sealed is not None:
            st["ledger"] = sealed
        await trio.to_thread.run_sync(R.write_json, path / R.STATUS_FILE, st)
        log.warning("agent_run_interrupted", tenant=tenant, run=run_id, steps=steps)
        n += 1
    return n


class Publisher:
    """The PUB side of the live frames (drops frames nobody subscribed to, never blocks a run)."""

    def __init__(self, endpoint: str):
        from workbooks.actors.zsock import bind_private, context

        self.sock = context().socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 10_000)
        bind_private(self.sock, endpoint)

    async def __call__(self, tenant: str, run_id: str, frame: dict) -> None:
        frame = dict(frame)
        if frame.get("type") == "delta" and "content" not in frame:
            frame["content"] = frame.pop("text", "")
        try:
            self.sock.send_multipart([topic(tenant, run_id), json.dumps(frame, ensure_ascii=False).encode()],
                                     flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    def close(self) -> None:
        self.sock.close(0)


async def main_async(data_dir: Path, pool_endpoint: str | None) -> int:
    from workbooks.readiness import notify_ready

    state = RunnerState(data_dir=data_dir, pool_endpoint=pool_endpoint)
    recovered = await recover(state)
    publisher = Publisher(events_endpoint(data_dir))
    try:
        async with open_actor_system() as system:
            runner = AgentRunner(state, system.nursery, publisher)
            system.spawn(runner, "agents")
            await system.serve_zmq(agents_endpoint(data_dir), default="agents")
            keeper_task = _keeper(runner)
            if keeper_task is not None:
                system.nursery.start_soon(keeper_task)
            else:  # no keeper now: a status file from an earlier configuration must not show one
                keeper_status_path(data_dir).unlink(missing_ok=True)
            log.info("agents_ready", endpoint=agents_endpoint(data_dir), recovered=recovered,
                     limits={"per_tenant": state.max_per_tenant, "total": state.max_total})
            notify_ready()
            await _until_stopped(state)
            system.nursery.cancel_scope.cancel()
    finally:
        publisher.close()
    return 0


async def _until_stopped(state: RunnerState) -> None:
    """Wait for SIGTERM/SIGINT, then stop every run as interrupted (records written, ledgers sealed)."""
    import signal

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("agents_stopping", signal=signal.Signals(signum).name, active=len(state.active))
            break
    for a in list(state.active.values()):
        a.interrupted = True
        a.scope.cancel()
    with trio.move_on_after(8.0):
        while state.active or state.finishing:
            await trio.sleep(0.05)


def _keeper(runner: AgentRunner):
    """The keeper (WB_KEEPER_DEF): an agent run on an interval; None when not configured."""
    from workbooks.agent.keeper import KeeperConfig

    cfg = KeeperConfig.from_env(os.environ).with_(data_dir=runner.s.data_dir)
    if not cfg.enabled:
        return None
    return lambda: run_keeper(runner, cfg)


KEEPER_FILE = "keeper.json"  # $WB_DATA/wb-runs/keeper.json: the keeper's status for the planes


def keeper_status_path(data_dir) -> Path:
    return Path(data_dir) / R.RUNS_DIR / KEEPER_FILE


def read_keeper_status(data_dir, tenant: str) -> dict:
    """The keeper's status as `/_changes` and `/_activity` show it for `tenant` (idle elsewhere)."""
    from workbooks.agent.keeper import idle_status

    doc = R.read_json(keeper_status_path(data_dir))
    if not doc or doc.get("tenant") != tenant or not isinstance(doc.get("status"), dict):
        return idle_status()
    return doc["status"]


async def run_keeper(runner: AgentRunner, cfg) -> None:
    from workbooks.agent.keeper import keeper_loop
    from workbooks.agent.toolkits import system_prompt_with_toolkits, toolkit_summary_async

    async def start_run(*, agent: str | None, task: str, definition=None, tenant: str | None = None,
                        exec: bool = True, max_steps: int | None = None, **_) -> str:
        tenant = tenant or cfg.tenant
        if definition is None:
            reply = await runner.on_start_agent(tenant, agent_slug=agent, prompt=task, exec=exec, max_steps=max_steps)
        else:  # WB_KEEPER_DEF is an Org file: the agent is not a deployed one
            system = definition.system_prompt
            if definition.toolkits:
                summary = await toolkit_summary_async(list(definition.toolkits), runner.oql(),
                                                      data_dir=str(runner.s.data_dir), tenant=tenant)
                system = system_prompt_with_toolkits(system, summary)
            reply = await runner.on_start(tenant, task=task, system=system, model=definition.model or None,
                                          max_steps=max_steps or DEFAULT_STEPS_AGENT, exec=exec, agent=definition.slug)
        return reply["id"]

    def is_active(run_id: str) -> bool:
        return any(a.run_id == run_id for a in runner.s.active.values()) or \
            any(r == run_id for _, r in runner.s.finishing)

    def result_of(run_id: str):
        st = R.read_json(R.run_path(runner.s.data_dir, cfg.tenant, run_id) / R.STATUS_FILE) or {}
        return st.get("result")

    async def cancel_run(run_id: str) -> None:
        try:
            await runner.on_cancel(cfg.tenant, run_id)
        except WorkbooksError:
            pass

    async def publish_status() -> None:
        last = None
        path = keeper_status_path(runner.s.data_dir)
        while True:
            doc = {"tenant": cfg.tenant, "status": dict(runner.s.keeper)}
            if doc != last:
                try:
                    await trio.to_thread.run_sync(_write_keeper_status, path, doc)
                    last = doc
                except OSError as e:  # a full disk delays the status, it never stops the keeper
                    log.warning("keeper_status_write_failed", error=str(e)[:200])
            await trio.sleep(0.5)

    try:
        async with trio.open_nursery() as n:
            n.start_soon(publish_status)
            await keeper_loop(cfg, start_run, status=runner.s.keeper, is_active=is_active, result_of=result_of,
                              cancel_run=cancel_run, oql=runner.oql())
            await trio.sleep(1.0)  # let the last status reach the file
            n.cancel_scope.cancel()
    except Exception as e:  # noqa: BLE001 - the keeper failing never takes the runs down with it
        runner.s.keeper.update(active=False, running=False, error="keeper_failed")
        log.error("keeper_failed", error=f"{type(e).__name__}: {e}"[:500])


def _write_keeper_status(path: Path, doc: dict) -> None:
    from workbooks.fsutil import makedirs_durable

    makedirs_durable(path.parent)
    R.write_json(path, doc)


def main(argv=None) -> int:
    from workbooks.log import configure

    p = argparse.ArgumentParser(prog="python -m workbooks.agent.runner", description="The agents process (supervised).")
    p.add_argument("--data", default=os.environ.get("WB_DATA") or "wb-data")
    p.add_argument("--pool", default=None, help="the OQL pool's client endpoint (default: the in-process kernel)")
    ns = p.parse_args(argv)
    configure("agents", id=str(os.getpid()))
    # runs are minutes long and latency-tolerant, the API is not: when both want the CPU, the planes
    # win (WB_AGENTS_NICE, default 5; 0 turns it off)
    try:
        nice = int(os.environ.get("WB_AGENTS_NICE", "5") or 0)
        if nice > 0:
            os.nice(min(nice, 19))
    except (ValueError, OSError):
        pass
    data = Path(ns.data).expanduser().resolve()
    try:
        return trio.run(main_async, data, ns.pool)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
