"""Clients of the pool: `AsyncPoolClient` for trio and a blocking `PoolClient`.

Both speak the frontend protocol (workbooks.pool.protocol) over one DEALER socket and return
the kernel's output bytes exactly as the worker sent them. Failures are `PoolError`s whose
`.code` is one of the protocol's typed codes. Every call has a deadline: the broker answers
`deadline` when it passes, and the client gives up by itself a little later if the broker
cannot answer at all, so a caller never hangs. A request sent while the broker restarts waits
in the socket and goes to the new broker; with no broker socket at all the call fails at once
(`no_workers`), and a broker refusing our CURVE key fails it at once too (`protocol`).

A broker that dies (kill -9, a crash) takes the requests it held with it. Every kernel operation
is pure, so a client that sees its connection come back (a socket monitor reports the lost
connection and the new handshake: a new broker incarnation) re-sends at once every request still
waiting for an answer; a duplicate answer is dropped by request id. A re-sent call's shared-memory
files are deleted rather than reused afterwards (the lost broker's worker may still touch them).

pyzmq has no trio integration, so the async client waits on the socket's file descriptor with
`trio.lowlevel.wait_readable`. That descriptor is edge-triggered: it only signals that zmq's
internal state changed, and any send or recv (or reading `zmq.EVENTS`) may consume the edge.
So whoever reads drains the socket until `zmq.EVENTS` shows nothing pending before waiting
again (that check is what re-arms the edge), and a caller
that sends while a reader is parked checks `zmq.EVENTS` and wakes the reader if replies are
already pending. Exactly one task reads the socket at a time (the first caller waiting takes
the role and hands it to another waiter when its own reply arrives), so replies are
dispatched to waiting callers by request id without a background task or a nursery.

Both clients notice a fork (the zmq context cannot cross it) and make a fresh socket in the
child, so they are usable from any process.
"""

from __future__ import annotations

import itertools
import os
import select as _select
import threading
import time
import weakref

import msgpack
import zmq

from workbooks.errors import WorkbooksError
from workbooks.pool import protocol as P
from workbooks.pool.bulk import THRESHOLD as BULK_THRESHOLD
from workbooks.pool.bulk import BulkDir, BulkError
from workbooks.pool.memtune import tune_malloc

_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)

# How long past the request's deadline the client waits for the broker's own `deadline` reply.
CLIENT_GRACE_S = 1.0


class PoolError(WorkbooksError):
    """A typed failure from the pool; `.code` is one of protocol.ERROR_CODES."""

    http_status = 500

    def __init__(self, code: str, message: str, *, request_id=None):
        super().__init__(message)
        self.code = code
        self.request_id = request_id
        self.http_status = {"bad_request": 400, "deadline": 504, "memory": 413, "overloaded": 503,
                            "no_workers": 503, "protocol": 502, "kernel_trap": 500,
                            "worker_lost": 502}.get(code, 500)
        self.retryable = code in ("overloaded", "no_workers", "deadline")


def _default_endpoint() -> str:
    from workbooks.pool.endpoints import client_endpoint

    return client_endpoint()


# Inputs from this size up are offered a reply slot: outputs run to several times the input
# (HTML ~3x, headline JSON up to ~36x), so a mid-sized document may well answer in bulk.
REPLY_SLOT_MIN = BULK_THRESHOLD // 16


class _Bodies:
    """The shared-memory files one call uses: request bodies and the reply slot."""

    __slots__ = ("q", "r", "reply_len")

    def __init__(self):
        self.q: list = []  # (name, size)
        self.r: str | None = None
        self.reply_len = 0


def _too_big(size: int, req_id) -> PoolError:
    return PoolError("bad_request", f"a request of {size} bytes is over the pool's "
                     f"{P.MAX_MESSAGE_BYTES >> 20} MB message limit", request_id=req_id)


