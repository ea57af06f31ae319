"""Pull upstream changes into the tenant repo without ever clobbering local work.

A dirty tree is first snapshotted as a `wip: snapshot before reconcile` commit, then upstream is
fetched and merged. On a conflict (or any failure) the merge is aborted and the snapshot undone,
so the work tree and history are exactly as they were; the caller gets the conflicting paths.
"""

from __future__ import annotations

from workbooks.errors import Conflict, NotFound
from workbooks.gitstore import GitError, GitStore
from workbooks.gitstore.events import emit
from workbooks.mirror.push import PUSH_TIMEOUT, _protocol_opts, push_reason

SNAPSHOT_MESSAGE = "wip: snapshot before reconcile"


def _current_branch(store: GitStore) -> str:
    p = store.git("symbolic-ref", "-q", "--short", "HEAD", check=False)
    return p.stdout.decode().strip() or "main"


def _restore(store: GitStore, pre_head: str | None) -> None:
    """Undo the snapshot commit, keeping the work tree as it is (the snapshot's content)."""
    if pre_head is not None:
        store.git("reset", "-q", "--mixed", pre_head)
    else:
        branch = _current_branch(store)
        store.git("update-ref", "-d", f"refs/heads/{branch}")
        store.git("rm", "-r", "-q", "--cached", "--ignore-unmatch", ".")


def reconcile(store: GitStore, remote: str = "origin", branch: str | None = None, *, allow_local: bool = True) -> dict:
    """Snapshot, fetch `remote`, merge. Returns {ok, snapshot, head, before, merged, fast_forward}.

    Raises NotFound without a remote, Conflict (exit 6 / HTTP 409) on a merge conflict.
    """
    store.ensure()
    with store.locked():
        if store.remote_url(remote) is None:
            raise NotFound(f"no {remote!r} remote to reconcile with", hint="add one with `wbx mirror URL`")
        branch = branch or _current_branch(store)
        pre_head = store.head_unlocked()
        snapshot = None
        store.write_gitignore()
        if store.git("status", "--porcelain", "-uall").stdout.strip():
            store.git("add", "-A")
            store._unstage_private()
            snapshot = store._commit_staged(SNAPSHOT_MESSAGE + "\n")
        try:
            fetch = store.git(*_protocol_opts(allow_local), "fetch", "--no-tags", remote, branch, check=False, timeout=PUSH_TIMEOUT)
            if fetch.returncode != 0:
                raise GitError(f"fetch from {remote} failed: {push_reason(fetch)[:300]}")
            fetched = store.git("rev-parse", "FETCH_HEAD^{commit}").stdout.decode().strip()
            before = store.head_unlocked()
            merge = store.git(
                "merge", "--no-edit", "-m", f"reconcile {remote}/{branch}", fetched, check=False, timeout=PUSH_TIMEOUT
            )
            if merge.returncode != 0:
                conflicted = store.git("diff", "--name-only", "--diff-filter=U", "-z").stdout
                files = [f.decode("utf-8", "replace") for f in conflicted.split(b"\0") if f]
                store.git("merge", "--abort", check=False)
                if files:
                    emit("reconcile_conflict", "warning", tenant=store.tenant, remote=remote, files=files[:20])
                    raise Conflict(
                        f"reconcile with {remote}/{branch} conflicts in {', '.join(files[:10])}; nothing was changed",
                        hint="resolve upstream (or locally) and reconcile again",
                        data={"files": files},
                    )
                raise GitError(f"merge with {remote}/{branch} failed: {push_reason(merge)[:300]}")
        except BaseException:
            if snapshot is not None:
                _restore(store, pre_head)
            raise
        head = store.head_unlocked()
        if head != pre_head:
            store.flush_all_dirs()  # the fetched and merged objects' and refs' names are durable
        emit("reconciled", tenant=store.tenant, remote=remote, before=before, head=head, snapshot=snapshot)
        parents = store.git("rev-list", "--parents", "-n1", "HEAD").stdout.decode().split()
        return {
            "ok": True,
            "snapshot": snapshot,
            "before": before,
            "head": head,
            "merged": head != before,
            "fast_forward": head == fetched and head != before,
            "merge_commit": len(parents) > 2,
        }
