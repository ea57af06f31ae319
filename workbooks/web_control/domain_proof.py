"""Proof that a tenant controls a domain: a DNS TXT record, or a file at a well-known URL.

`prove(host, token)` tries DNS first (`_workbooks.<host>` TXT = token), then HTTP
(`http://<host>/.well-known/workbooks-challenge/<token>` whose body is the token).

The HTTP check must not let a tenant make the control plane fetch internal URLs, so it only
ever talks to the claimed host itself: the path is ours, the port is 80 (443 after a redirect to
https on the same host and path), every resolved address must be a public one (no loopback,
private, link-local, multicast or reserved address) and the connection goes to the address that
was checked (no second lookup to rebind), redirects are followed only to the same host and path
(at most 2), and the whole check has a small timeout and reads at most 1 KiB.

Settings (environment):
- `WB_DOMAIN_RESOLVER`: `system` (default: nameservers of /etc/resolv.conf), `dns:IP[:PORT]`
  (one nameserver), or `file:PATH` (a JSON object mapping names to a TXT value or a list of them).
- `WB_DOMAIN_HTTP_ADDR`: `host=IP:PORT[,host=IP:PORT]`, an explicit operator override that sends
  the HTTP check for those hosts to that address (any address, as the operator said so; tests
  use it with a server on 127.0.0.1).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import secrets
import socket
import ssl
import struct
import time
from pathlib import Path
from urllib.parse import urlsplit

from workbooks.store.hosts import challenge_path

DNS_TIMEOUT_S = 2.0
HTTP_TIMEOUT_S = 3.0
MAX_BODY = 1024
MAX_REDIRECTS = 2


class ProofFailed(Exception):
    """One method did not prove control; the message says why (shown to the tenant)."""


# -- DNS -------------------------------------------------------------------------------------
def _qname(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ProofFailed(f"{name!r} is not a DNS name")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def _skip_name(msg: bytes, i: int) -> int:
    for _ in range(128):
        if i >= len(msg):
            raise ProofFailed("truncated DNS answer")
        n = msg[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += 1 + n
    raise ProofFailed("malformed DNS answer")


def parse_txt_answer(msg: bytes, qid: int) -> list[str] | None:
    """TXT values in a DNS response (None when it is truncated and must be asked over TCP)."""
    if len(msg) < 12:
        raise ProofFailed("short DNS answer")
    rid, flags, qd, an, _, _ = struct.unpack(">HHHHHH", msg[:12])
    if rid != qid or not flags & 0x8000:
        raise ProofFailed("DNS answer does not match the question")
    if flags & 0x0200:
        return None
    rcode = flags & 0xF
    if rcode == 3:
        return []  # NXDOMAIN
    if rcode != 0:
        raise ProofFailed(f"DNS server answered rcode {rcode}")
    i = 12
    for _ in range(qd):
        i = _skip_name(msg, i) + 4
    out = []
    for _ in range(an):
        i = _skip_name(msg, i)
        if i + 10 > len(msg):
            raise ProofFailed("truncated DNS answer")
        rtype, _, _, rdlen = struct.unpack(">HHIH", msg[i:i + 10])
        i += 10
        rdata = msg[i:i + rdlen]
        i += rdlen
        if rtype != 16:
            continue
        parts, j = [], 0
        while j < len(rdata):
            n = rdata[j]
            parts.append(rdata[j + 1:j + 1 + n])
            j += 1 + n
        out.append(b"".join(parts).decode("utf-8", "replace"))
    return out


def query_txt(name: str, server: tuple[str, int], timeout: float = DNS_TIMEOUT_S) -> list[str]:
    """TXT records of `name` from one nameserver (UDP, then TCP if the answer was truncated)."""
    qid = secrets.randbits(16)
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + _qname(name) + struct.pack(">HH", 16, 1)
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    deadline = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(server)
        s.send(query)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProofFailed(f"no DNS answer from {server[0]} within {timeout:.0f}s")
            s.settimeout(left)
            try:
                msg = s.recv(65535)
            except socket.timeout:
                continue
            except OSError as e:
                raise ProofFailed(f"DNS server {server[0]} unreachable: {e.strerror or e}") from None
            if len(msg) >= 2 and struct.unpack(">H", msg[:2])[0] == qid:
                break
    got = parse_txt_answer(msg, qid)
    if got is not None:
        return got
    with socket.create_connection(server, timeout=max(0.1, deadline - time.monotonic())) as s:
        s.sendall(struct.pack(">H", len(query)) + query)
        buf = b""
        while len(buf) < 2 or len(buf) < 2 + struct.unpack(">H", buf[:2])[0]:
            chunk = s.recv(65535)
            if not chunk:
                raise ProofFailed("DNS server closed the TCP connection")
            buf += chunk
    return parse_txt_answer(buf[2:2 + struct.unpack(">H", buf[:2])[0]], qid) or []


def _system_nameservers() -> list[tuple[str, int]]:
    out = []
    try:
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                out.append((parts[1].split("%")[0], 53))
    except OSError:
        pass
    return out or [("127.0.0.1", 53)]


def _server(spec: str) -> tuple[str, int]:
    addr = spec.strip()
    port = 53
    if addr.startswith("["):
        addr, _, rest = addr[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif addr.count(":") == 1:
        addr, _, p = addr.partition(":")
        port = int(p)
    ipaddress.ip_address(addr)
    return addr, port


def txt_values(name: str, resolver: str | None = None) -> list[str]:
    """TXT values of `name` through the configured resolver (see the module docstring)."""
    spec = resolver if resolver is not None else os.environ.get("WB_DOMAIN_RESOLVER", "system")
    if spec.startswith("file:"):
        try:
            table = json.loads(Path(spec[5:]).read_text())
        except (OSError, ValueError) as e:
            raise ProofFailed(f"resolver file unreadable: {type(e).__name__}") from None
        v = table.get(name, []) if isinstance(table, dict) else []
        return [x for x in (v if isinstance(v, list) else [v]) if isinstance(x, str)]
    if spec.startswith("dns:"):
        try:
            servers = [_server(spec[4:])]
        except ValueError:
            raise ProofFailed("WB_DOMAIN_RESOLVER=dns:... needs an IP address and an optional port") from None
    elif spec == "system":
        servers = _system_nameservers()
    else:
        raise ProofFailed(f"unknown WB_DOMAIN_RESOLVER {spec[:40]!r}")
    last: ProofFailed | None = None
    for srv in servers[:3]:
        try:
            return query_txt(name, srv)
        except ProofFailed as e:
            last = e
    raise last or ProofFailed("no nameserver")


def check_dns(host: str, token: str, resolver: str | None = None) -> str:
    name = f"_workbooks.{host}"
    values = txt_values(name, resolver)
    if any(v.strip() == token for v in values):
        return f"TXT {name}"
    raise ProofFailed(f"no TXT record {name} with the token" + (f" (found {len(values)} other)" if values else ""))


# -- HTTP ------------------------------------------------------------------------------------
def http_overrides() -> dict[str, tuple[str, int]]:
    out = {}
    for item in os.environ.get("WB_DOMAIN_HTTP_ADDR", "").split(","):
        host, sep, addr = item.strip().partition("=")
        if sep and host and addr:
            try:
                out[host.strip().lower()] = _server(addr) if ":" in addr else (str(ipaddress.ip_address(addr)), 80)
            except ValueError:
                continue
    return out


def public_address(ip: str) -> bool:
    a = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return a.is_global and not (a.is_multicast or a.is_reserved or a.is_loopback or a.is_link_local or a.is_private)


def _addresses(host: str, port: int) -> list[tuple[str, int]]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ProofFailed(f"{host} does not resolve: {e.strerror}") from None
    addrs = list(dict.fromkeys((i[4][0], port) for i in infos))
    bad = [a for a, _ in addrs if not public_address(a)]
    if bad:
        raise ProofFailed(f"{host} resolves to a non-public address ({bad[0]}); the check only fetches from public ones")
    return addrs


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP to a checked address, with the claimed host in the Host header."""

    def __init__(self, host: str, addr: tuple[str, int], timeout: float):
        super().__init__(host, addr[1], timeout=timeout)
        self._addr = addr

    def connect(self) -> None:
        self.sock = socket.create_connection(self._addr, timeout=self.timeout)


