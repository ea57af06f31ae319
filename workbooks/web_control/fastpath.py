"""The OQL routes' fast path: `POST /api/oql/{render,query,tangle,lint}` answered in front of Quart.

Why: a render through Quart cost the control plane ~1.2 ms of CPU (request and response
objects, routing, hooks, the key's SQLite lookup), so the render API over HTTP reached a third
to a half of what the pool renders on its own. This ASGI layer sits inside the access log,
the response counting and the body guard (`asgi_body.BodyBeforeResponse`: bad Host, the body
limit and its 413, the 408) and in front of Quart, and answers the hot path with the same
contract as the Quart route (workbooks.web_control.app `oql_route`):

- same authentication: `Authorization: Bearer <key>`, any scope; the access line names the key
  id and the tenant (`accesslog.note`);
- same options handling (`oql.render_request`, the query parsed as werkzeug parses it), same
  kernel call and deadline, same status, body and headers (`content-type`, `content-length`,
  `cache-control: no-store`);
- the same pool errors (`oql.as_http_error`): JSON body, 503 with `Retry-After: 1`, and the same
  `request_failed` warnings (rate-limited for `overloaded`/`no_workers`).

Anything it does not answer itself goes to Quart untouched (the body replayed): other routes and
methods, and every failure found before the kernel is called (missing, unknown or revoked key,
a body that is not UTF-8 or holds a NUL, bad options). Those answers are Quart's own, so the
401/400 bodies and headers cannot drift; only successful renders and the pool's failures are
answered here.

Keys: a key's row is looked up once and kept for `KEY_TTL_S` (0.5 s) in this process, by the
key's SHA-256, so a revocation (by any process, or `wbx` on the index) holds everywhere within
half a second; the revoking process forgets its cached keys at once (`KeyCache.clear`). Unknown
keys are never cached (a key just created works at once).

`WB_OQL_FASTPATH=0` leaves every request to Quart (an escape hatch, and the reference the parity
tests compare this layer with).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from urllib.parse import parse_qsl

from workbooks import accesslog
from workbooks.errors import WorkbooksError
from workbooks.log import get_logger
from workbooks.store.db import KEY_PREFIX, Principal
from workbooks.web_control.httperrors import RATE_LIMITED, RateLimitedWarnings

#: How long a key looked up stays trusted in one process (a revocation holds within this).
KEY_TTL_S = 0.5
#: Distinct keys kept per process (then the cache starts over).
KEY_CACHE_MAX = 4096

ROUTES = {
    "/api/oql/render": ("render", b"text/html; charset=utf-8"),
    "/api/oql/query": ("parse_headlines", b"application/json"),
    "/api/oql/parse": ("parse", b"application/json"),
    "/api/oql/tangle": ("tangle_plan", b"application/json"),
    "/api/oql/lint": ("validate", b"application/json"),
}
CTYPE = {"text/html; charset=utf-8": b"text/html; charset=utf-8", "application/json": b"application/json"}


def fastpath_enabled(env=None) -> bool:
    """`WB_OQL_FASTPATH` (default on; 0/false/no/off: every request through Quart)."""
    v = (os.environ if env is None else env).get("WB_OQL_FASTPATH", "1")
    return v.strip().lower() not in ("0", "false", "no", "off")


class KeyCache:
    """Principals of recently seen API keys, each trusted for `ttl` seconds."""

    def __init__(self, ttl: float = KEY_TTL_S, most: int = KEY_CACHE_MAX, clock=time.monotonic):
        self.ttl = ttl
        self.most = most
        self.clock = clock
        self._rows: dict[bytes, tuple[Principal, float]] = {}

    def principal(self, store, authorization: bytes | None) -> Principal | None:
        """The key's Principal for an Authorization header value, None when the header is missing
        or malformed or the key unknown or revoked (as `httperrors.bearer_principal` decides)."""
        if not authorization:
            return None
        scheme, _, key = authorization.decode("latin-1").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key or not key.startswith(KEY_PREFIX) or len(key) > 200:
            return None
        digest = hashlib.sha256(key.encode("latin-1")).digest()
        now = self.clock()
        hit = self._rows.get(digest)
        if hit is not None and now - hit[1] < self.ttl:
            return hit[0]
        p = store.authenticate(key)
        if p is None:
            self._rows.pop(digest, None)
            return None
        if len(self._rows) >= self.most:
            self._rows.clear()
        self._rows[digest] = (p, now)
        return p

    def clear(self) -> None:
        self._rows.clear()


def query_options(query: bytes) -> str | None:
    """The first `options` parameter of the query, parsed exactly as werkzeug's `request.args`."""
    for k, v in parse_qsl(query.decode(), keep_blank_values=True, errors="werkzeug.url_quote"):
        if k == "options":
            return v
    return None


