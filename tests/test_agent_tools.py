"""The agent's tool surface (registry, schemas), its file tools (vfs_read/vfs_write/vfs_edit: result
strings, confinement through the tools, atomic writes, secrets redacted) and search (BM25 over Org
sections and text paragraphs, bounded), on a real working directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from workbooks.agent.secrets import Secrets
from workbooks.agent.tools import base_tools, exec_tools, spec, tools_for
from workbooks.agent.tools.base import ToolContext
from workbooks.agent.tools.search import NONE_FOUND, SEARCH
from workbooks.agent.tools.vfs import VFS_EDIT, VFS_READ, VFS_WRITE

SECRET = "hunter2-correct-horse-battery"
RECORDS = frozenset({"_steps.jsonl", "_status.json", "events.org"})


@pytest.fixture
def wd(tmp_path) -> Path:
    d = tmp_path / "wb-runs" / "dev" / "run-1"
    d.mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("outside the workdir\n")
    return d


def ctx_for(wd: Path, **kw) -> ToolContext:
    kw.setdefault("secrets", Secrets({"API": SECRET}))
    kw.setdefault("read_only", RECORDS)
    return ToolContext(tenant="dev", run_id="run-1", data_dir=wd.parent.parent.parent, workdir=wd, **kw)


def call(tool, ctx, **args):
    return trio.run(tool, ctx, args)


# -- the registry -----------------------------------------------------------------------------------
BASE = {"shell", "search", "wb", "fetch", "vfs_read", "vfs_write", "vfs_edit", "done"}


def test_the_tool_surface_has_the_eight_base_tools_and_no_native_exec():
    assert set(base_tools()) == BASE
    assert set(exec_tools()) == {"git", "publish"}
    assert set(tools_for(False)) == BASE
    assert set(tools_for(True)) == BASE | {"git", "publish"}
    for exec_ in (False, True):
        names = set(tools_for(exec_))
        assert not names & {"run", "bash", "exec", "sh", "system", "spawn"}
    assert all(t.needs_exec for t in exec_tools().values())
    assert not any(t.needs_exec for t in base_tools().values())


def test_every_tool_declares_a_valid_json_schema():
    import jsonschema_rs

    for name, tool in tools_for(True).items():
        s = spec(tool)
        assert s["name"] == name and isinstance(s["description"], str) and len(s["description"]) > 20
        schema = s["parameters"]
        json.dumps(schema)  # plain JSON
        assert schema["type"] == "object" and isinstance(schema["properties"], dict)
        assert set(schema.get("required", [])) <= set(schema["properties"]), name
        jsonschema_rs.validator_for(schema)  # raises on an invalid schema
        assert jsonschema_rs.meta.is_valid(schema), name


# -- vfs_write / vfs_read -----------------------------------------------------------------------------
def test_write_then_read_with_nested_new_dirs(wd):
    ctx = ctx_for(wd)
    r = call(VFS_WRITE, ctx, path="notes/deep/er/café.org", content="* Café ☕\n")
    assert r.output == "wrote 12 bytes to notes/deep/er/café.org" and r.exit_code == 0  # bytes (é 2, ☕ 3), not characters
    assert (wd / "notes/deep/er/café.org").read_text() == "* Café ☕\n"
    assert call(VFS_READ, ctx, path="notes/deep/er/café.org").output == "* Café ☕\n"
    assert call(VFS_READ, ctx, path=f"{wd}/notes/deep/er/café.org").output == "* Café ☕\n"  # absolute inside
    # a rewrite replaces the whole file and keeps its mode; no temporary file is left behind
    os.chmod(wd / "notes/deep/er/café.org", 0o600)
    assert call(VFS_WRITE, ctx, path="notes/deep/er/café.org", content="x").output == "wrote 1 bytes to notes/deep/er/café.org"
    assert (wd / "notes/deep/er/café.org").read_text() == "x"
    assert (wd / "notes/deep/er/café.org").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in (wd / "notes/deep/er").iterdir()) == ["café.org"]
    assert call(VFS_WRITE, ctx, path="empty.txt", content=None).output == "wrote 0 bytes to empty.txt"


def test_the_original_result_strings_for_escapes_and_missing_files(wd, tmp_path):
    ctx = ctx_for(wd)
    assert call(VFS_READ, ctx, path="nope.org").output == "not found: nope.org"
    for p in ("../secret.txt", "../../../secret.txt", "/etc/passwd", f"{wd}-evil/x", "content/../../x"):
        r = call(VFS_READ, ctx, path=p)
        assert r.output == f"read blocked: path escapes your working dir ({p})" and r.exit_code == 1, r.output
        r = call(VFS_WRITE, ctx, path=p, content="pwned")
        assert r.output == f"write blocked: path escapes your working dir ({p}) — you can only write inside it"
    assert (tmp_path / "secret.txt").read_text() == "outside the workdir\n"
    assert not Path(f"{wd}-evil").exists()
    r = call(VFS_READ, ctx, path="a\x00b")
    assert r.output == "read blocked: path contains a NUL byte (a\\0b)"


def test_symlinks_through_the_tools(wd, tmp_path):
    ctx = ctx_for(wd)
    os.symlink(tmp_path / "secret.txt", wd / "leak.txt")
    os.symlink(tmp_path, wd / "up")
    (wd / "real.txt").write_text("real\n")
    os.symlink("real.txt", wd / "alias.txt")
    assert call(VFS_READ, ctx, path="leak.txt").output == "read blocked: path escapes your working dir (leak.txt)"
    assert call(VFS_READ, ctx, path="up/secret.txt").output == "read blocked: path escapes your working dir (up/secret.txt)"
    assert call(VFS_WRITE, ctx, path="up/planted.txt", content="x").output.startswith("write blocked: path escapes")
    assert call(VFS_WRITE, ctx, path="leak.txt", content="x").output.startswith("write blocked: path escapes")
    assert call(VFS_READ, ctx, path="alias.txt").output == "real\n"  # a link inside, to inside: read
    r = call(VFS_WRITE, ctx, path="alias.txt", content="changed")
    assert r.output == "write blocked: path is a symlink (writes never follow one) (alias.txt)"
    assert (wd / "real.txt").read_text() == "real\n" and (tmp_path / "secret.txt").read_text() == "outside the workdir\n"
    assert not (tmp_path / "planted.txt").exists()


def test_protected_dirs_and_run_records_are_never_written(wd):
    ctx = ctx_for(wd)
    (wd / ".git").mkdir()
    (wd / "_steps.jsonl").write_text('{"step": 0}\n')
    for p in (".git/config", ".git/hooks/post-commit", ".workbooks/site/content/x.org"):
        assert call(VFS_WRITE, ctx, path=p, content="x").output == f"write blocked: path is inside .git/ or .workbooks/ (never writable) ({p})"
    assert not (wd / ".git" / "config").exists()
    for p in ("_steps.jsonl", "events.org", "./_status.json"):
        r = call(VFS_WRITE, ctx, path=p, content="forged")
        assert r.output == f"write blocked: path is read-only (a record of this run) ({p})" and r.exit_code == 1
        r = call(VFS_EDIT, ctx, path=p, old="step", new="x")
        assert r.output.startswith("write blocked: path is read-only")
    assert (wd / "_steps.jsonl").read_text() == '{"step": 0}\n'
    assert call(VFS_READ, ctx, path="_steps.jsonl").output == '{"step": 0}\n'  # readable


def test_bad_arguments_and_odd_files(wd):
    ctx = ctx_for(wd)
    assert call(VFS_WRITE, ctx, path="x.json", content={"a": 1}).output == "write error: `content` must be a string"
    assert call(VFS_READ, ctx, path=None).output == "read blocked: path must be a string (None)"
    (wd / "dir").mkdir()
    assert call(VFS_READ, ctx, path="dir").output == "read error: dir is a directory"
    os.mkfifo(wd / "fifo")
    assert call(VFS_READ, ctx, path="fifo").output == "read error: fifo: not a regular file"  # no hang
    assert call(VFS_WRITE, ctx, path="dir", content="x").exit_code == 1


def test_outputs_are_redacted(wd):
    ctx = ctx_for(wd)
    (wd / "env.txt").write_text(f"API_KEY={SECRET}\n")
    assert call(VFS_READ, ctx, path="env.txt").output == "API_KEY=[secret:API]\n"
    # a placeholder is written literally (resolved only at egress, never into files)
    call(VFS_WRITE, ctx, path="cfg.txt", content="key={{secret:API}}")
    assert (wd / "cfg.txt").read_text() == "key={{secret:API}}"


# -- vfs_edit -------------------------------------------------------------------------------------------
def test_edit_replaces_one_exact_unique_match(wd):
    ctx = ctx_for(wd)
    (wd / "page.org").write_text("* Title\nold line\n* Other\nsame\nsame\n")
    r = call(VFS_EDIT, ctx, path="page.org", old="old line", new="new line")
    assert r.output == "edited page.org: replaced 1 occurrence, wrote 35 bytes" and r.exit_code == 0
    assert (wd / "page.org").read_text() == "* Title\nnew line\n* Other\nsame\nsame\n"
    r = call(VFS_EDIT, ctx, path="page.org", old="absent", new="x")
    assert r.output == "edit failed: `old` not found in page.org (it must match exactly, whitespace included)"
    r = call(VFS_EDIT, ctx, path="page.org", old="same", new="x")
    assert r.output == "edit failed: `old` matches 2 times in page.org — include more context so it matches exactly once"
    assert (wd / "page.org").read_text() == "* Title\nnew line\n* Other\nsame\nsame\n"  # nothing changed
    assert call(VFS_EDIT, ctx, path="page.org", old="", new="x").output.startswith("edit error: `old` is empty")
    assert call(VFS_EDIT, ctx, path="missing.org", old="a", new="b").output == "not found: missing.org"
    assert call(VFS_EDIT, ctx, path="../x", old="a", new="b").output.startswith("write blocked: path escapes your working dir (../x)")
    (wd / "bin.dat").write_bytes(b"\xff\xfe\x00")
    assert call(VFS_EDIT, ctx, path="bin.dat", old="a", new="b").output == "edit error: bin.dat: is not UTF-8 text"


def test_edit_never_writes_through_a_symlink(wd, tmp_path):
    ctx = ctx_for(wd)
    (tmp_path / "victim.txt").write_text("keep me\n")
    os.symlink(tmp_path / "victim.txt", wd / "v.txt")
    assert call(VFS_EDIT, ctx, path="v.txt", old="keep", new="lose").output.startswith("write blocked: path escapes")
    (wd / "in.txt").write_text("keep me\n")
    os.symlink("in.txt", wd / "in-link.txt")
    assert call(VFS_EDIT, ctx, path="in-link.txt", old="keep", new="lose").output.startswith("write blocked: path is a symlink")
    assert (tmp_path / "victim.txt").read_text() == "keep me\n" and (wd / "in.txt").read_text() == "keep me\n"


# -- search -----------------------------------------------------------------------------------------------
def populate(wd: Path):
    (wd / "notes.org").write_text(
        "#+TITLE: Team notes\nSome preamble about the team.\n"
        "* Auth headers\n:PROPERTIES:\n:ID: abc-123-drawer\n:END:\n"
        "We send the bearer token in the Authorization header; the proxy strips cookies.\n"
        "** Rotation\nKeys rotate every ninety days.\n"
        "* Gardening :personal:\nTomatoes need sun and water.\n"
    )
    (wd / "docs").mkdir()
    (wd / "docs" / "deploy.md").write_text("# Deploying\nThe pipeline builds the site and pushes it.\n\n## Rollback\nRevert the commit.\n")
    (wd / "docs" / "faq.txt").write_text("How do I log in?\nUse the magic link.\n\nWhere are invoices?\nUnder billing.\n")


def test_search_ranks_org_sections_and_text_paragraphs(wd):
    populate(wd)
    ctx = ctx_for(wd)
    out = call(SEARCH, ctx, query="authorization header bearer token").output
    first = out.split("\n")[:2]
    assert first == ["[notes.org] Auth headers",
                     "  We send the bearer token in the Authorization header; the proxy strips cookies."]
    assert "abc-123-drawer" not in out  # property drawers are not text
    out = call(SEARCH, ctx, query="tomatoes").output
    assert out == "[notes.org] Gardening\n  Tomatoes need sun and water."  # tags stripped from the headline
    assert call(SEARCH, ctx, query="rollback").output.startswith("[docs/deploy.md] Rollback\n  Revert the commit.")
    assert call(SEARCH, ctx, query="invoices").output.startswith("[docs/faq.txt] Where are invoices?\n")
    assert call(SEARCH, ctx, query="team preamble").output.startswith("[notes.org] Team notes\n")
    assert call(SEARCH, ctx, query="zebra unicorn").output == NONE_FOUND
    assert call(SEARCH, ctx, query="").output == NONE_FOUND
    assert call(SEARCH, ctx, query="the and of").output == NONE_FOUND  # stop words only


def test_search_top_five_and_snippet_length(wd):
    ctx = ctx_for(wd)
    body = "\n".join(f"* Topic {i}\nwidget {'filler ' * 80}\n" for i in range(12))
    (wd / "many.org").write_text(body)
    out = call(SEARCH, ctx, query="widget").output
    lines = out.split("\n")
    assert len(lines) == 10 and all(lines[i].startswith("[many.org] Topic ") for i in range(0, 10, 2))
    assert all(len(lines[i]) <= 2 + 240 for i in range(1, 10, 2))


def test_search_is_bounded_and_confined(wd, tmp_path):
    ctx = ctx_for(wd, secrets=Secrets({"API": SECRET}))
    (wd / ".git").mkdir()
    (wd / ".git" / "notes.org").write_text("* Kangaroo\nin git\n")
    (wd / ".workbooks").mkdir()
    (wd / ".workbooks" / "site.org").write_text("* Kangaroo\nin the site dir\n")
    (tmp_path / "outside.org").write_text("* Kangaroo\noutside\n")
    os.symlink(tmp_path / "outside.org", wd / "link.org")
    os.symlink(tmp_path, wd / "linkdir")
    (wd / "big.org").write_text("* Kangaroo\n" + "x " * (3 << 20))  # over 2 MiB: skipped
    (wd / "image.png").write_bytes(b"Kangaroo")
    (wd / "bad.txt").write_bytes(b"Kangaroo \xff\xfe")
    os.mkfifo(wd / "pipe.org")  # never opened: would block
    assert call(SEARCH, ctx, query="kangaroo").output == NONE_FOUND
    (wd / "ok.org").write_text(f"* Kangaroo\nkey is {SECRET}\n")
    assert call(SEARCH, ctx, query="kangaroo").output == "[ok.org] Kangaroo\n  key is [secret:API]"


def test_search_stops_after_its_entry_and_file_bounds(wd, monkeypatch):
    from workbooks.agent.tools import search as search_mod

    ctx = ctx_for(wd)
    for d in ("a", "b", "c"):
        (wd / d).mkdir()
        for i in range(4):
            (wd / d / f"n{i}.org").write_text(f"* Walrus {d}{i}\nin {d}\n")
    assert len(call(SEARCH, ctx, query="walrus").output.split("\n")) == 10  # 12 hits, the top 5 shown
    monkeypatch.setattr(search_mod, "MAX_ENTRIES", 6)  # root (3 dirs) + a's 4 files: c is never looked at
    assert {c.path.split("/")[0] for c in search_mod.collect(wd)} == {"a"}
    monkeypatch.setattr(search_mod, "MAX_ENTRIES", 50_000)
    monkeypatch.setattr(search_mod, "MAX_FILES", 5)
    assert sorted(c.path for c in search_mod.collect(wd)) == ["a/n0.org", "a/n1.org", "a/n2.org", "a/n3.org", "b/n0.org"]


def test_a_rewrite_replaces_the_file_whole(wd):
    """Readers holding the old file keep the old bytes: the new content was renamed into place,
    never written over the old file (a crash mid-write leaves the old file, not half of each)."""
    ctx = ctx_for(wd)
    call(VFS_WRITE, ctx, path="doc.org", content="old " * 1000)
    with open(wd / "doc.org") as held:
        assert call(VFS_WRITE, ctx, path="doc.org", content="new").output == "wrote 3 bytes to doc.org"
        assert held.read() == "old " * 1000
    assert (wd / "doc.org").read_text() == "new"


def test_a_write_below_the_free_space_floor_is_refused_and_loses_nothing(wd, monkeypatch):
    ctx = ctx_for(wd)
    (wd / "keep.org").write_text("* precious\n")
    monkeypatch.setenv("WB_MIN_FREE_MB", str(1 << 40))  # a floor no disk here has
    r = call(VFS_WRITE, ctx, path="keep.org", content="overwrite")
    assert r.output.startswith("write error: keep.org: the data volume has ") and "floor" in r.output and r.exit_code == 1
    r = call(VFS_EDIT, ctx, path="keep.org", old="precious", new="gone")
    assert r.output.startswith("edit error: keep.org: the data volume has ")
    assert (wd / "keep.org").read_text() == "* precious\n" and sorted(os.listdir(wd)) == ["keep.org"]
