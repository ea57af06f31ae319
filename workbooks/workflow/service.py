"""Workflow runs on the server: started by the API or the scheduler, orchestrated in the agents process.

The agents process is where every long run of the server lives (agent loops, workflow DAGs, TODO
outlines): web processes only ask it over the actor layer and read the run folders. The DAG itself
is cheap orchestration (workbooks.workflow.engine); its steps run in the pool's runner workers
(workbooks.workflow.pool_exec) when `wbx serve` runs them, else in this process's threads
(LocalExecutor). A `lang=agent` component runs the agent loop here, with its source as the system
prompt, the upstream output as the task and 6 steps.

Ops of the actor `agents` that land here (workbooks.agent.runner):
    start_workflow {tenant, org? | workbook?, world?, input?, trigger?, scheduled_for?} -> {id, run, status}
    start_todo     {tenant, org}                                                       -> {slug, id, status}
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import structlog
import trio

from workbooks.agent import runs as R
from workbooks.agent.secrets import Secrets
from workbooks.errors import BadRequest, NotFound
from workbooks.workflow.types import Component, Limits, StepContext, StepResult

log = structlog.get_logger()

AGENT_STEP_MAX_STEPS = 6
MAX_ORG_BYTES = 8 * 1024 * 1024
MAX_INPUT_BYTES = 64 * 1024 * 1024


def runner_endpoint_present(data_dir: Path) -> str | None:
    """The runner broker's client endpoint when `wbx serve` runs one (its ipc socket exists)."""
    try:
        from workbooks.pool import endpoints as E

        ep = E.runner_client_endpoint(data_dir)
    except (ImportError, AttributeError):
        return None
    if ep.startswith("ipc://") and not os.path.exists(ep[len("ipc://"):]):
        return None
    return ep


class AgentLaneExecutor:
    """Steps of `lang=agent` run the agent loop in this process; every other step goes to `inner`."""

    def __init__(self, inner, runner):
        self.inner = inner
        self.runner = runner

    async def run(self, component: Component, input: bytes, ctx: StepContext) -> StepResult:
        if component.lang != "agent":
            return await self.inner.run(component, input, ctx)
        t0 = time.monotonic()
        try:
            output = await self.runner.agent_step(ctx.tenant, system=component.src,
                                                  task=input.decode("utf-8", "replace") or "(no input)",
                                                  max_steps=AGENT_STEP_MAX_STEPS, workdir=ctx.step_dir,
                                                  secrets=ctx.secrets)
        except Exception as e:  # noqa: BLE001 - a failing step is a result, never a crash of the run
            code = getattr(e, "code", None) or "error"
            if code == "llm_not_configured":
                code = "lane_unavailable"
            return StepResult(ok=False, code=code if code in ("lane_unavailable",) else "error",
                              error=getattr(e, "message", None) or f"{type(e).__name__}: {e}",
                              ms=(time.monotonic() - t0) * 1000, lane="agent")
        return StepResult(ok=True, output=output.encode("utf-8"), ms=(time.monotonic() - t0) * 1000, lane="agent")

    async def aclose(self) -> None:
        await self.inner.aclose()


def _source_of(data_dir: Path, tenant: str, workbook: str) -> str:
    from workbooks.store.db import Store

    store = Store(data_dir)
    try:
        row = store.get_workbook(tenant, workbook)
    finally:
        store.close()
    if row is None:
        raise NotFound(f"no workbook {workbook!r} for tenant {tenant}")
    return row["source"]


def _decode_input(value) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode("utf-8")
    elif isinstance(value, dict) and set(value) == {"base64"} and isinstance(value["base64"], str):
        try:
            data = base64.b64decode(value["base64"], validate=True)
        except ValueError:
            raise BadRequest("input.base64 is not base64") from None
    else:
        raise BadRequest("input must be a string (or {\"base64\": \"…\"})")
    if len(data) > MAX_INPUT_BYTES:
        raise BadRequest(f"input is larger than {MAX_INPUT_BYTES} bytes")
    return data


def pick_world(plan: dict, world: str | None) -> dict:
    worlds = [w for w in (plan.get("worlds") or []) if isinstance(w, dict)]
    if not worlds:
        raise BadRequest("the workbook has no :workflow: headline to run")
    if world is None:
        if len(worlds) == 1:
            return worlds[0]
        names = ", ".join(repr(w.get("name")) for w in worlds)
        raise BadRequest(f"the workbook has {len(worlds)} workflows: name one with \"world\" ({names})")
    for w in worlds:
        if w.get("name") == world:
            return w
    raise NotFound(f"no workflow {world!r} in the workbook")