def _encode(req_id: int, op: str, args, deadline_ms: int, link: "_Link") -> tuple[bytes, _Bodies | None]:
    """The request frame, and the shared-memory files it uses (None if none). On a link with
    shared memory, arguments of BULK_THRESHOLD bytes or more go to files and a reply slot is
    named; the caller hands the files back with `_Link.finish` when the call ends."""
    args = list(args)
    total = 0
    if link.bulk is not None:
        total = sum(len(a) for a in args if isinstance(a, (str, bytes, bytearray, memoryview)))
    if total < REPLY_SLOT_MIN:  # small calls (the latency-sensitive ones) stay as they were
        payload = P.encode_request(req_id, op, args, deadline_ms)
        if len(payload) > P.MAX_MESSAGE_BYTES:
            raise _too_big(len(payload), req_id)
        return payload, None
    if total > P.MAX_MESSAGE_BYTES:  # the same limit as inline bodies (str: a lower bound)
        raise _too_big(total, req_id)
    bodies = _Bodies()
    try:
        for i, a in enumerate(args):
            if isinstance(a, (str, bytes, bytearray, memoryview)) and len(a) >= BULK_THRESHOLD:
                try:
                    data = a.encode("utf-8") if isinstance(a, str) else a
                except UnicodeEncodeError:
                    continue  # sent inline: the pool reports it as it always has
                size = memoryview(data).nbytes
                name = link.lease_q(data)
                if name is not None:
                    bodies.q.append((name, size))
                    args[i] = {"bulk": name, "len": size}
        req = {"v": P.VERSION, "id": req_id, "op": op, "args": args, "deadline_ms": deadline_ms}
        bodies.r = link.lease_r()
        if bodies.r is not None:
            req["reply_bulk"] = bodies.r
        payload = msgpack.packb(req, use_bin_type=True)
        if len(payload) > P.MAX_MESSAGE_BYTES:
            raise _too_big(len(payload), req_id)
    except BaseException:
        link.finish(bodies, False)
        raise
    link.bulk_sent += len(bodies.q)
    return payload, bodies


def _make_socket(ctx: zmq.Context, endpoint: str, curve) -> zmq.Socket:
    # Not ZMQ_IMMEDIATE: with it, libzmq drops replies still unread when the connection closes
    # (a broker finishing its last requests on restart), and requests sent while the broker is
    # restarting could not wait for it. Missing brokers are caught by _Link.check instead.
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RECONNECT_IVL, 50)
    # A local broker is back within a few hundred ms of a crash: look often (an ipc connect is
    # cheap), so re-sent requests are not held up by a long back-off.
    s.setsockopt(zmq.RECONNECT_IVL_MAX, 250 if endpoint.startswith("ipc://") else 1000)
    s.setsockopt(zmq.SNDHWM, 100000)
    s.setsockopt(zmq.RCVHWM, 100000)
    if curve:
        from workbooks.pool.endpoints import setup_curve_client

        setup_curve_client(s, *curve)
    s.connect(endpoint)
    return s


def _forget_bodies(bulk: BulkDir, pid: int, *pools: list) -> None:
    """Remove the files a link kept for reuse (on close, when it is collected, or at exit)."""
    if pid == os.getpid() and bulk.fd >= 0:
        for pool in pools:
            for name in pool:
                bulk.discard(name)
            pool.clear()
        bulk.remove_if_empty()  # the broker may be gone already; a live one makes it again as needed
        bulk.close()


_MONITOR_IDS = itertools.count(1)


