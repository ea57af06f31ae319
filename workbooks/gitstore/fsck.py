"""Git and the index agree: find where a tenant's git HEAD and its SQLite index rows differ, and
repair it by rolling git BACK to what the index holds.

Why back: the index row is written last, and a deploy is acknowledged only after it, so the index
is exactly the set of acknowledged writes. A commit the index does not reflect belongs to a
deploy whose process died (or whose index write failed on a full disk) before it answered; no
client was told it happened, so it is undone.

How a deploy helps: before touching git it records an intent (a row of the index's `intents`
table: tenant, workbook, path, old HEAD, old and new blob; committed with synchronous=FULL), and
the transaction that writes the index row removes it. An intent present at the start of a
write means a writer died mid-way. `repair()` then, under the tenant lock:

1. waits for a dead writer's orphaned `git add`/`git commit` to finish, and removes git lock
   files left by one that was killed too;
2. when HEAD is the intent's own commit (parent = the intent's old HEAD, touching only its
   path, carrying its new blob) and the index does not hold it, moves the branch back to the
   old HEAD (`git update-ref` with the expected old value) - the unacknowledged commit leaves the
   history;
3. resets git's staging index to HEAD (nothing a dead writer staged rides along later);
4. compares every indexed workbook's source with `HEAD:<id>.org` and commits, in one commit
   touching only those files, the indexed source wherever they differ; a `<id>.org` that git has
   and the index does not is removed only when the intent names it (other files in the repo,
   e.g. the agent's, are not workbooks of the index);
5. puts the work-tree file of the intent's path back to HEAD, sets the index's tenant head to
   git HEAD and removes the intent.

Each repair is a structlog event `reconcile_repair` (tenant, workbook, action, from, to).
`before_write()` runs this on a process's first write to a tenant and whenever an intent is
found; the control plane also runs it for every tenant when it starts. `wbx repo fsck [--repair]`
reports (exit 5 when git and the index disagree) and repairs.
"""

from __future__ import annotations

import json
import os
import threading
import time

from workbooks.fsutil import atomic_write
from workbooks.gitstore.events import emit
from workbooks.gitstore.store import GitStore, blob_id

_reconciled: set[tuple[str, str, int]] = set()
_guard = threading.Lock()


def _key(gs: GitStore) -> tuple[str, str, int]:
    return (str(gs.data_dir), gs.tenant, os.getpid())


def check(store, gs: GitStore) -> dict:
    """Where git HEAD and the index differ for this tenant (read-only)."""
    tenant = gs.tenant
    intent = store.get_intent(tenant)
    rows = store.workbook_sources(tenant)
    head = gs.head() if gs.exists() else None
    blobs = gs.tree_blobs(suffix=".org") if head else {}
    disagreements = []
    for wid, source in rows:
        path = f"{wid}.org"
        want = blob_id(source.encode("utf-8"))
        have = blobs.get(path)
        if have != want:
            disagreements.append({"workbook": wid, "path": path, "git_blob": have, "index_blob": want,
                                  "kind": "missing_in_git" if have is None else "content_differs"})
    indexed = {f"{wid}.org" for wid, _ in rows}
    git_only = sorted(p for p in blobs if "/" not in p and p not in indexed)
    index_head = store.head(tenant)
    return {
        "tenant": tenant,
        "head": head,
        "index_head": index_head,
        "workbooks": len(rows),
        "disagreements": disagreements,
        "git_only": git_only,
        "intent": intent,
        "locks": [str(p.relative_to(gs.git_dir)) for p in gs.git_lock_files()] if gs.exists() else [],
        # the tenant's head in the index only trails git (ledger checkpoints and the agent commit
        # without a deploy): informational, repaired on the next repair, not a disagreement
        "ok": not disagreements and intent is None,
    }


