"""Operator verbs: `wbx serve`, `wbx worker`, `wbx ops status|restart|scale|drain|undrain|keys|metrics`.

Every `ops` verb but `keys` is one round trip to the supervisor's control endpoint (found from
the data dir); when nothing answers there the verb exits 3 (unreachable) with a hint.
"""

from __future__ import annotations

import json
import os
import time

from workbooks.cli.output import Output, Style
from workbooks.errors import Unreachable, UsageError, WorkbooksError


def _data(ns):
    from workbooks.pool.endpoints import data_dir

    return data_dir(getattr(ns, "data", None))


def _control(ns):
    from workbooks.pool.endpoints import supervisor_endpoint

    return getattr(ns, "endpoint", None) or supervisor_endpoint(_data(ns))


def _request(ns, op: str, timeout: float = 10.0, **args):
    from workbooks.supervisor import ControlClient

    ep = _control(ns)
    path = ep[len("ipc://"):] if ep.startswith("ipc://") else None
    if path is not None and not os.path.exists(path):
        raise Unreachable(f"no supervisor is running for data dir {_data(ns)} (no control socket at {path})",
                          hint="start it with `wbx serve` (or `make serve`), or pass --data / set WB_DATA")
    try:
        return ControlClient(ep, timeout=timeout).request(op, **args)
    except Unreachable as e:
        raise Unreachable(f"the supervisor at {ep} did not answer: {e.message}",
                          hint="is `wbx serve` running? check its logs") from None


# -- serve / worker -------------------------------------------------------------------------------


class ServeInUse(WorkbooksError):
    """`wbx serve` cannot start: the data dir or a port is taken (EX_CONFIG, like the supervisor)."""

    code = "in_use"
    exit_code = 78
    http_status = 409


def cmd_serve(ns) -> Output:
    from workbooks import serve

    try:
        cfg = serve.config(ns.data, workers=ns.workers, spares=ns.spares, heartbeat_ms=ns.heartbeat_ms,
                           max_queue=ns.max_queue, client_tcp=ns.client_tcp or None, worker_tcp=ns.worker_tcp or None,
                           max_restarts=ns.max_restarts, max_seconds=ns.max_seconds, runners=ns.runners,
                           runner_tcp=ns.runner_tcp or None)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if cfg.max_restarts < 0 or not cfg.max_seconds > 0:
        raise UsageError("--max-restarts must be >= 0 and --max-seconds > 0")
    if ns.no_web:
        cfg.web = False
    if cfg.workers < 0:
        raise UsageError("--workers must be >= 0")
    if not 0 <= cfg.spares <= 64:
        raise UsageError("--spares (WB_POOL_SPARES) must be within 0..64")
    if cfg.runners is not None and not 0 <= cfg.runners <= 256:
        raise UsageError("--runners (WB_RUNNERS) must be within 0..256")
    if cfg.runner_queue < 1:
        raise UsageError("WB_RUNNER_QUEUE must be >= 1")
    # web planes (read by workbooks.web_control.specs)
    for attr in ("control_procs", "public_procs", "control_addr", "public_addr"):
        if getattr(ns, attr, None) is not None:
            setattr(cfg, attr, getattr(ns, attr))
    if getattr(ns, "control_procs", None) is not None and ns.control_procs < 1 or \
            getattr(ns, "public_procs", None) is not None and ns.public_procs < 1:
        raise UsageError("--control-procs and --public-procs must be >= 1")
    if (cfg.client_tcp or cfg.worker_tcp or cfg.runner_tcp) and not (cfg.data / "keys" / "server.key_secret").exists():
        raise UsageError("tcp endpoints use CURVE and need keys", hint="run `wbx ops keys` first")
    try:
        rc = serve.run(cfg)
    except serve.InUse as e:
        raise ServeInUse(str(e)) from None
    except ValueError as e:  # e.g. a bad --control/--public address
        raise UsageError(str(e)) from None
    # stdout carries log records only, so the last line is one too (role and id included).
    return Output(data={"event": "serve_stopped", "role": "supervisor", "id": "supervisor", "stopped": True,
                        "exit_code": rc}, exit_code=rc,
                  human=lambda d, st: f"wbx serve stopped (exit {d['exit_code']})")


