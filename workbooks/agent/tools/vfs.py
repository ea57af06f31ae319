"""vfs_read / vfs_write / vfs_edit: the agent's file tools, confined to its working dir.

Every path goes through `confine.resolve_in` (symlinks resolved, no escape, no write through a
link, `.git/`, `.workbooks/` and the run's records never written). Writes are atomic (a temporary
file beside the target, fsynced, renamed over it; the rename replaces a link swapped in rather than
following it) and refused below the data volume's free-space floor. Result strings are the
original's: "wrote <n> bytes to <p>", "not found: <p>", "read blocked: path escapes your working
dir (<p>)", "write blocked: path escapes your working dir (<p>) — you can only write inside it".
`vfs_edit` (not in the original) replaces one exact, unique occurrence of `old` with `new`.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from workbooks.agent.tools.base import ToolContext, ToolResult
from workbooks.agent.tools.common import answer, off_loop, shown, str_arg
from workbooks.agent.tools.confine import ConfinementError, make_parents, read_regular, resolve_in

MAX_WRITE = 8 << 20  # one write or edit result (bytes)
MAX_READ = 8 << 20


def read_blocked(ctx: ToolContext, p, e: ConfinementError) -> ToolResult:
    if e.code == "escape":
        return answer(ctx, f"read blocked: path escapes your working dir ({shown(p)})", 1, "blocked")
    return answer(ctx, f"read blocked: {e.reason} ({shown(p)})", 1, "blocked")


def write_blocked(ctx: ToolContext, p, e: ConfinementError) -> ToolResult:
    if e.code == "escape":
        return answer(ctx, f"write blocked: path escapes your working dir ({shown(p)}) — you can only write inside it", 1, "blocked")
    return answer(ctx, f"write blocked: {e.reason} ({shown(p)})", 1, "blocked")


def _io_error(ctx: ToolContext, verb: str, p, e: BaseException) -> ToolResult:
    if isinstance(e, FileNotFoundError):
        return answer(ctx, f"not found: {shown(p)}", 1, "not_found")
    if isinstance(e, IsADirectoryError):
        return answer(ctx, f"{verb} error: {shown(p)} is a directory", 1, "is_directory")
    if isinstance(e, NotADirectoryError):
        return answer(ctx, f"{verb} error: a parent of {shown(p)} is not a directory", 1, "not_directory")
    if isinstance(e, PermissionError):
        return answer(ctx, f"{verb} error: permission denied ({shown(p)})", 1, "permission")
    if isinstance(e, OSError) and e.errno == errno.ELOOP:  # the final component is a symlink (O_NOFOLLOW)
        return answer(ctx, f"{verb} blocked: path is a symlink ({shown(p)})", 1, "blocked")
    msg = getattr(e, "message", None) or getattr(e, "strerror", None) or str(e)
    return answer(ctx, f"{verb} error: {shown(p)}: {msg}", 1, "io")


def _atomic_write(ctx: ToolContext, target: Path, data: bytes) -> None:
    from workbooks.fsutil import atomic_write, check_free_space

    check_free_space(ctx.workdir, need=len(data))
    make_parents(ctx.workdir, target)
    try:
        mode = os.lstat(target).st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    atomic_write(target, data, mode=mode)


class VfsRead:
    name = "vfs_read"
    description = "Read a file from your working dir (a path relative to it, or absolute inside it)."
    parameters = {
        "type": "object",
        "properties": {"path": {"type": "string", "description": "e.g. notes.org or content/index.org"}},
        "required": ["path"],
    }
    needs_exec = False

    async def __call__(self, ctx: ToolContext, args: dict) -> ToolResult:
        p = str_arg(args, "path")
        try:
            target = resolve_in(ctx.workdir, p, for_write=False)
        except ConfinementError as e:
            return read_blocked(ctx, p, e)
        try:
            data = await off_loop(read_regular, target, MAX_READ)
        except ValueError as e:
            return answer(ctx, f"read error: {shown(p)}: {e}", 1, "unreadable")
        except OSError as e:
            return _io_error(ctx, "read", p, e)
        return answer(ctx, data.decode("utf-8", errors="replace"))


class VfsWrite:
    name = "vfs_write"
    description = (
        "Write content to a file in your working dir (created with its folders, or replaced whole). "
        "Persists across steps; use it for deliverables and notes."
    )
    parameters = {
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "a path inside your working dir"},
            "content": {"type": "string", "description": "the whole new content"},
        },
        "required": ["path", "content"],
    }
    needs_exec = False

    async def __call__(self, ctx: ToolContext, args: dict) -> ToolResult:
        p = str_arg(args, "path")
        content = args.get("content") if isinstance(args, dict) else None
        if content is None:
            content = ""
        if not isinstance(content, str):
            return answer(ctx, "write error: `content` must be a string", 1, "bad_args")
        try:
            target = resolve_in(ctx.workdir, p, for_write=True, read_only=ctx.read_only)
        except ConfinementError as e:
            return write_blocked(ctx, p, e)
        data = content.encode("utf-8", errors="surrogatepass")
        if len(data) > MAX_WRITE:
            return answer(ctx, f"write error: content is larger than {MAX_WRITE >> 20} MiB", 1, "too_large")
        try:
            await off_loop(_atomic_write, ctx, target, data)
        except ConfinementError as e:
            return write_blocked(ctx, p, e)
        except OSError as e:
            return _io_error(ctx, "write", p, e)
        except Exception as e:  # InsufficientStorage (a WorkbooksError) and friends
            return _io_error(ctx, "write", p, e)
        return answer(ctx, f"wrote {len(data)} bytes to {shown(p)}")


class VfsEdit:
    name = "vfs_edit"
    description = (
        "Edit a file in your working dir: replace the exact text `old` (which must occur exactly once; "
        "include surrounding lines to make it unique) with `new`."
    )
    parameters = {
        "type": "object",
        "properties": {
            "path": {"type": "string"},
            "old": {"type": "string", "description": "the exact text to replace (whitespace included)"},
            "new": {"type": "string", "description": "the replacement"},
        },
        "required": ["path", "old", "new"],
    }
    needs_exec = False

    async def __call__(self, ctx: ToolContext, args: dict) -> ToolResult:
        p = str_arg(args, "path")
        old, new = str_arg(args, "old"), str_arg(args, "new")
        if old is None or new is None:
            return answer(ctx, "edit error: `old` and `new` must be strings", 1, "bad_args")
        if old == "":
            return answer(ctx, "edit error: `old` is empty — give the exact text to replace", 1, "bad_args")
        try:
            target = resolve_in(ctx.workdir, p, for_write=True, read_only=ctx.read_only)
        except ConfinementError as e:
            return write_blocked(ctx, p, e)

        def edit() -> tuple[int, int]:
            raw = read_regular(target, MAX_READ)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError("is not UTF-8 text") from None
            n = text.count(old)
            if n != 1:
                return n, 0
            data = text.replace(old, new, 1).encode("utf-8", errors="surrogatepass")
            if len(data) > MAX_WRITE:
                raise ValueError(f"the result would be larger than {MAX_WRITE >> 20} MiB")
            _atomic_write(ctx, target, data)
            return 1, len(data)

        try:
            n, size = await off_loop(edit)
        except ValueError as e:
            return answer(ctx, f"edit error: {shown(p)}: {e}", 1, "unreadable")
        except ConfinementError as e:
            return write_blocked(ctx, p, e)
        except OSError as e:
            return _io_error(ctx, "edit", p, e)
        except Exception as e:  # noqa: BLE001 - InsufficientStorage and friends
            return _io_error(ctx, "edit", p, e)
        if n == 0:
            return answer(ctx, f"edit failed: `old` not found in {shown(p)} (it must match exactly, whitespace included)", 1, "no_match")
        if n > 1:
            return answer(ctx, f"edit failed: `old` matches {n} times in {shown(p)} — include more context so it matches exactly once", 1, "ambiguous")
        return answer(ctx, f"edited {shown(p)}: replaced 1 occurrence, wrote {size} bytes")


VFS_READ = VfsRead()
VFS_WRITE = VfsWrite()
VFS_EDIT = VfsEdit()
