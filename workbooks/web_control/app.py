"""The control plane: authenticated JSON API for tenants, keys, workbooks, OQL, git, vars, domains, ops.

Nothing public is served here. Every route but /healthz, /readyz and /openapi.json needs
`Authorization: Bearer <key>`; tenant keys reach their own tenant only, admin keys may act for
a tenant named in `X-Workbooks-Tenant`, operator keys reach the ops routes and /metrics.
"""

from __future__ import annotations

import json
import os
import time
from functools import partial, wraps
from pathlib import Path
from typing import Any, Callable

import structlog
import trio
from quart import Response, g, request
from quart_trio import QuartTrio

from workbooks import accesslog
from workbooks import author_html
from workbooks.errors import BadRequest, NotFound, WorkbooksError
from workbooks.log import get_logger
from workbooks.procstats import CountResponses, PlaneStats
from workbooks.store import Principal, Store
from workbooks.store.names import validate_var_key, validate_workbook_id
from workbooks.web_control import deploy as deploy_mod
from workbooks.web_control import deploy_includes, deploy_request
from workbooks.web_control import httperrors
from workbooks.accesslog import AccessLog
from workbooks.web_control.asgi_body import BodyBeforeResponse
from workbooks.web_control.fastpath import FastOql, KeyCache, fastpath_enabled
from workbooks.web_control.httperrors import Forbidden, HttpError, bearer_principal
from workbooks.web_control.jsonbody import parse_json, require_json_type
from workbooks.web_control.oql import make_oql, render_request

MAX_BODY = int(os.environ.get("WB_MAX_BODY", str(10 * 1024 * 1024)))
KERNEL_DEADLINE_MS = int(os.environ.get("WB_DEPLOY_DEADLINE_MS", "10000"))
TENANT_HEADER = "X-Workbooks-Tenant"
OQL_ROUTES = {
    "query": ("parse_headlines", "application/json"),
    "parse": ("parse", "application/json"),
    "tangle": ("tangle_plan", "application/json"),
    "lint": ("validate", "application/json"),
    "render": ("render", "text/html; charset=utf-8"),
    "check_upgrade": ("check_upgrade", "application/json"),
}


def json_response(data: Any, status: int = 200, headers: dict | None = None) -> Response:
    resp = Response(json.dumps(data, ensure_ascii=False) + "\n", status=status, content_type="application/json")
    resp.headers["Cache-Control"] = "no-store"
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


async def read_json_object() -> dict:
    require_json_type(request.headers.get("Content-Type"))
    body = await request.get_data(cache=True)
    data = parse_json(body)
    if not isinstance(data, dict):
        raise HttpError(400, "bad_json", "the body must be a JSON object")
    try:  # "\ud800" escapes decode to lone surrogates, which no file, header or argument can carry
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise HttpError(400, "bad_json", "the JSON body contains an unpaired surrogate (not Unicode text)") from None
    return data


def field(data: dict, name: str, typ: type, required: bool = True, default: Any = None) -> Any:
    if name not in data:
        if required:
            raise HttpError(400, "missing_field", f"the JSON body needs {name!r}")
        return default
    v = data[name]
    if typ is bool:
        ok = isinstance(v, bool)
    elif typ is int:
        ok = isinstance(v, int) and not isinstance(v, bool)
    else:
        ok = isinstance(v, typ)
    if not ok:
        raise HttpError(400, "bad_field", f"{name!r} must be a {typ.__name__}")
    return v


class ControlContext:
    """What the routes share in one process: the index, the kernel client, git stores, the supervisor."""

    def __init__(self, data_dir: Path, pool_endpoint: str | None, supervisor_endpoint: str | None):
        self.data_dir = data_dir
        self.pool_endpoint = pool_endpoint
        self.supervisor_endpoint = supervisor_endpoint
        self.store: Store | None = None
        self.oql = None
        self._git: dict[str, Any] = {}
        self._tenant_locks: dict[str, trio.Lock] = {}
        # this process's request counters, in a file the plane's processes share (workbooks.procstats);
        # a response answered outside app.asgi_app's CountResponses layer calls stats.record(status, bytes, s)
        self.stats = PlaneStats.open(data_dir, "control")
        self.started = time.time()

    def gitstore(self, tenant: str):
        gs = self._git.get(tenant)
        if gs is None:
            from workbooks.gitstore import GitStore

            gs = self._git[tenant] = GitStore(self.data_dir, tenant)
        return gs

    def tenant_lock(self, tenant: str) -> trio.Lock:
        lk = self._tenant_locks.get(tenant)
        if lk is None:
            lk = self._tenant_locks[tenant] = trio.Lock()
        return lk


