"""`#+SETUPFILE:` and `#+INCLUDE:` on the host: the files a document names, read safely.

The kernel is pure and cannot read files, so the host does what Org does with these keywords:

- for `wbx query|tangle|lint` (Org's parse view) the keyword lines of the setup files
  (`#+TODO:`, `#+MACRO:`, ...) are appended to the document, so a document whose TODO keywords
  live in a setup file parses the way Emacs parses it; headlines and text of a setup file are
  never taken, and the document's own line numbers stay as they are (`with_setup_keywords`);
- for rendering (Org's export view) both keywords are replaced by the file's text, an included
  file's headlines shifted below the including headline (or to `:minlevel N`), `src`/`example`/
  `export` includes wrapped in a block (`expand_with_diagnostics`, the same result as
  `workbooks.page.resolve_setupfiles`).

Only files inside the document's own folder are read: no URLs, no `..` or absolute escapes, no
symlink that resolves outside, regular files only, with caps on count, size and depth. A keyword
that cannot be honoured is left as written (the kernel then ignores it) and reported as a
diagnostic in the kernel's shape, `{level, scope, message}` plus the 1-based `line` of the
keyword (and `file` when it stands in a file that was itself included).

Bounds (a hostile document cannot make this slow): an expansion reads at most 32 files and 4 MB,
nests 3 deep, resolves at most 256 distinct names, looks at the first 10,000 keyword lines and
reports 100 diagnostics, then one line saying how many more there were.

Finding the keywords is the only work done on every document, so it is a regex on the bytes
with a literal `#+` prefix (a few ms on 7 MB; the former line-by-line lower-casing took ~60 ms),
and nothing is decoded or copied when the document names no file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# Candidates: the literal `#+` lets the regex engine skip ahead with a fast prefix search (no
# IGNORECASE flag, which would turn that off); a candidate counts only at the start of a line.
# Only this one is compiled at import (every kernel verb needs it); the others are compiled on
# first use, when a document names a file at all.
_CANDIDATE = re.compile(rb"#\+(?:[Ss][Ee][Tt][Uu][Pp][Ff][Ii][Ll][Ee]|[Ii][Nn][Cc][Ll][Uu][Dd][Ee]):")


class _Lazy:
    """Regexes compiled on first use (each re.compile costs start-up ~0.3-1 ms)."""

    def __getattr__(self, name: str):
        pats = {
            "LINE": (rb"[ \t]*#\+(setupfile|include):[ \t]*(.*?)[ \t]*", re.IGNORECASE),
            "KEYWORD": (r"^[ \t]*#\+(?!begin_|end_|setupfile:)[A-Za-z_][A-Za-z0-9_-]*:.*$", re.IGNORECASE | re.MULTILINE),
            "HEADLINE": (rb"^(\*+) ", re.MULTILINE),
            "MINLEVEL": (r":minlevel\s+(\d+)", 0),
        }
        pattern, flags = pats[name]
        compiled = re.compile(pattern, flags)
        setattr(self, name, compiled)
        return compiled


_re = _Lazy()

MAX_FILES = 16  # setup files whose keywords a query takes
MAX_BYTES = 1 << 20
EXPAND_MAX_FILES = 32  # files an expansion may read (as workbooks.page.resolve_setupfiles)
EXPAND_MAX_BYTES = 1 << 22
MAX_DEPTH = 3  # files that include files that include files...


MAX_KEYWORD_LINES = 10_000  # lines naming files looked at per document; the rest are counted only


def keyword_lines(data: bytes, most: int = MAX_KEYWORD_LINES) -> tuple[list[tuple[int, int, str, str]], int]:
    """The first `most` `#+SETUPFILE:`/`#+INCLUDE:` lines, (start, end, kind, argument) in order,
    and how many candidates come after them (counted by the regex alone, at C speed).

    `kind` is "setupfile" or "include"; `end` excludes the newline."""
    out: list[tuple[int, int, str, str]] = []
    last = -1
    for m in _CANDIDATE.finditer(data):
        pos = m.start()
        start = data.rfind(b"\n", 0, pos) + 1
        if start == last or data[start:pos].strip(b" \t"):
            continue  # the same line again, or text before the keyword
        end = data.find(b"\n", pos)
        if end < 0:
            end = len(data)
        line = _re.LINE.fullmatch(data, start, end)
        if line is None:
            continue
        last = start
        out.append((start, end, line.group(1).decode("ascii").lower(), line.group(2).decode("utf-8", "replace")))
        if len(out) >= most:
            return out, len(_CANDIDATE.findall(data, end))
    return out, 0


def names_files(data: bytes) -> bool:
    """Whether the document has a `#+SETUPFILE:`/`#+INCLUDE:` line at all (the cheap check)."""
    return bool(keyword_lines(data, 1)[0]) if _CANDIDATE.search(data) else False


def include_target(arg: str) -> tuple[str, str]:
    """Split a keyword's argument into (file name, the rest): `"a b.org" src py` or `a.org`."""
    arg = arg.strip()
    if arg.startswith('"'):
        end = arg.find('"', 1)
        if end > 0:
            return arg[1:end], arg[end + 1 :].strip()
    parts = arg.split(None, 1)
    return (parts[0] if parts else ""), (parts[1] if len(parts) > 1 else "")


