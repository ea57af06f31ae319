"""Confinement of the agent's file tools (workbooks.agent.tools.confine), on a real file system:
the original's four cases (agent_confine_test.exs), then symlinked dirs and files, sibling
prefixes, NUL bytes, targets that do not exist yet, protected and read-only names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workbooks.agent.tools.confine import ConfinementError, open_for_write, read_regular, resolve_in


@pytest.fixture
def wd(tmp_path) -> Path:
    d = tmp_path / "wb-confine-wd"
    (d / "content" / "stories").mkdir(parents=True)
    (d / "file.txt").write_text("inside\n")
    (tmp_path / "secret.txt").write_text("outside\n")
    (tmp_path / "wb-confine-wd-evil").mkdir()
    (tmp_path / "wb-confine-wd-evil" / "x").write_text("evil\n")
    return d


def blocked(wd, rel, *, for_write=False, code="escape", read_only=frozenset()):
    with pytest.raises(ConfinementError) as ei:
        resolve_in(wd, rel, for_write=for_write, read_only=read_only)
    assert ei.value.code == code, (rel, ei.value.reason)
    return ei.value


# -- the original's four cases ----------------------------------------------------------------------
def test_legit_paths_inside_the_workdir_are_allowed(wd):
    for w in (False, True):
        assert resolve_in(wd, "content/stories/x.org", for_write=w) == wd / "content/stories/x.org"
        assert resolve_in(wd, "file.txt", for_write=w) == wd / "file.txt"
        # an absolute path that IS inside the workdir is fine (agents pass these)
        assert resolve_in(wd, f"{wd}/content/x.org", for_write=w) == wd / "content/x.org"


def test_dotdot_traversal_out_of_the_workdir_is_blocked(wd):
    for w in (False, True):
        for rel in ("../secret.txt", "../../runtime/host/agent.ex", "content/../../escape", "content/stories/../../../secret.txt"):
            blocked(wd, rel, for_write=w)
    # `..` that stays inside is just a path
    assert resolve_in(wd, "content/../file.txt", for_write=False) == wd / "file.txt"


def test_absolute_paths_outside_the_workdir_are_blocked(wd):
    for rel in ("/etc/passwd", "/data/wb-other-tenant/content/x.org", f"{wd}-sibling/x", "/"):
        blocked(wd, rel)
        blocked(wd, rel, for_write=True)


def test_a_sibling_dir_sharing_a_prefix_does_not_pass(wd):
    blocked(wd, f"{wd}-evil/x")
    blocked(wd, "../wb-confine-wd-evil/x", for_write=True)


# -- beyond the original -----------------------------------------------------------------------------
def test_nul_bytes_and_empty_paths_are_refused(wd):
    blocked(wd, "file.txt\x00.png", code="nul")
    blocked(wd, "\x00", for_write=True, code="nul")
    blocked(wd, "", code="empty")
    blocked(wd, "   ", for_write=True, code="empty")
    blocked(wd, None, code="empty")  # a model may send null


def test_a_symlinked_dir_pointing_outside_is_an_escape(wd, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "loot.txt").write_text("loot\n")
    os.symlink(outside, wd / "link-out")
    blocked(wd, "link-out/loot.txt")
    blocked(wd, "link-out/new.txt", for_write=True)
    blocked(wd, "link-out/deeper/new.txt", for_write=True)  # not-yet-existing under the link
    # `..` is taken after the link, as the kernel walks it: elsewhere/.. is tmp_path
    blocked(wd, "link-out/../secret.txt")


def test_a_symlinked_dir_pointing_inside_is_followed(wd):
    os.symlink(wd / "content", wd / "c")
    assert resolve_in(wd, "c/stories/x.org", for_write=True) == wd / "content/stories/x.org"
    os.symlink("content/stories", wd / "rel-link")  # relative link
    assert resolve_in(wd, "rel-link/y.org", for_write=False) == wd / "content/stories/y.org"


def test_symlinked_files(wd, tmp_path):
    os.symlink(tmp_path / "secret.txt", wd / "s.txt")
    blocked(wd, "s.txt")  # read through a link out: escape
    blocked(wd, "s.txt", for_write=True)
    os.symlink(wd / "file.txt", wd / "alias.txt")
    assert resolve_in(wd, "alias.txt", for_write=False) == wd / "file.txt"  # read through a link inside: fine
    blocked(wd, "alias.txt", for_write=True, code="symlink")  # a write never goes through a link
    os.symlink(tmp_path / "nowhere", wd / "dangling")
    blocked(wd, "dangling", for_write=True)  # a dangling link out: escape, and nothing created
    assert not (tmp_path / "nowhere").exists()


def test_the_workdir_itself_behind_a_symlink(wd, tmp_path):
    via = tmp_path / "via"
    os.symlink(wd, via)
    assert resolve_in(via, "file.txt", for_write=True) == wd / "file.txt"
    assert resolve_in(via, f"{via}/content/x.org", for_write=False) == wd / "content/x.org"
    blocked(via, "../secret.txt")


def test_not_yet_existing_targets_and_nested_new_dirs(wd):
    assert resolve_in(wd, "new/deeper/still/x.org", for_write=True) == wd / "new/deeper/still/x.org"
    blocked(wd, "new/../../secret.txt", for_write=True)
    blocked(wd, "new/deeper/../../../x", for_write=True)


def test_protected_dirs_and_read_only_names(wd):
    (wd / ".git" / "hooks").mkdir(parents=True)
    for rel in (".git/config", ".git/hooks/pre-commit", ".workbooks/site/content/x.org", "sub/.git/config", ".git"):
        blocked(wd, rel, for_write=True, code="protected")
    assert resolve_in(wd, ".git/config", for_write=False) == wd / ".git/config"  # reading is fine
    blocked(wd, ".", for_write=True, code="protected")
    ro = frozenset({"_steps.jsonl", "_status.json", "events.org"})
    for rel in ("_steps.jsonl", "./_status.json", f"{wd}/events.org"):
        blocked(wd, rel, for_write=True, code="read_only", read_only=ro)
    assert resolve_in(wd, "events.org.bak", for_write=True, read_only=ro) == wd / "events.org.bak"
    assert resolve_in(wd, "_steps.jsonl", for_write=False, read_only=ro) == wd / "_steps.jsonl"


def test_open_for_write_never_follows_a_link_swapped_in(wd, tmp_path):
    target = resolve_in(wd, "late.txt", for_write=True)
    os.symlink(tmp_path / "secret.txt", target)  # swapped in after the check
    with pytest.raises(OSError):
        open_for_write(target)
    assert (tmp_path / "secret.txt").read_text() == "outside\n"
    os.mkfifo(wd / "fifo")
    with pytest.raises(OSError):  # a FIFO with no reader: refused at once, no hang
        open_for_write(resolve_in(wd, "fifo", for_write=True))


def test_read_regular_refuses_fifos_dirs_and_oversize(wd):
    os.mkfifo(wd / "pipe")
    with pytest.raises(ValueError):
        read_regular(wd / "pipe")  # no writer: would block forever with a plain open
    with pytest.raises(IsADirectoryError):
        read_regular(wd / "content")
    (wd / "big").write_bytes(b"x" * 2048)
    with pytest.raises(ValueError):
        read_regular(wd / "big", cap=1024)
    assert read_regular(wd / "file.txt") == b"inside\n"
