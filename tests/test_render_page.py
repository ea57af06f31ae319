"""The page shell (workbooks.page): standalone, themed, safe, and self-contained."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from workbooks.oql import default_kernel
from workbooks.page import html_to_text, math_js, org_metadata, page_from_org, render_org_page, render_page, resolve_setupfiles, theme_css

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "tests" / "fixtures" / "render" / "math_harness.js"


def external_references(page: str) -> list[str]:
    """Everything in a page that would make the browser fetch something on its own."""
    found = []
    found += re.findall(r"<link\b[^>]*>", page, re.I)
    found += re.findall(r"<script\b[^>]*\bsrc=", page, re.I)
    found += re.findall(r"<iframe\b|<object\b|<embed\b", page, re.I)
    found += re.findall(r"@import|url\(", page, re.I)
    found += re.findall(r"@font-face", page, re.I)
    return found


def test_page_has_title_description_lang_and_inline_theme():
    page = render_page("<p>Hi</p>", title='A <b> & "T"', description='Desc "q" <x>', lang="fr")
    assert page.startswith("<!DOCTYPE html>")
    assert '<html lang="fr">' in page
    assert "<title>A &lt;b&gt; &amp; &quot;T&quot;</title>" in page
    assert '<meta name="description" content="Desc &quot;q&quot; &lt;x&gt;">' in page
    assert '<meta name="color-scheme" content="light dark">' in page
    assert "<style>" in page and "prefers-color-scheme: dark" in page and theme_css() in page
    assert "<p>Hi</p>" in page
    assert external_references(page) == []


def test_bad_language_falls_back_to_en():
    assert '<html lang="en">' in render_page("", title="t", description="", lang='x" onload="y')


def test_theme_covers_highlighting_in_both_schemes():
    css = theme_css()
    light, dark = css.split("prefers-color-scheme: dark", 1)
    for var in ("--hl-k", "--hl-s", "--hl-c", "--hl-n", "--hl-b", "--hl-f", "--hl-v"):
        assert var in light and var in dark
    for cls in (".hl-k", ".hl-s", ".hl-c", ".hl-n", ".hl-b", ".hl-f", ".hl-v"):
        assert cls in css
    assert external_references(css) == []


def test_math_script_only_when_needed_and_allowed_by_csp():
    import base64
    import hashlib

    plain = render_page("<p>x</p>", title="t", description="")
    assert "<script" not in plain and "script-src &#x27;none&#x27;" in plain
    page = render_page('<span class="math inline">$x$</span>', title="t", description="")
    assert f"<script>{math_js()}</script>" in page
    digest = base64.b64encode(hashlib.sha256(math_js().encode()).digest()).decode()
    assert f"script-src &#x27;sha256-{digest}&#x27;" in page  # only our script may run
    assert "default-src &#x27;none&#x27;" in page
    assert external_references(page) == []


def test_page_from_org_uses_document_metadata():
    org = "#+TITLE: The *Guide*\n#+DESCRIPTION: All about it\n#+LANGUAGE: de\n#+SUBTITLE: v2\n* Intro\ntext\n"
    frag = default_kernel().call_raw("render", org).decode()
    page = page_from_org(org, frag)
    assert "<title>The Guide</title>" in page
    assert '<h1 class="title">The Guide</h1>' in page
    assert '<meta name="description" content="All about it">' in page
    assert '<html lang="de">' in page and '<p class="subtitle">v2</p>' in page
    meta = org_metadata(org)
    assert meta["title"] == "The *Guide*" and meta["title_text"] == "The Guide" and meta["language"] == "de"
    # No title: the first heading names the page.
    assert "<title>Intro</title>" in page_from_org("* Intro\n", default_kernel().call_raw("render", "* Intro\n").decode())


def test_wbx_render_page_and_fragment(tmp_path):
    doc = tmp_path / "d.org"
    doc.write_text("#+TITLE: CLI page\n#+DESCRIPTION: from the cli\n* A\n$x^2$\n")
    page = subprocess.run([sys.executable, "-m", "workbooks.cli.main", "render", str(doc), "--page"], capture_output=True, text=True, cwd=ROOT)
    assert page.returncode == 0, page.stderr
    assert "<title>CLI page</title>" in page.stdout and 'content="from the cli"' in page.stdout
    assert external_references(page.stdout) == []
    frag = subprocess.run([sys.executable, "-m", "workbooks.cli.main", "render", "-"], input="* A\n*b*\n", capture_output=True, text=True, cwd=ROOT)
    assert frag.returncode == 0 and "<b>b</b>" in frag.stdout and "<html" not in frag.stdout


def test_setupfile_and_include_resolution_is_confined(tmp_path):
    (tmp_path / "setup.org").write_text("#+OPTIONS: num:nil\n#+MACRO: who World\n")
    (tmp_path / "part.org").write_text("* Included\nbody\n")
    (tmp_path / "code.py").write_text("print(1)\n")
    outside = tmp_path.parent / "secret.org"
    outside.write_text("SECRET\n")
    org = (
        "#+SETUPFILE: setup.org\n* Top\n#+INCLUDE: \"part.org\"\n#+INCLUDE: \"code.py\" src python\n"
        f"#+INCLUDE: \"../{outside.name}\"\n#+INCLUDE: \"{outside}\"\n#+SETUPFILE: https://example.com/x.org\nHello {{{{{{who}}}}}}\n"
    )
    resolved = resolve_setupfiles(org, tmp_path)
    assert "#+MACRO: who World" in resolved
    assert "** Included" in resolved  # shifted below the including headline
    assert "#+begin_src python\nprint(1)\n#+end_src" in resolved
    assert "SECRET" not in resolved
    html = default_kernel().call_raw("render", resolved).decode()
    assert "Hello World" in html and "section-number" not in html


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_math_renderer_produces_mathml_and_never_markup():
    inputs = ["$x^2$", "\\(\\frac{a}{b}+\\sqrt{x_1}\\)", "\\[\\sum_{i=1}^{n} i\\]", "$\\alpha\\leq\\beta$",
              "\\begin{equation}\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}\\end{equation}", "$\\nosuchcommand{x}$",
              "$\\text{<img src=x onerror=alert(1)>}$"]
    out = subprocess.run(["node", str(HARNESS), str(ROOT / "workbooks" / "page" / "math.js")], input=json.dumps(inputs),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res[0].startswith('<math display="inline">') and "<msup><mi>x</mi><mn>2</mn></msup>" in res[0]
    assert "<mfrac>" in res[1] and "<msqrt>" in res[1]
    assert res[2].startswith('<math display="block">') and "∑" in res[2]
    assert "α" in res[3] and "≤" in res[3]
    assert "<mtable>" in res[4]
    assert res[5] == "UNRENDERED"  # unknown TeX stays as its text
    assert "<img" not in res[6] and "&lt;img" in res[6]  # text nodes only


def test_html_to_text():
    assert html_to_text("<p>a <b>b</b> &amp; c</p>") == "a b & c"


def test_render_org_page_in_one_call(tmp_path):
    (tmp_path / "setup.org").write_text("#+DESCRIPTION: from setup\n")
    page = render_org_page("#+TITLE: One call\n#+SETUPFILE: setup.org\n* A\n<script>x</script>\n", options={"raw_html": False}, base_dir=tmp_path)
    assert "<title>One call</title>" in page and 'content="from setup"' in page
    assert "&lt;script&gt;" in page and "<script>x" not in page
