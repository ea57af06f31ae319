"""Read, verify and unbundle a `.wbundle` without trusting anything it says about itself.

Every entry name is checked before a byte is written (no absolute paths, no `..`, no control
directories, no top-level dotfiles, no symlinks or special files, nothing Private); sizes are
counted while inflating (declared sizes are never trusted) against caps on each file, on the
total and on the entry count; every file must match the signed manifest. Extraction goes to a
temporary folder that is renamed into place only when all of it checked out, so a refused
bundle leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from workbooks import private
from workbooks.bundle.manifest import MANIFEST, check_manifest
from workbooks.errors import NotFound, UsageError, VerificationFailed
from workbooks.fsutil import fsync_dir, fsync_fd

MAX_ARCHIVE_BYTES = 512 * 1024 * 1024
MAX_TOTAL_BYTES = 256 * 1024 * 1024
MAX_FILE_BYTES = 128 * 1024 * 1024
MAX_ENTRIES = 10_000
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
CHUNK = 64 * 1024
FORBIDDEN_DIRS = private.CONTROL_DIRS | {".workbooks"}


class UnsafeBundle(VerificationFailed):
    code = "unsafe_bundle"


class BundleTooLarge(UnsafeBundle):
    code = "bundle_too_large"


@dataclass
class Caps:
    total_bytes: int = MAX_TOTAL_BYTES
    file_bytes: int = MAX_FILE_BYTES
    entries: int = MAX_ENTRIES
    archive_bytes: int = MAX_ARCHIVE_BYTES


def check_entry_name(name: str) -> str | None:
    """Why the entry name is refused, or None when it is a safe relative file path."""
    if not name or "\0" in name or "\\" in name:
        return "empty name, NUL or backslash"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    parts = name.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "'.', '..' or empty path segment"
    if any(p.lower() in FORBIDDEN_DIRS for p in parts):
        return "control directory"
    if parts[0].startswith("."):
        return "top-level dotfile"
    if private.is_private(name.rstrip("/")):
        return "private path"
    if len(name.encode("utf-8", "surrogateescape")) > 1024 or any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts):
        return "name too long"
    return None


def _entry_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if info.is_dir() or kind == stat.S_IFDIR:
        return "dir"
    if kind in (0, stat.S_IFREG):
        return "file"
    if kind == stat.S_IFLNK:
        return "symlink"
    return "special"


def _open_zip(path: Path, caps: Caps) -> zipfile.ZipFile:
    if str(path) == "-":
        raise NotFound("unbundle/verify want a real path, not stdin (-)")
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NotFound(f"read {path}: No such file or directory") from None
    if not stat.S_ISREG(st.st_mode):
        raise NotFound(f"{path} is not a file")
    if st.st_size > caps.archive_bytes:
        raise BundleTooLarge(f"{path} is {st.st_size} bytes; the cap is {caps.archive_bytes}")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise VerificationFailed(f"{path} is not a wbundle (not a zip: {e})") from None


def _plan(zf: zipfile.ZipFile, caps: Caps) -> tuple[dict, list[zipfile.ZipInfo]]:
    """Check every entry name and type, then read and check the manifest. Writes nothing."""
    infos = zf.infolist()
    if len(infos) > caps.entries:
        raise BundleTooLarge(f"bundle has {len(infos)} entries; the cap is {caps.entries}")
    seen: set[str] = set()
    files: list[zipfile.ZipInfo] = []
    manifest_info = None
    for info in infos:
        name = info.filename
        why = check_entry_name(name)
        if why:
            raise UnsafeBundle(f"refusing entry {name[:120]!r}: {why}")
        kind = _entry_kind(info)
        if kind in ("symlink", "special"):
            raise UnsafeBundle(f"refusing entry {name[:120]!r}: {kind} (only regular files are unbundled)")
        if info.flag_bits & 0x1:
            raise UnsafeBundle(f"refusing entry {name[:120]!r}: encrypted")
        key = name.rstrip("/").lower()
        if key in seen:
            raise UnsafeBundle(f"refusing entry {name[:120]!r}: duplicate name")
        seen.add(key)
        if kind == "dir":
            continue
        if name == MANIFEST:
            manifest_info = info
        else:
            files.append(info)
    if manifest_info is None:
        raise VerificationFailed("bundle has no manifest.json (unsigned)")
    raw = _read_capped(zf, manifest_info, MAX_MANIFEST_BYTES, None)
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise VerificationFailed("manifest.json is not JSON") from None
    why = check_manifest(manifest)
    if why:
        raise VerificationFailed(why)
    listed = set(manifest["files"])
    present = {i.filename for i in files}
    if present - listed:
        raise VerificationFailed(f"bundle carries files the manifest does not sign: {sorted(present - listed)[:5]}")
    if listed - present:
        raise VerificationFailed(f"bundle is missing signed files: {sorted(listed - present)[:5]}")
    for name in listed:
        why = check_entry_name(name)
        if why:
            raise UnsafeBundle(f"manifest lists unsafe path {name[:120]!r}: {why}")
    return manifest, files


def _read_capped(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, sink: Callable[[bytes], None] | None) -> bytes:
    """Inflate one entry, counting actual bytes; refuse past `cap`. Returns the bytes when no sink."""
    out = [] if sink is None else None
    n = 0
    try:
        with zf.open(info) as fh:
            while True:
                chunk = fh.read(CHUNK)
                if not chunk:
                    break
                n += len(chunk)
                if n > cap:
                    raise BundleTooLarge(f"entry {info.filename[:120]!r} inflates past {cap} bytes (zip bomb?)")
                if sink is None:
                    out.append(chunk)
                else:
                    sink(chunk)
    except (zipfile.BadZipFile, zlib_error(), EOFError, NotImplementedError) as e:
        raise VerificationFailed(f"entry {info.filename[:120]!r} is corrupt: {e}") from None
    return b"".join(out) if out is not None else b""


def zlib_error():
    import zlib

    return zlib.error


def _stream_all(zf: zipfile.ZipFile, manifest: dict, files: list[zipfile.ZipInfo], caps: Caps, dest: Path | None) -> int:
    """Inflate and check every file against the manifest (and write it under dest when given)."""
    total = 0
    for info in files:
        meta = manifest["files"][info.filename]
        remaining = caps.total_bytes - total
        h = hashlib.sha256()
        count = [0]
        fh = None
        if dest is not None:
            target = dest / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            fh = os.fdopen(fd, "wb")

        def sink(chunk: bytes) -> None:
            h.update(chunk)
            count[0] += len(chunk)
            if fh is not None:
                fh.write(chunk)

        try:
            cap = min(caps.file_bytes, remaining)
            try:
                _read_capped(zf, info, cap, sink)
            except BundleTooLarge:
                if remaining < caps.file_bytes:
                    raise BundleTooLarge(f"bundle inflates past the {caps.total_bytes}-byte total cap (zip bomb?)") from None
                raise
            if fh is not None:
                fh.flush()
                fsync_fd(fh.fileno())  # unpacked files are on stable storage before unbundle answers
        finally:
            if fh is not None:
                fh.close()
        total += count[0]
        if count[0] != meta["size"] or h.hexdigest() != meta["sha256"]:
            raise VerificationFailed(f"{info.filename} does not match the signed manifest (altered)")
    return total


def verify_bundle(path: str | os.PathLike, *, caps: Caps | None = None, expected_did: str | None = None) -> dict:
    caps = caps or Caps()
    p = Path(path)
    with _open_zip(p, caps) as zf:
        manifest, files = _plan(zf, caps)
        total = _stream_all(zf, manifest, files, caps, None)
    if expected_did is not None and manifest["did"] != expected_did:
        raise VerificationFailed(f"bundle signed by {manifest['did']}, not by the expected {expected_did}")
    return {"valid": True, "bundle": str(p), "did": manifest["did"], "files": sorted(manifest["files"]), "bytes": total}


def unbundle(path: str | os.PathLike, out: str | os.PathLike | None = None, *, caps: Caps | None = None) -> dict:
    """Verify and extract into `out` (default: the bundle's name without .wbundle). Never overwrites."""
    caps = caps or Caps()
    p = Path(path)
    dest = Path(out) if out else p.with_suffix("") if p.suffix == ".wbundle" else p.with_name(p.name + ".d")
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise UsageError(f"{dest} already exists and is not empty; choose another --out", hint="unbundle never overwrites")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _open_zip(p, caps) as zf:
        manifest, files = _plan(zf, caps)
        tmp = Path(tempfile.mkdtemp(prefix=".wbundle-", dir=str(dest.parent)))
        try:
            total = _stream_all(zf, manifest, files, caps, tmp)
            for d in sorted((p for p in tmp.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
                fsync_dir(d)  # every directory entry the tree made
            os.chmod(tmp, 0o755)
            fsync_dir(tmp)
            if dest.exists():
                dest.rmdir()
            os.rename(tmp, dest)
            fsync_dir(dest.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return {"out": str(dest), "did": manifest["did"], "files": sorted(manifest["files"]), "bytes": total}
