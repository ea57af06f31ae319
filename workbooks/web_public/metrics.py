"""The public plane's own figures (requests by status, durations, bytes sent, page cache) as Prometheus text.

Requests, bytes and durations are counted in a shared per-process file (`workbooks.procstats`), so
/metrics on any public process reports every process of the plane (label `pid`, and `pid="retired"`
for processes since gone) and the plane's totals (`wb_public_plane_*`), the same wherever a scrape
lands. The page cache is each process's own: its figures are the answering process's (label `pid`).
`CountResponses` is an ASGI layer outside the fast path, so pages served without entering Quart
are counted too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from workbooks.procstats import CountResponses, PlaneStats, prometheus_lines, read_plane

__all__ = ["CountResponses", "PublicMetrics", "prometheus_text"]


class PublicMetrics:
    """This process's counters (`stats`, what CountResponses records into) and its start time."""

    def __init__(self, data_dir) -> None:
        self.data_dir = Path(data_dir)
        self.stats = PlaneStats.open(self.data_dir, "public")
        self.started = time.time()

    # CountResponses(inner, metrics) records through this
    def record(self, status: int, nbytes: int, seconds: float) -> None:
        self.stats.record(status, nbytes, seconds)

    def close(self) -> None:
        self.stats.close()


def prometheus_text(metrics: PublicMetrics, cache) -> str:
    """Prometheus text exposition (format 0.0.4): the plane's request figures and this process's
    cache. Reads the plane's counter files: blocking, call it from a thread."""
    body = prometheus_lines("wb_public", read_plane(metrics.data_dir, "public"))
    lbl = f'pid="{os.getpid()}"'
    lines = [
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
    return body + "\n".join(lines) + "\n"
