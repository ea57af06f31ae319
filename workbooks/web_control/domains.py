"""`/api/domains`: claim a hostname for one of the tenant's workbooks, prove control of it, release it.

Hosts under a configured public base are automatic (`<workbook>.<tenant>.<base>`, the primary's
`<workbook>.<base>`) and cannot be claimed. Any other host is held by the first tenant to claim
it (409 `host_taken` for everyone else); `*.localhost` and `*.test` serve at once, a real domain
is pending until `POST /api/domains/:host/verify` finds the claim's token in DNS or at the
well-known URL (`workbooks.web_control.domain_proof`). The public plane serves verified hosts only.
"""

from __future__ import annotations

import trio
from quart import g

from workbooks.errors import NotFound
from workbooks.store.hosts import HostRegistry, base_of, public_bases, view
from workbooks.store.names import validate_domain, validate_workbook_id
from workbooks.web_control.httperrors import HttpError


def register(app, ctx, tenant_route, log) -> None:
    """Add the domain routes to the control plane `app` (its context, tenant guard and logger)."""
    from workbooks.web_control import domain_proof
    from workbooks.web_control.app import field, json_response, read_json_object

    state: dict = {}
    # a proof may wait seconds on DNS or a slow site: a few at a time, never the whole thread pool
    proofs = trio.CapacityLimiter(4)

    def registry() -> HostRegistry:
        reg = state.get("registry")
        if reg is None or reg.store is not ctx.store:
            reg = state["registry"] = HostRegistry(ctx.store, migrate=True)
        return reg

    @app.before_serving
    async def claims_table() -> None:  # after the app's own startup (it opens ctx.store)
        await trio.to_thread.run_sync(registry)

    def claimable(host: str) -> str:
        h = validate_domain(host)
        base = base_of(h, public_bases())
        if base is not None:
            raise HttpError(400, "reserved_domain",
                            f"hosts under {base} are named by their workbook (<id>.<tenant>.{base}); "
                            "claim a domain of your own")
        return h

    @app.route("/api/domains", methods=["GET"])
    @tenant_route
    async def list_domains():
        return json_response({"domains": registry().list(g.tenant)})

    @app.route("/api/domains/<host>", methods=["PUT"])
    @tenant_route
    async def put_domain(host: str):
        tenant = g.tenant
        h = claimable(host)
        data = await read_json_object()
        wid = validate_workbook_id(field(data, "workbook", str))
        reg = registry()
        row = await trio.to_thread.run_sync(reg.claim, h, tenant, wid)
        log.info("domain_claimed", tenant=tenant, host=h, workbook=wid, status=row["status"])
        return json_response(row)

    @app.route("/api/domains/<host>/verify", methods=["POST"])
    @tenant_route
    async def verify_domain(host: str):
        tenant = g.tenant
        h = claimable(host)
        reg = registry()
        claim = reg.get(h, tenant)
        if claim is None:
            raise NotFound(f"no domain {h!r} for this tenant", hint="claim it first: PUT /api/domains/:host")
        if claim["verified_at"] is not None:
            return json_response(view(claim))
        method, tried = await trio.to_thread.run_sync(domain_proof.prove, h, claim["token"], limiter=proofs)
        if method is None:
            log.info("domain_unproved", tenant=tenant, host=h)
            raise HttpError(422, "verification_failed",
                            f"control of {h} is not proved: put the token in a TXT record _workbooks.{h} "
                            "or at the well-known URL, then try again", data=tried)
        row = await trio.to_thread.run_sync(reg.mark_verified, h, tenant, claim["token"])
        if row is None:
            raise NotFound(f"no domain {h!r} for this tenant")
        log.info("domain_verified", tenant=tenant, host=h, method=method)
        return json_response({**row, "proof": tried[-1]})

    @app.route("/api/domains/<host>", methods=["DELETE"])
    @tenant_route
    async def delete_domain(host: str):
        tenant = g.tenant
        h = validate_domain(host)
        if not await trio.to_thread.run_sync(registry().release, h, tenant):
            raise NotFound(f"no domain {h!r} for this tenant")
        log.info("domain_released", tenant=tenant, host=h)
        return json_response({"host": h, "deleted": True})
