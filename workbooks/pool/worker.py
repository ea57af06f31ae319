"""A pool worker: one process, one `workbooks.oql.Kernel`, one request at a time.

The worker connects a DEALER to the broker's backend, says READY, and answers REQ messages
with the kernel's output bytes as a separate frame (never decoded or re-encoded). Kernel
trouble (deadline, memory cap, trap, non-UTF-8 input) becomes a typed ERR reply and the worker
carries on with a fresh instance; it does not die for a bad document.

Heartbeats go out from a second thread on a second socket, so a worker deep in a long kernel
call still proves it is alive, and a worker that is truly stuck (SIGSTOP, a wedged process)
goes silent and is replaced. The broker heartbeats back; if it goes quiet for three intervals
the worker drops its socket and reconnects with exponential back-off (the broker may have been
restarted and forgotten it). SIGTERM is a graceful stop: say BYE, answer whatever the broker
already sent, exit once the broker acknowledges (or after a grace period).

The module comes from the on-disk compile cache (see workbooks.oql.kernel), so a replacement
worker is READY in tens of milliseconds; the load time is reported in READY.
"""

from __future__ import annotations

import time

_T_MAIN = time.time()  # the interpreter is up and running this module (start-up phases, see READY)

import itertools  # noqa: E402
import os  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

import zmq  # noqa: E402

from workbooks.pool import protocol as P  # noqa: E402
from workbooks.pool.bulk import THRESHOLD, BulkDir, BulkError  # noqa: E402
from workbooks.readiness import notify_ready  # noqa: E402

_T_IMPORTS = time.time()

HEARTBEAT_MS = int(os.environ.get("WB_POOL_HEARTBEAT_MS", "1000"))
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:  # pragma: no cover - not Linux
        return 0


