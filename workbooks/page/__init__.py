"""The page shell shared by `wbx render --page` and the public plane. (Being rebuilt by K2.)"""

from __future__ import annotations

import html as _html
import re
from pathlib import Path

SETUPFILE_RE = re.compile(r"^[ \t]*#\+(setupfile|include):[ \t]*(.*?)[ \t]*$", re.IGNORECASE | re.MULTILINE)


def _include_target(arg: str) -> tuple[str, str]:
    """Split an INCLUDE/SETUPFILE argument into (file name, rest)."""
    arg = arg.strip()
    if arg.startswith('"'):
        end = arg.find('"', 1)
        if end > 0:
            return arg[1:end], arg[end + 1 :].strip()
    parts = arg.split(None, 1)
    return (parts[0] if parts else ""), (parts[1] if len(parts) > 1 else "")


def resolve_setupfiles(org: str, base_dir, *, max_files: int = 32, max_bytes: int = 1 << 22, _depth: int = 0) -> str:
    """Inline `#+SETUPFILE:` and `#+INCLUDE:` files next to the document.

    Why: the kernel is a pure function with no file access, so the host resolves these the
    way Org does before rendering. Only files inside `base_dir` are read (no URLs, no `..`
    escapes, no absolute paths outside it); anything else is left as written, which the
    kernel then ignores. `#+INCLUDE: "f" src LANG` / `example` wrap the text in a block.
    """
    base = Path(base_dir).resolve()
    budget = {"files": max_files, "bytes": max_bytes}

    def repl(m):
        kind = m.group(1).lower()
        name, rest = _include_target(m.group(2))
        if not name or "://" in name or budget["files"] <= 0 or _depth > 3:
            return m.group(0)
        p = (base / name).resolve()
        if base not in p.parents or not p.is_file() or p.stat().st_size > budget["bytes"]:
            return m.group(0)
        budget["files"] -= 1
        text = p.read_text(encoding="utf-8", errors="replace")
        budget["bytes"] -= len(text)
        if kind == "include":
            words = rest.split()
            if words and words[0].lower() in ("src", "example", "export"):
                block = words[0].lower()
                lang = words[1] if len(words) > 1 and not words[1].startswith(":") else ""
                body = "".join(("," + ln if ln.lstrip().startswith(("*", "#+")) else ln) for ln in text.splitlines(True))
                if not body.endswith("\n"):
                    body += "\n"
                return f"#+begin_{block} {lang}\n{body}#+end_{block}"
        text = resolve_setupfiles(text, p.parent, max_files=budget["files"], max_bytes=budget["bytes"], _depth=_depth + 1).rstrip("\n")
        if kind == "include":
            # Org shifts included headlines below the including one (or to :minlevel N).
            m_level = re.search(r":minlevel\s+(\d+)", rest)
            if m_level:
                target = int(m_level.group(1))
            else:
                before = org[: m.start()]
                heads = re.findall(r"^(\*+) ", before, re.MULTILINE)
                target = len(heads[-1]) + 1 if heads else 1
            levels = [len(h) for h in re.findall(r"^(\*+) ", text, re.MULTILINE)]
            if levels:
                shift = target - min(levels)
                if shift > 0:
                    text = re.sub(r"^(\*+) ", lambda h: "*" * (len(h.group(1)) + shift) + " ", text, flags=re.MULTILINE)
        return text

    return SETUPFILE_RE.sub(repl, org)


def page_from_org(org: str, fragment: str) -> str:
    return render_page(fragment, title="", description="")


def render_page(fragment: str, *, title: str, description: str, lang: str = "en") -> str:
    t = _html.escape(title)
    d = _html.escape(description)
    return (
        f'<!DOCTYPE html>\n<html lang="{_html.escape(lang)}"><head><meta charset="utf-8">'
        f'<meta name="description" content="{d}"><title>{t}</title></head>'
        f"<body>{fragment}</body></html>\n"
    )
