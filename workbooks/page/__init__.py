"""The page shell: one standalone HTML5 page around a rendered fragment.

Shared by `wbx render --page` and the public plane, so there is exactly one place that decides
what a published page looks like. The page is self-contained: the theme CSS (light and dark via
`prefers-color-scheme`) and, only when the fragment has math, a small TeX-to-MathML script are
inlined; there is no <link>, no external script, no web font, no url() — the page makes no
request of its own. A Content-Security-Policy restricts scripts to our one inline script (by hash)
and forbids connections, frames, forms and plugins, so author HTML let through with
`raw_html` cannot add scripts or phone home.
"""

from __future__ import annotations

import base64
import hashlib
import html as _html
import json
import re
from functools import lru_cache
from html.parser import HTMLParser
from pathlib import Path

__all__ = [
    "render_page",
    "page_from_org",
    "render_org_page",
    "org_metadata",
    "resolve_setupfiles",
    "theme_css",
    "math_js",
    "page_csp",
    "header_csp",
    "PAGE_POLICY",
]

HERE = Path(__file__).resolve().parent
LANG_RE = re.compile(r"^[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*$")


@lru_cache(maxsize=1)
def theme_css() -> str:
    """The page theme (light and dark)."""
    return (HERE / "theme.css").read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def math_js() -> str:
    """The client-side math renderer (TeX in `.math` elements to MathML)."""
    return (HERE / "math.js").read_text(encoding="utf-8")


def _sha256_b64(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


# The one Content-Security-Policy of a published page: in the page's <meta> and, unchanged, in the
# public plane's header. Nothing but the shell's own inline style and (on pages with math) its own
# script runs; images and media may come from the page's origin, `data:` and https.
PAGE_POLICY = ("default-src 'none'; img-src 'self' data: https:; media-src 'self' https:; "
               "base-uri 'none'; form-action 'none'")
# What a <meta> policy cannot carry (browsers ignore it there): the header adds it.
HEADER_ONLY_POLICY = "frame-ancestors 'self'"


def _style_block() -> str:
    """The text of the shell's one <style> element (hashed into the policy)."""
    return "\n" + theme_css()


def page_csp(with_script: bool) -> str:
    """The Content-Security-Policy of a page (the public plane sends it as its header too)."""
    script = f"'sha256-{_sha256_b64(math_js())}'" if with_script else "'none'"
    return f"{PAGE_POLICY}; style-src 'sha256-{_sha256_b64(_style_block())}'; script-src {script}"


def header_csp(with_script: bool) -> str:
    """`page_csp` plus the directives only a header can carry."""
    return f"{page_csp(with_script)}; {HEADER_ONLY_POLICY}"


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


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_to_text(fragment: str) -> str:
    """Visible text of an HTML fragment, whitespace folded."""
    p = _Text()
    p.feed(fragment)
    p.close()
    return " ".join("".join(p.parts).split())


def _first_heading(fragment: str) -> str:
    m = re.search(r"<h[1-6][^>]*>(.*?)</h[1-6]>", fragment, re.S)
    if not m:
        return ""
    text = html_to_text(m.group(1))
    return re.sub(r"^\d+(\.\d+)*\.\s+", "", text)


def render_page(fragment: str, *, title: str, description: str, lang: str = "en", subtitle: str = "", author: str = "") -> str:
    """A standalone HTML5 page around `fragment` (already-rendered, trusted kernel output)."""
    lang = lang if lang and LANG_RE.match(lang) else "en"
    has_math = 'class="math' in fragment
    e = _html.escape
    head = [
        "<!DOCTYPE html>",
        f'<html lang="{e(lang)}">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="color-scheme" content="light dark">',
        f'<meta http-equiv="Content-Security-Policy" content="{e(page_csp(has_math))}">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{e(title or 'Untitled')}</title>",
    ]
    if description:
        head.append(f'<meta name="description" content="{e(description)}">')
    if author:
        head.append(f'<meta name="author" content="{e(author)}">')
    head.append(f"<style>{_style_block()}</style>")
    head.append("</head>")
    body = ['<body>', '<main id="content" class="content">']
    if title:
        body.append(f'<h1 class="title">{e(title)}</h1>')
    if subtitle:
        body.append(f'<p class="subtitle">{e(subtitle)}</p>')
    body.append(fragment)
    body.append("</main>")
    if has_math:
        body.append(f"<script>{math_js()}</script>")
    body.append("</body>\n</html>\n")
    return "\n".join(head + body)


def org_metadata(org: str | bytes, kernel=None) -> dict:
    """`#+TITLE`, `#+AUTHOR`, `#+DATE`, `#+DESCRIPTION`, `#+LANGUAGE` (and more) from the kernel.

    Returns the kernel's `meta` object plus `title_text` (the title with Org markup rendered
    and tags stripped, for <title>).
    """
    if kernel is None:
        from workbooks.oql import default_kernel

        kernel = default_kernel()
    raw = kernel.call_raw("render_with", org, json.dumps({"metadata": True, "toc": False}))
    data = json.loads(raw)
    meta = dict(data.get("meta") or {})
    meta["title_text"] = html_to_text(data.get("title_html") or "")
    return meta


def page_from_org(org: str, fragment: str, kernel=None) -> str:
    """The page for an Org document whose fragment was already rendered."""
    meta = org_metadata(org, kernel)
    title = meta.get("title_text") or _first_heading(fragment)
    description = meta.get("description") or ""
    return render_page(
        fragment,
        title=title,
        description=description,
        lang=meta.get("language") or "en",
        subtitle=html_to_text(meta.get("subtitle") or ""),
        author=meta.get("author") or "",
    )


def render_org_page(org: str | bytes, *, options: dict | None = None, kernel=None, base_dir=None) -> str:
    """Org document → standalone page in one kernel call (`render_with` + metadata).

    `base_dir`, when given, resolves `#+SETUPFILE:`/`#+INCLUDE:` next to the document first.
    """
    if kernel is None:
        from workbooks.oql import default_kernel

        kernel = default_kernel()
    if base_dir is not None:
        text = org.decode("utf-8") if isinstance(org, (bytes, bytearray)) else org
        org = resolve_setupfiles(text, base_dir)
    opts = dict(options or {})
    opts["metadata"] = True
    data = json.loads(kernel.call_raw("render_with", org, json.dumps(opts)))
    meta = data.get("meta") or {}
    fragment = data.get("html") or ""
    title = html_to_text(data.get("title_html") or "") or _first_heading(fragment)
    return render_page(
        fragment,
        title=title,
        description=meta.get("description") or "",
        lang=meta.get("language") or "en",
        subtitle=html_to_text(meta.get("subtitle") or ""),
        author=meta.get("author") or "",
    )
