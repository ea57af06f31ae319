"""The DAG engine: a world of `tangle_plan` run as steps along its `:out`→`:in` edges.

Rules (the original's `run_world`, plus what a user needs to see when something fails):

- Edges come from the components' `:in`/`:out`: a step reads exactly one producer's output (the
  component whose `:out` is its `:in`); a step without `:in` is a root and reads the workflow input.
- The plan is checked before anything runs: component names present and unique, each `:in` has
  exactly one producer, no cycle, sub-workflows nested at most MAX_DEPTH deep, at most MAX_STEPS
  steps in all. A failure is a PlanError (`invalid_workflow`, HTTP 400, exit 2) naming the world
  and the component.
- Steps run as soon as their producer is done (topological waves: wave 0 the roots, wave n+1 the
  consumers of wave n), at most `max_parallel` (8) at once, in one trio nursery under a
  CapacityLimiter.
- A failed step's dependants are not run: they are `skipped` (code `skipped`), while independent
  branches go on. An executor that raises is a failed step (code `error`), never a crashed run.
- Sub-workflows run after their parent's steps, one after another, with the same input (as in
  the original), each recorded as a nested run record.

The run record (one per world, nested for sub-workflows):

    {workflow, schedule, exports: {name: output}, tasks: {component: output | null},
     sub_workflows: [record, ...], status: "done"|"error", errors: {component: {code, error}},
     steps: {component: StepResult.to_dict() + {wave}}, ms}

`tasks` holds the outputs of the steps that succeeded (null for failed and skipped ones); an output
is text when it is UTF-8, else `{"base64": ...}` (workbooks.workflow.records.encode_output).
`exports` maps each name in the world's `exports` to the output of the step that produces it.
`status` is "error" when any step of the world or of a sub-workflow failed or was skipped.

Events for a live view (`on_event`, awaited in order; a failing listener is logged and ignored):
`{"type": "step", "workflow", "component", "status": "running"|"ok"|"error"|"skipped", "ms",
"code", "wave"}` and, last, `{"type": "done", "workflow", "status", "ms", "errors"}`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import trio

from workbooks.agent.secrets import Secrets
from workbooks.errors import EXIT_USAGE, BadRequest
from workbooks.workflow.records import WorkflowRecorder, encode_output
from workbooks.workflow.types import MAX_PARALLEL, Component, RunEvent, StepContext, StepExecutor, StepResult

MAX_DEPTH = 16  # sub-workflows nested at most this deep
MAX_STEPS = 10_000  # steps in one run, sub-workflows included
ERROR_CHARS = 4096  # an executor's exception message kept in the record


class PlanError(BadRequest):
    """A world that cannot run: the message names the world and the component."""

    code = "invalid_workflow"
    exit_code = EXIT_USAGE
    http_status = 400
    hint = "run `wbx lint FILE` for the workbook's diagnostics"


# -- plan records -------------------------------------------------------------------------------
def plan_records(plan: dict) -> list[dict]:
    """tangle_plan's worlds as the original's plan records {workflow, schedule, tasks, sub_workflows}."""
    worlds = plan.get("worlds") if isinstance(plan, dict) else None
    if not isinstance(worlds, list):
        raise PlanError("a plan is {\"worlds\": [...]}")
    return [_plan_record(w, 0) for w in worlds]


def _plan_record(world: dict, depth: int) -> dict:
    if depth > MAX_DEPTH:
        raise PlanError(f"sub-workflows nested more than {MAX_DEPTH} deep")
    if not isinstance(world, dict):
        raise PlanError("a world is an object")
    comps = world.get("components") or []
    subs = world.get("workflows") or []
    if not isinstance(comps, list) or not isinstance(subs, list):
        raise PlanError(f"workflow {str(world.get('name'))[:80]!r}: components and workflows are lists")
    return {"workflow": world.get("name"), "schedule": world.get("schedule"),
            "tasks": [c.get("name") if isinstance(c, dict) else None for c in comps],
            "sub_workflows": [_plan_record(s, depth + 1) for s in subs]}


# -- checking a world -----------------------------------------------------------------------------
@dataclass
class CheckedWorld:
    """A world whose plan can run: its components in a topological order, each one's producer and wave."""

    name: str
    schedule: object
    exports: list[str]
    components: list[Component]  # topological order (producers before consumers)
    plan_components: dict[str, dict]  # name -> the plan's component dict (as given)
    producer: dict[str, str | None]  # component -> the component it reads (None: a root)
    wave: dict[str, int]
    subs: list["CheckedWorld"] = field(default_factory=list)

    def total_steps(self) -> int:
        return len(self.components) + sum(s.total_steps() for s in self.subs)