def locate(base: Path | None, name: str) -> tuple[Path | None, str]:
    """(the file `name` means inside `base`, "") or (None, why it is refused)."""
    if base is None:
        return None, "there is no folder to read it from (the document was not read from a file)"
    if not name:
        return None, "names no file"
    if "://" in name:
        return None, "is a URL; only files in the document's folder are read"
    try:
        lexical = Path(os.path.normpath(base / name))
        p = (base / name).resolve()
    except (OSError, ValueError, RuntimeError) as e:  # NUL bytes, symlink loops
        return None, f"cannot be resolved ({e})"
    if base not in p.parents:
        if base in lexical.parents:
            return None, "is a symlink that points outside the document's folder"
        return None, "is outside the document's folder"
    try:
        st = p.stat()
    except FileNotFoundError:
        return None, "does not exist"
    except OSError as e:
        return None, f"cannot be read ({e.strerror})"
    import stat

    if not stat.S_ISREG(st.st_mode):
        return None, "is not a regular file"
    return p, ""


def _diag(kind: str, line: int, message: str, file: str | None) -> dict:
    d = {"level": "error", "scope": f"#+{kind.upper()}", "message": message, "line": line}
    if file:
        d["file"] = file
    return d


MAX_DIAGNOSTICS = 100  # then one line says how many more there were
MAX_LOOKUPS = 256  # lines naming files whose path is resolved, per document (the rest are refused)


class _Budget:
    """What an expansion may still read, and the diagnostics it reports (capped: a hostile
    document of a million keyword lines costs a million cheap checks, not a million answers)."""

    def __init__(self, files: int, nbytes: int):
        self.files = files
        self.bytes = nbytes
        self.diags: list[dict] = []
        self.dropped = 0
        self.lookups = 0
        self.located: dict[tuple[Path | None, str], tuple[Path | None, str]] = {}

    def locate(self, base: Path | None, name: str) -> tuple[Path | None, str]:
        key = (base, name)
        if key not in self.located:
            if self.lookups >= MAX_LOOKUPS:
                return None, f"is past the first {MAX_LOOKUPS} lines naming files, which are all that is looked at"
            self.lookups += 1
            self.located[key] = locate(base, name)
        return self.located[key]

    def full(self) -> bool:
        return len(self.diags) >= MAX_DIAGNOSTICS

    def report(self, kind: str, line: int, name: str, why: str, file: str | None) -> None:
        if len(self.diags) < MAX_DIAGNOSTICS:
            self.diags.append(_diag(kind, line, f"#+{kind.upper()}: {name[:200]} {why}", file))
        else:
            self.dropped += 1

    def finish(self) -> list[dict]:
        if self.dropped:
            self.diags.append({"level": "error", "scope": "#+SETUPFILE/#+INCLUDE",
                               "message": f"{self.dropped} more lines naming files were not read (not listed; "
                                          f"at most {MAX_DIAGNOSTICS} are, of the first {MAX_KEYWORD_LINES} such lines)"})
        return self.diags


