"""Element coverage of `render`: every element the issue lists, through the real oql.wasm."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from workbooks.oql import default_kernel

FIX = Path(__file__).resolve().parent / "fixtures" / "render"


@pytest.fixture(scope="module")
def kernel():
    return default_kernel()


@pytest.fixture
def render(kernel):
    def _render(org: str, **opts) -> str:
        if opts:
            return kernel.call_raw("render_with", org, json.dumps(opts)).decode("utf-8")
        return kernel.call_raw("render", org).decode("utf-8")

    return _render


def squash(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


# --- headlines and sections -------------------------------------------------------------


def test_headline_ids_custom_id_and_stable_slug(render):
    html = render("* Getting Started\n:PROPERTIES:\n:CUSTOM_ID: start\n:END:\nText.\n* Second Part\nMore.\n")
    assert '<h2 id="start">' in html
    assert 'id="second-part"' in html
    assert ":CUSTOM_ID:" not in html  # property drawers never show
    # Same input, same ids (stable), duplicate titles get suffixes.
    assert '<h2 id="a-2">' in render("* A\n* A\n")


def test_headline_todo_priority_tags(render):
    html = render("* TODO [#A] Write docs :work:urgent:\n* DONE Ship\n", pri=True)
    assert '<span class="todo TODO">TODO</span>' in html
    assert '<span class="done DONE">DONE</span>' in html
    assert '<span class="priority">[A]</span>' in html
    assert '<span class="tag"><span class="work">work</span>&#xa0;<span class="urgent">urgent</span></span>' in html
    plain = render("#+OPTIONS: todo:nil tags:nil\n* TODO Task :x:\n")
    assert "todo" not in plain.split("</h2>")[0].split("<h2")[1] and "tag" not in plain


def test_custom_todo_keywords(render):
    html = render("#+TODO: WAIT NEXT | CANCELLED\n* WAIT a\n* CANCELLED b\n* TODO c\n")
    assert '<span class="todo WAIT">WAIT</span>' in html
    assert '<span class="done CANCELLED">CANCELLED</span>' in html
    assert "TODO c" in html  # TODO is no longer a keyword


def test_comment_and_noexport_subtrees_dropped(render):
    html = render("* Keep\nyes\n* COMMENT Hidden\nsecret1\n** child\nsecret2\n* Private :noexport:\nsecret3\n* Also kept\n")
    assert "Keep" in html and "Also kept" in html
    for s in ("secret1", "secret2", "secret3", "Hidden", "Private"):
        assert s not in html


def test_sections_and_numbering(render):
    html = render("* One\n** Sub\ntext\n* Two\n")
    assert '<span class="section-number-2">1.</span> One' in html
    assert '<span class="section-number-3">1.1.</span> Sub' in html
    assert '<div class="outline-text-3" id="text-1-1">' in html
    assert "section-number" not in render("* One\n", num=False)


def test_deep_headlines_become_list_items_past_H(render):
    html = render("#+OPTIONS: H:1 num:nil\n* Top\n** Deep\nbody\n")
    assert '<ul class="org-ul">' in html and "Deep<br />" in html and "<h3" not in html


def test_paragraphs_and_line_breaks(render):
    html = render("First line\\\\\nsecond.\n\nNew para.\n")
    assert html.count("<p>") == 2
    assert "First line<br />" in html


# --- inline markup -----------------------------------------------------------------------


def test_emphasis_matches_emacs_exactly(render):
    """The six markers with Org's pre/post/border rules, against Emacs 28 / Org 9.5's output."""
    org = (FIX / "emphasis.org").read_text()
    ours = render(org)
    ref = (FIX / "emphasis.export.html").read_text()
    assert squash(ours) == squash(ref)


def test_entities(render):
    html = render("\\alpha \\to \\nbsp{}x \\copy 2024 \\unknownthing\n")
    assert "&alpha;" in html and "&rarr;" in html and "&nbsp;x" in html and "&copy;" in html
    assert "\\unknownthing" in html
    assert "\\alpha" in render("#+OPTIONS: e:nil\n\\alpha\n")


def test_sub_superscripts_follow_the_caret_option(render):
    assert "x<sub>1</sub> y" in render("x_1 y\n")
    assert "H<sub>2O</sub>" in render("H_2O\n")  # Org's rule: the longest alphanumeric run
    assert "x<sup>10</sup>" in render("x^{10}\n")
    braces_only = render("#+OPTIONS: ^:{}\nH_2O and x_{i}\n")
    assert "H_2O" in braces_only and "x<sub>i</sub>" in braces_only
    assert "<sub>" not in render("#+OPTIONS: ^:nil\nH_2O x_{i}\n")


def test_special_strings(render):
    html = render("a -- b --- c... d\n")
    assert "&#x2013;" in html and "&#x2014;" in html and "&#x2026;" in html


def test_links_plain_angle_bracket(render):
    html = render("See https://example.com/a_b. Or <https://x.org/p q> or [[https://y.org][the site]] or [[https://z.org]].\n")
    assert '<a href="https://example.com/a_b">https://example.com/a_b</a>.' in html
    assert '<a href="https://x.org/p%20q">https://x.org/p%20q</a>' in html  # as ox-html: the encoded URL
    assert '<a href="https://y.org">the site</a>' in html
    assert '<a href="https://z.org">https://z.org</a>' in html


def test_links_to_headlines_custom_ids_and_targets(render):
    org = (
        "* Intro\n:PROPERTIES:\n:CUSTOM_ID: intro\n:END:\nA <<here>> target.\n"
        "* Other\nGo to [[*Intro][the intro]], [[#intro]], [[here][there]], [[Other]] and [[nowhere]].\n"
    )
    html = render(org)
    assert '<a href="#intro">the intro</a>' in html
    assert '<a href="#intro">1</a>' in html  # no description: the section number
    assert '<a id="target-here"></a>' in html and '<a href="#target-here">there</a>' in html
    assert '<a href="#other">2</a>' in html
    assert "[BROKEN LINK: nowhere]" in html


def test_radio_targets(render):
    html = render("Define <<<Org mode>>> here.\n\nLater, org mode is mentioned.\n")
    assert '<a id="target-org-mode">Org mode</a>' in html
    assert '<a href="#target-org-mode">org mode</a>' in html


def test_file_links_org_to_html_and_images(render):
    html = render("[[file:notes.org][Notes]] [[file:other.org::#sec]] [[file:pic.png]] [[./img/a.jpg]] [[https://x.org/l.svg]]\n")
    assert '<a href="notes.html">Notes</a>' in html
    assert '<a href="other.html#sec">' in html
    assert '<img src="pic.png" alt="pic.png" />' in html
    assert '<img src="./img/a.jpg" alt="a.jpg" />' in html
    assert '<img src="https://x.org/l.svg" alt="l.svg" />' in html
    assert "<img" not in render("[[file:pic.png][a picture]]\n")
    fig = render("#+CAPTION: A cat\n[[file:cat.png]]\n")
    assert 'class="figure"' in fig and "Figure 1: </span>A cat" in fig
    sized = render('#+ATTR_HTML: :width 50% :onerror alert(1) :title A "cat"\n[[file:cat.png]]\n')
    assert '<img src="cat.png" alt="cat.png" width="50%" title="A &quot;cat&quot;" />' in sized and "onerror" not in sized


def test_base_url(render):
    html = render("[[file:a.org][A]] [[https://x.org][X]] [[#id][I]]\n", base_url="https://site.example/docs/")
    assert 'href="https://site.example/docs/a.html"' in html
    assert 'href="https://x.org"' in html


def test_footnotes_all_forms(render):
    org = "Text[fn:1] and[fn:named] inline[fn:in:Inline def.] anon[fn::Anonymous note.] again[fn:1].\n\n[fn:1] First.\n[fn:named] Named.\n"
    html = render(org)
    for n in (1, 2, 3, 4):
        assert f'href="#fn.{n}"' in html and f'id="fn.{n}"' in html
    assert 'id="fnr.1.2"' in html  # second reference to fn 1
    tail = html.split('<div id="footnotes">')[1]
    assert "First." in tail and "Named." in tail and "Inline def." in tail and "Anonymous note." in tail
    assert "First." not in html.split('<div id="footnotes">')[0]
    assert 'id="footnotes"' not in render("#+OPTIONS: f:nil\nA[fn:1].\n\n[fn:1] x\n")


# --- lists -------------------------------------------------------------------------------


def test_lists_ordered_unordered_description_checkboxes_counters(render):
    org = "- a\n- [X] done\n- [ ] open\n- [-] partial\n\nText.\n\n1. one\n2. [@5] five\n\nText.\n\n- term :: definition\n- other :: more\n"
    html = render(org)
    assert '<ul class="org-ul">' in html and '<ol class="org-ol">' in html and '<dl class="org-dl">' in html
    assert '<li class="on"><code>[X]</code> done</li>' in html
    assert '<li class="off"><code>[&#xa0;]</code> open</li>' in html
    assert '<li class="trans"><code>[-]</code> partial</li>' in html
    assert '<li value="5">five</li>' in html
    assert "<dt>term</dt><dd>definition</dd>" in html


def test_nested_lists_and_item_paragraphs(render):
    html = render("- top\n  - nested\n  - nested 2\n- second\n\n  with a paragraph\n")
    assert squash(html).count("<ul") == 2
    assert "<p>" in html  # an item with two paragraphs wraps them


# --- tables ------------------------------------------------------------------------------


def test_tables_header_alignment_colgroups_caption_name(render):
    org = "#+CAPTION: Results\n#+NAME: tbl\n| Name | Qty |\n|------+-----|\n| <l>  | <c> |\n| a    | 1   |\n| b    | 22  |\n"
    html = render(org)
    assert '<table id="tbl"' in html
    assert "Table 1:</span> Results</caption>" in html
    assert "<thead>" in html and '<th scope="col" class="org-left">Name</th>' in html
    assert '<td class="org-center">1</td>' in html  # alignment cookie wins
    assert "<l>" not in html  # the cookie row is not shown
    groups = render("| x | a | b |\n| / | < | > |\n")
    assert groups.count("<colgroup>") == 2
    nums = render("| a | 1 |\n| b | 2 |\n")
    assert '<td class="org-right">1</td>' in nums


# --- blocks ------------------------------------------------------------------------------


def test_src_blocks_language_and_line_numbers(render):
    html = render("#+begin_src python -n\nx = 1\ny = 2\n#+end_src\n")
    assert '<pre class="src src-python">' in html
    assert '<span class="linenr">1: </span>' in html and '<span class="linenr">2: </span>' in html
    assert "<pre" not in render("#+begin_src python :exports none\nsecret()\n#+end_src\n")


@pytest.mark.parametrize(
    "lang,code,expect",
    [
        ("python", 'def f(x):\n    return "s"  # c\n', ['<span class="hl-k">def</span>', '<span class="hl-s">"s"</span>', '<span class="hl-c"># c</span>']),
        ("javascript", "const x = 'a'; // c\nfunction f() {}\n", ['<span class="hl-k">const</span>', '<span class="hl-s">&#39;a&#39;</span>' if False else '<span class="hl-s">\'a\'</span>', '<span class="hl-c">// c</span>']),
        ("typescript", "let n: number = 42;\n", ['<span class="hl-k">let</span>', '<span class="hl-n">42</span>']),
        ("rust", "fn main() { let s = \"x\"; } // c\n", ['<span class="hl-k">fn</span>', '<span class="hl-s">"x"</span>', '<span class="hl-c">// c</span>']),
        ("c", "int main(void) { return 0; } /* c */\n", ['<span class="hl-b">int</span>', '<span class="hl-k">return</span>', '<span class="hl-c">/* c */</span>']),
        ("shell", 'echo "$HOME" # c\nif true; then ls; fi\n', ['<span class="hl-s">"$HOME"</span>', '<span class="hl-c"># c</span>', '<span class="hl-k">if</span>']),
        ("emacs-lisp", '(defun f (x) "doc" ; c\n  (setq y :key))\n', ['<span class="hl-k">defun</span>', '<span class="hl-s">"doc"</span>', '<span class="hl-c">; c</span>', '<span class="hl-b">:key</span>']),
        ("json", '{"a": 1, "b": true, "c": "s"}\n', ['<span class="hl-v">"a"</span>', '<span class="hl-n">1</span>', '<span class="hl-b">true</span>', '<span class="hl-s">"s"</span>']),
        ("sql", "SELECT a FROM t WHERE b = 'x'; -- c\n", ['<span class="hl-k">SELECT</span>', '<span class="hl-s">\'x\'</span>', '<span class="hl-c">-- c</span>']),
        ("yaml", "key: value # c\nlist:\n  - 'a'\n", ['<span class="hl-v">key</span>', '<span class="hl-c"># c</span>', '<span class="hl-s">\'a\'</span>']),
        # (Org escapes a headline inside a src block as `,* `: unescaped, it would end the block)
        ("org", ",* Head\n#+TITLE: x\n# comment\n", ['<span class="hl-k">* Head</span>', '<span class="hl-b">#+TITLE: x</span>', '<span class="hl-c"># comment</span>']),
    ],
)
def test_syntax_highlighting(render, lang, code, expect):
    html = render(f"#+begin_src {lang}\n{code}#+end_src\n")
    for e in expect:
        assert e in html, (lang, e, html)
    # Highlighting never changes the text.
    text = re.sub(r"<[^>]+>", "", html.split(f'src-{lang}">', 1)[1].split("</pre>", 1)[0])
    import html as h

    assert h.unescape(text) == code.replace(",* ", "* ")  # the text, unescaped as Org does


def test_example_quote_verse_center_comment_special_blocks(render):
    org = (
        "#+begin_example\n*not bold* <x>\n#+end_example\n"
        "#+begin_quote\nQuoted *b*.\n#+end_quote\n"
        "#+begin_verse\n  Roses\nare red\n#+end_verse\n"
        "#+begin_center\nMiddle\n#+end_center\n"
        "#+begin_comment\nhidden text\n#+end_comment\n"
        "#+begin_warning\nCareful\n#+end_warning\n"
    )
    html = render(org)
    assert '<pre class="example">\n*not bold* &lt;x&gt;\n</pre>' in html
    assert "<blockquote>" in html and "<b>b</b>" in html
    assert '<p class="verse">' in html and "&#xa0;&#xa0;Roses<br />" in html
    assert '<div class="org-center">' in html
    assert "hidden text" not in html
    assert '<div class="warning">' in html and "Careful" in html


def test_export_blocks_snippets_and_html_keywords_follow_raw_html(render):
    org = "#+HTML: <b class=raw1>x</b>\n#+begin_export html\n<i class=raw2>y</i>\n#+end_export\nA @@html:<u class=raw3>z</u>@@ and @@latex:\\LaTeX@@.\n#+begin_export latex\n\\relax\n#+end_export\n"
    on = render(org)
    assert "class=raw1" in on and "class=raw2" in on and "class=raw3" in on
    assert "\\relax" not in on and "LaTeX" not in on
    off = render(org, raw_html=False)
    assert "raw1" not in off and "raw2" not in off and "raw3" not in off


def test_fixed_width_rules_and_timestamps(render):
    html = render(": fixed <width>\n: two\n-----\nMeet <2024-05-01 Wed 10:00> and [2024-05-02 Thu]--[2024-05-03 Fri].\n")
    assert '<pre class="example">\nfixed &lt;width&gt;\ntwo\n</pre>' in html
    assert "<hr />" in html
    # ox-html writes the timestamp's trailing blank inside the span too (Org's interpreter adds post-blank)
    assert '<span class="timestamp-wrapper"><span class="timestamp">&lt;2024-05-01 Wed 10:00&gt; </span></span> and' in html
    assert "[2024-05-02 Thu]&#x2013;[2024-05-03 Fri]" in html


def test_latex_fragments_and_environments(render):
    html = render("Inline $x^2$ and \\(a+b\\) and \\[E=mc^2\\].\n\n\\begin{equation}\ny = x\n\\end{equation}\n")
    assert '<span class="math inline">\\(x^2\\)</span>' in html  # $…$ written as \(…\), like ox-html
    assert '<span class="math inline">\\(a+b\\)</span>' in html
    assert '<span class="math display">\\[E=mc^2\\]</span>' in html
    assert '<div class="math display">\n\\begin{equation}\ny = x\n\\end{equation}\n</div>' in html
    assert "$5 and $6" in render("Costs $5 and $6 .\n")  # not math


def test_metadata_keywords(kernel):
    org = "#+TITLE: My *Doc*\n#+AUTHOR: Ada\n#+DATE: 2024-01-02\n#+DESCRIPTION: About things\n#+LANGUAGE: fr\nBody\n"
    out = json.loads(kernel.call_raw("render_with", org, json.dumps({"metadata": True})))
    assert out["meta"] == {
        "title": "My *Doc*", "subtitle": None, "author": "Ada", "date": "2024-01-02", "email": None,
        "description": "About things", "language": "fr", "keywords": None,
    }
    assert out["title_html"] == "My <b>Doc</b>"
    assert "Body" in out["html"] and "My *Doc*" not in out["html"]


def test_macros(render):
    org = "#+TITLE: The Title\n#+DATE: 2024\n#+MACRO: greet Hello, $1!\n{{{greet(World)}}} in {{{title}}} from {{{date}}}; ={{{greet(x)}}}= stays.\n"
    html = render(org)
    assert "Hello, World! in The Title from 2024" in html
    assert "<code>{{{greet(x)}}}</code>" in html
    assert "9.9" in render("{{{version}}}\n", macros={"version": "9.9"})


def test_drawers_and_planning_hidden_by_default(render):
    org = "* Task\nSCHEDULED: <2024-01-01 Mon>\n:PROPERTIES:\n:X: 1\n:END:\n:LOGBOOK:\n- note\n:END:\nBody\n"
    html = render(org)
    assert "SCHEDULED" not in html and "note" not in html and "Body" in html
    shown = render(org, planning=True, drawers=True)
    assert '<span class="timestamp-kwd">SCHEDULED:</span>' in shown and "note" in shown and ":X:" not in shown


def test_table_of_contents_when_asked(render):
    org = "* A\n** B\n* C\n"
    assert "table-of-contents" not in render(org)
    html = render(org, toc=True)
    assert '<div id="table-of-contents" role="doc-toc">' in html
    toc = html.split('<div id="text-table-of-contents"')[1].split("</div>")[0]
    assert '<a href="#a">1. A</a>' in toc and '<a href="#b">1.1. B</a>' in toc
    assert "<a href=\"#b\">" not in render(org, toc=1).split("</div>")[1]
    assert "table-of-contents" in render("#+OPTIONS: toc:t\n" + org)


def test_call_options_override_document_options(render):
    org = "#+OPTIONS: num:nil toc:t\n* A\n"
    html = render(org, num=True, toc=False)
    assert "section-number" in html and "table-of-contents" not in html


def test_invalid_utf8_and_empty_input(kernel, render):
    assert render("") == ""
    from workbooks.oql.errors import InvalidUtf8

    with pytest.raises(InvalidUtf8):
        kernel.call_raw("render", b"\xff\xfe")


def test_org_options_pri_planning_broken_links_tags_in_toc(render):
    org = "#+OPTIONS: pri:t p:t broken-links:t tags:not-in-toc toc:t\n* TODO [#B] Task :work:\nSCHEDULED: <2024-01-01 Mon>\nSee [[nowhere][the missing place]].\n"
    html = render(org)
    assert '<span class="priority">[B]</span>' in html
    assert '<span class="timestamp-kwd">SCHEDULED:</span>' in html
    assert "BROKEN LINK" not in html and "the missing place" in html
    toc, body = html.split('<div id="outline-container', 1)
    assert 'class="tag"' not in toc and 'class="tag"' in body
    assert "[BROKEN LINK: nowhere]" in render("[[nowhere][x]]\n")


def test_inline_src_and_call_only_at_word_starts(render):
    """The inline scanner skips plain text by table; `src_`/`call_` are still found where Org
    finds them (word starts, after objects, inside parentheses), and never inside a word."""
    assert '<code class="src src-python">' in render("x src_python{1+1} y\n")
    mid = render("xsrc_python{1} y\n")
    assert "<code" not in mid and "xsrc" in mid
    assert squash(render("(call_f()) and call_g() z\n")) == "<p> () and z </p>"
    after_obj = render("=v=src_sh{ls} and ~c~call_f() end\n")
    assert '<code class="src src-sh">ls</code>' in after_obj and "call_f" not in after_obj
    radios = render("a <<<cat>>> then cat, scat and src_c{x} and catsrc_c{y}\n")
    assert radios.count('href="#target-cat"') == 1
    assert '<code class="src src-c">x</code>' in radios and "catsrc" in radios
    smart = render("#+OPTIONS: ':t\nit's \"quoted\" src_js{1}\n")
    assert "&rsquo;" in smart and "&ldquo;" in smart and '<code class="src src-js">' in smart
