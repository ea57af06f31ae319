"""`#+SETUPFILE:` / `#+INCLUDE:` in a deployed workbook: what it may read, and what it is told.

A deployed document's folder is its tenant's repo, so it may name the files committed there
(another workbook, a shared setup file). It may not reach anything else: not another tenant,
not the data dir, not a path outside the repo or a symlink out of it, and not what never leaves
the tenant (`.git/`, `.workbooks/`, run sidecars: `workbooks.private`) even though those live
in the same directory. The files are therefore read through a view of the repo holding only its
committed, non-private entries (regular files hard-linked or copied, symlinks recreated with
their own target, so a symlink out still resolves out and is refused); everything else "does
not exist". The view is built only when the document names a file at all.

`workbooks.oql.setupfile` does the reading (the same rules and caps as `wbx render`): the
document is expanded for the renderer (Org's export view), its setup files' keywords appended
for validate and parse_headlines (Org's parse view, line numbers unchanged), and every line
that could not be honoured comes back as a diagnostic with its 1-based `line`. Those are
warnings on a deploy: the line is left as written (the kernel ignores it) and the deploy goes on.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from workbooks.oql import setupfile
from workbooks.private import is_private


def _view(gs, into: Path) -> None:
    """Fill `into` with the repo's committed, non-private files (and symlinks, as they are)."""
    root = Path(gs.path)
    for rel in gs.ls_files():
        if is_private(rel) or rel.startswith("/") or ".." in Path(rel).parts:
            continue
        src = root / rel
        dst = into / rel
        try:
            st = os.lstat(src)
        except OSError:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISREG(st.st_mode):
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst, follow_symlinks=False)


STALE_VIEW_S = 600  # a view lives for one deploy; one this old was left by a process that died


def sweep_stale_views(scratch_dir: Path, older_than: float = STALE_VIEW_S) -> int:
    """Remove views that a control process killed mid-deploy left behind (others may be in use)."""
    import time

    removed = 0
    try:
        entries = list(scratch_dir.iterdir())
    except OSError:
        return 0
    cutoff = time.time() - older_than
    for e in entries:
        try:
            if e.name.startswith("includes-") and e.lstat().st_mtime < cutoff:
                shutil.rmtree(e)
                removed += 1
        except OSError:
            continue
    return removed


def views(text: str, gs, scratch_dir: Path) -> tuple[str, str, list[dict]]:
    """(parse view, render view, diagnostics) of `text`, deployed into the repo `gs`."""
    if not setupfile.names_files(text.encode("utf-8", "surrogatepass")):
        return text, text, []
    scratch_dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="includes-", dir=scratch_dir))
    try:
        if gs.exists():
            _view(gs, base)
        render_text, diags = setupfile.expand_with_diagnostics(text, base)
        parse_text = setupfile.with_setup_keywords(text, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    notes = []
    for d in diags:
        note = {**d, "level": "warning"}  # the deploy goes on; the line is ignored
        msg = str(note.get("message", ""))
        for shown in {str(base.resolve()), str(base)}:  # the view's place is nobody's business
            msg = msg.replace(shown + "/", "").replace(shown, ".")
        note["message"] = msg
        notes.append(note)
    return parse_text, render_text, notes
