"""Optional Jujutsu colocation: the same commits plus jj's operation log.

When `jj` is on PATH the tenant repo is colocated (`jj git init --colocate`) and its op log is
readable through `op_log()`. When it is not, nothing changes and nothing fails: every function
here degrades to a no-op. jj's identity is `workbooks-agent <tenant@workbooks.local>`.
"""

from __future__ import annotations

import shutil
import subprocess

from workbooks.gitstore.events import emit
from workbooks.gitstore.store import GitStore

JJ_TIMEOUT = 60.0


def jj_binary() -> str | None:
    return shutil.which("jj")


def _env(store: GitStore) -> dict:
    return store.env(
        {
            "JJ_USER": "workbooks-agent",
            "JJ_EMAIL": f"{store.tenant}@workbooks.local",
            "JJ_CONFIG": str(store.home / "jj-config.toml"),
        }
    )


def _run(store: GitStore, jj: str, *args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(
            [jj, "--no-pager", "--color=never", *args],
            cwd=store.path,
            env=_env(store),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=JJ_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        emit("jj_failed", "warning", tenant=store.tenant, args=list(args[:3]), error=str(e))
        return None


def is_colocated(store: GitStore) -> bool:
    return (store.path / ".jj").is_dir()


def colocate(store: GitStore) -> bool:
    """Colocate jj onto the tenant repo if jj exists; True when the repo is colocated afterwards."""
    jj = jj_binary()
    if jj is None:
        return False
    if is_colocated(store):
        return True
    with store.locked():
        if not is_colocated(store):
            p = _run(store, jj, "git", "init", "--colocate")
            if p is None or p.returncode != 0:
                if p is not None:
                    emit("jj_colocate_failed", "warning", tenant=store.tenant, stderr=p.stderr.decode("utf-8", "replace")[:300])
                return False
            _reattach_head(store)
            emit("jj_colocated", tenant=store.tenant)
    return is_colocated(store)


def _reattach_head(store: GitStore) -> None:
    """jj may leave git's HEAD detached at the branch tip; put it back on the branch git commits to."""
    sym = store.git("symbolic-ref", "-q", "HEAD", check=False)
    if sym.returncode == 0:
        return
    head = store.git("rev-parse", "-q", "--verify", "HEAD", check=False).stdout.strip()
    main = store.git("rev-parse", "-q", "--verify", "refs/heads/main", check=False).stdout.strip()
    if head and head == main:
        store.git("symbolic-ref", "HEAD", "refs/heads/main")


def op_log(store: GitStore, limit: int = 50) -> str | None:
    """jj's operation log as text, or None when jj is not on PATH (or the repo cannot be colocated)."""
    jj = jj_binary()
    if jj is None:
        return None
    store.ensure()
    if not colocate(store):
        return None
    limit = max(1, min(int(limit), 10_000))
    with store.locked():
        p = _run(store, jj, "--ignore-working-copy", "op", "log", "--limit", str(limit))
    if p is None or p.returncode != 0:
        return None
    return p.stdout.decode("utf-8", "replace")
