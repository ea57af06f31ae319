"""Typed errors of the actor layer: every failed `call` raises one, with a stable `.code`.

They subclass the shared `WorkbooksError` types so the CLI and HTTP layers map them without
knowing about actors (an unknown actor is "not found", a timeout is "unreachable", ...).
"""

from __future__ import annotations

from workbooks.errors import Conflict, NotFound, Unreachable, UsageError, WorkbooksError


class ActorError(WorkbooksError):
    """Base of actor errors; also what a remote error with an unfamiliar code becomes."""

    code = "actor_error"

    def __init__(self, message: str, *, code: str | None = None, **kw):
        super().__init__(message, **kw)
        if code is not None:
            self.code = code


class ActorTimeout(Unreachable, ActorError):
    """No reply within the call's timeout (the actor may still process the message later)."""

    code = "timeout"


class UnknownActor(NotFound, ActorError):
    code = "unknown_actor"


class UnknownOp(UsageError, ActorError):
    code = "unknown_op"


class BadRequest(UsageError, ActorError):
    code = "bad_request"


class HandlerFailed(ActorError):
    """The handler raised an unexpected exception; the actor itself keeps serving."""

    code = "handler_failed"


class ActorStopped(Unreachable, ActorError):
    code = "actor_stopped"


class MailboxFull(ActorError):
    code = "overloaded"
    retryable = True


class ProtocolError(ActorError):
    code = "protocol"


class NotFoundError(NotFound, ActorError):
    """A remote `not_found` (e.g. no such child), rebuilt with the NotFound exit code."""

    code = "not_found"


class ConflictError(Conflict, ActorError):
    code = "conflict"


class OverCapacity(ConflictError):
    """More processes than the machine can hold were asked for (`scale` without force)."""

    code = "over_capacity"


class NoServingWorker(ConflictError):
    """The change would leave the pool with no worker serving requests (without force)."""

    code = "no_serving_worker"


class UsageFailed(UsageError, ActorError):
    code = "usage"


class UnreachableError(Unreachable, ActorError):
    code = "unreachable"


_BY_CODE = {
    cls.code: cls
    for cls in (ActorTimeout, UnknownActor, UnknownOp, BadRequest, HandlerFailed, ActorStopped,
                MailboxFull, ProtocolError, NotFoundError, ConflictError, OverCapacity,
                NoServingWorker, UsageFailed, UnreachableError)
}


def error_from_wire(err: object) -> ActorError:
    """Rebuild a typed error from a reply's `error` map (unknown codes keep their code)."""
    if not isinstance(err, dict):
        return ProtocolError(f"malformed error in reply: {err!r:.200}")
    code = str(err.get("code") or "actor_error")
    message = str(err.get("message") or code)
    cls = _BY_CODE.get(code)
    if cls is not None:
        e = cls(message)
    else:
        e = ActorError(message, code=code)
    if err.get("hint"):
        e.hint = str(err["hint"])
    return e


def error_to_wire(exc: BaseException) -> dict:
    """The `error` map of a reply for `exc`: typed errors keep their code, others are handler_failed."""
    if isinstance(exc, WorkbooksError):
        d = {"code": exc.code, "message": exc.message}
        if exc.hint:
            d["hint"] = exc.hint
        return d
    return {"code": HandlerFailed.code, "message": f"{type(exc).__name__}: {exc}"[:500]}
