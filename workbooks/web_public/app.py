"""The public plane: anonymous, GET and HEAD only, Host → workbook, pages from memory.

A quart-trio app. Every host serves one workbook (`site.PublicSite.resolve`): its page at `/`,
and its own `/_changes`, `/feed.atom`, `/sitemap.xml`; another workbook's path on it is a 404.
The hot path (the page at `/`) is answered by a small ASGI layer in front of Quart from bytes
built at deploy time, so serving a page costs a dict lookup and a header check; everything else
(feeds, changes, errors) goes through Quart routes. No route writes, and nothing here refers to
the control plane. `/metrics` (an operator or admin key, as on the control plane) gives the
plane's figures (every process, see workbooks.procstats).
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

import trio
from quart import Response, request
from quart_trio import QuartTrio

from workbooks import accesslog
from workbooks.errors import WorkbooksError
from workbooks.log import get_logger
from workbooks.store import Store
from workbooks.web_control import httperrors
from workbooks.web_control.asgi_body import BodyBeforeResponse
from workbooks.web_control.httperrors import Forbidden, HttpError, bearer_principal, error_response
from workbooks.web_public.metrics import CountResponses, PublicMetrics
from workbooks.web_public.site import BadHost, Page, PublicSite, UnknownHost

ALLOWED = "GET, HEAD"
JSON_ERR_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]


def _err_body(code: str, message: str) -> bytes:
    return (json.dumps({"error": {"code": code, "message": message}}) + "\n").encode()


def accepts_gzip(value: bytes) -> bool:
    """True when Accept-Encoding allows gzip (q > 0), honouring `*` and `gzip;q=0`."""
    if not value:
        return False
    gz = star = None
    for part in value.decode("latin-1").lower().split(","):
        name, _, params = part.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            k, _, v = p.strip().partition("=")
            if k == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        name = name.strip()
        if name in ("gzip", "x-gzip"):
            gz = q
        elif name == "*":
            star = q
    if gz is not None:
        return gz > 0
    return bool(star and star > 0)


def etag_matches(header: bytes, etag: bytes) -> bool:
    """If-None-Match: `*` or any listed tag (weak comparison) equals ours."""
    h = header.strip()
    if h == b"*":
        return True
    want = etag[2:] if etag.startswith(b"W/") else etag
    for part in h.split(b","):
        t = part.strip()
        if t.startswith(b"W/"):
            t = t[2:]
        if t == want:
            return True
    return False


class FastPages:
    """ASGI layer: serve published pages without entering Quart; pass everything else through."""

    def __init__(self, inner, app_state: dict):
        self.inner = inner
        self.state = app_state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        site: PublicSite | None = self.state.get("site")
        path = scope["path"]
        method = scope["method"]
        if site is None or method not in ("GET", "HEAD") or path != "/":
            return await self.inner(scope, receive, send)
        host = accept = inm = ims = None
        for k, v in scope["headers"]:
            if k == b"host":
                host = v
            elif k == b"accept-encoding":
                accept = v
            elif k == b"if-none-match":
                inm = v
            elif k == b"if-modified-since":
                ims = v
            elif k == b"content-length" or k == b"transfer-encoding":
                return await self.inner(scope, receive, send)  # a body: the guarded path reads it
        try:
            site.fresh()
            tenant, wid = site.resolve(host.decode("latin-1") if host is not None else None)
            accesslog.note(scope, tenant=tenant, workbook=wid)
            page = site.page(tenant, wid)
        except (BadHost, UnknownHost):
            return await self.inner(scope, receive, send)  # Quart answers with the JSON error
        except Exception as e:  # noqa: BLE001 - e.g. the index is busy: Quart's path answers (JSON)
            get_logger(plane="public").warning("fast_path_failed", exc_type=type(e).__name__, error=str(e)[:300])
            return await self.inner(scope, receive, send)
        if page is None:
            return await self.inner(scope, receive, send)
        await send_page(send, page, method == "HEAD", accept, inm, ims)


def not_modified_since(ims: bytes, updated_at: float) -> bool:
    """If-Modified-Since (only consulted without If-None-Match): whole seconds, as HTTP dates are."""
    from email.utils import parsedate_to_datetime

    try:
        since = parsedate_to_datetime(ims.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return False
    return int(updated_at) <= since


async def send_page(send, page: Page, head_only: bool, accept: bytes | None, inm: bytes | None,
                    ims: bytes | None = None) -> None:
    gz = accept is not None and accepts_gzip(accept)
    etag = page.etag_gz if gz else page.etag
    body = page.body_gz if gz else page.body
    headers = list(page.headers)
    headers.append((b"etag", etag))
    fresh = etag_matches(inm, etag) if inm is not None else (ims is not None and not_modified_since(ims, page.updated_at))
    if fresh:
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    if gz:
        headers.append((b"content-encoding", b"gzip"))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head_only else body})


def create_app(data_dir: str | os.PathLike) -> QuartTrio:
    app = QuartTrio("workbooks.web_public", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    state: dict = {}
    app.extensions["workbooks"] = state
    metrics = PublicMetrics(data_dir)  # this process's counters, in a file the plane's processes share
    data_dir = Path(data_dir)
    log = get_logger(plane="public")
    httperrors.install(app, "public")

    @app.before_serving
    async def startup() -> None:
        store = await trio.to_thread.run_sync(Store, data_dir)
        state["store"] = store
        state["site"] = PublicSite(store)
        log.info("public_ready", data_dir=str(data_dir))

    @app.after_serving
    async def shutdown() -> None:
        store = state.pop("store", None)
        state.pop("site", None)
        if store is not None:
            store.close()
        metrics.close()

    @app.before_request
    async def only_reads():
        if request.method not in ("GET", "HEAD"):
            return error_response(405, "method_not_allowed", "the public plane is read-only (GET and HEAD)",
                                  headers={"Allow": ALLOWED})
        return None

    def site() -> PublicSite:
        s = state["site"]
        s.fresh()
        return s

    def target() -> tuple[str, str, Page]:
        """(tenant, workbook, page) published at this request's Host, else the JSON error."""
        s = site()
        try:
            tenant, wid = s.resolve(request.headers.get("Host"))
        except BadHost:
            raise HttpError(400, "bad_host", "the Host header is not a valid host name") from None
        except UnknownHost:
            raise HttpError(404, "unknown_host", "no workbook is published at this host") from None
        accesslog.note(request.scope, tenant=tenant, workbook=wid)
        page = s.page(tenant, wid)
        if page is None:
            raise HttpError(404, "unknown_host", "no workbook is published at this host")
        return tenant, wid, page

    def base_url() -> str:
        host = request.headers.get("Host", "")
        # resolve() accepted this Host, so it is a plain DNS name with an optional port
        return f"{request.scheme}://{host.lower()}"

    @app.route("/healthz", methods=["GET"])
    async def healthz():
        return Response(json.dumps({"ok": True, "plane": "public", "pid": os.getpid()}) + "\n",
                        content_type="application/json", headers={"Cache-Control": "no-store"})

    @app.route("/readyz", methods=["GET"])
    async def readyz():
        try:
            state["store"].ping()
        except Exception as e:  # noqa: BLE001
            return error_response(503, "not_ready", f"index unavailable: {type(e).__name__}",
                                  headers={"Retry-After": "1"})
        from workbooks.fsutil import disk_status

        disk = disk_status(data_dir)  # a full disk stops writes, not this plane's reads: still ready
        body = {"ready": True, "writable": disk["writable"], "checks": {"disk": "ok" if disk["writable"] else "low"},
                "disk": disk}
        return Response(json.dumps(body) + "\n", content_type="application/json",
                        headers={"Cache-Control": "no-store"})

    @app.route("/metrics", methods=["GET"])
    async def metrics_route():
        from workbooks.web_public.metrics import prometheus_text

        p = bearer_principal(state["store"], request.headers.get("Authorization"))
        if p.scope not in ("operator", "admin"):
            raise Forbidden("this route needs a key with scope operator")
        text = await trio.to_thread.run_sync(prometheus_text, metrics, state["site"].cache)
        return Response(text, 200,
                        content_type="text/plain; version=0.0.4; charset=utf-8",
                        headers={"Cache-Control": "no-store"})

    def page_response(page: Page) -> Response:
        """The slow path's page (a request the fast path passed on): the same bytes and headers."""
        h = request.headers
        gz = accepts_gzip(h.get("Accept-Encoding", "").encode("latin-1"))
        etag = page.etag_gz if gz else page.etag
        inm, ims = h.get("If-None-Match"), h.get("If-Modified-Since")
        fresh = etag_matches(inm.encode("latin-1"), etag) if inm is not None else \
            (ims is not None and not_modified_since(ims.encode("latin-1"), page.updated_at))
        resp = Response(b"" if fresh else (page.body_gz if gz else page.body), status=304 if fresh else 200)
        for k, v in page.headers:
            resp.headers[k.decode()] = v.decode("latin-1")
        resp.headers["ETag"] = etag.decode()
        if gz and not fresh:
            resp.headers["Content-Encoding"] = "gzip"
        return resp

    @app.route("/", methods=["GET"])
    async def index():
        _, _, page = target()
        return page_response(page)

    @app.route("/<name>", methods=["GET"])
    async def own_name_or_404(name: str):
        """`/<wid>`, `/<wid>.html` and `/index.html` on the workbook's own host lead to `/`; any
        other workbook's name is not served here (each workbook has its own host)."""
        _, wid, _ = target()
        if name in (wid, f"{wid}.html", "index.html"):
            qs = request.query_string.decode("latin-1")
            resp = Response("", status=301)
            resp.headers["Location"] = "/" + (("?" + qs) if qs else "")
            resp.headers["Cache-Control"] = CACHE_REDIRECT
            return resp
        raise HttpError(404, "not_found", "no such page")

    CACHE_REDIRECT = "public, max-age=3600"

    async def changes_for(tenant: str, wid: str) -> list:
        """This workbook's own commits (never the rest of the tenant's)."""
        from workbooks.gitstore import GitStore

        s = site()
        return await trio.to_thread.run_sync(s.changes, tenant, wid, lambda t: GitStore(data_dir, t))

    async def keeper_status(tenant: str) -> dict:
        from workbooks.agent.runner import read_keeper_status

        return await trio.to_thread.run_sync(read_keeper_status, data_dir, tenant)

    @app.route("/_activity", methods=["GET"])
    async def activity():
        """The keeper at work on this host's tenant: its status and the last steps of its run."""
        from workbooks.agent import runs as R
        from workbooks.agent.keeper import activity_tail

        tenant, wid, _ = target()
        agent = await keeper_status(tenant)
        steps: list = []
        thought = None
        rid = agent.get("run_id")
        if rid and R.RUN_ID_RE.fullmatch(str(rid)):
            folder = R.run_path(data_dir, tenant, rid)
            steps = await trio.to_thread.run_sync(activity_tail, folder / R.STEPS_FILE)
            st = await trio.to_thread.run_sync(R.read_json, folder / R.STATUS_FILE) or {}
            if st.get("status") not in R.ACTIVE and isinstance(st.get("result"), str):
                thought = st["result"][:500]
        workflows = await trio.to_thread.run_sync(_last_workflow_runs, data_dir, tenant, wid)
        body = {"agent": agent, "steps": steps, "thought": thought, "workflows": workflows}
        return Response(json.dumps(body, ensure_ascii=False) + "\n", content_type="application/json",
                        headers={"Cache-Control": "no-store"})

    @app.route("/_changes", methods=["GET"])
    async def changes():
        tenant, wid, _ = target()
        rows = await changes_for(tenant, wid)
        body = {"changes": rows[:30], "agent": await keeper_status(tenant)}
        return Response(json.dumps(body, ensure_ascii=False) + "\n", content_type="application/json",
                        headers={"Cache-Control": "public, max-age=10"})

    @app.route("/feed.atom", methods=["GET"])
    async def feed():
        tenant, wid, page = target()
        rows = await changes_for(tenant, wid)
        title = page.title
        base = base_url()
        updated = rows[0]["ts"] if rows else page.updated_at
        out = [
            '<?xml version="1.0" encoding="utf-8"?>',
            '<feed xmlns="http://www.w3.org/2005/Atom">',
            f"<title>{xml_escape(title)}: changes</title>",
            f'<link rel="self" href="{xml_escape(base)}/feed.atom"/>',
            f'<link rel="alternate" type="text/html" href="{xml_escape(base)}/"/>',
            f"<id>{xml_escape(base)}/feed.atom</id>",
            f"<updated>{_iso(updated)}</updated>",
        ]
        for r in rows[:30]:
            out += [
                "<entry>",
                f"<title>{xml_escape(r['msg'])}</title>",
                f"<id>urn:workbooks:commit:{xml_escape(r['sha'])}</id>",
                f"<updated>{_iso(r['ts'])}</updated>",
                f"<author><name>{xml_escape(r['author'])}</name></author>",
                f'<link href="{xml_escape(base)}/"/>',
                f"<summary>{xml_escape(r['msg'])} ({xml_escape(r['sha'][:12])})</summary>",
                "</entry>",
            ]
        out.append("</feed>")
        return Response("\n".join(out) + "\n", content_type="application/atom+xml; charset=utf-8",
                        headers={"Cache-Control": "public, max-age=60"})

    @app.route("/sitemap.xml", methods=["GET"])
    async def sitemap():
        _, _, page = target()
        out = ['<?xml version="1.0" encoding="utf-8"?>',
               '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">',
               f"<url><loc>{xml_escape(base_url())}/</loc><lastmod>{_iso(page.updated_at)}</lastmod></url>",
               "</urlset>"]
        return Response("\n".join(out) + "\n", content_type="application/xml; charset=utf-8",
                        headers={"Cache-Control": "public, max-age=60"})

    @app.route("/content/<path:rest>", methods=["GET"])
    @app.route("/blog/<path:rest>", methods=["GET"])
    async def published_file(rest: str):
        """The tenant's live site: what its last agent commit published from content/** and blog/**
        (workbooks.mirror.hand.publish_site), on any host of the tenant. Regular files only; the
        folder is resolved and confined, symlinks are never followed."""
        tenant, _, _ = target()
        top = request.path.split("/", 2)[1]
        found = await trio.to_thread.run_sync(_published, data_dir, tenant, top, rest)
        if found is None:
            raise HttpError(404, "not_found", "no such published file")
        body, ctype = found
        return Response(body, content_type=ctype, headers={"Cache-Control": "public, max-age=60",
                                                           "X-Content-Type-Options": "nosniff"})

    @app.route("/favicon.ico", methods=["GET"])
    async def favicon():
        target()
        return Response(FAVICON, content_type="image/png", headers={"Cache-Control": "public, max-age=86400"})

    @app.route("/robots.txt", methods=["GET"])
    async def robots():
        target()
        body = f"User-agent: *\nAllow: /\nSitemap: {base_url()}/sitemap.xml\n"
        return Response(body, content_type="text/plain; charset=utf-8", headers={"Cache-Control": "public, max-age=3600"})

    # FastPages first: a cached page never enters Quart (or the body guard, which it does not need)
    app.asgi_app = FastPages(BodyBeforeResponse(app.asgi_app, 64 * 1024), state)
    app.asgi_app = CountResponses(app.asgi_app, metrics)  # statuses, bytes, durations for /metrics, fast path included
    from workbooks.accesslog import AccessLog  # one `access` log line per request, outermost
    app.asgi_app = AccessLog(app.asgi_app, "public")
    return app


