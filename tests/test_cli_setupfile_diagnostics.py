"""`#+SETUPFILE:`/`#+INCLUDE:` that cannot be honoured become diagnostics (`wbx lint`, `wbx render
--json`, and `workbooks.oql.setupfile.expand_with_diagnostics` for other callers), with the
line of the keyword; confinement to the document's folder (symlinks included) is unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import time
import sys
from pathlib import Path

import pytest

from conftest import run_wbx
from workbooks.oql.setupfile import expand_with_diagnostics
from workbooks.page import resolve_setupfiles



@pytest.fixture()
def folder(tmp_path):
    (tmp_path / "outside.org").write_text("#+TODO: LEAK | DONE\n* SECRET OUTSIDE\n")
    doc = tmp_path / "doc"
    doc.mkdir()
    (doc / "ok.org").write_text("#+TODO: REVIEW | DONE\n")
    (doc / "part.org").write_text("* Part heading\npart body\n")
    (doc / "nested.org").write_text("* Nested\n#+INCLUDE: \"missing-inner.org\"\n")
    os.symlink(tmp_path / "outside.org", doc / "link.org")
    (doc / "sub").mkdir()
    os.mkfifo(doc / "pipe.org")  # reading it would block: it must be refused, not opened
    (doc / "main.org").write_text(
        "#+TITLE: t\n"                              # 1
        "#+SETUPFILE: ../outside.org\n"             # 2
        '#+INCLUDE: "link.org"\n'                   # 3
        "#+include: missing.org\n"                  # 4
        "#+SETUPFILE: https://example.com/x.org\n"  # 5
        '#+INCLUDE: "sub"\n'                        # 6
        "#+SETUPFILE: ok.org\n"                     # 7
        '  #+INCLUDE: "nested.org"\n'               # 8
        "#+INCLUDE: pipe.org\n"                     # 9
        '#+INCLUDE: "part.org"\n'                   # 10
        "* REVIEW thing\n"                          # 11
        "text #+INCLUDE: not-a-keyword.org\n"       # 12
    )
    return doc


def _host(diags):
    return [d for d in diags if d.get("scope", "").startswith("#+")]


def test_lint_reports_each_refused_file_with_its_line(folder):
    r = run_wbx("lint", str(folder / "main.org"))
    assert r.returncode == 0, r.stderr  # diagnostics are data
    diags = json.loads(r.stdout)
    host = _host(diags)
    by_line = {(d.get("file", ""), d["line"]): d for d in host}
    assert sorted(by_line) == [("", 2), ("", 3), ("", 4), ("", 5), ("", 6), ("", 9), ("nested.org", 2)]
    for d in host:
        assert set(d) <= {"level", "scope", "message", "line", "file"} and d["level"] == "error"
    assert by_line[("", 2)]["scope"] == "#+SETUPFILE" and "outside the document's folder" in by_line[("", 2)]["message"]
    assert "symlink" in by_line[("", 3)]["message"] and by_line[("", 3)]["scope"] == "#+INCLUDE"
    assert "does not exist" in by_line[("", 4)]["message"]
    assert "URL" in by_line[("", 5)]["message"]
    assert "not a regular file" in by_line[("", 6)]["message"]
    assert "not a regular file" in by_line[("", 9)]["message"]
    assert "missing-inner.org" in by_line[("nested.org", 2)]["message"]
    assert "SECRET" not in r.stdout.decode() and "LEAK" not in r.stdout.decode()


def test_lint_keeps_kernel_diagnostics_and_stays_plain_without_keywords(tmp_path):
    bad = "* pipe :workflow:\n** step :component:\n#+begin_src js :in nonexistent\nx\n#+end_src\n"
    (tmp_path / "w.org").write_text("#+INCLUDE: gone.org\n" + bad)
    diags = json.loads(run_wbx("lint", str(tmp_path / "w.org")).stdout)
    assert [d["scope"] for d in diags] == ["#+INCLUDE", "step"]
    assert diags[0]["line"] == 1
    plain = run_wbx("lint", "-", input=bad.encode())
    assert [d["scope"] for d in json.loads(plain.stdout)] == ["step"]


def test_lint_on_stdin_reads_beside_the_working_directory(folder):
    r = subprocess.run([sys.executable, "-m", "workbooks", "lint", "-"], input=b"#+SETUPFILE: ok.org\n#+INCLUDE: nope.org\n",
                       cwd=folder, capture_output=True, timeout=60)
    diags = json.loads(r.stdout)
    assert [(d["line"], "does not exist" in d["message"]) for d in _host(diags)] == [(2, True)]


def test_confinement_unchanged_for_query(folder):
    rows = json.loads(run_wbx("query", str(folder / "main.org")).stdout)
    assert [(r["state"], r["title"]) for r in rows] == [("REVIEW", "thing")]  # ok.org's keywords; no INCLUDE text
    (folder / "leak.org").write_text("#+SETUPFILE: link.org\n* LEAK x\n")  # a symlink out is not read
    rows = json.loads(run_wbx("query", str(folder / "leak.org")).stdout)
    assert rows[0]["state"] is None and rows[0]["title"] == "LEAK x"


def test_render_inlines_what_it_may_and_reports_the_rest(folder):
    r = run_wbx("--json", "render", str(folder / "main.org"))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)["data"]
    assert "Part heading" in data["html"] and "SECRET OUTSIDE" not in data["html"]
    assert sorted(d["line"] for d in data["diagnostics"] if "file" not in d) == [2, 3, 4, 5, 6, 9]
    plain = run_wbx("render", str(folder / "main.org"))  # agent mode: HTML only on stdout
    assert plain.returncode == 0 and plain.stdout.lstrip().startswith(b"<")


def test_expand_with_diagnostics_api(folder):
    text = (folder / "main.org").read_text()
    out, diags = expand_with_diagnostics(text, folder)
    assert "* Part heading" in out and "part body" in out and "SECRET" not in out
    assert "#+SETUPFILE: ../outside.org" in out  # refused lines stay as written
    assert len(diags) == 7
    out2, diags2 = expand_with_diagnostics(text, None)  # a document from no folder (an HTTP body)
    assert out2 == text
    assert all("no folder" in d["message"] for d in diags2)
    assert [d["line"] for d in diags2] == [2, 3, 4, 5, 6, 7, 8, 9, 10]  # line 12 is text, not a keyword
    assert expand_with_diagnostics("* no keywords\n", folder) == ("* no keywords\n", [])


def test_expansion_shifts_levels_and_wraps_blocks_as_org_does(tmp_path):
    d = tmp_path / "shift"
    d.mkdir()
    (d / "inc.org").write_text("* A\n** B\ntext\n")
    (d / "code.py").write_text("print('*')\n* star\n")
    doc = ("* Top\n** Mid\n#+INCLUDE: \"inc.org\"\n* Other\n#+include: inc.org :minlevel 3\n"
           "#+INCLUDE: \"code.py\" src python\n#+INCLUDE: code.py example\n")
    text, diags = expand_with_diagnostics(doc, d)
    assert diags == []
    assert text == ("* Top\n** Mid\n*** A\n**** B\ntext\n"          # below the including headline
                    "* Other\n*** A\n**** B\ntext\n"                 # :minlevel 3
                    "#+begin_src python\nprint('*')\n,* star\n#+end_src\n"  # escaped, not a headline
                    "#+begin_example \nprint('*')\n,* star\n#+end_example\n")
    # the page renderer resolves through the same bounded code
    assert resolve_setupfiles(doc, d) == text


def test_kernel_diagnostics_get_the_line_of_their_headline():
    doc = (b"#+TITLE: x\n* w :workflow:\n** dup :component:\n#+begin_src js :out a\n#+end_src\n"
           b"** dup :component:\n#+begin_src js :out b\n#+end_src\n** lone :component:\ntext\n")
    diags = json.loads(run_wbx("lint", "-", input=doc).stdout)
    assert {(d["scope"], d.get("line")) for d in diags} == {("lone", 9), ("w", 2)}
    twice = b"* a :workflow:\n** c :component:\ntext\n* b :workflow:\n** c :component:\ntext\n"
    diags = json.loads(run_wbx("lint", "-", input=twice).stdout)
    assert [d["scope"] for d in diags] == ["c", "c"]
    assert all("line" not in d for d in diags)  # two headlines have that name: no guess


def test_a_flood_of_keyword_lines_is_cheap_and_summarised(tmp_path):
    """300,000 lines naming files (distinct and repeated): a bounded answer, quickly."""
    lines = b"".join(b'#+INCLUDE: "gone%d.org"\n#+SETUPFILE: same.org\n' % i for i in range(150_000))
    doc = tmp_path / "flood.org"
    doc.write_bytes(b"* h\n" + lines)
    t0 = time.monotonic()
    r = run_wbx("lint", str(doc), timeout=120)
    assert time.monotonic() - t0 < 30
    assert r.returncode == 0, r.stderr
    host = _host(json.loads(r.stdout))
    assert len(host) == 101 and host[0]["line"] == 2
    assert host[-1]["scope"] == "#+SETUPFILE/#+INCLUDE" and "299900 more" in host[-1]["message"]
    _, diags = expand_with_diagnostics(lines.decode(), None)
    assert len(diags) == 101


def test_a_too_large_file_is_a_diagnostic_not_read(tmp_path):
    with open(tmp_path / "huge.org", "wb") as fh:
        fh.truncate(64 << 20)  # sparse
    (tmp_path / "d.org").write_text("* a\n#+INCLUDE: huge.org\n#+SETUPFILE: huge.org\n")
    t0 = time.monotonic()
    diags = _host(json.loads(run_wbx("lint", str(tmp_path / "d.org")).stdout))
    assert time.monotonic() - t0 < 20
    assert [(d["line"], "too large" in d["message"]) for d in diags] == [(2, True), (3, True)]
