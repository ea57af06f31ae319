"""The files a build reads: the block's text as the lane's entry file, or a `:dir` in the tree.

A `:dir` names a directory inside the workbook's tree, a string from the workbook (untrusted), so
it is confined the way the agent's tools are (`workbooks.agent.tools.confine`): symlinks are
resolved and whatever lands outside the tree is refused, a FIFO or device is never opened for
reading (no hang), and the walk is bounded (files, bytes, depth). Every file read is returned so
the cache key covers it; build outputs left in the folder (`target/`, `zig-out/`, `.zig-cache/`)
and `.git/` are not read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from workbooks.agent.tools.confine import ConfinementError, read_regular, resolve_in

from .base import failed

SKIP_DIRS = frozenset({".git", "target", "zig-out", ".zig-cache", "zig-cache", "node_modules"})
MAX_FILES = 2000
MAX_BYTES = 64 << 20
MAX_DEPTH = 32


def text_bytes(s: str) -> bytes:
    """UTF-8 of a string from the plan; a lone surrogate (JSON allows "\\ud800") is kept, not fatal."""
    return s.encode("utf-8", "surrogatepass")


def _inside(root: str, p: str) -> bool:
    return p == root or p.startswith(root.rstrip("/") + "/")


def collect(tree: Path | None, dir_: str, entry: str, block_src: str) -> dict[str, bytes]:
    """{relative path: bytes} of every file under `dir_` (confined to `tree`), plus the entry
    file from the block's text when the folder has none. BuildError(build_failed) otherwise."""
    if tree is None:
        raise failed(f":dir {dir_} needs the workbook's tree, and this build has none")
    try:
        root = resolve_in(tree, dir_, for_write=False)
    except ConfinementError as e:
        raise failed(f":dir {dir_!r} refused: {e.reason} (it must name a folder inside the workbook's tree)") from None
    tree_real = os.path.realpath(os.fspath(tree))
    try:
        st = os.stat(root)
    except OSError:
        raise failed(f":dir {dir_!r}: no such folder in the workbook's tree") from None
    if not stat.S_ISDIR(st.st_mode):
        raise failed(f":dir {dir_!r} is not a folder")
    files: dict[str, bytes] = {}
    total = 0
    seen_dirs: set[str] = set()

    def walk(real_dir: str, rel: str, depth: int) -> None:
        nonlocal total
        if depth > MAX_DEPTH:
            raise failed(f":dir {dir_!r}: folders nested deeper than {MAX_DEPTH}")
        if real_dir in seen_dirs:
            return  # a symlink loop (or a folder linked twice): read once
        seen_dirs.add(real_dir)
        try:
            names = sorted(os.listdir(real_dir))
        except OSError as e:
            raise failed(f":dir {dir_!r}: cannot list {rel or '.'}: {e.strerror}") from None
        for name in names:
            relname = f"{rel}/{name}" if rel else name
            path = os.path.join(real_dir, name)
            real = os.path.realpath(path)
            if not _inside(tree_real, real):
                raise failed(f":dir {dir_!r}: {relname} is a symlink out of the workbook's tree (refused)")
            try:
                st = os.stat(real)
            except OSError:
                raise failed(f":dir {dir_!r}: {relname} is a dangling symlink") from None
            if stat.S_ISDIR(st.st_mode):
                if name not in SKIP_DIRS:
                    walk(real, relname, depth + 1)
                continue
            if not stat.S_ISREG(st.st_mode):
                raise failed(f":dir {dir_!r}: {relname} is not a regular file (FIFOs, sockets and devices are refused)")
            if len(files) >= MAX_FILES:
                raise failed(f":dir {dir_!r}: more than {MAX_FILES} files")
            try:
                data = read_regular(Path(real), cap=MAX_BYTES - total)
            except (OSError, ValueError) as e:
                raise failed(f":dir {dir_!r}: cannot read {relname}: {e} (at most {MAX_BYTES >> 20} MiB in all)") from None
            total += len(data)
            files[relname] = data

    walk(str(root), "", 0)
    if entry not in files:
        if not block_src.strip():
            raise failed(f":dir {dir_!r} has no {entry} (the entry file of this lane) and the block is empty")
        files[entry] = text_bytes(block_src)
    return files


def materialize(files: dict[str, bytes], work: Path) -> None:
    """Write the collected files into the (fresh, empty) work dir."""
    for rel, data in files.items():
        target = work / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
