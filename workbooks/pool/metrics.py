"""Pool and supervisor figures in the Prometheus text format (version 0.0.4).

The broker keeps the request figures (latency histograms by op, errors by code, queue depth,
per-worker counters); the supervisor knows the children (current/target workers, restarts and
why). `render()` joins both snapshots into one exposition for the control plane's /metrics.
"""

from __future__ import annotations

import bisect
import math
import re

# Upper bounds in seconds: sub-millisecond resolution for the hot path, up to the deadline cap.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    """A cumulative-on-export latency histogram (counts per bucket, sum, count)."""

    __slots__ = ("counts", "sum", "count")

    def __init__(self):
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def to_dict(self) -> dict:
        return {"buckets": list(BUCKETS), "counts": list(self.counts), "sum": self.sum, "count": self.count}

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding quantile q (what a dashboard would show)."""
        return quantile_from(self.to_dict(), q)


def quantile_from(h: dict, q: float) -> float | None:
    total = h.get("count", 0)
    if not total:
        return None
    rank = q * total
    seen = 0
    for bound, n in zip(list(h["buckets"]) + [math.inf], h["counts"]):
        seen += n
        if seen >= rank:
            return bound
    return math.inf


_label_re = re.compile(r'["\\\n]')


def _esc(value) -> str:
    return _label_re.sub(lambda m: {'"': '\\"', "\\": "\\\\", "\n": "\\n"}[m.group(0)], str(value))


def _labels(**kv) -> str:
    if not kv:
        return ""
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in kv.items()) + "}"


def _num(x) -> str:
    if isinstance(x, float):
        if math.isinf(x):
            return "+Inf" if x > 0 else "-Inf"
        return repr(x)
    return str(x)


class _Out:
    def __init__(self):
        self.lines: list[str] = []
        self.seen: set[str] = set()

    def family(self, name: str, kind: str, help_text: str) -> None:
        if name not in self.seen:
            self.seen.add(name)
            self.lines.append(f"# HELP {name} {help_text}")
            self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value, **labels) -> None:
        self.lines.append(f"{name}{_labels(**labels)} {_num(value)}")

    def histogram(self, name: str, h: dict, **labels) -> None:
        cum = 0
        for bound, n in zip(h["buckets"], h["counts"]):
            cum += n
            self.sample(f"{name}_bucket", cum, **labels, le=_num(float(bound)))
        self.sample(f"{name}_bucket", h["count"], **labels, le="+Inf")
        self.sample(f"{name}_sum", float(h["sum"]), **labels)
        self.sample(f"{name}_count", h["count"], **labels)


def render(supervisor_status: dict | None, pool_stats: dict | None, worker_group: str = "worker",
           supervisor_metrics: dict | None = None, *, runners: bool = False, runner_stats: dict | None = None) -> str:
    """Prometheus text from the supervisor's `status` (+ `metrics`) snapshots and the broker's `stats`;
    with `runners` (a runner broker runs) also the workflow runners' figures from its `stats`."""
    o = _Out()
    children = (supervisor_status or {}).get("children", [])
    if supervisor_status is not None:
        workers = [c for c in children if c.get("group") == worker_group]
        running = [c for c in workers if c.get("state") == "running"]
        groups = supervisor_status.get("groups") or {}
        target = (groups.get(worker_group) or {}).get("target", len(workers))
        o.family("wb_pool_workers_target", "gauge", "Workers the supervisor is asked to keep running.")
        o.sample("wb_pool_workers_target", target)
        o.family("wb_supervisor_children", "gauge", "Supervised children by group and state.")
        counts: dict[tuple, int] = {}
        for c in children:
            key = (c.get("group") or "", c.get("state") or "")
            counts[key] = counts.get(key, 0) + 1
        for (group, state), n in sorted(counts.items()):
            o.sample("wb_supervisor_children", n, group=group, state=state)
        o.family("wb_supervisor_restarts_total", "counter", "Automatic child restarts, by the exit that caused them.")
        by_reason: dict[str, int] = {}
        if supervisor_metrics and isinstance(supervisor_metrics.get("restarts_by_reason"), dict):
            by_reason = dict(supervisor_metrics["restarts_by_reason"])
        else:  # only the last exit of each child is known
            for c in children:
                if c.get("restarts"):
                    reason = (c.get("last_exit") or {}).get("reason") or "unknown"
                    by_reason[reason] = by_reason.get(reason, 0) + c["restarts"]
        for reason, n in sorted(by_reason.items()):
            o.sample("wb_supervisor_restarts_total", n, reason=reason)
        o.family("wb_supervisor_worker_processes", "gauge", "Worker processes the supervisor has running.")
        o.sample("wb_supervisor_worker_processes", len(running))
    if pool_stats is not None:
        ws = pool_stats.get("workers", [])
        o.family("wb_pool_workers_current", "gauge", "Workers registered with the broker, by state.")
        states: dict[str, int] = {"ready": 0, "busy": 0, "draining": 0}  # + "standby" (spares)
        for w in ws:
            states[w.get("state", "ready")] = states.get(w.get("state", "ready"), 0) + 1
        for state, n in sorted(states.items()):
            o.sample("wb_pool_workers_current", n, state=state)
        o.family("wb_pool_broker_uptime_seconds", "gauge",
                 "Seconds since the broker started, when it took these figures (the clock for their rates).")
        o.sample("wb_pool_broker_uptime_seconds", float((pool_stats.get("broker") or {}).get("uptime_s", 0.0)))
        o.family("wb_pool_queue_depth", "gauge", "Requests waiting for a worker.")
        o.sample("wb_pool_queue_depth", pool_stats.get("queue_depth", 0))
        o.family("wb_pool_queue_capacity", "gauge", "Requests the broker queues before answering overloaded.")
        o.sample("wb_pool_queue_capacity", pool_stats.get("max_queue", 0))
        o.family("wb_pool_requests_total", "counter", "Requests answered, by op and outcome.")
        for op, by in sorted(pool_stats.get("requests", {}).items()):
            for outcome, n in sorted(by.items()):
                o.sample("wb_pool_requests_total", n, op=op, outcome=outcome)
        o.family("wb_pool_request_duration_seconds", "histogram", "Time from a request reaching the broker to its reply, by op.")
        for op, h in sorted(pool_stats.get("latency", {}).items()):
            o.histogram("wb_pool_request_duration_seconds", h, op=op)
        o.family("wb_pool_queue_wait_seconds", "histogram",
                 "Time from a request reaching the broker to its dispatch to a worker, by op.")
        for op, h in sorted((pool_stats.get("queue_wait") or {}).items()):
            o.histogram("wb_pool_queue_wait_seconds", h, op=op)
        o.family("wb_pool_service_seconds", "histogram", "Time from a request's dispatch to a worker to its reply, by op.")
        for op, h in sorted((pool_stats.get("service") or {}).items()):
            o.histogram("wb_pool_service_seconds", h, op=op)
        o.family("wb_pool_busy_seconds_total", "counter",
                 "Seconds workers spent on requests (dispatch to reply), all workers, lost ones included; "
                 "its rate is the number of busy workers.")
        o.sample("wb_pool_busy_seconds_total", float(pool_stats.get("busy_seconds", 0.0)))
        o.family("wb_pool_errors_total", "counter", "Typed error replies, by code.")
        for code, n in sorted(pool_stats.get("errors", {}).items()):
            o.sample("wb_pool_errors_total", n, code=code)
        o.family("wb_pool_retries_total", "counter", "Requests re-sent because their worker died.")
        o.sample("wb_pool_retries_total", pool_stats.get("retries", 0))
        o.family("wb_pool_workers_lost_total", "counter", "Workers the broker dropped, by reason.")
        for reason, n in sorted(pool_stats.get("lost_total", {}).items()):
            o.sample("wb_pool_workers_lost_total", n, reason=reason)
        spares = pool_stats.get("spares") or {}
        o.family("wb_pool_spares_standby", "gauge", "Standby spare workers ready to cover a lost worker.")
        o.sample("wb_pool_spares_standby", spares.get("standby", 0))
        o.family("wb_pool_spare_promotions_total", "counter", "Times a spare was put in service in place of a lost worker.")
        o.sample("wb_pool_spare_promotions_total", spares.get("promotions_total", 0))
        bulk = pool_stats.get("bulk") or {}
        o.family("wb_pool_bulk_requests_total", "counter", "Requests whose bodies went through shared memory.")
        o.sample("wb_pool_bulk_requests_total", bulk.get("requests", 0))
        o.family("wb_pool_bulk_inlined_total", "counter", "Shared-memory requests the broker inlined for a remote worker.")
        o.sample("wb_pool_bulk_inlined_total", bulk.get("inlined_for_remote", 0))
        o.family("wb_pool_bulk_swept_total", "counter", "Shared-memory bodies of gone clients removed by the broker.")
        o.sample("wb_pool_bulk_swept_total", bulk.get("swept", 0))
        o.family("wb_pool_auth_rejected_total", "counter", "CURVE handshakes refused (unknown key).")
        o.sample("wb_pool_auth_rejected_total", (pool_stats.get("auth") or {}).get("rejected_total", 0))
        o.family("wb_pool_worker_requests_served_total", "counter", "Requests served, per worker.")
        for w in ws:
            o.sample("wb_pool_worker_requests_served_total", w.get("served", 0), worker=w.get("child_id", w.get("id")))
        o.family("wb_pool_worker_busy_seconds_total", "counter", "Seconds this worker spent on requests (dispatch to reply).")
        for w in ws:
            o.sample("wb_pool_worker_busy_seconds_total", float(w.get("busy_seconds", 0.0)), worker=w.get("child_id", w.get("id")))
        o.family("wb_pool_worker_memory_bytes", "gauge", "Worker resident memory reported in its heartbeat.")
        for w in ws:
            o.sample("wb_pool_worker_memory_bytes", w.get("rss_bytes", 0), worker=w.get("child_id", w.get("id")))
        o.family("wb_pool_worker_heartbeat_age_seconds", "gauge", "Seconds since the worker's last heartbeat.")
        for w in ws:
            o.sample("wb_pool_worker_heartbeat_age_seconds", float(w.get("last_heartbeat_age_s") or 0.0), worker=w.get("child_id", w.get("id")))
    if runners:
        _runner_families(o, runner_stats)
    o.family("wb_up", "gauge", "1 when the figure's source answered.")
    o.sample("wb_up", 1 if supervisor_status is not None else 0, source="supervisor")
    o.sample("wb_up", 1 if pool_stats is not None else 0, source="broker")
    if runners:
        o.sample("wb_up", 1 if runner_stats is not None else 0, source="runner-broker")
    return "\n".join(o.lines) + "\n"


