"""Tenant names: a strict slug, because a tenant name becomes a directory, an email and a ref."""

from __future__ import annotations

import re

from workbooks.errors import BadRequest

TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Names that are folders of the data directory itself (a tenant repo is `$WB_DATA/<tenant>`).
RESERVED_TENANTS = frozenset({"run", "keys", "wb-runs", "toolkits", "backups", "tmp"})


class InvalidTenant(BadRequest):
    code = "invalid_tenant"


def validate_tenant(tenant: object) -> str:
    """Return the tenant name unchanged, or raise InvalidTenant (no traversal, no dots, no case games)."""
    if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant) or tenant in RESERVED_TENANTS:
        shown = repr(tenant)[:80]
        raise InvalidTenant(
            f"invalid tenant name {shown}",
            hint="a tenant is 1-63 chars of a-z, 0-9, '-' or '_', starting with a letter or digit, "
            f"and not one of the data directory's own folders ({', '.join(sorted(RESERVED_TENANTS))})",
        )
    return tenant
