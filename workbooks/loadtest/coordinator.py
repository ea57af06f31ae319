"""The coordinator's side of the generators: sockets, processes, membership, the common start.

Local generators are subprocesses (`python -m workbooks.loadtest.generator`) talking over an ipc
socket in a private temporary directory (0700, socket 0600). Remote generators join over tcp with
CURVE exactly as remote pool workers join the broker: the server keypair and the authorized client
keys under `$WB_DATA/keys/` (`wbx ops keys`), checked by the same ZAP handler
(`workbooks.pool.endpoints.KeyAuthenticator`), so an unknown key is refused and recorded.

Every exit path stops what was started: `close()` says bye, then SIGTERM, then SIGKILL, reaps every
local process and removes the socket directory; local processes also carry PR_SET_PDEATHSIG (see
`generator._die_with_parent`) and stop by themselves when the coordinator goes silent.
See `generator.py` for the conversation.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from workbooks.errors import UsageError, WorkbooksError
from workbooks.loadtest import generator as G

JOIN_LOCAL_S = 30.0  # a local process that has not said hello by then failed to start
REMOTE_WAIT_S = 30.0  # how long a run waits for its remote generators
READY_S = 60.0  # target setup (e.g. reading a sitemap) on every generator
PING_EVERY_S = 1.0
MEMBER_SILENT_S = 5.0  # a generator silent this long after the start is lost
STOP_GRACE_S = 1.0  # after bye, before SIGTERM; after SIGTERM, before SIGKILL
POLL_S = 0.05  # the longest wait between looks at the sockets, the processes and the clock


class GeneratorFailed(WorkbooksError):
    """A generator could not prepare its target or died during the run."""

    code = "generator_failed"


class RemoteGeneratorsMissing(WorkbooksError):
    """Fewer remote generators than the plan asked for joined in time."""

    code = "remote_generators_missing"
    exit_code = 3
    retryable = True


@dataclass
class Member:
    """One generator process, local or remote."""

    kind: str  # "local" | "remote"
    ident: bytes
    sock: object
    pid: int | None = None
    host: str | None = None
    cpus: int | None = None
    proc: subprocess.Popen | None = None
    index: int = -1
    ready: bool = False
    describe: dict = field(default_factory=dict)
    done: bool = False
    totals: dict = field(default_factory=dict)
    aborted: bool = False
    through: int = -1  # the last second it reported
    last_seen: float = field(default_factory=time.monotonic)
    lost: str | None = None

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.index}"

    @property
    def active(self) -> bool:
        return not self.done and self.lost is None

    def info(self) -> dict:
        return {"member": self.name, "index": self.index, "kind": self.kind, "pid": self.pid, "host": self.host,
                "cpus": self.cpus, "done": self.done, "aborted": self.aborted, "lost": self.lost,
                "totals": self.totals}


def _error_from(d: dict, who: str) -> WorkbooksError:
    """A generator's error (code, exit, message, hint) as the typed error it was."""
    import workbooks.errors as errs

    code, msg = d.get("code") or "generator_failed", f"{who}: {d.get('message') or 'failed'}"
    for obj in vars(errs).values():
        if isinstance(obj, type) and issubclass(obj, WorkbooksError) and getattr(obj, "code", None) == code:
            with contextlib.suppress(Exception):
                return obj(msg, hint=d.get("hint") or None)
    e = GeneratorFailed(msg, hint=d.get("hint") or None)
    with contextlib.suppress(Exception):
        e.exit_code = int(d.get("exit") or 1)
    return e