def cmd_worker(ns) -> Output:
    from workbooks.pool import endpoints as E
    from workbooks.pool.worker import Worker, curve_from_files

    runner = ns.role == "runner"
    if ns.heartbeat_ms is not None and not 50 <= ns.heartbeat_ms <= 60_000:
        raise UsageError("--heartbeat-ms must be within 50..60000")
    hb = {} if ns.heartbeat_ms is None else {"heartbeat_ms": ns.heartbeat_ms}
    endpoint = ns.connect or (E.runner_worker_endpoint(_data(ns)) if runner else E.worker_endpoint(_data(ns)))
    curve = None
    if endpoint.startswith("tcp://"):
        kd = E.keys_dir(_data(ns))
        server_key = ns.server_key or str(kd / "server.key")
        client_key = ns.client_key or str(kd / "client.key_secret")
        for label, path in (("--server-key", server_key), ("--client-key", client_key)):
            if not os.path.exists(path):
                raise UsageError(f"{label} {path} does not exist",
                                 hint="copy server.key and a client .key_secret made by `wbx ops keys` from the pool's host")
        try:
            curve = curve_from_files(server_key, client_key)
        except (ValueError, OSError) as e:
            raise UsageError(f"bad CURVE key file: {e}") from None
    elif not endpoint.startswith("ipc://"):
        raise UsageError("--connect takes tcp://HOST:PORT (or ipc://PATH)")
    if runner:  # a workflow runner (workbooks.workflow.worker): steps instead of kernel calls
        from workbooks.workflow.worker import RunnerWorker, load_step_fn

        try:
            step_fn = load_step_fn()
        except (ImportError, AttributeError, ValueError) as e:
            raise UsageError(f"WB_RUNNER_STEP_FN: {e}") from None
        rc = RunnerWorker(endpoint, data=_data(ns), step_fn=step_fn, child_id=ns.id or None, curve=curve, **hb).run()
    else:
        rc = Worker(endpoint, child_id=ns.id or None, curve=curve, **hb).run()
    return Output(data={"stopped": True, "exit_code": rc}, exit_code=rc,
                  human=lambda d, st: "worker stopped")


# -- ops ------------------------------------------------------------------------------------------


def _age(ts) -> str:
    if ts is None:
        return "-"
    s = max(0.0, float(ts))
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{s / 60:.1f}m"
    return f"{s / 3600:.1f}h"


def _mb(n) -> str:
    return "-" if not n else f"{n / (1 << 20):.0f}MB"


def merge_status(status: dict, pool: dict | None, runners: dict | None = None) -> dict:
    """Children from the supervisor, each worker joined with the broker's figures for it (and each
    workflow runner with the runner broker's, when `runners` is given)."""
    by_child = {}
    remote = []
    for w in (pool or {}).get("workers", []):
        if w.get("remote"):
            remote.append(w)
        by_child.setdefault(w.get("child_id"), []).append(w)
    by_runner: dict = {}
    for w in (runners or {}).get("workers", []):
        by_runner.setdefault(w.get("child_id"), []).append(w)
    children = []
    for c in status.get("children", []):
        c = dict(c)
        if c.get("group") in ("worker", "spare", "runner"):
            ws = (by_runner if c.get("group") == "runner" else by_child).get(c["id"], [])
            w = next((x for x in ws if x.get("pid") == c.get("pid")), ws[0] if ws else None)
            c["pool"] = None if w is None else {
                k: w.get(k) for k in ("state", "served", "in_flight", "last_heartbeat_at", "last_heartbeat_age_s",
                                      "rss_bytes", "wasm_bytes", "errors", "module", "ready_ms", "role", "covering")
            }
        children.append(c)
    out = {"supervisor": status.get("supervisor"), "groups": status.get("groups"), "children": children}
    if pool is not None:
        out["pool"] = {
            "queue_depth": pool.get("queue_depth"),
            "max_queue": pool.get("max_queue"),
            "errors": pool.get("errors"),
            "retries": pool.get("retries"),
            "workers_lost": pool.get("lost_recent"),
            "spares": pool.get("spares"),
            "remote_workers": remote,
            "auth": pool.get("auth"),
            "bulk": pool.get("bulk"),
        }
    else:
        out["pool"] = None
    if any(c.get("id") == "runner-broker" for c in status.get("children", [])):
        out["runners"] = None if runners is None else {
            "queue_depth": runners.get("queue_depth"),
            "max_queue": runners.get("max_queue"),
            "errors": runners.get("errors"),
            "lost": runners.get("lost_recent"),
            "remote_runners": [w for w in runners.get("workers", []) if w.get("remote")],
            "auth": runners.get("auth"),
        }
    return out


