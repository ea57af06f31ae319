"""Author HTML cannot break the page: whatever `#+HTML:`, `#+begin_export html` or `@@html:…@@`
holds, the sections, headings and paragraphs around it keep their place in the document tree
that an HTML5 parser (html5lib) builds, for the fragment and for the standalone page."""

from __future__ import annotations

import json

import html5lib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbooks.oql import default_kernel
from workbooks.page import render_page


@pytest.fixture(scope="module")
def kernel():
    return default_kernel()


def render(kernel, org: str, **opts) -> str:
    return kernel.call_raw("render_with", org, json.dumps(opts)).decode("utf-8")


def fragment_root(html: str):
    return html5lib.parseFragment(html, container="div", treebuilder="etree", namespaceHTMLElements=False)


def page_root(html: str):
    doc = html5lib.parse(render_page(html, title="t", description=""), treebuilder="etree", namespaceHTMLElements=False)
    mains = [e for e in doc.iter("main") if e.get("id") == "content"]
    assert len(mains) == 1
    return mains[0]


def elements(e):
    return [c for c in e if isinstance(c.tag, str)]


def text_of(e) -> str:
    return "".join(e.itertext())


def classes(e) -> set[str]:
    return set((e.get("class") or "").split())


def section_doc(pieces: list[tuple[str, str]]) -> str:
    """One section per piece: the piece (as `kind`), a MARK paragraph, a subsection, so the
    tree shows where everything after the piece ended up."""
    out = []
    for k, (kind, piece) in enumerate(pieces, 1):
        out.append(f"* Section {k}\n:PROPERTIES:\n:CUSTOM_ID: sec-{k}\n:END:\n")
        if kind == "keyword":
            out.append(f"#+HTML: {piece}\n")
        elif kind == "block":
            out.append(f"#+begin_export html\n{piece}\n#+end_export\n")
        elif kind == "inline":
            out.append(f"Before @@html:{piece}@@ after.\n")
        elif kind == "title":
            out[-1] = out[-1].replace(f"* Section {k}\n", f"* Section {k} @@html:{piece}@@ tail\n", 1)
        out.append(f"\nMARK{k} follows.\n")
        out.append(f"** Sub {k}\n:PROPERTIES:\n:CUSTOM_ID: sub-{k}\n:END:\nSUBTEXT{k} ends\n")
    return "".join(out)


def check_sections(root, n: int) -> None:
    """Every section is a sibling at the top, in order, with its heading, its MARK paragraph
    straight inside its text container and its subsection inside it."""
    tops = [e for e in elements(root) if "outline-2" in classes(e)]
    assert [e.get("id") for e in tops] == [f"outline-container-sec-{k}" for k in range(1, n + 1)]
    for k, sec in enumerate(tops, 1):
        heads = [e for e in elements(sec) if e.tag == "h2"]
        assert [h.get("id") for h in heads][:1] == [f"sec-{k}"], k
        texts = [e for e in elements(sec) if "outline-text-2" in classes(e)]
        assert len(texts) == 1, k
        marks = [p for p in elements(texts[0]) if p.tag == "p" and f"MARK{k} follows." in text_of(p)]
        assert len(marks) == 1 and text_of(marks[0]).strip() == f"MARK{k} follows.", k
        subs = [e for e in elements(sec) if "outline-3" in classes(e)]
        assert [s.get("id") for s in subs] == [f"outline-container-sub-{k}"], k
        h3 = [e for e in elements(subs[0]) if e.tag == "h3"]
        assert [h.get("id") for h in h3] == [f"sub-{k}"]
        sub_texts = [e for e in elements(subs[0]) if "outline-text-3" in classes(e)]
        assert len(sub_texts) == 1 and [text_of(p).strip() for p in elements(sub_texts[0])] == [f"SUBTEXT{k} ends"]
    # nothing of ours was swallowed into a comment, a textarea or a script
    whole = "".join(root.itertext())
    for k in range(1, n + 1):
        assert whole.count(f"MARK{k} follows.") == 1 and whole.count(f"SUBTEXT{k} ends") == 1


def check_everywhere(kernel, pieces) -> str:
    html = render(kernel, section_doc(pieces))
    check_sections(fragment_root(html), len(pieces))
    check_sections(page_root(html), len(pieces))
    return html


