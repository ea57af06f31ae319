"""In-buffer settings from `#+SETUPFILE:` for local CLI use.

The kernel is pure and cannot read files, but Org reads a setup file's keywords (`#+TODO:`,
`#+MACRO:`, …) as if they stood in the document. For `wbx query|tangle|lint FILE` the host
collects those keyword lines and appends them, so a document whose TODO keywords live in a
setup file parses the way Emacs parses it. Only files inside the document's own directory are
read (no URLs, no `..` or absolute escapes, no symlinks out), with caps on count and size;
anything else is left alone. Headlines and text of a setup file are never taken.
"""

from __future__ import annotations

import re
from pathlib import Path

SETUPFILE_RE = re.compile(r"^[ \t]*#\+setupfile:[ \t]*(.*?)[ \t]*$", re.IGNORECASE | re.MULTILINE)
KEYWORD_RE = re.compile(r"^[ \t]*#\+(?!begin_|end_|setupfile:)[A-Za-z_][A-Za-z0-9_-]*:.*$", re.IGNORECASE | re.MULTILINE)
MAX_FILES = 16
MAX_BYTES = 1 << 20


def _target(arg: str) -> str:
    arg = arg.strip()
    if arg.startswith('"'):
        end = arg.find('"', 1)
        return arg[1:end] if end > 0 else ""
    return arg.split()[0] if arg.split() else ""


def confined(base: Path, name: str) -> Path | None:
    """`name` resolved inside `base`, or None when it would leave it (or is not a file)."""
    if not name or "://" in name:
        return None
    p = (base / name).resolve()
    if base not in p.parents or not p.is_file():
        return None
    return p


def setup_keywords(org: str, base_dir: str | Path) -> str:
    """Keyword lines of the setup files `org` names (recursively, confined to `base_dir`)."""
    base = Path(base_dir).resolve()
    seen: set[Path] = set()
    lines: list[str] = []
    budget = MAX_BYTES
    pending = [org]
    while pending and len(seen) < MAX_FILES:
        text = pending.pop(0)
        for m in SETUPFILE_RE.finditer(text):
            p = confined(base, _target(m.group(1)))
            if p is None or p in seen or len(seen) >= MAX_FILES:
                continue
            seen.add(p)
            size = p.stat().st_size
            if size > budget:
                continue
            budget -= size
            body = p.read_text(encoding="utf-8", errors="replace")
            lines.extend(k.group(0).strip() for k in KEYWORD_RE.finditer(body))
            pending.append(body)
    return "\n".join(lines)


def with_setup_keywords(org: str, base_dir: str | Path) -> str:
    """`org` with its setup files' keywords appended (unchanged when it names none)."""
    if "setupfile" not in org.lower():
        return org
    extra = setup_keywords(org, base_dir)
    if not extra:
        return org
    return org + ("" if org.endswith("\n") else "\n") + "\n" + extra + "\n"