def _status_table(d: dict, st: Style) -> str:
    sup = d.get("supervisor") or {}
    lines = [st.bold(f"supervisor pid {sup.get('pid')}  up {_age(sup.get('uptime_s'))}  "
                     f"restarts in window {sup.get('restarts_in_window')}/{sup.get('max_restarts')} per {sup.get('max_seconds')}s")]
    head = f"{'ID':<13} {'PID':>7} {'STATE':<16} {'UP':>7} {'RESTARTS':>8}  {'SERVED':>8} {'INFL':>4} {'HB':>6} {'MEM':>6}  LAST EXIT"
    lines.append(st.dim(head))
    for c in d.get("children", []):
        p = c.get("pool") or {}
        last = c.get("last_exit") or {}
        last_s = "-"
        if last:
            last_s = f"{last.get('reason')} ({_age(time.time() - last['at'])} ago)" if last.get("at") else str(last.get("reason"))
        state = c.get("state") or "?"
        if p.get("state") in ("draining", "leaving", "standby"):
            state = p["state"]
        if p.get("covering"):
            state = f"covers {p['covering']}"
        colour = (st.green if state in ("running", "standby") else
                  st.yellow if state in ("starting", "restarting", "draining") or state.startswith("covers") else st.red)
        pool_cols = (f"{p.get('served', '-'):>8} {p.get('in_flight', '-'):>4} {_age(p.get('last_heartbeat_age_s')):>6} "
                     f"{_mb(p.get('rss_bytes')):>6}") if c.get("group") in ("worker", "spare", "runner") else f"{'':>8} {'':>4} {'':>6} {'':>6}"
        lines.append(f"{c['id']:<13} {str(c.get('pid') or '-'):>7} {colour(f'{state:<16}')} {_age(c.get('uptime_s')):>7} "
                     f"{c.get('restarts', 0):>8}  {pool_cols}  {last_s}")
    pool = d.get("pool")
    if pool is None:
        lines.append(st.red("broker: not answering"))
    else:
        lines.append(f"queue {pool.get('queue_depth')}/{pool.get('max_queue')}  retries {pool.get('retries')}  "
                     f"errors {json.dumps(pool.get('errors') or {}, sort_keys=True)}")
        bulk = pool.get("bulk") or {}
        if bulk.get("dir"):
            lines.append(f"shared-memory bodies in {bulk['dir']}: {bulk.get('requests', 0)} requests, "
                         f"{bulk.get('inlined_for_remote', 0)} inlined for remote workers, {bulk.get('swept', 0)} orphans swept")
        elif pool.get("bulk") is not None:
            lines.append(st.yellow("shared-memory bodies: off (no private directory under /dev/shm); big bodies go through the sockets"))
        for w in pool.get("remote_workers") or []:
            lines.append(f"remote worker {w.get('child_id')} pid {w.get('pid')} on {w.get('host')}: "
                         f"{w.get('state')} served {w.get('served')}")
        auth = pool.get("auth") or {}
        if auth.get("rejected_total"):
            lines.append(st.red(f"CURVE keys rejected: {auth['rejected_total']}"))
            for r in auth.get("recent", [])[-5:]:
                lines.append(st.red(f"  {r.get('key')} from {r.get('address') or '?'}: {r.get('reason')} "
                                    f"({_age(time.time() - r.get('at', time.time()))} ago)"))
        spares = pool.get("spares") or {}
        if spares.get("promotions_total"):
            lines.append(f"spare promotions {spares['promotions_total']}" + "".join(
                f"; {ev.get('spare')} covered {ev.get('covering')} ({_age(time.time() - ev.get('at', time.time()))} ago)"
                for ev in (spares.get("promotions_recent") or [])[-3:]))
        for ev in (pool.get("workers_lost") or [])[-5:]:
            lines.append(st.yellow(f"lost {ev.get('worker')} (pid {ev.get('pid')}): {ev.get('reason')} "
                                   f"({_age(time.time() - ev.get('at', time.time()))} ago)"))
    if "runners" in d:
        r = d["runners"]
        if r is None:
            lines.append(st.red("runner broker: not answering"))
        else:
            lines.append(f"workflow runners: queue {r.get('queue_depth')}/{r.get('max_queue')}  "
                         f"errors {json.dumps(r.get('errors') or {}, sort_keys=True)}")
            for w in r.get("remote_runners") or []:
                lines.append(f"remote runner {w.get('child_id')} pid {w.get('pid')} on {w.get('host')}: "
                             f"{w.get('state')} served {w.get('served')}")
            rejected = (r.get("auth") or {}).get("rejected_total")
            if rejected:
                lines.append(st.red(f"runner CURVE keys rejected: {rejected}"))
            for ev in (r.get("lost") or [])[-5:]:
                lines.append(st.yellow(f"lost runner {ev.get('worker')} (pid {ev.get('pid')}): {ev.get('reason')} "
                                       f"({_age(time.time() - ev.get('at', time.time()))} ago)"))
    return "\n".join(lines)