def _runner_families(o: _Out, runner_stats: dict | None) -> None:
    """The workflow runners' broker (`wbx serve`'s runner-broker): see render(runners=True)."""
    if runner_stats is not None:
        ws = runner_stats.get("workers", [])
        o.family("wb_runner_workers_current", "gauge", "Workflow runners registered with the runner broker, by state.")
        states: dict[str, int] = {"ready": 0, "busy": 0, "draining": 0}
        for w in ws:
            states[w.get("state", "ready")] = states.get(w.get("state", "ready"), 0) + 1
        for state, n in sorted(states.items()):
            o.sample("wb_runner_workers_current", n, state=state)
        o.family("wb_runner_queue_depth", "gauge", "Steps waiting for a free runner.")
        o.sample("wb_runner_queue_depth", runner_stats.get("queue_depth", 0))
        o.family("wb_runner_queue_capacity", "gauge", "Steps the runner broker queues before answering overloaded.")
        o.sample("wb_runner_queue_capacity", runner_stats.get("max_queue", 0))
        o.family("wb_runner_steps_total", "counter", "Steps answered by the runner broker, by outcome.")
        for outcome, n in sorted((runner_stats.get("requests", {}).get("step") or {}).items()):
            o.sample("wb_runner_steps_total", n, outcome=outcome)
        o.family("wb_runner_step_duration_seconds", "histogram", "Time from a step reaching the runner broker to its result.")
        h = runner_stats.get("latency", {}).get("step")
        if h:
            o.histogram("wb_runner_step_duration_seconds", h)
        o.family("wb_runner_lost_total", "counter", "Runners the runner broker dropped, by reason.")
        for reason, n in sorted(runner_stats.get("lost_total", {}).items()):
            o.sample("wb_runner_lost_total", n, reason=reason)
        o.family("wb_runner_auth_rejected_total", "counter", "CURVE handshakes refused by the runner broker.")
        o.sample("wb_runner_auth_rejected_total", (runner_stats.get("auth") or {}).get("rejected_total", 0))
        o.family("wb_runner_steps_served_total", "counter", "Steps run, per runner.")
        for w in ws:
            o.sample("wb_runner_steps_served_total", w.get("served", 0), runner=w.get("child_id", w.get("id")))
