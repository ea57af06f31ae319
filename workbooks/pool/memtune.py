"""Keep large message buffers in the heap instead of fresh mmap()s, once per process.

Why: every render moves a document in and its HTML out, often hundreds of KB to a few MB, and
libzmq, msgpack and Python each allocate a buffer of that size per message. glibc serves such
sizes with a new mmap() and unmaps it on free (or trims the heap top), so every message pays
page faults on memory the process held a moment earlier. Measured on a 550 KB document whose
HTML is 1.5 MB: ~600 minor faults and ~1.3 ms of extra CPU per call in the client process,
~0.4 ms in the worker. Raising the mmap and trim thresholds lets freed buffers be reused.

The cost is that up to TRIM_THRESHOLD of freed heap may stay resident in each process; a pool
process's RSS is reported by `wbx ops status`. `WB_MALLOC_TUNE=0` turns this off. On a libc
without mallopt (musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import os

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# glibc caps the mmap threshold at 32 MB on 64-bit (HEAP_MAX_SIZE / 2); bigger buffers are
# rare and still get their own mapping.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20

_done: bool | None = None


def tune_malloc() -> bool:
    """Apply the thresholds to this process (idempotent); True if they are in effect."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("WB_MALLOC_TUNE", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