def read_capped(p: Path, cap: int) -> tuple[bytes | None, str]:
    """The bytes of `p` when it is a regular file of at most `cap` bytes, else (None, why).

    Opened without following a symlink or blocking on a FIFO (either may have been swapped in
    since `locate` looked), and never more than cap + 1 bytes are read."""
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        return None, f"cannot be read ({e.strerror})"
    too_large = f"is too large (more than the {cap} bytes that may still be read)"
    try:
        st = os.fstat(fd)
        import stat

        if not stat.S_ISREG(st.st_mode):
            return None, "is not a regular file"
        if st.st_size > cap:
            return None, too_large
        chunks, total = [], 0
        while total <= cap:
            chunk = os.read(fd, min(cap + 1 - total, max(st.st_size + 1, 1 << 16)))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as e:
        return None, f"cannot be read ({e.strerror})"
    finally:
        os.close(fd)
    if total > cap:
        return None, too_large
    return b"".join(chunks), ""


def _read(p: Path, budget: _Budget) -> tuple[str | None, str]:
    if budget.files <= 0:
        return None, "is one file too many (at most %d are read)" % EXPAND_MAX_FILES
    raw, why = read_capped(p, budget.bytes)
    if raw is None:
        return None, why
    budget.files -= 1
    budget.bytes -= len(raw)
    return raw.decode("utf-8", "replace"), ""


def _level_before(data: bytes, pos: int) -> int:
    """The level of the last headline that starts before `pos` (0 when none)."""
    end = pos
    while True:
        i = data.rfind(b"\n*", 0, end)
        start = i + 1 if i >= 0 else (0 if data.startswith(b"*") else -1)
        if start < 0:
            return 0
        m = _re.HEADLINE.match(data, start)
        if m and m.start() < pos:
            return len(m.group(1))
        if start == 0:
            return 0
        end = i


def _expand(data: bytes, base: Path | None, budget: _Budget, depth: int, label: str | None) -> bytes:
    lines, more = keyword_lines(data)
    budget.dropped += more
    if not lines:
        return data
    parts: list[bytes] = []
    cursor = 0
    line_no, counted = 1, 0  # line numbers counted incrementally: one pass over the document
    for i, (start, end, kind, arg) in enumerate(lines):
        if budget.full() and (budget.files <= 0 or budget.lookups >= MAX_LOOKUPS):
            # nothing more will be reported, and nothing new can be read: count what is left
            # cheaply, keeping only lines whose file was found already (while files may be read)
            rest_lines = lines[i:]
            if budget.files <= 0:
                budget.dropped += len(rest_lines)
                break
            found = {n for (b, n), (p, _w) in budget.located.items() if b == base and p is not None}
            if not found:
                budget.dropped += len(rest_lines)
                break
        name, rest = include_target(arg)
        if budget.full() and budget.located.get((base, name), (1, ""))[0] is None:
            budget.dropped += 1  # refused before, and no room to say so again
            continue
        line_no += data.count(b"\n", counted, start)
        counted = start
        if depth > MAX_DEPTH:
            budget.report(kind, line_no, name or arg, f"is nested too deeply (at most {MAX_DEPTH} levels)", label)
            continue
        if budget.files <= 0:  # (checked first: no path resolution once nothing more may be read)
            budget.report(kind, line_no, name or arg, f"is one file too many (at most {EXPAND_MAX_FILES} are read); the line is ignored", label)
            continue
        p, why = budget.locate(base, name)
        text = None
        if p is not None:
            text, why = _read(p, budget)
        if text is None:
            budget.report(kind, line_no, name or arg, f"{why}; the line is ignored", label)
            continue
        parts.append(data[cursor:start])
        cursor = end
        parts.append(_inline(kind, rest, text, p, base, budget, depth, data, start))
    parts.append(data[cursor:])
    return b"".join(parts)


