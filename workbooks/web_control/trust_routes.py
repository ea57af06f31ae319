"""The trust work's routes on the control plane: mirror a tenant repo, read a run's ledger.

Thin HTTP wrappers over `workbooks.mirror.mirror_request` and `workbooks.ledger.ledger_report`
(plain functions that raise typed errors carrying their HTTP status). A key reaches its own
tenant only; an admin key acts for the tenant in the path.
"""

from __future__ import annotations

import trio

from workbooks.web_control.httperrors import Forbidden


def install(app, ctx, principal, current_tenant, json_response, read_json_object) -> None:
    from quart import request

    @app.route("/api/mirror/<tenant>", methods=["POST"])
    async def mirror(tenant: str):
        p = principal()
        if p.scope == "admin" and not request.headers.get("X-Workbooks-Tenant"):
            mine = tenant
            if not ctx.store.tenant_exists(tenant):
                from workbooks.errors import NotFound

                raise NotFound(f"no tenant {tenant[:64]!r}")
        else:
            mine = current_tenant()
        if tenant != mine:
            raise Forbidden("a key reaches its own tenant only")
        body = await read_json_object()
        from workbooks.mirror import mirror_request

        result = await trio.to_thread.run_sync(mirror_request, ctx.data_dir, tenant, body)
        return json_response(result)

    @app.route("/api/ledger/<run>", methods=["GET"])
    async def ledger(run: str):
        tenant = current_tenant()
        from workbooks.ledger import ledger_report

        result = await trio.to_thread.run_sync(ledger_report, ctx.data_dir, tenant, run)
        return json_response(result)
