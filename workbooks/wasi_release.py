"""Wait until wasmtime has let go of a store's custom stdout/stderr callbacks.

wasmtime calls custom WASI outputs from its own I/O threads and drops them there (a finalizer),
possibly after the store is closed. A process that exits while one of those threads still has to
call into Python aborts (a Rust panic that cannot unwind), so whoever closes a store with custom
outputs waits for them to be released (the agent shell's stages, workflow steps).
"""

from __future__ import annotations

import time


def held_by_wasmtime(outputs) -> bool:
    """Whether wasmtime-py still holds any of `outputs` (the objects given as stdout/stderr_custom)."""
    try:
        from wasmtime import _wasi
    except ImportError:
        return False
    slab = getattr(_wasi, "CUSTOM_OUTPUTS", None)
    handles = getattr(slab, "handles", None)
    if not isinstance(handles, dict):
        return False  # another wasmtime-py layout: nothing to wait for
    held = {id(v) for v in list(handles.values())}
    return any(id(o) in held for o in outputs)


def wait_released(outputs, wait_s: float) -> bool:
    """Wait up to `wait_s` for wasmtime to release `outputs`; False when it still holds one."""
    until = time.monotonic() + wait_s
    while held_by_wasmtime(outputs):
        if time.monotonic() >= until:
            return False
        time.sleep(0.001)
    return True
