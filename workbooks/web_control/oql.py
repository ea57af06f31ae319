"""Kernel calls for the planes, with the pool client's signature.

`await oql.call(op, args, deadline_ms=...) -> bytes`: through the OQL pool when an endpoint is
configured, otherwise the in-process kernel on a worker thread (tests, single-box dev). Errors
come back as WorkbooksError with the pool's codes and an HTTP status.
"""

from __future__ import annotations

import json

import trio

from workbooks.errors import WorkbooksError
from workbooks.web_control.httperrors import HttpError

# pool/kernel error code -> (HTTP status, extra headers)
STATUS_FOR_CODE = {
    "bad_request": 400,
    "kernel_trap": 422,  # the posted document made the kernel trap: it was not processed
    "deadline": 504,
    "memory": 413,
    "overloaded": 503,
    "no_workers": 503,
    "protocol": 502,
}


def as_http_error(e: Exception) -> HttpError:
    code = getattr(e, "code", None) or "kernel_error"
    status = STATUS_FOR_CODE.get(code, 502)
    headers = {"Retry-After": "1"} if status == 503 else None
    message = getattr(e, "message", None) or str(e) or code
    return HttpError(status, code, message, hint=getattr(e, "hint", None) or None, headers=headers)


class InProcessOql:
    """The kernel of this process, off the event loop (one call at a time: the kernel has one store)."""

    def __init__(self) -> None:
        self._limiter = trio.CapacityLimiter(1)
        self._kernel = None

    def _get(self):
        if self._kernel is None:
            from workbooks.oql import default_kernel

            self._kernel = default_kernel()
        return self._kernel

    async def call(self, op: str, args: list, deadline_ms: int = 10000) -> bytes:
        def run() -> bytes:
            return self._get().call_raw(op, *args, deadline_ms=deadline_ms)

        try:
            return await trio.to_thread.run_sync(run, limiter=self._limiter)
        except WorkbooksError as e:
            raise as_http_error(e) from None

    async def aclose(self) -> None:
        pass

    def describe(self) -> dict:
        return {"mode": "in-process"}


class PoolOql:
    """The OQL pool (P2's AsyncPoolClient)."""

    def __init__(self, endpoint: str):
        from workbooks.pool.client import AsyncPoolClient

        self.endpoint = endpoint
        self._client = AsyncPoolClient(endpoint)

    async def call(self, op: str, args: list, deadline_ms: int = 10000) -> bytes:
        from workbooks.pool.client import PoolError

        try:
            return await self._client.call(op, list(args), deadline_ms=deadline_ms)
        except PoolError as e:
            raise as_http_error(e) from None
        except WorkbooksError as e:
            raise as_http_error(e) from None

    async def aclose(self) -> None:
        close = getattr(self._client, "aclose", None) or getattr(self._client, "close", None)
        if close is not None:
            r = close()
            if hasattr(r, "__await__"):
                await r

    def describe(self) -> dict:
        return {"mode": "pool", "endpoint": self.endpoint}


def render_request(org: str, options: str | None) -> tuple[str, list, str]:
    """(kernel op, args, content type) for `POST /api/oql/render[?options=<JSON object>]`.

    Unknown option keys are a 400 naming the key (the list: workbooks.oql.render_options).
    The operator's `WB_RAW_HTML=0` (workbooks.author_html) forces `raw_html: false`."""
    from workbooks.author_html import enabled_globally

    if options is None or options.strip() == "":
        if enabled_globally():
            return "render", [org], "text/html; charset=utf-8"
        options = "{}"
    from workbooks.oql.render_options import check_render_options

    try:
        parsed = json.loads(options)
    except (ValueError, RecursionError) as e:
        raise HttpError(400, "bad_request", f"the options parameter is not JSON: {e}",
                        hint='pass a JSON object, e.g. options={"toc":true}') from None
    try:
        check_render_options(parsed)
    except WorkbooksError as e:
        raise HttpError(400, "bad_request", e.message, hint=e.hint or None) from None
    if not enabled_globally():
        parsed["raw_html"] = False
    ctype = "application/json" if parsed.get("metadata") is True else "text/html; charset=utf-8"
    return "render_with", [org, json.dumps(parsed, ensure_ascii=False)], ctype


def make_oql(endpoint: str | None):
    return PoolOql(endpoint) if endpoint else InProcessOql()
