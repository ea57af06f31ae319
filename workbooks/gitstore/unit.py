"""One write = one atomic unit of git and the index, across crashes and full disks.

Called under the tenant lock, after `fsck.before_write` (so git and the index agree when it
starts). Order: refuse early when the disk is below its floor; record the intent durably (a
row in the index's `intents` table); commit exactly this write's path (`git commit --only`);
write the index row, which removes the intent in the same SQLite transaction - so "acknowledged"
and "unit complete" are one atomic commit.
If anything after the intent fails (the index write hits a full disk, the render raises), the
unit is rolled back at once by `fsck.repair`; if the process dies instead, the intent is still
there and the next writer, or the next control process to start, rolls it back. The answer
(`{sha}`) is only returned once the index row is committed, so "acknowledged" = "in the index".
"""

from __future__ import annotations

import os
import time
from typing import Callable

from workbooks.fsutil import as_insufficient_storage, check_free_space, is_no_space
from workbooks.gitstore import fsck
from workbooks.gitstore.events import emit
from workbooks.gitstore.store import GitStore, blob_id


def unchanged(gs: GitStore, path: str, data: bytes, indexed_source: bytes | None) -> bool:
    """`nochange` means the index AND git HEAD already hold exactly these bytes."""
    return indexed_source == data and gs.blob_at(path) == blob_id(data)


def _intent(gs: GitStore, op: str, wid: str, path: str, old: bytes | None, new: bytes | None) -> dict:
    return {"v": 1, "op": op, "tenant": gs.tenant, "workbook": wid, "path": path,
            "old_head": gs.head_unlocked(), "old_blob": blob_id(old) if old is not None else None,
            "new_blob": blob_id(new) if new is not None else None, "pid": os.getpid(), "ts": time.time()}


def _undo(store, gs: GitStore, exc: BaseException) -> None:
    try:
        fsck.repair(store, gs, reason="write_failed")
    except Exception as e:  # noqa: BLE001 - the intent stays: the next writer or start repairs
        emit("rollback_deferred", "warning", tenant=gs.tenant, error=type(e).__name__)
    if is_no_space(exc) and not getattr(exc, "http_status", None) == 507:
        raise as_insufficient_storage(exc) from exc


def write(store, gs: GitStore, wid: str, path: str, data: bytes, old: bytes | None, message: str,
          index: Callable[[str, str | None], None]) -> str:
    """Commit `data` at `path` and call `index(sha, new_head)`; the sha the index now holds."""
    check_free_space(gs.data_dir, need=len(data))
    try:
        store.put_intent(gs.tenant, wid, _intent(gs, "deploy", wid, path, old, data))
    except BaseException as e:
        if is_no_space(e):
            raise as_insufficient_storage(e) from e
        raise
    try:
        sha = gs.commit_files({path: data}, message, assume_tracked=old is not None)
        committed = sha is not None
        if sha is None:  # git already had these bytes (the index was behind): index them at HEAD
            sha = gs.head_unlocked()
        index(sha, sha if committed else None)  # the index row; its transaction removes the intent
    except BaseException as e:
        _undo(store, gs, e)
        raise
    return sha


def delete(store, gs: GitStore, wid: str, path: str, old: bytes, message: str,
           index: Callable[[str | None], None]) -> str | None:
    """Remove `path` in one commit (when git has it) and call `index(head)`; the new head."""
    check_free_space(gs.data_dir)
    store.put_intent(gs.tenant, wid, _intent(gs, "delete", wid, path, old, None))
    try:
        sha = gs.delete_file(path, message) if gs.blob_at(path) is not None else gs.head_unlocked()
        index(sha)  # removes the workbook's row and the intent in one transaction
    except BaseException as e:
        _undo(store, gs, e)
        raise
    return sha