def _label(name: object) -> str:
    return repr(str(name)[:80])


def check_world(world: dict, *, _depth: int = 0, _budget: list[int] | None = None) -> CheckedWorld:
    """The world (and its sub-workflows) checked and ordered; PlanError when it cannot run."""
    budget = _budget if _budget is not None else [MAX_STEPS]
    if _depth > MAX_DEPTH:
        raise PlanError(f"sub-workflows nested more than {MAX_DEPTH} deep")
    if not isinstance(world, dict):
        raise PlanError("a workflow is an object (one of tangle_plan's worlds)")
    wname = world.get("name")
    if not isinstance(wname, str):
        raise PlanError("a workflow has no name")
    raw = world.get("components") or []
    subs = world.get("workflows") or []
    exports = world.get("exports")
    if not isinstance(raw, list) or not isinstance(subs, list):
        raise PlanError(f"workflow {_label(wname)}: components and workflows are lists")
    budget[0] -= len(raw)
    if budget[0] < 0:
        raise PlanError(f"a run has at most {MAX_STEPS} steps")
    comps: list[Component] = []
    plan_comps: dict[str, dict] = {}
    for c in raw:
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"]:
            raise PlanError(f"workflow {_label(wname)}: a component has no name")
        for key in ("lang", "src", "in", "out", "dir"):
            if c.get(key) is not None and not isinstance(c[key], str):
                raise PlanError(f"workflow {_label(wname)}, component {_label(c['name'])}: `{key}` is not a string")
        for key in ("uses", "deps"):
            v = c.get(key)
            if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
                raise PlanError(f"workflow {_label(wname)}, component {_label(c['name'])}: `{key}` is not a list of names")
        comp = Component.from_plan(c)
        for key, value in (("in", comp.inp), ("out", comp.out)):
            if value is not None and (not isinstance(value, str) or not value):
                raise PlanError(f"workflow {_label(wname)}, component {_label(comp.name)}: `:{key}` is not a name")
        if comp.name in plan_comps:
            raise PlanError(f"workflow {_label(wname)}: duplicate component name {_label(comp.name)}")
        plan_comps[comp.name] = c
        comps.append(comp)
    producers: dict[str, str] = {}
    for comp in comps:
        if comp.out is None:
            continue
        if comp.out in producers:
            raise PlanError(f"workflow {_label(wname)}: output {_label(comp.out)} has more than one producer: "
                            f"{producers[comp.out]}, {comp.name}")
        producers[comp.out] = comp.name
    producer: dict[str, str | None] = {}
    for comp in comps:
        if comp.inp is None:
            producer[comp.name] = None
        elif comp.inp not in producers:
            raise PlanError(f"workflow {_label(wname)}, component {_label(comp.name)}: input {_label(comp.inp)} "
                            f"has no upstream producer (no component has `:out {str(comp.inp)[:80]}`)")
        else:
            producer[comp.name] = producers[comp.inp]
    # Kahn's order; whatever is left over lies on (or hangs off) a cycle
    consumers: dict[str, list[str]] = {c.name: [] for c in comps}
    for name, p in producer.items():
        if p is not None:
            consumers[p].append(name)
    by_name = {c.name: c for c in comps}
    order: list[Component] = []
    wave: dict[str, int] = {}
    ready = [c.name for c in comps if producer[c.name] is None]
    for name in ready:
        wave[name] = 0
    i = 0
    while i < len(ready):
        name = ready[i]
        i += 1
        order.append(by_name[name])
        for nxt in consumers[name]:
            wave[nxt] = wave[name] + 1
            ready.append(nxt)
    if len(order) != len(comps):
        stuck = [c.name for c in comps if c.name not in wave]
        cycle = _find_cycle(stuck, producer)
        raise PlanError(f"workflow {_label(wname)}: cycle in edges between components: "
                        + " → ".join(cycle[:20]) + (" …" if len(cycle) > 20 else ""))
    if exports is None:
        consumed = {c.inp for c in comps if c.inp is not None}
        exports = [o for o in producers if o not in consumed]
    if not isinstance(exports, list) or not all(isinstance(e, str) for e in exports):
        raise PlanError(f"workflow {_label(wname)}: exports is a list of names")
    checked = CheckedWorld(name=wname, schedule=world.get("schedule"), exports=list(exports), components=order,
                           plan_components=plan_comps, producer=producer, wave=wave)
    checked.subs = [check_world(s, _depth=_depth + 1, _budget=budget) for s in subs]
    return checked


