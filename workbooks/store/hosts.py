"""Who answers at a public hostname: automatic names, and the registry of claimed hosts.

A hostname is owned, never "first deployed wins":

- under a configured public base (`WB_PUBLIC_BASES`, default `localhost`) names are automatic:
  `<workbook>.<tenant>.<base>` for every tenant, and the short `<workbook>.<base>` for the
  primary tenant only (`WB_PRIMARY_TENANT`, default `dev`, the tenant first run creates). Nobody
  can register a host under a base, so a tenant can never serve there under another's name.
- any other host is claimed once in `host_claims`: the first tenant to claim it holds it and every
  other tenant gets 409. Local-style names (`*.localhost`, `*.test`) serve at once; a real domain
  stays pending until its holder proves control of it (DNS TXT or a well-known file, checked by
  the control plane), and only verified hosts serve.
"""

from __future__ import annotations

import os
import re
import secrets
import sqlite3
import time

from workbooks.errors import Conflict, NotFound
from workbooks.store.names import RESERVED_WORKBOOKS, WORKBOOK_RE

# DNS labels a tenant name can be in a host (tenant names may also hold '_' or end in '-': such a
# tenant has no automatic host, only claimed ones).
TENANT_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# Special-use names nobody can own on the internet (RFC 6761): first come, first served.
LOCAL_SUFFIXES = ("localhost", "test")
PENDING_TTL_S = float(os.environ.get("WB_DOMAIN_PENDING_TTL_H", "24")) * 3600

SCHEMA = """
CREATE TABLE IF NOT EXISTS host_claims (
  host TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  workbook TEXT NOT NULL,
  token TEXT NOT NULL,
  verified_at REAL,
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS host_claims_by_tenant ON host_claims (tenant, host);
"""


def public_bases() -> list[str]:
    """The configured public bases, longest first (a host belongs to the most specific one)."""
    raw = os.environ.get("WB_PUBLIC_BASES", "localhost")
    bases = {b.strip().lower().strip(".") for b in raw.split(",") if b.strip().strip(".")}
    return sorted(bases, key=lambda b: (-len(b), b))


def primary_tenant() -> str:
    """The tenant that keeps the short `<workbook>.<base>` names (the one first run creates)."""
    return os.environ.get("WB_PRIMARY_TENANT") or "dev"


def base_of(host: str, bases: list[str] | None = None) -> str | None:
    """The configured base `host` is, or is under; None when it is outside all of them."""
    for b in public_bases() if bases is None else bases:
        if host == b or host.endswith("." + b):
            return b
    return None


def is_local_style(host: str) -> bool:
    """Names nobody can prove control of on the internet, so the first claim holds them."""
    return any(host == s or host.endswith("." + s) for s in LOCAL_SUFFIXES)


def automatic_target(host: str, bases: list[str] | None = None, primary: str | None = None) -> tuple[str, str] | None:
    """(tenant, workbook) an automatic name stands for, or None (bare base, too many labels, not a name).

    `host` is already normalised (lower case, no port, no trailing dot).
    """
    base = base_of(host, bases)
    if base is None or host == base:
        return None
    labels = host[: -len(base) - 1].split(".")
    if len(labels) == 1:
        tenant, wid = primary or primary_tenant(), labels[0]
    elif len(labels) == 2:
        wid, tenant = labels
        if not TENANT_LABEL_RE.match(tenant):
            return None
    else:
        return None
    if not WORKBOOK_RE.match(wid) or wid in RESERVED_WORKBOOKS:
        return None
    return tenant, wid


def automatic_hosts(tenant: str, wid: str, bases: list[str] | None = None, primary: str | None = None) -> list[str]:
    """The automatic names of one workbook (what the control plane can tell a tenant)."""
    out = []
    for b in public_bases() if bases is None else bases:
        if tenant == (primary or primary_tenant()):
            out.append(f"{wid}.{b}")
        if TENANT_LABEL_RE.match(tenant):
            out.append(f"{wid}.{tenant}.{b}")
    return out


class HostTaken(Conflict):
    code = "host_taken"


