"""Prometheus text from the supervisor's status, the control plane's request counts, and the runs' telemetry.

Requests, bytes and durations are counted per process in a shared file (`workbooks.procstats`), so
whichever control process answers /metrics reports every process of the plane (label `pid`, and
`pid="retired"` for processes since gone) and the plane's totals (`wb_control_plane_*`).
"""

from __future__ import annotations

import os
import time
from collections import Counter

from workbooks.procstats import PlaneSnapshot, prometheus_lines, read_plane

__all__ = ["plane_snapshot", "prometheus_text", "run_metrics"]


def _esc(v: object) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def plane_snapshot(data_dir) -> PlaneSnapshot:
    """Every control process's counters (blocking file reads: call it from a thread)."""
    return read_plane(data_dir, "control")


def prometheus_text(status: dict | list | None, snapshot: PlaneSnapshot, started: float, own_only: bool = False) -> str:
    lines = [prometheus_lines("wb_control", snapshot).rstrip("\n")]
    pid = os.getpid()
    lines += [
        "# HELP wb_control_uptime_seconds Uptime of this control-plane process.",
        "# TYPE wb_control_uptime_seconds gauge",
        f'wb_control_uptime_seconds{{pid="{pid}"}} {time.time() - started:.3f}',
    ]
    if own_only:
        return "\n".join(lines) + "\n"
    children = []
    if isinstance(status, dict):
        children = status.get("children") or []
    elif isinstance(status, list):
        children = status
    lines += [
        "# HELP wb_supervisor_up Whether the supervisor answered.",
        "# TYPE wb_supervisor_up gauge",
        f"wb_supervisor_up {1 if status is not None else 0}",
        "# HELP wb_child_up Whether a supervised child is running.",
        "# TYPE wb_child_up gauge",
    ]
    for c in children:
        if not isinstance(c, dict):
            continue
        lbl = f'id="{_esc(c.get("id", ""))}",group="{_esc(c.get("group") or "")}"'
        lines.append(f"wb_child_up{{{lbl}}} {1 if c.get('state') == 'running' else 0}")
    lines += ["# HELP wb_child_restarts_total Restarts of a supervised child.", "# TYPE wb_child_restarts_total counter"]
    for c in children:
        if isinstance(c, dict):
            lbl = f'id="{_esc(c.get("id", ""))}",group="{_esc(c.get("group") or "")}"'
            lines.append(f"wb_child_restarts_total{{{lbl}}} {int(c.get('restarts') or 0)}")
    lines += ["# HELP wb_child_uptime_seconds Uptime of a supervised child.", "# TYPE wb_child_uptime_seconds gauge"]
    for c in children:
        if isinstance(c, dict) and c.get("uptime_s") is not None:
            lbl = f'id="{_esc(c.get("id", ""))}",group="{_esc(c.get("group") or "")}"'
            lines.append(f"wb_child_uptime_seconds{{{lbl}}} {float(c['uptime_s']):.3f}")
    groups: Counter = Counter(str(c.get("group") or "") for c in children if isinstance(c, dict))
    lines += ["# HELP wb_group_children Supervised children per group.", "# TYPE wb_group_children gauge"]
    for grp, n in sorted(groups.items()):
        lines.append(f'wb_group_children{{group="{_esc(grp)}"}} {n}')
    return "\n".join(lines) + "\n"


def run_metrics(data_dir) -> str:
    """Runs by status, step durations by lane, scheduler lag (workbooks.telemetry.prom)."""
    from workbooks.telemetry.prom import telemetry_metrics

    return telemetry_metrics(data_dir)
