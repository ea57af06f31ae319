"""Published pages as content-addressed files beside the index, stored once.

A rendered page and its gzip are ~10x the Org source; kept in SQLite rows (and its WAL) they
made the index ~9x the source. Here each distinct page is two files under
`<data>/.workbooks/pages/<aa>/<sha256>.html[.gz]`, written atomically and fsynced before the
index row that names them commits, and removed when no row names them any more (`Store` calls
`collect` inside the write transaction that dropped the last reference, so a concurrent writer
of the same page - which re-checks the files inside its own transaction - never loses them).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from pathlib import Path

from workbooks.fsutil import atomic_write, fsync_dir

REF_RE = re.compile(r"^[0-9a-f]{64}$")


class PageFiles:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @staticmethod
    def ref_of(page: bytes) -> str:
        return hashlib.sha256(page).hexdigest()

    def _paths(self, ref: str) -> tuple[Path, Path]:
        if not REF_RE.fullmatch(ref or ""):
            raise ValueError(f"not a page ref: {str(ref)[:80]!r}")
        d = self.root / ref[:2]
        return d / f"{ref}.html", d / f"{ref}.html.gz"

    def has(self, ref: str) -> bool:
        html, gz = self._paths(ref)
        return html.is_file() and gz.is_file()

    def put(self, page: bytes) -> str:
        """Store `page` and its gzip (no-op when present); the ref. Durable when it returns."""
        ref = self.ref_of(page)
        html, gz = self._paths(ref)
        if html.is_file() and gz.is_file():
            return ref
        new_dir = not html.parent.is_dir()
        html.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if new_dir:
            fsync_dir(self.root)
        atomic_write(gz, gzip.compress(page, 6, mtime=0), mode=0o600)
        atomic_write(html, page, mode=0o600)
        return ref

    def get(self, ref: str) -> tuple[bytes, bytes]:
        """(page, gzip); FileNotFoundError when the ref was collected meanwhile."""
        html, gz = self._paths(ref)
        return html.read_bytes(), gz.read_bytes()

    def collect(self, ref: str) -> None:
        """Remove an unreferenced page's files (the caller checked no row names it)."""
        html, gz = self._paths(ref)
        for p in (html, gz):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        fsync_dir(html.parent)

    def refs(self) -> set[str]:
        out: set[str] = set()
        if not self.root.is_dir():
            return out
        for p in self.root.glob("??/*.html"):
            ref = p.name[:-5]
            if REF_RE.fullmatch(ref):
                out.add(ref)
        return out
