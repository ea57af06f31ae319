"""What the public plane knows: Host → workbook, and the published pages held in memory.

Pages come from the SQLite index, where a deploy put them already rendered and gzipped; this
process keeps them in memory and serves the same bytes to every request. The cache is dropped
whenever SQLite's `data_version` moves (another process committed: a deploy, a domain, a
variable), which costs one pragma per request and makes a deploy visible at once. It is bounded
in bytes (`WB_PAGE_CACHE_MB`, default 64, per process), least recently used pages first out.
Which workbook a host names is `workbooks.store.hosts`' answer: one workbook per host.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from email.utils import formatdate
from functools import lru_cache

from workbooks.store import Store
from workbooks.store.hosts import HostRegistry, automatic_target, base_of, primary_tenant, public_bases
from workbooks.store.names import is_ip_host as _is_ip_host, normalize_host

CACHE_CONTROL = "public, max-age=60"
_SCRIPT_RE = re.compile(rb"<script\b(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script\s*>", re.S | re.I)
# The page cache is bounded in bytes (both encodings of every page it holds), per process.
PAGE_CACHE_MB = float(os.environ.get("WB_PAGE_CACHE_MB", "64"))
ENTRY_OVERHEAD = 512  # headers, keys and the entry itself: what a cached "not published" costs too


def _hashes(pattern: re.Pattern, html: bytes) -> set[str]:
    return {base64.b64encode(hashlib.sha256(m).digest()).decode() for m in pattern.findall(html)}


def csp_for(page: bytes) -> str:
    """The header CSP of a stored page: the page's own policy (`workbooks.page.page_csp`).

    The math script is allowed only on a page that carries the shell's math script; everything
    else inline that came with the document stays blocked, as the page's <meta> says.
    """
    from workbooks.page import header_csp

    return header_csp(_math_hash() in _hashes(_SCRIPT_RE, page))


@lru_cache(maxsize=1)
def _math_hash() -> str:
    from workbooks.page import math_js

    return base64.b64encode(hashlib.sha256(math_js().encode("utf-8")).digest()).decode()


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


class PageCache:
    """Published pages (and "not published" answers) in LRU order, bounded in bytes."""

    def __init__(self, limit_bytes: int):
        self.limit = max(0, int(limit_bytes))
        self._items: OrderedDict[tuple[str, str], tuple[Page | None, int]] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    @staticmethod
    def cost(page: Page | None) -> int:
        if page is None:
            return ENTRY_OVERHEAD
        return len(page.body) + len(page.body_gz) + ENTRY_OVERHEAD + sum(len(k) + len(v) for k, v in page.headers)

    def get(self, key: tuple[str, str]) -> tuple[bool, Page | None]:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return False, None
        self._items.move_to_end(key)
        self.hits += 1
        return True, item[0]

    def put(self, key: tuple[str, str], page: Page | None) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        size = self.cost(page)
        if size > self.limit:
            return  # bigger than the whole cache: served from the index every time
        while self._items and self.bytes + size > self.limit:
            _, (_, freed) = self._items.popitem(last=False)
            self.bytes -= freed
            self.evictions += 1
        self._items[key] = (page, size)
        self.bytes += size

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)


class PublicSite:
    """Host → (tenant, workbook), and that workbook's page, feed rows and sitemap facts.

    Every host serves exactly one workbook: a verified claimed host its workbook, an automatic
    name (`<workbook>.<tenant>.<base>`, the primary tenant's `<workbook>.<base>`) the workbook it
    names. Nothing here lists or serves another workbook of the tenant.
    """

    def __init__(self, store: Store, cache_bytes: int | None = None):
        self.store = store
        self.hosts = HostRegistry(store)
        self.bases = public_bases()
        self.primary = primary_tenant()
        self._version: int | None = None
        self.cache = PageCache(int(PAGE_CACHE_MB * 1024 * 1024) if cache_bytes is None else cache_bytes)
        self._hosts: dict[str, tuple[str, str] | None] = {}
        self._changes: dict[tuple[str, str], tuple[str | None, list]] = {}
        self.loaded_at = time.time()

    def fresh(self) -> None:
        """Drop everything cached if any other connection committed since the last check."""
        v = self.store.data_version()
        if v != self._version:
            self._version = v
            self.cache.clear()
            self._hosts.clear()

    def resolve(self, host_header: str | None) -> tuple[str, str]:
        """(tenant, workbook) a Host header names (whether it is published is `page()`'s answer)."""
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
        if base_of(host, self.bases) is not None:
            target = automatic_target(host, self.bases, self.primary)  # never a claim under a base
        else:
            target = self.hosts.resolve(host)
        if len(self._hosts) > 10000:
            self._hosts.clear()
        self._hosts[key] = target
        if target is None:
            raise UnknownHost(host)
        return target

    def page(self, tenant: str, wid: str) -> Page | None:
        k = (tenant, wid)
        hit, p = self.cache.get(k)
        if hit:
            return p
        row = self.store.published(tenant, wid)
        p = make_page(tenant, wid, row) if row else None
        self.cache.put(k, p)
        return p

    def changes(self, tenant: str, wid: str, gitstore_factory) -> list:
        """The workbook's own git history (30 newest), re-read only when the tenant's head moved."""
        head = self.store.head(tenant)
        cached = self._changes.get((tenant, wid))
        if cached is not None and cached[0] == head:
            return cached[1]
        rows = gitstore_factory(tenant).log(30, path=f"{wid}.org") if head else []
        if len(self._changes) > 1000:
            self._changes.clear()
        self._changes[(tenant, wid)] = (head, rows)
        return rows