# Hostile pieces: each one alone would, written as it is, swallow or break what follows.
HOSTILE = [
    "<div><b>", "<div class='x", '<a href="x', "<a href=x title='y", "</div>", "</div></div></div>", "</p>", "<p>",
    "<textarea>", "<title>", "<script>", "<script>if (a < b) {", "<style>", "<xmp>", "<iframe>", "<noembed>", "<noframes>",
    "<noscript>", "<noscript><!-- </noscript><div> -->", "<!--", "<!-- x --!", "<!-->", "<![CDATA[", "<!DOCTYPE html",
    "<?xml x", "</", "<", "<table>", "<table><tr><td>", "<td>", "</td><td>", "<tr>", "</table>", "<li>", "</li>",
    "<ul><li>", "<dd>", "<dt>", "<h1>", "</h2>", "<h3>", "<select>", "<select><option>", "<option>", "<template>",
    "<svg>", "<svg><circle/>", "<math><mi>", "<svg><foreignObject><div>", "<math><annotation-xml encoding=text/html><style>",
    "<plaintext>", "<body>", "</body></html>", "<html>", "<head>", "<frameset>", "<form>", "<form><form>", "<button>",
    "<object>", "<caption>", "<colgroup><col>", "<tbody>", "<a href=x><a href=y>", "<b><i></b>", "<ruby><rt>",
    "<script><!--<script>", "<textarea></textarea", "<div/>", "<span/>", "<br/>", "</br>", "<img src=x",
    "<select><textarea>", "<select><xmp></select><div></xmp>", "<font color=red><svg><font color=red>", "\x00\x01<b>\x7f",
    "<a href='x\" onclick=y>", "<div <div>", "<div =x>", "<div x=1 x=2>",
    # found by fuzzing: an SVG element named html; MathML's annotation-xml inside SVG is SVG
    "<svg><html><title><table>", "<svg><math><annotation-xml encoding=text/html><style><table><tr><td>",
    "<svg><select></svg><select><xmp></select><div></xmp>",
]
KINDS = ["keyword", "block", "inline", "title"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_hostile_piece_keeps_the_page_structure(kernel, kind):
    pieces = [(kind, p) for p in HOSTILE if kind == "block" or "\n" not in p]
    check_everywhere(kernel, pieces)


@pytest.mark.parametrize("kind", KINDS)
def test_all_hostile_pieces_in_one_section_keep_the_page_structure(kernel, kind):
    check_everywhere(kernel, [(kind, "".join(HOSTILE))])


RAW_TOKENS = HOSTILE + [
    "<div>", "</b>", "<b>", "</i>", "<i>", "</span>", "<span>", "</a>", "-->", "--!>", "]]>", "</script>", "</style>",
    "</textarea>", "</noscript>", "</select>", "</svg>", "</math>", "</template>", "</ul>", "</tr>", '"', "'", "=", ">",
    " ", "text", "&amp;", "&", "<pre>", "</pre>", "<hr>", "<input>", "<keygen>", "<mi>", "<desc>", "<title/>",
]
raw_piece = st.lists(st.one_of(st.sampled_from(RAW_TOKENS), st.text(max_size=3)), max_size=12).map("".join)


def _no_newline(s: str) -> str:
    return s.replace("\n", " ").replace("\r", " ").replace("@@", "@")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(st.tuples(st.sampled_from(KINDS), raw_piece), min_size=1, max_size=4))
def test_generated_pieces_keep_the_page_structure(kernel, pieces):
    fixed = []
    for kind, p in pieces:
        if kind == "block":
            # a line that Org would read as the block's end or a headline is not part of the block
            p = "\n".join(ln for ln in p.replace("\r", "\n").split("\n") if not ln.lstrip().startswith(("#", "*", ",")))
        else:
            p = _no_newline(p)
        fixed.append((kind, p))
    check_everywhere(kernel, fixed)


# --- what a writer expects -------------------------------------------------------------------


