"""Toolkits: discovery through the kernel, the search path, `wbx toolkit list|show|search|verify|sign`
with the original's texts, confinement (traversal slugs, symlinks), signatures over every file of a
toolkit, the system-prompt summary, and default-deny (no toolkit code ever runs)."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from conftest import read_pty_to_end, run_wbx
from workbooks.agent import toolkits as tk
from workbooks.web_control.oql import InProcessOql

FIXTURES = Path(__file__).parent / "fixtures" / "toolkits"


@pytest.fixture
def box(tmp_path):
    """A data dir, and a toolkit root holding a copy of the fixtures, with a secret planted outside it."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURES, root)
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "SECRET.org").write_text("TOP_SECRET_SHOULD_NEVER_BE_READ\n")
    env = {"WB_TOOLKITS_PATH": str(root), "WB_DATA": str(data), "WB_TENANT": "dev", "WB_SIGNING_KEY": ""}
    return {"root": root, "data": data, "tmp": tmp_path, "env": env}


def wbx(box, *args, env=None):
    return run_wbx("toolkit", *args, env={**box["env"], **(env or {})})


def jwbx(box, *args, env=None):
    r = wbx(box, "--json", *args, env=env)
    return r, json.loads(r.stdout)


def human(box, *args) -> str:
    """The verb's terminal output (stdout a pty)."""
    master, slave = pty.openpty()
    env = dict(os.environ, NO_COLOR="1", **box["env"])
    env.pop("WBX_AGENT", None)
    p = subprocess.Popen([sys.executable, "-m", "workbooks", "toolkit", *args], stdout=slave, stderr=slave,
                         stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    out = read_pty_to_end(master)
    os.close(master)
    assert p.wait(timeout=60) is not None
    return out.decode().replace("\r\n", "\n")


def discovered(box, **kw):
    return tk.discover(tk.search_path(box["env"], data_dir=str(box["data"]), **kw))


# -- list -------------------------------------------------------------------------------------------
def test_list_is_the_original_text_sorted_padded_with_status_and_tagline(box):
    out = human(box, "list")
    assert out == ("ffmpeg           beta         Audio and video → any format\n"
                   "git              stable       Distributed version control, the careful way\n")


def test_list_data_only_counts_manifests_with_a_toolkit_headline(box):
    r, env = jwbx(box, "list")
    assert r.returncode == 0 and env["ok"] is True
    rows = {t["id"]: t for t in env["data"]}
    assert set(rows) == {"git", "ffmpeg"}  # notes/ (no :toolkit: headline) and empty/ (no manifest) are not
    assert rows["git"]["skills"] == ["bisect", "overview", "rebase", "worktree-management"]
    assert (rows["git"]["version"], rows["git"]["cli_bin"], rows["git"]["caps"]) == ("1.2.0", "git", ["fs.read", "fs.write"])
    assert rows["ffmpeg"]["status"] == "beta" and rows["ffmpeg"]["origin"] == "WB_TOOLKITS_PATH"


def test_empty_or_missing_roots_say_so_and_do_not_crash(box):
    empty = box["tmp"] / "nothing"
    empty.mkdir()
    out = human({**box, "env": {**box["env"], "WB_TOOLKITS_PATH": f"{empty}:/no/such/dir"}}, "list")
    assert out == f"(no toolkits under {empty})\n"  # a missing entry is ignored, as the original's root
    r = wbx(box, "list", env={"WB_TOOLKITS_PATH": "/no/such/dir:", "WB_DATA": str(box["tmp"] / "nodata")})
    assert r.returncode == 0 and json.loads(r.stdout) == []
    assert not (box["tmp"] / "nodata").exists()  # listing creates nothing


# -- the search path ----------------------------------------------------------------------------------
def _toolkit(dirpath: Path, tid: str, tagline: str) -> None:
    (dirpath / "skills").mkdir(parents=True)
    (dirpath / "manifest.org").write_text(f"#+TAGLINE: {tagline}\n* {tid} :toolkit:\n:PROPERTIES:\n:ID: {tid}\n:END:\n")
    (dirpath / "skills" / "overview.org").write_text(f"{tagline}\n")


def test_search_path_order_path_then_data_then_tenant_repo_first_id_wins(box):
    data = box["data"]
    _toolkit(data / "toolkits" / "git", "git", "the operator's data-dir git")
    _toolkit(data / "toolkits" / "jq", "jq", "JSON, sliced")
    _toolkit(data / "dev" / "toolkits" / "jq", "jq", "the tenant's own jq")
    _toolkit(data / "dev" / "toolkits" / "house", "house", "the tenant's house style")
    r, env = jwbx(box, "list")
    rows = {t["id"]: (t["tagline"], t["origin"]) for t in env["data"]}
    assert rows == {
        "ffmpeg": ("Audio and video → any format", "WB_TOOLKITS_PATH"),
        "git": ("Distributed version control, the careful way", "WB_TOOLKITS_PATH"),  # the path shadows data
        "jq": ("JSON, sliced", "data"),  # the tenant repo can add, never shadow
        "house": ("the tenant's house style", "tenant"),
    }
    assert "house            -            the tenant's house style\n" in human(box, "list")  # no status: "-"
    r, env = jwbx(box, "list", "--tenant", "other")
    assert "house" not in {t["id"] for t in env["data"]}  # another tenant's repo is not searched
    r, env = jwbx(box, "list", "--path", str(data / "toolkits"))
    assert {t["id"]: t["origin"] for t in env["data"]}["git"] == "path"


def test_a_symlink_in_a_root_or_the_tenant_repo_is_never_followed(box):
    outside = box["tmp"] / "outside"
    _toolkit(outside / "evil", "evil", "reached through a symlink")
    os.symlink(outside / "evil", box["root"] / "evil")  # a toolkit dir that is a symlink
    (box["data"] / "dev").mkdir()
    os.symlink(outside, box["data"] / "dev" / "toolkits")  # a committed toolkits -> elsewhere
    os.symlink(box["tmp"] / "SECRET.org", box["root"] / "ffmpeg" / "skills" / "leak.org")
    os.symlink(box["tmp"] / "SECRET.org", box["root"] / "git" / "skills" / "worktree-management" / "notes.org")
    r, env = jwbx(box, "list")
    assert {t["id"] for t in env["data"]} == {"git", "ffmpeg"}
    assert "leak" not in {t["id"]: t for t in env["data"]}["ffmpeg"]["skills"]
    r = wbx(box, "show", "ffmpeg", "leak")
    assert r.returncode == 4 and b"TOP_SECRET" not in r.stdout + r.stderr
    r = wbx(box, "search", "TOP_SECRET")
    assert r.returncode == 0 and json.loads(r.stdout) == []


def test_a_symlinked_manifest_is_not_a_toolkit(box):
    d = box["root"] / "sneaky"
    (d / "skills").mkdir(parents=True)
    os.symlink(box["root"] / "git" / "manifest.org", d / "manifest.org")
    assert "sneaky" not in {t.dirname for t in discovered(box)}


# -- show ------------------------------------------------------------------------------------------
def test_show_is_the_manifest_then_the_skill_index(box):
    out = human(box, "show", "git")
    manifest = (FIXTURES / "git" / "manifest.org").read_text()
    assert out == manifest + "\n\nSkills (read with `wb toolkit show git <skill>`):\n" \
        "  bisect\n  overview\n  rebase\n  worktree-management\n"
    r, env = jwbx(box, "show", "git")
    assert env["data"]["manifest"] == manifest and env["data"]["skills"][0] == "bisect"


def test_unknown_and_traversal_ids_are_no_such_toolkit_exit_4(box):
    for tid in ("does-not-exist", "../git", "/etc/passwd", "git/..", "."):
        r = wbx(box, "show", tid)
        assert r.returncode == 4, tid
        err = json.loads(r.stderr)["error"]
        assert err["kind"] == "not_found" and err["message"] == f"no such toolkit: {tid}"
    found = discovered(box)
    assert tk.find(found, "git\0") is None and tk.find(found, "git") is not None


def test_show_skill_renders_a_toc_of_captions_indented_or_not(box):
    out = human(box, "show", "git", "overview")
    assert out.startswith("TOC (CAPTIONs):\n  • confirm git is installed\n  • confirm you are inside a work tree\n\n#+TITLE: git — overview\n")
    assert human(box, "show", "git", "bisect").startswith("TOC (CAPTIONs):\n  • find the first bad commit\n\n")
    assert human(box, "show", "git", "rebase").startswith("#+TITLE: git — rebase")  # no captions, no TOC
    r, env = jwbx(box, "show", "git", "overview")
    assert env["data"]["toc"] == ["confirm git is installed", "confirm you are inside a work tree"]


def test_thin_and_thick_skills_and_thin_wins(box):
    r, env = jwbx(box, "show", "git", "worktree-management")
    assert "THICK_SKILL_MARKER" in env["data"]["body"]
    (box["root"] / "git" / "skills" / "rebase").mkdir()
    (box["root"] / "git" / "skills" / "rebase" / "SKILL.org").write_text("THICK_REBASE\n")
    r, env = jwbx(box, "show", "git", "rebase")
    assert "backup branch" in env["data"]["body"] and "THICK_REBASE" not in env["data"]["body"]


def test_traversal_absolute_and_odd_skill_slugs_never_read_outside(box):
    for slug in ("../../../SECRET", "../../SECRET", "/etc/passwd", "../../../../../../../../etc/passwd",
                 "no-such-skill", "..", "overview.org", "skills/overview"):
        r = wbx(box, "show", "git", slug)
        assert r.returncode == 4, slug
        assert json.loads(r.stderr)["error"]["message"] == f"no such skill: git/{slug}"
        assert b"TOP_SECRET" not in r.stdout + r.stderr and b"root:" not in r.stdout
    assert tk.skill_body(tk.find(discovered(box), "git"), "overview\0") is None


# -- search ----------------------------------------------------------------------------------------
def test_search_is_a_case_insensitive_substring_as_path_line_text(box):
    out = human(box, "search", "REBASE")
    assert out == ("git/skills/rebase.org:1: #+TITLE: git — rebase without losing work\n"
                   "git/skills/rebase.org:4: 1. Make a backup branch before you Rebase.\n"
                   "git/skills/rebase.org:5: 2. Run the rebase onto the new base.\n")
    assert human(box, "search", "rebase") == out
    r = wbx(box, "search", "THICK_SKILL")
    assert [(h["path"], h["line"]) for h in json.loads(r.stdout)] == [("git/skills/worktree-management/SKILL.org", 2)]


def test_search_without_hits_quotes_the_query_and_metacharacters_are_literal(box):
    assert human(box, "search", "zzz_no_such_token") == '(no matches for "zzz_no_such_token")\n'
    assert human(box, "search", 'say "hi"') == '(no matches for "say \\"hi\\"")\n'
    r = wbx(box, "search", ".*")
    assert [h["text"] for h in json.loads(r.stdout)] == ["The pattern .* is just text here."]
    r = wbx(box, "search", "x" * 100_000)
    assert r.returncode == 0 and json.loads(r.stdout) == []
    r = wbx(box, "search", "→")
    assert {h["path"] for h in json.loads(r.stdout)} == {"ffmpeg/skills/overview.org"}


# -- sign and verify ---------------------------------------------------------------------------------
def _init(box, tenant="dev"):
    r = run_wbx("init", "--tenant", tenant, "--data", str(box["data"]), env={"WB_SIGNING_KEY": ""})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["did"]


def test_sign_then_verify_passes_and_names_the_signer(box):
    did = _init(box)
    r = wbx(box, "sign", "git")
    assert r.returncode == 0, r.stderr
    assert human(box, "sign", "ffmpeg") == f"signed ffmpeg as {did}\n"
    manifest = (box["root"] / "git" / "manifest.org").read_text()
    assert manifest.startswith((FIXTURES / "git" / "manifest.org").read_text().rstrip("\n"))
    assert f"#+AUTHOR_DID: {did}\n#+SIGNATURE: " in manifest
    r, env = jwbx(box, "verify", "git")
    assert r.returncode == 0 and env["ok"] is True and env["data"]["did"] == did
    out = human(box, "verify", "git")
    assert out == ("✓ manifest.org present\n✓ skills/overview.org present\n"
                   "· exec: posix (CLI_BIN git) — never run here: toolkit code execution is default-deny\n"
                   "· caps declared: fs.read fs.write\n"
                   f"✓ signature valid ({did})\n"
                   "· pre checks DISABLED (2 block(s); toolkit code is never run here — default-deny)\n")
    first = env["data"]["digest"]
    assert wbx(box, "sign", "git").returncode == 0  # re-signing replaces, never stacks
    text = (box["root"] / "git" / "manifest.org").read_text()
    assert text.count("#+SIGNATURE:") == 1 and text.count("#+AUTHOR_DID:") == 1
    assert jwbx(box, "verify", "git")[1]["data"]["digest"] == first


@pytest.mark.parametrize("tamper", ["edit_skill", "add_file", "remove_file", "edit_manifest", "rename", "symlink",
                                    "empty_dir"])
def test_any_change_to_a_signed_toolkit_fails_verify_with_exit_5(box, tamper):
    _init(box)
    assert wbx(box, "sign", "git").returncode == 0
    g = box["root"] / "git"
    if tamper == "edit_skill":
        (g / "skills" / "rebase.org").write_text((g / "skills" / "rebase.org").read_text().replace("backup", "no"))
    elif tamper == "add_file":
        (g / "skills" / "extra.org").write_text("* new recipe\n")
    elif tamper == "remove_file":
        (g / "skills" / "bisect.org").unlink()
    elif tamper == "edit_manifest":
        (g / "manifest.org").write_text((g / "manifest.org").read_text().replace("posix", "command"))
    elif tamper == "rename":
        (g / "skills" / "bisect.org").rename(g / "skills" / "bisect2.org")
    elif tamper == "symlink":
        os.symlink("/etc/passwd", g / "skills" / "passwd.org")
    else:
        (g / "skills" / "new-dir").mkdir()
    r, env = jwbx(box, "verify", "git")
    assert r.returncode == 5 and env["ok"] is False
    assert any(c["status"] == "fail" and c["label"].startswith("provenance: bad_signature") for c in env["data"]["checks"])


def test_missing_or_malformed_signatures_fail_verify(box):
    _init(box)
    r, env = jwbx(box, "verify", "git")
    assert r.returncode == 5
    assert "✗ provenance: no_author_did (sign with `wbx toolkit sign git`)" in human(box, "verify", "git")
    assert wbx(box, "sign", "git").returncode == 0
    m = box["root"] / "git" / "manifest.org"
    signed = m.read_text()
    m.write_text("\n".join(line for line in signed.split("\n") if not line.startswith("#+SIGNATURE:")))
    assert "✗ provenance: no_signature" in human(box, "verify", "git")
    m.write_text(signed.replace("#+SIGNATURE: ", "#+SIGNATURE: !!not-base64!!"))
    assert "✗ provenance: bad_signature_encoding" in human(box, "verify", "git")
    m.write_text(signed.replace("#+AUTHOR_DID: did:key:z", "#+AUTHOR_DID: did:key:x"))
    assert "✗ provenance: invalid_did" in human(box, "verify", "git")
    assert wbx(box, "verify", "git").returncode == 5


def test_verify_holds_the_signature_to_the_tenant_or_to_did(box):
    dev_did = _init(box, "dev")
    other_did = _init(box, "other")
    assert wbx(box, "sign", "git", "--tenant", "other").returncode == 0
    r, env = jwbx(box, "verify", "git")  # signed, but not by this tenant
    assert r.returncode == 5
    assert f"✗ signed by {other_did}, not by the expected {dev_did}" in human(box, "verify", "git")
    assert wbx(box, "verify", "git", "--tenant", "other").returncode == 0
    assert wbx(box, "verify", "git", "--did", other_did).returncode == 0
    r = wbx(box, "verify", "git", "--did", "did:key:nonsense")
    assert r.returncode == 2 and json.loads(r.stderr)["error"]["kind"] == "usage"


def test_verify_without_a_key_fails_and_creates_none(box):
    r = run_wbx("init", "--tenant", "signer", "--data", str(box["tmp"] / "elsewhere"), env={"WB_SIGNING_KEY": ""})
    assert r.returncode == 0
    assert wbx(box, "sign", "git", "--data", str(box["tmp"] / "elsewhere"), "--tenant", "signer").returncode == 0
    r, env = jwbx(box, "verify", "git")
    assert r.returncode == 5
    assert any("signer not checked: tenant 'dev' has no key" in c["label"] for c in env["data"]["checks"])
    assert not (box["data"] / ".workbooks").exists()


def test_unknown_toolkit_verify_and_sign_are_exit_4(box):
    _init(box)
    assert wbx(box, "verify", "nope").returncode == 4
    assert wbx(box, "sign", "../git").returncode == 4


def test_sign_refuses_a_toolkit_holding_a_fifo(box):
    _init(box)
    os.mkfifo(box["root"] / "git" / "skills" / "pipe.org")
    r = wbx(box, "sign", "git")
    assert r.returncode == 1 and b"is not a file, a directory or a symlink" in r.stderr
    assert "#+SIGNATURE:" not in (box["root"] / "git" / "manifest.org").read_text()
    (box["root"] / "git" / "skills" / "pipe.org").unlink()
    assert wbx(box, "sign", "git").returncode == 0
    os.mkfifo(box["root"] / "git" / "skills" / "pipe.org")  # verify reads no FIFO either: it fails, it does not hang
    r, env = jwbx(box, "verify", "git")
    assert r.returncode == 5
    assert any(c["label"].startswith("provenance: undigestable (skills/pipe.org is not a file") for c in env["data"]["checks"])


# -- default-deny ----------------------------------------------------------------------------------
def test_no_verb_and_no_summary_ever_runs_toolkit_code(box):
    sentinel = box["tmp"] / "PWNED"
    evil = box["root"] / "evil"
    (evil / "skills").mkdir(parents=True)
    script = evil / "run.sh"
    script.write_text(f"#!/bin/sh\ntouch {sentinel}\n")
    script.chmod(0o755)
    (evil / "manifest.org").write_text(f"#+EXEC: posix\n#+CLI_BIN: {script}\n* evil :toolkit:\n:PROPERTIES:\n"
                                       f":ID: evil\n:CLI_BIN: {script}\n:END:\n")
    (evil / "skills" / "overview.org").write_text(
        f"#+begin_src bash :role pre\ntouch {sentinel}\n#+end_src\n#+begin_src bash :role task\ntouch {sentinel}\n#+end_src\n")
    _init(box)
    env = {**box["env"], "PATH": f"{evil}:{os.environ['PATH']}"}
    for args in (("list",), ("show", "evil"), ("show", "evil", "overview"), ("search", "touch"),
                 ("sign", "evil"), ("verify", "evil")):
        r = run_wbx("toolkit", *args, env=env)
        assert r.returncode in (0, 5), (args, r.stderr)
    tk.toolkit_summary(["evil"], roots=[(str(box["root"]), "path")])
    assert not sentinel.exists()


# -- the agent's system prompt ----------------------------------------------------------------------
def test_toolkit_summary_is_the_original_index_with_a_note_for_unknown_names(box):
    roots = [(str(box["root"]), "path")]
    assert tk.toolkit_summary([], roots=roots) == ""
    text = tk.toolkit_summary(["git", "nope", "ffmpeg"], roots=roots)
    assert text == (
        "## Toolkits\n\n"
        "You have these toolkits. Before using one, read the relevant skill — call the\n"
        "`wb` tool: `toolkit show <id> <skill>` (or `toolkit search <query>` to find one).\n\n"
        "- git: Distributed version control, the careful way\n"
        "  skills: bisect, overview, rebase, worktree-management\n"
        "- nope: (not installed)\n"
        "- ffmpeg: Audio and video → any format\n"
        "  skills: overview, transcode"
    )
    for i in range(10):
        (box["root"] / "ffmpeg" / "skills" / f"s{i}.org").write_text("x\n")
    assert "  skills: overview, s0, s1, s2, s3, s4, s5, s6 (+4 more)" in tk.toolkit_summary(["ffmpeg"], roots=roots)
    assert tk.toolkit_summary(["../etc", "a\x1bb"], roots=roots).endswith("- ../etc: (not installed)\n- ab: (not installed)")
    assert tk.system_prompt_with_toolkits("P", "") == "P"
    assert tk.system_prompt_with_toolkits("P", "S") == "P\n\nS"


def test_the_summary_through_an_oql_caller_and_the_default_search_path(box, monkeypatch):
    roots = [(str(box["root"]), "path")]

    async def main():
        return await tk.toolkit_summary_async(["git", "nope"], InProcessOql(), roots=roots)

    assert trio.run(main) == tk.toolkit_summary(["git", "nope"], roots=roots)
    _toolkit(box["data"] / "dev" / "toolkits" / "house", "house", "the tenant's house style")
    monkeypatch.delenv("WB_TOOLKITS_PATH", raising=False)
    text = tk.toolkit_summary(["house", "git"], data_dir=box["data"], tenant="dev")
    assert "- house: the tenant's house style" in text and "- git: (not installed)" in text


def test_the_agents_wb_toolkit_command_answers_with_the_original_texts(box, monkeypatch):
    monkeypatch.setenv("WB_TOOLKITS_PATH", str(box["root"]))

    def ask(*words):
        async def main():
            return await tk.agent_command(list(words), oql=InProcessOql(), data_dir=box["data"], tenant="dev")

        return trio.run(main)

    text, code = ask("list")
    assert code == 0 and text.startswith("ffmpeg           beta")
    assert ask("show", "git") == (tk.show_text(tk.find(discovered(box), "git")), 0)
    text, code = ask("show", "git", "overview")
    assert code == 0 and text.startswith("TOC (CAPTIONs):\n  • confirm git is installed")
    assert ask("show", "git", "../../../SECRET") == ("no such skill: git/../../../SECRET", 4)
    assert ask("show", "../git") == ("no such toolkit: ../git", 4)
    assert ask("search", "backup", "branch")[0].startswith("git/skills/rebase.org:4: ")
    assert ask("search", "zzz") == ('(no matches for "zzz")', 0)
    for bad in ((), ("sign", "git"), ("verify", "git"), ("show",), ("list", "x"), ("search",)):
        assert ask(*bad) == (tk.AGENT_USAGE, 2)
    monkeypatch.setenv("WB_TOOLKITS_PATH", str(box["tmp"] / "none"))
    assert ask("list") == ("(no toolkits installed)", 0)  # no host path told to the model
