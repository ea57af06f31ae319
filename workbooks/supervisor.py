"""A one-for-one supervisor of OS processes with Erlang/OTP semantics.

Why a process of its own: workers hold wasmtime instances and may be killed (OOM, kill -9, a hung
render); the supervisor restarts exactly the child that died, bounds how often (restart intensity),
and guarantees that nothing it started outlives it.

Semantics (kept as close to OTP's `supervisor` as OS processes allow):

* Child specs: `ChildSpec(id, argv, restart, shutdown, env, group, ...)`.
  - restart `permanent`: always restarted; `transient`: restarted only after an abnormal exit
    (non-zero code, or killed by a signal); `temporary`: never restarted.
  - shutdown: milliseconds between SIGTERM and SIGKILL, or `"brutal_kill"` (SIGKILL at once).
* Start order = the order children were added; a restart keeps a child's place (as in OTP).
  Children are stopped in reverse start order, one at a time.
* Restart intensity: every automatic restart is recorded in a sliding window; when a restart would
  make more than `max_restarts` restarts within `max_seconds` (inclusive, like OTP), the supervisor
  gives up: it stops all children in reverse start order and `run()` returns `EXIT_INTENSITY`.
  `max_restarts = 0` is legal (the first restart gives up). Failed starts count: a child whose exec
  fails, or that exits (or misses `ready_timeout_ms`) before signalling readiness, is handled exactly
  like a child that crashed, so retrying it is a restart and is counted.
* Back-off: a child that dies quickly again and again (uptime < `BACKOFF_RESET_UPTIME_S`) is respawned
  after 0, 10, 20, 40 … ms. The delay only postpones the spawn: the restart is counted in the
  intensity window at the moment the exit is seen, which is when OTP would restart, so the give-up
  decision falls on the same exit as in OTP. The delay is capped at
  `min(backoff_max_ms, max_seconds / (max_restarts + 1) / 2)`, so the whole series of delays before a
  give-up fits in half a window and a crash-looping child still exceeds the intensity as OTP's would.
* At boot, a child that fails to start is retried like one that crashed (counted, backed off);
  OTP would refuse to start the supervisor instead, a service prefers to keep trying within the
  intensity. `start_child`/`scale` report a failed start to the caller and keep no such child.
* Every child runs in its own process group (signals go to the group; when a child exits the rest
  of its group is killed) and gets PR_SET_PDEATHSIG=SIGKILL (through `setpriv --pdeathsig`, or prctl
  in a preexec when setpriv is missing), so children die even if the supervisor is SIGKILLed.
  SIGTERM/SIGINT to the supervisor stops everything in order; a second signal kills what is left
  at once. Exits are seen through pidfds (no polling, no SIGCHLD races). Not covered: a grandchild
  that moved to another process group (setsid) and outlives its parent, or grandchildren when the
  supervisor itself is SIGKILLed (only its direct children carry the death signal).
* Output (optional): with `relay=StdoutRelay(...)` (workbooks.log_relay; `wbx serve` and
  `python -m workbooks.supervisor` use it) each child's stdout is a pipe the supervisor reads and
  re-emits as whole JSON lines, so records of many children never mix on the one stdout.
* Readiness (optional): with `ready_timeout_ms` set, the child gets `WB_READY_FD` and must call
  `notify_ready()` (write a byte to that fd) within the timeout; until then its state is "starting".
  `replace_first` restarts (workers) wait for the replacement's readiness before stopping the old one.

Control endpoint: ZeroMQ ROUTER (REQ-compatible, so plain REQ clients work; a ROUTER lets `status`
answer while a slow `restart` is running) on an ipc socket with mode 0600, msgpack
`{"v":1,"op":...,"args":{...}}` -> `{"ok":true,"data":...}` / `{"ok":false,"error":{code,message}}`.
An exclusive flock on `<socket>.lock` marks the endpoint as taken, so a second supervisor
exits with `EXIT_CONFIG` instead of replacing the socket file (a stale file left by a SIGKILLed
supervisor is simply rebound). The endpoint is an actor (`SupervisorControl`) of `workbooks.actors`. Ops: status, metrics, restart,
start_child, terminate_child, scale, stop, plus `extra_ops` registered by the embedding code
(`Supervisor(extra_ops={"name": fn})` or `sup.register_op(name, fn)`; `fn(args: dict)` plain or
async returns msgpack-able data or raises a `WorkbooksError`; extra ops run concurrently and may
override a built-in, e.g. the pool's `metrics`). `Supervisor(tasks=[async fn(sup)])` runs tasks
in the supervisor's nursery. `sup.status()` / `sup.metrics()` are the same data as plain dicts.

Child states in `status`: "starting" (spawned, readiness not yet signalled), "running",
"restarting" (exited; a restart is scheduled, possibly after back-off), "stopped" (stopped on
request, or a normal exit not restarted), "failed" (abnormal exit not restarted, or the child
that made the supervisor give up). `last_exit = {reason, code, signal, at, requested}` with reason
"normal" | "exit <code>" | "killed by SIGKILL" | "start failed: ..." | "not ready within N ms" |
a reason given to `kill_child`; `requested` says the supervisor itself stopped it.

Operator restarts (`restart`) and `kill_child` exits differ: a requested restart is not counted in
the intensity window (as OTP's restart_child), a `kill_child` is a crash and is counted.

Exit status of `run()` / `python -m workbooks.supervisor`: 0 after a clean stop, `EXIT_INTENSITY`
(70) when the restart intensity was exceeded, `EXIT_CONFIG` (78) for a bad configuration.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import errno
import fcntl
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import trio
import zmq

from workbooks.actors.errors import (ActorError, BadRequest, ConflictError, NotFoundError,
                                     UnreachableError)
from workbooks.actors.local import Actor, ActorSystem
from workbooks.actors.remote import bind_router, request_sync
from workbooks.log import get_logger
from workbooks.readiness import READY_FD_ENV, notify_ready  # noqa: F401 (children call notify_ready)

EXIT_OK = 0
EXIT_INTENSITY = 70   # restart intensity exceeded: gave up after stopping every child
EXIT_CONFIG = 78      # bad configuration (EX_CONFIG)

RESTART_TYPES = ("permanent", "transient", "temporary")
DEFAULT_SHUTDOWN_MS = 5000
BACKOFF_RESET_UPTIME_S = 1.0
MAX_GROUP_SIZE = 1024

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}$")
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


class EndpointInUse(RuntimeError):
    """The control endpoint is taken (another live supervisor answers there) or cannot be bound."""


class StartFailed(ActorError):
    """A child could not be started (exec failure, or it never became ready)."""

    code = "start_failed"


def _bad(msg: str) -> BadRequest:
    return BadRequest(msg)


@dataclass
class ChildSpec:
    """How to run one child. `env` is merged over the supervisor's environment; the supervisor adds
    WB_CHILD_ID, WB_CHILD_GROUP, WB_SUPERVISOR_PID, WB_SUPERVISOR_ENDPOINT (and WB_READY_FD)."""

    id: str
    argv: list[str]
    restart: str = "permanent"
    shutdown: int | str = DEFAULT_SHUTDOWN_MS
    env: dict[str, str] = field(default_factory=dict)
    group: str | None = None
    cwd: str | None = None
    ready_timeout_ms: int | None = None
    replace_first: bool | None = None  # None: decided by the supervisor's replace_first_groups

    def __post_init__(self):
        if not isinstance(self.id, str) or not _ID_RE.match(self.id):
            raise _bad(f"child id must match {_ID_RE.pattern}, got {self.id!r:.80}")
        if (not isinstance(self.argv, (list, tuple)) or not self.argv
                or not all(isinstance(a, str) and "\0" not in a for a in self.argv)):
            raise _bad(f"child {self.id}: argv must be a non-empty list of strings")
        self.argv = list(self.argv)
        if self.restart not in RESTART_TYPES:
            raise _bad(f"child {self.id}: restart must be one of {', '.join(RESTART_TYPES)}")
        if self.shutdown != "brutal_kill" and (
                isinstance(self.shutdown, bool) or not isinstance(self.shutdown, int)
                or not 0 <= self.shutdown <= 3_600_000):
            raise _bad(f"child {self.id}: shutdown must be milliseconds (0..3600000) or 'brutal_kill'")
        if not isinstance(self.env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
                for k, v in self.env.items()):
            raise _bad(f"child {self.id}: env must map names to strings")
        if self.group is not None and (not isinstance(self.group, str) or not _ID_RE.match(self.group)):
            raise _bad(f"child {self.id}: bad group {self.group!r:.80}")
        if self.cwd is not None and not isinstance(self.cwd, str):
            raise _bad(f"child {self.id}: cwd must be a string")
        if self.ready_timeout_ms is not None and (
                isinstance(self.ready_timeout_ms, bool) or not isinstance(self.ready_timeout_ms, int)
                or not 1 <= self.ready_timeout_ms <= 3_600_000):
            raise _bad(f"child {self.id}: ready_timeout_ms must be 1..3600000")
        if self.replace_first is not None and not isinstance(self.replace_first, bool):
            raise _bad(f"child {self.id}: replace_first must be a boolean")

    @classmethod
    def from_dict(cls, d: dict) -> "ChildSpec":
        if not isinstance(d, dict):
            raise _bad("child spec must be a map")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise _bad(f"unknown child spec fields: {', '.join(map(str, unknown))}")
        missing = [k for k in ("id", "argv") if k not in d]
        if missing:
            raise _bad(f"child spec needs {', '.join(missing)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def template_from_dict(d: dict) -> Callable[[str], ChildSpec]:
    """A template from data: "{id}" in argv, env values and cwd is replaced by the child id."""
    ChildSpec.from_dict({**d, "id": "template"})  # validate once, early

    def make(child_id: str) -> ChildSpec:
        sub = lambda s: s.replace("{id}", child_id)  # noqa: E731
        spec = {**d, "id": child_id, "argv": [sub(a) for a in d["argv"]],
                "env": {k: sub(v) for k, v in (d.get("env") or {}).items()}}
        if d.get("cwd"):
            spec["cwd"] = sub(d["cwd"])
        return ChildSpec.from_dict(spec)

    return make


def describe_exit(returncode: int) -> tuple[str, int | None, int | None]:
    """(reason, code, signal) for a Popen returncode."""
    if returncode < 0:
        sig = -returncode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by {name}", None, sig
    return ("normal" if returncode == 0 else f"exit {returncode}"), returncode, None


_setpriv: str | None | bool = False  # False: not probed yet


def _setpriv_path() -> str | None:
    """util-linux `setpriv` if it supports --pdeathsig (probed once)."""
    global _setpriv
    if _setpriv is False:
        path = None if os.environ.get("WB_SUPERVISOR_NO_SETPRIV") else shutil.which("setpriv")
        ok = False
        if path:
            try:
                ok = subprocess.run([path, "--pdeathsig", "KILL", "--", "true"], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    timeout=5).returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
        _setpriv = path if ok else None
    return _setpriv


def _check_executable(argv0: str, env: dict, cwd: str | None) -> None:
    """Raise the OSError exec would, so a missing binary is a failed start, not an exit 127."""
    if "/" in argv0:
        path = argv0 if os.path.isabs(argv0) else os.path.join(cwd or os.getcwd(), argv0)
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv0)
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), argv0)
        return
    if shutil.which(argv0, path=env.get("PATH", os.defpath)) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv0)


def _death_signal_argv(argv: list[str], env: dict, cwd: str | None):
    """(argv, preexec_fn) so the child gets SIGKILL when the supervisor dies (PR_SET_PDEATHSIG).

    Preferred: exec through `setpriv --pdeathsig KILL`, which keeps subprocess on its vfork path
    (about 0.3 ms per spawn instead of ~8 ms for a fork of this process). Fallback: prctl via
    ctypes in a preexec_fn, which also re-checks the parent so a fork racing the supervisor's
    death cannot leave an orphan; with setpriv that window is the ~1 ms before setpriv runs.
    """
    if cwd is not None and not os.path.isdir(cwd):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), cwd)
    _check_executable(argv[0], env, cwd)
    setpriv = _setpriv_path()
    if setpriv:
        return [setpriv, "--pdeathsig", "KILL", "--", *argv], None
    parent = os.getpid()

    def preexec():  # runs in the child between fork and exec
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died while we were forking
            os.kill(os.getpid(), signal.SIGKILL)

    return list(argv), preexec


class _Proc:
    """One OS process of a child (a child has several over its life, two during a replace)."""

    def __init__(self, popen: subprocess.Popen, pidfd: int):
        self.popen = popen
        self.pid = popen.pid
        self.pidfd = pidfd
        self.started_mono = time.monotonic()
        self.started_at = time.time()
        self.exited = trio.Event()
        self.reaped = False
        self.returncode: int | None = None
        self.stop_requested = False
        self.fail_reason: str | None = None
        self.ready = False
        self.out_fd: int | None = None  # read end of its stdout pipe, for the relay

    def signal(self, sig: int) -> None:
        """Signal the process group (the child's own), falling back to the pid."""
        if self.reaped:
            return
        try:
            os.killpg(self.pid, sig)
            return
        except ProcessLookupError:
            pass
        except PermissionError:
            pass
        try:
            os.kill(self.pid, sig)  # it left its group (setsid); an unreaped pid cannot be reused
        except ProcessLookupError:
            pass


class _Child:
    def __init__(self, spec: ChildSpec):
        self.spec = spec
        self.proc: _Proc | None = None
        self.candidate: _Proc | None = None
        self.state = "starting"
        self.restarts = 0
        self.last_exit: dict | None = None
        self.quick_fails = 0
        self.pending: trio.CancelScope | None = None
        self.replacing = False
        self.removed = False
        self.probation = False  # a start whose failure is reported to the caller, not restarted


def lock_endpoint(ep: str) -> int:
    """Take the exclusive flock on `<ipc socket>.lock` and return its fd (kept for the holder's
    lifetime); EndpointInUse when another process holds it."""
    path = ep[len("ipc://"):]
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise EndpointInUse(f"another supervisor answers on {ep}") from None
    return fd


class Supervisor:
    """One-for-one supervisor. `run()` blocks until stopped; `await serve()` embeds it in trio."""

    def __init__(self, children=(), max_restarts: int = 3, max_seconds: float = 5,
                 control_endpoint: str | None = None, templates: dict | None = None,
                 extra_ops: dict | None = None, tasks=(), replace_first_groups=("worker",),
                 backoff_base_ms: int = 10, backoff_max_ms: int = 1000, relay=None):
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError("max_restarts must be an integer >= 0")
        if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or max_seconds <= 0:
            raise ValueError("max_seconds must be > 0")
        self.max_restarts = max_restarts
        self.max_seconds = float(max_seconds)
        self.control_endpoint = control_endpoint
        self.templates: dict[str, Callable[[str], ChildSpec]] = dict(templates or {})
        self.extra_ops: dict[str, Callable] = dict(extra_ops or {})
        self.tasks = list(tasks)
        # A workbooks.log_relay.StdoutRelay: children's stdout comes back through pipes and
        # leaves as whole lines (None: children share the supervisor's stdout).
        self.relay = relay
        self.replace_first_groups = frozenset(replace_first_groups)
        self.backoff_base = backoff_base_ms / 1000.0
        self.backoff_cap = min(backoff_max_ms / 1000.0, self.max_seconds / (max_restarts + 1) / 2)
        self._children: dict[str, _Child] = {}
        for spec in children:
            if spec.id in self._children:
                raise ValueError(f"duplicate child id {spec.id!r}")
            self._children[spec.id] = _Child(spec)
        self._restarts: list[float] = []
        self._clock = time.monotonic  # the intensity window's clock (tests pin it)
        self._restart_reasons: Counter = Counter()
        self._give_ups = 0
        self._live: set[_Proc] = set()
        self._stop_event: trio.Event | None = None
        self._stopping = False
        self._exit_code = EXIT_OK
        self._nursery: trio.Nursery | None = None
        self._ops_lock: trio.Lock | None = None
        self._started_at = time.time()
        self._started_mono = time.monotonic()
        self._stop_via_control = False
        self._bound = False
        self._lock_fd: int | None = None
        #: Called once every child is gone, before the data dir's lock is released (what a
        #: stopped service must not leave behind, e.g. its planes' counters on /dev/shm).
        self.on_exit: list = []
        self._boot_scope: trio.CancelScope | None = None
        self._pumps = 0
        self.actors: ActorSystem | None = None
        self.log = get_logger()

    # ------------------------------------------------------------------ running
    def run(self) -> int:
        """Run until SIGTERM/SIGINT, a `stop` request, or intensity exceeded; return the exit status."""
        return trio.run(self.serve)

    async def serve(self, *, handle_signals: bool = True,
                    task_status=trio.TASK_STATUS_IGNORED) -> int:
        self._stop_event = trio.Event()
        self._ops_lock = trio.Lock()
        self.log = get_logger()
        control_sock = None
        try:
            if self.control_endpoint:
                self._refuse_if_endpoint_in_use()
                try:
                    control_sock = bind_router(self.control_endpoint)
                except zmq.ZMQError as e:
                    raise EndpointInUse(f"cannot bind the control endpoint {self.control_endpoint}: "
                                        f"{e}") from None
                self._bound = True
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if handle_signals and threading.current_thread() is threading.main_thread():
                    await nursery.start(self._watch_signals)
                if self.control_endpoint:
                    self.actors = ActorSystem(nursery)
                    self.actors.spawn(SupervisorControl(self), "supervisor")
                    await self.actors.serve_zmq(self.control_endpoint, default="supervisor",
                                                sock=control_sock)
                    control_sock = None
                for task in self.tasks:
                    nursery.start_soon(task, self)
                self.log.info("supervisor_started", children=len(self._children),
                              max_restarts=self.max_restarts, max_seconds=self.max_seconds,
                              control_endpoint=self.control_endpoint)
                with trio.CancelScope() as self._boot_scope:  # a stop request cuts boot short
                    for child in list(self._children.values()):
                        if self._stop_event.is_set():
                            break
                        if child.proc is None and not child.removed and child.pending is None:
                            await self._start(child)
                self._boot_scope = None
                task_status.started(self)
                await self._stop_event.wait()
                await self._shutdown_all()
                with trio.move_on_after(1.0):  # children's last lines still in their pipes
                    while self._pumps:
                        await trio.sleep(0.01)
                if self._stop_via_control:
                    await trio.sleep(0.05)  # let the `stop` reply leave before the socket closes
                nursery.cancel_scope.cancel()
        finally:
            if control_sock is not None:
                control_sock.close(linger=0)
            self._kill_all_now()
            self._remove_ipc_file()
            for cleanup in self.on_exit:
                try:
                    cleanup()
                except Exception as e:  # noqa: BLE001 - a cleanup must not hide the exit
                    self.log.warning("exit_cleanup_failed", error=str(e))
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock (the file stays: see above)
                self._lock_fd = None
        self.log.info("supervisor_exit", exit_code=self._exit_code)
        return self._exit_code

    def request_stop(self, exit_code: int = EXIT_OK) -> None:
        """Ask for an orderly shutdown (safe from any trio task of this run)."""
        if exit_code and not self._exit_code:
            self._exit_code = exit_code
        if self._stop_event is not None and not self._stop_event.is_set():
            self._stop_event.set()
            if self._boot_scope is not None:
                self._boot_scope.cancel()

    async def _watch_signals(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            count = 0
            async for signum in signals:
                count += 1
                name = signal.Signals(signum).name
                if count == 1:
                    self.log.info("supervisor_signal", signal=name, action="stop")
                    self.request_stop(EXIT_OK)
                else:
                    self.log.warning("supervisor_signal", signal=name, action="kill_all")
                    for proc in list(self._live):
                        proc.stop_requested = True
                        proc.signal(signal.SIGKILL)

    def _refuse_if_endpoint_in_use(self) -> None:
        """Binding an ipc endpoint silently replaces another process's socket file, so hold an
        exclusive flock on `<socket>.lock` for our lifetime (released by the kernel even after a
        SIGKILL); a second supervisor on the same endpoint fails here instead of stealing it."""
        ep = self.control_endpoint
        if not ep.startswith("ipc://"):
            return  # tcp: bind itself fails with EADDRINUSE
        if self._lock_fd is not None:
            return  # taken already by whoever built us (`wbx serve` checks before anything starts)
        self._lock_fd = lock_endpoint(ep)

    def adopt_endpoint_lock(self, fd: int) -> None:
        """Take over an flock on `<control socket>.lock` the caller already holds (exclusive)."""
        self._lock_fd = fd

    def _remove_ipc_file(self) -> None:
        ep = self.control_endpoint
        if self._bound and ep.startswith("ipc://"):
            try:
                os.unlink(ep[6:])
            except OSError:
                pass

    # ------------------------------------------------------------------ starting
    def _popen(self, spec: ChildSpec) -> tuple[_Proc, int | None]:
        env = dict(os.environ)
        env.pop(READY_FD_ENV, None)
        env.update(spec.env)
        env["WB_CHILD_ID"] = spec.id
        env["WB_SUPERVISOR_PID"] = str(os.getpid())
        if self.control_endpoint:
            env["WB_SUPERVISOR_ENDPOINT"] = self.control_endpoint
        if spec.group:
            env["WB_CHILD_GROUP"] = spec.group
        rfd = wfd = None
        pass_fds = ()
        if spec.ready_timeout_ms is not None:
            rfd, wfd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            os.set_blocking(wfd, True)
            env[READY_FD_ENV] = str(wfd)
            pass_fds = (wfd,)
        argv, preexec = _death_signal_argv(spec.argv, env, spec.cwd)
        out_r = out_w = None
        if self.relay is not None:
            out_r, out_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            os.set_blocking(out_w, True)
        try:
            popen = subprocess.Popen(argv, env=env, cwd=spec.cwd, stdin=subprocess.DEVNULL,
                                     stdout=out_w, close_fds=True, pass_fds=pass_fds, process_group=0,
                                     preexec_fn=preexec)
        except BaseException:
            if rfd is not None:
                os.close(rfd)
            if out_r is not None:
                os.close(out_r)
            raise
        finally:
            if wfd is not None:
                os.close(wfd)
            if out_w is not None:
                os.close(out_w)
        try:
            pidfd = os.pidfd_open(popen.pid)
        except OSError:
            popen.kill()
            popen.wait()
            if rfd is not None:
                os.close(rfd)
            if out_r is not None:
                os.close(out_r)
            raise
        proc = _Proc(popen, pidfd)
        proc.out_fd = out_r
        self._live.add(proc)
        return proc, rfd

    async def _start(self, child: _Child, *, attach: bool = True) -> _Proc | None:
        """Spawn a process for `child`; return it once ready, or None if the start failed.

        attach=False spawns a replacement candidate that is not yet the child's process.
        """
        spec = child.spec
        if self._stopping:  # an op racing the shutdown: nothing new gets spawned
            return None
        try:
            proc, rfd = self._popen(spec)
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            reason = f"start failed: {e}"[:300]
            child.last_exit = {"reason": reason, "code": None, "signal": None, "at": time.time(),
                               "start_failed": True}
            self.log.warning("child_start_failed", id=spec.id, group=spec.group, error=reason)
            if attach and not child.probation:
                self._after_exit(child, reason, abnormal=True, uptime=0.0)
            elif attach:
                child.state = "failed"
            return None
        if attach:
            child.proc = proc
            child.state = "starting" if rfd is not None else "running"
        else:
            child.candidate = proc
        self._nursery.start_soon(self._watch, child, proc)
        if proc.out_fd is not None:
            self._nursery.start_soon(self._pump, proc.out_fd, spec.id, spec.group, proc.pid)
        extra = {} if attach else {"replacement": True}
        self.log.info("child_started", id=spec.id, child_pid=proc.pid, group=spec.group,
                      restarts=child.restarts, **extra)
        if rfd is None:
            proc.ready = True
            return proc
        failure = await self._await_ready(proc, rfd, spec.ready_timeout_ms)
        if failure is None:
            proc.ready = True
            if child.proc is proc:
                child.state = "running"
            self.log.info("child_ready", id=spec.id, child_pid=proc.pid,
                          after_ms=round((time.monotonic() - proc.started_mono) * 1000, 1))
            return proc
        if not proc.exited.is_set():
            proc.fail_reason = failure
            self.log.warning("child_not_ready", id=spec.id, child_pid=proc.pid, reason=failure)
            proc.signal(signal.SIGKILL)
            await proc.exited.wait()
        return None

    async def _pump(self, fd: int, child_id: str, group: str | None, pid: int) -> None:
        self._pumps += 1
        try:
            await self.relay.pump(fd, child_id, group, pid)
        finally:
            self._pumps -= 1

    async def _await_ready(self, proc: _Proc, rfd: int, timeout_ms: int) -> str | None:
        """None when the child wrote to its readiness fd, else why not (timeout, exit, EOF)."""
        outcome: list[str | None] = []

        async def signalled(cancel):
            while True:
                await trio.lowlevel.wait_readable(rfd)
                try:
                    data = os.read(rfd, 64)
                except BlockingIOError:
                    continue
                outcome.append(None if data else "closed its readiness fd without signalling ready")
                cancel()
                return

        async def exited(cancel):
            await proc.exited.wait()  # even if a grandchild still holds the write end
            outcome.append("exited before signalling ready")
            cancel()

        try:
            with trio.move_on_after(timeout_ms / 1000.0):
                async with trio.open_nursery() as n:
                    n.start_soon(signalled, n.cancel_scope.cancel)
                    n.start_soon(exited, n.cancel_scope.cancel)
            if not outcome:
                return f"not ready within {timeout_ms} ms"
            if outcome[0] is not None and not proc.exited.is_set():
                with trio.move_on_after(0.2):  # an EOF usually means it is exiting: let it finish
                    await proc.exited.wait()
            return outcome[0]
        finally:
            try:
                trio.lowlevel.notify_closing(rfd)
            except RuntimeError:
                pass
            os.close(rfd)

    async def _watch(self, child: _Child, proc: _Proc) -> None:
        await trio.lowlevel.wait_readable(proc.pidfd)
        proc.signal(signal.SIGKILL)  # what is left of its process group goes with it
        proc.returncode = proc.popen.wait()
        proc.reaped = True
        os.close(proc.pidfd)
        self._live.discard(proc)
        self._on_exit(child, proc)

    # ------------------------------------------------------------------ exits
    def _on_exit(self, child: _Child, proc: _Proc) -> None:
        reason, code, sig = describe_exit(proc.returncode)
        if proc.fail_reason:
            reason = proc.fail_reason
        now = time.time()
        uptime = time.monotonic() - proc.started_mono
        info = {"reason": reason, "code": code, "signal": sig, "at": now,
                "requested": proc.stop_requested}
        if not proc.ready:
            info["before_ready"] = True
        child.last_exit = info
        self.log.info("child_exited", id=child.spec.id, child_pid=proc.pid, reason=reason, code=code,
                      signal=sig, uptime_s=round(uptime, 3), requested=proc.stop_requested)
        if child.candidate is proc:
            child.candidate = None
        if child.proc is not proc:  # a replaced process or a failed replacement candidate
            proc.exited.set()
            return
        child.proc = None
        abnormal = proc.returncode != 0 or proc.fail_reason is not None
        if proc.stop_requested or child.removed or self._stopping:
            child.state = "stopped"
        elif child.replacing:
            child.state = "restarting"  # the replacement under way takes its place
        elif child.probation and not proc.ready:
            child.state = "failed"
        else:
            self._after_exit(child, reason, abnormal=abnormal, uptime=uptime)
        proc.exited.set()

    def _after_exit(self, child: _Child, reason: str, *, abnormal: bool, uptime: float) -> None:
        """Apply the restart type and intensity to an exit nobody asked for."""
        spec = child.spec
        if spec.restart == "temporary" or (spec.restart == "transient" and not abnormal):
            child.state = "failed" if abnormal else "stopped"
            self.log.info("child_not_restarted", id=spec.id, restart=spec.restart, reason=reason)
            return
        if self._stopping:
            child.state = "stopped"
            return
        if not self._add_restart():
            child.state = "failed"
            self._give_ups += 1
            self.log.error("supervisor_give_up", id=spec.id, reason=reason,
                           max_restarts=self.max_restarts, max_seconds=self.max_seconds,
                           exit_code=EXIT_INTENSITY)
            self.request_stop(EXIT_INTENSITY)
            return
        child.restarts += 1
        self._restart_reasons[reason if not reason.startswith("start failed") else "start failed"] += 1
        child.quick_fails = child.quick_fails + 1 if uptime < BACKOFF_RESET_UPTIME_S else 1
        delay = self._backoff(child.quick_fails)
        child.state = "restarting"
        self.log.info("child_restarting", id=spec.id, reason=reason, restarts=child.restarts,
                      delay_ms=round(delay * 1000, 1), in_window=len(self._restarts))
        self._nursery.start_soon(self._restart_later, child, delay)

    def _add_restart(self) -> bool:
        """OTP's add_restart: slide the window, record now; False when the intensity is exceeded."""
        now = self._clock()
        self._restarts = [t for t in self._restarts if now - t <= self.max_seconds]
        self._restarts.append(now)
        return len(self._restarts) <= self.max_restarts

    def _backoff(self, quick_fails: int) -> float:
        if quick_fails <= 1:
            return 0.0
        return min(self.backoff_cap, self.backoff_base * (2 ** (quick_fails - 2)))

    async def _restart_later(self, child: _Child, delay: float) -> None:
        scope = trio.CancelScope()
        child.pending = scope
        with scope:
            if delay > 0:
                await trio.sleep(delay)
        if child.pending is scope:
            child.pending = None
        if scope.cancelled_caught or child.removed or self._stopping or child.proc is not None:
            return
        await self._start(child)

    # ------------------------------------------------------------------ stopping
    async def _stop_proc(self, spec: ChildSpec, proc: _Proc) -> None:
        """SIGTERM, wait `shutdown` ms, SIGKILL (or SIGKILL at once for brutal_kill)."""
        proc.stop_requested = True
        if proc.exited.is_set():
            return
        if spec.shutdown == "brutal_kill":
            self.log.info("child_kill", id=spec.id, child_pid=proc.pid, why="brutal_kill")
            proc.signal(signal.SIGKILL)
        else:
            self.log.info("child_stop", id=spec.id, child_pid=proc.pid, signal="SIGTERM",
                          timeout_ms=spec.shutdown)
            proc.signal(signal.SIGTERM)
            with trio.move_on_after(spec.shutdown / 1000.0):
                await proc.exited.wait()
            if not proc.exited.is_set():
                self.log.warning("child_kill", id=spec.id, child_pid=proc.pid,
                                 why=f"still running {spec.shutdown} ms after SIGTERM")
                proc.signal(signal.SIGKILL)
        await proc.exited.wait()
        self.log.info("child_stopped", id=spec.id, child_pid=proc.pid)

    async def _stop_child(self, child: _Child) -> None:
        if child.pending is not None:
            child.pending.cancel()
            child.pending = None
        if child.candidate is not None:
            await self._stop_proc(child.spec, child.candidate)
        if child.proc is not None:
            await self._stop_proc(child.spec, child.proc)
        if child.state not in ("failed",):
            child.state = "stopped"

    async def _shutdown_all(self) -> None:
        self._stopping = True
        order = list(self._children.values())
        self.log.info("supervisor_shutdown", exit_code=self._exit_code,
                      order=[c.spec.id for c in reversed(order)])
        for child in reversed(order):
            await self._stop_child(child)
        for proc in list(self._live):  # anything not attached to a child any more
            proc.stop_requested = True
            proc.signal(signal.SIGKILL)
            await proc.exited.wait()
        self.log.info("supervisor_shutdown_complete")

    def _kill_all_now(self) -> None:
        """Last resort on any exit path: SIGKILL and reap whatever is still alive."""
        for proc in list(self._live):
            proc.signal(signal.SIGKILL)
            try:
                proc.popen.wait()
            except Exception:
                pass
            proc.reaped = True
            try:
                os.close(proc.pidfd)
            except OSError:
                pass
            self._live.discard(proc)

    # ------------------------------------------------------------------ operations
    def _child(self, child_id) -> _Child:
        child = self._children.get(child_id) if isinstance(child_id, str) else None
        if child is None:
            raise NotFoundError(f"no child with id {child_id!r:.80}")
        return child

    def _replace_first(self, child: _Child) -> bool:
        if child.spec.replace_first is not None:
            return child.spec.replace_first
        return child.spec.group in self.replace_first_groups

    def register_op(self, name: str, fn: Callable) -> None:
        """Add a control op: `fn(args: dict)` (plain or async) returns msgpack-able data."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"bad op name {name!r}")
        self.extra_ops[name] = fn

    def _check_running(self) -> None:
        if self._stopping or self._nursery is None:
            raise UnreachableError("the supervisor is stopping")

    async def start_child(self, spec: ChildSpec) -> dict:
        """Add and start a child; if it cannot start it is not kept (as OTP's start_child)."""
        self._check_running()
        async with self._ops_lock:
            if spec.id in self._children:
                raise ConflictError(f"a child with id {spec.id!r} already exists")
            child = _Child(spec)
            child.probation = True
            self._children[spec.id] = child
            proc = await self._start(child)
            child.probation = False
            if proc is None or proc.exited.is_set():
                self._children.pop(spec.id, None)
                reason = (child.last_exit or {}).get("reason", "unknown")
                raise StartFailed(f"child {spec.id} failed to start: {reason}")
            return self._child_status(child)

    async def terminate_child(self, child_id: str) -> dict:
        """Stop a child (its shutdown rule) and remove it from the supervisor."""
        self._check_running()
        async with self._ops_lock:
            child = self._child(child_id)
            child.removed = True
            await self._stop_child(child)
            self._children.pop(child.spec.id, None)
            return self._child_status(child)

    async def restart_child(self, child_id: str) -> dict:
        """Restart on request; replace_first children get their replacement ready first."""
        self._check_running()
        async with self._ops_lock:
            child = self._child(child_id)
            if child.pending is not None:
                child.pending.cancel()
                child.pending = None
            old = child.proc
            if self._replace_first(child) and old is not None:
                child.replacing = True
                try:
                    cand = await self._start(child, attach=False)
                finally:
                    child.replacing = False
                if cand is None or cand.exited.is_set():
                    if child.proc is None and not child.removed and not self._stopping:
                        self._after_exit(child, "old process exited during a failed replace",
                                         abnormal=True, uptime=0.0)
                    reason = (child.last_exit or {}).get("reason", "unknown")
                    raise StartFailed(f"replacement for {child.spec.id} failed to start: {reason}")
                child.candidate = None
                old = child.proc
                child.proc = cand
                child.state = "running"
                child.restarts += 1
                self.log.info("child_replaced", id=child.spec.id, new_pid=cand.pid,
                              old_pid=old.pid if old else None)
                if old is not None:
                    await self._stop_proc(child.spec, old)
            else:
                if old is not None:
                    await self._stop_proc(child.spec, old)
                child.restarts += 1
                proc = await self._start(child)
                if proc is None:  # handled like a crash: retried per its restart type, counted
                    reason = (child.last_exit or {}).get("reason", "unknown")
                    raise StartFailed(f"child {child.spec.id} failed to restart: {reason}")
            return self._child_status(child)

    def kill_child(self, child_id: str, *, reason: str, pid: int | None = None) -> dict:
        """SIGKILL a child's current process (e.g. a worker that stopped heartbeating).

        The exit is recorded with `reason` (underscores read as spaces) and handled like any crash:
        restarted per the child's restart type, counted in the intensity window. `pid`, when given,
        must still be the child's current pid (so a late request cannot kill the replacement).
        """
        child = self._child(child_id)
        proc = child.proc
        if proc is None or proc.exited.is_set():
            raise NotFoundError(f"child {child_id!r} has no running process")
        if pid is not None and proc.pid != pid:
            raise ConflictError(f"{child_id} is pid {proc.pid} now, not {pid}; nothing killed")
        proc.fail_reason = str(reason).replace("_", " ")[:200] or "killed"
        self.log.warning("child_kill", id=child_id, child_pid=proc.pid, why=proc.fail_reason)
        proc.signal(signal.SIGKILL)
        return {"id": child_id, "pid": proc.pid, "killed": True, "reason": str(reason)}

    async def scale(self, group: str, n: int) -> dict:
        """Make `group` have n children: start new ones from its template, or stop the newest."""
        self._check_running()
        if not isinstance(group, str) or group not in self.templates:
            raise NotFoundError(f"no template for group {group!r:.80}")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_GROUP_SIZE:
            raise BadRequest(f"n must be an integer in 0..{MAX_GROUP_SIZE}")
        started, stopped, failed = [], [], []
        async with self._ops_lock:
            members = [c for c in self._children.values() if c.spec.group == group]
            while len(members) < n:
                self._check_running()
                child_id = self._free_id(group)
                try:
                    spec = self.templates[group](child_id)
                    spec = dataclasses.replace(spec, id=child_id, group=group)
                except ActorError:
                    raise
                except Exception as e:
                    raise StartFailed(f"template for {group} failed: {type(e).__name__}: {e}") from None
                child = _Child(spec)
                child.probation = True
                self._children[child_id] = child
                members.append(child)
                proc = await self._start(child)
                child.probation = False
                if proc is None or proc.exited.is_set():
                    self._children.pop(child_id, None)
                    failed.append({"id": child_id, "reason": (child.last_exit or {}).get("reason")})
                    break
                started.append(child_id)
            for child in list(reversed(members))[: max(0, len(members) - n)]:
                child.removed = True
                await self._stop_child(child)
                self._children.pop(child.spec.id, None)
                stopped.append(child.spec.id)
        result = {"group": group, "target": n, "started": started, "stopped": stopped,
                  "failed": failed, **self._group_counts().get(group, {"current": 0, "target": 0})}
        self.log.info("group_scaled", **{k: v for k, v in result.items() if k != "group"}, group=group)
        if failed:
            raise StartFailed(f"scaling {group} to {n} stopped at a child that failed to start: "
                              f"{failed[0]['reason']}")
        return result

    def _free_id(self, group: str) -> str:
        k = 1
        while f"{group}-{k}" in self._children:
            k += 1
        return f"{group}-{k}"

    # ------------------------------------------------------------------ introspection
    def _child_status(self, child: _Child) -> dict:
        proc = child.proc
        now = time.monotonic()
        return {
            "id": child.spec.id,
            "pid": proc.pid if proc else None,
            "state": child.state,
            "started_at": proc.started_at if proc else None,
            "uptime_s": round(now - proc.started_mono, 3) if proc else None,
            "restarts": child.restarts,
            "last_exit": dict(child.last_exit) if child.last_exit else None,
            "group": child.spec.group,
            "restart": child.spec.restart,
            "shutdown": child.spec.shutdown,
        }

    def _group_counts(self) -> dict:
        groups: dict[str, dict] = {}
        for child in self._children.values():
            g = child.spec.group
            if g is None:
                continue
            entry = groups.setdefault(g, {"current": 0, "target": 0})
            if child.state not in ("stopped", "failed"):
                entry["target"] += 1
            if child.state == "running":
                entry["current"] += 1
        for g in self.templates:
            groups.setdefault(g, {"current": 0, "target": 0})
        return groups

    def children_status(self) -> list[dict]:
        return [self._child_status(c) for c in self._children.values()]

    def status(self) -> dict:
        now = time.monotonic()
        in_window = self._clock()
        window = [t for t in self._restarts if in_window - t <= self.max_seconds]
        return {
            "supervisor": {
                "pid": os.getpid(),
                "state": "stopping" if self._stopping else "running",
                "started_at": self._started_at,
                "uptime_s": round(now - self._started_mono, 3),
                "max_restarts": self.max_restarts,
                "max_seconds": self.max_seconds,
                "restarts_in_window": len(window),
                "control_endpoint": self.control_endpoint,
            },
            "children": self.children_status(),
            "groups": self._group_counts(),
        }

    def metrics(self) -> dict:
        """Figures for /metrics (the pool formats them as Prometheus text)."""
        children = list(self._children.values())
        return {
            "restarts_total": sum(self._restart_reasons.values()),
            "restarts_by_reason": dict(self._restart_reasons),
            "give_ups_total": self._give_ups,
            "children_total": len(children),
            "children_running": sum(1 for c in children if c.state == "running"),
            "groups": self._group_counts(),
        }


class SupervisorControl(Actor):
    """The control endpoint as an actor: one op per message, mutations one at a time."""

    BUILTIN_CONCURRENT = frozenset({"status", "metrics", "stop"})

    def __init__(self, sup: Supervisor):
        self.sup = sup

    @property
    def concurrent_ops(self):
        """Reads never wait behind a slow restart/scale; extra ops manage their own state."""
        return self.BUILTIN_CONCURRENT | self.sup.extra_ops.keys()

    async def handle(self, op: str, args: dict):
        fn = self.sup.extra_ops.get(op)
        if fn is None:
            return await super().handle(op, args)
        result = fn(args)
        if inspect.isawaitable(result):
            result = await result
        return result

    def on_status(self):
        return self.sup.status()

    def on_metrics(self):
        return self.sup.metrics()

    async def on_restart(self, id):
        return await self.sup.restart_child(id)

    async def on_start_child(self, spec):
        return await self.sup.start_child(ChildSpec.from_dict(spec))

    async def on_terminate_child(self, id):
        return await self.sup.terminate_child(id)

    async def on_scale(self, group, n):
        return await self.sup.scale(group, n)

    def on_stop(self):
        self.sup._stop_via_control = True
        self.sup.request_stop(EXIT_OK)
        return {"stopping": True}


class ControlClient:
    """Blocking client of a supervisor's control endpoint: `ControlClient(ep).request("status")`."""

    def __init__(self, endpoint: str, timeout: float = 10.0):
        self.endpoint = endpoint
        self.timeout = timeout

    def request(self, op: str, **args):
        """Round trip; returns `data` or raises a typed `ActorError` (its `.code` from the reply)."""
        timeout = args.pop("_timeout", self.timeout)
        return request_sync(self.endpoint, op, args, timeout=timeout)


# ---------------------------------------------------------------------- command line
def supervisor_from_config(cfg: dict) -> Supervisor:
    """Build from data: {children: [spec...], templates: {group: spec}, max_restarts, ...}."""
    if not isinstance(cfg, dict):
        raise ValueError("config must be a JSON object")
    allowed = {"children", "templates", "max_restarts", "max_seconds", "control_endpoint",
               "replace_first_groups", "backoff_base_ms", "backoff_max_ms"}
    unknown = set(cfg) - allowed
    if unknown:
        raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
    children = [ChildSpec.from_dict(c) for c in cfg.get("children", [])]
    templates = {g: template_from_dict(t) for g, t in (cfg.get("templates") or {}).items()}
    kw = {k: cfg[k] for k in ("max_restarts", "max_seconds", "control_endpoint",
                              "replace_first_groups", "backoff_base_ms", "backoff_max_ms") if k in cfg}
    return Supervisor(children=children, templates=templates, **kw)


def main(argv=None) -> int:
    from workbooks.log import configure

    parser = argparse.ArgumentParser(prog="python -m workbooks.supervisor",
                                     description="Run a supervisor from a JSON config file.")
    parser.add_argument("config", help="JSON file (or - for stdin)")
    ns = parser.parse_args(argv)
    from workbooks.log_relay import StdoutRelay

    relay = StdoutRelay().start()
    configure("supervisor", sink=relay.put)
    try:
        return _main(ns, relay)
    finally:
        relay.close()


def _main(ns, relay) -> int:
    try:
        text = sys.stdin.read() if ns.config == "-" else open(ns.config, encoding="utf-8").read()
        sup = supervisor_from_config(json.loads(text))
        sup.relay = relay
    except (OSError, ValueError, ActorError) as e:
        print(f"supervisor: bad config: {e}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return sup.run()
    except EndpointInUse as e:
        print(f"supervisor: {e}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
