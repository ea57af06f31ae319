"""Agent runs on the control plane: start, read, cancel, stream; defined agents; the keeper's view.

The control plane never runs an agent: it asks the `agents` process (actor `agents`, see
workbooks.agent.runner) to start or cancel one, and answers reads from the run folder on disk, so
`GET /api/run/:id` works while the runner restarts. The stream (`GET /api/run/:id/stream`, a
WebSocket, or Server-Sent Events for plain HTTP clients such as curl) sends the original's frames:
`subscribed`, then `step` for every step so far and each new one, `delta` (model text as it is
generated), and a final `done` (`error` first when the run failed). Every route is tenant-scoped;
`exec` (runs that write to the tenant's site) needs a key of scope `exec` (or admin).
"""

from __future__ import annotations

import json
import os

import structlog
import trio
import zmq
from quart import Response, g, request, websocket

from workbooks.agent import runs as R
from workbooks.errors import WorkbooksError
from workbooks.web_control.httperrors import HttpError, bearer_principal

log = structlog.get_logger()

STATUS_FOR_CODE = {
    "too_many_runs": 429, "llm_not_configured": 503, "not_found": 404, "bad_request": 400,
    "invalid_tenant": 400, "usage": 400, "conflict": 409, "timeout": 503, "unreachable": 503,
    "actor_stopped": 503, "overloaded": 503,
}
EXEC_SCOPES = ("exec", "admin")
STREAM_POLL_S = 0.5
KEEPALIVE_S = 10.0


