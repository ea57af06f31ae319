"""Kernel verbs: query, parse, tangle, lint, render, check-upgrade (local, no server needed).

`-` reads stdin; JSON comes out untouched from the kernel. `lint` prints validate's
diagnostics (plus one for every `#+SETUPFILE:`/`#+INCLUDE:` that cannot be read) and exits 0
even when they contain errors: diagnostics are data.

Input: a regular file, a pipe the shell passed by name (`<(cmd)`), or `-` for stdin (a pipe, a
file, a terminal). At most `WB_MAX_INPUT_MB` (default 64) MB are read: a larger document is
refused with exit 2 (`input_too_large`) after reading at most the limit plus one byte, and a
directory, a device, a socket or a named FIFO given as FILE is refused with exit 2
(`unsupported_input`) without reading it (a FIFO with no writer would block forever).
"""

from __future__ import annotations

import json
import os
import stat
import sys

from workbooks.cli.output import Output, Style
from workbooks.errors import InputTooLarge, NotFound, UnsupportedInput, UsageError, WorkbooksError

DEFAULT_MAX_INPUT_MB = 64


def max_input_bytes() -> int:
    raw = os.environ.get("WB_MAX_INPUT_MB", "").strip()
    if not raw:
        return DEFAULT_MAX_INPUT_MB << 20
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not 0 < mb <= 1024:  # the kernel's ABI caps a document at 1 GB
        raise UsageError(f"WB_MAX_INPUT_MB={raw[:40]!r} is not a size in MB (above 0, at most 1024)",
                         hint="unset it for the default (64)")
    return int(mb * (1 << 20))


def _too_large(what: str, limit: int) -> InputTooLarge:
    return InputTooLarge(f"{what} is larger than the {limit / (1 << 20):g} MB input limit (WB_MAX_INPUT_MB)")


