"""The OQL kernel host: load oql.wasm once, call its pure string functions."""

from workbooks.oql.errors import InvalidUtf8, KernelDeadline, KernelError, KernelMemory, KernelTrap
from workbooks.oql.kernel import OPS, WASM_PATH, Kernel, default_kernel

__all__ = [
    "Kernel", "default_kernel", "OPS", "WASM_PATH",
    "KernelError", "KernelTrap", "KernelDeadline", "KernelMemory", "InvalidUtf8",
]