class _DeferredLog:
    """structlog, loaded off the start-up path.

    Importing structlog costs ~100 ms, which would come straight out of the time a replacement
    worker needs to be READY. Events logged before it is loaded are kept and written, in order
    and with their original timestamps, as soon as the heartbeat thread has configured it.
    """

    def __init__(self, child_id: str, role: str = "worker"):
        self.child_id = child_id
        self.role = role  # the records' `role` (workflow runners log as "runner")
        self._real = None
        self._early: list = []
        self._lock = threading.Lock()

    def load(self) -> None:
        from workbooks import log as wblog

        # role, id and pid are process-wide in workbooks.log: every thread logs with them.
        real = wblog.configure(self.role, id=self.child_id, worker_id=self.child_id)
        with self._lock:
            for level, event, kw in self._early:
                getattr(real, level)(event, **kw)
            self._early.clear()
            self._real = real

    def _emit(self, level: str, event: str, **kw) -> None:
        real = self._real
        if real is None:
            with self._lock:
                if self._real is None:
                    kw.setdefault("timestamp", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z")
                    self._early.append((level, event, kw))
                    return
                real = self._real
        getattr(real, level)(event, **kw)

    def info(self, event: str, **kw) -> None:
        self._emit("info", event, **kw)

    def warning(self, event: str, **kw) -> None:
        self._emit("warning", event, **kw)

    def error(self, event: str, **kw) -> None:
        self._emit("error", event, **kw)


def _error_code(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if code in P.ERROR_CODES:
        return code
    if isinstance(exc, (TypeError, ValueError)):
        return "bad_request"
    return "kernel_trap"


class Worker:
    def __init__(
        self,
        endpoint: str,
        *,
        child_id: str | None = None,
        heartbeat_ms: int = HEARTBEAT_MS,
        curve: tuple[bytes, bytes, bytes] | None = None,
        log=None,
        spare: bool = False,
    ):
        self.endpoint = endpoint
        self.spare = spare  # a standby: the broker sends it work only while it covers a lost worker
        self.child_id = child_id or os.environ.get("WB_CHILD_ID") or f"worker-{os.getpid()}"
        self.pid = os.getpid()
        self.heartbeat_s = heartbeat_ms / 1000
        self.curve = curve  # (server_public, client_public, client_secret) for tcp
        self.log = log or _DeferredLog(self.child_id)
        self.ctx = zmq.Context()
        self.sock: zmq.Socket | None = None
        self.monitor: zmq.Socket | None = None
        self._lost = False
        self.ident = b""
        self._gen = itertools.count(1)
        self.served = 0
        self.errors = 0
        self.busy_op: str | None = None
        self.wasm_bytes = 0
        self.stopping = False
        self._stop_hb = threading.Event()
        self._hb_ident = None
        self.kernel = None
        self.load_info: dict = {}
        self._ready_signalled = False
        self.phases: dict = {"main": _T_MAIN, "imports": _T_IMPORTS}
        self.bulk: BulkDir | None = None  # shared-memory bodies (local workers only)

    # -- setup -----------------------------------------------------------------------------
    def load_kernel(self) -> None:
        from workbooks.oql.kernel import Kernel

        t0 = time.perf_counter()
        self.phases["kernel_imported"] = time.time()
        self.kernel = Kernel()
        self.phases["instance"] = time.time()
        self.load_info = dict(self.kernel.load_info)
        self.load_info["ready_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        self.wasm_bytes = self.kernel.memory_bytes()

    def _socket(self, ident: bytes) -> zmq.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, ident)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RECONNECT_IVL, 50)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        if self.curve:
            from workbooks.pool.endpoints import setup_curve_client

            setup_curve_client(s, *self.curve)
        s.connect(self.endpoint)
        return s

    def _info(self) -> dict:
        return {
            "v": P.VERSION,
            "id": self.ident.decode(),
            "child_id": self.child_id,
            "pid": self.pid,
            "host": os.uname().nodename,
            "wasm_sha256": self.load_info.get("wasm_sha256"),
            "module_source": self.load_info.get("source"),
            "ready_ms": self.load_info.get("ready_ms"),
            "role": "spare" if self.spare else "worker",
            # wall-clock times of this process's start-up (the crash drill breaks recovery down by them)
            "phases": self.phases,
        }

    _MONITOR_EVENTS = int(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)

    def connect(self) -> None:
        if self.sock is not None:
            self._close_monitor()
            self.sock.close(0)
        self.ident = f"{self.child_id}.{self.pid}.{next(self._gen)}".encode()
        self.sock = self._socket(self.ident)
        # The connection lost and made again means a new broker (kill -9, crash): announce
        # ourselves at once instead of a heartbeat later, so requests queued there (clients
        # re-send theirs) find a worker within milliseconds.
        self.monitor = self.sock.get_monitor_socket(self._MONITOR_EVENTS)
        self._lost = False
        self.phases.setdefault("ready_sent", time.time())
        self._send([P.READY, P.pack(self._info())])
        self.last_heard = time.monotonic()
        self.log.info("worker_ready", ident=self.ident.decode(), endpoint=self.endpoint, **{
            k: self.load_info.get(k) for k in ("source", "load_ms", "ready_ms")
        })

    def _close_monitor(self) -> None:
        if self.monitor is not None:
            try:
                self.sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self.monitor.close(0)
            self.monitor = None

    def _check_monitor(self) -> bool:
        """Read the connection events; re-announce after a reconnection. True when it sent on
        the main socket: the caller must then look at that socket (EVENTS) before it sleeps,
        because the send may have consumed the socket's FD edge (see run())."""
        mon = self.monitor
        if mon is None:
            return False
        sent = False
        while mon.getsockopt(_EVENTS) & _POLLIN:
            try:
                frames = mon.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            ev = int.from_bytes(frames[0][:2], "little") if len(frames[0]) >= 2 else 0
            if ev == zmq.EVENT_DISCONNECTED:
                self._lost = True
            elif ev == zmq.EVENT_HANDSHAKE_SUCCEEDED and self._lost:
                self._lost = False
                self._send([P.READY, P.pack(self._info())])
                sent = True
                self.log.info("worker_reannounced", ident=self.ident.decode(), why="reconnected")
        return sent

    # -- heartbeats ------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        hb = None
        hb_for = None
        pending_log = isinstance(self.log, _DeferredLog)
        try:
            while True:
                ident = self.ident
                if hb is None or hb_for != ident:
                    if hb is not None:
                        hb.close(0)
                    hb = self._socket(ident + b"/hb")
                    hb.setsockopt(zmq.SNDHWM, 4)
                    hb_for = ident
                info = {
                    "v": P.VERSION,
                    "id": ident.decode(),
                    "child_id": self.child_id,
                    "pid": self.pid,
                    "served": self.served,
                    "errors": self.errors,
                    "busy": self.busy_op,
                    "rss_bytes": rss_bytes(),
                    "wasm_bytes": self.wasm_bytes,
                }
                try:
                    hb.send_multipart([P.HB, P.pack(info)], zmq.NOBLOCK)
                except zmq.Again:
                    pass  # broker unreachable; the main loop handles reconnecting
                if pending_log:  # first heartbeat out, now pay for structlog
                    pending_log = False
                    self.log.load()
                if self._stop_hb.wait(self.heartbeat_s):
                    break
        except zmq.ContextTerminated:
            pass
        finally:
            if hb is not None:
                try:
                    hb.close(0)
                except zmq.ZMQError:
                    pass

    # -- serving ---------------------------------------------------------------------------
    def _send(self, frames, copy: bool = True) -> bool:
        """Never block: with no connection to the broker (it is down, or refused our key) the
        message has nowhere to go; the broker re-sends in-flight requests elsewhere anyway."""
        try:
            P.send_frames(self.sock, frames)
            return True
        except zmq.Again:
            return False

    def handle(self, frames) -> None:
        budget = P.unpack_budget(frames[1])
        raw = frames[2]
        req_id = None
        consume = None
        try:
            req = P.unpack(raw)
            req_id = req["id"]
            op = req["op"]
            args = req["args"]
            if any(isinstance(a, dict) for a in args):
                args = [self._bulk_arg(a) if isinstance(a, dict) else a for a in args]
            slot = req.get("reply_bulk")
            if slot and self.bulk is not None:
                def consume(view, slot=slot):
                    if len(view) >= THRESHOLD and self.bulk.write(slot, view) is not None:
                        return {"name": slot, "len": len(view)}
                    return bytes(view)
            self.busy_op = op
            out = self.kernel.call_raw(op, *args, deadline_ms=max(1, min(budget, req.get("deadline_ms", budget))),
                                       consume=consume)
        except Exception as exc:  # every failure is a typed reply; the worker lives on
            code = _error_code(exc)
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            self.errors += 1
            self.busy_op = None
            self.wasm_bytes = self.kernel.memory_bytes()
            self._send([P.ERR, P.error_header(req_id, code, message)])
            self.log.warning("request_failed", request_id=req_id, code=code, error=message)
            return
        self.served += 1
        self.busy_op = None
        if isinstance(out, dict):  # the output is in shared memory
            self._send([P.OK, P.ok_header(req_id, out), b""])
        else:
            self._send([P.OK, P.ok_header(req_id), out], copy=False)
        if self.served & 63 == 0:
            self.wasm_bytes = self.kernel.memory_bytes()

    def _bulk_arg(self, ref: dict) -> bytes:
        if self.bulk is None:
            raise BulkError("this worker cannot read shared-memory bodies (it is not on the broker's host)")
        return self.bulk.read(ref.get("bulk"), ref.get("len"))

    def run(self) -> int:
        from workbooks.pool.memtune import tune_malloc

        tune_malloc()
        if self.bulk is None:
            self.bulk = BulkDir.open(self.endpoint, serve=True)
        rfd, wfd = os.pipe()
        os.set_blocking(wfd, False)
        os.set_blocking(rfd, False)
        signal.set_wakeup_fd(wfd)

        def on_term(signum, frame):
            self.stopping = True

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        if self.kernel is None:
            self.load_kernel()
        self.connect()
        hb_thread = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        hb_thread.start()
        backoff = 0.05
        bye_sent_at = None
        # epoll on the socket's ZMQ_FD rather than zmq.Poller (which reads ZMQ_EVENTS before and
        # after sleeping: syscalls on every request). The FD only signals new commands and a
        # send may consume one, so the socket is looked at (EVENTS) after every send before we
        # sleep; the drain loop below ends with exactly that look.
        epoll = select.epoll()
        epoll.register(rfd, select.EPOLLIN)
        sock_fd = self.sock.getsockopt(zmq.FD)
        epoll.register(sock_fd, select.EPOLLIN)
        mon_fd = self.monitor.getsockopt(zmq.FD)
        epoll.register(mon_fd, select.EPOLLIN)
        look = True
        try:
            while True:
                if self.stopping and bye_sent_at is None:
                    if not self._send([P.BYE]):
                        self.log.info("worker_stopped", ident=self.ident.decode(), served=self.served, broker="unreachable")
                        return 0  # nobody to say goodbye to, and nothing in flight
                    bye_sent_at = time.monotonic()
                    look = True
                    self.log.info("worker_stopping", ident=self.ident.decode())
                # Read the monitor (also what re-arms its fd before we sleep). A READY it sends
                # after a reconnection processes the main socket's pending commands, so a message
                # that came in just before (the new broker's RESET, answering our heartbeat
                # socket) no longer shows on the FD, and what the broker sends next (its HB, the
                # queued requests) lands in the same, already active pipe and signals nothing:
                # without a look we slept through it all until the 3-heartbeat silence made us
                # reconnect (~3 s late after a broker restart).
                if self._check_monitor():
                    look = True
                if not look:
                    fired = epoll.poll(self.heartbeat_s)
                    if not fired:
                        look = True  # a quiet interval: look anyway (one EVENTS a heartbeat; a backstop)
                    for fd, _ in fired:
                        if fd == rfd:
                            try:
                                os.read(rfd, 512)
                            except BlockingIOError:
                                pass
                        elif fd == mon_fd:
                            if self._check_monitor():
                                look = True
                        else:
                            look = True
                now = time.monotonic()
                if look:
                    look = False
                    sock = self.sock
                    while sock.getsockopt(_EVENTS) & _POLLIN:  # not until EAGAIN: exceptions are dear
                        frames = P.recv_frames(sock)
                        self.last_heard = time.monotonic()
                        backoff = 0.05
                        if not self._ready_signalled:
                            # The broker answered our READY: tell the supervisor we are in
                            # service (a replace-first restart waits for this).
                            self._ready_signalled = True
                            notify_ready()
                        kind = frames[0].bytes
                        if kind == P.REQ and len(frames) == 3:
                            self.handle(frames)
                        elif kind == P.BYE:
                            if bye_sent_at is not None:
                                self.log.info("worker_stopped", ident=self.ident.decode(), served=self.served)
                                return 0
                        elif kind == P.RESET:
                            # The broker does not know us (it restarted): announce again.
                            self._send([P.READY, P.pack(self._info())])
                            self.log.info("worker_reannounced", ident=self.ident.decode())
                        # HB needs nothing beyond last_heard
                    now = time.monotonic()
                if bye_sent_at is not None and now - bye_sent_at > max(2.0, 3 * self.heartbeat_s):
                    self.log.warning("worker_stopped", ident=self.ident.decode(), served=self.served, broker="no goodbye ack")
                    return 0
                if now - self.last_heard > 3 * self.heartbeat_s:
                    if bye_sent_at is not None:
                        self.log.info("worker_stopped", ident=self.ident.decode(), served=self.served, broker="silent")
                        return 0
                    # The broker went quiet: reconnect with back-off and jitter.
                    delay = backoff * (0.5 + (time.perf_counter_ns() % 1000) / 1000)  # jitter
                    self.log.warning("broker_silent_reconnecting", delay_s=round(delay, 3))
                    backoff = min(backoff * 2, 5.0)
                    select.select([rfd], [], [], delay)  # a signal (SIGTERM) cuts the wait short
                    if self.stopping:
                        self.log.info("worker_stopped", ident=self.ident.decode(), served=self.served, broker="unreachable")
                        return 0
                    epoll.unregister(sock_fd)
                    epoll.unregister(mon_fd)
                    self.connect()
                    sock_fd = self.sock.getsockopt(zmq.FD)
                    epoll.register(sock_fd, select.EPOLLIN)
                    mon_fd = self.monitor.getsockopt(zmq.FD)
                    epoll.register(mon_fd, select.EPOLLIN)
                    look = True
        finally:
            epoll.close()
            self._stop_hb.set()
            hb_thread.join(timeout=2)
            if self.sock is not None:
                self._close_monitor()
                self.sock.close(0)
            self.ctx.term()
            if self.bulk is not None:
                self.bulk.close()
            signal.set_wakeup_fd(-1)
            os.close(rfd)
            os.close(wfd)


def curve_from_files(server_key: str, client_key: str) -> tuple[bytes, bytes, bytes]:
    from workbooks.pool.endpoints import load_keypair

    server_public, _ = load_keypair(server_key)
    client_public, client_secret = load_keypair(client_key)
    if not client_secret:
        raise ValueError(f"{client_key} holds no secret key (use the .key_secret file)")
    return server_public, client_public, client_secret


def warm_cache() -> dict:
    """Compile the module into the disk cache once, so workers only deserialize it (and prove that
    everything a worker imports loads with this interpreter's flags)."""
    import workbooks.log  # noqa: F401  (loaded lazily by workers)
    from workbooks.oql.kernel import _EngineHolder, kernel_wasm_path, load_module

    _, info = load_module(_EngineHolder.get(), kernel_wasm_path())
    return info


def _fast_args(argv: list[str]) -> dict | None:
    """The supervisor's fixed argv (--connect X --id Y --heartbeat-ms N [--spare]) without
    importing argparse (~8 ms of a replacement worker's start-up); None for anything else."""
    out: dict = {"spare": False}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--spare":
            out["spare"] = True
            i += 1
            continue
        if a not in ("--connect", "--id", "--heartbeat-ms") or i + 1 >= len(argv) or argv[i + 1].startswith("-"):
            return None
        out[a[2:].replace("-", "_")] = argv[i + 1]
        i += 2
    if "connect" not in out or not out["connect"].startswith("ipc://"):
        return None
    try:
        out["heartbeat_ms"] = int(out.get("heartbeat_ms", HEARTBEAT_MS))
    except ValueError:
        return None
    return out


def main(argv: list[str] | None = None) -> int:
    fast = _fast_args(sys.argv[1:] if argv is None else argv)
    if fast is not None:
        return Worker(fast["connect"], child_id=fast.get("id"), heartbeat_ms=fast["heartbeat_ms"], spare=fast["spare"]).run()
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="workbooks.pool.worker")
    ap.add_argument("--connect", help="broker backend endpoint (ipc://... or tcp://HOST:PORT)")
    ap.add_argument("--id", help="worker id (default $WB_CHILD_ID)")
    ap.add_argument("--server-key", help="broker's public key file (tcp)")
    ap.add_argument("--client-key", help="this worker's secret key file (tcp)")
    ap.add_argument("--heartbeat-ms", type=int, default=HEARTBEAT_MS)
    ap.add_argument("--spare", action="store_true", help="a standby: serves only while covering a lost worker")
    ap.add_argument("--warm", action="store_true", help="fill the compiled-module cache and exit")
    ns = ap.parse_args(argv)
    if ns.warm:
        info = warm_cache()
        print(json.dumps(info), flush=True)
        return 0
    if not ns.connect:
        ap.error("--connect is required")
    curve = None
    if ns.connect.startswith("tcp://"):
        if not (ns.server_key and ns.client_key):
            ap.error("tcp endpoints need --server-key and --client-key (made by `wbx ops keys`)")
        curve = curve_from_files(ns.server_key, ns.client_key)
    return Worker(ns.connect, child_id=ns.id, heartbeat_ms=ns.heartbeat_ms, curve=curve, spare=ns.spare).run()


if __name__ == "__main__":
    sys.exit(main())