def register(app, ctx, tenant_route, principal, log_) -> None:
    from workbooks.actors.remote import request_sync
    from workbooks.agent.runner import agents_endpoint, events_endpoint, normalize_request, topic
    from workbooks.web_control.app import field, json_response, read_json_object

    def endpoint_path() -> str:
        return agents_endpoint(ctx.data_dir)[len("ipc://"):]

    async def agents(op: str, timeout: float = 10.0, **args):
        if not os.path.exists(endpoint_path()):
            raise HttpError(503, "agents_unavailable", "the agents process is not running",
                            hint="agent runs need `wbx serve` (it supervises the agents process)",
                            headers={"Retry-After": "2"})
        ep = agents_endpoint(ctx.data_dir)
        try:
            return await trio.to_thread.run_sync(lambda: request_sync(ep, op, args, to="agents", timeout=timeout))
        except WorkbooksError as e:
            status = STATUS_FOR_CODE.get(e.code, 502)
            headers = {"Retry-After": "5" if status == 429 else "2"} if status in (429, 503) else None
            raise HttpError(status, e.code, e.message, hint=e.hint or None, headers=headers) from None

    def exec_allowed() -> bool:
        return principal().scope in EXEC_SCOPES

    def accepted(reply: dict) -> Response:
        return json_response(reply, status=202, headers={"Location": f"/api/run/{reply['id']}"})

    @app.route("/api/run", methods=["POST"])
    @tenant_route
    async def start_run():
        data = await read_json_object()
        unknown = set(data) - {"task", "system", "model", "max_steps", "exec"}
        if unknown:
            raise HttpError(400, "unknown_field", f"unknown field {sorted(unknown)[0]!r}",
                            hint="POST /api/run takes task, system, model, max_steps, exec")
        args = {"task": field(data, "task", str)}
        for name, typ in (("system", str), ("model", str), ("max_steps", int), ("exec", bool)):
            if name in data and data[name] is not None:
                args[name] = field(data, name, typ)
        normalize_request(args)  # a bad request is a 400 here, whether or not the agents process is up
        if args.get("exec") and not exec_allowed():
            raise HttpError(403, "exec_not_allowed", "exec runs write to the tenant's site and need a key of scope exec",
                            hint="create one with POST /api/tenants/<tenant>/keys {\"scope\": \"exec\"} (admin)")
        reply = await agents("start", tenant=g.tenant, **args)
        return accepted(reply)

    @app.route("/api/runs", methods=["GET"])
    @tenant_route
    async def list_runs():
        try:
            limit = max(1, min(500, int(request.args.get("limit", "50"))))
        except ValueError:
            raise HttpError(400, "bad_limit", "limit must be an integer") from None
        rows = await trio.to_thread.run_sync(R.list_runs, ctx.data_dir, g.tenant, limit)
        return json_response({"runs": rows})

    @app.route("/api/run/<id>", methods=["GET"])
    @tenant_route
    async def get_run(id: str):
        view = await trio.to_thread.run_sync(R.run_view, ctx.data_dir, g.tenant, id)
        return json_response(view)

    @app.route("/api/run/<id>", methods=["DELETE"])
    @tenant_route
    async def cancel_run(id: str):
        R.validate_run_id(id)
        reply = await agents("cancel", tenant=g.tenant, id=id)
        return json_response(reply)

    @app.route("/api/agents/list", methods=["GET"])
    @tenant_route
    async def list_agents():
        from workbooks.agent.definitions import list_agents as defined

        return json_response({"agents": await defined(ctx.data_dir, g.tenant, ctx.oql)})

    @app.route("/api/agent/run", methods=["POST"])
    @tenant_route
    async def run_agent():
        data = await read_json_object()
        slug = field(data, "agent_slug", str)
        prompt = field(data, "prompt", str)
        exec_ = field(data, "exec", bool, required=False, default=False)
        if exec_ and not exec_allowed():
            raise HttpError(403, "exec_not_allowed", "exec runs write to the tenant's site and need a key of scope exec")
        args = {"agent_slug": slug, "prompt": prompt, "exec": exec_}
        if data.get("max_steps") is not None:
            args["max_steps"] = field(data, "max_steps", int)
        reply = await agents("start_agent", timeout=30.0, tenant=g.tenant, **args)
        return accepted(reply)

    from workbooks.web_control import workflow_routes

    workflow_routes.register(app, ctx, tenant_route, agents)

    # -- the stream ---------------------------------------------------------------------------
    async def frames(tenant: str, run_id: str):
        """The run's frames as dicts: subscribed, past steps, then live ones, ending with done."""
        path = R.run_path(ctx.data_dir, tenant, run_id)
        if not path.is_dir():
            yield {"type": "error", "error": "no such run"}
            return
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, topic(tenant, run_id))
        sub.connect(events_endpoint(ctx.data_dir))
        try:
            yield {"type": "subscribed", "id": run_id}
            last = 0
            for rec in await trio.to_thread.run_sync(R.read_steps, path):
                last = max(last, int(rec.get("step") or 0))
                yield step_frame(rec)
            while True:
                for raw in await _recv(sub, STREAM_POLL_S):
                    try:
                        frame = json.loads(raw[-1])
                    except ValueError:
                        continue
                    if frame.get("type") == "step":
                        n = int(frame.get("step") or 0)
                        if n and n <= last:
                            continue
                        last = max(last, n)
                    yield frame
                    if frame.get("type") == "done":
                        return
                st = await trio.to_thread.run_sync(R.read_json, path / R.STATUS_FILE)
                if st and st.get("status") in R.FINISHED:
                    for rec in await trio.to_thread.run_sync(R.read_steps, path):
                        if int(rec.get("step") or 0) > last:
                            last = int(rec.get("step") or 0)
                            yield step_frame(rec)
                    if st.get("status") == "error":
                        yield {"type": "error", "error": st.get("error") or st.get("result")}
                    yield {"type": "done", "result": st.get("result"), "status": st.get("status")}
                    return
                yield None  # nothing new: lets the transport send a keep-alive
        finally:
            sub.close(0)

    def step_frame(rec: dict) -> dict:
        return {"type": "step", "step": rec.get("step"), "tool": rec.get("tool"),
                "output": str(rec.get("output") or "")[:500], "exit_code": rec.get("exit_code")}

    @app.route("/api/run/<id>/stream", methods=["GET"])
    @tenant_route
    async def stream_sse(id: str):
        R.validate_run_id(id)
        tenant = g.tenant

        async def body():
            idle = trio.current_time()
            async for frame in frames(tenant, id):
                if frame is None:
                    if trio.current_time() - idle >= KEEPALIVE_S:
                        idle = trio.current_time()
                        yield b": keep-alive\n\n"
                    continue
                idle = trio.current_time()
                yield f"event: {frame['type']}\ndata: {json.dumps(frame, ensure_ascii=False)}\n\n".encode()

        resp = Response(body(), status=200, content_type="text/event-stream")
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["X-Accel-Buffering"] = "no"
        resp.timeout = None
        return resp

    @app.websocket("/api/run/<id>/stream")
    async def stream_ws(id: str):
        try:
            p = bearer_principal(ctx.store, websocket.headers.get("Authorization"))
            tenant = ws_tenant(p, websocket.headers.get("X-Workbooks-Tenant"))
            R.validate_run_id(id)
        except HttpError as e:
            return Response(json.dumps({"error": {"code": e.code, "message": e.message}}), status=e.status,
                            content_type="application/json")
        except WorkbooksError as e:
            return Response(json.dumps({"error": {"code": e.code, "message": e.message}}), status=e.http_status,
                            content_type="application/json")
        await websocket.accept()
        async for frame in frames(tenant, id):
            if frame is not None:
                await websocket.send(json.dumps(frame, ensure_ascii=False))
        await websocket.close(1000)

    def ws_tenant(p, named: str | None) -> str:
        if p.scope in ("tenant", "exec"):
            if named and named != p.tenant:
                raise HttpError(403, "forbidden", "a tenant key reaches its own tenant only")
            return p.tenant
        if p.scope == "admin":
            if not named:
                raise HttpError(400, "tenant_required", "an admin key must name the tenant in X-Workbooks-Tenant")
            if not ctx.store.tenant_exists(named):
                raise HttpError(404, "not_found", f"no tenant {named[:64]!r}")
            return named
        raise HttpError(403, "forbidden", "operator keys reach the ops routes only")


async def _recv(sock: zmq.Socket, timeout: float) -> list[list[bytes]]:
    """Every message waiting on `sock`, waiting up to `timeout` for the first (trio, no thread)."""
    out: list[list[bytes]] = []
    with trio.move_on_after(timeout):
        while True:
            while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                out.append(sock.recv_multipart(zmq.NOBLOCK))
            if out:
                return out
            await trio.lowlevel.wait_readable(sock.getsockopt(zmq.FD))
    return out
