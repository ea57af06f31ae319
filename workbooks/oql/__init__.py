"""The OQL kernel host: load oql.wasm once, call its pure string functions.

The names below are loaded on first use (PEP 562), so importing a light submodule
(`workbooks.oql.setupfile`, `workbooks.oql.render_options`, `workbooks.oql.errors`) does not
import wasmtime and the kernel host with it.
"""

from __future__ import annotations

__all__ = [
    "Kernel", "default_kernel", "OPS", "WASM_PATH",
    "KernelError", "KernelTrap", "KernelDeadline", "KernelMemory", "InvalidUtf8",
]

_FROM_ERRORS = {"KernelError", "KernelTrap", "KernelDeadline", "KernelMemory", "InvalidUtf8"}
_FROM_KERNEL = {"Kernel", "default_kernel", "OPS", "WASM_PATH"}


def __getattr__(name: str):
    if name in _FROM_ERRORS:
        from workbooks.oql import errors as mod
    elif name in _FROM_KERNEL:
        from workbooks.oql import kernel as mod
    else:
        raise AttributeError(f"module 'workbooks.oql' has no attribute {name!r}")
    value = getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
