"""Access log for both web planes: one structlog JSON line (event `access`) per HTTP request.

An ASGI middleware, outermost on each plane, so every answer is logged: pages served by the
public fast path, JSON errors answered by the ASGI layers beneath it (bad Host, 413, 408), 401,
403 and 404 from the routes, and requests whose handler crashed or whose client went away.

The line carries what an operator needs and nothing a client could use: method, path (an API
key pasted into it is redacted), the query with the values of secret-looking parameters
redacted, status, duration_ms, bytes (of the response body), tenant, key_id (the id of the key
that authenticated, never the key), remote address and host. The app below fills tenant and
key_id through `note(scope, ...)`: the middleware leaves a dict in the ASGI scope for it.
`WB_ACCESS_LOG=0` turns the lines off (e.g. for a benchmark of the bare planes).
"""

from __future__ import annotations

import os
import re
import time
from urllib.parse import unquote_plus

from workbooks.log import get_logger

SCOPE_KEY = "workbooks.access"
MAX_PATH = 512
MAX_QUERY = 512
MAX_HOST = 255
# Query parameters whose values are never written down (matched anywhere in the name).
SECRET_PARAM = re.compile(r"(?i)token|key|secret|pass|auth|sig|session|cookie|code|credential|bearer")
# Something that looks like one of our API keys, wherever it appears (a key pasted into a path).
KEY_LIKE = re.compile(r"wbk_[A-Za-z0-9_\-%]*")
REDACTED = "[redacted]"


def note(scope, **fields) -> None:
    """Add fields (tenant, key_id) to the access line of the request `scope` belongs to."""
    info = scope.get(SCOPE_KEY)
    if isinstance(info, dict):
        info.update(fields)


def redact_path(path: str) -> str:
    path = KEY_LIKE.sub("wbk_" + REDACTED, path)
    return path if len(path) <= MAX_PATH else path[:MAX_PATH] + "..."


def redact_query(raw: bytes) -> str | None:
    """The query string with secret-looking parameters' values replaced; None when empty."""
    if not raw:
        return None
    parts = []
    for item in raw.decode("latin-1").split("&"):
        name, eq, value = item.partition("=")
        plain_name = unquote_plus(name)
        if SECRET_PARAM.search(plain_name) or KEY_LIKE.search(unquote_plus(value)):
            value = REDACTED
        if KEY_LIKE.search(plain_name):
            name = REDACTED
        parts.append(name + eq + value)
    q = "&".join(parts)
    return q if len(q) <= MAX_QUERY else q[:MAX_QUERY] + "..."


class AccessLog:
    """Wrap an ASGI app; log one `access` line per HTTP request once its answer is sent (or failed)."""

    def __init__(self, inner, plane: str):
        self.inner = inner
        self.plane = plane
        self.enabled = os.environ.get("WB_ACCESS_LOG", "1").lower() not in ("0", "false", "no", "off")
        self.log = get_logger()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.enabled:
            return await self.inner(scope, receive, send)
        info: dict = {}
        scope[SCOPE_KEY] = info
        started = time.perf_counter()
        state = {"status": None, "bytes": 0}

        async def snd(msg):
            kind = msg["type"]
            if kind == "http.response.start":
                state["status"] = msg["status"]
            elif kind == "http.response.body":
                state["bytes"] += len(msg.get("body") or b"")
            await send(msg)

        error = None
        try:
            await self.inner(scope, receive, snd)
        except BaseException as e:
            error = e
            raise
        finally:
            self._write(scope, info, state, started, error)

    def _write(self, scope, info: dict, state: dict, started: float, error: BaseException | None) -> None:
        try:
            status = state["status"]
            fields: dict = {}
            if status is None:
                # no answer went out: the handler crashed (the server answers 500) or the client left
                status = 500 if isinstance(error, Exception) else 499
                fields["aborted"] = True
            host = None
            for k, v in scope.get("headers", ()):
                if k == b"host":
                    host = KEY_LIKE.sub("wbk_" + REDACTED, v[:MAX_HOST].decode("latin-1"))
                    break
            client = scope.get("client")
            query = redact_query(scope.get("query_string") or b"")
            if query is not None:
                fields["query"] = query
            if info.get("workbook"):
                fields["workbook"] = info["workbook"]
            self.log.info(
                "access", plane=self.plane, method=scope.get("method"), path=redact_path(scope.get("path") or ""),
                status=status, duration_ms=round((time.perf_counter() - started) * 1000, 3),
                bytes=state["bytes"], tenant=info.get("tenant"), key_id=info.get("key_id"),
                remote=client[0] if client else None, host=host, **fields,
            )
        except Exception:  # noqa: BLE001 - the access log never breaks a request
            pass