class _Link:
    """A DEALER to the broker, plus what its socket monitor tells: the broker refusing our CURVE
    key, and the connection lost and made again (a new broker: `epoch` goes up, and requests
    sent before are re-sent). No broker socket file at all fails a call at once."""

    _EVENTS = int(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                  | zmq.EVENT_DISCONNECTED)

    def __init__(self, endpoint: str, curve):
        self.endpoint = endpoint
        self.sock = _make_socket(zmq.Context.instance(), endpoint, curve)
        self.ipc_path = endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None
        # A name of our own: pyzmq's default (`monitor.s-<socket fd>`) is taken again by a new socket
        # that gets a closed one's fd before libzmq's reaper has unbound the old monitor
        # (EADDRINUSE under churn of short-lived clients).
        self.monitor = self.sock.get_monitor_socket(
            self._EVENTS, addr=f"inproc://wb-pool-client-monitor-{os.getpid()}-{next(_MONITOR_IDS)}")
        self.curve = bool(curve)
        self.refused: str | None = None
        self.epoch = 0  # connections made again after one was lost (new broker incarnations)
        self._lost = False
        self.resent = 0
        # One descriptor that is readable when either the socket or its monitor may have input
        # (the trio client waits on it); level-triggered over zmq's own notification fds.
        self.waitfd = _select.epoll()
        self.waitfd.register(self.sock.getsockopt(zmq.FD), _select.EPOLLIN)
        self.waitfd.register(self.monitor.getsockopt(zmq.FD), _select.EPOLLIN)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        self.pid = os.getpid()
        self.bulk = None if curve else BulkDir.open(endpoint)  # shared memory for big bodies (ipc only)
        self.bulk_sent = 0
        self.bulk_received = 0
        self.free_q: list[str] = []
        self.free_r: list[str] = []
        self.kept_sizes: dict[str, int] = {}  # file kept (or leased again) -> its length
        # Also when the client is dropped without close(), or the process exits.
        self._finalizer = (weakref.finalize(self, _forget_bodies, self.bulk, self.pid, self.free_q, self.free_r)
                           if self.bulk is not None else None)

    # -- shared-memory bodies (workbooks.pool.bulk) -----------------------------------------------
    # Files kept for reuse: at most KEEP_FILES of each kind and KEEP_TOTAL_BYTES in all (a
    # Docker container's /dev/shm is 64 MB by default and other clients need room too).
    KEEP_FILES = 4
    KEEP_TOTAL_BYTES = 16 << 20

    def lease_q(self, data) -> str | None:
        """A request file holding `data`: a kept one rewritten, else a new one."""
        while self.free_q:
            name = self.free_q.pop()
            if self.bulk.write(name, data) is not None:
                return name
            self.kept_sizes.pop(name, None)
            self.bulk.discard(name)  # swept meanwhile, or unwritable: forget it
        return self.bulk.write(None, data, kind="q", owner_pid=self.pid)

    def lease_r(self) -> str | None:
        """A reply slot: a kept one if it is still there (not swept or cleaned), else a new one."""
        while self.free_r:
            name = self.free_r.pop()
            if self.bulk.exists(name):
                return name
            self.kept_sizes.pop(name, None)
        return self.bulk.create("r", self.pid)

    def finish(self, bodies: _Bodies, ok: bool) -> None:
        """The call ended: keep its files for the next call after an ok reply (nobody else will
        touch them), delete them otherwise (a worker past its deadline might)."""
        for name, size in bodies.q:
            self._keep_or_discard(self.free_q, name, size, ok)
        if bodies.r is not None:
            self._keep_or_discard(self.free_r, bodies.r, bodies.reply_len, ok)

    def _keep_or_discard(self, pool: list, name: str, size: int, ok: bool) -> None:
        sizes = self.kept_sizes
        size = max(size, sizes.get(name, 0))  # a rewritten file keeps its largest length
        others = sum(v for k, v in sizes.items() if k != name)
        if ok and len(pool) < self.KEEP_FILES and others + size <= self.KEEP_TOTAL_BYTES:
            pool.append(name)
            sizes[name] = size
        else:
            sizes.pop(name, None)
            self.bulk.discard(name)

    def discard_reply(self, h: dict | None) -> None:
        """A reply nobody waits for any more. Its reply slot, if it names one, was deleted when
        its call ended (calls that end without an ok reply never keep theirs); make sure."""
        ref = h.get("bulk") if h else None
        if isinstance(ref, dict) and self.bulk is not None:
            name = ref.get("name")
            if name not in self.free_r:
                self.bulk.discard(name)

    def unpack_ok(self, h: dict, frames, req_id, bodies: _Bodies | None) -> bytes:
        """The body of an ok reply: the second frame, or the reply slot it says was written."""
        ref = h.get("bulk")
        if ref is None:
            if len(frames) < 2:
                raise PoolError("protocol", "an ok reply without a body", request_id=req_id)
            return frames[1]
        if bodies is None or bodies.r is None or not isinstance(ref, dict) or ref.get("name") != bodies.r:
            raise PoolError("protocol", "a shared-memory reply in a file this call did not offer", request_id=req_id)
        try:
            data = self.bulk.read(bodies.r, ref.get("len"))
        except BulkError as e:
            raise PoolError("protocol", f"cannot read the reply: {e}", request_id=req_id) from None
        bodies.reply_len = len(data)
        self.bulk_received += 1
        return data

    def bulk_stats(self: "_Link | None") -> dict:
        """Also callable as `_Link.bulk_stats(None)`, for a client that has no link yet."""
        if self is None or self.bulk is None:
            return {"dir": None, "sent": 0, "received": 0}
        return {"dir": str(self.bulk.path), "sent": self.bulk_sent, "received": self.bulk_received}

    def check(self, req_id=None) -> None:
        """Before a call: is there a broker socket at all, and has it not refused our key?"""
        if self.ipc_path is not None and not os.path.exists(self.ipc_path):
            raise PoolError("no_workers", f"the pool broker is not running (no socket at {self.ipc_path}); "
                            "is `wbx serve` running?", request_id=req_id)
        self.events(req_id)

    def events(self, req_id=None) -> int:
        """Read the monitor's events; returns the epoch. Raises when the broker refused our key."""
        mon = self.monitor
        while mon.getsockopt(_EVENTS) & _POLLIN:
            try:
                frames = mon.recv_multipart(_NOBLOCK)
            except zmq.Again:
                break
            ev = int.from_bytes(frames[0][:2], "little") if frames and len(frames[0]) >= 2 else 0
            if ev == zmq.EVENT_DISCONNECTED:
                self._lost = True
            elif ev == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.refused = None
                if self._lost:  # connected again: whoever answers now never saw what we sent before
                    self._lost = False
                    self.epoch += 1
            elif ev in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                self.refused = "key refused" if ev == zmq.EVENT_HANDSHAKE_FAILED_AUTH else "handshake failed"
        if self.refused:
            raise PoolError("protocol", f"the pool broker at {self.endpoint} refused this client ({self.refused}): "
                            "its CURVE key is not authorized there (`wbx ops keys` on the pool's host)", request_id=req_id)
        return self.epoch

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(0)
        self.waitfd.close()
        self.sock.close(0)
        if self._finalizer is not None:
            self._finalizer()


