"""Agents defined in Org: the first `:agent:` headline of a workbook is a runnable agent.

The headline's properties carry `:ID:` (the slug), `:MODEL:`, `:TOOLKITS:` (space-separated toolkit
ids) and `:TAGLINE:`. The system prompt is the agent's `System prompt` sub-section (its deeper
sub-sections included, up to the next headline at its level or above); without one it is the
headline's own body (planning line and drawers left out), then its whole subtree, then a line
naming the agent: an agent never runs with an empty prompt (the original's footgun).

Headlines come from the kernel's `parse_headlines`, so a headline is what Org says it is
(blocks, drawers and indentation are the kernel's business, not a regex's). Lines are counted
on "\\n" only, as the kernel counts them.

`parse_agent(text)` uses this process's kernel (the CLI, tests); `await parse_agent(text,
oql=caller)` asks an async caller with the pool client's signature (`await oql.call(op, args)`,
as `workbooks.web_control.oql`). Deployed workbooks' agents are listed from the control plane's
index (`list_agents`, `find_agent`); the index is only read, never created.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workbooks.errors import NotFound

AGENT_TAG = "agent"
SYSTEM_PROMPT_TITLE = "system prompt"
_SLUG_RUN = re.compile(r"[^a-z0-9]+")
_DRAWER_START = re.compile(r"^[ \t]*:([A-Za-z0-9_@#%-]+):[ \t]*$")
_DRAWER_END = re.compile(r"^[ \t]*:END:[ \t]*$", re.I)
_PLANNING = re.compile(r"^[ \t]*(SCHEDULED|DEADLINE|CLOSED):", re.I)
MAX_FIELD = 300  # a tagline or model name longer than this is cut (they end up in prompts and listings)


@dataclass(frozen=True)
class AgentDef:
    slug: str
    name: str
    model: str | None
    toolkits: list[str] = field(default_factory=list)
    tagline: str | None = None
    system_prompt: str = ""
    source: str | None = None  # where it came from: a workbook id, a file path, or None

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        """What a listing shows (no prompt): slug, name, model, toolkits, tagline, source."""
        d = self.to_dict()
        d.pop("system_prompt")
        return d


def slugify(title: str) -> str:
    """`Waldo the Keeper` -> `waldo-the-keeper` (ASCII letters and digits; `agent` when nothing is left)."""
    s = _SLUG_RUN.sub("-", title.lower()).strip("-")
    return s[:63].strip("-") or "agent"


def _field(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    v = " ".join(value.split())
    return v[:MAX_FIELD] or None


def _strip_meta(lines: list[str]) -> list[str]:
    """A section's lines without its leading planning line and drawers (`:PROPERTIES:` … `:END:`)."""
    i = 0
    while i < len(lines) and _PLANNING.match(lines[i]):
        i += 1
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        if _DRAWER_START.match(lines[i]) and not _DRAWER_END.match(lines[i]):
            j = i + 1
            while j < len(lines) and not _DRAWER_END.match(lines[j]):
                j += 1
            if j == len(lines):  # an unclosed drawer is text, not a drawer
                break
            i = j + 1
            continue
        break
    return lines[i:]


def _text(lines: list[str]) -> str:
    return "\n".join(lines).strip()


def _row_line(row: dict) -> int | None:
    line = row.get("line")
    return line if isinstance(line, int) and line >= 1 else None


def agent_from_headlines(org_text: str, headlines: list, *, source: str | None = None) -> AgentDef | None:
    """The AgentDef of the first `:agent:` headline in `headlines` (parse_headlines of `org_text`)."""
    rows = [h for h in headlines if isinstance(h, dict) and _row_line(h) and isinstance(h.get("level"), int)]
    idx = next((i for i, h in enumerate(rows) if AGENT_TAG in (h.get("tags") or [])), None)
    if idx is None:
        return None
    head = rows[idx]
    lines = [line[:-1] if line.endswith("\r") else line for line in org_text.split("\n")]
    level = head["level"]
    props = head.get("props") if isinstance(head.get("props"), dict) else {}

    def end_of(i: int, lvl: int) -> int:
        """0-based index of the first line after row i's subtree (the next headline at lvl or above)."""
        for r in rows[i + 1:]:
            if r["level"] <= lvl:
                return r["line"] - 1
        return len(lines)

    start = head["line"]  # 1-based line of the headline = 0-based index of its first body line
    subtree_end = end_of(idx, level)
    own_end = rows[idx + 1]["line"] - 1 if idx + 1 < len(rows) else len(lines)
    own_end = min(own_end, subtree_end)

    prompt = ""
    for j in range(idx + 1, len(rows)):
        r = rows[j]
        if r["line"] - 1 >= subtree_end:
            break
        if str(r.get("title") or "").strip().lower() == SYSTEM_PROMPT_TITLE:
            prompt = _text(_strip_meta(lines[r["line"]:end_of(j, r["level"])]))
            break
    name = _field(head.get("title")) or ""
    if not prompt:
        prompt = _text(_strip_meta(lines[start:own_end]))
    if not prompt:
        prompt = _text(_strip_meta(lines[start:subtree_end]))
    tagline = _field(props.get("TAGLINE"))
    if not prompt:
        prompt = f"You are {name or 'an agent'}." + (f" {tagline}" if tagline else "")
    ident = _field(head.get("id")) or _field(props.get("ID"))
    toolkits_raw = props.get("TOOLKITS")
    toolkits = toolkits_raw.split() if isinstance(toolkits_raw, str) else []
    return AgentDef(
        slug=ident or slugify(name),
        name=name or (ident or "agent"),
        model=_field(props.get("MODEL")),
        toolkits=toolkits,
        tagline=tagline,
        system_prompt=prompt,
        source=source,
    )


