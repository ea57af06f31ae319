"""Workflow runs on the control plane: start one (or get its plan records), read it, cancel it.

As for agent runs, the control plane only asks the agents process (actor `agents`, ops
`start_workflow` / `start_todo` / `cancel`) and reads run folders from disk
(workbooks.workflow.service.workflow_view). Tenant-scoped like every route.
"""

from __future__ import annotations

import trio
from quart import g, request

from workbooks.web_control.httperrors import HttpError


def register(app, ctx, tenant_route, agents) -> None:
    """`agents(op, timeout=..., **args)` is the agent routes' call to the agents process."""
    from workbooks.web_control.app import field, json_response, read_json_object
    from workbooks.workflow.service import workflow_view

    @app.route("/api/workflow", methods=["POST"])
    @tenant_route
    async def start_workflow():
        data = await read_json_object()
        unknown = set(data) - {"org", "workbook", "input", "world"}
        if unknown:
            raise HttpError(400, "unknown_field", f"unknown field {sorted(unknown)[0]!r}",
                            hint="POST /api/workflow takes org or workbook, and input, world")
        args = {}
        for name in ("org", "workbook", "world"):
            if data.get(name) is not None:
                args[name] = field(data, name, str)
        if ("org" in args) == ("workbook" in args):
            raise HttpError(400, "bad_request", "give exactly one of org (Org text) or workbook (a deployed workbook's id)")
        if data.get("input") is not None:
            if not isinstance(data["input"], (str, dict)):
                raise HttpError(400, "bad_request", "input must be a string (or {\"base64\": \"…\"})")
            args["input"] = data["input"]
        plan = request.args.get("plan") in ("1", "true", "yes")
        reply = await agents("start_workflow", timeout=30.0, tenant=g.tenant, plan=plan, **args)
        if plan:
            return json_response(reply)
        return json_response({"run": reply["run"], "status": reply["status"]}, status=202,
                             headers={"Location": f"/api/workflow/{reply['run']}"})

    @app.route("/api/workflow/todo", methods=["POST"])
    @tenant_route
    async def start_todo():
        data = await read_json_object()
        org = field(data, "org", str)
        reply = await agents("start_todo", timeout=30.0, tenant=g.tenant, org=org)
        return json_response({"slug": reply["slug"], "status": reply["status"]}, status=202,
                             headers={"Location": f"/api/workflow/{reply['slug']}"})

    @app.route("/api/workflow/<run>", methods=["GET"])
    @tenant_route
    async def get_workflow(run: str):
        view = await trio.to_thread.run_sync(workflow_view, ctx.data_dir, g.tenant, run)
        return json_response(view)

    @app.route("/api/workflow/<run>", methods=["DELETE"])
    @tenant_route
    async def cancel_workflow(run: str):
        await trio.to_thread.run_sync(workflow_view, ctx.data_dir, g.tenant, run)  # 400/404 first
        reply = await agents("cancel", tenant=g.tenant, id=run)
        return json_response(reply)
