"""How many pool processes this machine can hold: the limit `scale` checks before starting any.

Why: `wbx ops scale 400` would start 400 wasmtime workers and push a small box into swap or the
OOM killer, taking the service down with it. The limit is

    min(PER_CORE x cores, processes of the group now + available memory / memory per process)

where cores are those this process may run on (its CPU affinity, so a cpuset counts), available
memory is the kernel's MemAvailable (or the cgroup's headroom, if lower), and the memory per
process is the largest resident size the pool's processes report (their heartbeats), or
DEFAULT_RSS before any has. An operator who knows better passes `--force` (`force: true`).
"""

from __future__ import annotations

import os

PER_CORE = 4
DEFAULT_RSS = 200 << 20  # before any worker has reported its size


def cores() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(n, quota) if quota else n)


def _cgroup_cpu_quota() -> int | None:
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            return max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return None


def available_memory() -> int | None:
    """Bytes that can still be used without swapping: MemAvailable, bounded by a cgroup limit."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit != "max":
            used = int(open("/sys/fs/cgroup/memory.current").read().strip())
            head = max(0, int(limit) - used)
            avail = head if avail is None else min(avail, head)
    except (OSError, ValueError):
        pass
    return avail


def per_process_rss(pool_stats: dict | None) -> int:
    sizes = [int(w.get("rss_bytes") or 0) for w in (pool_stats or {}).get("workers", []) if not w.get("remote")]
    sizes = [s for s in sizes if s > 0]
    return max(sizes) if sizes else DEFAULT_RSS


def limit(group_now: int, pool_stats: dict | None) -> dict:
    """The most processes the group may have, and the figures it comes from."""
    c = cores()
    rss = per_process_rss(pool_stats)
    avail = available_memory()
    by_cores = PER_CORE * c
    by_memory = None if avail is None else group_now + avail // rss
    most = by_cores if by_memory is None else min(by_cores, by_memory)
    return {"limit": max(1, int(most)), "cores": c, "by_cores": by_cores, "available_bytes": avail,
            "per_process_bytes": rss, "by_memory": by_memory}


def describe(fig: dict) -> str:
    parts = [f"{PER_CORE} x {fig['cores']} cores = {fig['by_cores']}"]
    if fig["by_memory"] is not None:
        parts.append(f"{fig['available_bytes'] >> 20} MB available / ~{fig['per_process_bytes'] >> 20} MB per "
                     f"process + those running = {fig['by_memory']}")
    return f"this machine's limit is {fig['limit']} (the smaller of {'; '.join(parts)})"
