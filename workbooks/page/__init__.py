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


def resolve_setupfiles(org: str, base_dir) -> str:
    """Inline `#+SETUPFILE:` and `#+INCLUDE:` files next to the document.

    Why: the kernel is a pure function with no file access, so the host resolves these the way Org
    does before rendering. One bounded implementation does it (`workbooks.oql.setupfile`): only
    files inside `base_dir` are read, and a refused line is left as written (the kernel ignores it;
    `wbx lint` and the deploy response report it).
    """
    from workbooks.oql.setupfile import expand_with_diagnostics

    return expand_with_diagnostics(org, base_dir)[0]


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