async def start_workflow(runner, tenant: str, *, org: str | None = None, workbook: str | None = None,
                         world: str | None = None, input=None, trigger: str = "api",
                         scheduled_for: float | None = None, plan_only: bool = False) -> dict:
    """Tangle, pick the world, allocate `wf-<n>` and run it in the background; returns at once."""
    import json

    from workbooks.gitstore.tenant import validate_tenant
    from workbooks.workflow.engine import check_world, plan_records

    validate_tenant(tenant)
    if (org is None) == (workbook is None):
        raise BadRequest("give exactly one of org (the Org text) or workbook (a deployed workbook's id)")
    if org is not None and (not isinstance(org, str) or len(org.encode()) > MAX_ORG_BYTES):
        raise BadRequest(f"org must be Org text of at most {MAX_ORG_BYTES} bytes")
    data = _decode_input(input)
    data_dir = runner.s.data_dir
    tenancy = runner.tenancy()
    if not await trio.to_thread.run_sync(tenancy.tenant_exists, tenant):
        raise NotFound(f"no tenant {tenant!r}")
    source = org if org is not None else await trio.to_thread.run_sync(_source_of, data_dir, tenant, workbook)
    plan = json.loads(await runner.oql().call("tangle_plan", [source], deadline_ms=10_000))
    if plan_only:
        return {"plans": plan_records(plan)}
    chosen = pick_world(plan, world)
    checked = check_world(chosen)  # a cycle or a missing producer: 400 before anything is made
    run_id, path = await trio.to_thread.run_sync(lambda: R.allocate(data_dir, tenant, prefix="wf"))
    request = {"kind": "workflow", "tenant": tenant, "id": run_id, "workbook": workbook, "world": chosen.get("name"),
               "trigger": trigger, "scheduled_for": scheduled_for, "input_bytes": len(data),
               "requested_at": time.time()}
    await trio.to_thread.run_sync(R.write_json, path / R.REQUEST_FILE, request)
    await trio.to_thread.run_sync(R.write_json, path / R.STATUS_FILE, {
        "status": "running", "steps": 0, "result": None, "kind": "workflow", "workflow": chosen.get("name"),
        "workbook": workbook, "trigger": trigger, "scheduled_for": scheduled_for, "started_at": time.time(),
        "runner": runner.s.boot})
    runner.nursery.start_soon(_execute, runner, tenant, run_id, path, checked, data)
    log.info("workflow_run_started", tenant=tenant, run=run_id, world=chosen.get("name"), workbook=workbook,
             trigger=trigger)
    return {"id": run_id, "run": run_id, "status": "running"}


async def _execute(runner, tenant: str, run_id: str, path: Path, checked, data: bytes) -> None:
    from workbooks.workflow.engine import run_workflow_dir
    from workbooks.workflow.local_exec import LocalExecutor

    data_dir = runner.s.data_dir
    tenancy = runner.tenancy()
    secrets = Secrets(await trio.to_thread.run_sync(tenancy.secrets, tenant), redact_only=frozenset({"LLM_API_KEY"}))
    ep = runner_endpoint_present(data_dir)
    if ep is not None:
        from workbooks.workflow.pool_exec import PoolStepExecutor

        inner = PoolStepExecutor(ep, data_dir=data_dir)
    else:
        inner = LocalExecutor()
    executor = AgentLaneExecutor(inner, runner)
    allow = frozenset(h.strip().lower() for h in os.environ.get("WB_FETCH_ALLOW_HOSTS", "").split(",") if h.strip())
    limits = Limits.from_env()
    from workbooks.gitstore import GitStore

    tree = GitStore(data_dir, tenant).path
    logs_path = path / "_log.jsonl"

    def sink(line: str) -> None:
        import json

        with open(logs_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"ts": time.time(), "line": secrets.redact(str(line))[:4000]}, ensure_ascii=False) + "\n")

    from workbooks.workflow.records import StepDirs

    step_dirs = StepDirs(path)  # a fresh private folder per step: never the run folder, never shared

    def ctx_for(component: Component) -> StepContext:
        step_dir = step_dirs(component.name)
        return StepContext(tenant=tenant, workflow=checked.name, run_id=run_id, step_dir=step_dir, data_dir=data_dir,
                           tree=tree if tree.is_dir() else None, secrets=secrets, allow_hosts=allow, log=sink,
                           limits=limits, cache_dir=data_dir / "build" / "cache")

    key = (tenant, run_id)
    scope = trio.CancelScope()
    runner.s.workflows[key] = scope
    try:
        with scope:
            await run_workflow_dir(path, checked, data, executor=executor, ctx_for=ctx_for, tenant=tenant,
                                   data_dir=data_dir, secrets=secrets, run_id=run_id)
    except Exception as e:  # noqa: BLE001 - recorded by the engine; the process goes on
        await _record_failure(path, "workflow_run_failed", tenant, run_id, secrets, e)
    finally:
        runner.s.workflows.pop(key, None)
        with trio.CancelScope(shield=True):
            try:
                await executor.aclose()
            except Exception:  # noqa: BLE001
                pass
    log.info("workflow_run_finished", tenant=tenant, run=run_id,
             status=(R.read_json(path / R.STATUS_FILE) or {}).get("status"))


