"""Path confinement for every tool that touches files: nothing outside the run's working dir.

An agent names files with strings it chose (or was tricked into choosing), so every path goes
through `resolve_in(workdir, rel, for_write=...)` before it is opened. The rules:

- the path is resolved the way the kernel would walk it: symlinks are followed on both sides
  (the working dir itself may sit behind a symlink), `..` after a symlink means the symlink's
  target's parent, and a target that does not exist yet is judged by its deepest existing
  parent; the result must be the working dir or inside it (`/tmp/wd-evil` is not inside
  `/tmp/wd`), so absolute paths elsewhere, `..` escapes and symlinks pointing out are refused;
- a NUL byte or an empty path is refused (the OS would cut the name at the NUL);
- a write never goes THROUGH a symlink: the final component must not be one (callers open it with
  `O_NOFOLLOW`, see `open_for_write`, so a symlink swapped in afterwards fails the open too);
  a symlinked parent directory is fine while it resolves inside;
- a write never touches `.git/` or `.workbooks/` (exec runs work in the tenant repo: hooks,
  config and the published site live there) nor a name in `read_only` (the run's own records).

The API is shared with the shell's redirections (`workbooks.agent.shell`); keep it stable.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PROTECTED_DIRS = frozenset({".git", ".workbooks"})
READ_CAP = 8 << 20  # vfs_read and the shell never pull more than this into memory


class ConfinementError(Exception):
    """A path the tools refuse. `code`: escape | nul | empty | symlink | protected | read_only."""

    def __init__(self, reason: str, code: str = "escape"):
        super().__init__(reason)
        self.reason = reason
        self.code = code


def _inside(root: str, p: str) -> bool:
    return p == root or p.startswith(root.rstrip("/") + "/")


def resolve_in(workdir: Path, rel: str, *, for_write: bool, read_only: frozenset[str] | set[str] = frozenset()) -> Path:
    """The real path `rel` names inside `workdir`, or ConfinementError.

    For reads the result is fully resolved (a symlink inside pointing inside is followed). For
    writes it is the real parent joined with the final name, which is not a symlink."""
    if not isinstance(rel, str):
        raise ConfinementError("path must be a string", "empty")
    if "\x00" in rel:
        raise ConfinementError("path contains a NUL byte", "nul")
    if rel.strip() == "":
        raise ConfinementError("empty path", "empty")
    root = os.path.realpath(os.fspath(workdir))
    cand = rel if os.path.isabs(rel) else os.path.join(root, rel)
    head, name = os.path.split(cand.rstrip("/") or "/")
    if name in ("", ".", ".."):
        target = os.path.realpath(cand)
        is_link = False
        parent = os.path.dirname(target)
    else:
        parent = os.path.realpath(head or "/")
        target = os.path.join(parent, name)
        is_link = os.path.islink(target)
        if is_link:
            resolved = os.path.realpath(target)
            if not _inside(root, resolved):
                raise ConfinementError("path escapes your working dir", "escape")
            if not for_write:
                target = resolved
    if not _inside(root, target) or (target != root and not _inside(root, parent)):
        raise ConfinementError("path escapes your working dir", "escape")
    if not for_write:
        return Path(target)
    if is_link:
        raise ConfinementError("path is a symlink (writes never follow one)", "symlink")
    if target == root:
        raise ConfinementError("path is the working dir itself", "protected")
    parts = Path(os.path.relpath(target, root)).parts
    if any(p in PROTECTED_DIRS for p in parts):
        raise ConfinementError("path is inside .git/ or .workbooks/ (never writable)", "protected")
    relpath = "/".join(parts)
    for ro in read_only:
        ro = ro.strip("/")
        if ro and (relpath == ro or relpath.startswith(ro + "/")):
            raise ConfinementError("path is read-only (a record of this run)", "read_only")
    return Path(target)


def make_parents(workdir: Path, target: Path) -> None:
    """Create `target`'s missing parent directories, each checked: none may be (or become) a
    symlink, so a directory swapped for a link mid-way cannot carry the write outside."""
    root = os.path.realpath(os.fspath(workdir))
    rel_parts = Path(os.path.relpath(os.fspath(target), root)).parts[:-1]
    cur = root
    for part in rel_parts:
        cur = os.path.join(cur, part)
        try:
            os.mkdir(cur, 0o755)
        except FileExistsError:
            pass
        st = os.lstat(cur)
        if stat.S_ISLNK(st.st_mode):
            if not _inside(root, os.path.realpath(cur)):
                raise ConfinementError("path escapes your working dir", "escape")
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"{part} is not a directory")


def open_for_write(path: Path, *, append: bool = False, mode: int = 0o644) -> int:
    """An fd for writing a confined path: never through a symlink (O_NOFOLLOW), never a FIFO or
    device (O_NONBLOCK open, then the fd must be a regular file). Truncates unless `append`."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    fd = os.open(os.fspath(path), flags | (os.O_APPEND if append else 0), mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(f"{os.path.basename(path)} is not a regular file")
        if not append:
            os.ftruncate(fd, 0)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path, cap: int = READ_CAP) -> bytes:
    """The bytes of a confined regular file (at most `cap`, else ValueError): a FIFO, device or
    directory is refused without blocking; the final component is not followed if it was swapped
    for a symlink since `resolve_in` looked."""
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError("is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > cap:
            raise ValueError(f"larger than {cap >> 20} MiB")
        os.set_blocking(fd, True)
        chunks, total = [], 0
        while True:
            b = os.read(fd, min(1 << 20, cap + 1 - total))
            if not b:
                break
            chunks.append(b)
            total += len(b)
            if total > cap:
                raise ValueError(f"larger than {cap >> 20} MiB")
        return b"".join(chunks)
    finally:
        os.close(fd)
