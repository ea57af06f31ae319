"""Errors raised by the kernel host. Codes match the pool protocol's typed errors."""

from __future__ import annotations

from workbooks.errors import BadRequest, WorkbooksError


class KernelError(WorkbooksError):
    code = "kernel_error"
    http_status = 500


class KernelTrap(KernelError):
    """The kernel trapped (a bug or a hostile input hit a guard); the instance was replaced."""

    code = "kernel_trap"
    hint = "the kernel was reset and later calls work; report the input that caused this"


class KernelDeadline(KernelError):
    """The call ran past its wall-time budget and was interrupted."""

    code = "deadline"
    retryable = True
    http_status = 504
    hint = "the document took too long; raise the deadline or split the document"


class KernelMemory(KernelError):
    """The call needed more memory than the store's cap."""

    code = "memory"
    http_status = 413
    hint = "the document needs more memory than the cap allows; raise WB_KERNEL_MEMORY_MB or split it"


class InvalidUtf8(BadRequest):
    """Input bytes are not UTF-8; `offset` is the first bad byte."""

    def __init__(self, offset: int, arg: int = 0):
        super().__init__(
            f"input is not valid UTF-8 at byte offset {offset}",
            hint="re-encode the file as UTF-8",
        )
        self.offset = offset
        self.arg = arg


__all__ = ["KernelError", "KernelTrap", "KernelDeadline", "KernelMemory", "InvalidUtf8", "BadRequest"]