def test_well_formed_author_html_comes_out_as_written(kernel):
    for piece in ['<div class="note"><b>x</b> &amp; <a href="https://x.org/?a=1&b=2">y</a></div>',
                  "<table><tr><td>1</td><td>2</td></tr></table>", "<!-- a note -->",
                  "<style>p > b { color: red }</style>", "<svg viewBox=\"0 0 1 1\"><circle r=\"1\" /></svg>",
                  "<b class=raw1>x</b>", "<img src='a.png' alt=\"A\" />"]:
        html = render(kernel, f"#+HTML: {piece}\n")
        assert html == piece + "\n"


def test_an_element_closed_by_a_later_piece_of_the_same_container_wraps_what_is_between(kernel):
    # The Org manual's own example of inline snippets.
    html = render(kernel, "Some @@html:<b>@@bold text@@html:</b>@@ here.\n\nNext.\n")
    root = fragment_root(html)
    ps = elements(root)
    assert [p.tag for p in ps] == ["p", "p"]
    assert [(b.tag, b.text) for b in elements(ps[0])] == [("b", "bold text")]
    # The common wrapper idiom: a div around Org content, opened and closed by #+HTML: lines.
    html = render(kernel, "* A\n#+HTML: <div class=\"note\">\nInside.\n- item\n#+HTML: </div>\nOutside.\n* B\nb\n")
    text = [e for e in fragment_root(html).iter("div") if "outline-text-2" in classes(e)][0]
    kids = elements(text)
    assert [(k.tag, k.get("class")) for k in kids] == [("div", "note"), ("p", None)]
    assert "Inside." in text_of(kids[0]) and "item" in text_of(kids[0]) and text_of(kids[1]).strip() == "Outside."


def test_an_element_nothing_closes_ends_with_its_piece(kernel):
    html = render(kernel, "* A\n#+HTML: <div><b>\nAfter.\n* B\nb\n")
    text = [e for e in fragment_root(html).iter("div") if "outline-text-2" in classes(e)][0]
    kids = elements(text)
    assert [k.tag for k in kids] == ["div", "p"] and text_of(kids[0]) == "" and text_of(kids[1]).strip() == "After."
    # inline: the rest of the paragraph is not bold either
    html = render(kernel, "a @@html:<b>@@ b *c* d\n")
    assert "<b></b> b <b>c</b> d" in html
    # a close in another container does not count: a list item's </b> cannot close a section's <b>
    html = render(kernel, "#+HTML: <b>\nx\n- @@html:</b>@@ y\n")
    assert html.startswith("<b></b>\n")


def test_open_comments_raw_text_and_quotes_end_inside_their_piece(kernel):
    cases = {
        "<!-- open": "<!-- open-->",
        "<textarea>x": "<textarea>x</textarea>",
        "<script>if (a < b) {": "<script>if (a < b) {</script>",
        "<style>p {": "<style>p {</style>",
        '<a href="x>y': '<a href="x>y"></a>',
        "<title>": "<title></title>",
        "<div/>": "<div></div>",
    }
    for piece, want in cases.items():
        assert render(kernel, f"#+HTML: {piece}\nafter\n").startswith(want + "\n<p>\nafter\n</p>"), piece


def test_stray_end_tags_and_misplaced_parts_are_dropped(kernel):
    html = render(kernel, "- item @@html:</li></ul><li>@@ one\n- two\n")
    root = fragment_root(html)
    lis = list(root.iter("li"))
    assert [text_of(li).strip() for li in lis] == ["item  one", "two"]
    html = render(kernel, "| a @@html:</td><td>@@ b | c |\n")
    cells = [text_of(td).strip() for td in fragment_root(html).iter("td")]
    assert cells == ["a  b", "c"]


def test_raw_html_false_still_drops_everything(kernel):
    org = "#+HTML: <div><b>\n#+begin_export html\n<i>\n#+end_export\nx @@html:<u>@@ y\n"
    off = render(kernel, org, raw_html=False)
    assert off == "<p>\nx  y\n</p>\n"


def container_doc(piece: str) -> str:
    return (
        f"- one @@html:{piece}@@ end\n- NEXTITEM\n\nAFTERLIST\n\n"
        f"#+begin_quote\n#+HTML: {piece}\nquoted\n#+end_quote\nAFTERQUOTE\n\n"
        f"| a @@html:{piece}@@ | CELL2 |\n| CELL3 | CELL4 |\n\nAFTERTABLE\n\n"
        f"Note[fn:1].\n\n[fn:1] def @@html:{piece}@@ x\n\nFNPARA\n\n* Last\nLASTTEXT\n"
    )


