"""wb {args}: the kernel verbs on working-dir files, and `var get`, as a command line the model writes.

`args` is one string split like a shell line (`"query notes.org"`, `"render 'my notes.org' --toc"`)
or a list of words. The verbs and what they answer (the same JSON as `wbx`, through the OQL pool
of `ctx.oql` — the agents process is a client of the pool like the web planes):

    query FILE                  headlines (parse_headlines; #+SETUPFILE keywords taken in)
    tangle FILE                 the build plan (tangle_plan); it only reads
    lint FILE                   diagnostics (validate, with lines, plus unreadable #+SETUPFILE/#+INCLUDE)
    render FILE [--toc] [--num] [--no-raw-html] [--options JSON] [--page]
    check-upgrade OLD NEW       breaking changes between two versions
    var get KEY                 a tenant variable; a secret shows as [secret:KEY], never its value
    toolkit list | show ID [SKILL] | search QUERY
                                the installed toolkits and their skill recipes (read-only;
                                workbooks.agent.toolkits.agent_command, the original's texts)

FILE is confined to the working dir like vfs_read. Verbs that change something outside the working
dir (`var set`, and the original's deploy/bundle/unbundle/sign/verify/pack/unpack/fetch) answer
"wb <verb> not permitted (no exec capability)" without exec; with exec, `var set` calls
`ctx.extra["var_set"]` when the runner provides one, and the others point at the git tool.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from workbooks.agent.tools.base import ToolContext, ToolResult
from workbooks.agent.tools.common import answer, off_loop, shown, time_left
from workbooks.agent.tools.confine import ConfinementError, read_regular, resolve_in

KERNEL_VERBS = ("query", "tangle", "lint", "render", "check-upgrade")
EFFECTFUL = frozenset({"deploy", "bundle", "unbundle", "sign", "verify", "pack", "unpack", "fetch"})
VAR_WRITES = frozenset({"set", "delete", "rm", "unset"})
MAX_DOC = 16 << 20
USAGE = (
    "usage: wb query FILE | wb tangle FILE | wb lint FILE | "
    "wb render FILE [--toc] [--num] [--no-raw-html] [--options JSON] [--page] | "
    "wb check-upgrade OLD NEW | wb var get KEY | wb toolkit list | wb toolkit show ID [SKILL] | wb toolkit search QUERY"
)


class WbError(Exception):
    def __init__(self, text: str, code: str = "wb_error"):
        super().__init__(text)
        self.text = text
        self.code = code


def split_args(raw) -> list[str]:
    if isinstance(raw, str):
        try:
            return shlex.split(raw, comments=False, posix=True)
        except ValueError as e:
            raise WbError(f"wb error: cannot split the arguments: {e}", "bad_args") from None
    if isinstance(raw, list) and all(isinstance(a, str) for a in raw):
        return list(raw)
    raise WbError("wb error: `args` must be a string like a command line, or a list of strings", "bad_args")


def _read_doc(ctx: ToolContext, rel: str) -> tuple[str, Path]:
    """A working-dir document as text and its folder (where #+SETUPFILE files are read)."""
    try:
        target = resolve_in(ctx.workdir, rel, for_write=False)
    except ConfinementError as e:
        if e.code == "escape":
            raise WbError(f"read blocked: path escapes your working dir ({shown(rel)})", "blocked") from None
        raise WbError(f"read blocked: {e.reason} ({shown(rel)})", "blocked") from None
    try:
        raw = read_regular(target, MAX_DOC)
    except FileNotFoundError:
        raise WbError(f"not found: {shown(rel)}", "not_found") from None
    except (OSError, ValueError) as e:
        raise WbError(f"wb error: {shown(rel)}: {getattr(e, 'strerror', None) or e}", "unreadable") from None
    try:
        return raw.decode("utf-8"), target.parent
    except UnicodeDecodeError:
        raise WbError(f"wb error: {shown(rel)} is not UTF-8 text", "unreadable") from None


class Kernel:
    """ctx.oql with the run's deadline and errors as WbError."""

    def __init__(self, ctx: ToolContext):
        if ctx.oql is None:
            raise WbError("wb error: the kernel is not available in this run", "no_kernel")
        self.ctx = ctx

    async def call(self, op: str, *args: str) -> str:
        ms = max(1, int(time_left(self.ctx, 30.0) * 1000))
        try:
            out = await self.ctx.oql.call(op, list(args), deadline_ms=ms)
        except Exception as e:  # noqa: BLE001 - pool/kernel failures are answers, not crashes
            code = getattr(e, "code", None) or type(e).__name__
            msg = getattr(e, "message", None) or str(e) or code
            raise WbError(f"wb error: {code}: {msg}", "kernel") from None
        return out.decode("utf-8", errors="replace") if isinstance(out, (bytes, bytearray)) else str(out)


def _one_file(verb: str, rest: list[str]) -> str:
    if len(rest) != 1:
        raise WbError(f"wb {verb}: expected one FILE\n{USAGE}", "usage")
    return rest[0]


async def _with_lines(k: Kernel, org: str, diags: list) -> list:
    """Kernel diagnostics get the `line` of the one workflow/component headline their scope names."""
    wanted = {d.get("scope") for d in diags if isinstance(d, dict) and "line" not in d}
    if not wanted:
        return diags
    lines: dict[str, list[int]] = {}
    for row in json.loads(await k.call("parse_headlines", org)):
        tags = row.get("tags") or []
        if row.get("title") in wanted and ("component" in tags or "workflow" in tags):
            lines.setdefault(row["title"], []).append(row["line"])
    for d in diags:
        found = lines.get(d.get("scope")) if isinstance(d, dict) else None
        if found and len(found) == 1 and "line" not in d:
            d["line"] = found[0]
    return diags


def _render_args(rest: list[str]) -> tuple[str, dict, bool]:
    """(FILE, kernel render options, --page) from `render`'s arguments, flags in any position."""
    from workbooks.author_html import enabled_globally
    from workbooks.errors import WorkbooksError
    from workbooks.oql.render_options import check_render_options

    opts: dict = {}
    page = False
    files: list[str] = []
    i = 0
    while i < len(rest):
        f = rest[i]
        if f == "--toc":
            opts["toc"] = True
        elif f == "--num":
            opts["num"] = True
        elif f == "--no-raw-html":
            opts["raw_html"] = False
        elif f == "--page":
            page = True
        elif f == "--options" or f.startswith("--options="):
            if f == "--options":
                i += 1
                if i >= len(rest):
                    raise WbError("wb render: --options needs a JSON object", "usage")
                raw = rest[i]
            else:
                raw = f.split("=", 1)[1]
            try:
                opts.update(check_render_options(json.loads(raw)))
            except (ValueError, RecursionError) as e:
                raise WbError(f"wb render: --options is not JSON: {e}", "usage") from None
            except WorkbooksError as e:
                raise WbError(f"wb render: --options: {e.message}", "usage") from None
        elif f.startswith("-") and f != "-":
            raise WbError(f"wb render: unknown flag {shown(f, 60)}\n{USAGE}", "usage")
        else:
            files.append(f)
        i += 1
    if len(files) != 1:
        raise WbError(f"wb render: expected one FILE\n{USAGE}", "usage")
    if not enabled_globally():
        opts["raw_html"] = False
    return files[0], opts, page


async def run_kernel_verb(ctx: ToolContext, verb: str, rest: list[str]) -> str:
    from workbooks.oql.setupfile import expand_bytes, with_setup_keywords_bytes

    k = Kernel(ctx)
    if verb == "check-upgrade":
        if len(rest) != 2:
            raise WbError(f"wb check-upgrade: expected OLD NEW\n{USAGE}", "usage")
        old, _ = await off_loop(_read_doc, ctx, rest[0])
        new, _ = await off_loop(_read_doc, ctx, rest[1])
        return await k.call("check_upgrade", old, new)
    if verb == "render":
        name, opts, page = _render_args(rest)
        text, base = await off_loop(_read_doc, ctx, name)
        org_b, _diags = await off_loop(expand_bytes, text.encode("utf-8"), base)
        org = org_b.decode("utf-8", errors="replace")
        if page:
            from workbooks.page import _first_heading, html_to_text, render_page

            data = json.loads(await k.call("render_with", org, json.dumps({**opts, "metadata": True})))
            meta = data.get("meta") or {}
            fragment = data.get("html") or ""
            return render_page(
                fragment, title=html_to_text(data.get("title_html") or "") or _first_heading(fragment),
                description=meta.get("description") or "", lang=meta.get("language") or "en",
                subtitle=html_to_text(meta.get("subtitle") or ""), author=meta.get("author") or "",
            )
        if opts:
            return await k.call("render_with", org, json.dumps(opts))
        return await k.call("render", org)
    name = _one_file(verb, rest)
    text, base = await off_loop(_read_doc, ctx, name)
    if verb == "lint":
        raw = text.encode("utf-8")
        org = (await off_loop(with_setup_keywords_bytes, raw, base)).decode("utf-8", errors="replace")
        _expanded, host_diags = await off_loop(expand_bytes, raw, base)
        diags = json.loads(await k.call("validate", org))
        return json.dumps(host_diags + await _with_lines(k, org, diags), ensure_ascii=False)
    org = (await off_loop(with_setup_keywords_bytes, text.encode("utf-8"), base)).decode("utf-8", errors="replace")
    return await k.call("parse_headlines" if verb == "query" else "tangle_plan", org)


async def run_var(ctx: ToolContext, rest: list[str]) -> ToolResult:
    sub = rest[0] if rest else ""
    if sub in VAR_WRITES:
        if not ctx.exec:
            return answer(ctx, f"wb var {sub} not permitted (no exec capability)", 1, "no_exec")
        setter = ctx.extra.get("var_set")
        if sub != "set" or setter is None or len(rest) != 3:
            return answer(ctx, f"wb var {sub}: not available in this run", 1, "unavailable")
        try:
            await setter(rest[1], rest[2])
        except Exception as e:  # noqa: BLE001
            return answer(ctx, f"wb error: {getattr(e, 'message', None) or e}", 1, "var")
        return answer(ctx, f"set {rest[1]}")
    if sub != "get" or len(rest) != 2:
        return answer(ctx, f"wb var: expected `var get KEY`\n{USAGE}", 2, "usage")
    key = rest[1]
    if ctx.var_get is None:
        return answer(ctx, "wb var get: variables are not available in this run", 1, "unavailable")
    try:
        got = await ctx.var_get(key)
    except Exception as e:  # noqa: BLE001 - a bad key name, an unreadable store: an answer
        return answer(ctx, f"wb error: {getattr(e, 'message', None) or e}", 1, "var")
    if got is None:
        return answer(ctx, f"not found: var {shown(key, 128)}", 1, "not_found")
    value, is_secret = got
    return answer(ctx, f"[secret:{key}]" if is_secret else value)


async def run_toolkit(ctx: ToolContext, rest: list[str]) -> ToolResult:
    """`toolkit list|show ID [SKILL]|search QUERY`, read-only, in the original's texts."""
    from workbooks.agent.toolkits import agent_command

    if ctx.oql is None:
        return answer(ctx, "wb error: the kernel is not available in this run", 1, "no_kernel")
    try:
        text, code = await agent_command(rest, oql=ctx.oql, data_dir=ctx.data_dir, tenant=ctx.tenant)
    except Exception as e:  # noqa: BLE001 - an unreachable pool, an unreadable root: an answer
        return answer(ctx, f"wb error: {getattr(e, 'message', None) or e}", 1, "toolkit")
    return answer(ctx, text, code, None if code == 0 else ("usage" if code == 2 else "not_found"))


class Wb:
    name = "wb"
    description = (
        "Run a wb verb on files in your working dir. Args as one command line. "
        "`query FILE` (headlines as JSON), `tangle FILE` (the workflow build plan), `lint FILE` "
        "(diagnostics), `render FILE [--toc] [--num] [--page]` (HTML), `check-upgrade OLD NEW`, "
        '`var get KEY` (a tenant variable; secrets are shown only as [secret:KEY]), `toolkit list` · '
        '`toolkit show <id> [skill]` (read a skill recipe before using a toolkit) · `toolkit search <q>`. '
        'e.g. args="query notes.org".'
    )
    parameters = {
        "type": "object",
        "properties": {"args": {"type": "string", "description": 'e.g. "lint site.org"'}},
        "required": ["args"],
    }
    needs_exec = False

    async def __call__(self, ctx: ToolContext, args: dict) -> ToolResult:
        try:
            argv = split_args(args.get("args") if isinstance(args, dict) else None)
            if not argv or argv[0] in ("help", "--help", "-h"):
                return answer(ctx, USAGE, 0 if argv else 2, None if argv else "usage")
            verb, rest = argv[0], argv[1:]
            if verb == "var":
                return await run_var(ctx, rest)
            if verb == "toolkit":
                return await run_toolkit(ctx, rest)
            if verb in EFFECTFUL:
                if not ctx.exec:
                    return answer(ctx, f"wb {verb} not permitted (no exec capability)", 1, "no_exec")
                return answer(ctx, f"wb {verb}: not available to agents — commit with the git tool (commit implies publish)", 1, "unavailable")
            if verb not in KERNEL_VERBS:
                return answer(ctx, f"wb: unknown verb {shown(verb, 60)}\n{USAGE}", 2, "usage")
            return answer(ctx, await run_kernel_verb(ctx, verb, rest))
        except WbError as e:
            return answer(ctx, e.text, 2 if e.code == "usage" else 1, e.code)


WB = Wb()
