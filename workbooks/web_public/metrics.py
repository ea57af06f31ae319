"""The public plane's own figures (requests by status, bytes sent, page cache) as Prometheus text.

Each public process counts for itself (`pid` label), like the control plane's processes do; a
scraper sums them. `CountResponses` is an ASGI layer outside the fast path, so pages served
without entering Quart are counted too.
"""

from __future__ import annotations

import os
import time
from collections import Counter


class PublicMetrics:
    def __init__(self) -> None:
        self.requests: Counter = Counter()
        self.bytes_sent = 0
        self.started = time.time()


class CountResponses:
    """ASGI middleware: count every response's status and body bytes."""

    def __init__(self, inner, metrics: PublicMetrics):
        self.inner = inner
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        m = self.metrics

        async def counting_send(message):
            t = message["type"]
            if t == "http.response.start":
                m.requests[int(message["status"])] += 1
            elif t == "http.response.body":
                m.bytes_sent += len(message.get("body", b""))
            await send(message)

        return await self.inner(scope, receive, counting_send)


def prometheus_text(metrics: PublicMetrics, cache) -> str:
    """Prometheus text exposition (format 0.0.4) of this process's figures."""
    pid = os.getpid()
    lbl = f'pid="{pid}"'
    lines = [
        "# HELP wb_public_requests_total Responses of this public-plane process, by status.",
        "# TYPE wb_public_requests_total counter",
    ]
    for code, n in sorted(metrics.requests.items()):
        lines.append(f'wb_public_requests_total{{{lbl},status="{code}"}} {n}')
    lines += [
        "# HELP wb_public_bytes_sent_total Response body bytes sent by this process.",
        "# TYPE wb_public_bytes_sent_total counter",
        f"wb_public_bytes_sent_total{{{lbl}}} {metrics.bytes_sent}",
        "# HELP wb_public_page_cache_hits_total Page lookups answered from memory.",
        "# TYPE wb_public_page_cache_hits_total counter",
        f"wb_public_page_cache_hits_total{{{lbl}}} {cache.hits}",
        "# HELP wb_public_page_cache_misses_total Page lookups that read the index.",
        "# TYPE wb_public_page_cache_misses_total counter",
        f"wb_public_page_cache_misses_total{{{lbl}}} {cache.misses}",
        "# HELP wb_public_page_cache_evictions_total Pages dropped to stay within the cache's bytes.",
        "# TYPE wb_public_page_cache_evictions_total counter",
        f"wb_public_page_cache_evictions_total{{{lbl}}} {cache.evictions}",
        "# HELP wb_public_page_cache_bytes Bytes the page cache holds (both encodings of each page).",
        "# TYPE wb_public_page_cache_bytes gauge",
        f"wb_public_page_cache_bytes{{{lbl}}} {cache.bytes}",
        "# HELP wb_public_page_cache_limit_bytes The page cache's bound (WB_PAGE_CACHE_MB).",
        "# TYPE wb_public_page_cache_limit_bytes gauge",
        f"wb_public_page_cache_limit_bytes{{{lbl}}} {cache.limit}",
        "# HELP wb_public_page_cache_entries Entries in the page cache.",
        "# TYPE wb_public_page_cache_entries gauge",
        f"wb_public_page_cache_entries{{{lbl}}} {len(cache)}",
        "# HELP wb_public_uptime_seconds Uptime of this public-plane process.",
        "# TYPE wb_public_uptime_seconds gauge",
        f"wb_public_uptime_seconds{{{lbl}}} {time.time() - metrics.started:.3f}",
    ]
    return "\n".join(lines) + "\n"