def _find_cycle(stuck: list[str], producer: dict[str, str | None]) -> list[str]:
    """One cycle among the components that never became ready (each has exactly one producer)."""
    start = stuck[0]
    seen: dict[str, int] = {}
    path: list[str] = []
    node: str | None = start
    while node is not None and node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = producer.get(node)
    if node is None:  # cannot happen for a stuck node; be safe
        return stuck
    cyc = path[seen[node]:]
    cyc.reverse()  # producer → consumer order
    pos = {name: i for i, name in enumerate(stuck)}
    k = min(range(len(cyc)), key=lambda i: pos.get(cyc[i], 0))  # start at the first in the document
    cyc = cyc[k:] + cyc[:k]
    return cyc + [cyc[0]]


# -- running ----------------------------------------------------------------------------------
@dataclass
class _Run:
    executor: StepExecutor
    ctx_for: Callable[[Component], StepContext]
    max_parallel: int
    on_event: RunEvent | None
    on_step: Callable | None = None  # async (workflow name, the plan's component dict, StepResult)

    async def emit(self, event: dict) -> None:
        if self.on_event is None:
            return
        try:
            await self.on_event(event)
        except Exception as e:  # noqa: BLE001 - a live view that fails must not fail the run
            from workbooks.log import get_logger

            get_logger().warning("workflow_event_listener_failed", error=f"{type(e).__name__}: {e}"[:300])


def _skipped(producer: str) -> StepResult:
    return StepResult(ok=False, code="skipped", error=f"not run: its producer {producer!r} did not succeed")


async def _run_step(run: _Run, comp: Component, data: bytes) -> StepResult:
    t0 = time.monotonic()
    try:
        ctx = run.ctx_for(comp)
        res = await run.executor.run(comp, data, ctx)
        if not isinstance(res, StepResult):
            raise TypeError(f"the executor answered {type(res).__name__}, not a StepResult")
    except Exception as e:  # noqa: BLE001 - executors should not raise; if one does, the step failed
        res = StepResult(ok=False, code="error", error=f"{type(e).__name__}: {e}"[:ERROR_CHARS])
    if not res.ms:
        res.ms = (time.monotonic() - t0) * 1000
    if not res.ok and res.code == "ok":
        res.code = "error"
    return res