def _last_workflow_runs(data_dir: Path, tenant: str, wid: str, scan: int = 200) -> list[dict]:
    """The last finished run of each of this workbook's workflows (API or schedule): what the page's
    activity shows. Newest `scan` run folders only; exports cut to 500 chars (secrets were redacted
    when the run was recorded)."""
    from workbooks.agent import runs as R

    try:
        root = R.tenant_root(data_dir, tenant)
        names = [n for n in os.listdir(root) if n.startswith("wf-") and R.ANY_RUN_RE.fullmatch(n)]
    except (OSError, ValueError, WorkbooksError):
        return []
    names.sort(key=lambda n: int(n[3:]), reverse=True)
    seen: dict[str, dict] = {}
    for name in names[:scan]:
        req = R.read_json(root / name / R.REQUEST_FILE) or {}
        if req.get("workbook") != wid or req.get("kind") != "workflow":
            continue
        world = str(req.get("world") or "")
        if world in seen:
            continue
        st = R.read_json(root / name / R.STATUS_FILE) or {}
        if st.get("status") in R.ACTIVE:
            continue
        rec = R.read_json(root / name / "run.json") or {}
        exports = {k: (v[:500] if isinstance(v, str) else v) for k, v in (rec.get("exports") or {}).items()}
        seen[world] = {"workflow": world, "run": name, "status": st.get("status"), "trigger": req.get("trigger"),
                       "ended_at": st.get("ended_at"), "exports": exports}
    return list(seen.values())


