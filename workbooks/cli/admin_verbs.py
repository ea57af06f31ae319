"""Admin verbs over the control plane's HTTP API: `wbx tenant create`, `wbx key create|list|revoke`.

They talk to a running control plane (`--url`, `$WB_CONTROL_URL`, default http://127.0.0.1:4000)
with a key from `--key`, `$WB_API_KEY`, or the admin key file `$WB_DATA/admin.key`. Exit codes:
3 when the control plane cannot be reached, 7 when it rejects the key (401/403), 4 not found,
6 conflict.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from workbooks.cli.output import Output, Style
from workbooks.errors import (AuthRejected, BadRequest, Conflict, NotFound, Unreachable, UsageError,
                              WorkbooksError)

DEFAULT_URL = "http://127.0.0.1:4000"


def _data_dir(ns) -> Path:
    return Path(getattr(ns, "data", None) or os.environ.get("WB_DATA") or "wb-data").expanduser()


def _key(ns) -> str:
    if getattr(ns, "key", None):
        return ns.key
    if os.environ.get("WB_API_KEY"):
        return os.environ["WB_API_KEY"]
    path = _data_dir(ns) / "admin.key"
    try:
        return path.read_text().strip()
    except OSError:
        raise AuthRejected(f"no API key: pass --key, set WB_API_KEY, or make {path} readable",
                           hint="the admin key is written to $WB_DATA/admin.key on first start") from None


def call(ns, method: str, path: str, body: dict | None = None) -> dict:
    """One request; the control plane's JSON errors become typed errors (and so exit codes)."""
    url = (getattr(ns, "url", None) or os.environ.get("WB_CONTROL_URL") or DEFAULT_URL).rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {_key(ns)}", "Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            err = json.loads(e.read() or b"{}").get("error") or {}
        except ValueError:
            err = {}
        msg = err.get("message") or f"HTTP {e.code}"
        if e.code in (401, 403):
            raise AuthRejected(f"the control plane rejected the key: {msg}",
                               hint="use an admin key (see $WB_DATA/admin.key)") from None
        if e.code == 404:
            raise NotFound(msg) from None
        if e.code == 409:
            raise Conflict(msg) from None
        if e.code == 400:
            raise BadRequest(msg) from None
        raise WorkbooksError(f"control plane error {e.code}: {msg}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise Unreachable(f"cannot reach the control plane at {url}: {reason}") from None


def _common(p) -> None:
    p.add_argument("--url", help=f"control plane URL (default $WB_CONTROL_URL or {DEFAULT_URL})")
    p.add_argument("--key", help="API key (default $WB_API_KEY or $WB_DATA/admin.key)")
    p.add_argument("--data", help="data dir holding admin.key (default $WB_DATA or ./wb-data)")


def cmd_tenant_create(ns) -> Output:
    from workbooks.gitstore.tenant import InvalidTenant, validate_tenant

    try:  # a bad name is the caller's usage error (exit 2), found before any request
        validate_tenant(ns.name)
    except InvalidTenant as e:
        raise UsageError(e.message, hint=e.hint) from None
    data = call(ns, "POST", "/api/tenants", {"name": ns.name})
    return Output(data=data, human=lambda d, st: f"tenant {st.bold(d['name'])} created")


def cmd_key_create(ns) -> Output:
    data = call(ns, "POST", f"/api/tenants/{_seg(ns.tenant)}/keys", {"scope": ns.scope})

    def human(d: dict, st: Style) -> str:
        info = f"id {d['id']} · scope {d['scope']} · tenant {d.get('tenant')} · shown once, store it now"
        return f"{st.bold(d['key'])}\n{st.dim(info)}"

    return Output(data=data, human=human)


def cmd_key_list(ns) -> Output:
    path = f"/api/tenants/{_seg(ns.tenant)}/keys" if ns.tenant else "/api/keys"
    data = call(ns, "GET", path)

    def human(d: dict, st: Style) -> str:
        rows = d.get("keys") or []
        if not rows:
            return st.dim("(no keys)")
        out = []
        for k in rows:
            state = st.red("revoked") if k.get("revoked_at") else st.green("active")
            out.append(f"{k['id']}  {k['prefix']}…  {k['scope']:<8} {k.get('tenant') or '-':<20} {state}")
        return "\n".join(out)

    return Output(data=data, human=human)


def cmd_key_revoke(ns) -> Output:
    data = call(ns, "DELETE", f"/api/keys/{_seg(ns.id)}")
    return Output(data=data, human=lambda d, st: f"key {d['id']} revoked")


def _seg(value: str) -> str:
    """A path segment as given, refused when it could change the path."""
    if not value or "/" in value or value in (".", "..") or any(c in value for c in "?#%\\") or len(value) > 200:
        raise UsageError(f"invalid name {value[:60]!r}")
    return value


def register(subs) -> None:
    t = subs.add_parser("tenant", help="manage tenants on a running control plane (admin key)")
    tsubs = t.add_subparsers(dest="tenant_verb", required=True, parser_class=type(t))
    p = tsubs.add_parser("create", help="create a tenant")
    p.add_argument("name", help="tenant name (a-z, 0-9, '-', '_')")
    _common(p)
    p.set_defaults(func=cmd_tenant_create)

    k = subs.add_parser("key", help="API keys: create (shown once), list, revoke (admin key)")
    ksubs = k.add_subparsers(dest="key_verb", required=True, parser_class=type(k))
    p = ksubs.add_parser("create", help="create a key for a tenant; printed once")
    p.add_argument("--tenant", required=True, help="the tenant the key belongs to")
    p.add_argument("--scope", default="tenant", choices=["tenant", "exec", "operator", "admin"], help="what the key may do")
    _common(p)
    p.set_defaults(func=cmd_key_create)
    p = ksubs.add_parser("list", help="list keys (never their secrets)")
    p.add_argument("--tenant", help="only this tenant's keys")
    _common(p)
    p.set_defaults(func=cmd_key_list)
    p = ksubs.add_parser("revoke", help="revoke a key by id")
    p.add_argument("id", help="the key's id (k_…)")
    _common(p)
    p.set_defaults(func=cmd_key_revoke)
