"""`wbx workflow plan|run`: a workbook's `:workflow:` headlines, planned or run on this machine.

    wbx workflow plan FILE|-        plan records [{workflow, schedule, tasks, sub_workflows}]
    wbx workflow run FILE|- [--input TEXT|@FILE] [--world NAME] [--out DIR] [--data DIR] [--server]

`run` runs one world (the only one, or `--world NAME`, which may name a sub-workflow) here, with the
same engine and step runner as the server (workbooks.workflow.engine + local_exec), and prints its
run record as JSON on stdout; a step-by-step progress display goes to stderr when it is a terminal.
Exit 0 when every step succeeded, 1 otherwise (2 for a plan that cannot run or bad arguments, 4
for an unknown --world).

Where the run is recorded: `--out DIR` (a new or empty folder), or with `--data DIR` a fresh
`DIR/wb-runs/<tenant>/wf-<n>` (sealed in the ledger when the tenant has a repo there); otherwise a
temporary folder that is removed afterwards, so a local run is a dry run that touches nothing. Built
modules are cached in `<data>/build/cache` (`--data`, else `$WB_DATA`), else `~/.cache/workbooks/build`.

`--input` is the workflow's input: TEXT as given, `@FILE` a file's bytes (`@-` stdin, when the
workbook is not read from stdin; `@@…` a text starting with `@`). At most 64 MB.

`--server` runs it on the control plane instead (`--url`, `$WB_CONTROL_URL`; keys as `wbx agent`):
POST /api/workflow {org, input (text, or {"base64": …} for bytes), world?} → 202 {run, status},
then GET /api/workflow/<run> until it is no longer running, and prints its run record (or, when
there is none, that answer).

`#+INCLUDE:`/`#+SETUPFILE:` lines are expanded from the workbook's own folder, as `wbx render` does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from workbooks.cli.output import HUMAN, Output, Style
from workbooks.errors import Conflict, NotFound, UsageError, WorkbooksError

POLL_FIRST_S, POLL_MAX_S = 0.1, 1.0


# -- the workbook -----------------------------------------------------------------------------
def _org(ns) -> bytes:
    """The workbook with its `#+INCLUDE:`/`#+SETUPFILE:` lines expanded (warnings on stderr)."""
    from workbooks.cli.kernel_verbs import base_dir_of, read_org
    from workbooks.oql.setupfile import expand_bytes

    raw = read_org(ns.file)
    org, diags = expand_bytes(raw, base_dir_of(ns.file))
    if diags and ns.mode == HUMAN:
        st = Style(sys.stderr.isatty())
        for d in diags:
            where = f"{d['file']}:" if d.get("file") else "line "
            where = f"{where}{d['line']}: " if d.get("line") else ""
            sys.stderr.write(f"{st.yellow('wbx: warning:')} {where}{d['message']}\n")
    return org


def _plan(org: bytes) -> dict:
    from workbooks.oql import default_kernel

    return default_kernel().call_json("tangle_plan", org)


def _all_worlds(worlds: list, depth: int = 0):
    for w in worlds or []:
        if isinstance(w, dict):
            yield w, depth
            yield from _all_worlds(w.get("workflows") or [], depth + 1)


def pick_world(plan: dict, name: str | None) -> dict:
    """The world to run: the only top-level one, or the one named (top-level first, then nested)."""
    from workbooks.workflow.engine import PlanError

    top = [w for w in plan.get("worlds") or [] if isinstance(w, dict)]
    if name is None:
        if len(top) == 1:
            return top[0]
        if not top:
            raise PlanError("the workbook has no :workflow: headline", hint="tag a headline :workflow: and give it "
                            ":component: children with source blocks")
        names = ", ".join(repr(w.get("name")) for w in top[:20])
        raise UsageError(f"the workbook has {len(top)} workflows ({names}); choose one with --world NAME")
    found = [w for w, depth in _all_worlds(top) if w.get("name") == name]
    if not found:
        names = ", ".join(repr(w.get("name")) for w, _ in list(_all_worlds(top))[:20]) or "none"
        raise NotFound(f"no workflow named {name!r} in the workbook (workflows: {names})")
    depths = [d for w, d in _all_worlds(top) if w.get("name") == name]
    shallowest = [w for w, d in zip(found, depths) if d == min(depths)]
    if len(shallowest) > 1:
        raise UsageError(f"{len(shallowest)} workflows are named {name!r}; rename one to run it")
    return shallowest[0]


def _read_input(ns) -> bytes:
    from workbooks.cli.kernel_verbs import read_org
    from workbooks.workflow.types import INPUT_MAX

    spec = ns.input
    if spec is None:
        return b""
    if spec.startswith("@@"):
        data = spec[1:].encode("utf-8", "surrogateescape")
    elif spec.startswith("@"):
        path = spec[1:]
        if not path:
            raise UsageError("--input @FILE needs a file name (or @- for stdin)")
        if path == "-" and ns.file == "-":
            raise UsageError("the workbook is read from stdin already; give --input TEXT or @FILE")
        data = read_org(path)  # the same bounded, non-blocking read as a workbook (WB_MAX_INPUT_MB)
    else:
        data = spec.encode("utf-8", "surrogateescape")
    if len(data) > INPUT_MAX:
        raise UsageError(f"--input is larger than a step's {INPUT_MAX >> 20} MB input limit")
    return data


# -- plan ---------------------------------------------------------------------------------------
def human_plan_records(recs: list, st: Style) -> str:
    lines: list[str] = []

    def one(r: dict, depth: int) -> None:
        pad = "  " * depth
        sched = r.get("schedule")
        s = ""
        if isinstance(sched, dict) and sched:
            s = "  " + st.dim(f"cron {sched['cron']}" if "cron" in sched else "scheduled " + json.dumps(sched))
        lines.append(f"{pad}{st.bold(str(r.get('workflow')))}{s}")
        tasks = r.get("tasks") or []
        lines.append(f"{pad}  tasks: {', '.join(str(t) for t in tasks) if tasks else st.dim('(none)')}")
        for sub in r.get("sub_workflows") or []:
            one(sub, depth + 1)

    for r in recs:
        one(r, 0)
    return "\n".join(lines) if lines else st.dim("(no workflows)")


def cmd_plan(ns) -> Output:
    from workbooks.workflow.engine import plan_records

    return Output(data=plan_records(_plan(_org(ns))), human=human_plan_records)


# -- run (here) ---------------------------------------------------------------------------------
class Progress:
    """What a person at a terminal sees while a local run goes: one line per finished step."""

    def __init__(self, top: str, stream=None):
        self.top = top  # the world run; steps of sub-workflows are shown as "sub / step"
        self.out = stream or sys.stderr
        self.st = Style(True)
        self.t0 = time.monotonic()

    async def __call__(self, e: dict) -> None:
        st, kind = self.st, e.get("type")
        if kind == "step":
            status = e.get("status")
            if status == "running":
                return
            where = f"{e.get('workflow')} / " if e.get("workflow") != self.top else ""
            name = f"{where}{e.get('component')}"
            if status == "ok":
                ms = f"{e.get('ms') or 0:.0f} ms"
                self.out.write(f"{st.green('✓')} {st.bold(name)}  {st.dim(ms)}\n")
            elif status == "skipped":
                self.out.write(f"{st.dim('–')} {st.dim(name + '  skipped')}\n")
            else:
                self.out.write(f"{st.red('✗')} {st.bold(name)}  {st.red(str(e.get('code')))}\n")
        elif kind == "done":
            secs = time.monotonic() - self.t0
            word = st.green("done") if e.get("status") == "done" else st.red(str(e.get("status")))
            self.out.write(f"{st.dim('▸')} {word} {st.dim(f'in {secs:.1f}s')}\n")
        self.out.flush()


def _step_dirs(run_dir: Path, tenant: str, workflow: str, run_id: str, data_dir: Path, cache_dir: Path):
    """ctx_for: a fresh, private folder per step under the run folder, and the step's context."""
    from workbooks.workflow.types import Limits, StepContext

    from workbooks.workflow.records import StepDirs

    limits = Limits.from_env()
    allow = frozenset(h.strip().lower() for h in os.environ.get("WB_FETCH_ALLOW_HOSTS", "").split(",") if h.strip())
    step_dir = StepDirs(run_dir)

    def ctx_for(comp):
        d = step_dir(comp.name)
        return StepContext(tenant=tenant, workflow=workflow, run_id=run_id, step_dir=d, data_dir=data_dir,
                           allow_hosts=allow, limits=limits, cache_dir=cache_dir)

    return ctx_for


