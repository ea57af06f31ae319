"""Safety of `render`: escaping, neutralised link schemes, raw HTML only when allowed, and
always well-formed output (checked with an element-stack checker and html5lib) for the corpus
and for thousands of generated hostile documents."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import html5lib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbooks.oql import default_kernel
from workbooks.page import resolve_setupfiles

CORPUS = Path(__file__).resolve().parent / "fixtures" / "conformance" / "corpus"

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
# Start tags that implicitly close an open <p> (HTML5 "close a p element").
CLOSES_P = {
    "address", "article", "aside", "blockquote", "details", "dialog", "div", "dl", "fieldset", "figcaption", "figure",
    "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hgroup", "hr", "main", "menu", "nav", "ol", "p",
    "pre", "section", "table", "ul",
}
TABLE_PARENTS = {"tr": {"thead", "tbody", "tfoot", "table"}, "td": {"tr"}, "th": {"tr"}, "thead": {"table"}, "tbody": {"table"},
                 "colgroup": {"table"}, "col": {"colgroup"}, "caption": {"table"}}
# Everything the renderer emits when author HTML is off.
ALLOWED_TAGS = {
    "a", "b", "i", "del", "span", "code", "sub", "sup", "br", "hr", "p", "div", "h2", "h3", "h4", "h5", "h6", "ul", "ol",
    "li", "dl", "dt", "dd", "table", "caption", "colgroup", "col", "thead", "tbody", "tr", "th", "td", "pre", "blockquote",
    "img", "label",
}
ALLOWED_ATTRS = {"id", "class", "href", "src", "alt", "role", "value", "scope", "border", "cellspacing", "cellpadding", "rules", "frame"}


class WellFormed(HTMLParser):
    """Tracks open elements; records every unclosed, stray or misnested element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, list]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))
        if tag in CLOSES_P and "p" in self.stack:
            self.errors.append(f"<{tag}> inside <p> (would close it)")
        if tag == "a" and "a" in self.stack:
            self.errors.append("<a> inside <a>")
        if tag == "li" and not (self.stack and self.stack[-1] in ("ul", "ol")):
            self.errors.append(f"<li> in <{self.stack[-1] if self.stack else 'root'}>")
        if tag in ("dt", "dd") and not (self.stack and self.stack[-1] == "dl"):
            self.errors.append(f"<{tag}> outside <dl>")
        if tag in TABLE_PARENTS and not (self.stack and self.stack[-1] in TABLE_PARENTS[tag]):
            self.errors.append(f"<{tag}> in <{self.stack[-1] if self.stack else 'root'}>")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.errors.append(f"self-closed non-void <{tag}/>")
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID:
            self.errors.append(f"end tag for void </{tag}>")
            return
        if not self.stack:
            self.errors.append(f"stray </{tag}>")
        elif self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1]}>")
            if tag in self.stack:
                while self.stack and self.stack.pop() != tag:
                    pass
        else:
            self.stack.pop()

    def finish(self) -> list[str]:
        self.close()
        return self.errors + [f"unclosed <{t}>" for t in self.stack]


def wellformed_errors(html: str) -> list[str]:
    w = WellFormed()
    w.feed(html)
    return w.finish()


def html5lib_errors(html: str) -> list:
    p = html5lib.HTMLParser(strict=False)
    p.parseFragment(html, container="div")
    return p.errors


def tags_and_attrs(html: str):
    w = WellFormed()
    w.feed(html)
    w.close()
    return w.tags


@pytest.fixture(scope="module")
def kernel():
    return default_kernel()


def render(kernel, org: str, **opts) -> str:
    return kernel.call_raw("render_with", org, json.dumps(opts)).decode("utf-8")


def hrefs(html: str) -> list[str]:
    return [v for tag, attrs in tags_and_attrs(html) for k, v in attrs if k in ("href", "src")]


# --- escaping ----------------------------------------------------------------------------