def create_app(data_dir: str | os.PathLike, *, pool_endpoint: str | None = None,
               supervisor_endpoint: str | None = None, announce_admin_key: bool = True) -> QuartTrio:
    app = QuartTrio("workbooks.web_control", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.config["BODY_TIMEOUT"] = 30
    app.config["JSON_SORT_KEYS"] = False
    ctx = ControlContext(Path(data_dir), pool_endpoint, supervisor_endpoint)
    keys = KeyCache()  # the OQL fast path's keys (workbooks.web_control.fastpath): revocation holds within 0.5 s
    app.extensions["workbooks"] = ctx
    log = get_logger(plane="control")
    warnings = httperrors.install(app, "control")

    # -- lifespan ---------------------------------------------------------------------------
    @app.before_serving
    async def startup() -> None:
        ctx.store = await trio.to_thread.run_sync(Store, ctx.data_dir)
        key, path = await trio.to_thread.run_sync(ctx.store.ensure_admin_key)
        if key is not None and announce_admin_key:
            # Shown once, to the terminal only (stderr), never to the JSON log.
            os.write(2, f"workbooks: admin key (shown once, also in {path}): {key}\n".encode())
            log.info("admin_key_created", path=str(path))
        from workbooks.gitstore import fsck  # git and the index agree before the first request

        for r in await trio.to_thread.run_sync(fsck.repair_all, ctx.store, ctx.data_dir):
            if r["repairs"]:
                log.warning("reconciled_at_start", tenant=r["tenant"], repairs=len(r["repairs"]), ms=r.get("ms"))
        swept = await trio.to_thread.run_sync(
            deploy_includes.sweep_stale_views, ctx.data_dir / ".workbooks" / "scratch")
        if swept:
            log.info("stale_include_views_removed", count=swept)
        ctx.oql = make_oql(ctx.pool_endpoint)
        log.info("control_ready", oql=ctx.oql.describe(), data_dir=str(ctx.data_dir))

    @app.after_serving
    async def shutdown() -> None:
        if ctx.oql is not None:
            await ctx.oql.aclose()
        if ctx.store is not None:
            ctx.store.close()
        ctx.stats.close()

    # -- auth ---------------------------------------------------------------------------------
    def principal() -> Principal:
        p = getattr(g, "principal", None)
        if p is not None:
            return p
        p = bearer_principal(ctx.store, request.headers.get("Authorization"))
        g.principal = p
        # the access line names the key by its id; every event this request logs (deploys, admin
        # changes, on threads too) is bound to the acting key's id
        accesslog.note(request.scope, key_id=p.key_id, **({"tenant": p.tenant} if p.tenant else {}))
        structlog.contextvars.bind_contextvars(actor_key_id=p.key_id)
        return p

    def current_tenant() -> str:
        p = principal()
        named = request.headers.get(TENANT_HEADER)
        if p.scope in ("tenant", "exec"):  # an exec key is a tenant key that may also start exec runs
            if named and named != p.tenant:
                raise Forbidden("a tenant key reaches its own tenant only")
            return p.tenant
        if p.scope == "admin":
            if not named:
                raise HttpError(400, "tenant_required", f"an admin key must name the tenant in {TENANT_HEADER}")
            if not ctx.store.tenant_exists(named):
                raise NotFound(f"no tenant {named[:64]!r}")
            return named
        raise Forbidden("operator keys reach the ops routes only")

    def needs(*scopes: str) -> Callable:
        def deco(fn: Callable) -> Callable:
            @wraps(fn)
            async def wrapper(*a, **kw):
                p = principal()
                if p.scope not in scopes and p.scope != "admin":
                    raise Forbidden(f"this route needs a key with scope {' or '.join(scopes)}")
                return await fn(*a, **kw)

            return wrapper

        return deco

    def tenant_route(fn: Callable) -> Callable:
        @wraps(fn)
        async def wrapper(*a, **kw):
            g.tenant = current_tenant()
            accesslog.note(request.scope, tenant=g.tenant)
            return await fn(*a, **kw)

        return wrapper

    # -- health -------------------------------------------------------------------------------
    @app.route("/healthz", methods=["GET"])
    async def healthz():
        return json_response({"ok": True, "plane": "control", "pid": os.getpid()})

    @app.route("/readyz", methods=["GET"])
    async def readyz():
        checks: dict = {}
        try:
            ctx.store.ping()
            checks["store"] = "ok"
        except Exception as e:  # noqa: BLE001 - readiness reports, never raises
            checks["store"] = f"error: {type(e).__name__}"
        try:
            with trio.fail_after(2):
                await ctx.oql.call("lint", [""], deadline_ms=1000)
            checks["oql"] = "ok"
        except Exception as e:  # noqa: BLE001
            checks["oql"] = f"error: {getattr(e, 'code', type(e).__name__)}"
        from workbooks.fsutil import disk_status

        disk = disk_status(ctx.data_dir)  # low disk: still ready (reads go on), writes answer 507
        ready = all(v == "ok" for v in checks.values())
        checks["disk"] = "ok" if disk["writable"] else "low"
        if not ready:
            return json_response({"ready": False, "writable": disk["writable"], "checks": checks, "disk": disk},
                                 503, {"Retry-After": "1"})
        if not disk["writable"]:
            return json_response({"ready": True, "writable": False, "checks": checks, "disk": disk})
        return json_response({"ready": True, "checks": checks})

    @app.route("/openapi.json", methods=["GET"])
    async def openapi():
        from workbooks.web_control.openapi import document

        return json_response(document())

    # -- tenants and keys ---------------------------------------------------------------------
    @app.route("/api/tenants", methods=["POST"])
    @needs("admin")
    async def create_tenant():
        data = await read_json_object()
        name = field(data, "name", str)
        row = await trio.to_thread.run_sync(ctx.store.create_tenant, name)
        accesslog.note(request.scope, tenant=name)
        log.info("tenant_created", tenant=name)
        return json_response(row, 201)

    @app.route("/api/tenants", methods=["GET"])
    @needs("admin")
    async def list_tenants():
        return json_response({"tenants": ctx.store.list_tenants()})

    @app.route("/api/tenants/<tenant>/keys", methods=["POST"])
    @needs("admin")
    async def create_key(tenant: str):
        data = await read_json_object()
        scope = field(data, "scope", str, required=False, default="tenant")
        if not ctx.store.tenant_exists(tenant):
            raise NotFound(f"no tenant {tenant[:64]!r}")
        key, row = await trio.to_thread.run_sync(ctx.store.create_key, scope, tenant)
        accesslog.note(request.scope, tenant=tenant)
        log.info("key_created", key_id=row["id"], scope=scope, tenant=tenant)
        return json_response({"key": key, **row}, 201)

    @app.route("/api/tenants/<tenant>/keys", methods=["GET"])
    @needs("admin")
    async def list_tenant_keys(tenant: str):
        if not ctx.store.tenant_exists(tenant):
            raise NotFound(f"no tenant {tenant[:64]!r}")
        return json_response({"keys": ctx.store.list_keys(tenant)})

    @app.route("/api/keys", methods=["GET"])
    @needs("admin")
    async def list_keys():
        return json_response({"keys": ctx.store.list_keys()})

    @app.route("/api/keys/<id>", methods=["DELETE"])
    @needs("admin")
    async def revoke_key(id: str):  # noqa: A002 - the route's name
        kid = id
        row = await trio.to_thread.run_sync(ctx.store.revoke_key, kid)
        keys.clear()  # at once in this process (the others within fastpath.KEY_TTL_S)
        log.info("key_revoked", key_id=kid)
        return json_response(row)

    # -- workbooks ----------------------------------------------------------------------------
    @app.route("/api/workbooks", methods=["GET"])
    @tenant_route
    async def list_workbooks():
        return json_response({"workbooks": ctx.store.list_workbooks(g.tenant)})

    async def prepare_source(gs, wid: str, text: str, raw_html: bool) -> dict:
        """`deploy.prepare` of a source with its SETUPFILE/INCLUDE files inlined (deploys and re-renders)."""
        parse_text, render_text, file_diags = await trio.to_thread.run_sync(
            deploy_includes.views, text, gs, ctx.data_dir / ".workbooks" / "scratch")
        return await deploy_mod.prepare(ctx.oql, wid, text, KERNEL_DEADLINE_MS, parse_text=parse_text,
                                        render_text=render_text, file_diagnostics=file_diags, raw_html=raw_html)

    @app.route("/api/workbooks/<id>", methods=["PUT"])
    @tenant_route
    async def put_workbook(id: str):  # noqa: A002 - the route's name
        wid = id
        tenant = g.tenant
        validate_workbook_id(wid)
        if deploy_request.body_kind(request.headers.get("Content-Type")) == "json":
            text, message = deploy_request.from_json(await read_json_object(), wid)
        else:
            text = deploy_mod.decode_source(await request.get_data(cache=False))
            message = deploy_request.default_message(wid)
        gs = ctx.gitstore(tenant)
        prepared = await prepare_source(gs, wid, text, author_html.enabled_for_tenant(ctx.store, tenant))
        async with ctx.tenant_lock(tenant):  # one thread per tenant waits on the repo lock, not forty
            result = await trio.to_thread.run_sync(
                partial(deploy_mod.commit_and_index, ctx.store, gs, tenant, wid, text, prepared,
                        request.headers.get("If-Match"), message=message,
                        if_none_match=request.headers.get("If-None-Match")),
            )
        if prepared["diagnostics"]:  # warnings and notes (errors were a 422 already)
            result = {**result, "diagnostics": prepared["diagnostics"]}
        headers = {"ETag": f'"{result["sha"]}"'} if result.get("sha") else {}
        return json_response(result, 200, headers)

    @app.route("/api/workbooks/<id>", methods=["GET"])
    @tenant_route
    async def get_workbook(id: str):  # noqa: A002 - the route's name
        wid = id
        validate_workbook_id(wid)
        row = ctx.store.get_workbook(g.tenant, wid)
        if row is None:
            raise NotFound(f"no workbook {wid!r}")
        html = row.pop("fragment")
        row.pop("etag", None)
        return json_response({**row, "html": html}, headers={"ETag": f'"{row["sha"]}"'})

    @app.route("/api/workbooks/<id>", methods=["DELETE"])
    @tenant_route
    async def delete_workbook(id: str):  # noqa: A002 - the route's name
        wid = id
        tenant = g.tenant
        validate_workbook_id(wid)
        gs = ctx.gitstore(tenant)
        async with ctx.tenant_lock(tenant):
            result = await trio.to_thread.run_sync(
                partial(deploy_mod.delete, ctx.store, gs, tenant, wid, request.headers.get("If-Match"),
                        if_none_match=request.headers.get("If-None-Match"))
            )
        return json_response(result)

    # -- OQL over HTTP ------------------------------------------------------------------------
    async def oql_route():
        principal()
        op = request.path.rsplit("/", 1)[-1]
        kernel_op, ctype = OQL_ROUTES[op]
        if op == "check_upgrade":
            data = await read_json_object()
            args = [field(data, "old", str), field(data, "new", str)]
        else:
            args = [deploy_mod.decode_source(await request.get_data(cache=False))]
        if op == "render":
            kernel_op, args, ctype = render_request(args[0], request.args.get("options"))
        out = await ctx.oql.call(kernel_op, args, deadline_ms=KERNEL_DEADLINE_MS)
        resp = Response(out, status=200, content_type=ctype)
        resp.headers["Cache-Control"] = "no-store"
        return resp

    for _name in OQL_ROUTES:
        app.add_url_rule(f"/api/oql/{_name}", f"oql_{_name}", oql_route, methods=["POST"])

    # -- git ----------------------------------------------------------------------------------
    def _limit(default: int = 30, most: int = 1000) -> int:
        raw = request.args.get("limit")
        if raw is None:
            return default
        if not raw.isdigit() or not 1 <= int(raw) <= most:
            raise HttpError(400, "bad_limit", f"limit must be an integer from 1 to {most}")
        return int(raw)

    @app.route("/api/git/log", methods=["GET"])
    @tenant_route
    async def git_log():
        limit = _limit()
        tenant = g.tenant
        rows = await trio.to_thread.run_sync(lambda: ctx.gitstore(tenant).log(limit))
        return json_response({"commits": rows})

    @app.route("/api/git/diff", methods=["GET"])
    @tenant_route
    async def git_diff():
        tenant = g.tenant
        gs = ctx.gitstore(tenant)

        def run() -> dict:
            return {"sha": gs.head(), "diff": gs.diff_last()}

        return json_response(await trio.to_thread.run_sync(run))

    @app.route("/rcp/changes", methods=["GET"])
    @tenant_route
    async def rcp_changes():
        tenant = g.tenant
        rows = await trio.to_thread.run_sync(lambda: ctx.gitstore(tenant).log(30))
        return json_response({"changes": rows, "agent": agent_status(tenant)})

    # -- variables and secrets ----------------------------------------------------------------
    @app.route("/api/vars", methods=["GET"])
    @tenant_route
    async def list_vars():
        return json_response({"vars": ctx.store.list_vars(g.tenant)})

    @app.route("/api/vars/<key>", methods=["GET"])
    @tenant_route
    async def get_var(key: str):
        validate_var_key(key)
        row = ctx.store.get_var(g.tenant, key)
        if row is None:
            raise NotFound(f"no variable {key!r}")
        return json_response(row)

    @app.route("/api/vars/<key>", methods=["PUT"])
    @tenant_route
    async def put_var(key: str):
        tenant = g.tenant
        validate_var_key(key)
        data = await read_json_object()
        value = field(data, "value", str)
        secret = field(data, "secret", bool, required=False, default=False)
        if len(value.encode("utf-8", "surrogatepass")) > 64 * 1024:
            raise HttpError(413, "payload_too_large", "a variable holds at most 64 KiB")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("the value is not valid Unicode text") from None
        row = await trio.to_thread.run_sync(ctx.store.put_var, tenant, key, value, secret)
        await trio.to_thread.run_sync(republish_var, tenant, key)
        if key == author_html.VAR:
            await rerender_tenant(tenant)
        log.info("var_set", tenant=tenant, key=key, secret=secret)  # never the value
        return json_response(row)

    @app.route("/api/vars/<key>", methods=["DELETE"])
    @tenant_route
    async def delete_var(key: str):
        tenant = g.tenant
        validate_var_key(key)
        if not await trio.to_thread.run_sync(ctx.store.delete_var, tenant, key):
            raise NotFound(f"no variable {key!r}")
        await trio.to_thread.run_sync(republish_var, tenant, key)
        if key == author_html.VAR:
            await rerender_tenant(tenant)
        log.info("var_deleted", tenant=tenant, key=key)
        return json_response({"key": key, "deleted": True})

    async def rerender_tenant(tenant: str) -> None:
        """The tenant's author-HTML switch changed: render every published workbook again from its
        source, so the switch holds for pages already out, not only for the next deploy."""
        raw = author_html.enabled_for_tenant(ctx.store, tenant)
        gs = ctx.gitstore(tenant)
        done = 0
        for row in await trio.to_thread.run_sync(ctx.store.list_workbooks, tenant):
            wid = row["id"]
            cur = await trio.to_thread.run_sync(ctx.store.get_workbook, tenant, wid)
            if cur is None:
                continue
            text = cur["source"]
            try:
                prepared = await prepare_source(gs, wid, text, raw)
                async with ctx.tenant_lock(tenant):
                    if await trio.to_thread.run_sync(deploy_mod.rerender_index, ctx.store, gs, tenant, wid,
                                                     text, prepared):
                        done += 1
            except (HttpError, WorkbooksError) as e:  # e.g. a setup file it includes changed: it keeps its page
                log.warning("rerender_failed", tenant=tenant, workbook=wid, code=getattr(e, "code", None))
        log.info("rerendered", tenant=tenant, reason=author_html.VAR, raw_html=raw, workbooks=done)

    def republish_var(tenant: str, key: str) -> None:
        """Pages that show `{{var:KEY}}` are re-published from their stored fragment (no re-render)."""
        plain = ctx.store.plain_vars(tenant)
        for wid, fragment, meta in ctx.store.fragments_using(tenant, "{{var:" + key + "}}"):
            ctx.store.republish(tenant, wid, deploy_mod.build_page(fragment, meta, wid, plain))

    # -- domains (claims and proof of control: workbooks.web_control.domains) -----------------
    from workbooks.web_control import domains as domain_routes

    domain_routes.register(app, ctx, tenant_route, log)

    # -- agent runs (executed by the agents process: workbooks.web_control.agent_routes) -------
    from workbooks.web_control import agent_routes

    agent_routes.register(app, ctx, tenant_route, principal, log)

    # -- telemetry (the index the telemetry child writes: workbooks.web_control.telemetry_routes) --
    from workbooks.web_control import telemetry_routes

    telemetry_routes.register(app, ctx, tenant_route, log)

    # -- ops ----------------------------------------------------------------------------------
    async def supervisor(op: str, **args) -> Any:
        if not ctx.supervisor_endpoint:
            raise HttpError(503, "no_supervisor", "this control plane runs without a supervisor",
                            headers={"Retry-After": "5"})
        from workbooks.supervisor import ControlClient

        def run() -> Any:
            client = ControlClient(ctx.supervisor_endpoint)
            try:
                return client.request(op, **args)
            finally:
                close = getattr(client, "close", None)
                if close:
                    close()

        try:
            reply = await trio.to_thread.run_sync(run)
        except WorkbooksError as e:
            raise HttpError(e.http_status if e.http_status < 500 else 503, e.code, e.message, hint=e.hint or None,
                            headers={"Retry-After": "1"} if e.http_status >= 500 else None) from None
        except Exception as e:  # noqa: BLE001 - an unreachable supervisor is a 503, not a crash
            raise HttpError(503, "supervisor_unreachable", f"supervisor: {type(e).__name__}: {e}",
                            headers={"Retry-After": "1"}) from None
        if isinstance(reply, dict) and "ok" in reply:
            if not reply["ok"]:
                err = reply.get("error") or {}
                code = err.get("code", "supervisor_error")
                status = 404 if code in ("not_found", "unknown_child") else 400
                raise HttpError(status, code, err.get("message", "supervisor refused"))
            return reply.get("data")
        return reply

    @app.route("/api/ops/workers", methods=["GET"])
    @needs("operator")
    async def ops_workers():
        data = await supervisor("status")
        return json_response(data if isinstance(data, dict) else {"children": data})

    @app.route("/api/ops/workers/<id>/restart", methods=["POST"])
    @needs("operator")
    async def ops_restart(id: str):  # noqa: A002 - the route's name
        cid = id
        if len(cid) > 100:
            raise BadRequest("child id too long")
        result = await supervisor("restart", id=cid)
        log.info("ops_restart", child=cid)
        return json_response({"restarted": cid, "result": result})

    @app.route("/api/ops/scale", methods=["POST"])
    @needs("operator")
    async def ops_scale():
        data = await read_json_object()
        group = field(data, "group", str)
        n = field(data, "n", int)
        force = field(data, "force", bool, required=False, default=False)
        if n < 0:
            raise HttpError(400, "bad_field", "'n' must be 0 or more")
        # the supervisor's `scale` checks the machine's capacity and that a worker keeps serving
        # (409 over_capacity / no_serving_worker unless force), the same check as `wbx ops scale`
        # `force` only when asked: a plain supervisor (python -m workbooks.supervisor) takes no such argument
        result = await supervisor("scale", group=group, n=n, **({"force": True} if force else {}))
        log.info("ops_scale", group=group[:64], n=n)
        return json_response({"group": group, "n": n, "result": result})

    @app.route("/metrics", methods=["GET"])
    @needs("operator")
    async def metrics():
        from workbooks.web_control.metrics import plane_snapshot, prometheus_text

        status = joined = None
        if ctx.supervisor_endpoint:
            try:  # the supervisor's own figures joined with the pool broker's, when it offers them
                joined = await supervisor("metrics")
            except HttpError:
                joined = None
            if not (isinstance(joined, dict) and isinstance(joined.get("text"), str)):
                joined = None
                try:
                    status = await supervisor("status")
                except HttpError:
                    status = None
        snap = await trio.to_thread.run_sync(plane_snapshot, ctx.data_dir)
        if joined is not None:
            body = joined["text"].rstrip("\n") + "\n" + prometheus_text(None, snap, ctx.started, own_only=True)
        else:
            body = prometheus_text(status, snap, ctx.started)
        from workbooks.fsutil import disk_metrics

        body += disk_metrics(ctx.data_dir)
        from workbooks.web_control.metrics import run_metrics

        body += await trio.to_thread.run_sync(run_metrics, ctx.data_dir)
        return Response(body, 200, content_type="text/plain; version=0.0.4; charset=utf-8")

    def agent_status(tenant: str) -> dict:
        from workbooks.agent.runner import read_keeper_status

        return read_keeper_status(ctx.data_dir, tenant)

    # -- trust routes (T's functions, when present) -------------------------------------------
    from workbooks.web_control import trust_routes

    trust_routes.install(app, ctx, principal, current_tenant, json_response, read_json_object)
    # every response counted (status, bytes, duration) for /metrics, whatever layer answers it
    # POST /api/oql/{render,query,tangle,lint} answered in front of Quart, same contract (fastpath.py)
    if fastpath_enabled():
        app.asgi_app = FastOql(app.asgi_app, ctx, keys, KERNEL_DEADLINE_MS, warnings)
    app.asgi_app = AccessLog(CountResponses(BodyBeforeResponse(app.asgi_app, MAX_BODY), ctx.stats), "control")
    return app
