"""The trust work's routes on the control plane: mirror a tenant repo, read a run's ledger.

They call T's functions (workbooks.mirror, workbooks.ledger); when those modules are not
installed the routes answer 501 with a JSON error rather than disappearing from the API.
"""

from __future__ import annotations

import importlib
import inspect

import trio
from quart import request

from workbooks.errors import WorkbooksError
from workbooks.web_control.httperrors import Forbidden, HttpError


def _find(module: str, *names: str):
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    for n in names:
        fn = getattr(mod, n, None)
        if callable(fn):
            return fn
    return None


def install(app, ctx, principal, current_tenant, json_response, read_json_object) -> None:
    @app.route("/api/mirror/<tenant>", methods=["POST"])
    async def mirror(tenant: str):
        mine = current_tenant()
        if tenant != mine:
            raise Forbidden("a key reaches its own tenant only")
        fn = _find("workbooks.mirror", "mirror_http", "mirror")
        if fn is None:
            raise HttpError(501, "not_implemented", "mirroring is not available in this build")
        data = await read_json_object()
        result = await _call(fn, ctx, tenant, data)
        return json_response(result)

    @app.route("/api/ledger/<run>", methods=["GET"])
    async def ledger(run: str):
        tenant = current_tenant()
        if len(run) > 128 or not run.replace("-", "").replace("_", "").isalnum():
            raise HttpError(400, "invalid_name", "invalid run id")
        fn = _find("workbooks.ledger", "ledger_http", "read_run", "read_ledger")
        if fn is None:
            raise HttpError(501, "not_implemented", "the run ledger is not available in this build")
        result = await _call(fn, ctx, tenant, run)
        return json_response(result)


async def _call(fn, ctx, tenant, arg):
    params = inspect.signature(fn).parameters
    kwargs = {}
    if "data_dir" in params:
        kwargs["data_dir"] = ctx.data_dir
    try:
        return await trio.to_thread.run_sync(lambda: fn(tenant=tenant, arg=arg, **kwargs) if "arg" in params
                                             else fn(ctx.data_dir, tenant, arg))
    except WorkbooksError:
        raise