def member_plan(plan_dict: dict, member: int, members: int) -> dict:
    """The plan as one member runs it. Open model: the same plan (each member keeps its share of the
    global arrivals). Closed model: `closed_concurrency` is the run's total, split over the members."""
    if plan_dict.get("model") != "closed" or members <= 1:
        return plan_dict
    total = int(plan_dict.get("closed_concurrency") or 1)
    return {**plan_dict, "closed_concurrency": total // members + (1 if member < total % members else 0)}


def check_closed_split(plan) -> None:
    """A closed-model run needs at least one loop per generator."""
    members = int(plan.procs or 0) + int(plan.remote or 0)
    if plan.model == "closed" and int(plan.closed_concurrency or 0) < members:
        raise UsageError(f"closed_concurrency {plan.closed_concurrency} is less than the {members} generator processes",
                         hint="every process runs at least one loop: raise --concurrency or lower --procs")


class Coordinator:
    """Generators of one run: bind, spawn, join, assign, start, collect, stop."""

    def __init__(self, plan, *, data=None, log=None, stderr_path: Path | None = None,
                 remote_wait_s: float = REMOTE_WAIT_S):
        self.plan = plan
        self.data = data
        self.log = log
        self.stderr_path = stderr_path
        self.remote_wait_s = remote_wait_s
        self.ctx = None
        self.auth = None
        self.tmp: str | None = None
        self.ipc_endpoint: str | None = None
        self.tcp_endpoint: str | None = None
        self.local_sock = None
        self.remote_sock = None
        self.procs: list[subprocess.Popen] = []
        self.members: list[Member] = []
        self._by_key: dict[tuple[int, bytes], Member] = {}
        self._next_ping = 0.0
        self.refused: list[dict] = []
        self.started = False
        self._stderr = None

    # -- sockets ---------------------------------------------------------------------------
    def _router(self):
        import zmq

        s = self.ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)
        s.setsockopt(zmq.RCVHWM, 100000)
        s.setsockopt(zmq.SNDHWM, 10000)
        s.setsockopt(zmq.MAXMSGSIZE, 64 * 1024 * 1024)
        return s

    def open(self) -> None:
        import zmq

        from workbooks.pool import endpoints as E

        self.ctx = zmq.Context()
        self.tmp = tempfile.mkdtemp(prefix="wb-loadtest-")
        os.chmod(self.tmp, 0o700)
        self.ipc_endpoint = f"ipc://{self.tmp}/coordinator.sock"
        self.local_sock = self._router()
        E.bind_private(self.local_sock, self.ipc_endpoint)
        if int(self.plan.remote or 0) > 0:
            listen = self.plan.listen
            if not listen or not str(listen).startswith("tcp://"):
                raise UsageError(f"--remote {self.plan.remote} needs --listen tcp://HOST:PORT (got {listen!r})",
                                 hint="e.g. --listen tcp://0.0.0.0:5590; remote generators join it with CURVE keys")
            s = self._router()
            try:
                E.setup_curve_server(s, self.data)
            except FileNotFoundError as e:
                s.close(0)
                raise UsageError(str(e), hint="run `wbx ops keys` on this machine, then copy keys/server.key and a "
                                              "client .key_secret to each generator machine") from None
            self.auth = E.KeyAuthenticator(self.ctx, self.data, on_reject=self._on_reject)
            self.auth.start()
            try:
                s.bind(listen)
            except zmq.ZMQError as e:
                s.close(0)
                raise UsageError(f"cannot listen on {listen}: {e}",
                                 hint="pick a free port and an address of this machine, e.g. tcp://0.0.0.0:5590") from None
            self.remote_sock = s
            self.tcp_endpoint = s.getsockopt(zmq.LAST_ENDPOINT).decode()

    def _on_reject(self, event: dict) -> None:
        self.refused.append(event)
        if self.log:
            self.log.warning("generator_key_refused", key=event.get("key"), address=event.get("address"),
                             reason=event.get("reason"))

    def _socks(self):
        return [s for s in (self.local_sock, self.remote_sock) if s is not None]

    def send(self, m: Member, kind: str, **body) -> bool:
        import zmq

        body["type"] = kind
        try:
            m.sock.send_multipart([m.ident, G.pack(body)], zmq.NOBLOCK)
            return True
        except zmq.ZMQError:  # gone (ROUTER_MANDATORY) or its queue is full
            return False

    def _send_to(self, sock, ident: bytes, kind: str, **body) -> None:
        import zmq

        body["type"] = kind
        with contextlib.suppress(zmq.ZMQError):
            sock.send_multipart([ident, G.pack(body)], zmq.NOBLOCK)

    # -- processes -------------------------------------------------------------------------
    def spawn(self) -> None:
        """Start plan.procs local generators (their own session: a terminal's Ctrl-C is ours to handle)."""
        n = int(self.plan.procs or 0)
        if n <= 0:
            return
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env[G.PARENT_ENV] = str(os.getpid())
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.pop("WB_API_KEY", None)  # the key, if any, travels in the assignment
        if self.stderr_path is not None:
            self._stderr = open(self.stderr_path, "ab")
        for _ in range(n):
            p = subprocess.Popen([sys.executable, "-m", "workbooks.loadtest.generator", "--connect", self.ipc_endpoint],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=self._stderr if self._stderr is not None else subprocess.DEVNULL,
                                 env=env, start_new_session=True, close_fds=True)
            self.procs.append(p)
        if self.log:
            self.log.info("generators_spawned", pids=[p.pid for p in self.procs])

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _stderr_tail(self, n: int = 4000) -> str:
        """Where the generators' log is, with the last error in it (a record or a traceback line)."""
        if self.stderr_path is None:
            return ""
        last = ""
        with contextlib.suppress(OSError):
            for line in self.stderr_path.read_bytes()[-n:].decode("utf-8", "replace").splitlines():
                line = line.strip()
                if '"level": "error"' in line or (line and not line.startswith("{") and "Error" in line):
                    last = line
        return f"the generators' log: {self.stderr_path}" + (f"; last error: {last[:400]}" if last else "")

    # -- messages --------------------------------------------------------------------------
    def _drain(self) -> list[tuple[Member | None, object, bytes, dict]]:
        """Every message waiting now: (member or None, socket, ident, message)."""
        import zmq

        out = []
        for sock in self._socks():
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if len(frames) != 2:
                    continue
                try:
                    msg = G.unpack(frames[1])
                except Exception:
                    continue
                if not isinstance(msg, dict):
                    continue
                m = self._by_key.get((id(sock), frames[0]))
                if m is not None:
                    m.last_seen = time.monotonic()
                out.append((m, sock, frames[0], msg))
        return out

    def _ping(self) -> None:
        now = time.monotonic()
        if now < self._next_ping:
            return
        self._next_ping = now + PING_EVERY_S
        for m in self.members:
            if m.active:
                self.send(m, "ping")

    def _check_alive(self) -> list[Member]:
        """Members that just got lost: a local process that exited, or a silent remote."""
        lost = []
        now = time.monotonic()
        for m in self.members:
            if not m.active:
                continue
            if m.proc is not None and m.proc.poll() is not None:
                m.lost = f"process {m.pid} exited with {m.proc.returncode}"
            elif self.started and now - m.last_seen > MEMBER_SILENT_S:
                m.lost = f"silent for {MEMBER_SILENT_S:g} s"
            if m.lost:
                lost.append(m)
                if self.log:
                    self.log.error("generator_lost", member=m.name, why=m.lost)
        return lost

    async def _sleep(self) -> None:
        """Until a socket has something (its ZeroMQ FD is readable) or POLL_S passed: the caller
        drains every socket before waiting, as ZeroMQ's FD signals edges, not levels."""
        import trio

        wait = trio.lowlevel.wait_readable
        socks = self._socks()
        with trio.move_on_after(POLL_S):
            if len(socks) == 1:
                await wait(socks[0].FD)
            elif socks:
                async with trio.open_nursery() as n:
                    for sock in socks:
                        async def one(sock=sock):
                            await wait(sock.FD)
                            n.cancel_scope.cancel()

                        n.start_soon(one)
            else:
                await trio.sleep(POLL_S)

    # -- phases ----------------------------------------------------------------------------
    async def join(self) -> list[Member]:
        """Wait for every local process's hello and plan.remote remote hellos; number them."""
        n_local, n_remote = int(self.plan.procs or 0), int(self.plan.remote or 0)
        if n_local + n_remote <= 0:
            raise UsageError("a run needs at least one generator", hint="--procs 1 (the default) or --remote N")
        check_closed_split(self.plan)
        t_begin = time.monotonic()
        locals_: list[Member] = []
        remotes: list[Member] = []
        pid_to_proc = {p.pid: p for p in self.procs}
        while len(locals_) < n_local or len(remotes) < n_remote:
            for m, sock, ident, msg in self._drain():
                if msg.get("type") != "hello" or m is not None:
                    continue
                remote = sock is self.remote_sock
                group, want = (remotes, n_remote) if remote else (locals_, n_local)
                if len(group) >= want:
                    self._send_to(sock, ident, "refuse", why="this run has all the generators it asked for")
                    continue
                if msg.get("v") != G.PROTOCOL:
                    self._send_to(sock, ident, "refuse", why=f"protocol {msg.get('v')!r}, coordinator speaks {G.PROTOCOL}")
                    continue
                pid = msg.get("pid") if isinstance(msg.get("pid"), int) else None
                mem = Member(kind="remote" if remote else "local", ident=ident, sock=sock, pid=pid,
                             host=str(msg.get("host"))[:200] if msg.get("host") else None,
                             cpus=msg.get("cpus") if isinstance(msg.get("cpus"), int) else None,
                             proc=None if remote else pid_to_proc.get(pid))
                group.append(mem)
                self._by_key[(id(sock), ident)] = mem
                if self.log:
                    self.log.info("generator_joined", kind=mem.kind, pid=mem.pid, host=mem.host)
            waited = time.monotonic() - t_begin
            for p in self.procs:
                if p.poll() is not None and not any(m.proc is p for m in locals_):
                    raise GeneratorFailed(f"local generator {p.pid} exited with {p.returncode} before joining",
                                          hint=self._stderr_tail() or None)
            if len(locals_) < n_local and waited > JOIN_LOCAL_S:
                raise GeneratorFailed(f"{n_local - len(locals_)} of {n_local} local generators did not start within "
                                      f"{JOIN_LOCAL_S:g} s", hint=self._stderr_tail() or "the machine may be overloaded")
            if len(remotes) < n_remote and waited > self.remote_wait_s:
                why = f"; refused {len(self.refused)} connection(s) with unknown CURVE keys" if self.refused else ""
                raise RemoteGeneratorsMissing(
                    f"{len(remotes)} of {n_remote} remote generators joined {self.tcp_endpoint} within "
                    f"{self.remote_wait_s:g} s{why}",
                    hint=f"on each generator machine: wbx loadtest generator --connect {self.tcp_endpoint} "
                         f"--server-key server.key --client-key client.key_secret (keys from `wbx ops keys`; "
                         f"its public key must be in keys/authorized/)")
            self._ping_pending(locals_ + remotes)
            await self._sleep()
        self.members = locals_ + remotes
        for i, m in enumerate(self.members):
            m.index = i
        return self.members

    def _ping_pending(self, ms: list[Member]) -> None:
        now = time.monotonic()
        if now < self._next_ping:
            return
        self._next_ping = now + PING_EVERY_S
        for m in ms:
            self.send(m, "ping")

    async def prepare(self, plan_dict: dict, key: str | None) -> None:
        """Assign member numbers and the plan; wait until every generator's target is set up."""
        n = len(self.members)
        for m in self.members:
            body = {"plan": member_plan(plan_dict, m.index, n), "member": m.index, "members": n}
            if key:
                body["key"] = key  # over ipc (0600) or CURVE only; never logged
            self.send(m, "assign", **body)
        deadline = time.monotonic() + READY_S
        while not all(m.ready for m in self.members):
            for m, _sock, _ident, msg in self._drain():
                if m is None:
                    continue
                kind = msg.get("type")
                if kind == "ready":
                    m.ready = True
                    m.describe = msg.get("describe") if isinstance(msg.get("describe"), dict) else {}
                elif kind == "failed":
                    raise _error_from(msg.get("error") if isinstance(msg.get("error"), dict) else {}, f"generator {m.name}")
            lost = self._check_alive()
            if lost:
                raise GeneratorFailed(f"generator {lost[0].name} was lost while preparing: {lost[0].lost}",
                                      hint=self._stderr_tail() or None)
            if time.monotonic() > deadline:
                slow = [m.name for m in self.members if not m.ready]
                raise GeneratorFailed(f"generators {', '.join(slow)} were not ready within {READY_S:g} s")
            self._ping()
            await self._sleep()

    def start(self, ahead_s: float = 1.0) -> float:
        """Send the common start (wall seconds, `ahead_s` from now); returns it."""
        start_wall = time.time() + ahead_s
        for m in self.members:
            self.send(m, "start", start_wall=start_wall)
            m.last_seen = time.monotonic() + ahead_s
        self.started = True
        return start_wall

    async def collect(self) -> tuple[list[tuple[Member, dict]], list[Member]]:
        """Messages from members since the last call (waits a poll interval when there are none),
        and members lost since."""
        msgs = [(m, msg) for m, _s, _i, msg in self._drain() if m is not None]
        if not msgs:
            await self._sleep()
            msgs = [(m, msg) for m, _s, _i, msg in self._drain() if m is not None]
        for m, msg in msgs:
            if msg.get("type") == "done":
                m.done = True
                m.aborted = bool(msg.get("aborted"))
                m.totals = msg.get("totals") if isinstance(msg.get("totals"), dict) else {}
            elif msg.get("type") == "tick" and isinstance(msg.get("t"), int):
                m.through = max(m.through, msg["t"])
        self._ping()
        return msgs, self._check_alive()

    def abort(self, why: str) -> None:
        for m in self.members:
            if m.active:
                self.send(m, "abort", why=why)

    def active(self) -> list[Member]:
        return [m for m in self.members if m.active]

    # -- the end ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop and reap every local process, close the sockets, remove the socket directory."""
        with contextlib.suppress(Exception):
            for m in self.members:
                if m.active:
                    self.send(m, "bye")
        deadline = time.monotonic() + STOP_GRACE_S
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait()
        for s in self._socks():
            s.close(0)
        self.local_sock = self.remote_sock = None
        if self.auth is not None:
            with contextlib.suppress(Exception):
                self.auth.stop()
            self.auth = None
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
