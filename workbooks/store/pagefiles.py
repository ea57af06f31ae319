"""Published pages as content-addressed files beside the index, stored once.

A rendered page and its gzip are ~10x the Org source; kept in SQLite rows (and its WAL) they
made the index ~9x the source. Here each distinct page is one file, its gzip (the form most
clients take; the plain bytes are inflated once when a plane loads the page into memory), at
`<data>/.workbooks/pages/<aa>/<sha256 of the page>.html.gz`, written atomically and fsynced
(file and directory: two flushes per new page) before the index row that names it commits, and
removed once no row has named it for `WB_PAGE_GC_GRACE_S` seconds (`Store` schedules and
collects inside write transactions; a concurrent writer of the same page re-checks the file
inside its own transaction, and a reader of the old row still finds the file).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from pathlib import Path

from workbooks.fsutil import atomic_write, makedirs_durable

REF_RE = re.compile(r"^[0-9a-f]{64}$")


class PageFiles:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @staticmethod
    def ref_of(page: bytes) -> str:
        return hashlib.sha256(page).hexdigest()

    def path(self, ref: str) -> Path:
        if not REF_RE.fullmatch(ref or ""):
            raise ValueError(f"not a page ref: {str(ref)[:80]!r}")
        return self.root / ref[:2] / f"{ref}.html.gz"

    def has(self, ref: str) -> bool:
        return self.path(ref).is_file()

    def put(self, page: bytes) -> str:
        """Store `page` (as its gzip; no-op when present); the ref. Durable when it returns."""
        ref = self.ref_of(page)
        gz = self.path(ref)
        if gz.is_file():
            return ref
        if not gz.parent.is_dir():
            makedirs_durable(gz.parent, mode=0o700)
        atomic_write(gz, gzip.compress(page, 6, mtime=0), mode=0o600)
        return ref

    def get(self, ref: str) -> tuple[bytes, bytes]:
        """(page, gzip); FileNotFoundError when the ref was collected meanwhile."""
        gz = self.path(ref).read_bytes()
        return gzip.decompress(gz), gz

    def collect(self, ref: str) -> None:
        """Remove an unreferenced page's file (the caller checked no row names it)."""
        try:  # not flushed: a removal a power cut undoes leaves an orphan file, never a missing page
            self.path(ref).unlink()
        except FileNotFoundError:
            pass

    def refs(self) -> set[str]:
        if not self.root.is_dir():
            return set()
        return {p.name[:-8] for p in self.root.glob("??/*.html.gz") if REF_RE.fullmatch(p.name[:-8])}
