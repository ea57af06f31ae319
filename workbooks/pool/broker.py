"""The pool broker: clients in front, workers behind, load-balanced to whichever worker is free.

Why its own supervised child (and not a thread inside the supervisor):
- The hot path (receive, route, forward untouched kernel bytes) runs on its own core without
  sharing a GIL with the supervisor's process bookkeeping, and the supervisor stays a small,
  boring program whose only job is to keep children alive.
- A broker bug cannot take the supervisor down with it: the broker is restarted like any child,
  workers see their connection come back (socket monitor) and announce themselves at once (or
  are told RESET after a heartbeat), clients' DEALER sockets reconnect by themselves and re-send
  the (pure) requests the dead broker held, so callers in flight get their answer a moment late.
- It starts first and stops last (children stop in reverse start order), so workers always have
  somewhere to say goodbye to. The broker still reaches the supervisor when it must (a worker
  that stopped heartbeating is killed through the supervisor's control endpoint, so the
  supervisor records why) and answers the supervisor's `metrics`/`status` questions through its
  own control socket.

Routing: each worker has at most one request in flight. Idle workers wait in a stack: a request
goes to the worker that became idle most recently, whose caches are warm and whose CPU may not
have gone to sleep yet (on a VM an idle vCPU that halted costs tens of microseconds to wake;
measured on 2 workers at low load: p50 0.154-0.175 ms against 0.233 ms when taking the one idle
longest). Under load every worker is busy and this changes nothing. A request that finds no
idle worker waits in a bounded queue; when that is full the caller gets
`overloaded` at once. Every request carries a deadline: expired queued requests are answered
`deadline`, and a worker that overruns (the kernel stops itself at the deadline) is answered
for after a grace period. A worker that dies with a request in flight - noticed at once from
its socket closing, or after three missed heartbeats - has that request re-sent to another
worker, at most twice; the third loss is a typed `kernel_trap`.

Spares: a worker started with `--spare` registers as a standby. It heartbeats and is watched
like any worker but gets no requests, so it adds no capacity in steady state. When a serving
worker is lost (its connection closed, e.g. kill -9, or it went silent), a standby is promoted
at once to cover it: the lost worker's request goes to it and the pool keeps its capacity while
the supervisor starts the replacement. When a worker with the lost one's child id registers
again, the spare finishes what it has and goes back to standby. A loss with no standby free is
remembered, and the next standby to register covers it (unless its replacement came first).
So the serving capacity is the `worker` group's size, never more, and a crash costs the time
to notice the closed connection rather than a Python start-up. When an operator drains or scales
away every worker (`--force`), a standby covers `no-worker` and serves until a worker is back,
rather than callers getting `no_workers`.

Runners: the same broker, started with `--role runner`, is the workflow runners' pool: its own
sockets (endpoints.runner_*), `step` as its only op (protocol.RUNNER_OPS), long deadlines, and no
re-sends: a runner lost with a step is answered `worker_lost`, because only the caller knows
whether that step may run twice (workbooks.workflow.pool_exec retries it once unless `:persist`).
A second instance rather than roles inside this one: a 30 s step can never hold a slot, a queue
place or broker CPU an OQL render needs, and each pool is supervised, drained and scaled alone.

Dead-peer detection without ROUTER_NOTIFY (a draft API): every message's source fd (SRCFD) is
remembered per worker, and the socket monitor's DISCONNECTED event names the fd that closed.
Because libzmq emits DISCONNECTED before it closes the fd, a new connection can reuse an fd only
after that event is queued; when a new worker shows up on an fd we still attribute to an older
one, the older one is gone and the event still in flight is skipped.
"""

from __future__ import annotations

import argparse
import collections
import heapq
import itertools
import os
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import zmq
from zmq.utils.monitor import parse_monitor_message

from workbooks.pool import endpoints as E
from workbooks.pool import protocol as P
from workbooks.pool.bulk import SWEEP_EVERY_S as BULK_SWEEP_EVERY_S
from workbooks.pool.bulk import BulkDir, BulkError
from workbooks.pool.memtune import tune_malloc
from workbooks.pool.metrics import Histogram
from workbooks.readiness import notify_ready

HEARTBEAT_MS = int(os.environ.get("WB_POOL_HEARTBEAT_MS", "1000"))
MAX_QUEUE = int(os.environ.get("WB_POOL_QUEUE", "256"))
NO_WORKERS_MS = int(os.environ.get("WB_POOL_NO_WORKERS_MS", "3000"))
MAX_RESENDS = 2
DEADLINE_GRACE_S = 0.25  # how long past its deadline a busy worker may take before we answer for it
MISSED_HEARTBEATS = 3
STOP_DRAIN_S = 3.0  # on SIGTERM: how long to let accepted requests finish before exiting
UNCOVERED_FORGET_S = 60.0  # a lost worker not replaced within this is not waited for by spares
NONE_SERVING = "no-worker"  # what a spare covers when every worker was drained or scaled away


@dataclass(eq=False)
class Job:
    sock: zmq.Socket  # the frontend socket the client is on
    cid: bytes
    req_id: object
    op: str
    frame: object  # the request frame, forwarded to the worker untouched
    arrived: float
    deadline: float
    attempts: int = 0
    done: bool = False
    worker: "WorkerState | None" = None
    req: dict | None = None  # kept only when the request refers to shared memory (see dispatch)
    dispatched: float = 0.0  # when it was last handed to a worker (0: never); busy and service time start here