def _is_sync_kernel(oql: Any) -> bool:
    return oql is None or (hasattr(oql, "call_json") and hasattr(oql, "parse_headlines"))


def parse_agent(org_text: str, *, oql: Any = None, source: str | None = None):
    """The first `:agent:` headline of `org_text` as an AgentDef, or None when there is none.

    With `oql=None` (or a `workbooks.oql.Kernel`) this runs the kernel in this process and
    returns the AgentDef; with an async caller (`await oql.call(op, args)`) it returns an
    awaitable of it: `await parse_agent(text, oql=caller)`.
    """
    if _is_sync_kernel(oql):
        if oql is None:
            from workbooks.oql import default_kernel

            oql = default_kernel()
        return agent_from_headlines(org_text, oql.parse_headlines(org_text), source=source)
    return _parse_agent_async(org_text, oql, source)


async def _parse_agent_async(org_text: str, oql: Any, source: str | None) -> AgentDef | None:
    raw = await oql.call("parse_headlines", [org_text])
    return agent_from_headlines(org_text, json.loads(raw), source=source)


def load_agent_file(path: str | Path, *, oql: Any = None):
    """An agent from an Org file on disk (the keeper's `WB_KEEPER_DEF=path`); NotFound when the file
    is missing or has no `:agent:` headline. Sync with the in-process kernel, awaitable with `oql`."""
    text = _read_org_file(path)
    result = parse_agent(text, oql=oql, source=str(path))
    if _is_sync_kernel(oql):
        return _require(result, path)

    async def wait():
        return _require(await result, path)

    return wait()


def _require(agent: AgentDef | None, path) -> AgentDef:
    if agent is None:
        raise NotFound(f"{path} has no :agent: headline", hint="tag a headline :agent: (see README, Agents)")
    return agent


MAX_DEF_BYTES = 4 << 20


def _read_org_file(path: str | Path) -> str:
    import os
    import stat

    p = str(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise NotFound(f"agent definition {p} does not exist") from None
    except OSError as e:
        raise NotFound(f"cannot read agent definition {p}: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotFound(f"agent definition {p} is not a regular file")
        data = os.read(fd, MAX_DEF_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_DEF_BYTES:
        raise NotFound(f"agent definition {p} is larger than {MAX_DEF_BYTES >> 20} MB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NotFound(f"agent definition {p} is not UTF-8 (first bad byte at offset {e.start})") from None


# -- deployed workbooks -----------------------------------------------------------------------------
def _sources_with_agent_tag(data_dir, tenant: str) -> list[tuple[str, str]]:
    """[(workbook id, source)] of the tenant's deployed workbooks that may hold an `:agent:` headline.
    The index is opened read-only (a data dir without one has no agents, and gets none created)."""
    import sqlite3
    from urllib.parse import quote

    from workbooks.gitstore.tenant import validate_tenant
    from workbooks.store.db import db_path

    validate_tenant(tenant)
    path = db_path(data_dir)
    if not path.is_file():
        return []
    conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=30)
    try:
        conn.execute("PRAGMA busy_timeout=30000")
        rows = conn.execute(
            "SELECT id, source FROM workbooks WHERE tenant=? AND instr(source, ':agent:') > 0 ORDER BY id",
            (tenant,),
        ).fetchall()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return []
        raise
    finally:
        conn.close()
    return [(r[0], r[1]) for r in rows]


async def _deployed_agents(data_dir, tenant: str, oql: Any) -> list[AgentDef]:
    import trio

    rows = await trio.to_thread.run_sync(_sources_with_agent_tag, data_dir, tenant)
    out: list[AgentDef] = []
    for wid, source in rows:
        if _is_sync_kernel(oql):
            agent = parse_agent(source, oql=oql, source=wid)
        else:
            agent = await parse_agent(source, oql=oql, source=wid)
        if agent is not None:
            out.append(agent)
    return out


async def list_agents(data_dir, tenant: str, oql: Any) -> list[dict]:
    """Every agent of the tenant's deployed workbooks, by workbook id:
    `[{slug, name, model, toolkits, tagline, workbook}]` (one per workbook: its first :agent:)."""
    out = []
    for a in await _deployed_agents(data_dir, tenant, oql):
        d = a.summary()
        d["workbook"] = d.pop("source")
        out.append(d)
    return out


async def find_agent(data_dir, tenant: str, slug: str, oql: Any) -> AgentDef:
    """The tenant's deployed agent called `slug` (the first by workbook id when two share it);
    NotFound (404, exit 4) otherwise."""
    if isinstance(slug, str) and slug:
        for a in await _deployed_agents(data_dir, tenant, oql):
            if a.slug == slug:
                return a
    shown = repr(slug)[:80]
    raise NotFound(f"no agent {shown} in tenant {tenant!r}",
                   hint="deploy a workbook with an :agent: headline (GET /api/agents/list shows the agents)")