def test_text_and_attributes_are_escaped(kernel):
    org = (
        '* <script>alert(1)</script> & "q" :t"ag:\n'
        ":PROPERTIES:\n:CUSTOM_ID: x\"onmouseover=\"alert(1)\n:END:\n"
        "A <b>bold</b> & <img src=x onerror=alert(1)>.\n"
        "| <td> | a&b |\n"
        "#+begin_src <lang\"x>\n</pre><script>x</script>\n#+end_src\n"
        "[[https://x.org/\"onclick=\"alert(1)][<i>desc</i>]]\n"
        "#+CAPTION: <caption>\n[[file:a\"b.png]]\n"
    )
    html = render(kernel, org, raw_html=False)
    assert "<script" not in html and "<img src=x" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;" in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    for tag, attrs in tags_and_attrs(html):
        assert tag in ALLOWED_TAGS, tag
        for k, v in attrs:
            assert k in ALLOWED_ATTRS, (tag, k, v)
    assert not wellformed_errors(html)


# --- link schemes ------------------------------------------------------------------------

DANGEROUS = [
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "java\tscript:alert(1)",
    " javascript:alert(1)",
    "\x01javascript:alert(1)",
    "vbscript:msgbox(1)",
    "data:text/html;base64,PHNjcmlwdD4=",
    "DATA:text/html,<script>alert(1)</script>",
    "javascript&#58;alert(1)",
    "javascript&colon;alert(1)",
    "&#106;avascript:alert(1)",
    "jav&#x09;ascript:alert(1)",
    "livescript:x",
]


@pytest.mark.parametrize("url", DANGEROUS)
@pytest.mark.parametrize("form", ["[[{u}][click]]", "[[{u}]]", "<{u}>", "[[{u}][file:x.png]]", "[[shell:{u}]]"])
def test_dangerous_schemes_are_neutralised(kernel, url, form):
    org = form.format(u=url) + "\n"
    html = render(kernel, org)
    for h in hrefs(html):
        low = re.sub(r"[\x00-\x20]", "", h).lower()
        assert not low.startswith(("javascript:", "vbscript:", "data:", "livescript:")), (org, h)
        # What the browser would see after decoding the attribute:
        assert "javascript:" not in low and "vbscript:" not in low


def test_safe_schemes_and_data_images(kernel):
    html = render(kernel, "[[https://a.org][a]] [[http://b.org][b]] [[mailto:x@y.org][m]] [[ftp://f.org][f]] [[file:doc.pdf][d]] [[./rel/x.txt][r]] [[#frag][g]] [[data:image/png;base64,iVBOR]]\n")
    hs = hrefs(html)
    assert "https://a.org" in hs and "http://b.org" in hs and "mailto:x@y.org" in hs and "ftp://f.org" in hs
    assert "doc.pdf" in hs and "./rel/x.txt" in hs
    assert "data:image/png;base64,iVBOR" in hs  # an image: data:image/ allowed as img src
    html = render(kernel, "[[data:image/svg+xml,<svg onload=alert(1)>]] [[data:image/png;base64,x][as link]]\n")
    for h in hrefs(html):
        assert not h.lower().startswith("data:image/svg"), h
    assert 'href="data:' not in html


def test_raw_html_false_lets_no_author_html_through(kernel):
    org = (
        "#+HTML: <script>a()</script>\n"
        "#+begin_export html\n<iframe src=//evil></iframe>\n#+end_export\n"
        "x @@html:<img src=x onerror=b()>@@ y\n"
        "#+MACRO: m @@html:<object>@@\n{{{m}}}\n"
        "#+begin_src html\n<script>c()</script>\n#+end_src\n"
        "<div onclick=d()>text</div>\n"
    )
    off = render(kernel, org, raw_html=False)
    for bad in ("<script", "<iframe", "<img src=x", "<object", "<div onclick"):
        assert bad not in off
    for tag, attrs in tags_and_attrs(off):
        assert tag in ALLOWED_TAGS
    on = render(kernel, org)
    assert "<script>a()</script>" in on and "<iframe" in on  # author HTML is the author's choice by default


