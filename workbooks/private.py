"""The one boundary deciding what never leaves a tenant: not to git, not in a bundle, not when shared.

Sharing exposes the WORK, never the session that produced it. Git's `.gitignore`, the bundler
and sharing all read this module, so the line cannot drift between them. For files in a work
tree, `git_ignored()` also asks git's own matcher (`git check-ignore`), so a tenant's extra
ignore rules are honoured too.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
from pathlib import PurePosixPath

# Directory patterns end with "/" and match a path component at any depth (gitignore semantics
# of a pattern without a leading slash); file patterns match the base name at any depth.
PRIVATE_PATTERNS: tuple[str, ...] = (
    ".workbooks/",  # signing keys, published-site staging, local state
    "memory/",  # an agent's working memory
    ".beads/",  # task data (once leaked to a public forge)
    ".claude/",  # assistant scratch
    "scratch/",
    "tmp/",
    "_*.jsonl",  # run sidecars: _steps.jsonl, _trace.jsonl
    "_*.json",  # _status.json, _ledger.json
    "_*.db",  # _telemetry.db
    "*.ed25519",  # tenant key files, wherever they end up
    "*.ed25519.*",
)

# Never part of a work product, even though git does not need an ignore rule for them.
CONTROL_DIRS: frozenset[str] = frozenset({".git", ".jj", ".hg", ".svn"})

_DIR_PATTERNS = tuple(p[:-1] for p in PRIVATE_PATTERNS if p.endswith("/"))
_FILE_PATTERNS = tuple(p for p in PRIVATE_PATTERNS if not p.endswith("/"))


def gitignore_text() -> str:
    """The `.gitignore` every tenant repo gets (written, never hand-edited)."""
    head = "# Written by workbooks.private: what never leaves this tenant. Do not edit.\n"
    return head + "".join(p + "\n" for p in PRIVATE_PATTERNS)


def _parts(relpath: str) -> list[str]:
    p = relpath.replace("\\", "/")
    return [c for c in PurePosixPath(p).parts if c not in ("", "/", ".")]


def is_private(relpath: str) -> bool:
    """True when a repo-relative path falls under the private boundary (or a VCS control dir)."""
    parts = _parts(relpath)
    if not parts:
        return False
    for i, comp in enumerate(parts):
        low = comp.lower()
        if low in CONTROL_DIRS:
            return True
        is_last = i == len(parts) - 1
        # a directory pattern matches any directory component; the last component may itself
        # be that directory (e.g. "memory" passed for the folder)
        if any(fnmatch.fnmatchcase(comp, d) for d in _DIR_PATTERNS):
            return True
        if is_last and any(fnmatch.fnmatchcase(comp, f) for f in _FILE_PATTERNS):
            return True
    return False


def git_ignored(worktree: str | os.PathLike, relpaths: list[str], env: dict | None = None) -> set[str]:
    """The subset of `relpaths` that git's own matcher ignores in `worktree` (tracked or not).

    Returns an empty set when `worktree` is not inside a git work tree; callers combine this
    with `is_private`, which always applies.
    """
    if not relpaths or not os.path.isdir(worktree):
        return set()
    base = env if env is not None else {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    base = dict(base)
    base.setdefault("GIT_CONFIG_NOSYSTEM", "1")
    base.setdefault("GIT_CONFIG_GLOBAL", os.devnull)
    proc = subprocess.run(
        ["git", "-c", "safe.directory=*", "-c", "core.hooksPath=/dev/null", "check-ignore", "--no-index", "--stdin", "-z"],
        cwd=worktree,
        input=b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in relpaths),
        capture_output=True,
        env=base,
        timeout=60,
    )
    if proc.returncode not in (0, 1):  # 1 = none ignored; 128 = not a work tree
        return set()
    return {p.decode("utf-8", "surrogateescape") for p in proc.stdout.split(b"\0") if p}


def shareable(worktree: str | os.PathLike, relpaths: list[str], env: dict | None = None) -> list[str]:
    """The paths that may leave: not private here, not ignored by git there."""
    candidates = [p for p in relpaths if not is_private(p)]
    ignored = git_ignored(worktree, candidates, env)
    return [p for p in candidates if p not in ignored]
