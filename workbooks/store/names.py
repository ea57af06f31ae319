"""Validators for every name that comes from a request: they become paths, SQL keys and hostnames."""

from __future__ import annotations

import re

from workbooks.errors import BadRequest

WORKBOOK_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# Ids the public plane needs for itself (paths like /healthz would shadow a workbook).
RESERVED_WORKBOOKS = frozenset({"healthz", "readyz", "api", "rcp", "metrics"})
SCOPES = ("admin", "operator", "tenant", "exec")  # exec: a tenant key that may start agent runs that write


class InvalidName(BadRequest):
    code = "invalid_name"


def validate_workbook_id(wid: object) -> str:
    """A workbook id is a DNS label (it names a public subdomain), lower case."""
    if not isinstance(wid, str) or not WORKBOOK_RE.match(wid) or wid in RESERVED_WORKBOOKS:
        raise InvalidName(
            f"invalid workbook id {str(wid)[:80]!r}",
            hint="1-63 chars of a-z, 0-9 and '-', not starting or ending with '-' (and not a reserved name)",
        )
    return wid


def validate_var_key(key: object) -> str:
    if not isinstance(key, str) or not VAR_RE.match(key):
        raise InvalidName(
            f"invalid variable name {str(key)[:80]!r}",
            hint="1-128 chars of A-Z, a-z, 0-9, '_', '.', '-', starting with a letter or '_'",
        )
    return key


def normalize_host(host: object) -> str | None:
    """A Host header (or domain) as a lower-case DNS name without port; None when it is not one.

    Refuses IP literals, empty labels, over-long names and anything outside [a-z0-9-.]:
    hostile Host headers resolve to nothing instead of reaching a lookup.
    """
    if not isinstance(host, str) or not host or len(host) > 260:
        return None
    h = host.strip().lower()
    if h.startswith("["):
        return None  # IPv6 literal
    if ":" in h:
        h, _, port = h.rpartition(":")
        if not port.isdigit() or len(port) > 5:
            return None
    if h.endswith("."):
        h = h[:-1]
    if not h or len(h) > 253:
        return None
    labels = h.split(".")
    if not all(LABEL_RE.match(lab) for lab in labels):
        return None
    if all(lab.isdigit() for lab in labels):
        return None  # IPv4 literal
    return h


def validate_domain(host: object) -> str:
    h = normalize_host(host)
    if h is None or "." not in h or (isinstance(host, str) and ":" in host):
        raise InvalidName(
            f"invalid domain {str(host)[:80]!r}",
            hint="a DNS name such as docs.example.com (no port, no IP address)",
        )
    return h


def is_ip_host(value: str) -> bool:
    """True for a Host header that is an IP literal (`127.0.0.1:4001`, `[::1]:80`)."""
    import ipaddress

    v = value.strip()
    if v.startswith("["):
        addr, _, rest = v[1:].partition("]")
        if rest and not (rest.startswith(":") and rest[1:].isdigit() and len(rest) <= 6):
            return False
    else:
        addr, _, port = v.partition(":")
        if port and not (port.isdigit() and len(port) <= 5):
            return False
    try:
        ipaddress.ip_address(addr)
        return True
    except ValueError:
        return False


def acceptable_host(value: str) -> bool:
    """A Host header either plane will look at: a DNS name or an IP literal, with an optional port."""
    return normalize_host(value) is not None or is_ip_host(value)
