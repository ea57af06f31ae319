"""TODO-outline workflows: a workbook whose headlines are TODO items runs as a task list.

The outline is the program (the original's `Workflow.Todo` rules):

- A headline with a TODO keyword is an item; a headline without one is kept only as a group when
  items stand below it (prose headlines are not work). An item with items below it is composite,
  the others are leaves.
- `:ORDERED: t` (t/true/yes) on a parent runs its children in sequence, and stops at the first
  child that does not end DONE (the ones after it stay TODO, "waits for <id>", as Org's ORDERED
  means); without it the children run in parallel, at most `max_parallel` (≤ 8) leaves at once.
- A leaf is checked by `:DONE-WHEN:` (a shell line; property drawer or a bare `:DONE-WHEN: …`
  line) or else by a `#+begin_src sh :check` block in its body. The check runs in the agent's WASI
  shell (`workbooks.agent.shell.run_pipeline`: every command is WebAssembly, no native process),
  in the run's folder (or the `workdir` given), and passes when it exits 0. A check that passes
  at once makes the leaf DONE; one that fails is handed to `agent_leaf` when there is one and
  checked again (DONE or FAILED), else the leaf is FAILED.
- A leaf without a check is handed to `agent_leaf(item) -> (ok, result)` (DONE when ok, else
  FAILED: the agent's own word stands, as in the original); with no agent it stays TODO with the
  reason "no check and no agent".
- A composite item is DONE when all its children are, else PARTIAL. Items whose keyword is a done
  keyword (DONE, CANCELLED, CANCELED, or those after `|` in `#+TODO:`) are skipped, and so are the
  items an earlier run in the same folder finished: a second run resumes.

Records in the run folder (the same files as an agent run, so telemetry and the ledger read
them): `_steps.jsonl`, one line per check or agent call ({step, agent, tool: "check"|"agent",
args, output ≤ 200, exit_code, error, dur_ms, ts}), and `_status.json`, rewritten as the run
goes: {status, stage: running → done|error (or cancelled), slug, kind: "todo", tasks: [{id, idx,
title, state, output ≤ 600, parent, kind, reason?}], steps, result, ...}. The tasks list is what a
resumed run reads back. At the end `_steps.jsonl` is sealed by the ledger when the tenant's repo
exists.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import structlog

from workbooks.errors import BadRequest, Conflict, WorkbooksError

log = structlog.get_logger()

DONE_KEYWORDS = frozenset({"DONE", "CANCELLED", "CANCELED"})  # always done (the original's)
ORDERED_VALUES = frozenset({"t", "true", "yes"})
SHELL_LANGS = frozenset({"sh", "bash", "shell"})
MAX_ITEMS = 10_000  # items in one outline
MAX_DEPTH = 100  # nesting of items
MAX_PARALLEL = 8
OUTPUT_CHARS = 600  # a task's output in _status.json (the original's)
EVENT_OUTPUT_CHARS = 200
SLUG_CHARS = 48
STATUS_EVERY_S = 0.2  # _status.json is rewritten at most this often while running
AGENT_NAME = "todo"

# task states in _status.json
DONE, FAILED, PARTIAL, TODO = "DONE", "FAILED", "PARTIAL", "TODO"

AgentLeaf = Callable[[dict], Awaitable[tuple[bool, str]]]
OnEvent = Callable[[dict], Awaitable[None]]


class TodoError(BadRequest):
    """The outline cannot run as a TODO workflow (no items, too many, too deep)."""

    code = "bad_todo_outline"


@dataclass
class Item:
    id: str
    idx: int
    title: str
    level: int
    line: int
    keyword: str | None  # the headline's TODO keyword
    done: bool  # the keyword is a done keyword
    props: dict[str, str]
    body: str
    ordered: bool
    check: dict | None  # {source: DONE-WHEN|src, line, lang?, error?}
    parent: str | None = None
    children: list["Item"] = field(default_factory=list)

    @property
    def kind(self) -> str:
        if self.children:
            return "composite"
        return "check" if self.check else "agent"

    def to_plan(self) -> dict:
        return {"id": self.id, "idx": self.idx, "title": self.title, "level": self.level, "line": self.line,
                "state": self.keyword, "done": self.done, "kind": self.kind, "ordered": self.ordered,
                "check": self.check, "parent": self.parent, "children": [c.to_plan() for c in self.children]}


# ── the outline ──────────────────────────────────────────────────────────────────────────────

_TODO_LINE = re.compile(r"^[ \t]*#\+(?:SEQ_|TYP_)?TODO:[ \t]*(.*)$", re.I | re.M)
_BEGIN = re.compile(r"^[ \t]*#\+begin_(\w+)(?:[ \t]+(.*))?$", re.I)
_END = re.compile(r"^[ \t]*#\+end_(\w+)[ \t]*$", re.I)
_BARE_PROP = re.compile(r"^[ \t]*:([A-Za-z][\w-]*):[ \t]+(.+?)[ \t]*$")
_ESCAPED = re.compile(r"^([ \t]*),(\*|#\+)")


def done_keywords(org: str) -> frozenset[str]:
    """DONE/CANCELLED/CANCELED plus every done keyword of the `#+TODO:` lines (after `|`, or the
    last word of a line without one, as Org reads them; `DONE(d!)` shortcuts dropped)."""
    done = set(DONE_KEYWORDS)
    for m in _TODO_LINE.finditer(org):
        words = [re.sub(r"\(.*\)$", "", w) for w in m.group(1).split()]
        words = [w for w in words if w]
        if "|" in words:
            done.update(w for w in words[words.index("|") + 1:] if w != "|")
        elif words:
            done.add(words[-1])
    return frozenset(done)


def slug(title: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:SLUG_CHARS].strip("-")
    return s or "item"


def _blocks(body_lines: list[str]) -> tuple[list[tuple[str, str, list[str]]], list[str]]:
    """The body's terminated `#+begin_X … #+end_X` blocks as (kind, header, lines), and the lines
    outside them."""
    blocks, outside, i = [], [], 0
    while i < len(body_lines):
        m = _BEGIN.match(body_lines[i])
        if m:
            kind = m.group(1).lower()
            j = i + 1
            while j < len(body_lines):
                e = _END.match(body_lines[j])
                if e and e.group(1).lower() == kind:
                    break
                j += 1
            if j < len(body_lines):
                blocks.append((kind, (m.group(2) or "").strip(), body_lines[i + 1:j]))
                i = j + 1
                continue
        outside.append(body_lines[i])
        i += 1
    return blocks, outside


def _check_of(props: dict[str, str], blocks) -> dict | None:
    for key in ("DONE-WHEN", "DONE_WHEN"):
        line = (props.get(key) or "").strip()
        if line:
            return {"source": "DONE-WHEN", "line": line}
    for kind, header, lines in blocks:
        if kind != "src":
            continue
        words = header.split()
        if ":check" not in [w.lower() for w in words]:
            continue
        at = [w.lower() for w in words].index(":check")
        value = words[at + 1].lower() if at + 1 < len(words) and not words[at + 1].startswith(":") else ""
        if value in ("no", "nil", "false"):
            continue
        lang = words[0] if words and not words[0].startswith(":") else "sh"
        text = "\n".join(_ESCAPED.sub(r"\1\2", ln) for ln in lines).strip()
        check = {"source": "src", "lang": lang, "line": text}
        if lang.lower() not in SHELL_LANGS:
            check["error"] = f"a :check block in {lang!r} cannot run: checks are shell lines (sh)"
        elif not text:
            check["error"] = "the :check block is empty"
        return check
    return None


def build_outline(org: str, headlines: list[dict]) -> list[Item]:
    """The items (roots, children linked) from the kernel's `parse_headlines` rows and the text."""
    if not isinstance(headlines, list):
        raise TodoError("the kernel's headlines are not a list")
    done = done_keywords(org)
    lines = org.split("\n")
    rows = [h for h in headlines if isinstance(h, dict) and isinstance(h.get("line"), int)]
    rows.sort(key=lambda h: h["line"])
    # every headline, with its parent by level, so prose groups above items are kept
    nodes: list[dict] = []
    stack: list[dict] = []
    for n, h in enumerate(rows):
        level = int(h.get("level") or 1)
        end = rows[n + 1]["line"] - 1 if n + 1 < len(rows) else len(lines)
        node = {"h": h, "level": level, "body": lines[h["line"]:end], "kids": [], "keep": False}
        while stack and stack[-1]["level"] >= level:
            stack.pop()
        node["parent"] = stack[-1] if stack else None
        if node["parent"] is not None:
            node["parent"]["kids"].append(node)
        stack.append(node)
        nodes.append(node)
    for node in reversed(nodes):  # children come after their parent: keep bottom-up
        node["keep"] = bool(node["h"].get("state")) or any(k["keep"] for k in node["kids"])
    kept = [n for n in nodes if n["keep"]]
    if not kept:
        raise TodoError("the workbook has no TODO headlines", hint="mark the headlines to run with TODO")
    if len(kept) > MAX_ITEMS:
        raise TodoError(f"the outline has {len(kept)} TODO items; at most {MAX_ITEMS} run as one workflow")
    used: set[str] = set()
    roots: list[Item] = []
    for idx, node in enumerate(kept):
        h = node["h"]
        title = str(h.get("title") or "")
        blocks, outside = _blocks([ln.rstrip("\r") for ln in node["body"]])
        props: dict[str, str] = {}
        for ln in outside:  # bare `:KEY: value` lines (an agent writes either); the drawer wins
            m = _BARE_PROP.match(ln)
            if m and m.group(1).upper() not in ("PROPERTIES", "END"):
                props[m.group(1).upper()] = m.group(2)
        for k, v in (h.get("props") or {}).items():
            props[str(k).upper()] = str(v)
        base = h.get("id") if isinstance(h.get("id"), str) and 0 < len(h["id"]) <= 128 else slug(title)
        ident, n = base, 1
        while ident in used:
            n += 1
            ident = f"{base}-{n}"
        used.add(ident)
        keyword = h.get("state") or None
        item = Item(id=ident, idx=idx, title=title, level=node["level"], line=h["line"], keyword=keyword,
                    done=keyword in done, props=props, body="\n".join(ln.rstrip("\r") for ln in node["body"]).strip(),
                    ordered=props.get("ORDERED", "").strip().lower() in ORDERED_VALUES,
                    check=_check_of(props, blocks))
        node["item"] = item
        parent = node["parent"]
        depth = 1
        if parent is not None:
            item.parent = parent["item"].id
            parent["item"].children.append(item)
            depth = parent["depth"] + 1
        else:
            roots.append(item)
        node["depth"] = depth
        if depth > MAX_DEPTH:
            raise TodoError(f"the outline nests TODO items {depth} deep (line {h['line']}); at most {MAX_DEPTH}")
    return roots