def _out_dir(path: str) -> Path:
    """--out: a new folder, or an empty one (run records are never written over)."""
    p = Path(path)
    try:
        p.mkdir(mode=0o700, parents=True)
        return p
    except FileExistsError:
        pass
    except OSError as e:
        raise UsageError(f"--out {path}: {e.strerror or e}") from None
    if not p.is_dir() or p.is_symlink():
        raise UsageError(f"--out {path}: not a folder")
    if any(p.iterdir()):
        raise Conflict(f"--out {path} is not empty; a run's records are never written over",
                       hint="give a new folder")
    return p


def _tenant(ns) -> str:
    from workbooks.gitstore.tenant import InvalidTenant, validate_tenant

    name = ns.tenant or os.environ.get("WB_TENANT") or "dev"
    try:
        return validate_tenant(name)
    except InvalidTenant as e:
        raise UsageError(f"tenant: {e.message}", hint=e.hint) from None


def _cache_dir(data: Path | None) -> Path:
    if data is not None:
        return data / "build" / "cache"
    if os.environ.get("WB_DATA"):
        return Path(os.environ["WB_DATA"]).expanduser() / "build" / "cache"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "workbooks" / "build"


def _executor():
    try:
        from workbooks.workflow.local_exec import LocalExecutor
    except ImportError as e:
        raise WorkbooksError(f"the local step runner is not available: {e}") from None
    return LocalExecutor()


