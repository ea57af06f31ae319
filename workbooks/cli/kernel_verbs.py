"""Kernel verbs: query, tangle, lint, render (local, no server needed).

`-` reads stdin; JSON comes out untouched from the kernel. `lint` prints validate's
diagnostics and exits 0 even when they contain errors: diagnostics are data.
"""

from __future__ import annotations

import json
import sys

from workbooks.cli.output import Output, Style
from workbooks.errors import NotFound, WorkbooksError


def read_org(path: str) -> bytes:
    """Read a document from a path or `-` (stdin) as bytes; the kernel host checks UTF-8."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise NotFound(f"read {path}: No such file or directory", hint="check the path, or pass - to read stdin") from None
    except IsADirectoryError:
        raise NotFound(f"read {path}: Is a directory", hint="pass an .org file, or - to read stdin") from None
    except PermissionError:
        raise WorkbooksError(f"read {path}: Permission denied") from None


def read_org_with_setup(path: str) -> bytes:
    """The document plus the keywords of its `#+SETUPFILE:`s (files beside it only).

    Reading stdin takes setup files relative to the working directory."""
    import os

    from workbooks.oql.setupfile import with_setup_keywords

    raw = read_org(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw  # the kernel host reports the offset
    base = os.getcwd() if path == "-" else os.path.dirname(os.path.abspath(path))
    return with_setup_keywords(text, base).encode("utf-8")


def _kernel():
    from workbooks.oql import default_kernel

    return default_kernel()


def _ts(t: dict | None) -> str:
    if not t:
        return ""
    open_, close = ("<", ">") if t.get("active") else ("[", "]")
    rep = f" {t['repeat']}" if t.get("repeat") else ""
    return f"{open_}{t['at']}{rep}{close}"


def human_outline(rows: list, st: Style) -> str:
    if not rows:
        return st.dim("(no headlines)")
    lines = []
    for r in rows:
        indent = "  " * (r["level"] - 1)
        parts = [indent + st.dim("*" * r["level"])]
        if r.get("state"):
            parts.append(st.green(r["state"]) if r["state"] in ("DONE",) else st.yellow(r["state"]))
        if r.get("priority"):
            parts.append(st.red(f"[#{r['priority']}]"))
        parts.append(st.bold(r["title"]))
        if r.get("tags"):
            parts.append(st.cyan(":" + ":".join(r["tags"]) + ":"))
        extra = []
        if r.get("scheduled"):
            extra.append("scheduled " + _ts(r["scheduled"]))
        if r.get("deadline"):
            extra.append("deadline " + _ts(r["deadline"]))
        if r.get("id"):
            extra.append("id " + r["id"])
        line = " ".join(parts)
        if extra:
            line += "  " + st.dim("· ".join(extra))
        lines.append(line)
    return "\n".join(lines)


def human_plan(plan: dict, st: Style) -> str:
    lines = []

    def world(w: dict, depth: int) -> None:
        pad = "  " * depth
        sched = w.get("schedule")
        s = ""
        if sched:
            s = f"  {st.dim('cron ' + sched['cron'] if 'cron' in sched else 'scheduled ' + _ts(sched))}"
        lines.append(f"{pad}{st.bold(w['name'])}{s}")
        if w.get("imports"):
            lines.append(f"{pad}  imports: {', '.join(w['imports'])}")
        if w.get("exports"):
            lines.append(f"{pad}  exports: {', '.join(w['exports'])}")
        for c in w.get("components", []):
            io = []
            if c.get("in"):
                io.append(f"in {c['in']}")
            if c.get("out"):
                io.append(f"out {c['out']}")
            lines.append(f"{pad}  - {c['name']} [{c.get('lang') or st.red('no source')}] {st.dim(' '.join(io))}")
        for e in w.get("edges", []):
            lines.append(f"{pad}  {e['from']} → {e['to']}")
        for sub in w.get("workflows", []):
            world(sub, depth + 1)

    for w in plan.get("worlds", []):
        world(w, 0)
    return "\n".join(lines) if lines else st.dim("(no workflows)")


def human_diagnostics(diags: list, st: Style) -> str:
    if not diags:
        return st.green("no problems found")
    out = []
    for d in diags:
        level = d.get("level", "error")
        tag = st.red(level) if level == "error" else st.yellow(level)
        scope = d.get("scope") or ""
        out.append(f"{tag}  {st.bold(scope)}  {d.get('message', '')}")
    n_err = sum(1 for d in diags if d.get("level") == "error")
    out.append(st.dim(f"{n_err} error(s), {len(diags) - n_err} other"))
    return "\n".join(out)


def cmd_query(ns) -> Output:
    return Output(raw_json=_kernel().call_raw("parse_headlines", read_org_with_setup(ns.file)), human=human_outline)


def cmd_tangle(ns) -> Output:
    return Output(raw_json=_kernel().call_raw("tangle_plan", read_org_with_setup(ns.file)), human=human_plan)


def cmd_lint(ns) -> Output:
    return Output(raw_json=_kernel().call_raw("validate", read_org_with_setup(ns.file)), human=human_diagnostics)


def cmd_check_upgrade(ns) -> Output:
    return Output(raw_json=_kernel().call_raw("check_upgrade", read_org(ns.old), read_org(ns.new)), human=human_diagnostics)


def cmd_render(ns) -> Output:
    import os

    from workbooks.page import resolve_setupfiles

    raw = read_org(ns.file)
    try:
        # #+SETUPFILE / #+INCLUDE are read beside the document (stdin: the working directory)
        base = os.getcwd() if ns.file == "-" else os.path.dirname(os.path.abspath(ns.file))
        org = resolve_setupfiles(raw.decode("utf-8"), base).encode("utf-8")
    except UnicodeDecodeError:
        org = raw  # the kernel host reports the offset
    opts: dict = {}
    if ns.toc:
        opts["toc"] = True
    if ns.num:
        opts["num"] = True
    if ns.no_raw_html:
        opts["raw_html"] = False
    if ns.options:
        try:
            opts.update(json.loads(ns.options))
        except json.JSONDecodeError as e:
            from workbooks.errors import UsageError

            raise UsageError(f"--options is not JSON: {e}") from None
    k = _kernel()
    html = k.call_raw("render_with", org, json.dumps(opts)) if opts else k.call_raw("render", org)
    text = html.decode("utf-8")
    if ns.page:
        from workbooks.page import page_from_org

        text = page_from_org(org.decode("utf-8"), text)
    # HTML is printed as-is in every mode (it is the product, not data), except --json.
    if ns.mode == "json":
        return Output(data={"html": text})
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return None


def register(subs) -> None:
    p = subs.add_parser("query", help="headlines as JSON (parse_headlines)")
    p.add_argument("file", help="an .org file, or - for stdin")
    p.set_defaults(func=cmd_query)
    p = subs.add_parser("tangle", help="the build plan as JSON (tangle_plan)")
    p.add_argument("file", help="an .org file, or - for stdin")
    p.set_defaults(func=cmd_tangle)
    p = subs.add_parser("lint", help="diagnostics as JSON (validate); exits 0 even with errors")
    p.add_argument("file", help="an .org file, or - for stdin")
    p.set_defaults(func=cmd_lint)
    p = subs.add_parser("check-upgrade", help="breaking changes between two versions of a workbook")
    p.add_argument("old", help="the deployed version")
    p.add_argument("new", help="the candidate version")
    p.set_defaults(func=cmd_check_upgrade)
    p = subs.add_parser("render", help="Org to an HTML fragment (--page for a standalone page)")
    p.add_argument("file", help="an .org file, or - for stdin")
    p.add_argument("--page", action="store_true", help="a standalone page: title, description, theme CSS inline")
    p.add_argument("--toc", action="store_true", help="include a table of contents")
    p.add_argument("--num", action="store_true", help="number the headings")
    p.add_argument("--no-raw-html", action="store_true", help="drop author HTML (export blocks, snippets)")
    p.add_argument("--options", help="render options as a JSON object (overrides #+OPTIONS)")
    p.set_defaults(func=cmd_render)
