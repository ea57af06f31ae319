"""workbooks.private: the one definition of what never leaves."""

from __future__ import annotations

import pytest

from workbooks import private
from workbooks.gitstore import GitStore


@pytest.mark.parametrize(
    "path",
    [
        ".workbooks/dev.ed25519", ".workbooks", "memory/today.md", "a/memory/x", ".beads/issues.jsonl", ".claude/settings.json",
        "scratch/x", "tmp/y", "_steps.jsonl", "runs/r1/_steps.jsonl", "_status.json", "r/_ledger.json", "_telemetry.db",
        "keys/other.ed25519", ".git/config", "sub/.git/HEAD", ".jj/repo", "./memory/x",
    ],
)
def test_private_paths(path):
    assert private.is_private(path)


@pytest.mark.parametrize(
    "path",
    ["demo.org", "content/post.org", "blog/2024/a.org", "steps.jsonl", "ledger/r1.json", "memoryx/a", "a_b.json", "x/tmpfile", "notes_.db"],
)
def test_public_paths(path):
    assert not private.is_private(path)


def test_gitignore_lines_are_the_patterns():
    lines = [l for l in private.gitignore_text().splitlines() if l and not l.startswith("#")]
    assert tuple(lines) == private.PRIVATE_PATTERNS


def test_git_check_ignore_is_consulted_for_a_work_tree(tmp_path):
    gs = GitStore(tmp_path, "dev")
    gs.commit_file("demo.org", b"x", "init")
    root = tmp_path / "dev"
    (root / ".git" / "info" / "exclude").write_text("drafts/\n")
    candidates = ["demo.org", "drafts/secret.org", "memory/m.md", "run/_steps.jsonl", "content/a.org"]
    assert private.git_ignored(root, candidates) == {"drafts/secret.org", "memory/m.md", "run/_steps.jsonl"}
    assert private.shareable(root, candidates) == ["demo.org", "content/a.org"]
    # outside a work tree only the private module decides
    assert private.shareable(tmp_path, candidates) == ["demo.org", "drafts/secret.org", "content/a.org"]
