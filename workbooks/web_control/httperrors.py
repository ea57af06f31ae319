"""One error shape for both planes: `{"error": {"code", "message"}}` with the right status.

Framework errors (404/405/413 raised by routing or body limits) go through the same handler,
the pool's `overloaded` becomes 503 with Retry-After, and an unexpected exception is logged
(with its traceback, never the request body) and answered with a bare 500. Under load the pool
answers `overloaded` to many requests at once: those warnings are rate-limited (one line a
second per code, carrying how many were suppressed), the access log still has every request.
"""

from __future__ import annotations

import json
import time

from quart import Quart, Response
from werkzeug.exceptions import HTTPException

from workbooks.errors import WorkbooksError
from workbooks.log import get_logger

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    411: "length_required",
    412: "precondition_failed",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "unprocessable",
    428: "precondition_required",
    429: "too_many_requests",
    431: "headers_too_large",
    500: "internal",
    501: "not_implemented",
    502: "bad_gateway",
    503: "unavailable",
    504: "timeout",
    507: "insufficient_storage",
}


class HttpError(WorkbooksError):
    """An error raised by a route with an explicit status and code."""

    def __init__(self, status: int, code: str, message: str, *, hint: str | None = None,
                 data: object = None, headers: dict | None = None):
        super().__init__(message, hint=hint, data=data)
        self.http_status = status
        self.code = code
        self.headers = headers or {}


class Unauthorized(HttpError):
    def __init__(self, message: str = "missing or invalid API key"):
        super().__init__(401, "unauthorized", message, hint="send Authorization: Bearer <key>",
                         headers={"WWW-Authenticate": 'Bearer realm="workbooks"'})


class Forbidden(HttpError):
    def __init__(self, message: str = "this key may not do that"):
        super().__init__(403, "forbidden", message)


def bearer_principal(store, authorization: str | None):
    """The key's Principal for an `Authorization: Bearer <key>` header (both planes); 401 when the
    header is missing or malformed or the key unknown or revoked."""
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized()
    p = store.authenticate(key.strip())
    if p is None:
        raise Unauthorized("invalid or revoked API key")
    return p


def error_response(status: int, code: str, message: str, *, headers: dict | None = None,
                   extra: dict | None = None) -> Response:
    body: dict = {"error": {"code": code, "message": message}}
    if extra:
        body["error"].update(extra)
    resp = Response(json.dumps(body, ensure_ascii=False) + "\n", status=status, content_type="application/json")
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    resp.headers["Cache-Control"] = "no-store"
    return resp


def workbooks_error_response(e: WorkbooksError) -> Response:
    status = int(getattr(e, "http_status", 500) or 500)
    headers = dict(getattr(e, "headers", {}) or {})
    if e.code in ("overloaded", "no_workers") or status == 503:
        headers.setdefault("Retry-After", "1")
    extra: dict = {}
    if e.hint:
        extra["hint"] = e.hint
    if e.data is not None:
        extra["details"] = e.data
    return error_response(status, e.code, e.message, headers=headers, extra=extra)


RATE_LIMITED = ("overloaded", "no_workers")


class RateLimitedWarnings:
    """At most one warning line per `interval` seconds per code; the next line says how many were
    suppressed since the last one (so a storm of 503s is a few lines, not thousands)."""

    def __init__(self, log, interval: float = 1.0, clock=time.monotonic):
        self.log = log
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._event = "request_failed"

    def warning(self, event: str, code: str, **fields) -> bool:
        """Log unless a line for `code` went out less than `interval` ago; True when logged."""
        now = self.clock()
        last = self._last.get(code)
        if last is not None and now - last < self.interval:
            self._suppressed[code] = self._suppressed.get(code, 0) + 1
            return False
        self._last[code] = now
        suppressed = self._suppressed.pop(code, 0)
        self._event = event
        self.log.warning(event, code=code, suppressed=suppressed, **fields)
        return True

    def flush(self) -> None:
        """Report counts still held back once their second is over (called after every request),
        so the tail of a storm is not lost when no further warning comes."""
        if not self._suppressed:
            return
        now = self.clock()
        for code in [c for c, last in self._last.items() if c in self._suppressed and now - last >= self.interval]:
            self._last[code] = now
            self.log.warning(self._event, code=code, suppressed=self._suppressed.pop(code),
                             message="repeats of the last warning")


def install(app: Quart, role: str) -> RateLimitedWarnings:
    """The plane's error handlers; returns its rate-limited warnings (an ASGI fast path in front of
    the app shares them, so one storm is one series of lines)."""
    log = get_logger(plane=role)
    limited = RateLimitedWarnings(log)

    @app.after_request
    async def _flush_suppressed(resp):
        limited.flush()
        return resp

    @app.errorhandler(HTTPException)
    async def _http(e: HTTPException):
        status = e.code or 500
        headers = {}
        if status == 405:
            allowed = getattr(e, "valid_methods", None)
            if allowed:
                headers["Allow"] = ", ".join(sorted(allowed))
        msg = {
            404: "no such route",
            405: "method not allowed here",
            413: "request body too large",
        }.get(status) or (e.description or e.name or "error")
        return error_response(status, HTTP_CODES.get(status, "error"), msg, headers=headers)

    @app.errorhandler(WorkbooksError)
    async def _wb(e: WorkbooksError):
        if int(getattr(e, "http_status", 500) or 500) >= 500:
            if e.code in RATE_LIMITED:
                limited.warning("request_failed", e.code, status=e.http_status, message=e.message)
            else:
                log.warning("request_failed", code=e.code, status=e.http_status, message=e.message)
        return workbooks_error_response(e)

    @app.errorhandler(Exception)
    async def _any(e: Exception):
        if isinstance(e, HTTPException):
            return await _http(e)
        if isinstance(e, WorkbooksError):
            return await _wb(e)
        from workbooks.fsutil import as_insufficient_storage, is_no_space

        if is_no_space(e):  # ENOSPC/EDQUOT/SQLITE_FULL that got past the free-space floor: 507, not 500
            return await _wb(as_insufficient_storage(e))
        log.error("unhandled_exception", exc_type=type(e).__name__, exc_info=e)
        return error_response(500, "internal", "internal error; see the server log")

    return limited