class _PinnedTLSConnection(_PinnedConnection):
    def connect(self) -> None:
        super().connect()
        self.sock = ssl.create_default_context().wrap_socket(self.sock, server_hostname=self.host)


def _fetch(scheme: str, host: str, path: str, addr: tuple[str, int], deadline: float) -> tuple[int, dict, bytes]:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ProofFailed("the HTTP check timed out")
    cls = _PinnedTLSConnection if scheme == "https" else _PinnedConnection
    conn = cls(host, addr, timeout=min(left, HTTP_TIMEOUT_S))
    try:
        conn.request("GET", path, headers={"Host": host, "User-Agent": "workbooks-domain-check",
                                           "Accept": "text/plain", "Connection": "close"})
        resp = conn.getresponse()
        body = resp.read(MAX_BODY + 1)
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    except (OSError, http.client.HTTPException, ssl.SSLError) as e:
        raise ProofFailed(f"{scheme}://{host}{path}: {type(e).__name__}: {str(e)[:120]}") from None
    finally:
        conn.close()


def check_http(host: str, token: str) -> str:
    path = challenge_path(token)
    deadline = time.monotonic() + HTTP_TIMEOUT_S
    override = http_overrides().get(host)
    scheme = "http"
    for _ in range(MAX_REDIRECTS + 1):
        if override is not None:
            if scheme != "http":
                raise ProofFailed("the HTTP override covers plain http only")
            addrs = [override]
        else:
            addrs = _addresses(host, 443 if scheme == "https" else 80)
        status, headers, body = _fetch(scheme, host, path, addrs[0], deadline)
        if status in (301, 302, 303, 307, 308):
            loc = urlsplit(headers.get("location", ""))
            port_ok = loc.port in (None, 80 if loc.scheme == "http" else 443) if loc.scheme in ("http", "https") else False
            if not (loc.scheme in ("http", "https") and (loc.hostname or "") == host and port_ok
                    and loc.path == path and not loc.username and not loc.password):
                raise ProofFailed(f"redirected away from {scheme}://{host}{path}; only the same host and path are followed")
            scheme = loc.scheme
            continue
        if status != 200:
            raise ProofFailed(f"{scheme}://{host}{path} answered {status}")
        if len(body) > MAX_BODY:
            raise ProofFailed(f"{scheme}://{host}{path}: body over {MAX_BODY} bytes")
        if body.decode("utf-8", "replace").strip() != token:
            raise ProofFailed(f"{scheme}://{host}{path} does not hold the token")
        return f"{scheme}://{host}{path}"
    raise ProofFailed("too many redirects")


def prove(host: str, token: str) -> tuple[str | None, list[dict]]:
    """(how control was proved or None, what each method said)."""
    tried = []
    for method, fn in (("dns", check_dns), ("http", check_http)):
        try:
            where = fn(host, token)
        except ProofFailed as e:
            tried.append({"method": method, "ok": False, "message": str(e)})
            continue
        except Exception as e:  # noqa: BLE001 - a check that breaks is a failed check, never a 500
            tried.append({"method": method, "ok": False, "message": f"{type(e).__name__}"})
            continue
        tried.append({"method": method, "ok": True, "message": where})
        return method, tried
    return None, tried
