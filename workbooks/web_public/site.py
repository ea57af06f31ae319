"""What the public plane knows: Host → workbook, and the published pages held in memory.

Pages come from the SQLite index, where a deploy put them already rendered and gzipped; this
process keeps them in memory and serves the same bytes to every request. The cache is dropped
whenever SQLite's `data_version` moves (another process committed: a deploy, a domain, a
variable), which costs one pragma per request and makes a deploy visible at once.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass
from email.utils import formatdate

from workbooks.store import Store
from workbooks.store.names import WORKBOOK_RE, is_ip_host as _is_ip_host, normalize_host

BASE_CSP = "default-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'self'"
CACHE_CONTROL = "public, max-age=60"
_STYLE_RE = re.compile(rb"<style\b[^>]*>(.*?)</style\s*>", re.S | re.I)
_SCRIPT_RE = re.compile(rb"<script\b(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script\s*>", re.S | re.I)
MAX_CACHED_PAGES = 2048


def _hashes(pattern: re.Pattern, html: bytes) -> list[str]:
    return ["'sha256-" + base64.b64encode(hashlib.sha256(m).digest()).decode() + "'" for m in pattern.findall(html)]


_shell: tuple[set, set] | None = None


def shell_hashes() -> tuple[set, set]:
    """Hashes of the page shell's own inline <style>/<script> blocks (the same on every page)."""
    global _shell
    if _shell is None:
        from workbooks.page import render_page

        styles: set = set()
        scripts: set = set()
        # the shell's blocks for a plain page and for a page with math (which brings its script)
        for probe in ("", '<span class="math">x</span>'):
            page = render_page(probe, title="", description="").encode("utf-8")
            styles.update(_hashes(_STYLE_RE, page))
            scripts.update(_hashes(_SCRIPT_RE, page))
        _shell = (styles, scripts)
    return _shell


def csp_for(page: bytes) -> str:
    """The plane's CSP, plus hashes for the page shell's own inline <style>/<script>.

    Only blocks that the shell itself emits are allowed: an inline block that came with the
    document (raw HTML in an export block, or a renderer bug) stays blocked by `default-src 'self'`.
    """
    shell_styles, shell_scripts = shell_hashes()
    styles = [h for h in dict.fromkeys(_hashes(_STYLE_RE, page)) if h in shell_styles]
    scripts = [h for h in dict.fromkeys(_hashes(_SCRIPT_RE, page)) if h in shell_scripts]
    csp = BASE_CSP
    if styles:
        csp += "; style-src 'self' " + " ".join(styles)
    if scripts:
        csp += "; script-src 'self' " + " ".join(scripts)
    return csp


@dataclass
class Page:
    """One published page, with its response headers built once."""

    tenant: str
    wid: str
    title: str
    body: bytes
    body_gz: bytes
    etag: bytes
    etag_gz: bytes
    updated_at: float
    headers: list  # [(b"name", b"value")] shared by both encodings
    sha: str


def make_page(tenant: str, wid: str, row: dict) -> Page:
    etag = row["etag"].encode()
    etag_gz = etag[:-1] + b'-gz"'
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-security-policy", csp_for(row["page"]).encode()),
        (b"cache-control", CACHE_CONTROL.encode()),
        (b"vary", b"Accept-Encoding"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"last-modified", formatdate(row["updated_at"], usegmt=True).encode()),
    ]
    return Page(tenant, wid, row["meta"].get("title") or wid, row["page"], row["page_gz"], etag, etag_gz,
                row["updated_at"], headers, row["sha"])


class UnknownHost(Exception):
    pass


class BadHost(Exception):
    pass


class PublicSite:
    def __init__(self, store: Store):
        self.store = store
        self._version: int | None = None
        self._pages: dict[tuple[str, str], Page | None] = {}
        self._hosts: dict[str, tuple[str, str] | None] = {}
        self._changes: dict[str, tuple[str | None, list]] = {}
        self.loaded_at = time.time()

    def fresh(self) -> None:
        """Drop everything cached if any other connection committed since the last check."""
        v = self.store.data_version()
        if v != self._version:
            self._version = v
            self._pages.clear()
            self._hosts.clear()

    def resolve(self, host_header: str | None) -> tuple[str, str]:
        """(tenant, workbook) for a Host header: a registered domain wins, else the leftmost label."""
        if host_header is None:
            raise BadHost("no Host header")
        key = host_header.lower()
        hit = self._hosts.get(key, False)
        if hit is not False:
            if hit is None:
                raise UnknownHost(key)
            return hit
        host = normalize_host(host_header)
        if host is None:
            if _is_ip_host(host_header):
                self._hosts[key] = None
                raise UnknownHost(key)  # a valid Host, just not a name: nothing is published there
            raise BadHost(host_header)
        target = self.store.resolve_domain(host)
        if target is None and "." in host:
            label = host.split(".", 1)[0]
            if WORKBOOK_RE.match(label):
                tenant = self.store.tenant_of_label(label)
                if tenant is not None:
                    target = (tenant, label)
        if len(self._hosts) > 10000:
            self._hosts.clear()
        self._hosts[key] = target
        if target is None:
            raise UnknownHost(host)
        return target

    def page(self, tenant: str, wid: str) -> Page | None:
        k = (tenant, wid)
        if k in self._pages:
            return self._pages[k]
        row = self.store.published(tenant, wid)
        p = make_page(tenant, wid, row) if row else None
        if len(self._pages) >= MAX_CACHED_PAGES:
            self._pages.clear()
        self._pages[k] = p
        return p

    def changes(self, tenant: str, gitstore_factory) -> list:
        """The tenant's git log (30 newest), re-read only when the tenant's head moved."""
        head = self.store.head(tenant)
        cached = self._changes.get(tenant)
        if cached is not None and cached[0] == head:
            return cached[1]
        rows = gitstore_factory(tenant).log(30) if head else []
        self._changes[tenant] = (head, rows)
        return rows

