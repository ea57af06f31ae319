"""The fetch tool's SSRF guard: which URLs may be fetched and which addresses may be connected to.

A URL passes when its scheme is http or https, it names a host, and EVERY address the host stands
for is public: an IP literal is checked as it is, a name is resolved (A and AAAA) and each answer is
checked; the caller then connects to one of exactly those checked addresses, so a second lookup
that answers differently (DNS rebinding) never happens. Refused: private (10/8, 172.16/12,
192.168/16), loopback, link-local (169.254/16: cloud metadata), CGNAT (100.64/10), unspecified,
this-network (0/8), broadcast, multicast, reserved (240/4), benchmarking and documentation ranges,
IPv6 loopback, unspecified, ULA (fc00::/7), link-local, site-local (fec0::/10), multicast,
documentation, Teredo and the other non-global IANA ranges; an IPv6 address that carries an IPv4
one is judged by that IPv4 address (`::ffff:a.b.c.d` mapped, `::a.b.c.d` compatible, 6to4
`2002::/16`, NAT64 `64:ff9b::/96`), and the local-use NAT64 prefix `64:ff9b:1::/48` is refused.
Hosts named in `WB_FETCH_ALLOW_HOSTS` (the tool context's `fetch_allow_hosts`) skip the address
check — an operator's decision, used by the tests for 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import trio

BLOCKED = "fetch blocked: internal/non-routable address (SSRF guard)"
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_SIXTOFOUR = ipaddress.ip_network("2002::/16")
_COMPAT = ipaddress.ip_network("::/96")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$")
_V4_EXTRA = [ipaddress.ip_network(n) for n in ("0.0.0.0/8", "100.64.0.0/10", "198.18.0.0/15", "255.255.255.255/32")]


class Refused(Exception):
    """The URL may not be fetched; `text` is the tool's answer ("fetch blocked: …" / "fetch error: …")."""

    def __init__(self, text: str, code: str = "blocked"):
        super().__init__(text)
        self.text = text
        self.code = code


def embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, when it carries one."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _COMPAT and int(ip) > 1:  # ::a.b.c.d (deprecated "compatible"); :: and ::1 are their own
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: Address) -> bool:
    """Whether a connection to `ip` leaves the host for the public internet."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return False  # fe80::1%eth0 and the like
        v4 = embedded_v4(ip)
        if v4 is not None:
            return is_public(v4)
        if ip in _NAT64_LOCAL or ip.is_site_local:
            return False
    else:
        if any(ip in n for n in _V4_EXTRA):
            return False
    return not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
        or ip.is_unspecified or not ip.is_global
    )


@dataclass
class Target:
    """A checked URL: where to connect and what to send."""

    url: str  # as sent (secrets resolved)
    scheme: str
    host: str  # ASCII host name or IP literal (no brackets)
    port: int
    target: str  # request target: path and query
    host_header: str
    userinfo: tuple[str, str] | None
    ip: Address | None  # set when the host is an IP literal

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


def parse(url: str) -> Target:
    """A URL split into a Target, or Refused (scheme, host, port, characters)."""
    url = url.strip()
    if any(c in url for c in "\x00\r\n\t") or any(ord(c) < 0x20 for c in url):
        raise Refused("fetch error: the URL contains control characters", "bad_url")
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise Refused(f"fetch error: not a URL ({e})", "bad_url") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise Refused(f"fetch blocked: only http and https URLs are fetched ({scheme or 'no scheme'})", "scheme")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise Refused("fetch blocked: the URL has no host", "no_host")
    try:
        port = parts.port if parts.port is not None else (443 if scheme == "https" else 80)
    except ValueError:
        raise Refused("fetch error: the URL's port is not a number from 1 to 65535", "bad_url") from None
    if not 0 < port < 65536:
        raise Refused("fetch error: the URL's port is not a number from 1 to 65535", "bad_url")
    ip: Address | None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
        try:
            host = host.encode("idna").decode("ascii").lower()
        except (UnicodeError, ValueError):
            raise Refused("fetch error: the URL's host is not a valid name", "bad_url") from None
        if not _HOSTNAME.match(host):
            raise Refused("fetch error: the URL's host is not a valid name", "bad_url")
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    query = quote(parts.query, safe="/?%:@!$&'()*+,;=-._~") if parts.query else ""
    default = (scheme == "http" and port == 80) or (scheme == "https" and port == 443)
    shown = f"[{host}]" if isinstance(ip, ipaddress.IPv6Address) else host
    userinfo = None
    if parts.username is not None:
        from urllib.parse import unquote

        userinfo = (unquote(parts.username), unquote(parts.password or ""))
    return Target(
        url=url, scheme=scheme, host=host, port=port, target=path + (f"?{query}" if query else ""),
        host_header=shown if default else f"{shown}:{port}", userinfo=userinfo, ip=ip,
    )


def allowed_host(host: str, allow_hosts: frozenset[str] | set[str]) -> bool:
    return host.lower().rstrip(".") in {h.strip().lower().rstrip(".").strip("[]") for h in allow_hosts}


async def addresses(t: Target, allow_hosts: frozenset[str] | set[str] = frozenset()) -> list[tuple]:
    """The (family, sockaddr) pairs to try for `t`, every one checked; Refused when any answer is
    not public (unless the host is allow-listed) or the name does not resolve."""
    skip = allowed_host(t.host, allow_hosts)
    if t.ip is not None:
        if not skip and not is_public(t.ip):
            raise Refused(BLOCKED)
        fam = socket.AF_INET6 if t.ip.version == 6 else socket.AF_INET
        return [(fam, (str(t.ip), t.port, 0, 0) if fam == socket.AF_INET6 else (str(t.ip), t.port))]
    try:
        infos = await trio.socket.getaddrinfo(t.host, t.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError):
        raise Refused(f"fetch error: cannot resolve {t.host}", "dns") from None
    out: list[tuple] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        if not skip and not is_public(ip):
            raise Refused(BLOCKED)  # one private answer is enough: the resolver may hand it out next
        if (family, sockaddr) not in out:
            out.append((family, sockaddr))
    if not out:
        raise Refused(f"fetch error: cannot resolve {t.host}", "dns")
    return out
