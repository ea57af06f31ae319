"""Connection limits for a plane process: no idle client can hold a socket, and no crowd of them
can use up the process's files.

hypercorn 0.18's trio worker leaves three holes, each found by a chaos run:
- a connection that sends the HTTP/2 preface (`PRI * HTTP/2.0 ...`) and nothing else is never
  timed out (h11 reports the preface as a request, so the idle timer stops, and the HTTP/2 side
  never restarts it while no stream exists); a stream the client resets does not restart it either;
- when the client closes an idle keep-alive connection, the per-connection idle-timer task keeps
  the connection's task group open, so the socket sits in CLOSE-WAIT until the keep-alive timeout;
- nothing bounds the number of connections, so at the open-file limit `accept` fails and every
  new client waits until an idle one leaves.

So each accepted connection is registered with one `ConnectionGuard` per process, which replaces
hypercorn's idle-timer task (no task per request any more: a timestamp and an O(1) move in an
ordered dict). One sweeper task closes every connection that has had no request in flight for
`WB_IDLE_TIMEOUT_S` (whatever bytes it sent: half headers, the preface, PINGs), and every HTTP/2
connection whose responses have been stuck behind a zero flow-control window for as long. The
process raises its soft RLIMIT_NOFILE to the hard limit at start and caps its connections below
it (`WB_MAX_CONNECTIONS`, default 32x the requests it keeps in flight, never more than the limit
minus a reserve for its own files); a connection over the cap sheds the connection idle the
longest, or is reset when every one is busy.

Overload (see workbooks/admission.py): the accept loop takes every pending connection in one go
(trio's listener takes one per scheduler pass, so under load the kernel's accept queue overflowed
and clients waited seconds for SYN retries), and resets at once, with nothing built for it, a
connection the cap has no room for. The guard also counts the process's requests in flight (a
connection is busy from a parsed request to the end of its response, HTTP/1.1 only), and a
request read on an idle keep-alive connection while the process is full is answered with the
canned 503 before hypercorn parses it.
"""

from __future__ import annotations

import errno
import math
import os
import resource
import socket
import struct
from collections import OrderedDict

import h11
import trio
from hypercorn.events import Closed, RawData
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer

from workbooks.admission import ADMITTED

DEFAULT_IDLE_TIMEOUT_S = 10.0
#: Long enough for a phone to come back from a tunnel, short next to the ~15 minutes of retries.
DEFAULT_SEND_TIMEOUT_S = 30.0
REPORT_EVERY_S = 10.0
#: Files a plane keeps for itself beyond its connections (logs, SQLite, git pipes, pool sockets).
MIN_RESERVE = 64
MAX_RESERVE = 1024
#: Connections per request in flight a process keeps by default: the rest of them are idle
#: keep-alive ones (shed oldest first at the cap), so this bounds memory, not service.
CONNECTIONS_PER_INFLIGHT = 32
#: Pending connections taken per pass of the accept loop before it lets the others run.
ACCEPT_BATCH = 256
#: Bytes looked at on a connection accepted while full (a whole request fits, or it is served).
PEEK_BYTES = 16 << 10
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, no TIME_WAIT


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name}={raw!r} must be a positive number of seconds")
    return value


def idle_timeout_s() -> float:
    """`WB_IDLE_TIMEOUT_S`: how long a connection may stay open with no request in flight."""
    return _env_float("WB_IDLE_TIMEOUT_S", DEFAULT_IDLE_TIMEOUT_S)


def send_timeout_s() -> float:
    """`WB_SEND_TIMEOUT_S`: how long a client may leave what we sent unacknowledged, or unread
    behind a zero TCP window, before the kernel drops it (TCP_USER_TIMEOUT)."""
    return _env_float("WB_SEND_TIMEOUT_S", DEFAULT_SEND_TIMEOUT_S)