def _header(frame) -> dict | None:
    try:
        h = msgpack.unpackb(frame, raw=False)
    except Exception:
        return None
    return h if isinstance(h, dict) else None


def _result(h: dict | None, frames, req_id, link: _Link, bodies: _Bodies | None) -> bytes:
    """Turn a reply (parsed header + frames) into the kernel's bytes, or raise the typed error."""
    if h is None:
        raise PoolError("protocol", "the broker sent a reply that is not msgpack", request_id=req_id)
    if h.get("ok"):
        return link.unpack_ok(h, frames, req_id, bodies)
    err = h.get("error") or {}
    raise PoolError(str(err.get("code") or "protocol"), str(err.get("message") or "unknown error"), request_id=h.get("id"))


class PoolClient:
    """Blocking client; thread-safe (one call on the socket at a time)."""

    def __init__(self, endpoint: str | None = None, *, curve: tuple[bytes, bytes, bytes] | None = None):
        self.endpoint = endpoint or _default_endpoint()
        tune_malloc()  # replies are big: see workbooks.pool.memtune
        self.curve = curve
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pid = None
        self._gen = -1
        self._link: _Link | None = None

    def _get_link(self) -> _Link:
        if self._gen != _fork_gen or self._link is None:
            self._link = _Link(self.endpoint, self.curve)
            self._pid = os.getpid()
            self._gen = _fork_gen
        return self._link

    def call(self, op: str, args, deadline_ms: int = P.DEFAULT_DEADLINE_MS) -> bytes:
        with self._lock:
            link = self._get_link()
            sock = link.sock
            req_id = next(self._ids)
            link.check(req_id)
            payload, bodies = _encode(req_id, op, args, deadline_ms, link)
            ok = resent = False
            try:
                give_up = time.monotonic() + deadline_ms / 1000 + CLIENT_GRACE_S
                epoch = link.epoch
                try:
                    sock.send(payload, _NOBLOCK)
                except zmq.Again:  # the send queue is full: the broker is not taking anything
                    raise PoolError("overloaded", f"cannot queue more requests for {self.endpoint}", request_id=req_id) from None
                poll = link.poller.poll
                mon = link.monitor
                while True:
                    left = give_up - time.monotonic()
                    if left <= 0:
                        raise PoolError("deadline", f"no reply from the pool within {deadline_ms} ms (+{CLIENT_GRACE_S:g}s grace)",
                                        request_id=req_id)
                    ready = dict(poll(int(left * 1000) + 1))
                    if mon in ready or not ready:
                        if link.events(req_id) != epoch:  # a new broker: it never saw this request
                            epoch = link.epoch
                            resent = True
                            link.resent += 1
                            try:
                                sock.send(payload, _NOBLOCK)
                            except zmq.Again:
                                pass  # still queued behind the old send; the deadline bounds the wait
                    if not sock.getsockopt(_EVENTS) & _POLLIN:
                        continue
                    try:
                        frames = sock.recv_multipart(_NOBLOCK)
                    except zmq.Again:
                        continue
                    h = _header(frames[0])
                    if h is None or h.get("id") != req_id:
                        link.discard_reply(h)  # a late reply to an earlier call that already gave up
                        continue
                    out = _result(h, frames, req_id, link, bodies)
                    ok = True
                    return out
            finally:
                if bodies is not None:
                    link.finish(bodies, ok and not resent)

    def bulk_stats(self) -> dict:
        """Shared-memory use of this client in this process: directory, bodies sent, replies read."""
        return _Link.bulk_stats(self._link)

    def close(self) -> None:
        if self._link is not None and self._pid == os.getpid():
            self._link.close()
        self._link = None
        self._pid = None


