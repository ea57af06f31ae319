"""`#+SETUPFILE:` / `#+INCLUDE:` on deploy: files committed in the tenant's repo are read; a line
naming anything else (outside the repo, another tenant, a symlink out, a private file, a missing
file, a URL) is left alone and reported in the deploy response with its line."""

from __future__ import annotations

import os
import subprocess


def _git(repo, *args) -> str:
    return subprocess.run(["git", "-c", "safe.directory=*", "-C", str(repo), *args], capture_output=True,
                          check=True).stdout.decode()


def test_includes_read_the_repo_and_refusals_come_back_with_their_line(web):
    tenant, key = web.new_tenant("inc")
    other, okey = web.new_tenant("inc")
    h = web.auth(key)
    assert web.deploy(okey, "theirs", "* Other tenant\nTHEIR-PRIVATE-TEXT\n").status_code == 200
    assert web.deploy(key, "setup", "#+TODO: DRAFT | PUBLISHED\n").status_code == 200
    assert web.deploy(key, "shared", "* Shared part\nSHARED-TEXT-HERE\n").status_code == 200
    repo = web.data_dir / tenant
    # a committed symlink out of the repo, one to a private file inside it, and a private file
    os.symlink("/etc/passwd", repo / "evil.org")
    os.symlink(".git/config", repo / "inner.org")
    _git(repo, "add", "evil.org", "inner.org")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@x", "commit", "-q", "-m", "links")
    doc_lines = [
        "#+TITLE: Main",                           # 1
        "#+SETUPFILE: setup.org",                  # 2
        "* DRAFT First",                           # 3
        '#+INCLUDE: "shared.org"',                 # 4
        f'#+INCLUDE: "../{other}/theirs.org"',     # 5 another tenant
        '#+INCLUDE: "/etc/passwd"',                # 6 outside
        '#+INCLUDE: "evil.org"',                   # 7 symlink out
        '#+INCLUDE: "missing.org"',                # 8 missing
        '#+INCLUDE: ".git/config"',                # 9 private
        '#+INCLUDE: "inner.org"',                  # 10 symlink to a private file
        "#+SETUPFILE: https://example.com/x.org",  # 11 a URL
        "* Second",                                # 12
    ]
    r = web.deploy(key, "main", "\n".join(doc_lines) + "\n")
    assert r.status_code == 200, r.text
    diags = [d for d in r.json().get("diagnostics", []) if d.get("scope") in ("#+INCLUDE", "#+SETUPFILE")]
    by_line = {d["line"]: d for d in diags}
    assert sorted(by_line) == [5, 6, 7, 8, 9, 10, 11], diags
    assert all(d["level"] == "warning" for d in diags)
    assert "outside" in by_line[5]["message"] and "outside" in by_line[6]["message"]
    assert "symlink" in by_line[7]["message"]
    for line in (8, 9, 10):
        assert "does not exist" in by_line[line]["message"], by_line[line]
    assert "URL" in by_line[11]["message"] and by_line[11]["scope"] == "#+SETUPFILE"
    assert str(web.data_dir) not in r.text and "/tmp" not in r.text
    # what was readable is rendered; nothing refused leaked into the page
    got = web.http.get(web.control + "/api/workbooks/main", headers=h).json()
    assert "SHARED-TEXT-HERE" in got["html"]
    assert "THEIR-PRIVATE-TEXT" not in got["html"] and "root:" not in got["html"]
    assert "[core]" not in got["html"] and "repositoryformatversion" not in got["html"]
    # the setup file's TODO keywords hold for the index (DRAFT is a state, not title text)
    first = got["headlines"][0]
    assert (first["state"], first["title"]) == ("DRAFT", "First"), first
    # git keeps the document as it was sent
    assert _git(repo, "show", "HEAD:main.org") == "\n".join(doc_lines) + "\n"


def test_a_document_naming_no_file_gets_no_file_diagnostics(web):
    _, key = web.new_tenant("noinc")
    r = web.deploy(key, "plain", "#+TITLE: Plain\n* Plain\ntext with #+INCLUDE: in the middle of a line\n")
    assert r.status_code == 200, r.text
    assert not [d for d in r.json().get("diagnostics", []) if d.get("scope") in ("#+INCLUDE", "#+SETUPFILE")]
    assert not (web.data_dir / ".workbooks" / "scratch").exists() or \
        not any((web.data_dir / ".workbooks" / "scratch").iterdir())  # no view was left behind


def test_views_left_by_a_killed_deploy_are_swept_but_live_ones_kept(tmp_path):
    from workbooks.web_control.launch import Planes

    data = tmp_path / "data"
    scratch = data / ".workbooks" / "scratch"
    (scratch / "includes-dead" / "sub").mkdir(parents=True)
    (scratch / "includes-dead" / "sub" / "x.org").write_text("* left behind\n")
    (scratch / "includes-live").mkdir()
    old = 1_000_000_000
    os.utime(scratch / "includes-dead", (old, old))
    with Planes(data):
        pass  # a control process starting on the data dir sweeps what a dead one left
    assert not (scratch / "includes-dead").exists()
    assert (scratch / "includes-live").exists()  # another process may be using it