async def _run_checked(run: _Run, w: CheckedWorld, data: bytes) -> dict:
    t0 = time.monotonic()
    results: dict[str, StepResult] = {}
    finished = {c.name: trio.Event() for c in w.components}
    limiter = trio.CapacityLimiter(max(1, int(run.max_parallel)))

    async def one(comp: Component) -> None:
        p = w.producer[comp.name]
        if p is not None:
            await finished[p].wait()
        if p is not None and not results[p].ok:
            res = _skipped(p)
        else:
            step_in = data if p is None else results[p].output
            async with limiter:
                await run.emit({"type": "step", "workflow": w.name, "component": comp.name, "status": "running",
                                "ms": 0, "code": None, "wave": w.wave[comp.name]})
                res = await _run_step(run, comp, step_in)
        results[comp.name] = res
        status = "ok" if res.ok else ("skipped" if res.code == "skipped" else "error")
        if run.on_step is not None:
            await run.on_step(w.name, w.plan_components[comp.name], res)
        await run.emit({"type": "step", "workflow": w.name, "component": comp.name, "status": status,
                        "ms": round(res.ms, 3), "code": res.code, "wave": w.wave[comp.name]})
        finished[comp.name].set()

    async with trio.open_nursery() as nursery:
        for comp in w.components:
            nursery.start_soon(one, comp)

    tasks: dict[str, object] = {}
    errors: dict[str, dict] = {}
    steps: dict[str, dict] = {}
    by_out: dict[str, str] = {}
    for comp in w.components:  # producers before consumers (not the finishing order)
        res = results[comp.name]
        tasks[comp.name] = encode_output(res.output) if res.ok else None
        if not res.ok:
            errors[comp.name] = {"code": res.code, "error": res.error}
        steps[comp.name] = {**res.to_dict(), "wave": w.wave[comp.name]}
        if comp.out is not None:
            by_out[comp.out] = comp.name
    subs = []
    for sub in w.subs:
        subs.append(await _run_checked(run, sub, data))
    exports = {name: (tasks.get(by_out[name]) if name in by_out else None) for name in w.exports}
    ok = not errors and all(s["status"] == "done" for s in subs)
    # order of keys: the original's record first, then ours
    return {"workflow": w.name, "schedule": w.schedule, "exports": exports, "tasks": tasks, "sub_workflows": subs,
            "status": "done" if ok else "error", "errors": errors, "steps": steps,
            "ms": round((time.monotonic() - t0) * 1000, 3)}


async def run_world(world: dict, input: bytes, *, executor: StepExecutor, ctx_for: Callable[[Component], StepContext],
                    max_parallel: int = MAX_PARALLEL, on_event: RunEvent | None = None, _on_step=None) -> dict:
    """Run one world of tangle_plan (and its sub-workflows) on `input`; the run record.

    Raises PlanError (before any step runs) when the plan cannot run; a failing step never raises."""
    if not isinstance(input, (bytes, bytearray)):
        raise TypeError("a workflow's input is bytes")
    checked = world if isinstance(world, CheckedWorld) else check_world(world)
    run = _Run(executor=executor, ctx_for=ctx_for, max_parallel=max_parallel, on_event=on_event, on_step=_on_step)
    t0 = time.monotonic()
    record = await _run_checked(run, checked, bytes(input))
    await run.emit({"type": "done", "workflow": checked.name, "status": record["status"],
                    "ms": round((time.monotonic() - t0) * 1000, 3), "errors": _count_errors(record)})
    return record


def _count_errors(record: dict) -> int:
    return len(record.get("errors") or {}) + sum(_count_errors(s) for s in record.get("sub_workflows") or [])


# -- a recorded run ------------------------------------------------------------------------------
def _only_cancelled(e: BaseException) -> bool:
    """Whether `e` is trio's Cancelled or Ctrl-C (alone or grouped by a nursery)."""
    if isinstance(e, BaseExceptionGroup):
        return all(_only_cancelled(x) for x in e.exceptions)
    return isinstance(e, (trio.Cancelled, KeyboardInterrupt))


def data_dir_of(run_dir: Path, tenant: str) -> Path | None:
    """`$WB_DATA` when `run_dir` is `$WB_DATA/wb-runs/<tenant>/<id>` (where the ledger looks), else None."""
    from workbooks.agent.runs import RUNS_DIR

    run_dir = Path(run_dir).absolute()
    if run_dir.parent.name == tenant and run_dir.parent.parent.name == RUNS_DIR:
        return run_dir.parent.parent.parent
    return None