def raise_nofile() -> tuple[int, int, int]:
    """Raise the soft open-file limit to the hard one; returns (soft before, soft after, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = soft
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            new = hard
        except (ValueError, OSError):
            pass
    return soft, new, hard


def connection_cap(nofile: int, inflight: int | None = None) -> int:
    """The most connections a process keeps open: `WB_MAX_CONNECTIONS` when set, else
    CONNECTIONS_PER_INFLIGHT x its in-flight cap (when given); never more than its file limit less
    a reserve (an eighth of the limit, 64..1024 files) for its own files."""
    if nofile == resource.RLIM_INFINITY or nofile <= 0:
        nofile = 1 << 20
    reserve = min(MAX_RESERVE, max(MIN_RESERVE, nofile // 8))
    cap = max(1, nofile - reserve)
    if inflight:
        cap = min(cap, CONNECTIONS_PER_INFLIGHT * inflight)
    raw = os.environ.get("WB_MAX_CONNECTIONS", "").strip()
    if raw:
        try:
            wanted = int(raw)
        except ValueError:
            raise ValueError(f"WB_MAX_CONNECTIONS={raw!r} is not a whole number") from None
        if wanted < 1:
            raise ValueError(f"WB_MAX_CONNECTIONS={raw!r} must be at least 1")
        cap = min(max(1, nofile - reserve), wanted)
    return cap


class _IdleClock:
    """Stands in for hypercorn's per-connection idle-timer task: hypercorn calls `restart` when a
    connection turns idle and `stop` when a request starts (right when it is parsed); both stamp
    the time, and count the connection in or out of the process's requests in flight."""

    __slots__ = ("guard", "conn")

    def __init__(self, guard: "ConnectionGuard", conn: "GuardedTCPServer"):
        self.guard = guard
        self.conn = conn

    async def restart(self, task_group, action) -> None:
        self.guard.touch(self.conn)
        if self.conn.busy:
            self.conn.busy = False
            if self.guard.gate is not None:
                self.guard.gate.exit()

    async def stop(self) -> None:
        guard, conn = self.guard, self.conn
        guard.touch(conn)
        gate = guard.gate
        if gate is None or conn.busy:
            return
        # Runs in the connection's task right before hypercorn spawns the app's task, which
        # inherits the context: the verdict travels with the request to AdmitASGI.
        if conn.is_h2():
            ADMITTED.set(True)  # HTTP/2 streams are neither counted nor refused
        elif gate.full():
            ADMITTED.set(False)  # refused by AdmitASGI (unless a probe's path), not counted
        else:
            ADMITTED.set(True)
            conn.busy = True
            gate.enter()