async def _record_failure(path: Path, event: str, tenant: str, run_id: str, secrets: Secrets, e: Exception) -> None:
    """A run that raised: logged, and its status set to error when the runner had not ended it."""
    log.error(event, tenant=tenant, run=run_id, error=secrets.redact(f"{type(e).__name__}: {e}")[:500])
    st = R.read_json(path / R.STATUS_FILE) or {}
    if st.get("status") in R.ACTIVE:
        st.update(status="error", error=secrets.redact(str(e))[:2000], ended_at=time.time())
        await trio.to_thread.run_sync(R.write_json, path / R.STATUS_FILE, st)


async def start_todo(runner, tenant: str, *, org: str) -> dict:
    """A TODO outline as a task list (workbooks.workflow.todo), `wf-<n>`, in the background."""
    from workbooks.gitstore.tenant import validate_tenant

    validate_tenant(tenant)
    if not isinstance(org, str) or not org.strip() or len(org.encode()) > MAX_ORG_BYTES:
        raise BadRequest(f"org must be non-empty Org text of at most {MAX_ORG_BYTES} bytes")
    tenancy = runner.tenancy()
    if not await trio.to_thread.run_sync(tenancy.tenant_exists, tenant):
        raise NotFound(f"no tenant {tenant!r}")
    data_dir = runner.s.data_dir
    run_id, path = await trio.to_thread.run_sync(lambda: R.allocate(data_dir, tenant, prefix="wf"))
    await trio.to_thread.run_sync(R.write_json, path / R.REQUEST_FILE,
                                  {"kind": "todo", "tenant": tenant, "id": run_id, "requested_at": time.time()})
    await trio.to_thread.run_sync(R.write_json, path / R.STATUS_FILE,
                                  {"status": "running", "steps": 0, "kind": "todo", "slug": run_id,
                                   "started_at": time.time(), "runner": runner.s.boot})
    runner.nursery.start_soon(_execute_todo, runner, tenant, run_id, path, org)
    return {"slug": run_id, "id": run_id, "status": "running"}


async def _execute_todo(runner, tenant: str, run_id: str, path: Path, org: str) -> None:
    from workbooks.workflow.todo import run_todo

    secrets = Secrets(await trio.to_thread.run_sync(runner.tenancy().secrets, tenant),
                      redact_only=frozenset({"LLM_API_KEY"}))

    async def agent_leaf(item) -> tuple[bool, str]:
        title = item.get("title") if isinstance(item, dict) else str(item)
        text = item.get("text") if isinstance(item, dict) else ""
        result = await runner.agent_step(tenant, system="You complete one task of a TODO list. Call done with "
                                          "what you did.", task=f"{title}\n\n{text or ''}".strip(),
                                          max_steps=AGENT_STEP_MAX_STEPS, workdir=path, secrets=secrets)
        return True, result

    key = (tenant, run_id)
    scope = trio.CancelScope()
    runner.s.workflows[key] = scope
    try:
        with scope:
            await run_todo(org, path, tenant=tenant, data_dir=runner.s.data_dir, oql=runner.oql(),
                           agent_leaf=agent_leaf, secrets=secrets)
    except Exception as e:  # noqa: BLE001 - the process goes on
        await _record_failure(path, "todo_run_failed", tenant, run_id, secrets, e)
    finally:
        runner.s.workflows.pop(key, None)


def workflow_view(data_dir, tenant: str, run_id: str) -> dict:
    """GET /api/workflow/:run — the run record (when written) and the status."""
    from workbooks.workflow.records import read_record

    if not isinstance(run_id, str) or not R.ANY_RUN_RE.fullmatch(run_id) or not run_id.startswith("wf-"):
        raise BadRequest(f"invalid workflow run id {str(run_id)[:64]!r}", hint="workflow runs look like wf-12")
    path = R.tenant_root(data_dir, tenant) / run_id
    st = R.read_json(path / R.STATUS_FILE)
    if st is None:
        raise NotFound(f"no workflow run {run_id}")
    out = {"run": run_id, "status": st.get("status"), "kind": st.get("kind", "workflow"), "state": st}
    rec = read_record(path)
    if rec is not None:
        out["record"] = rec
    return out