def _inline(kind, rest, text, p, base, budget, depth, data, start) -> bytes:
    if kind == "include":
        words = rest.split()
        if words and words[0].lower() in ("src", "example", "export"):
            block = words[0].lower()
            lang = words[1] if len(words) > 1 and not words[1].startswith(":") else ""
            body = "".join(("," + ln if ln.lstrip().startswith(("*", "#+")) else ln) for ln in text.splitlines(True))
            if not body.endswith("\n"):
                body += "\n"
            return f"#+begin_{block} {lang}\n{body}#+end_{block}".encode("utf-8")
    label = str(p.relative_to(base)) if base is not None else str(p)
    inner = _expand(text.encode("utf-8"), p.parent, budget, depth + 1, label).rstrip(b"\n")
    if kind == "include":
        m_level = _re.MINLEVEL.search(rest)
        target = int(m_level.group(1)) if m_level else _level_before(data, start) + 1
        levels = [len(h) for h in _re.HEADLINE.findall(inner)]
        if levels:
            shift = target - min(levels)
            if shift > 0:
                inner = _re.HEADLINE.sub(lambda h: b"*" * (len(h.group(1)) + shift) + b" ", inner)
    return inner


def expand_bytes(data: bytes, base_dir: str | os.PathLike | None) -> tuple[bytes, list[dict]]:
    """`expand_with_diagnostics` on UTF-8 bytes (the CLI's form: no decode of the document)."""
    if not _CANDIDATE.search(data):
        return data, []
    base = Path(base_dir).resolve() if base_dir is not None else None
    budget = _Budget(EXPAND_MAX_FILES, EXPAND_MAX_BYTES)
    out = _expand(data, base, budget, 0, None)
    return out, budget.finish()


def expand_with_diagnostics(org: str, base_dir: str | os.PathLike | None) -> tuple[str, list[dict]]:
    """`org` with its `#+SETUPFILE:`/`#+INCLUDE:` lines replaced by the files they name (Org's
    export view, what the renderer needs), and a diagnostic for every such line that was left
    as written: `{"level": "error", "scope": "#+INCLUDE", "message": ..., "line": N}` (+ `"file"`
    when the line stands in an included file). `base_dir` is the document's folder; None (a
    document that came from no folder, e.g. an HTTP body) refuses every file with a diagnostic."""
    if "#+" not in org:
        return org, []
    data = org.encode("utf-8", "surrogatepass")
    out, diags = expand_bytes(data, base_dir)
    return (org if out is data else out.decode("utf-8", "surrogatepass")), diags


def setup_keywords(org: str | bytes, base_dir: str | os.PathLike | None) -> str:
    """Keyword lines of the setup files `org` names (recursively, confined to `base_dir`)."""
    if base_dir is None:
        return ""
    base = Path(base_dir).resolve()
    data = org if isinstance(org, bytes) else org.encode("utf-8", "surrogatepass")
    seen: set[Path] = set()
    lines: list[str] = []
    budget = MAX_BYTES
    pending = [data]
    tried: set[str] = set()
    while pending and len(seen) < MAX_FILES:
        text = pending.pop(0)
        for _start, _end, kind, arg in keyword_lines(text)[0]:
            name = include_target(arg)[0]
            if kind != "setupfile" or name in tried or len(seen) >= MAX_FILES:
                continue
            tried.add(name)
            if len(tried) > MAX_LOOKUPS:
                break
            p, _why = locate(base, name)
            if p is None or p in seen or len(seen) >= MAX_FILES:
                continue
            seen.add(p)
            raw, _why = read_capped(p, budget)
            if raw is None:
                continue
            budget -= len(raw)
            body = raw.decode("utf-8", "replace")
            lines.extend(k.group(0).strip() for k in _re.KEYWORD.finditer(body))
            pending.append(raw)
    return "\n".join(lines)


def with_setup_keywords_bytes(data: bytes, base_dir: str | os.PathLike | None) -> bytes:
    """`data` with its setup files' keywords appended; the same object when it names none."""
    if not _CANDIDATE.search(data):
        return data
    extra = setup_keywords(data, base_dir)
    if not extra:
        return data
    return data + (b"" if data.endswith(b"\n") else b"\n") + b"\n" + extra.encode("utf-8") + b"\n"


def with_setup_keywords(org: str, base_dir: str | os.PathLike | None) -> str:
    """`org` with its setup files' keywords appended (unchanged when it names none)."""
    if "#+" not in org:
        return org
    data = org.encode("utf-8", "surrogatepass")
    out = with_setup_keywords_bytes(data, base_dir)
    return org if out is data else out.decode("utf-8", "surrogatepass")