# --- well-formedness ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.stem for p in CORPUS.glob("*.org")))
def test_corpus_output_is_well_formed(kernel, name):
    p = CORPUS / f"{name}.org"
    org = resolve_setupfiles(p.read_text(encoding="utf-8"), p.parent)
    html = render(kernel, org, toc=True)
    assert wellformed_errors(html) == []
    assert html5lib_errors(html) == []


HOSTILE_TOKENS = [
    "*", "/", "_", "=", "~", "+", "^", "**", "*b*", "/i/", "=v=", "~c~", "[[", "]]", "][", "[", "]", "[fn:1]", "[fn::",
    "[fn:x:", "<<", ">>", "<<<", ">>>", "{{{", "}}}", "{{{m(a,b)}}}", "@@html:", "@@", "$", "$$", "\\(", "\\)", "\\[", "\\]",
    "\\alpha", "\\\\", "\\begin{equation}", "\\end{equation}", "src_py{", "}", "{", "<2024-01-01 Mon>", "[2024-01-01]",
    "--", "...", "'", '"', "&", "<", ">", "<script>", "</p>", "</div>", "javascript:", "https://x.org", "file:a.org",
    "[[file:i.png]]", "[[#x]]", "[[*h]]", "\n", "\n\n", "\n* h\n", "\n** h2 :t:\n", "\n*** TODO [#A] h3\n", "\n- ", "\n  - ",
    "\n1. ", "\n- [X] ", "\n- a :: ", "\n| a | b |", "\n|---+---|", "|", "\n#+begin_src python\n", "\n#+end_src\n",
    "\n#+begin_quote\n", "\n#+end_quote\n", "\n#+begin_example\n", "\n#+begin_verse\n", "\n#+end_verse\n",
    "\n#+begin_center\n", "\n#+begin_foo\n", "\n#+end_foo\n", "\n:DRAWER:\n", "\n:END:\n", "\n:PROPERTIES:\n",
    "\n#+CAPTION: c\n", "\n#+NAME: n\n", "\n#+TITLE: t\n", "\n#+MACRO: m $1 {{{m}}}\n", "\n#+OPTIONS: toc:t H:1 ^:{} num:2\n",
    "\n: fixed\n", "\n-----\n", "\n[fn:1] def\n", "\n#+HTML: <b>\n", "\n# comment\n", "    ", "\t", "é", "中", "\u200b",
    "\\", "x", "word ", " ",
]
hostile_docs = st.lists(st.one_of(st.sampled_from(HOSTILE_TOKENS), st.text(max_size=4)), max_size=60).map("".join)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=hostile_docs, toc=st.booleans())
def test_hostile_documents_render_well_formed(kernel, doc, toc):
    html = render(kernel, doc, raw_html=False, toc=toc, planning=True, drawers=True)
    errs = wellformed_errors(html)
    assert errs == [], (doc, errs, html)
    for tag, attrs in tags_and_attrs(html):
        assert tag in ALLOWED_TAGS, (doc, tag)
        for k, v in attrs:
            assert k in ALLOWED_ATTRS, (doc, tag, k)
            if k in ("href", "src"):
                assert not re.sub(r"[\x00-\x20]", "", v).lower().startswith(("javascript:", "vbscript:")), (doc, v)


@settings(max_examples=150, deadline=None)
@given(doc=hostile_docs)
def test_hostile_documents_pass_html5lib(kernel, doc):
    html = render(kernel, doc, raw_html=False)
    assert html5lib_errors(html) == [], (doc, html)


def test_deep_nesting_is_capped_but_well_formed(kernel):
    lists = "".join(" " * d + "- item\n" for d in range(3000))
    quotes = "#+begin_quote\n" * 500 + "x\n" + "#+end_quote\n" * 500
    stars = "".join("*" * d + " h\n" for d in range(1, 3000))
    for doc in (lists, quotes, stars):
        html = render(kernel, doc, raw_html=False)
        assert wellformed_errors(html) == []
