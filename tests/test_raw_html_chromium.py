"""The same structure check as test_raw_html, on the DOM a real browser builds: headless Chromium
(scripting on, so `<noscript>` is raw text there, unlike in html5lib) loads a page full of
hostile author HTML and prints its DOM, whose sections must still be in place."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest
from test_raw_html import HOSTILE, KINDS, check_sections, classes, elements, render, section_doc

import html5lib
from workbooks.oql import default_kernel
from workbooks.page import render_page


def chromium_dom(path, profile) -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.fail("chromium is not installed (ops/setup.sh --test installs it)")
    proc = subprocess.Popen(
        [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-extensions", "--disable-sync", "--disable-background-networking", "--disable-component-update",
         f"--user-data-dir={profile}", "--dump-dom", f"file://{path}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("chromium did not print the DOM in time")
    assert proc.returncode == 0
    return out.decode("utf-8")


def test_hostile_author_html_keeps_the_structure_in_chromium(tmp_path):
    kernel = default_kernel()
    pieces = [(kind, p) for kind in KINDS for p in HOSTILE if "\n" not in p]
    html = render(kernel, section_doc(pieces))
    page = tmp_path / "page.html"
    page.write_text(render_page(html, title="t", description=""), encoding="utf-8")
    dom = chromium_dom(page, tmp_path / "profile")
    doc = html5lib.parse(dom, treebuilder="etree", namespaceHTMLElements=False)
    mains = [e for e in doc.iter("main") if e.get("id") == "content"]
    assert len(mains) == 1
    check_sections(mains[0], len(pieces))
    # and the browser kept every section (the check above would fail on a missing one too)
    assert len([e for e in elements(mains[0]) if "outline-2" in classes(e)]) == len(pieces)
