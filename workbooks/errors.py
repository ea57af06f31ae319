"""Typed errors shared by every part of Workbooks.

Each error carries a stable `code` (what callers branch on), a `hint` (what to do next),
whether retrying can help, and the CLI exit code it maps to. Exit codes are decided from
the type, never from message text.
"""

from __future__ import annotations

# CLI exit codes (the wbx contract).
EXIT_OK = 0
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4
EXIT_VERIFY = 5
EXIT_CONFLICT = 6
EXIT_AUTH = 7


class WorkbooksError(Exception):
    """Base of every error a user may see."""

    code = "error"
    exit_code = EXIT_OTHER
    retryable = False
    hint = ""
    http_status = 500

    def __init__(self, message: str, *, hint: str | None = None, data: object = None):
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint
        self.data = data

    def to_dict(self) -> dict:
        return {
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
            "retryable": self.retryable,
        }

    def cli_dict(self) -> dict:
        """The CLI's error object: `code` is the numeric exit code (what scripts branch on, as
        in the original wbx), `kind` the stable symbolic name; an empty hint is left out."""
        out = {"code": self.exit_code, "kind": self.code, "message": self.message, "retryable": self.retryable}
        if self.hint:
            out["hint"] = self.hint
        return out


class UsageError(WorkbooksError):
    code = "usage"
    exit_code = EXIT_USAGE
    http_status = 400
    hint = "run `wbx help` for the verbs and their arguments"


class InputTooLarge(UsageError):
    """A document over the input limit (`WB_MAX_INPUT_MB`); refused before it is all read."""

    code = "input_too_large"
    http_status = 413
    hint = "split the document, or raise WB_MAX_INPUT_MB"


class UnsupportedInput(UsageError):
    """Input that is not a regular file or a pipe (a directory, a device, a socket)."""

    code = "unsupported_input"
    hint = "pass a regular .org file, or - to read stdin"


class NotFound(WorkbooksError):
    code = "not_found"
    exit_code = EXIT_NOT_FOUND
    http_status = 404


class VerificationFailed(WorkbooksError):
    code = "verification_failed"
    exit_code = EXIT_VERIFY
    http_status = 422


class Conflict(WorkbooksError):
    code = "conflict"
    exit_code = EXIT_CONFLICT
    http_status = 409


class AuthRejected(WorkbooksError):
    code = "auth_rejected"
    exit_code = EXIT_AUTH
    http_status = 401


class Unreachable(WorkbooksError):
    code = "unreachable"
    exit_code = EXIT_UNREACHABLE
    retryable = True
    http_status = 503
    hint = "is the service running? start it with `wbx serve` (or `make serve`)"


class BadRequest(WorkbooksError):
    """The input itself is wrong (e.g. not UTF-8); retrying the same input cannot help."""

    code = "bad_request"
    exit_code = EXIT_OTHER
    http_status = 400