def cmd_status(ns) -> Output:
    status = _request(ns, "status")
    try:
        pool = _request(ns, "pool_stats", timeout=3.0)
    except WorkbooksError:
        pool = None
    runners = None
    if any(c.get("id") == "runner-broker" for c in status.get("children", [])):
        try:
            runners = _request(ns, "runner_stats", timeout=3.0)
        except WorkbooksError:
            runners = None
    return Output(data=merge_status(status, pool, runners), human=_status_table)


def cmd_restart(ns) -> Output:
    data = _request(ns, "restart", timeout=60.0, id=ns.id)
    return Output(data=data, human=lambda d, st: f"{d['id']} restarted: pid {d.get('pid')} ({d.get('state')})")


def cmd_scale(ns) -> Output:
    if ns.n < 0:
        raise UsageError("N must be >= 0")
    data = _request(ns, "scale", timeout=120.0, group=ns.group, n=ns.n, force=ns.force)
    return Output(data=data, human=lambda d, st: f"{d['group']}: target {d['target']}, running {d.get('current')}"
                  + (f", started {', '.join(d['started'])}" if d.get("started") else "")
                  + (f", stopped {', '.join(d['stopped'])}" if d.get("stopped") else ""))


def cmd_drain(ns) -> Output:
    data = _request(ns, "undrain", id=ns.id) if ns.undo else _request(ns, "drain", id=ns.id, force=ns.force)
    verb = "back in service" if ns.undo else "draining (no new requests)"
    return Output(data=data, human=lambda d, st: f"{', '.join(d.get('workers', []))}: {verb}")


def cmd_keys(ns) -> Output:
    from workbooks.pool.endpoints import generate_keys

    if not ns.client.replace("-", "").replace("_", "").isalnum() or ns.client == "server":
        raise UsageError("--client NAME: letters, digits, - and _ only (and not 'server')")
    data = generate_keys(_data(ns), client_name=ns.client, force=ns.force)

    def human(d, st):
        return "\n".join([
            f"keys in {d['dir']} (0600){' — created ' + ', '.join(d['created']) if d['created'] else ' — already there'}",
            f"  server public key  {d['server_public']}",
            f"  {ns.client} public key  {d['client_public']} (authorized)",
            "  a remote worker needs server.key and the client .key_secret:",
            f"    wbx worker --connect tcp://HOST:PORT --server-key {d['server_public_file']} --client-key {d['client_secret_file']}",
        ])

    return Output(data=data, human=human)


def cmd_metrics(ns) -> Output | None:
    """Prometheus text (exposition format 0.0.4) on stdout, on a terminal and in a pipe alike,
    so `wbx ops metrics | promtool check metrics` or a textfile collector work; `--json` gives
    the envelope with the text and the supervisor's own figures as data."""
    import sys

    from workbooks.cli.output import JSON

    data = _request(ns, "metrics")
    if getattr(ns, "mode", None) == JSON:
        return Output(data=data)
    text = data.get("text") if isinstance(data, dict) else None
    if not isinstance(text, str):
        raise WorkbooksError("the supervisor sent no metrics text")
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
    return None


def _common(p) -> None:
    p.add_argument("--data", help="data dir (default $WB_DATA or ./wb-data)")
    p.add_argument("--endpoint", help="supervisor control endpoint (default: from the data dir)")