class HostRegistry:
    """The `host_claims` table: one holder per host, pending until proved (local-style: at once)."""

    def __init__(self, store, *, migrate: bool = False):
        self.store = store
        c = store.conn()
        for attempt in range(50):
            try:
                c.executescript(SCHEMA)
                break
            except sqlite3.OperationalError:
                if attempt == 49:
                    raise
                time.sleep(0.05)
        if migrate:
            self._migrate_legacy()

    def _migrate_legacy(self) -> None:
        """Hosts registered before claims existed: local-style ones stay served, others must be proved."""
        with self.store.tx() as c:
            rows = c.execute("SELECT host, tenant, workbook, created_at FROM domains").fetchall()
            for r in rows:
                verified = r["created_at"] if is_local_style(r["host"]) else None
                c.execute(
                    "INSERT OR IGNORE INTO host_claims (host, tenant, workbook, token, verified_at, created_at,"
                    " updated_at) VALUES (?,?,?,?,?,?,?)",
                    (r["host"], r["tenant"], r["workbook"], new_token(), verified, r["created_at"], time.time()),
                )
            if rows:
                c.execute("DELETE FROM domains")

    # -- reads ------------------------------------------------------------------------------
    def resolve(self, host: str) -> tuple[str, str] | None:
        """The (tenant, workbook) a verified claim serves at `host`."""
        r = self.store.conn().execute(
            "SELECT tenant, workbook FROM host_claims WHERE host=? AND verified_at IS NOT NULL", (host,)
        ).fetchone()
        return (r["tenant"], r["workbook"]) if r else None

    def get(self, host: str, tenant: str) -> dict | None:
        r = self.store.conn().execute("SELECT * FROM host_claims WHERE host=? AND tenant=?", (host, tenant)).fetchone()
        return dict(r) if r else None

    def list(self, tenant: str) -> list[dict]:
        rows = self.store.conn().execute("SELECT * FROM host_claims WHERE tenant=? ORDER BY host", (tenant,)).fetchall()
        return [view(dict(r)) for r in rows]

    # -- writes -----------------------------------------------------------------------------
    def claim(self, host: str, tenant: str, workbook: str, now: float | None = None) -> dict:
        """Claim `host` for `tenant` (or re-point the tenant's own claim at another workbook).

        409 when another tenant holds it: verified, or pending for less than the pending TTL
        (`WB_DOMAIN_PENDING_TTL_H`, 24 h), so an unproved claim cannot squat a domain for ever.
        """
        now = time.time() if now is None else now
        with self.store.tx() as c:
            if not c.execute("SELECT 1 FROM workbooks WHERE tenant=? AND id=?", (tenant, workbook)).fetchone():
                raise NotFound(f"no workbook {workbook!r}", hint="deploy it first: PUT /api/workbooks/:id")
            r = c.execute("SELECT * FROM host_claims WHERE host=?", (host,)).fetchone()
            if r is not None and r["tenant"] != tenant:
                if r["verified_at"] is not None or now - r["created_at"] < PENDING_TTL_S:
                    raise HostTaken(f"{host} is claimed by another tenant")
                c.execute("DELETE FROM host_claims WHERE host=?", (host,))
                r = None
            if r is None:
                verified = now if is_local_style(host) else None
                c.execute(
                    "INSERT INTO host_claims (host, tenant, workbook, token, verified_at, created_at, updated_at)"
                    " VALUES (?,?,?,?,?,?,?)", (host, tenant, workbook, new_token(), verified, now, now))
            else:
                c.execute("UPDATE host_claims SET workbook=?, updated_at=? WHERE host=?", (workbook, now, host))
            row = dict(c.execute("SELECT * FROM host_claims WHERE host=?", (host,)).fetchone())
        return view(row)

    def mark_verified(self, host: str, tenant: str, token: str) -> dict | None:
        """Record a successful proof, if the claim is still this tenant's with this token."""
        now = time.time()
        with self.store.tx() as c:
            c.execute(
                "UPDATE host_claims SET verified_at=?, updated_at=? WHERE host=? AND tenant=? AND token=?"
                " AND verified_at IS NULL", (now, now, host, tenant, token))
            r = c.execute("SELECT * FROM host_claims WHERE host=? AND tenant=?", (host, tenant)).fetchone()
        return view(dict(r)) if r else None

    def release(self, host: str, tenant: str) -> bool:
        with self.store.tx() as c:
            cur = c.execute("DELETE FROM host_claims WHERE host=? AND tenant=?", (host, tenant))
        return cur.rowcount > 0


def new_token() -> str:
    return "wbv-" + secrets.token_hex(16)


def challenge_path(token: str) -> str:
    return f"/.well-known/workbooks-challenge/{token}"


def view(row: dict) -> dict:
    """A claim as its holder sees it; a pending one says how to prove control."""
    out = {"host": row["host"], "workbook": row["workbook"],
           "status": "verified" if row["verified_at"] is not None else "pending",
           "created_at": row["created_at"], "verified_at": row["verified_at"]}
    if row["verified_at"] is None:
        out["token"] = row["token"]
        out["verify"] = {
            "dns": {"name": f"_workbooks.{row['host']}", "type": "TXT", "value": row["token"]},
            "http": {"url": f"http://{row['host']}{challenge_path(row['token'])}", "body": row["token"]},
            "then": f"POST /api/domains/{row['host']}/verify",
        }
    return out