def _is_intent_commit(gs: GitStore, head: str, intent: dict) -> bool:
    """True when `head` is exactly the commit the intent's writer was making."""
    path = intent.get("path")
    old_head = intent.get("old_head")
    if not isinstance(path, str):
        return False
    parents = gs.out("rev-list", "--parents", "-n1", head).split()[1:]
    if parents != ([old_head] if old_head else []):
        return False
    if old_head:
        changed = gs.git("diff-tree", "--no-commit-id", "--name-only", "-r", "-z", old_head, head).stdout
    else:
        changed = gs.git("ls-tree", "-r", "-z", "--name-only", head).stdout
    names = {n.decode("utf-8", "surrogateescape") for n in changed.split(b"\0") if n}
    if not names <= {path, ".gitignore"}:
        return False
    now = gs.tree_blobs(head).get(path)
    return now == intent.get("new_blob")


def _event(report: dict, tenant: str, workbook: str | None, action: str, reason: str, **fields) -> None:
    entry = {"workbook": workbook, "action": action, **fields}
    report["repairs"].append(entry)
    emit("reconcile_repair", "warning", tenant=tenant, reason=reason, **entry)


def repair(store, gs: GitStore, *, reason: str = "fsck") -> dict:
    """Make git HEAD agree with the index for every workbook of the tenant (see the module doc)."""
    t0 = time.monotonic()
    tenant = gs.tenant
    report: dict = {"tenant": tenant, "repairs": []}
    if not gs.exists():
        if store.get_intent(tenant) is not None:  # the writer died before git had a repo: nothing to undo
            store.clear_intent(tenant)
        report.update(check(store, gs), repairs=[])
        return report
    with gs.locked():
        for lock in gs.clear_stale_locks():
            _event(report, tenant, None, "stale_git_lock_removed", reason, file=lock)
        intent = store.get_intent(tenant)
        head = gs.head_unlocked()
        rows = dict(store.workbook_sources(tenant))
        ipath = intent.get("path") if intent and isinstance(intent.get("path"), str) else None
        iwid = ipath[:-4] if ipath and ipath.endswith(".org") else None

        # 1. the dead writer's own commit at the tip, not in the index: move the branch back
        if intent and ipath and head and head != intent.get("old_head") and _is_intent_commit(gs, head, intent):
            indexed = rows.get(iwid)
            index_blob = blob_id(indexed.encode("utf-8")) if indexed is not None else None
            if index_blob != intent.get("new_blob"):  # the index never took this write: unacknowledged
                ref = gs.branch_ref()
                old = intent.get("old_head")
                if old:
                    gs.git("update-ref", "-m", f"workbooks: roll back unacknowledged {intent.get('op', 'write')}",
                           ref, old, head)
                else:
                    gs.git("update-ref", "-d", ref, head)
                gs.flush_ref_dirs()
                _event(report, tenant, iwid, "unacknowledged_commit_rolled_back", reason, **{"from": head, "to": old})
                head = old

        # 2. nothing a dead writer staged survives
        gs.reset_index()

        # 3. every indexed workbook's source is what HEAD holds
        blobs = gs.tree_blobs(suffix=".org") if head else {}
        fix: dict[str, bytes | None] = {}
        for wid, source in rows.items():
            path = f"{wid}.org"
            data = source.encode("utf-8")
            if blobs.get(path) != blob_id(data):
                fix[path] = data
                _event(report, tenant, wid, "git_restored_from_index", reason,
                       **{"from": blobs.get(path), "to": blob_id(data)})
        if ipath and iwid not in rows and ipath in blobs:
            fix[ipath] = None
            _event(report, tenant, iwid, "unindexed_file_removed", reason, **{"from": blobs[ipath], "to": None})
        if fix:
            gs.commit_files(fix, f"reconcile: git follows the index ({', '.join(sorted(fix))[:200]})")
            head = gs.head_unlocked()

        # 4. the work tree shows what the index holds (work-tree writes are not flushed: a power
        #    cut may leave one stale or empty), and the intent's file matches HEAD again
        for wid, source in rows.items():
            path = f"{wid}.org"
            if path in fix:
                continue
            try:
                target = gs._safe_target(path)
                data = source.encode("utf-8")
                if not target.is_file() or target.read_bytes() != data:
                    atomic_write(target, data, tmp_dir=gs.git_dir, mode=0o644, durable=False)
            except Exception as e:  # noqa: BLE001 - a convenience copy; git and the index are the truth
                emit("reconcile_worktree_failed", "warning", tenant=tenant, path=path, error=type(e).__name__)
        if ipath and ipath not in fix:
            try:
                target = gs._safe_target(ipath)
                data = gs.read_file(ipath)
                if data is None:
                    if target.exists():
                        target.unlink()
                elif not target.exists() or target.read_bytes() != data:
                    atomic_write(target, data, tmp_dir=gs.git_dir, mode=0o644, durable=False)
            except Exception as e:  # noqa: BLE001 - the work tree is a convenience, git and the index are the truth
                emit("reconcile_worktree_failed", "warning", tenant=tenant, path=ipath, error=type(e).__name__)

        # 5. the index's notion of HEAD, and the intent is done
        if head and store.tenant_exists(tenant) and store.head(tenant) != head:
            store.set_head(tenant, head)
        if intent is not None:
            store.clear_intent(tenant)
        with _guard:
            _reconciled.add(_key(gs))
    after = check(store, gs)
    report.update({k: v for k, v in after.items() if k != "repairs"})
    report["ms"] = round((time.monotonic() - t0) * 1000, 1)
    return report