def register(subs) -> None:
    p = subs.add_parser("serve", help="run the supervisor, the pool broker and one OQL worker per core until SIGTERM")
    p.add_argument("--data", help="data dir (default $WB_DATA or ./wb-data)")
    p.add_argument("--workers", type=int, help="number of workers (default: CPU cores)")
    p.add_argument("--spares", type=int, help="standby workers that cover a crashed worker until its "
                   "replacement is ready (default $WB_POOL_SPARES or 1)")
    p.add_argument("--heartbeat-ms", type=int, help="worker heartbeat interval (default 1000)")
    p.add_argument("--max-queue", type=int, help="requests queued before callers get `overloaded` (default 256)")
    p.add_argument("--max-restarts", type=int, metavar="N", help="restart intensity: give up (exit 70) after more than "
                   "N automatic restarts within --max-seconds (default 10)")
    p.add_argument("--max-seconds", type=float, metavar="S", help="the restart intensity's window in seconds (default 5)")
    p.add_argument("--client-tcp", action="append", default=[], metavar="tcp://HOST:PORT", help="also accept clients here (CURVE)")
    p.add_argument("--worker-tcp", action="append", default=[], metavar="tcp://HOST:PORT", help="also accept remote workers here (CURVE)")
    p.add_argument("--runners", type=int, help="workflow runners (default $WB_RUNNERS, else 1 with the web planes "
                   "and 0 with --no-web)")
    p.add_argument("--runner-tcp", action="append", default=[], metavar="tcp://HOST:PORT",
                   help="also accept remote workflow runners here (CURVE; `wbx worker --role runner`)")
    p.add_argument("--no-web", action="store_true", help="run the pool only, without the web planes")
    p.add_argument("--control-procs", type=int, help="control-plane processes sharing its port (default 1)")
    p.add_argument("--public-procs", type=int, help="public-plane processes sharing its port (default 1)")
    p.add_argument("--control", dest="control_addr", metavar="HOST:PORT", help="control plane address (default 127.0.0.1:4000)")
    p.add_argument("--public", dest="public_addr", metavar="HOST:PORT", help="public plane address (default 127.0.0.1:4001)")
    p.set_defaults(func=cmd_serve)

    p = subs.add_parser("worker", help="run one OQL worker that joins a pool (remote: --connect tcp://HOST:PORT)")
    p.add_argument("--connect", help="the broker's worker endpoint (default: the local pool of --data)")
    p.add_argument("--data", help="data dir holding keys/ (default $WB_DATA or ./wb-data)")
    p.add_argument("--server-key", help="the pool's server.key (public)")
    p.add_argument("--client-key", help="this worker's .key_secret file")
    p.add_argument("--id", help="worker id shown by `wbx ops status` (default worker-PID)")
    p.add_argument("--heartbeat-ms", type=int, help="heartbeat interval: the pool's (`wbx serve --heartbeat-ms`; "
                   "default $WB_POOL_HEARTBEAT_MS or 1000); a worker heartbeating slower is dropped as silent")
    p.add_argument("--role", choices=("oql", "runner"), default="oql",
                   help="oql: render and query (default); runner: run workflow steps (connect to --runner-tcp)")
    p.set_defaults(func=cmd_worker)

    ops = subs.add_parser("ops", help="operate a running `wbx serve`: status, restart, scale, drain, keys, metrics")
    osubs = ops.add_subparsers(dest="ops_verb", required=True, parser_class=type(ops))

    p = osubs.add_parser("status", help="children with pid, state, uptime, restarts, last exit; workers' requests, heartbeat, memory")
    _common(p)
    p.set_defaults(func=cmd_status)

    p = osubs.add_parser("restart", help="restart a child; a worker's replacement starts first, then the old one drains")
    p.add_argument("id", help="child id (see `wbx ops status`)")
    _common(p)
    p.set_defaults(func=cmd_restart)

    p = osubs.add_parser("scale", help="run N workers (refused above what the machine can hold, or 0, without --force)")
    p.add_argument("n", type=int, metavar="N")
    p.add_argument("--group", default="worker", help="which group (default worker)")
    p.add_argument("--force", action="store_true", help="scale even above the machine's limit (4 per core, and "
                   "what memory holds) or to no serving worker")
    _common(p)
    p.set_defaults(func=cmd_scale)

    p = osubs.add_parser("drain", help="stop sending new requests to a worker (it finishes what it has)")
    p.add_argument("id", help="worker id")
    p.add_argument("--undo", action="store_true", help="put the worker back in service")
    p.add_argument("--force", action="store_true", help="drain even the last serving worker (a spare then serves)")
    _common(p)
    p.set_defaults(func=cmd_drain)

    p = osubs.add_parser("keys", help="make CURVE keys for tcp endpoints (server + a client/worker key, 0600)")
    p.add_argument("--client", default="client", help="name of the client key to make (default client)")
    p.add_argument("--force", action="store_true", help="replace existing keys")
    p.add_argument("--data", help="data dir (default $WB_DATA or ./wb-data)")
    p.set_defaults(func=cmd_keys)

    p = osubs.add_parser("metrics", help="Prometheus text: workers, restarts, queue, latency by op, errors")
    _common(p)
    p.set_defaults(func=cmd_metrics)

