"""`wbx serve`: the supervisor with the pool (broker + one worker per core) and, later, the web planes.

Everything has an embedded default so `wbx serve` (and `make serve`) needs no configuration:
data in `$WB_DATA` or `./wb-data`, workers = CPU cores, every endpoint an ipc socket under the
data dir. The process tree is

    supervisor (this process: control endpoint, metrics)
      broker     started first, stopped last; clients and workers meet here
      worker-1..N  one wasmtime instance each; replace-first restarts
      spare-1..S   standby workers (WB_POOL_SPARES, default 1): no requests until one covers a
                   worker that died, until that worker's replacement is READY (see pool.broker)
      runner-broker  the workflow runners' broker (a second Broker, `--role runner`): its own
                   sockets under run/runner/, so a 30 s step never shares a queue with a render
      runner-1..R  workflow runners (workbooks.workflow.worker): steps run here, never in a web
                   process (`--runners R` / WB_RUNNERS; default 1 with the web planes, 0 with
                   --no-web, where nothing on this host submits workflow runs)
      (web planes: see web_children())

Extension point for the web planes: `web_children(cfg)` returns their ChildSpecs, appended after
the pool's by `child_specs(cfg)`; children stop in reverse order, so the web planes stop taking
requests before the workers that serve them go away. `extra_ops(cfg)` is where control-endpoint
ops beyond the supervisor's own are registered.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from workbooks.pool import endpoints as E

if TYPE_CHECKING:
    from workbooks.supervisor import ChildSpec

WORKER_GROUP = "worker"
SPARE_GROUP = "spare"
RUNNER_GROUP = "runner"
RUNNER_BROKER_ID = "runner-broker"
RUNNER_BOOT = "import sys; from workbooks.workflow.worker import main; sys.exit(main())"
# How a worker is started: `-c` rather than `-m workbooks.pool.worker`, because runpy's imports
# cost ~8 ms of every replacement's start-up. The code names the module, so it still shows in ps.
WORKER_BOOT = "import sys; from workbooks.pool.worker import main; sys.exit(main())"
# A pool of N workers plus planes restarts more children than the Supervisor class's default
# (3 in 5 s) expects; 10 in 5 s still stops a crash loop within a second or two.
DEFAULT_MAX_RESTARTS = 10
DEFAULT_MAX_SECONDS = 5.0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r:.40}") from None


@dataclass
class ServeConfig:
    data: Path
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    # standby workers (the serving capacity stays `workers`)
    spares: int = field(default_factory=lambda: _env_int("WB_POOL_SPARES", 1))
    heartbeat_ms: int = int(os.environ.get("WB_POOL_HEARTBEAT_MS", "1000"))
    max_queue: int = int(os.environ.get("WB_POOL_QUEUE", "256"))
    no_workers_ms: int = int(os.environ.get("WB_POOL_NO_WORKERS_MS", "3000"))
    client_tcp: list[str] = field(default_factory=list)  # extra CURVE endpoints for remote clients
    worker_tcp: list[str] = field(default_factory=list)  # extra CURVE endpoints for remote workers
    # workflow runners (None: 1 with the web planes, 0 without; see runner_count)
    runners: int | None = field(default_factory=lambda: _env_int("WB_RUNNERS", None))
    runner_tcp: list[str] = field(default_factory=list)  # extra CURVE endpoints for remote runners
    runner_queue: int = field(default_factory=lambda: _env_int("WB_RUNNER_QUEUE", 64))  # steps waiting for a runner
    # restart intensity: more than max_restarts automatic restarts within max_seconds and the
    # supervisor gives up (exit 70). `wbx serve --max-restarts/--max-seconds`; README "Serving".
    max_restarts: int = DEFAULT_MAX_RESTARTS
    max_seconds: float = DEFAULT_MAX_SECONDS
    worker_ready_timeout_ms: int = 20_000
    worker_shutdown_ms: int = 5_000
    # Interpreter flags and env for workers; set by prepare_workers() (see fast_worker_python).
    worker_python: tuple[list[str], dict[str, str]] | None = None
    web: bool = field(default_factory=lambda: os.environ.get("WB_WEB", "1") not in ("0", "false", "no"))

    @property
    def control_endpoint(self) -> str:
        return E.supervisor_endpoint(self.data)


def config(data=None, **overrides) -> ServeConfig:
    cfg = ServeConfig(data=E.data_dir(data))
    for k, v in overrides.items():
        if v is not None:
            setattr(cfg, k, v)
    return cfg


def runner_count(cfg: ServeConfig) -> int:
    if cfg.runners is None:
        return 1 if cfg.web else 0
    return max(0, cfg.runners)


def runner_broker_spec(cfg: ServeConfig) -> "ChildSpec":
    """The workflow runners' broker: the pool's broker with `--role runner` (see pool.broker)."""
    from workbooks.supervisor import ChildSpec

    argv = [sys.executable, "-m", "workbooks.pool.broker", "--role", "runner", "--data", str(cfg.data),
            "--supervisor", cfg.control_endpoint, "--heartbeat-ms", str(cfg.heartbeat_ms),
            "--max-queue", str(cfg.runner_queue), "--no-workers-ms", str(cfg.no_workers_ms)]
    for ep in cfg.runner_tcp:
        argv += ["--worker-tcp", ep]
    return ChildSpec(id=RUNNER_BROKER_ID, argv=argv, restart="permanent", shutdown=5000, group=None,
                     ready_timeout_ms=10_000, env={"WB_DATA": str(cfg.data)})


def runner_template(cfg: ServeConfig):
    """ChildSpec for a workflow runner with the given id (also the supervisor's template for `scale`)."""
    from workbooks.supervisor import ChildSpec

    # A runner stopped (restart, scale down, wbx serve's stop) finishes the step it runs first: give
    # it the step's wall clock and a little more before SIGKILL. An idle runner stops at once.
    try:
        from workbooks.workflow.types import Limits

        step_s = Limits.from_env().timeout_s
    except Exception:  # a bad WB_STEP_TIMEOUT_S is reported where steps are run
        step_s = 30.0
    shutdown_ms = max(cfg.worker_shutdown_ms, int((step_s + 5) * 1000))

    def make(child_id: str) -> ChildSpec:
        flags, env = cfg.worker_python or ([], {})
        return ChildSpec(
            id=child_id,
            argv=[sys.executable, *flags, "-c", RUNNER_BOOT, "--connect", E.runner_worker_endpoint(cfg.data),
                  "--data", str(cfg.data), "--id", child_id, "--heartbeat-ms", str(cfg.heartbeat_ms)],
            restart="permanent",
            shutdown=shutdown_ms,
            group=RUNNER_GROUP,
            ready_timeout_ms=cfg.worker_ready_timeout_ms,
            replace_first=True,
            env={**env, "WB_DATA": str(cfg.data)},
        )

    return make


def runner_children(cfg: ServeConfig) -> list:
    """The runner broker and its runners; none when there are no runners to serve (no local
    runner and no --runner-tcp endpoint)."""
    n = runner_count(cfg)
    if n == 0 and not cfg.runner_tcp:
        return []
    make = runner_template(cfg)
    return [runner_broker_spec(cfg)] + [make(f"{RUNNER_GROUP}-{i}") for i in range(1, n + 1)]


def broker_spec(cfg: ServeConfig) -> "ChildSpec":
    from workbooks.supervisor import ChildSpec

    argv = [sys.executable, "-m", "workbooks.pool.broker", "--data", str(cfg.data),
            "--supervisor", cfg.control_endpoint, "--heartbeat-ms", str(cfg.heartbeat_ms),
            "--max-queue", str(cfg.max_queue), "--no-workers-ms", str(cfg.no_workers_ms)]
    for ep in cfg.client_tcp:
        argv += ["--client-tcp", ep]
    for ep in cfg.worker_tcp:
        argv += ["--worker-tcp", ep]
    # The broker holds clients' in-flight requests: give it time to answer them on the way out.
    return ChildSpec(id="broker", argv=argv, restart="permanent", shutdown=5000, group=None,
                     ready_timeout_ms=10_000, env={"WB_DATA": str(cfg.data)})


def worker_template(cfg: ServeConfig, *, spare: bool = False):
    """ChildSpec for a worker (or a standby spare) with the given id (also the supervisor's
    template for `scale`)."""
    from workbooks.supervisor import ChildSpec

    def make(child_id: str) -> ChildSpec:
        flags, env = cfg.worker_python or ([], {})
        return ChildSpec(
            id=child_id,
            argv=[sys.executable, *flags, "-c", WORKER_BOOT, "--connect", E.worker_endpoint(cfg.data),
                  "--id", child_id, "--heartbeat-ms", str(cfg.heartbeat_ms), *(["--spare"] if spare else [])],
            restart="permanent",
            shutdown=cfg.worker_shutdown_ms,
            group=SPARE_GROUP if spare else WORKER_GROUP,
            ready_timeout_ms=cfg.worker_ready_timeout_ms,
            replace_first=True,
            env={**env, "WB_DATA": str(cfg.data)},
        )

    return make


def pool_children(cfg: ServeConfig) -> list:
    make = worker_template(cfg)
    make_spare = worker_template(cfg, spare=True)
    return ([broker_spec(cfg)] + [make(f"{WORKER_GROUP}-{i}") for i in range(1, cfg.workers + 1)]
            + [make_spare(f"{SPARE_GROUP}-{i}") for i in range(1, max(0, cfg.spares) + 1)])


FIRST_RUN_READY_MS = 120_000


def web_children(cfg: ServeConfig) -> list:
    """EXTENSION POINT (web planes): return their ChildSpecs; they start after the pool.

    `wbx serve --no-web` (or WB_WEB=0) runs the pool alone (pool tests, a worker-only host).

    Ready means ready: first-run seeding (tenant `dev`, the demo workbook) runs right after the
    control plane and before the public plane, and signals readiness only when it is done, so the
    public plane is started (and can answer /healthz or /readyz) only once the demo is served.
    A seeding that fails or hangs is given up after FIRST_RUN_READY_MS and the public plane
    starts anyway (the failure is in the log).
    """
    if not cfg.web:
        return []
    from workbooks.web_control.specs import web_children as planes

    specs = planes(cfg)
    seed = [s for s in specs if s.id == "first-run"]
    if seed:
        seed[0].ready_timeout_ms = FIRST_RUN_READY_MS
        rest = [s for s in specs if s.id != "first-run"]
        at = next((i for i, s in enumerate(rest) if s.group == "public"), len(rest))
        specs = rest[:at] + seed + rest[at:]
    return specs


def web_templates(cfg: ServeConfig) -> dict:
    """Scale templates for the web planes' groups (none with --no-web)."""
    if not cfg.web:
        return {}
    from workbooks.web_control.specs import web_templates as templates

    return templates(cfg)


def child_specs(cfg: ServeConfig) -> list:
    """Every child of `wbx serve`, in start order (stop order is the reverse)."""
    return pool_children(cfg) + runner_children(cfg) + web_children(cfg)


# -- control-endpoint ops beyond the supervisor's own ---------------------------------------------


def broker_request(cfg: ServeConfig, op: str, timeout: float = 2.0, *, endpoint: str | None = None, **args):
    """One round trip to the broker's control socket (blocking; call from a thread); `endpoint`:
    another broker's (the runner broker's).

    Returns the reply map, or None when the broker does not answer in time.
    """
    import zmq

    from workbooks.actors import wire

    s = zmq.Context.instance().socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(endpoint or E.broker_control_endpoint(cfg.data))
        s.send(wire.pack(wire.make_request(op, args)))
        if not s.poll(int(timeout * 1000)):
            return None
        return wire.unpack(s.recv())
    finally:
        s.close(0)


def extra_ops(cfg: ServeConfig, sup_ref: list) -> dict:
    """Ops on the supervisor's control endpoint that involve the pool.

    - pool_stats: the broker's figures (per-worker served/in flight/heartbeat/memory, queue, auth)
    - metrics: Prometheus text joining supervisor and broker figures (served by the control plane)
    - drain {id} / undrain {id}: stop (resume) routing new requests to a worker
    - kill_worker {id, pid, reason}: the broker's request to kill a worker that went silent; the
      supervisor restarts it and records the reason as its last exit
    """
    import trio

    from workbooks.actors.errors import NoServingWorker, NotFoundError, OverCapacity, UnreachableError
    from workbooks.pool import capacity
    from workbooks.pool import metrics as M

    async def broker(op, endpoint=None, **args):
        reply = await trio.to_thread.run_sync(lambda: broker_request(cfg, op, endpoint=endpoint, **args))
        if reply is None:
            which = "runner-broker" if endpoint else "broker"
            raise UnreachableError(f"the {which} did not answer", hint=f"see `wbx ops status` for the {which} child")
        if not reply.get("ok"):
            err = reply.get("error") or {}
            if err.get("code") == "not_found":
                raise NotFoundError(err.get("message", "not found"))
            raise UnreachableError(err.get("message", "broker error"))
        return reply["data"]

    async def pool_stats(args):
        return await broker("stats")

    async def runner_stats(args):
        """The runner broker's figures (per-runner served/in flight/heartbeat, queue, losses)."""
        if runner_ep is None:
            raise NotFoundError("no runner broker runs: this `wbx serve` has no workflow runners",
                                hint="start it with --runners N (or WB_RUNNERS) or --runner-tcp")
        return await broker("stats", endpoint=runner_ep)

    async def metrics(args):
        sup = sup_ref[0]
        try:
            stats = await broker("stats")
        except Exception:
            stats = None
        figures = sup.metrics()
        rstats = None
        if runner_ep is not None:
            try:
                rstats = await broker("stats", endpoint=runner_ep)
            except Exception:
                rstats = None
        text = M.render(sup.status(), stats, WORKER_GROUP, supervisor_metrics=figures, runners=runner_ep is not None,
                        runner_stats=rstats)
        # `text` for /metrics; the supervisor's own figures stay available as data.
        return {"content_type": "text/plain; version=0.0.4; charset=utf-8", "text": text, "supervisor": figures}

    runner_ep = E.runner_control_endpoint(cfg.data) if runner_children(cfg) else None

    async def which_broker(wid: str):
        """The control endpoint of the broker `wid` is registered with: the OQL pool's (None) or,
        for a workflow runner, the runner broker's."""
        if runner_ep is None:
            return None
        stats = await broker("stats")
        if any(wid in (w.get("child_id"), w.get("id"), str(w.get("pid"))) for w in stats.get("workers", [])):
            return None
        try:
            rstats = await broker("stats", endpoint=runner_ep)
        except UnreachableError:
            return None
        if any(wid in (w.get("child_id"), w.get("id"), str(w.get("pid"))) for w in rstats.get("workers", [])):
            return runner_ep
        return None

    async def drain(args):
        wid = str(args.get("id", ""))
        ep = await which_broker(wid)
        if not args.get("force"):
            stats = await broker("stats", endpoint=ep)
            target = [w for w in stats.get("workers", []) if wid in (w.get("child_id"), w.get("id"), str(w.get("pid")))]
            if target and not serving_after(stats, {w.get("id") for w in target}):
                what = "runner running steps" if ep else "worker serving requests"
                raise NoServingWorker(
                    f"draining {wid} would leave no {what} (a standby spare serves only "
                    "in place of a lost worker)", hint="scale up first, or pass --force (force: true)")
        return await broker("drain", endpoint=ep, id=wid)

    async def scale(args):
        """The supervisor's scale, refused above the machine's capacity or down to no serving
        worker unless `force` (the CLI and the control plane's /api/ops/scale both land here)."""
        group, n, force = args.get("group"), args.get("n"), bool(args.get("force"))
        sup = sup_ref[0]
        if group in (WORKER_GROUP, SPARE_GROUP) and isinstance(n, int) and not isinstance(n, bool) and not force:
            now = sum(1 for c in sup.children_status() if c.get("group") == group and c.get("state") != "stopped")
            try:
                stats = await broker("stats")
            except UnreachableError:
                stats = None
            if n > now:
                fig = capacity.limit(now, stats)
                if n > fig["limit"]:
                    raise OverCapacity(f"{n} {group}s is over what this machine can hold: {capacity.describe(fig)}",
                                       hint="pass --force (force: true) to start them anyway")
            if group == WORKER_GROUP and n == 0:
                raise NoServingWorker("scaling the workers to 0 would leave no worker serving requests",
                                      hint="pass --force (force: true); a standby spare then serves in their place")
        return await sup.scale(group, n)

    async def undrain(args):
        wid = str(args.get("id", ""))
        return await broker("undrain", endpoint=await which_broker(wid), id=wid)

    def kill_worker(args):
        return kill_child(sup_ref[0], str(args.get("id", "")), args.get("pid"), str(args.get("reason") or "killed"))

    return {"pool_stats": pool_stats, "metrics": metrics, "drain": drain, "undrain": undrain,
            "kill_worker": kill_worker, "scale": scale, "runner_stats": runner_stats}


def serving_after(stats: dict, removed_idents: set) -> bool:
    """Would a worker still serve requests with the workers `removed_idents` drained?"""
    for w in stats.get("workers", []):
        if w.get("id") in removed_idents or w.get("state") in ("draining", "leaving"):
            continue
        if w.get("role") == "worker" or w.get("covering"):
            return True
    return False


def kill_child(sup, child_id: str, pid, reason: str) -> dict:
    """SIGKILL a child's current process, recording `reason` as its exit; it restarts per its spec."""
    return sup.kill_child(child_id, reason=reason, pid=pid)


def fast_worker_python() -> tuple[list[str], dict[str, str]]:
    """Start workers with `python -S` and an explicit PYTHONPATH (this process's sys.path).

    Processing site-packages' .pth files is a third of a worker's start-up CPU (~50 ms of ~180
    here), and start-up is what a crash costs: the replacement is READY that much sooner.
    """
    import workbooks

    paths = [str(Path(workbooks.__file__).resolve().parent.parent)]
    paths += [p for p in sys.path if p and os.path.isdir(p) and p not in paths]
    return ["-S"], {"PYTHONPATH": os.pathsep.join(paths)}


def prepare_workers(cfg: ServeConfig) -> dict:
    """Compile oql.wasm into the disk cache once (so workers only deserialize it), and check in
    the same short-lived process that the fast interpreter start works here; fall back if not."""
    flags, env = fast_worker_python()
    for candidate in ((flags, env), ([], {})):
        try:
            r = subprocess.run([sys.executable, *candidate[0], "-c", WORKER_BOOT, "--warm"],
                               env={**os.environ, **candidate[1]}, capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            continue
        if r.returncode == 0:
            cfg.worker_python = candidate
            return {"fast_start": bool(candidate[0])}
    cfg.worker_python = ([], {})
    return {"fast_start": False, "warm": "failed"}  # workers compile the module themselves, only slower


def build_supervisor(cfg: ServeConfig):
    from workbooks.supervisor import Supervisor

    sup_ref: list = []
    sup = Supervisor(
        children=child_specs(cfg),
        max_restarts=cfg.max_restarts,
        max_seconds=cfg.max_seconds,
        control_endpoint=cfg.control_endpoint,
        templates={WORKER_GROUP: worker_template(cfg), SPARE_GROUP: worker_template(cfg, spare=True),
                   **({RUNNER_GROUP: runner_template(cfg)} if runner_children(cfg) else {}), **web_templates(cfg)},
        extra_ops=extra_ops(cfg, sup_ref),
        replace_first_groups=(WORKER_GROUP, SPARE_GROUP, RUNNER_GROUP, *web_templates(cfg)),
    )
    sup_ref.append(sup)
    return sup


class InUse(RuntimeError):
    """What `wbx serve` needs is taken (the data dir by another `wbx serve`, or a port):
    one line saying what and what to do; `wbx serve` exits 78 (EX_CONFIG, as the supervisor's EXIT_CONFIG) at once."""


def _addr_in_use(host: str, port: int) -> str | None:
    """Why (host, port) cannot be listened on, or None. Bound without SO_REUSEPORT, so a
    listener that has it (our own planes) is found too."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the planes do: TIME_WAIT is fine
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return "in use"
            return e.strerror or str(e)
    return None


def preflight(cfg: ServeConfig) -> int | None:
    """Refuse at once (InUse) what would otherwise fail child by child until the restart
    intensity gave up: another `wbx serve` on this data dir, or a port already taken.

    Returns the fd holding the data dir's lock (the supervisor's endpoint lock), for the
    supervisor to keep: a second `wbx serve` started meanwhile is refused here too."""
    from workbooks.supervisor import EndpointInUse, lock_endpoint

    ep = cfg.control_endpoint
    fd = None
    if ep.startswith("ipc://"):
        try:
            fd = lock_endpoint(ep)
        except EndpointInUse:
            raise InUse(f"another `wbx serve` is already running for data dir {cfg.data}: stop it "
                        f"(`wbx ops status --data {cfg.data}` shows it) or start this one with another --data") from None
    try:
        _check_ports(cfg)
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    return fd


def _check_ports(cfg: ServeConfig) -> None:
    wanted: list[tuple[str, str, int, str]] = []
    if cfg.web:
        from workbooks.web_control.specs import settings

        st = settings(cfg)
        wanted += [("control plane", *st["control"], "--control HOST:PORT"),
                   ("public plane", *st["public"], "--public HOST:PORT")]
    for flag, eps in (("--client-tcp", cfg.client_tcp), ("--worker-tcp", cfg.worker_tcp), ("--runner-tcp", cfg.runner_tcp)):
        for ep in eps:
            host, _, port = ep[len("tcp://"):].rpartition(":")
            if host and port.isdigit():
                host = "0.0.0.0" if host == "*" else host.strip("[]")
                wanted.append((f"{flag} endpoint", host, int(port), f"{flag} tcp://HOST:PORT"))
    for what, host, port, flag in wanted:
        if not port:
            continue
        why = _addr_in_use(host, port)
        if why is not None:
            raise InUse(f"{host}:{port} for the {what} is {why}"
                        + (" (by another program or another `wbx serve`)" if why == "in use" else "")
                        + f": free it or choose another address with {flag}")


def run(cfg: ServeConfig) -> int:
    """Run until SIGTERM/SIGINT (or the restart intensity is exceeded); returns the exit status.

    Raises InUse (before anything is started) when the data dir or a port is taken. stdout
    carries only JSON log lines: the supervisor relays its children's (workbooks.log_relay).
    """
    from workbooks import log as wblog
    from workbooks.log_relay import StdoutRelay

    cfg.data.mkdir(parents=True, exist_ok=True)
    os.environ["WB_DATA"] = str(cfg.data)
    lock_fd = preflight(cfg)
    # a person at a terminal gets short lines; anything else (a pipe, a file, WBX_AGENT=1) the JSON
    human = os.isatty(1) and os.environ.get("WBX_AGENT") not in ("1", "true", "yes")
    relay = StdoutRelay(human=human).start()
    try:
        log = wblog.configure("supervisor", sink=relay.put)
        t0 = time.perf_counter()
        warm = prepare_workers(cfg)
        log.info("serve_starting", data=str(cfg.data), workers=cfg.workers, spares=cfg.spares, runners=runner_count(cfg),
                 control=cfg.control_endpoint, clients=E.client_endpoint(cfg.data),
                 max_restarts=cfg.max_restarts, max_seconds=cfg.max_seconds,
                 warm_ms=round((time.perf_counter() - t0) * 1000, 1), **warm)
        sup = build_supervisor(cfg)
        sup.relay = relay
        from workbooks import procstats

        sup.on_exit.append(lambda: procstats.remove_metrics_dir(cfg.data))
        if lock_fd is not None:
            sup.adopt_endpoint_lock(lock_fd)  # closed by the supervisor when it exits
            lock_fd = None
        from workbooks.supervisor import EndpointInUse

        try:
            return sup.run()
        except EndpointInUse as e:  # another supervisor won a race for the data dir
            raise InUse(f"another `wbx serve` is already running for data dir {cfg.data} ({e}): "
                        "stop it or use another --data") from None
    finally:
        relay.close()
        if lock_fd is not None:
            os.close(lock_fd)