@dataclass(eq=False)
class WorkerState:
    ident: bytes
    sock: zmq.Socket  # the backend socket the worker is on
    child_id: str
    pid: int
    host: str
    remote: bool
    fd: int
    registered_at: float
    last_hb: float
    info: dict
    hb_fd: int = -1
    state: str = "ready"  # ready | busy | draining | leaving
    job: Job | None = None
    served: int = 0
    errors: dict = field(default_factory=dict)
    rss_bytes: int = 0
    wasm_bytes: int = 0
    drained: bool = False  # operator asked: no new work
    leaving: bool = False  # the worker said BYE
    latency: dict = field(default_factory=dict)
    busy_s: float = 0.0  # dispatch -> reply, summed over its finished requests (stats() adds the one in flight)
    spare: bool = False  # a standby worker (see "Spares" above)
    covering: str | None = None  # the lost worker a promoted spare stands in for


class Broker:
    def __init__(
        self,
        data=None,
        *,
        frontends: list[str] | None = None,
        backends: list[str] | None = None,
        control: str | None = None,
        supervisor: str | None = None,
        max_queue: int = MAX_QUEUE,
        heartbeat_ms: int = HEARTBEAT_MS,
        no_workers_ms: int = NO_WORKERS_MS,
        log=None,
        ops: dict | None = None,
        max_resends: int = MAX_RESENDS,
        lost_code: str = "kernel_trap",
        max_deadline_ms: int = P.MAX_DEADLINE_MS,
    ):
        from workbooks import log as wblog

        self.data = data
        # Bound explicitly (not only as contextvars) so helper threads log with role and pid too.
        self.log = log or wblog.configure("broker").bind(role="broker", pid=os.getpid())
        self.frontend_eps = frontends or [E.client_endpoint(data)]
        self.backend_eps = backends or [E.worker_endpoint(data)]
        self.control_ep = control or E.broker_control_endpoint(data)
        self.supervisor_ep = supervisor
        self.max_queue = max_queue
        self.hb_s = heartbeat_ms / 1000
        self.no_workers_s = no_workers_ms / 1000
        # What this broker serves (see "Runners" above): the kernel's ops by default.
        self.ops = ops
        self.max_resends = max_resends
        self.lost_code = lost_code
        self.max_deadline_ms = max_deadline_ms
        self.ctx = zmq.Context()
        self.auth: E.KeyAuthenticator | None = None
        self.frontends: list[zmq.Socket] = []
        self.backends: list[zmq.Socket] = []
        self.monitors: dict[zmq.Socket, zmq.Socket] = {}
        self.workers: dict[bytes, WorkerState] = {}
        self.ready: collections.deque[WorkerState] = collections.deque()
        self.queue: collections.deque[Job] = collections.deque()
        self.timers: list = []  # heap of (when, seq, job)
        self._seq = itertools.count()
        self.fd_owner: dict[tuple[int, int], WorkerState] = {}  # (backend index, fd) -> worker
        self.skip_disconnect: collections.Counter = collections.Counter()
        self.started_at = time.time()
        self.requests: dict[str, dict[str, int]] = {}
        self.latency: dict[str, Histogram] = {}
        # Where a request's time goes: waiting for a worker (arrival -> first dispatch) and being
        # served (dispatch -> reply); workers' busy seconds (a counter: busy/elapsed = utilisation).
        self.queue_wait: dict[str, Histogram] = {}
        self.service: dict[str, Histogram] = {}
        self.busy_s = 0.0  # finished requests' busy time, workers since lost included
        self.errors: collections.Counter = collections.Counter()
        self.retries = 0
        self.lost_total: collections.Counter = collections.Counter()
        self.lost_recent: collections.deque = collections.deque(maxlen=20)
        self.standby: collections.deque[WorkerState] = collections.deque()  # idle spares, not serving
        self.uncovered: dict[str, float] = {}  # child id of a lost worker nobody covers -> when lost
        self.promotions = 0
        self.promotions_recent: collections.deque = collections.deque(maxlen=20)
        self.stopping = False
        # Shared-memory bodies (workbooks.pool.bulk): accepted from ipc frontends only.
        self.bulk: BulkDir | None = None
        self.bulk_fronts: set = set()
        self.bulk_stats = {"requests": 0, "inlined_for_remote": 0, "swept": 0}
        self._next_sweep = 0.0

    # -- setup -----------------------------------------------------------------------------
    def _router(self, endpoint: str, *, backend: bool) -> zmq.Socket:
        s = self.ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        if backend:
            # A worker that reconnects under its routing id takes it over; never on the
            # frontend, where a client claiming someone else's id must not receive their replies.
            s.setsockopt(zmq.ROUTER_HANDOVER, 1)
            s.setsockopt(zmq.ROUTER_MANDATORY, 1)
        s.setsockopt(zmq.RCVHWM, 10000)
        s.setsockopt(zmq.MAXMSGSIZE, P.MAX_MESSAGE_BYTES)
        s.setsockopt(zmq.SNDHWM, 10000)
        if endpoint.startswith("tcp://"):
            if self.auth is None:
                self.auth = E.KeyAuthenticator(self.ctx, self.data, on_reject=self._on_auth_reject)
                self.auth.start()
            E.setup_curve_server(s, self.data)
        E.bind_private(s, endpoint)
        return s

    def _on_auth_reject(self, event: dict) -> None:
        self.log.warning("auth_rejected", key=event["key"], address=event["address"], reason=event["reason"])

    def bind(self) -> None:
        for ep in self.frontend_eps:
            self.frontends.append(self._router(ep, backend=False))
            if ep.startswith("ipc://"):
                if self.bulk is None:
                    self.bulk = BulkDir.open(ep, serve=True)
                if self.bulk is not None:
                    self.bulk_fronts.add(self.frontends[-1])
        for ep in self.backend_eps:
            s = self._router(ep, backend=True)
            self.backends.append(s)
            self.monitors[s] = s.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.control = self.ctx.socket(zmq.REP)
        self.control.setsockopt(zmq.LINGER, 0)
        E.bind_private(self.control, self.control_ep)
        self.log.info("broker_listening", frontends=self.frontend_eps, backends=self.backend_eps, control=self.control_ep)

    # -- replies to clients ----------------------------------------------------------------
    def _count(self, op: str, outcome: str) -> None:
        by = self.requests.get(op)
        if by is None:
            by = self.requests[op] = {}
        by[outcome] = by.get(outcome, 0) + 1

    def _fail(self, sock, cid, req_id, code: str, message: str, op: str | None = None) -> None:
        self.errors[code] += 1
        self._count(op or "_invalid", code)
        try:
            sock.send_multipart([cid, P.error_header(req_id, code, message)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _fail_job(self, job: Job, code: str, message: str) -> None:
        if job.done:
            return
        job.done = True
        self._observe(job, time.monotonic())
        self._fail(job.sock, job.cid, job.req_id, code, message, job.op)

    def _observe(self, job: Job, now: float) -> Histogram:
        h = self.latency.get(job.op)
        if h is None:
            h = self.latency[job.op] = Histogram()
        h.observe(now - job.arrived)
        return h

    # -- routing ---------------------------------------------------------------------------
    def on_request(self, sock, frames) -> None:
        cid = frames[0].bytes
        if len(frames) != 2:
            self._fail(sock, cid, None, "protocol", f"a request is one frame, got {len(frames) - 1}")
            return
        frame = frames[1]
        if self.stopping:
            try:
                rid = P.decode_request(frame.buffer, ops=self.ops, max_deadline_ms=self.max_deadline_ms)["id"]
            except P.ProtocolViolation as v:
                rid = v.req_id
            self._fail(sock, cid, rid, "overloaded", "the pool broker is restarting; retry in a moment")
            return
        try:
            req = P.decode_request(frame.buffer, allow_bulk=sock in self.bulk_fronts, ops=self.ops,
                                   max_deadline_ms=self.max_deadline_ms)
        except P.ProtocolViolation as v:
            self._fail(sock, cid, v.req_id, v.code, v.message)
            return
        now = time.monotonic()
        job = Job(sock, cid, req["id"], req["op"], frame, now, now + req["deadline_ms"] / 1000)
        if self.bulk_fronts and P.uses_bulk(req):
            job.req = req
            self.bulk_stats["requests"] += 1
        if self.ready:
            w = self.ready.pop()
            if not self.dispatch(job, w):
                self.ready.append(w)
            return
        if len(self.queue) >= self.max_queue:
            self._fail_job(job, "overloaded", f"all workers are busy and {len(self.queue)} requests are queued; retry shortly")
            return
        self.queue.append(job)
        heapq.heappush(self.timers, (job.deadline, next(self._seq), job))
        if not self._serviceable():
            heapq.heappush(self.timers, (now + self.no_workers_s, next(self._seq), job))

    def _watch_for_no_workers(self) -> None:
        """Nobody left to serve: queued callers get `no_workers` unless a worker turns up in time."""
        if self._serviceable():
            return
        when = time.monotonic() + self.no_workers_s
        for j in self.queue:
            if not j.done:
                heapq.heappush(self.timers, (when, next(self._seq), j))

    def _serviceable(self) -> bool:
        """Is any worker able to take work eventually (not drained by an operator, not leaving,
        not a spare on standby)?"""
        return any(not (w.drained or w.leaving or (w.spare and w.covering is None)) for w in self.workers.values())

    # -- spares ----------------------------------------------------------------------------
    def _promote(self, lost_child_id: str, reason: str) -> bool:
        """Put a standby spare in service in place of a lost worker; False if none is free."""
        while self.standby:
            s = self.standby.popleft()
            if s.ident not in self.workers or s.drained or s.leaving or s.covering is not None:
                continue
            s.covering = lost_child_id
            self.uncovered.pop(lost_child_id, None)
            self.promotions += 1
            event = {"at": time.time(), "spare": s.child_id, "pid": s.pid, "covering": lost_child_id, "reason": reason}
            self.promotions_recent.append(event)
            self.log.info("spare_promoted", spare=s.child_id, spare_pid=s.pid, covering=lost_child_id, reason=reason)
            self._make_ready(s)
            return True
        return False

    def _ensure_serving(self) -> None:
        """No worker serves (all drained, leaving or gone) but a standby is free: it serves."""
        if self.standby and not self.stopping and not self._serviceable():
            self._promote(NONE_SERVING, "no worker serving")

    def _cover_uncovered(self) -> None:
        now = time.monotonic()
        for child_id, at in list(self.uncovered.items()):
            if now - at > UNCOVERED_FORGET_S:  # never replaced (scaled away, given up): not ours to cover
                del self.uncovered[child_id]
        for child_id, _ in sorted(self.uncovered.items(), key=lambda kv: kv[1]):
            if not self.standby or not self._promote(child_id, "lost earlier"):
                return

    def _release_cover(self, child_id: str) -> None:
        """`child_id` is back (its replacement registered): spares covering it return to standby."""
        self.uncovered.pop(child_id, None)
        for s in list(self.workers.values()):
            if s.spare and s.covering == child_id:
                s.covering = None
                self.log.info("spare_returned", spare=s.child_id, spare_pid=s.pid, covered=child_id)
                if s.job is None and not s.leaving:
                    try:
                        self.ready.remove(s)
                    except ValueError:
                        pass
                    if not s.drained:
                        self._make_ready(s)
                # busy: it goes back to standby when its reply comes (_make_ready)

    def dispatch(self, job: Job, w: WorkerState) -> bool:
        """Send `job` to the idle worker `w`; False (w still idle) if the job expired meanwhile."""
        now = time.monotonic()
        budget_ms = int((job.deadline - now) * 1000)
        if budget_ms <= 0:
            self._fail_job(job, "deadline", "the request's deadline passed while it waited for a worker")
            return False
        frame = job.frame
        if w.remote and job.req is not None:
            # A worker on another host cannot open our shared memory: send it the bytes.
            try:
                frame = P.inline_request(job.req, self.bulk.read)
            except BulkError as e:
                self._fail_job(job, "bad_request", str(e))
                return False
            self.bulk_stats["inlined_for_remote"] += 1
        if not job.dispatched:  # a re-sent request waited once
            h = self.queue_wait.get(job.op)
            if h is None:
                h = self.queue_wait[job.op] = Histogram()
            h.observe(now - job.arrived)
        job.dispatched = now
        w.state = "busy"
        w.job = job
        job.worker = w
        try:
            P.send_frames(w.sock, (w.ident, P.REQ, P.pack_budget(budget_ms), frame))
        except zmq.ZMQError:  # EHOSTUNREACH: the worker's connection is gone
            w.job = None
            job.worker = None
            self.lose(w, "unreachable", requeue=False)
            self._requeue(job)
        return True

    def _requeue(self, job: Job) -> None:
        """Put a job whose worker vanished at the head of the queue (it has waited longest)."""
        self.queue.appendleft(job)
        heapq.heappush(self.timers, (job.deadline, next(self._seq), job))
        self.pump()

    def _make_ready(self, w: WorkerState) -> None:
        if w.leaving or w.ident not in self.workers:
            w.state = "leaving"
            if w.leaving:
                self._forget(w)
            return
        if w.drained:
            w.state = "draining"
            return
        if w.spare and w.covering is None:
            w.state = "standby"
            if w not in self.standby:
                self.standby.append(w)
            self._cover_uncovered()
            return
        w.state = "ready"
        while self.queue:
            job = self.queue.popleft()
            if not job.done and self.dispatch(job, w):
                return
        self.ready.append(w)

    def pump(self) -> None:
        while self.queue and self.ready:
            job = self.queue.popleft()
            if not job.done:
                w = self.ready.pop()
                if not self.dispatch(job, w):
                    self.ready.append(w)

    # -- workers ---------------------------------------------------------------------------
    def on_backend(self, bi: int, sock, frames) -> None:
        ident = frames[0].bytes
        kind = frames[1].bytes if len(frames) > 1 else b""
        if kind == P.OK or kind == P.ERR:
            w = self.workers.get(ident)
            if w is None or w.job is None:
                return  # a reply we already answered for (deadline) or from a worker we dropped
            job = w.job
            w.job = None
            job.worker = None
            now = w.last_hb = time.monotonic()  # any message proves the worker alive
            busy = now - job.dispatched
            w.busy_s += busy
            self.busy_s += busy
            sh = self.service.get(job.op)
            if sh is None:
                sh = self.service[job.op] = Histogram()
            sh.observe(busy)
            if not job.done:
                job.done = True
                self._observe(job, now)
                lh = w.latency.get(job.op)
                if lh is None:
                    lh = w.latency[job.op] = Histogram()
                lh.observe(now - job.arrived)
                if kind == P.OK and len(frames) == 4:
                    w.served += 1
                    self._count(job.op, "ok")
                    reply = (job.cid, frames[2], frames[3])  # header and kernel bytes, untouched
                else:
                    code = None
                    if kind == P.ERR and len(frames) == 3:
                        try:
                            code = P.decode_reply_header(frames[2].buffer)["error"]["code"]
                        except Exception:
                            code = None
                    if code in P.ERROR_CODES:
                        reply = (job.cid, frames[2])
                    else:  # a malformed reply: the caller still gets a typed answer
                        code = "protocol"
                        reply = (job.cid, P.error_header(job.req_id, code, f"worker {w.child_id} sent a malformed reply"))
                    w.errors[code] = w.errors.get(code, 0) + 1
                    self.errors[code] += 1
                    self._count(job.op, code)
                try:
                    P.send_frames(job.sock, reply)
                except zmq.ZMQError:
                    pass  # the client went away: nothing to deliver
            self._make_ready(w)
            return
        if kind == P.HB:
            self.on_heartbeat(bi, sock, frames)
            return
        if kind == P.READY and len(frames) == 3:
            self.on_ready(bi, sock, ident, frames)
            return
        if kind == P.BYE:
            w = self.workers.get(ident)
            try:
                sock.send_multipart([ident, P.BYE])
            except zmq.ZMQError:
                pass
            if w is not None:
                w.leaving = True
                if w.job is None:
                    self._forget(w)
                else:
                    w.state = "leaving"
                self.log.info("worker_leaving", worker=w.child_id, worker_pid=w.pid, in_flight=w.job is not None)
                self._ensure_serving()
            return
        self.log.warning("backend_garbage", ident=ident[:64].decode("utf-8", "replace"), kind=kind[:16].decode("utf-8", "replace"))

    def _claim_fd(self, bi: int, fd: int, w: WorkerState) -> None:
        key = (bi, fd)
        old = self.fd_owner.get(key)
        if old is not None and old is not w:
            # The fd was closed and reused, so `old`'s connection is gone: its DISCONNECTED
            # event is still on its way and must not be blamed on `w`.
            self.skip_disconnect[key] += 1
            if old.ident in self.workers and (old.fd == fd):
                self.lose(old, "disconnected")
            elif old.hb_fd == fd:
                old.hb_fd = -1
        self.fd_owner[key] = w

    def on_ready(self, bi: int, sock, ident: bytes, frames) -> None:
        try:
            info = P.unpack(frames[2].buffer)
            assert isinstance(info, dict)
        except Exception:
            self.log.warning("worker_ready_garbage", ident=ident[:64].decode("utf-8", "replace"))
            return
        if info.get("v") != P.VERSION:
            self.log.warning("worker_wrong_version", ident=ident[:64].decode("utf-8", "replace"), v=info.get("v"))
            try:
                sock.send_multipart([ident, P.BYE])
            except zmq.ZMQError:
                pass
            return
        fd = frames[2].get(zmq.SRCFD)
        now = time.monotonic()
        w = self.workers.get(ident)
        if w is not None:  # re-announce (after RESET): keep counters
            self._claim_fd(bi, fd, w)
            w.fd = fd
            w.last_hb = now
            return
        w = WorkerState(
            ident=ident, sock=sock, child_id=str(info.get("child_id") or ident.decode("utf-8", "replace")),
            pid=int(info.get("pid") or 0), host=str(info.get("host") or ""), remote=self.backend_eps[bi].startswith("tcp://"),
            fd=fd, registered_at=time.time(), last_hb=now, info=info,
        )
        w.spare = info.get("role") == "spare"
        self.workers[ident] = w
        self._claim_fd(bi, fd, w)
        try:
            sock.send_multipart([ident, P.HB])  # lets the worker tell its supervisor it is in service
        except zmq.ZMQError:
            pass
        self.log.info("worker_registered", worker=w.child_id, worker_pid=w.pid, ident=ident.decode("utf-8", "replace"),
                      module=info.get("module_source"), ready_ms=info.get("ready_ms"), worker_role="spare" if w.spare else "worker",
                      phases=info.get("phases"))
        self._make_ready(w)
        if not w.spare:
            self._release_cover(w.child_id)
            if not w.drained:
                self._release_cover(NONE_SERVING)

    def on_heartbeat(self, bi: int, sock, frames) -> None:
        try:
            info = P.unpack(frames[2].buffer)
            main_ident = info["id"].encode()
        except Exception:
            return
        w = self.workers.get(main_ident)
        if w is None:
            try:
                sock.send_multipart([main_ident, P.RESET])
            except zmq.ZMQError:
                pass
            return
        w.last_hb = time.monotonic()
        w.rss_bytes = int(info.get("rss_bytes") or 0)
        w.wasm_bytes = int(info.get("wasm_bytes") or 0)
        fd = frames[2].get(zmq.SRCFD)
        if fd != w.hb_fd:
            self._claim_fd(bi, fd, w)
            w.hb_fd = fd

    def on_disconnect(self, bi: int, fd: int) -> None:
        key = (bi, fd)
        if self.skip_disconnect.get(key):
            self.skip_disconnect[key] -= 1
            return
        w = self.fd_owner.pop(key, None)
        if w is None:
            return
        if w.fd == fd and w.ident in self.workers:
            self.lose(w, "disconnected")
        elif w.hb_fd == fd:
            w.hb_fd = -1

    def _forget(self, w: WorkerState) -> None:
        self.workers.pop(w.ident, None)
        try:
            self.ready.remove(w)
        except ValueError:
            pass
        if w.spare:
            try:
                self.standby.remove(w)
            except ValueError:
                pass
        w.state = "leaving"

    def lose(self, w: WorkerState, reason: str, requeue: bool = True) -> None:
        """Drop a worker that died or went silent; its request goes to another worker."""
        if w.ident not in self.workers:
            return
        self._forget(w)
        self.lost_total[reason] += 1
        event = {"at": time.time(), "worker": w.child_id, "pid": w.pid, "reason": reason}
        self.lost_recent.append(event)
        job, w.job = w.job, None
        if job is not None and job.dispatched:
            self.busy_s += time.monotonic() - job.dispatched  # busy until it was lost
        self.log.warning("worker_lost", worker=w.child_id, worker_pid=w.pid, reason=reason, in_flight=job is not None and not job.done)
        if not w.remote and not w.drained and not w.leaving and not (w.spare and w.covering is None):
            # A serving worker is gone: a standby takes its place before its request is re-sent.
            covered = w.covering or w.child_id
            if not any(o.child_id == covered for o in self.workers.values()) and not self._promote(covered, reason):
                self.uncovered[covered] = time.monotonic()
        if job is not None and not job.done and requeue:
            job.worker = None
            job.attempts += 1
            if job.attempts > self.max_resends:
                if self.max_resends == 0:
                    self._fail_job(job, self.lost_code, f"worker {w.child_id} (pid {w.pid}) was lost while running "
                                   f"this request ({reason}); it is not re-sent")
                else:
                    self._fail_job(job, self.lost_code, f"{job.attempts} workers died while running this request; not retrying")
            else:
                self.retries += 1
                self._requeue(job)
        self._ensure_serving()
        self._watch_for_no_workers()
        if reason == "missed_heartbeats":
            self.kill_silent(w)

    def kill_silent(self, w: WorkerState) -> None:
        """Ask the supervisor to kill and replace a worker that stopped heartbeating."""
        if w.remote:
            return  # not ours to kill; it will be told RESET if it ever speaks again
        sup = self.supervisor_ep

        def work():
            if sup:
                try:
                    from workbooks.supervisor import ControlClient

                    ControlClient(sup, timeout=5).request("kill_worker", id=w.child_id, pid=w.pid, reason="missed_heartbeats")
                    self.log.info("silent_worker_killed", worker=w.child_id, worker_pid=w.pid, via="supervisor")
                    return
                except Exception as e:
                    self.log.warning("supervisor_kill_failed", worker=w.child_id, error=str(e))
            # No supervisor (or it refused): kill it ourselves if it really is our worker process.
            try:
                cmd = open(f"/proc/{w.pid}/cmdline", "rb").read()
                if (b"workbooks.pool.worker" in cmd or b"workbooks.workflow.worker" in cmd) and os.stat(f"/proc/{w.pid}").st_uid == os.getuid():
                    os.kill(w.pid, signal.SIGKILL)
                    self.log.info("silent_worker_killed", worker=w.child_id, worker_pid=w.pid, via="broker")
            except OSError:
                pass

        threading.Thread(target=work, name="kill-silent", daemon=True).start()

    # -- timers ----------------------------------------------------------------------------
    def on_timers(self, now: float) -> None:
        """Deadlines and no-worker waits of queued requests (in-flight ones: see heartbeat())."""
        timers = self.timers
        expired = False
        while timers and timers[0][0] <= now:
            _, _, job = heapq.heappop(timers)
            if job.done or job.worker is not None:
                continue  # answered, or on a worker now
            if now >= job.deadline:
                self._fail_job(job, "deadline", "the request's deadline passed before a worker was free")
                expired = True
            elif not self._serviceable():
                self._fail_job(job, "no_workers", f"no worker has been available for {self.no_workers_s:g}s")
                expired = True
        if expired:
            self.queue = collections.deque(j for j in self.queue if not j.done)

    def heartbeat(self, now: float) -> None:
        if self.bulk is not None and now >= self._next_sweep:
            self._next_sweep = now + BULK_SWEEP_EVERY_S
            self.bulk_stats["swept"] += self.bulk.sweep(max_deadline_s=self.max_deadline_ms / 1000)
        limit = MISSED_HEARTBEATS * self.hb_s
        for w in list(self.workers.values()):
            if now - w.last_hb > limit:
                self.lose(w, "missed_heartbeats")
                continue
            job = w.job
            if job is not None and not job.done and now > job.deadline + DEADLINE_GRACE_S:
                # The kernel stops itself at the deadline; this is the backstop for a worker
                # that cannot answer. It stays busy until it does answer (or goes silent).
                self._fail_job(job, "deadline", "the worker did not answer within the request's deadline")
            try:
                w.sock.send_multipart([w.ident, P.HB], zmq.NOBLOCK)
            except zmq.ZMQError:
                self.lose(w, "unreachable")

    # -- control ---------------------------------------------------------------------------
    def stats(self) -> dict:
        now = time.monotonic()
        wall = time.time()
        ws = []
        busy_total = self.busy_s
        for w in self.workers.values():
            busy = w.busy_s
            if w.job is not None and w.job.dispatched:
                busy += now - w.job.dispatched  # the request in flight counts as it goes: no jumps
                busy_total += now - w.job.dispatched
            ws.append({
                "id": w.ident.decode("utf-8", "replace"),
                "child_id": w.child_id,
                "pid": w.pid,
                "host": w.host,
                "remote": w.remote,
                "state": w.state,
                "served": w.served,
                "in_flight": 1 if w.job is not None and not w.job.done else 0,
                "last_heartbeat_at": wall - (now - w.last_hb),
                "last_heartbeat_age_s": round(now - w.last_hb, 3),
                "rss_bytes": w.rss_bytes,
                "wasm_bytes": w.wasm_bytes,
                "errors": dict(w.errors),
                "registered_at": w.registered_at,
                "module": w.info.get("module_source"),
                "ready_ms": w.info.get("ready_ms"),
                "latency": {op: h.to_dict() for op, h in w.latency.items()},
                "busy_seconds": round(busy, 6),
                "role": "spare" if w.spare else "worker",
                "covering": w.covering,
            })
        return {
            "broker": {"pid": os.getpid(), "started_at": self.started_at, "uptime_s": round(wall - self.started_at, 3),
                       "frontends": self.frontend_eps, "backends": self.backend_eps, "heartbeat_ms": int(self.hb_s * 1000)},
            "workers": ws,
            "queue_depth": sum(1 for j in self.queue if not j.done),
            "max_queue": self.max_queue,
            "requests": {op: dict(by) for op, by in self.requests.items()},
            "latency": {op: h.to_dict() for op, h in self.latency.items()},
            "queue_wait": {op: h.to_dict() for op, h in self.queue_wait.items()},
            "service": {op: h.to_dict() for op, h in self.service.items()},
            "busy_seconds": round(busy_total, 6),
            "errors": dict(self.errors),
            "retries": self.retries,
            "lost_total": dict(self.lost_total),
            "lost_recent": list(self.lost_recent),
            "spares": {
                "standby": sum(1 for w in self.workers.values() if w.spare and w.covering is None and w.state == "standby"),
                "covering": {w.child_id: w.covering for w in self.workers.values() if w.spare and w.covering},
                "uncovered": sorted(self.uncovered),
                "promotions_total": self.promotions,
                "promotions_recent": list(self.promotions_recent),
            },
            "auth": self.auth.snapshot() if self.auth else {"rejected_total": 0, "recent": []},
            "bulk": {"dir": str(self.bulk.path) if self.bulk else None, **self.bulk_stats},
        }

    def _find(self, wid: str) -> list[WorkerState]:
        return [w for w in self.workers.values() if wid in (w.child_id, w.ident.decode("utf-8", "replace"), str(w.pid))]

    def on_control(self, msg: bytes) -> bytes:
        """The broker's control socket speaks the actors' wire format (workbooks.actors.wire):
        `{v, op, args, id?}` -> `{v, id?, ok, data | error}`, so `request_sync` reaches it."""
        from workbooks.actors import wire

        try:
            req = wire.parse_request(wire.unpack(msg))
        except Exception as e:
            return wire.pack(wire.error_reply({"code": "protocol", "message": getattr(e, "message", str(e))}))
        op, args, rid = req["op"], req["args"], req["id"]

        def ok(data):
            return wire.pack(wire.ok_reply(data, rid))

        def err(code, message):
            return wire.pack(wire.error_reply({"code": code, "message": message}, rid))

        if op == "ping":
            return ok({"pid": os.getpid()})
        if op == "stats":
            return ok(self.stats())
        if op in ("drain", "undrain"):
            found = self._find(str(args.get("id", "")))
            if not found:
                return err("not_found", f"no worker {args.get('id')!r} is registered")
            for w in found:
                w.drained = op == "drain"
                if w.drained:
                    try:
                        self.ready.remove(w)
                    except ValueError:
                        pass
                    if w.job is None:
                        w.state = "draining"
                elif w.job is None and not w.leaving:
                    self._make_ready(w)
                self.log.info(f"worker_{op}ed", worker=w.child_id, worker_pid=w.pid)
            if op == "drain":
                self._ensure_serving()
                self._watch_for_no_workers()
            elif any(not w.spare for w in found):
                self._release_cover(NONE_SERVING)
            return ok({"workers": [w.child_id for w in found], "in_flight": sum(1 for w in found if w.job)})
        return err("unknown_op", f"unknown control op {op!r}; one of ping, stats, drain, undrain")

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> int:
        tune_malloc()
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        signal.set_wakeup_fd(wfd)

        def on_term(signum, frame):
            self.stopping = True

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        epoll = None
        if not self.frontends:
            self.bind()
        # One epoll over the sockets' ZMQ_FDs instead of zmq.Poller: zmq_poll reads ZMQ_EVENTS of
        # every socket before and after it sleeps (a poll(2) and a getpid(2) each, ~9 syscalls a
        # message here), while we only need to look at the sockets that may have input. A ZMQ_FD
        # only signals *new* commands, and any send or recv may consume one, so before sleeping
        # every hot socket touched since its last look is checked until it shows no input.
        recv_frames = P.recv_frames
        EVENTS, POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
        hot = self.frontends + self.backends
        back = {s: i for i, s in enumerate(self.backends)}
        front = set(self.frontends)
        mon = {m: back[s] for s, m in self.monitors.items()}
        by_fd: dict[int, object] = {}
        epoll = select.epoll()
        for sk in hot + list(mon) + [self.control]:
            fd = sk.getsockopt(zmq.FD)
            by_fd[fd] = sk
            epoll.register(fd, select.EPOLLIN)
        epoll.register(rfd, select.EPOLLIN)

        def drain(sk) -> bool:
            """Handle what `sk` has (bounded, for fairness); True if anything was there."""
            if not sk.getsockopt(EVENTS) & POLLIN:
                return False
            handle = self.on_request if sk in front else None
            bi = back.get(sk)
            try:
                for _ in range(256):
                    if handle is not None:
                        handle(sk, recv_frames(sk))
                    else:
                        self.on_backend(bi, sk, recv_frames(sk))
                    if not sk.getsockopt(EVENTS) & POLLIN:
                        break
            except zmq.Again:
                pass
            return True

        next_hb = time.monotonic() + self.hb_s
        todo = list(hot)
        # Signal-driven from here on: libzmq only signals a socket's FD for input once the
        # socket has looked for input and found none, so look at the others once now.
        first_look = list(mon) + [self.control]
        try:
            stop_by = None
            while True:
                # Look at the hot sockets until a pass finds nothing. Handling a message may send
                # on any socket, so after a pass that handled something every hot socket is looked
                # at again, except those last looked at after the last message was handled.
                while todo:
                    last = -1
                    for i, sk in enumerate(todo):
                        if drain(sk):
                            last = i
                    if last < 0:
                        break
                    clean = todo[last:]
                    todo = [sk for sk in hot if sk not in clean]
                if self.stopping:
                    # Finish what was accepted (queued and in flight), refuse new work, then go.
                    if stop_by is None:
                        stop_by = time.monotonic() + STOP_DRAIN_S
                        self.log.info("broker_draining", queued=len(self.queue),
                                      in_flight=sum(1 for w in self.workers.values() if w.job))
                    busy = any(w.job is not None and not w.job.done for w in self.workers.values())
                    if (not busy and not any(not j.done for j in self.queue)) or time.monotonic() > stop_by:
                        break
                now = time.monotonic()
                wake = next_hb if stop_by is None else min(next_hb, now + 0.05)
                if self.timers and self.timers[0][0] < wake:
                    wake = self.timers[0][0]
                other = False  # anything besides hot-socket input (then every hot socket is re-checked)
                if first_look:
                    fired = [(sk.getsockopt(zmq.FD), 0) for sk in first_look]
                    first_look = None
                else:
                    fired = epoll.poll(max(0.0, wake - now))
                for fd, _ in fired:
                    sk = by_fd.get(fd)
                    if sk is None:  # the signal wake-up pipe
                        try:
                            os.read(rfd, 512)
                        except BlockingIOError:
                            pass
                        other = True
                    elif sk in mon:
                        while True:
                            try:
                                ev = parse_monitor_message(sk.recv_multipart(zmq.NOBLOCK))
                            except zmq.Again:
                                break
                            if ev["event"] == zmq.EVENT_DISCONNECTED:
                                self.on_disconnect(mon[sk], ev["value"])
                        other = True
                    elif sk is self.control:
                        while sk.getsockopt(EVENTS) & POLLIN:
                            try:
                                msg = sk.recv(zmq.NOBLOCK)
                            except zmq.Again:
                                break
                            sk.send(self.on_control(msg))
                        other = True
                    elif sk not in todo:
                        todo.append(sk)
                now = time.monotonic()
                if self.timers and self.timers[0][0] <= now:
                    self.on_timers(now)
                    other = True
                if now >= next_hb:
                    self.heartbeat(now)
                    next_hb = now + self.hb_s
                    other = True
                if other or self.stopping:
                    todo = list(hot)
            self.log.info("broker_stopping", workers=len(self.workers), queued=len(self.queue))
            for job in list(self.queue) + [w.job for w in self.workers.values() if w.job is not None]:
                self._fail_job(job, "no_workers", "the pool is shutting down")
            return 0
        finally:
            for s in list(self.monitors):
                try:
                    s.disable_monitor()
                except zmq.ZMQError:
                    pass
            for m in self.monitors.values():
                m.close(0)
            for s in self.frontends:
                s.close(linger=1000)  # let the last replies leave (a restart finishes accepted work)
            for s in self.backends + [self.control]:
                s.close(0)
            for ep in self.frontend_eps + self.backend_eps + [self.control_ep]:
                path = E.ipc_path(ep)
                if path is not None:
                    try:
                        path.unlink()
                    except OSError:
                        pass
            if self.auth is not None:
                self.auth.stop()
            self.ctx.term()
            if self.bulk is not None:
                self.bulk.sweep(max_deadline_s=self.max_deadline_ms / 1000)
                self.bulk.remove_if_empty()
                self.bulk.close()
            signal.set_wakeup_fd(-1)
            os.close(rfd)
            os.close(wfd)
            if epoll is not None:
                epoll.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="workbooks.pool.broker")
    ap.add_argument("--data", help="data dir (default $WB_DATA or ./wb-data)")
    ap.add_argument("--client-tcp", action="append", default=[], help="also accept clients on this tcp endpoint (CURVE)")
    ap.add_argument("--worker-tcp", action="append", default=[], help="also accept workers on this tcp endpoint (CURVE)")
    ap.add_argument("--supervisor", help="supervisor control endpoint (to kill silent workers)")
    ap.add_argument("--max-queue", type=int, default=MAX_QUEUE)
    ap.add_argument("--heartbeat-ms", type=int, default=HEARTBEAT_MS)
    ap.add_argument("--no-workers-ms", type=int, default=NO_WORKERS_MS)
    ap.add_argument("--role", choices=("oql", "runner"), default="oql",
                    help="oql: the kernel pool; runner: the workflow runners' pool (its own endpoints, steps, "
                         "no re-sends: see workbooks.workflow.worker)")
    ns = ap.parse_args(argv)
    data = E.data_dir(ns.data)
    if ns.role == "runner":
        eps = (E.runner_client_endpoint(data), E.runner_worker_endpoint(data))
        role = {"control": E.runner_control_endpoint(data), "ops": P.RUNNER_OPS, "max_resends": 0,
                "lost_code": "worker_lost", "max_deadline_ms": P.RUNNER_MAX_DEADLINE_MS}
    else:
        eps = (E.client_endpoint(data), E.worker_endpoint(data))
        role = {}
    broker = Broker(
        data,
        frontends=[eps[0], *ns.client_tcp],
        backends=[eps[1], *ns.worker_tcp],
        supervisor=ns.supervisor or os.environ.get("WB_SUPERVISOR_ENDPOINT"),
        max_queue=ns.max_queue,
        heartbeat_ms=ns.heartbeat_ms,
        no_workers_ms=ns.no_workers_ms,
        **role,
    )
    broker.bind()
    notify_ready()
    return broker.run()


if __name__ == "__main__":
    sys.exit(main())
