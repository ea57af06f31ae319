"""Telemetry on the control plane: `GET /api/telemetry` and `GET /api/telemetry/<run>`.

Both are tenant-scoped and read the SQLite index that the `telemetry` child writes
(workbooks.telemetry), read-only and in a thread: they answer while the indexer is down, from
what is indexed, and say how fresh that is (`index`). Another tenant's run is a 404.
"""

from __future__ import annotations

import trio
from quart import g, request

from workbooks.telemetry import query as Q
from workbooks.web_control.httperrors import HttpError

MAX_LIMIT = 1000


def register(app, ctx, tenant_route, log_) -> None:
    from workbooks.web_control.app import json_response

    @app.route("/api/telemetry", methods=["GET"])
    @tenant_route
    async def telemetry_overview():
        raw = request.args.get("limit")
        limit = 50
        if raw is not None:
            if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
                raise HttpError(400, "bad_limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
            limit = int(raw)
        data = await trio.to_thread.run_sync(Q.overview, ctx.data_dir, g.tenant, limit)
        return json_response(data)

    @app.route("/api/telemetry/<run>", methods=["GET"])
    @tenant_route
    async def telemetry_run(run: str):
        Q.validate_any_run_id(run)
        data = await trio.to_thread.run_sync(Q.run_summary, ctx.data_dir, g.tenant, run)
        return json_response(data)