async def _seal(data_dir: Path, tenant: str, run_dir: Path) -> dict | None:
    """Seal `_steps.jsonl` and commit `ledger/<id>.json` when the tenant has a repo; None when it has not."""
    from workbooks.gitstore import GitStore
    from workbooks.ledger.api import seal_run

    if not GitStore(data_dir, tenant).exists():
        return None
    try:
        d = await trio.to_thread.run_sync(lambda: seal_run(data_dir, tenant, run_dir))
    except Exception as e:  # noqa: BLE001 - an unsealed run is reported; the run itself stands
        from workbooks.log import get_logger

        get_logger().error("workflow_ledger_seal_failed", tenant=tenant, run=run_dir.name,
                           error=f"{type(e).__name__}: {e}"[:300])
        return {"error": f"{type(e).__name__}: {e}"[:300]}
    return {k: d.get(k) for k in ("head", "count", "did", "checkpoint") if k in d}


async def run_workflow_dir(run_dir: Path, world: dict, input: bytes, *, executor: StepExecutor,
                           ctx_for: Callable[[Component], StepContext], tenant: str, agent: str = "workflow",
                           max_parallel: int = MAX_PARALLEL, on_event: RunEvent | None = None,
                           data_dir: Path | None = None, secrets: Secrets | None = None,
                           run_id: str | None = None) -> dict:
    """`run_world`, recorded in `run_dir` (see workbooks.workflow.records) and sealed in the ledger.

    The record returned (and written to run.json) carries `run` (the folder's name, e.g. wf-3) and,
    when sealed, `ledger`. `data_dir` defaults to the data dir `run_dir` lies in
    (`<data>/wb-runs/<tenant>/<id>`); the run is sealed when the tenant has a repo there.
    A plan that cannot run leaves `_status.json` at error with the message, and raises PlanError."""
    run_dir = Path(run_dir)
    run_id = run_id or run_dir.name
    data_dir = Path(data_dir) if data_dir is not None else data_dir_of(run_dir, tenant)
    name = world.name if isinstance(world, CheckedWorld) else str((world or {}).get("name") if isinstance(world, dict) else "")
    rec = WorkflowRecorder(run_dir, run_id=run_id, tenant=tenant, workflow=name, agent=agent, secrets=secrets)
    try:
        checked = world if isinstance(world, CheckedWorld) else check_world(world)
    except PlanError as e:
        await trio.to_thread.run_sync(lambda: rec.finish("error", None, result=e.message,
                                                         error={"code": e.code, "message": e.message}))
        raise
    await trio.to_thread.run_sync(lambda: rec.start(tasks=checked.total_steps(), input_bytes=len(input)))
    lock = trio.Lock()  # one writer of the step lines at a time (steps finish concurrently)

    async def on_step(workflow: str, comp: dict, res: StepResult) -> None:
        exit_code = 0 if res.ok else (None if res.code == "skipped" else 1)
        error = None if res.ok else f"{res.code}: {res.error or ''}".rstrip(": ")
        async with lock:
            await trio.to_thread.run_sync(lambda: rec.step(workflow=workflow, component=comp, output=res.output,
                                                           exit_code=exit_code, error=error, dur_ms=res.ms))

    try:
        record = await run_world(checked, input, executor=executor, ctx_for=ctx_for, max_parallel=max_parallel,
                                 on_event=on_event, _on_step=on_step)
    except BaseException as e:
        with trio.CancelScope(shield=True):
            status = "cancelled" if _only_cancelled(e) else "error"
            result = "cancelled" if status == "cancelled" else f"the run failed: {type(e).__name__}: {e}"[:500]
            await trio.to_thread.run_sync(lambda: rec.finish(status, None, result=result))
            if data_dir is not None:
                sealed = await _seal(data_dir, tenant, run_dir)
                if sealed is not None:
                    await trio.to_thread.run_sync(lambda: rec.finish(status, None, result=result, ledger=sealed))
        raise
    record = {"run": run_id, **record}
    # the steps are sealed first, then run.json and the final status are written: a reader that
    # sees "done" finds the record and a sealed log
    sealed = await _seal(data_dir, tenant, run_dir) if data_dir is not None else None
    extra = {"ledger": sealed} if sealed is not None else {}
    record.update(extra)
    record = await trio.to_thread.run_sync(lambda: rec.write_record(record))
    await trio.to_thread.run_sync(lambda: rec.finish(record["status"], record, **extra))
    return record