def check_containers(root) -> None:
    kids = elements(root)
    uls = [e for e in kids if e.tag == "ul" and "org-ul" in classes(e)]
    assert len(uls) == 1
    items = [li for li in elements(uls[0]) if li.tag == "li"]
    assert len(items) == 2 and text_of(items[1]).strip() == "NEXTITEM"
    tops = {text_of(p).strip() for p in kids if p.tag == "p"}
    assert {"AFTERLIST", "AFTERQUOTE", "AFTERTABLE"} <= tops
    quotes = [e for e in kids if e.tag == "blockquote"]
    assert len(quotes) == 1 and "quoted" in text_of(quotes[0])
    tables = [e for e in kids if e.tag == "table"]
    assert len(tables) == 1
    rows = [tr for part in elements(tables[0]) if part.tag in ("thead", "tbody") for tr in elements(part) if tr.tag == "tr"]
    assert len(rows) == 2
    assert [text_of(td).strip() for td in elements(rows[0])][1:] == ["CELL2"]
    assert [text_of(td).strip() for td in elements(rows[1])] == ["CELL3", "CELL4"]
    last = [e for e in kids if "outline-2" in classes(e)]
    assert len(last) == 1 and "LASTTEXT" in text_of(last[0])
    foot = [e for e in kids if e.get("id") == "footnotes"]
    assert len(foot) == 1 and "FNPARA" in text_of(foot[0])
    whole = "".join(root.itertext())
    for word in ("NEXTITEM", "AFTERLIST", "AFTERQUOTE", "CELL2", "CELL3", "CELL4", "AFTERTABLE", "FNPARA", "LASTTEXT"):
        assert whole.count(word) == 1, word


@pytest.mark.parametrize("piece", [p for p in HOSTILE if "\n" not in p and "|" not in p])
def test_hostile_pieces_stay_in_lists_quotes_tables_and_footnotes(kernel, piece):
    html = render(kernel, container_doc(piece))
    check_containers(fragment_root(html))
    check_containers(page_root(html))


def _pathological() -> dict[str, str]:
    names = [f"x{i}" for i in range(64)]
    n = 100_000
    block = "#+begin_export html\n{}\n#+end_export\n".format
    return {
        "deep divs": block("<div>" * n),
        "deep spans": block("<span>" * n),
        "distinct names": block("".join(f"<a{i}>" for i in range(n // 4))),
        "stray end tags": block("<span>" * 300 + "</x>" * n),
        "bogus without >": block("<!x" * n),
        "empty comments": block("<!---->" * n),
        "many attributes": block("<b " + " ".join(f"a{i}=1" for i in range(n // 4)) + ">"),
        "void tags deep": block("<div>" * 300 + "<hr>" * n),
        "many pieces": "".join(f"#+HTML: <{names[i % 64]}>\n" for i in range(n // 4))
        + "".join(f"#+HTML: </{names[i % 64]}>\n" for i in range(n // 4)),
        "many snippets": "".join(f"@@html:<{names[i % 64]}>@@ " for i in range(n // 4))
        + "".join(f"@@html:</{names[i % 64]}>@@ " for i in range(n // 4)) + "\n",
    }


@pytest.mark.parametrize("name", sorted(_pathological()))
def test_hostile_author_html_renders_in_linear_time(kernel, name):
    import time

    doc = _pathological()[name]
    t = time.perf_counter()
    html = render(kernel, doc)
    took = time.perf_counter() - t
    assert took < 5, f"{name}: {len(doc)} bytes took {took:.1f} s"
    # and balanced: every non-void element the author opened is closed
    import re
    from collections import Counter

    opened = Counter(m.lower() for m in re.findall(r"<([A-Za-z][\w-]*)[\s>]", html))
    closed = Counter(m.lower() for m in re.findall(r"</([A-Za-z][\w-]*)>", html))
    for tag in ("br", "hr", "img", "col"):
        opened.pop(tag, None)
    assert opened == closed, name
