"""Small file-system helpers shared by the stores."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: bytes, *, tmp_dir: str | os.PathLike | None = None, mode: int | None = None) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never half of one.

    The temporary file lives in `tmp_dir` (default: beside `path`; it must be on the same file
    system) and is removed if anything fails.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".wb-write-", dir=str(tmp_dir or path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
