"""The run ledger's hash chain over the RAW bytes of `_steps.jsonl`, and its locked append.

h0 = sha256("workbooks-ledger-v1"); h_i = sha256(hex(h_{i-1}) ‖ line_i), lines split on b"\\n"
with empty ones dropped. Chaining raw bytes (never a re-encode) means a changed byte, a CR, an
inserted, dropped or reordered line all change the head.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

from workbooks.errors import BadRequest
from workbooks.fsutil import fsync_dir, fsync_fd

GENESIS = b"workbooks-ledger-v1"
STEPS_FILE = "_steps.jsonl"
LEDGER_FILE = "_ledger.json"
MAX_STEPS_BYTES = 256 * 1024 * 1024


def genesis_hash() -> str:
    return hashlib.sha256(GENESIS).hexdigest()


def split_lines(raw: bytes) -> list[tuple[int, bytes]]:
    """(physical 1-based line number, raw line) for every non-empty line."""
    return [(i + 1, line) for i, line in enumerate(raw.split(b"\n")) if line]


def chain(lines: list[bytes]) -> list[str]:
    """[h_1 … h_n] as lowercase hex."""
    h = genesis_hash()
    out = []
    for line in lines:
        h = hashlib.sha256(h.encode("ascii") + line).hexdigest()
        out.append(h)
    return out


def head_of(lines: list[bytes]) -> str:
    hs = chain(lines)
    return hs[-1] if hs else genesis_hash()


def read_steps(run_dir: str | os.PathLike) -> bytes | None:
    """The steps file's bytes read under a shared lock (never a half-written line), None if absent."""
    path = Path(run_dir) / STEPS_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise BadRequest(f"cannot read {path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        size = os.fstat(fd).st_size
        if size > MAX_STEPS_BYTES:
            raise BadRequest(f"{path} is larger than {MAX_STEPS_BYTES} bytes")
        chunks = []
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


def append_step(run_dir: str | os.PathLike, record: dict | bytes | str) -> None:
    """Append one step as one line, atomically with respect to other appenders (threads, processes).

    A dict is encoded as compact JSON; bytes/str are taken as the raw line and must not contain
    a newline (one step, one line). If the file does not end with a newline (a torn earlier
    write), a newline is added first so the new step never merges into an old line.
    """
    if isinstance(record, dict):
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    elif isinstance(record, str):
        line = record.encode("utf-8")
    elif isinstance(record, (bytes, bytearray)):
        line = bytes(record)
    else:
        raise BadRequest("a step is a dict, str or bytes")
    if b"\n" in line:
        raise BadRequest("a step must be a single line (no newline inside)")
    if not line:
        raise BadRequest("a step must not be empty")
    path = Path(run_dir) / STEPS_FILE
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        prefix = b""
        if size and os.pread(fd, 1, size - 1) != b"\n":
            prefix = b"\n"
        data = prefix + line + b"\n"
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        fsync_fd(fd)  # an appended step is on stable storage before append_step returns
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)