def _walk(items: list[Item]):
    stack = list(reversed(items))
    while stack:
        it = stack.pop()
        yield it
        stack.extend(reversed(it.children))


def todo_plan(org: str) -> dict:
    """The outline as a tree: {items: [{id, title, state, done, kind (composite|check|agent),
    check, ordered, children, ...}], count, done_keywords}. Uses the in-process kernel; raises
    TodoError (bad_todo_outline, 400) when the workbook cannot run as a TODO workflow."""
    from workbooks.oql import default_kernel

    if not isinstance(org, str):
        raise BadRequest("the workbook must be text")
    roots = build_outline(org, default_kernel().parse_headlines(org))
    return {"items": [r.to_plan() for r in roots], "count": sum(1 for _ in _walk(roots)),
            "done_keywords": sorted(done_keywords(org))}


async def _headlines(org: str, oql: Any) -> list:
    import trio

    if oql is None or (hasattr(oql, "parse_headlines") and hasattr(oql, "call_json")):
        if oql is None:
            from workbooks.oql import default_kernel

            oql = default_kernel()
        return await trio.to_thread.run_sync(oql.parse_headlines, org)
    raw = await oql.call("parse_headlines", [org])
    return json.loads(raw)


# ── the run ──────────────────────────────────────────────────────────────────────────────────