def _read_bounded(fd: int, limit: int, what: str, size_hint: int = 0) -> bytes:
    """Read to EOF, but never more than limit + 1 bytes."""
    if size_hint:  # a regular file: one read of its size (plus one byte, in case it grew)
        chunks = [os.read(fd, min(size_hint, limit) + 1)]
        total = len(chunks[0])
    else:
        chunks, total = [], 0
    while total <= limit:
        chunk = os.read(fd, min(1 << 20, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > limit:
        raise _too_large(what, limit)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _anonymous_pipe(path: str) -> bool:
    """Whether `path` names a pipe a shell handed over (`/dev/fd/63` from `<(cmd)`), which has
    its writer already, as opposed to a FIFO in the file system."""
    try:
        return os.readlink(path).startswith("pipe:[")
    except (OSError, ValueError):
        return False


def read_org(path: str) -> bytes:
    """A document from a path or `-` (stdin) as bytes, bounded; the kernel host checks UTF-8."""
    limit = max_input_bytes()
    if path == "-":
        fd = sys.stdin.fileno()
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_size - os.lseek(fd, 0, os.SEEK_CUR) > limit:
            raise _too_large("stdin", limit)
        if stat.S_ISDIR(st.st_mode):
            raise UnsupportedInput("stdin is a directory")
        try:
            return _read_bounded(fd, limit, "stdin", st.st_size if stat.S_ISREG(st.st_mode) else 0)
        except OSError as e:
            raise WorkbooksError(f"read stdin: {e.strerror or e}") from None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFound(f"read {path}: No such file or directory", hint="check the path, or pass - to read stdin") from None
    except NotADirectoryError:
        raise NotFound(f"read {path}: Not a directory", hint="check the path, or pass - to read stdin") from None
    except PermissionError:
        raise WorkbooksError(f"read {path}: Permission denied") from None
    except (OSError, ValueError) as e:
        raise UnsupportedInput(f"read {path}: {getattr(e, 'strerror', None) or e}") from None
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        raise UnsupportedInput(f"read {path}: Is a directory", hint="pass an .org file, or - to read stdin")
    if stat.S_ISFIFO(mode) and not _anonymous_pipe(path):
        # a named FIFO without a writer would block wbx forever; a pipe is taken as stdin
        raise UnsupportedInput(f"read {path}: is a named FIFO, not a regular file",
                               hint="pipe it to - instead: wbx VERB - < FIFO")
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        kind = "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
        raise UnsupportedInput(f"read {path}: is {kind}, not a regular file",
                               hint="pass a regular .org file, or pipe it to - (stdin)")
    if stat.S_ISREG(mode) and st.st_size > limit:
        raise _too_large(path, limit)
    try:  # non-blocking open: a FIFO or device swapped in since the stat cannot hang it
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise NotFound(f"read {path}: No such file or directory", hint="check the path, or pass - to read stdin") from None
    except PermissionError:
        raise WorkbooksError(f"read {path}: Permission denied") from None
    try:
        st = os.fstat(fd)  # what was opened, not what was stat'ed a moment ago
        if not (stat.S_ISREG(st.st_mode) or (stat.S_ISFIFO(st.st_mode) and _anonymous_pipe(path))):
            raise UnsupportedInput(f"read {path}: not a regular file")
        if stat.S_ISREG(st.st_mode) and st.st_size > limit:
            raise _too_large(path, limit)
        os.set_blocking(fd, True)
        return _read_bounded(fd, limit, path, st.st_size if stat.S_ISREG(st.st_mode) else 0)
    except IsADirectoryError:
        raise UnsupportedInput(f"read {path}: Is a directory") from None
    except OSError as e:  # EIO and friends: a clear error, not a traceback
        raise WorkbooksError(f"read {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def base_dir_of(path: str) -> str:
    """Where `#+SETUPFILE:`/`#+INCLUDE:` are read from: the document's folder (stdin: the working directory)."""
    return os.getcwd() if path == "-" else os.path.dirname(os.path.abspath(path))


def read_org_with_setup(path: str) -> bytes:
    """The document plus the keywords of its `#+SETUPFILE:`s (files beside it only)."""
    from workbooks.oql.setupfile import with_setup_keywords_bytes

    raw = read_org(path)
    return with_setup_keywords_bytes(raw, base_dir_of(path))


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
        where = f"{d['file']}:" if d.get("file") else ""
        where += f"{d['line']}: " if d.get("line") else ""
        out.append(f"{tag}  {st.dim(where)}{st.bold(scope)}  {d.get('message', '')}")
    n_err = sum(1 for d in diags if d.get("level") == "error")
    out.append(st.dim(f"{n_err} error(s), {len(diags) - n_err} other"))
    return "\n".join(out)


def cmd_query(ns) -> Output:
    return Output(raw_json=_kernel().call_raw("parse_headlines", read_org_with_setup(ns.file)), human=human_outline)


def human_tree(org: bytes):
    """The element tree as an indented outline: type, line, and the node's short fields."""
    import bisect

    newlines = [i for i, c in enumerate(org) if c == 0x0A]

    def view(tree: dict, st: Style) -> str:
        lines: list[str] = []
        stack = [(tree, 0)]  # explicit stack: trees can be thousands of levels deep
        while stack:
            node, depth = stack.pop()
            line = bisect.bisect_left(newlines, node.get("begin", 0)) + 1
            extra = []
            for k in ("level", "todo", "title", "tags", "key", "value", "name", "language", "block_type",
                      "list_type", "bullet", "checkbox", "tag", "label", "row_type"):
                v = node.get(k)
                if v not in (None, [], ""):
                    extra.append(f"{k}={json.dumps(v, ensure_ascii=False)}")
            lines.append(f"{'  ' * depth}{st.bold(node['type'])} {st.dim(f'L{line}')} {' '.join(extra)}".rstrip())
            for child in reversed(node.get("children", [])):
                stack.append((child, depth + 1))
        return "\n".join(lines)

    return view


def cmd_parse(ns) -> Output:
    """The element tree (the kernel's `parse`); offsets are bytes of the file as given (no
    #+SETUPFILE taken in, so they point into it)."""
    org = read_org(ns.file)
    raw = _kernel().call_raw("parse", org)
    if ns.mode == "human":
        try:
            json.loads(raw)
        except RecursionError:  # deeper than Python's json reads: the JSON itself, unchanged
            sys.stdout.flush()
            sys.stdout.buffer.write(raw + b"\n")
            sys.stdout.buffer.flush()
            return None
    return Output(raw_json=raw, human=human_tree(org))


def cmd_tangle(ns) -> Output:
    return Output(raw_json=_kernel().call_raw("tangle_plan", read_org_with_setup(ns.file)), human=human_plan)


def with_lines(k, org: bytes, diags: list) -> list:
    """Kernel diagnostics with the `line` of the headline their scope names, where exactly one
    `:workflow:`/`:component:` headline has that title (the kernel's scope is that title)."""
    wanted = {d.get("scope") for d in diags if "line" not in d}
    if not wanted:
        return diags
    lines: dict[str, list[int]] = {}
    for row in k.call_json("parse_headlines", org):
        tags = row.get("tags") or []
        if row.get("title") in wanted and ("component" in tags or "workflow" in tags):
            lines.setdefault(row["title"], []).append(row["line"])
    for d in diags:
        found = lines.get(d.get("scope"))
        if "line" not in d and found and len(found) == 1:
            d["line"] = found[0]
    return diags


def cmd_lint(ns) -> Output:
    """validate's diagnostics (with lines), after one per `#+SETUPFILE:`/`#+INCLUDE:` that cannot be read."""
    from workbooks.oql.setupfile import expand_bytes, with_setup_keywords_bytes

    raw = read_org(ns.file)
    base = base_dir_of(ns.file)
    org = with_setup_keywords_bytes(raw, base)
    k = _kernel()
    out = k.call_raw("validate", org)
    _expanded, host_diags = expand_bytes(raw, base)
    if not host_diags and out == b"[]":
        return Output(raw_json=out, human=human_diagnostics)
    return Output(data=host_diags + with_lines(k, org, json.loads(out)), human=human_diagnostics)


def cmd_check_upgrade(ns) -> Output:
    return Output(raw_json=_kernel().call_raw("check_upgrade", read_org(ns.old), read_org(ns.new)), human=human_diagnostics)


def render_options(ns) -> dict:
    """The caller's render options: the flags, then `--options` JSON (unknown keys are refused)."""
    opts: dict = {}
    if ns.toc:
        opts["toc"] = True
    if ns.num:
        opts["num"] = True
    if ns.no_raw_html:
        opts["raw_html"] = False
    if ns.options:
        from workbooks.oql.render_options import check_render_options

        try:
            given = json.loads(ns.options)
        except (json.JSONDecodeError, RecursionError) as e:
            raise UsageError(f"--options is not JSON: {e}") from None
        try:
            opts.update(check_render_options(given))
        except WorkbooksError as e:
            raise UsageError(f"--options: {e.message}", hint=e.hint) from None
    from workbooks.author_html import enabled_globally

    if not enabled_globally():  # the operator's WB_RAW_HTML=0 wins over any option
        opts["raw_html"] = False
    return opts


def cmd_render(ns) -> Output:
    from workbooks.oql.setupfile import expand_bytes

    opts = render_options(ns)
    raw = read_org(ns.file)
    # #+SETUPFILE / #+INCLUDE are read beside the document (stdin: the working directory)
    org, diags = expand_bytes(raw, base_dir_of(ns.file))
    if diags and ns.mode == "human":
        st = Style(sys.stderr.isatty())
        for d in diags:
            where = f"{d['file']}:" if d.get("file") else "line "
            where = f"{where}{d['line']}: " if d.get("line") else ""
            sys.stderr.write(f"{st.yellow('wbx: warning:')} {where}{d['message']}\n")
    k = _kernel()
    op, args = ("render_with", (org, json.dumps(opts))) if opts else ("render", (org,))
    if ns.mode != "json" and not ns.page:
        # HTML is printed as-is (it is the product, not data), straight out of the kernel's memory
        out = sys.stdout.buffer
        sys.stdout.flush()

        def write(view) -> None:
            out.write(view)
            if not len(view) or view[-1] != 0x0A:
                out.write(b"\n")

        k.call_raw(op, *args, consume=write)
        out.flush()
        return None
    html = k.call_raw(op, *args)
    if ns.page:
        from workbooks.page import page_from_org

        html = page_from_org(org.decode("utf-8"), html.decode("utf-8")).encode("utf-8")
    if ns.mode == "json":
        return Output(data={"html": html.decode("utf-8"), "diagnostics": diags})
    out = sys.stdout.buffer
    sys.stdout.flush()
    out.write(html if html.endswith(b"\n") else html + b"\n")
    out.flush()
    return None


def register(subs) -> None:
    p = subs.add_parser("query", help="headlines as JSON (parse_headlines)")
    p.add_argument("file", help="an .org file, or - for stdin")
    p.set_defaults(func=cmd_query)
    p = subs.add_parser("parse", help="the element tree as JSON (every element, with byte offsets)")
    p.add_argument("file", help="an .org file, or - for stdin")
    p.set_defaults(func=cmd_parse)
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
    p.add_argument("--options", help="render options as a JSON object (overrides #+OPTIONS; an unknown key is refused)")
    p.set_defaults(func=cmd_render)