def _replay(body: bytes, receive):
    sent = False

    async def rcv():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return rcv


class FastOql:
    """ASGI layer: the OQL routes' hot path (see the module docstring); everything else to `inner`."""

    def __init__(self, inner, ctx, keys: KeyCache, deadline_ms: int, limited: RateLimitedWarnings | None = None):
        self.inner = inner
        self.ctx = ctx
        self.keys = keys
        self.deadline_ms = deadline_ms
        self.log = get_logger(plane="control")
        self.limited = limited or RateLimitedWarnings(self.log)  # the app's own (httperrors.install)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.inner(scope, receive, send)
        route = ROUTES.get(scope["path"])
        ctx = self.ctx
        if route is None or ctx.store is None or ctx.oql is None:
            return await self.inner(scope, receive, send)
        authorization = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                authorization = v
                break
        # the body (BodyBeforeResponse has read it whole: one message, replayed)
        msg = await receive()
        if msg["type"] != "http.request":
            return
        body = msg.get("body", b"")
        if msg.get("more_body", False):
            chunks = [body]
            while msg.get("more_body", False):
                msg = await receive()
                if msg["type"] != "http.request":
                    return
                chunks.append(msg.get("body", b""))
            body = b"".join(chunks)
        try:
            p = self.keys.principal(ctx.store, authorization)
            if p is None:
                raise LookupError
            text = body.decode("utf-8")
            if "\x00" in text:
                raise LookupError
            op, ctype = route
            if op == "render":
                from workbooks.web_control.oql import render_request

                query = scope.get("query_string") or b""
                op, args, ctype = render_request(text, query_options(query) if query else None)
                ctype = CTYPE[ctype]
            else:
                args = [text]
        except Exception:  # noqa: BLE001 - Quart's route answers every failure before the kernel (401, 400, 500)
            return await self.inner(scope, _replay(body, receive), send)
        accesslog.note(scope, key_id=p.key_id, **({"tenant": p.tenant} if p.tenant else {}))
        try:
            out = await ctx.oql.call(op, args, deadline_ms=self.deadline_ms)
        except WorkbooksError as e:  # the pool's failures, as oql.as_http_error made them
            await self._error(send, e, p)
            return
        except Exception as e:  # noqa: BLE001 - as httperrors' handler: logged, a bare 500
            self.log.error("unhandled_exception", exc_type=type(e).__name__, exc_info=e, actor_key_id=p.key_id)
            await self._send_json(send, 500, {"error": {"code": "internal", "message": "internal error; see the server log"}}, [])
            return
        finally:
            self.limited.flush()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", ctype), (b"content-length", str(len(out)).encode()), (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": out, "more_body": False})

    async def _error(self, send, e: WorkbooksError, p: Principal) -> None:
        """The answer and the warning `httperrors` gives a WorkbooksError raised by the route."""
        status = int(getattr(e, "http_status", 500) or 500)
        if status >= 500:
            if e.code in RATE_LIMITED:
                self.limited.warning("request_failed", e.code, status=status, message=e.message, actor_key_id=p.key_id)
            else:
                self.log.warning("request_failed", code=e.code, status=status, message=e.message, actor_key_id=p.key_id)
        headers = dict(getattr(e, "headers", {}) or {})
        if e.code in RATE_LIMITED or status == 503:
            headers.setdefault("Retry-After", "1")
        err: dict = {"code": e.code, "message": e.message}
        if e.hint:
            err["hint"] = e.hint
        if e.data is not None:
            err["details"] = e.data
        await self._send_json(send, status, {"error": err},
                              [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in headers.items()])

    @staticmethod
    async def _send_json(send, status: int, data: dict, extra: list) -> None:
        body = (json.dumps(data, ensure_ascii=False) + "\n").encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            *extra, (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": body, "more_body": False})