def run_locally(ns, world: dict, data: bytes) -> dict:
    import trio

    from workbooks.workflow.engine import check_world, run_workflow_dir

    checked = check_world(world)  # a plan that cannot run is refused before any folder is made
    tenant = _tenant(ns)
    data_dir = Path(ns.data).expanduser().absolute() if ns.data else None
    temp = None
    if ns.out:
        run_dir = _out_dir(ns.out).absolute()
        run_id = run_dir.name
    elif data_dir is not None:
        from workbooks.agent.runs import allocate

        run_id, run_dir = allocate(data_dir, tenant, prefix="wf")
    else:
        temp = Path(tempfile.mkdtemp(prefix="wbx-workflow-"))
        run_dir, run_id = temp / "run", "local"
        run_dir.mkdir(mode=0o700)
    step_data = data_dir or run_dir
    progress = Progress(checked.name) if sys.stderr.isatty() else None
    try:
        ctx_for = _step_dirs(run_dir, tenant, checked.name, run_id, step_data, _cache_dir(data_dir))
        executor = _executor()

        stopped: list[int] = []

        async def main():
            # Ctrl-C / SIGTERM cancel the run: it is recorded as cancelled (a step already running
            # ends within its own limits), then wbx exits 130
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    async def watch():
                        async for signum in signals:
                            stopped.append(signum)
                            if sys.stderr.isatty():
                                sys.stderr.write("\nstopping: the running steps end within their limits\n")
                            nursery.cancel_scope.cancel()
                            return

                    nursery.start_soon(watch)
                    try:
                        return await run_workflow_dir(run_dir, checked, data, executor=executor, ctx_for=ctx_for,
                                                      tenant=tenant, on_event=progress, data_dir=data_dir,
                                                      run_id=run_id)
                    finally:
                        nursery.cancel_scope.cancel()
                        with trio.CancelScope(shield=True):
                            aclose = getattr(executor, "aclose", None)
                            if aclose is not None:
                                await aclose()

        record = trio.run(main)
        if stopped or record is None:
            raise KeyboardInterrupt
        if temp is not None:
            record.pop("run", None)  # the folder is gone with the run
        elif progress is not None:
            sys.stderr.write(Style(True).dim(f"▸ records in {run_dir}\n"))
        return record
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