class GuardedTCPServer(TCPServer):
    """hypercorn's TCP connection with its idle timer handed to a `ConnectionGuard`."""

    def __init__(self, guard: "ConnectionGuard", app, config, context, state, stream) -> None:
        super().__init__(app, config, context, state, stream)
        self.idle_task = _IdleClock(guard, self)
        self.guard = guard
        self.active = trio.current_time()  # last request start or end (or the accept)
        self.busy = False  # a request in flight (counted in guard.gate)
        self.raw: socket.socket | None = None  # the stdlib socket under the stream (non-blocking)
        self.stalled_since: float | None = None
        self.stall_seen: tuple | None = None

    def quiet(self) -> bool:
        """No request in flight: hypercorn's own idle flag misses the HTTP/2 preface and resets."""
        wrapper = self.__dict__.get("protocol")
        if wrapper is None:
            return True
        proto = wrapper.protocol
        if isinstance(proto, H2Protocol):
            return not proto.streams
        return proto.stream is None

    def flow_stall(self) -> tuple | None:
        """What HTTP/2 responses wait behind a flow-control window the client keeps at zero
        (stream ids and bytes waiting: unchanged between two looks means no progress), or None."""
        wrapper = self.__dict__.get("protocol")
        proto = wrapper.protocol if wrapper is not None else None
        if not isinstance(proto, H2Protocol):
            return None
        waiting = tuple((sid, len(buf.buffer)) for sid, buf in proto.stream_buffers.items() if buf.buffer)
        if not waiting:
            return None
        for sid, _ in waiting:
            try:
                if proto.connection.local_flow_control_window(sid) > 0:
                    return None
            except Exception:  # noqa: BLE001 - a stream closing under us is not a stall
                return None
        return waiting

    def is_h2(self) -> bool:
        wrapper = self.__dict__.get("protocol")
        return wrapper is not None and isinstance(wrapper.protocol, H2Protocol)

    def parked(self) -> bool:
        """An HTTP/1.1 connection between requests with nothing buffered: a request read now can
        be answered outside hypercorn without putting its h11 state out of step."""
        wrapper = self.__dict__.get("protocol")
        proto = wrapper.protocol if wrapper is not None else None
        if not isinstance(proto, H11Protocol) or proto.stream is not None:
            return False
        conn = proto.connection
        return (isinstance(conn, h11.Connection) and conn.our_state is h11.IDLE and conn.their_state is h11.IDLE
                and not conn.trailing_data[0])

    async def _read_data(self) -> None:
        """hypercorn's read loop, with the over-cap refusal in front of the protocol (and no
        cancel scope per read when there is no read timeout)."""
        gate = self.guard.gate
        timeout = self.config.read_timeout
        try:
            while True:
                try:
                    if timeout:
                        with trio.fail_after(timeout):
                            data = await self.stream.receive_some(MAX_RECV)
                    else:
                        data = await self.stream.receive_some(MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                    break
                if gate is not None and data and gate.full() and self.parked():
                    answer = gate.refusal(data, keep_open=False)
                    if answer is not None:
                        gate.refused("refused_early", len(answer[0]) - answer[0].index(b"\r\n\r\n") - 4)
                        self.guard.touch(self)
                        if not await self._send_now(answer[0]) or not answer[1]:
                            break
                        continue
                await self.protocol.handle(RawData(bytes(data)))
                if self.busy and self.is_h2():
                    # The HTTP/2 preface (or an h2c upgrade) parsed as an HTTP/1.1 request: not a
                    # request in flight. HTTP/2 connections are not counted (its streams are
                    # never refused early either).
                    self.busy = False
                    gate.exit()
                    ADMITTED.set(True)
                if not data:
                    break
            await self.protocol.handle(Closed())
        finally:
            # The connection is gone: release HTTP/2 responses still waiting for window (hypercorn
            # leaves their apps blocked for good, and with them this connection's tasks).
            wrapper = self.__dict__.get("protocol")
            proto = wrapper.protocol if wrapper is not None else None
            if isinstance(proto, H2Protocol):
                for buf in list(proto.stream_buffers.values()):
                    await buf.close()

    async def _send_now(self, data: bytes) -> bool:
        """Write a short answer: one plain send() when the socket takes it all (no scheduler round
        trip: this is the overload path), else the stream's send_all for the rest. False when the
        connection is gone."""
        if self.raw is not None:
            try:
                sent = self.raw.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                return False
            if sent == len(data):
                return True
            data = data[sent:]
        try:
            async with self.send_lock:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def drop(self) -> None:
        """Close the socket now (from the sweeper): the file is released at once and the
        connection's own tasks see the stream closed and finish."""
        try:
            self.stream.socket.close()
        except OSError:
            pass


class ConnectionGuard:
    """One per process: the open connections in order of last activity, the idle sweep, the cap."""

    def __init__(self, *, idle_timeout: float, cap: int, log=None, gate=None) -> None:
        self.idle_timeout = idle_timeout
        self.cap = cap
        self.log = log
        self.gate = gate  # workbooks.admission.Gate: the in-flight cap (None: no early refusal)
        self.conns: "OrderedDict[GuardedTCPServer, None]" = OrderedDict()
        self.stopping = False
        self.pending = 0  # accepted, their task not started yet
        self._wake = trio.Event()
        self._stopped = trio.Event()
        self.counts = {"idle_closed": 0, "stalled_closed": 0, "shed": 0, "refused": 0}
        self._reported = dict(self.counts)
        self._reported_at = -REPORT_EVERY_S

    # -- the hot path: two O(1) operations per request ------------------------------------------
    def touch(self, conn: GuardedTCPServer) -> None:
        conn.active = trio.current_time()
        try:
            self.conns.move_to_end(conn)
        except KeyError:
            pass

    def room(self) -> bool:
        """Room for one more connection: under the cap, or made by shedding the connection idle
        the longest; False (counted as refused) when every one is busy."""
        if len(self.conns) + self.pending >= self.cap:
            victim = next((c for c in self.conns if c.quiet()), None)
            if victim is None:
                self.counts["refused"] += 1
                self._wake.set()
                return False
            del self.conns[victim]
            victim.drop()
            self.counts["shed"] += 1
        return True

    def leave(self, conn: GuardedTCPServer) -> None:
        self.conns.pop(conn, None)
        if conn.busy:
            conn.busy = False
            if self.gate is not None:
                self.gate.exit()

    async def accept_loop(self, listen_sock: socket.socket, make_server, nursery) -> None:
        """Accept every pending connection in one go (up to ACCEPT_BATCH, then let the rest run);
        reset at once, with nothing built for it, one the cap has no room for."""
        fd = listen_sock.fileno()
        gate = self.gate
        log_every = REPORT_EVERY_S
        last_error = -math.inf
        while True:
            await trio.lowlevel.wait_readable(fd)
            for _ in range(ACCEPT_BATCH):
                try:
                    sock, _addr = listen_sock.accept()
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                        continue
                    # out of files or memory: wait a little rather than spin on a readable socket
                    now = trio.current_time()
                    if self.log is not None and now - last_error >= log_every:
                        last_error = now
                        self.log.warning("accept_failed", error=str(e), open=len(self.conns), cap=self.cap)
                    await trio.sleep(0.05)
                    break
                if not self.room():
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                    except OSError:
                        pass
                    sock.close()
                    continue
                if gate is not None and gate.shedding() and self.refuse_at_accept(sock, gate):
                    continue
                self.pending += 1
                nursery.start_soon(self._serve_accepted, make_server, sock)
            await trio.lowlevel.checkpoint()

    @staticmethod
    def refuse_at_accept(sock: socket.socket, gate) -> bool:
        """A connection accepted while the process is full: when its first bytes are already
        here and hold a whole refusable request, answer the canned 503 (`Connection: close`) and
        close it, with no connection object, task or parser built for it: ~25 us of a core where
        a refusal on a served connection costs ~100. True when it was answered so. Anything
        else (nothing read yet, a probe's path, a request `Gate.refusal` leaves to the server)
        is served, and judged again when its request is parsed."""
        try:
            data = sock.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            return False
        if not data:
            return False
        answer = gate.refusal(data, keep_open=False)
        if answer is None:
            return False
        try:
            sock.recv(len(data), socket.MSG_DONTWAIT)  # consumed: a close with unread bytes would reset the answer away
            sock.send(answer[0], socket.MSG_DONTWAIT)
        except OSError:
            pass
        else:
            gate.refused("refused_accept", len(answer[0]) - answer[0].index(b"\r\n\r\n") - 4)
        sock.close()
        return True

    async def _serve_accepted(self, make_server, sock: socket.socket) -> None:
        self.pending -= 1
        try:
            conn = make_server(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))
            conn.raw = sock
        except BaseException:
            sock.close()
            raise
        self.conns[conn] = None
        self._wake.set()
        try:
            await conn.run()
        finally:
            self.leave(conn)

    # -- the sweeper -----------------------------------------------------------------------------
    def sweep_once(self, now: float) -> float:
        """Close what is due; return the seconds until the next connection can fall due."""
        horizon = now - self.idle_timeout
        due: list[tuple[GuardedTCPServer, str]] = []
        wait = self.idle_timeout
        for conn in self.conns:
            if conn.active > horizon:
                wait = conn.active - horizon
                break
            if conn.quiet():
                due.append((conn, "idle_closed"))
            else:
                stall = conn.flow_stall()
                if stall is None:
                    conn.stalled_since = None
                elif conn.stalled_since is None or stall != conn.stall_seen:
                    conn.stalled_since, conn.stall_seen = now, stall
                elif now - conn.stalled_since >= self.idle_timeout:
                    due.append((conn, "stalled_closed"))
        for conn, why in due:
            del self.conns[conn]
            conn.drop()
            self.counts[why] += 1
        if any(c.stalled_since is not None for c in self.conns):
            wait = min(wait, self.idle_timeout / 4)
        return wait

    def _report(self, now: float) -> None:
        """One `connections_closed` line per REPORT_EVERY_S at most, with the counts since the last."""
        if self.log is None or self.counts == self._reported or now - self._reported_at < REPORT_EVERY_S:
            return
        delta = {k: v - self._reported[k] for k, v in self.counts.items() if v != self._reported[k]}
        self._reported, self._reported_at = dict(self.counts), now
        level = self.log.warning if ("shed" in delta or "refused" in delta) else self.log.info
        level("connections_closed", open=len(self.conns), cap=self.cap, **delta)

    async def sweeper(self) -> None:
        """Runs for the life of the server; after `stop()` closes idle connections at once and
        returns when none is left (busy ones finish their request first)."""
        # A flood of new connections costs the sweeper at most a few passes a second.
        floor = max(0.05, min(0.25, self.idle_timeout / 4))
        while not self.stopping:
            if not self.conns:
                now = trio.current_time()
                self._report(now)
                self._wake = trio.Event()
                unreported = self.counts != self._reported
                with trio.move_on_after(self._reported_at + REPORT_EVERY_S - now if unreported else math.inf):
                    await self._wake.wait()
                continue
            wait = self.sweep_once(trio.current_time())
            self._report(trio.current_time())
            with trio.move_on_after(max(floor, wait)):
                await self._stopped.wait()
        while True:
            for conn in [c for c in self.conns if c.quiet()]:
                del self.conns[conn]
                conn.drop()
            if not self.conns:
                return
            await trio.sleep(0.05)

    def stop(self) -> None:
        """The server is shutting down: idle connections go now, busy ones after their request."""
        self.stopping = True
        self._wake.set()
        self._stopped.set()


def set_user_timeout(sock: socket.socket, seconds: float) -> None:
    """TCP_USER_TIMEOUT on the listening socket (accepted sockets inherit it): a client that stops
    acknowledging, or keeps a zero TCP window while a response waits (it asked for a big page
    and does not read it), is dropped by the kernel after `seconds` instead of holding its socket
    for the ~15 minutes of retransmissions, or for ever while it answers zero-window probes."""
    opt = getattr(socket, "TCP_USER_TIMEOUT", 18)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, opt, min(int(seconds * 1000), 2**31 - 1))
    except OSError:
        pass