PUBLISHED_MAX = 16 * 1024 * 1024
TEXT_TYPES = {".org": "text/plain; charset=utf-8", ".txt": "text/plain; charset=utf-8",
              ".md": "text/plain; charset=utf-8", ".html": "text/html; charset=utf-8",
              ".css": "text/css; charset=utf-8", ".json": "application/json", ".svg": "image/svg+xml",
              ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
              ".webp": "image/webp", ".pdf": "application/pdf", ".xml": "application/xml"}


def _published(data_dir: Path, tenant: str, top: str, rest: str) -> tuple[bytes, str] | None:
    """(bytes, content type) of `<site>/<top>/<rest>` when it is a regular file inside the site."""
    from workbooks.mirror.hand import site_dir

    parts = rest.split("/")
    if any(p in ("", ".", "..") or "\x00" in p for p in parts):
        return None
    site = site_dir(data_dir, tenant)
    path = site / top / rest
    try:
        real = path.resolve(strict=True)
        real.relative_to(site.resolve(strict=True) / top)
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (OSError, ValueError, RuntimeError):
        return None
    try:
        st = os.fstat(fd)
        import stat as _stat

        if not _stat.S_ISREG(st.st_mode) or st.st_size > PUBLISHED_MAX:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            body = f.read()
    finally:
        os.close(fd)
    ext = os.path.splitext(rest)[1].lower()
    return body, TEXT_TYPES.get(ext, "application/octet-stream")


def _favicon() -> bytes:
    """A 16x16 PNG (a dark square with a light page): browsers ask for /favicon.ico on every site."""
    import struct
    import zlib

    rows = []
    for y in range(16):
        row = bytearray([0])
        for x in range(16):
            page = 4 <= x <= 11 and 3 <= y <= 12
            row += bytes((245, 245, 240, 255)) if page else bytes((40, 44, 52, 255))
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")


FAVICON = _favicon()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(float(ts), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