def _cap(text: Any, n: int) -> str:
    s = text if isinstance(text, str) else str(text)
    return s[:n]


class _Run:
    def __init__(self, roots: list[Item], run_dir: Path, workdir: Path, *, tenant: str, data_dir: Path,
                 agent_leaf: AgentLeaf | None, max_parallel: int, on_event: OnEvent | None, secrets, previous: dict,
                 timeout_s: float):
        import trio

        from workbooks.agent.records import Recorder, read_steps

        self.roots = roots
        self.items = {it.id: it for it in _walk(roots)}
        self.run_dir = run_dir
        self.workdir = workdir
        self.tenant = tenant
        self.data_dir = data_dir
        self.agent_leaf = agent_leaf
        self.on_event = on_event
        self.secrets = secrets
        self.timeout_s = timeout_s
        self.limiter = trio.CapacityLimiter(max_parallel)
        self.recorder = Recorder(run_dir, agent=AGENT_NAME, secrets=secrets)
        self.step_no = len(read_steps(run_dir))
        self.steps_this_run = 0
        self.step_lock = trio.Lock()
        self.dirty = trio.Event()
        self.tasks: dict[str, dict] = {}
        for it in self.items.values():
            rec = {"id": it.id, "idx": it.idx, "title": it.title, "state": TODO, "output": "",
                   "parent": it.parent, "kind": it.kind}
            prev = previous.get(it.id)
            if (prev is not None and not it.children and prev.get("state") == DONE
                    and prev.get("title") == it.title and prev.get("kind") == it.kind):
                rec.update(state=DONE, output=_cap(prev.get("output") or "", OUTPUT_CHARS),
                           reason="DONE in an earlier run")
            if it.done:
                rec.update(state=DONE, output=f"(already {it.keyword})")
            self.tasks[it.id] = rec
        for it in self.items.values():
            if it.done:  # a finished group's items are not run
                for sub in _walk(it.children):
                    self.tasks[sub.id].setdefault("reason", f"under {it.keyword} {it.id}")
        self.resumed = {i for i, r in self.tasks.items() if r.get("reason") == "DONE in an earlier run"}

    # records -------------------------------------------------------------------------------
    def snapshot(self) -> list[dict]:
        return sorted((dict(r) for r in self.tasks.values()), key=lambda r: r["idx"])

    async def emit(self, ev: dict) -> None:
        if self.on_event is None:
            return
        try:
            await self.on_event(self.secrets.redact_obj(ev))
        except Exception as e:  # noqa: BLE001 - a listener's failure never stops the run
            log.warning("todo_event_failed", run=self.run_dir.name, error=f"{type(e).__name__}: {e}"[:200])

    async def settle(self, it: Item, state: str, output: str = "", reason: str | None = None) -> str:
        rec = self.tasks[it.id]
        rec["state"] = state
        rec["output"] = _cap(output, OUTPUT_CHARS)
        if reason:
            rec["reason"] = reason
        else:
            rec.pop("reason", None)
        self.dirty.set()
        await self.emit({"type": "item", "id": it.id, "title": it.title, "kind": it.kind, "state": state,
                         "output": _cap(output, EVENT_OUTPUT_CHARS), "reason": reason})
        return state

    async def step(self, tool: str, args: dict, output: str, exit_code: int, error: str | None, dur_ms: float) -> None:
        import trio

        async with self.step_lock:
            n = self.step_no
            self.step_no += 1
            self.steps_this_run += 1
            line = await trio.to_thread.run_sync(self.recorder.step, {
                "step": n, "tool": tool, "args": args, "output": output, "exit_code": exit_code,
                "error": error, "dur_ms": round(dur_ms, 3)})
        await self.emit({"type": "step", **line})

    # the tree ------------------------------------------------------------------------------
    async def run_set(self, items: list[Item], ordered: bool) -> None:
        import trio

        if ordered:
            for n, it in enumerate(items):
                state = await self.run_item(it)
                if state != DONE:
                    for later in items[n + 1:]:
                        await self.block(later, f"waits for {it.id} ({state})")
                    return
            return
        async with trio.open_nursery() as nursery:
            for it in items:
                nursery.start_soon(self.run_item, it)

    async def block(self, it: Item, reason: str) -> None:
        for sub in _walk([it]):
            if self.tasks[sub.id]["state"] != DONE:
                self.tasks[sub.id]["reason"] = reason
        self.dirty.set()

    async def run_item(self, it: Item) -> str:
        if it.done or it.id in self.resumed:
            return DONE
        if it.children:
            await self.run_set(it.children, it.ordered)
            state = DONE if all(self.tasks[c.id]["state"] == DONE for c in it.children) else PARTIAL
            done = sum(1 for c in it.children if self.tasks[c.id]["state"] == DONE)
            return await self.settle(it, state, f"(composite: {done}/{len(it.children)} DONE)")
        async with self.limiter:
            return await self.run_leaf(it)

    async def run_leaf(self, it: Item) -> str:
        check = it.check
        if check is not None and check.get("error"):
            return await self.settle(it, FAILED, check["error"], reason="check cannot run")
        if check is not None:
            code, out = await self.run_check(it)
            if code == 0:
                return await self.settle(it, DONE, out or "(check passed)")
            if self.agent_leaf is None:
                return await self.settle(it, FAILED, out, reason=f"check failed (exit {code})")
            ok, result = await self.run_agent(it)
            code, out = await self.run_check(it)
            if code == 0:
                return await self.settle(it, DONE, result or out or "(check passed)")
            why = f"check failed after the agent (exit {code})" + ("" if ok else "; the agent failed too")
            return await self.settle(it, FAILED, out or result, reason=why)
        if self.agent_leaf is None:
            return await self.settle(it, TODO, "", reason="no check and no agent")
        ok, result = await self.run_agent(it)
        return await self.settle(it, DONE if ok else FAILED, result, reason=None if ok else "the agent did not finish")

    async def run_check(self, it: Item) -> tuple[int, str]:
        import trio

        from workbooks.agent.runs import RECORD_FILES
        from workbooks.agent.shell import run_pipeline
        from workbooks.agent.tools.base import ToolContext

        line = it.check["line"]
        read_only = RECORD_FILES if self.workdir == self.run_dir else frozenset()
        ctx = ToolContext(tenant=self.tenant, run_id=self.run_dir.name, data_dir=self.data_dir, workdir=self.workdir,
                          secrets=self.secrets, read_only=read_only, deadline=trio.current_time() + self.timeout_s)
        t0 = time.monotonic()
        try:
            res = await run_pipeline(ctx, line, None)
            code, out, err = res.exit_code, res.output, res.error
        except Exception as e:  # noqa: BLE001 - a check that cannot run is a failed check, not a failed run
            code, out, err = 1, f"error: the check could not run: {type(e).__name__}: {e}", "check_error"
        await self.step("check", {"item": it.id, "pipeline": line}, out, code, err, (time.monotonic() - t0) * 1000)
        return code, out

    async def run_agent(self, it: Item) -> tuple[bool, str]:
        parents, p = [], it.parent
        while p is not None:
            parents.insert(0, self.items[p].title)
            p = self.items[p].parent
        item = {"id": it.id, "title": it.title, "body": it.body, "task": f"{it.title}\n\n{it.body}".strip(),
                "props": dict(it.props), "check": it.check["line"] if it.check else None, "parents": parents,
                "workdir": str(self.workdir), "run_dir": str(self.run_dir)}
        t0 = time.monotonic()
        try:
            answer = await self.agent_leaf(item)
            if not (isinstance(answer, (tuple, list)) and len(answer) == 2 and isinstance(answer[0], bool)):
                raise TypeError(f"agent_leaf returned {type(answer).__name__}, not (ok: bool, result: str)")
            ok, result = answer[0], answer[1] if isinstance(answer[1], str) else str(answer[1])
            err = None if ok else "agent_failed"
        except Exception as e:  # noqa: BLE001 - the agent's failure is the leaf's, not the run's
            ok, result, err = False, f"agent error: {type(e).__name__}: {e}", "agent_error"
        await self.step("agent", {"item": it.id, "task": it.title}, result, 0 if ok else 1, err,
                        (time.monotonic() - t0) * 1000)
        return ok, result

    # status --------------------------------------------------------------------------------
    def counts(self) -> dict:
        out = {DONE: 0, FAILED: 0, PARTIAL: 0, TODO: 0}
        for r in self.tasks.values():
            out[r["state"] if r["state"] in out else TODO] += 1
        return out

    async def write_status(self, status: str, **extra) -> dict:
        import trio

        tasks = self.snapshot()
        steps = self.step_no
        return await trio.to_thread.run_sync(lambda: self.recorder.status(
            status, steps, extra.pop("result", None), None, stage=status, slug=self.run_dir.name, id=self.run_dir.name, kind="todo", tenant=self.tenant,
            tasks=tasks, counts=self.counts(), **extra))

    async def flusher(self, task_status=None) -> None:
        import trio

        if task_status is not None:
            task_status.started()
        while True:
            await self.dirty.wait()
            self.dirty = trio.Event()
            await self.write_status("running")
            await trio.sleep(STATUS_EVERY_S)