class _Waiter:
    __slots__ = ("event", "frames", "header", "scope", "kicked", "payload", "epoch", "resent")

    def __init__(self, event, payload=None, epoch=0):
        self.event = event
        self.frames = None
        self.header = None
        self.scope = None  # the call's deadline scope (cancelled to kick a parked reader)
        self.kicked = False
        self.payload = payload  # kept to re-send it to a new broker
        self.epoch = epoch  # the link's epoch when it was (last) sent
        self.resent = False


# The process's fork generation: bumped in a forked child, so a client notices it must make a
# fresh socket without a getpid(2) on every call.
_fork_gen = 0


def _after_fork() -> None:
    global _fork_gen
    _fork_gen += 1


os.register_at_fork(after_in_child=_after_fork)

_trio = None


def _load_trio():
    global _trio
    import trio

    _trio = trio
    return trio


class AsyncPoolClient:
    """trio client; many tasks may call concurrently on one instance.

    `resend=False` is for requests that are not pure (workflow steps): when a new broker answers,
    requests the old one held are not re-sent but fail with `worker_lost` (they may have run, or
    still be running on a worker of the old broker), and the caller decides whether to run them
    again."""

    def __init__(self, endpoint: str | None = None, *, curve: tuple[bytes, bytes, bytes] | None = None,
                 resend: bool = True):
        self.endpoint = endpoint or _default_endpoint()
        self.resend = resend
        tune_malloc()  # replies are big: see workbooks.pool.memtune
        self.curve = curve
        self._ids = itertools.count(1)
        self._pending: dict[int, _Waiter] = {}
        self._reader: _Waiter | None = None
        self._pid = None
        self._gen = -1
        self._sock = None
        self._link: _Link | None = None
        self._fd = -1
        self._epoch = 0  # the link's epoch whose pending requests have been re-sent

    def _socket(self) -> zmq.Socket:
        if self._gen != _fork_gen or self._sock is None:
            self._link = _Link(self.endpoint, self.curve)
            self._sock = self._link.sock
            self._fd = self._link.waitfd.fileno()
            self._pid = os.getpid()
            self._gen = _fork_gen
            self._pending.clear()
            self._reader = None
            self._epoch = 0
        return self._sock

    def _drain(self) -> None:
        """Read every reply that is there and hand each to its caller."""
        sock = self._sock
        pending = self._pending
        events = sock.getsockopt
        # Checking EVENTS (not recv until EAGAIN) is what re-arms the edge-triggered fd, and
        # costs no exception per call.
        while events(_EVENTS) & _POLLIN:
            try:
                frames = sock.recv_multipart(_NOBLOCK)
            except zmq.Again:
                return
            h = _header(frames[0])
            w = pending.pop(h.get("id") if h else None, None)
            if w is not None:
                w.header = h
                w.frames = frames
                w.event.set()
            else:
                self._link.discard_reply(h)  # its caller gave up

    def _kick_reader(self) -> None:
        """After our send: if replies are pending, make sure the parked reader sees them (our
        send may have consumed the fd's edge). Rare; it costs the reader one more pass."""
        r = self._reader
        if r is not None and r.scope is not None and self._sock.getsockopt(_EVENTS) & _POLLIN:
            r.kicked = True
            r.scope.cancel()

    async def call(self, op: str, args, deadline_ms: int = P.DEFAULT_DEADLINE_MS) -> bytes:
        trio = _trio or _load_trio()
        if self._gen != _fork_gen or self._sock is None:
            self._socket()
        req_id = next(self._ids)
        link = self._link
        link.check(req_id)
        if link.epoch != self._epoch:
            # check() read the monitor and saw a new broker: the parked reader will not be woken
            # for that any more (the events are consumed), so re-send the others' requests here.
            self._epoch = link.epoch
            self._resend(link.epoch)
        payload, bodies = _encode(req_id, op, args, deadline_ms, link)
        ok = False
        w = _Waiter(trio.Event(), payload, link.epoch)
        self._pending[req_id] = w
        try:
            try:
                self._sock.send(payload, _NOBLOCK)
            except zmq.Again:  # the send queue is full: the broker is not taking anything
                raise PoolError("overloaded", f"cannot queue more requests for {self.endpoint}", request_id=req_id) from None
            self._kick_reader()
            # One cancel scope per call: the deadline, and how a sender kicks us when we are the
            # parked reader (then we go round again with the same deadline).
            deadline = trio.current_time() + deadline_ms / 1000 + CLIENT_GRACE_S
            while w.frames is None:
                w.kicked = False
                with trio.CancelScope(deadline=deadline) as scope:
                    w.scope = scope
                    while w.frames is None:
                        if self._reader is None:
                            await self._read_as_leader(w)
                        else:
                            await w.event.wait()
                            if w.frames is None:  # woken to take over reading
                                w.event = trio.Event()
                w.scope = None
                if scope.cancelled_caught and not w.kicked:
                    break  # the deadline
            if w.frames is None:
                raise PoolError("deadline", f"no reply from the pool within {deadline_ms} ms (+{CLIENT_GRACE_S:g}s grace)",
                                request_id=req_id)
            out = _result(w.header, w.frames, req_id, link, bodies)
            ok = True
            return out
        finally:
            if bodies is not None:
                link.finish(bodies, ok and not w.resent)
            w.scope = None
            self._pending.pop(req_id, None)
            if self._reader is None:
                # We may have been handed the reader role and be leaving with it (cancelled,
                # timed out): pass it on so nobody is left parked without a reader.
                for other in self._pending.values():
                    if other.frames is None:
                        other.event.set()
                        break

    def _resend(self, epoch: int) -> None:
        """A new broker answers now: send it every request still waiting (they are pure), or
        with `resend=False` fail them (`worker_lost`)."""
        link = self._link
        for w in self._pending.values():
            if w.frames is None and w.epoch != epoch and w.payload is not None:
                w.epoch = epoch
                w.resent = True
                if not self.resend:
                    w.header = {"v": P.VERSION, "ok": False, "error": {
                        "code": "worker_lost", "message": "the broker was restarted while it held this request "
                        "(it may have run, or still be running, on a worker); not re-sent"}}
                    w.frames = [b""]
                    w.event.set()
                    continue
                link.resent += 1
                try:
                    self._sock.send(w.payload, _NOBLOCK)
                except zmq.Again:
                    pass  # the deadline bounds the wait

    async def _read_as_leader(self, me: _Waiter) -> None:
        trio = _trio
        self._reader = me
        fd = self._fd
        link = self._link
        try:
            while me.frames is None:
                self._drain()
                if me.frames is not None:
                    break
                epoch = link.events()  # (raises when a CURVE key was refused)
                if epoch != self._epoch:
                    self._epoch = epoch
                    self._resend(epoch)
                    continue
                await trio.lowlevel.wait_readable(fd)
        finally:
            self._reader = None
            # Hand the reader role to someone still waiting.
            for other in self._pending.values():
                if other is not me and other.frames is None:
                    other.event.set()
                    break

    def bulk_stats(self) -> dict:
        """Shared-memory use of this client in this process: directory, bodies sent, replies read."""
        return _Link.bulk_stats(self._link)

    def close(self) -> None:
        if self._link is not None and self._pid == os.getpid():
            self._link.close()
        self._link = None
        self._sock = None
        self._pid = None

    async def aclose(self) -> None:
        self.close()


__all__ = ["AsyncPoolClient", "PoolClient", "PoolError"]