# -- run (on the server) ------------------------------------------------------------------------
def run_on_server(ns, org: bytes, data: bytes) -> dict:
    import base64

    from workbooks.cli.agent_verbs import request

    try:
        text = org.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("the workbook is not UTF-8") from None
    body: dict = {"org": text}
    try:
        body["input"] = data.decode("utf-8")
    except UnicodeDecodeError:
        body["input"] = {"base64": base64.b64encode(data).decode("ascii")}
    if ns.world is not None:
        body["world"] = ns.world
    started = request(ns, "POST", "/api/workflow", body)
    run_id = started.get("run")
    if not isinstance(run_id, str) or not re.fullmatch(r"wf-[1-9][0-9]{0,11}", run_id):
        raise WorkbooksError(f"the control plane answered without a run id: {json.dumps(started)[:200]}")
    if sys.stderr.isatty():
        sys.stderr.write(Style(True).dim(f"▸ {run_id} started on the server\n"))
    wait = POLL_FIRST_S
    try:
        while True:
            view = request(ns, "GET", f"/api/workflow/{run_id}")
            if view.get("status") not in ("running", "queued"):
                record = view.get("record")
                if isinstance(record, dict):  # the run record, as a local run prints it
                    return {**record, "run": run_id, "status": view["status"]}
                return view  # no record (cancelled, interrupted, failed to start): the status as it is
            time.sleep(wait)
            wait = min(POLL_MAX_S, wait * 1.5)
    except KeyboardInterrupt:
        sys.stderr.write(f"\nstopped following {run_id}; it goes on on the server\n")
        raise


def cmd_run(ns) -> Output:
    org = _org(ns)
    data = _read_input(ns)
    if ns.server:
        if ns.out:
            raise UsageError("--out is for local runs; the server keeps its own records")
        record = run_on_server(ns, org, data)
    else:
        record = run_locally(ns, pick_world(_plan(org), ns.world), data)
    return Output(data=record, exit_code=0 if record.get("status") == "done" else 1)


def cmd_schedule(ns) -> Output:
    """`wbx workflow schedule`: every scheduled world and its next fire, from the scheduler's status."""
    from workbooks.workflow.scheduler import schedule_table

    data = Path(ns.data or os.environ.get("WB_DATA") or "wb-data").expanduser()
    if not data.is_dir():
        raise NotFound(f"no data dir {data}", hint="--data DIR or $WB_DATA: the folder `wbx serve` uses")
    rows = schedule_table(data, ns.tenant)

    def human(rows, st):
        if not rows:
            return "no scheduled workflows (or the scheduler has not run yet: `wbx serve` runs it)"
        out = [f"{'tenant':<12} {'workbook':<16} {'world':<20} {'when':<16} {'next fire':<26} fires skipped"]
        for r in rows:
            when = r.get("cron") or r.get("at") or "-"
            out.append(f"{str(r.get('tenant')):<12} {str(r.get('workbook')):<16} {str(r.get('world'))[:20]:<20} "
                       f"{str(when)[:16]:<16} {str(r.get('next_fire') or r.get('error') or '-')[:26]:<26} "
                       f"{r.get('fires', 0):>5} {r.get('skipped', 0):>7}")
        return "\n".join(out)

    return Output(data=rows, human=human)


def register(subs) -> None:
    w = subs.add_parser("workflow", help="plan or run a workbook's :workflow: headlines")
    wsubs = w.add_subparsers(dest="workflow_cmd", parser_class=type(w), required=True)
    p = wsubs.add_parser("plan", help="the plan records {workflow, schedule, tasks, sub_workflows}")
    p.add_argument("file", help="an .org file, or - for stdin")
    p.set_defaults(func=cmd_plan)
    p = wsubs.add_parser("run", help="run a workflow here (or --server) and print its run record; "
                                     "exit 0 when every step succeeded, 1 otherwise")
    p.add_argument("file", help="an .org file, or - for stdin")
    p.add_argument("--input", help="the workflow's input: TEXT, @FILE, @- (stdin), @@TEXT for a text starting with @")
    p.add_argument("--world", help="the workflow to run (needed when the workbook has several)")
    p.add_argument("--out", help="record the run in this new or empty folder (default: a temporary one)")
    p.add_argument("--data", help="data dir: record the run as wf-<n> there (and seal it); with --server, "
                                  "where admin.key is")
    p.add_argument("--tenant", help="the tenant (default $WB_TENANT or dev)")
    p.add_argument("--server", action="store_true", help="run it on the control plane instead")
    p.add_argument("--url", help="with --server: the control plane URL (default $WB_CONTROL_URL)")
    p.add_argument("--key", help="with --server: API key (default $WB_API_KEY or $WB_DATA/admin.key)")
    p.set_defaults(func=cmd_run)
    p = wsubs.add_parser("schedule", help="every scheduled world (SCHEDULE / SCHEDULED) and its next fire")
    p.add_argument("--data", help="the data dir (default $WB_DATA or ./wb-data)")
    p.add_argument("--tenant", help="one tenant only")
    p.set_defaults(func=cmd_schedule)