def before_write(store, gs: GitStore) -> dict | None:
    """Call under the tenant lock before a write: reconcile on this process's first write to the
    tenant, and whenever a dead writer's intent is present. None when nothing had to run."""
    with _guard:
        first = _key(gs) not in _reconciled
    if not first and store.get_intent(gs.tenant) is None:
        return None
    return repair(store, gs, reason="first_write" if first else "intent_found")


def repair_all(store, data_dir, *, reason: str = "start") -> list[dict]:
    """Reconcile every tenant the index knows that has a repo (a control process's start)."""
    out = []
    for row in store.list_tenants():
        gs = GitStore(data_dir, row["name"])
        if gs.exists():
            out.append(repair(store, gs, reason=reason))
    return out


def cmd_repo_fsck(ns):
    """`wbx repo fsck [--repair]`: exit 0 when git and the index agree (after repairing, with
    --repair), 5 (verification failed) while they disagree."""
    from workbooks.cli.output import Output
    from workbooks.errors import EXIT_VERIFY
    from workbooks.gitstore.tenant import validate_tenant
    from workbooks.store import Store

    from workbooks.errors import NotFound
    from workbooks.store.db import db_path

    data = ns.data or os.environ.get("WB_DATA") or os.path.abspath("wb-data")
    tenant = validate_tenant(ns.tenant or os.environ.get("WB_TENANT") or "dev")
    if not db_path(data).is_file():  # checking never creates a data dir or an index
        raise NotFound(f"no workbooks index under {data}", hint="pass --data (or set WB_DATA) to the served data dir")
    store = Store(data)
    try:
        gs = GitStore(data, tenant)
        if not store.tenant_exists(tenant) and not gs.exists():
            raise NotFound(f"no tenant {tenant!r} in {data}", hint="--tenant names one (default $WB_TENANT or dev)")
        rep = repair(store, gs, reason="wbx_repo_fsck") if ns.repair else {**check(store, gs), "repairs": []}
    finally:
        store.close()

    def human(d, st) -> str:
        lines = [f"{st.bold(d['tenant'])}  HEAD {str(d['head'])[:12]}  index head {str(d['index_head'])[:12]}"
                 f"  {d['workbooks']} workbook(s)"]
        for r in d["repairs"]:
            lines.append(f"  {st.yellow('repaired')} {r['workbook'] or '-'}: {r['action']}")
        for x in d["disagreements"]:
            lines.append(f"  {st.red('differs')} {x['workbook']}: {x['kind']} (git {str(x['git_blob'])[:10]},"
                         f" index {x['index_blob'][:10]})")
        if d["intent"]:
            lines.append(f"  {st.red('unfinished write')} {json.dumps(d['intent'], sort_keys=True)[:200]}")
        if d["git_only"]:
            lines.append(st.dim(f"  in git, not in the index (not deployed workbooks): {', '.join(d['git_only'][:20])}"))
        lines.append(st.green("git and the index agree") if d["ok"] else
                     st.red("git and the index disagree: run `wbx repo fsck --repair`"))
        return "\n".join(lines)

    return Output(data=rep, human=human, exit_code=0 if rep["ok"] else EXIT_VERIFY)
