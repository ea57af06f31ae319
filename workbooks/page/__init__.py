"""The page shell shared by `wbx render --page` and the public plane. (Being rebuilt by K2.)"""

from __future__ import annotations

import html as _html
import re
from pathlib import Path

SETUPFILE_RE = re.compile(r"^[ \t]*#\+setupfile:[ \t]*(.*?)[ \t]*$", re.IGNORECASE | re.MULTILINE)


def resolve_setupfiles(org: str, base_dir, *, max_files: int = 16, max_bytes: int = 1 << 20) -> str:
    """Inline `#+SETUPFILE:` files found next to the document (the kernel cannot read files)."""
    base = Path(base_dir).resolve()
    seen = 0

    def repl(m):
        nonlocal seen
        name = m.group(1).strip().strip('"')
        if not name or "://" in name or seen >= max_files:
            return m.group(0)
        p = (base / name).resolve()
        if base not in p.parents or not p.is_file() or p.stat().st_size > max_bytes:
            return m.group(0)
        seen += 1
        return p.read_text(encoding="utf-8", errors="replace")

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