def _lock_dir(run_dir: Path) -> int:
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Conflict(f"run {run_dir.name} is already running", hint="wait for it to end, or start a new run") from None
    return fd


async def run_todo(org: str, run_dir: Path, *, tenant: str, data_dir: Path, oql=None, agent_leaf: AgentLeaf | None = None,
                   max_parallel: int = MAX_PARALLEL, on_event: OnEvent | None = None, workdir: Path | None = None,
                   secrets=None) -> dict:
    """Run the TODO outline `org` with its records in `run_dir` and return the final `_status.json`.

    `workdir` (default `run_dir`) is where checks run and what agents get (the workbook's tree);
    `secrets` (a `workbooks.agent.secrets.Secrets`) are redacted from every record. A second call
    with the same `run_dir` resumes: items DONE there are skipped. Bad arguments raise (BadRequest,
    Conflict when the folder's run is going); an outline that cannot run ends as status "error"
    with {error, error_code}; cancelling the call leaves status "cancelled"."""
    import trio

    from workbooks.agent.records import read_status
    from workbooks.agent.secrets import Secrets
    from workbooks.gitstore.tenant import validate_tenant
    from workbooks.workflow.types import Limits

    validate_tenant(tenant)
    if not isinstance(org, str):
        raise BadRequest("the workbook must be text")
    if isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or not 1 <= max_parallel <= MAX_PARALLEL:
        raise BadRequest(f"max_parallel must be 1..{MAX_PARALLEL}")
    if agent_leaf is not None and not callable(agent_leaf):
        raise BadRequest("agent_leaf must be an async callable item -> (ok, result)")
    run_dir = Path(os.path.abspath(run_dir))
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    workdir = Path(os.path.realpath(workdir if workdir is not None else run_dir))
    if not workdir.is_dir():
        raise BadRequest(f"the working directory {workdir} is not a folder")
    if os.path.realpath(run_dir) == str(workdir):
        workdir = run_dir = Path(os.path.realpath(run_dir))
    secrets = secrets or Secrets()
    timeout_s = Limits.from_env().timeout_s
    fd = _lock_dir(run_dir)
    t0 = time.monotonic()
    run = None
    try:
        from workbooks.agent.records import Recorder

        tasks = (read_status(run_dir) or {}).get("tasks")
        previous = {t["id"]: t for t in (tasks if isinstance(tasks, list) else [])
                    if isinstance(t, dict) and isinstance(t.get("id"), str)}
        try:
            roots = build_outline(org, await _headlines(org, oql))
        except WorkbooksError as e:
            rec = Recorder(run_dir, agent=AGENT_NAME, secrets=secrets)
            doc = await trio.to_thread.run_sync(lambda: rec.status(
                "error", 0, None, None, stage="error", slug=run_dir.name, id=run_dir.name, kind="todo", tenant=tenant,
                error=e.message,
                error_code=e.code, started_at=int(time.time()), ended_at=int(time.time())))
            log.warning("todo_run_refused", tenant=tenant, run=run_dir.name, code=e.code)
            return doc
        run = _Run(roots, run_dir, workdir, tenant=tenant, data_dir=Path(data_dir), agent_leaf=agent_leaf,
                   max_parallel=max_parallel, on_event=on_event, secrets=secrets, previous=previous, timeout_s=timeout_s)
        log.info("todo_run_start", tenant=tenant, run=run_dir.name, items=len(run.items), resumed=len(run.resumed))
        await run.write_status("running", started_at=int(time.time()), ended_at=None, error=None, error_code=None,
                               ledger=None, state=None)
        await run.emit({"type": "status", "status": "running"})
        async with trio.open_nursery() as nursery:
            await nursery.start(run.flusher)
            await run.run_set(roots, False)
            nursery.cancel_scope.cancel()
        counts = run.counts()
        top = DONE if all(run.tasks[r.id]["state"] == DONE for r in roots) else PARTIAL
        result = f"{top}: {counts[DONE]}/{len(run.tasks)} DONE" + "".join(
            f", {counts[k]} {k}" for k in (FAILED, PARTIAL, TODO) if counts[k])
        ledger = await _seal(Path(data_dir), tenant, run_dir)
        doc = await run.write_status("done", result=result, state=top, ended_at=int(time.time()), ledger=ledger,
                                     ms=round((time.monotonic() - t0) * 1000, 1))
        log.info("todo_run_end", tenant=tenant, run=run_dir.name, status="done", state=top, steps=run.steps_this_run,
                 dur_ms=round((time.monotonic() - t0) * 1000, 1), **{k.lower(): v for k, v in counts.items()})
        await run.emit({"type": "status", "status": "done", "state": top, "result": result})
        return doc
    except BaseException as e:
        if run is None:
            raise
        cancelled = isinstance(e, trio.Cancelled) or not isinstance(e, Exception)
        with trio.CancelScope(shield=True):
            status = "cancelled" if cancelled else "error"
            message = None if cancelled else f"{type(e).__name__}: {e}"[:500]
            try:
                ledger = await _seal(Path(data_dir), tenant, run_dir)
                doc = await run.write_status(status, ended_at=int(time.time()), error=message,
                                             error_code=None if cancelled else "internal", ledger=ledger)
            except Exception:  # noqa: BLE001 - the original failure is what the caller must see
                doc = None
            log.error("todo_run_end", tenant=tenant, run=run_dir.name, status=status, error=message)
        if cancelled or doc is None:
            raise
        return doc
    finally:
        os.close(fd)


async def _seal(data_dir: Path, tenant: str, run_dir: Path) -> dict | None:
    """Seal `_steps.jsonl` with the tenant's key when the tenant's repo exists (None otherwise)."""
    import trio

    from workbooks.gitstore import GitStore
    from workbooks.ledger.api import seal_run

    def go():
        if not GitStore(data_dir, tenant).exists():
            return None
        steps = run_dir / "_steps.jsonl"
        if not steps.exists():
            steps.touch(0o600)
        d = seal_run(data_dir, tenant, run_dir)
        return {k: d.get(k) for k in ("head", "count", "did", "checkpoint") if k in d}

    try:
        return await trio.to_thread.run_sync(go)
    except Exception as e:  # noqa: BLE001 - an unsealed run is reported, the run itself stands
        log.error("todo_ledger_seal_failed", tenant=tenant, run=run_dir.name, error=f"{type(e).__name__}: {e}"[:300])
        return None
