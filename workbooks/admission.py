"""Admission control for a plane process: past its capacity it refuses, fast, instead of queueing.

Offered more than it can serve, a process that admits everything queues without bound: every
request waits behind all the others until clients time out, and the work spent on answers nobody
reads eats the capacity (measured: the public plane at 2x its capacity as open-model load served
0.68x, p99 5.4 s, and was still behind after the load stopped). So each process holds at most
`WB_MAX_INFLIGHT` requests in flight; one more is answered at once with 503, `Retry-After: 1`
and the usual JSON error body `{"error": {"code": "overloaded", ...}}`.

The refusal must cost next to nothing, or refusing the excess eats the capacity too. So a
request read whole on an idle HTTP/1.1 keep-alive connection (the common case) is refused before
hypercorn parses it: `Gate.refusal(data)` checks the request line and the framing in a few byte
operations and returns canned bytes to write back (~30 us of a core against ~400 us to serve a
cached page). The answer says `Connection: close` and the connection is closed: while the
overload lasts (`Gate.shedding`: from reaching the cap until in flight falls to half of it), a
new connection is answered the same way right at accept, from its first bytes, with no
connection object, task or parser built for it (workbooks.connlimit), so a client's next
request costs the process less than a refusal on a connection it keeps (measured, public plane
at 2x its capacity: goodput 0.46-0.52x -> 0.60-0.74x of capacity, 503 p99 220-250 -> 80-100 ms,
load/overload_probe.py --cpu-share 0.5). Anything else (a request split over
reads or read while the previous response is still going out, a chunked body, 100-continue, an
upgrade) is parsed by hypercorn and refused by `AdmitASGI`, the outermost ASGI layer, before the
app sees it. What is in flight is counted per connection by
workbooks.connlimit (busy from the parsed request to the end of its response); the verdict is
taken when the request is parsed. A process that was off the CPU for a moment reads a burst at
once: up to 4x the cap is let in for 0.2 s before the cap holds (`Gate.full`). Probes and
scrapes (`/healthz`, `/readyz`, `/metrics`) are never refused: an operator must see an
overloaded process.
"""

from __future__ import annotations

import json
import os
import re
import time
from contextvars import ContextVar
from email.utils import formatdate

import trio

from workbooks import procstats

#: Requests one process keeps in flight. A handful keeps a process busy (it has one core; the
#: pool behind the control plane has a worker per core); the rest is queue. The public plane
#: costs ~0.45 ms of a core per cached page (~2,200 pages/s per process on a 2-core box), so 32
#: in flight is ~15 ms of queue at most; the render API (~600/s per process) ~50 ms. Past that a
#: client is better served by a fast 503 and its retry than by a longer wait.
DEFAULT_MAX_INFLIGHT = 32
#: A burst over the cap is let in up to BURST_FACTOR x cap for BURST_GRACE_S (see Gate.full).
BURST_FACTOR = 4
BURST_GRACE_S = 0.2
RETRY_AFTER_S = 1
REPORT_EVERY_S = 10.0
#: Set by the connection guard when a request is parsed, inherited by the app task hypercorn spawns
#: for it: False when the process was full at that moment.
ADMITTED: ContextVar[bool] = ContextVar("wb_admitted", default=True)
#: Never refused: what an operator or a supervisor needs to see an overloaded process.
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_EXEMPT_TARGETS = frozenset(p.encode() for p in EXEMPT_PATHS)
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]{1,12})[ \t]*\r\n")
#: Header lines both we and h11 read the same way: token names, no obs-fold, no space before the
#: colon. A request whose head is anything else is refused with `Connection: close`.
#: (Linear: no two parts of a line can match the same bytes, so a hostile header cannot make it
#: backtrack: `[ \t]*[^\r\n]*` would, quadratically, on a long run of spaces before a bare CR.)
_STRICT_HEAD = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n]*\r\n)*")
_VERSIONS = frozenset({b"HTTP/1.1", b"HTTP/1.0"})
_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"})


_current: "Gate | None" = None


def install(gate: "Gate") -> "Gate":
    """Make `gate` this process's (one per plane process, set by the launcher)."""
    global _current
    _current = gate
    return gate


def current() -> "Gate | None":
    """This process's gate, for metrics: `.inflight`, `.peak`, `.cap`, `.counts` (refusals by
    path: `refused_accept`, `refused_early`, `refused_asgi`); None outside a plane process."""
    return _current


def max_inflight() -> int:
    """`WB_MAX_INFLIGHT`: requests a plane process holds in flight before it answers 503."""
    raw = os.environ.get("WB_MAX_INFLIGHT", "").strip()
    if not raw:
        return DEFAULT_MAX_INFLIGHT
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"WB_MAX_INFLIGHT={raw!r} is not a whole number") from None
    if value < 1:
        raise ValueError(f"WB_MAX_INFLIGHT={raw!r} must be at least 1")
    return value


def error_body(cap: int) -> bytes:
    return (json.dumps({"error": {
        "code": "overloaded",
        "message": f"this server process is at its limit of {cap} requests in flight; retry after {RETRY_AFTER_S} s",
    }}) + "\n").encode()


class Gate:
    """One per process: requests in flight, the cap, and what was refused (for logs and metrics)."""

    def __init__(self, cap: int, plane: str | None = None) -> None:
        self.cap = cap
        self.plane = plane  # "public" or "control": refusals are counted in its /metrics too
        self.burst = BURST_FACTOR * cap
        self.full_since: float | None = None  # when in flight reached the cap (and stayed above half)
        self.inflight = 0
        self.peak = 0
        self.counts = {"refused_accept": 0, "refused_early": 0, "refused_asgi": 0}
        self.body = error_body(cap)
        self._head = self._full = b""
        self._date_at = -1
        self._canned()

    def _canned(self) -> None:
        now = int(time.time())
        if now == self._date_at:
            return
        self._date_at = now
        base = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                b"cache-control: no-store\r\nretry-after: " + str(RETRY_AFTER_S).encode() +
                b"\r\ndate: " + formatdate(now, usegmt=True).encode() +
                b"\r\ncontent-length: " + str(len(self.body)).encode() + b"\r\n")
        self._head = {True: base + b"\r\n", False: base + b"connection: close\r\n\r\n"}
        self._full = {k: v + self.body for k, v in self._head.items()}

    def full(self) -> bool:
        """No room for one more request. At `cap` in flight, a burst is let in up to `burst` for
        BURST_GRACE_S (a process that was off the CPU for a moment reads a burst at once, and
        drains it as fast), then the cap holds until in flight falls to half of it: a sustained
        overload meets the cap, a hiccup at half load does not."""
        n = self.inflight
        if n < self.cap:
            return False
        now = time.monotonic()
        if self.full_since is None:
            self.full_since = now
        return n >= self.burst or now - self.full_since >= BURST_GRACE_S

    def shedding(self) -> bool:
        """Since in flight reached the cap, it has not fallen to half of it: a new connection is
        refused at accept (the cheap refusal) even in a moment below the cap, so a sustained
        overload is served on the connections already open instead of on new ones, each of
        which costs a connection's setup and teardown on top of its request."""
        return self.full_since is not None or self.full()

    def refused(self, how: str, nbytes: int) -> None:
        """Count one refusal (`refused_accept`, `refused_early` or `refused_asgi`), also in the process's response
        counters (workbooks.procstats) when the plane opened them: a 503 answered at once."""
        self.counts[how] += 1
        if self.plane is not None:
            stats = procstats.opened(self.plane)
            if stats is not None:
                stats.record(503, nbytes, 0.0)

    def enter(self) -> None:
        """A request was parsed (its connection turned busy)."""
        self.inflight += 1
        if self.inflight > self.peak:
            self.peak = self.inflight

    def exit(self) -> None:
        """Its response was sent, or its connection closed."""
        self.inflight -= 1
        if self.full_since is not None and self.inflight <= self.cap // 2:
            self.full_since = None

    def refusal(self, data: bytes, keep_open: bool) -> tuple[bytes, bool] | None:
        """The 503 that answers `data`, the first bytes read from a connection with nothing else
        buffered, when they hold a whole HTTP/1.x request to a refusable path (its Content-Length
        body included), and whether the connection may stay open after it; else None: let the
        server parse it. `keep_open` asks to keep it open: only for exactly one request whose
        framing is unambiguous (what h11 would read the same way), so the next one starts in step;
        otherwise the answer says `Connection: close` and the caller closes."""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return None
        line_end = data.find(b"\r\n")
        parts = data[:line_end].split(b" ")
        if len(parts) != 3 or parts[2] not in _VERSIONS or parts[0] not in _METHODS:
            return None
        if parts[1].split(b"?", 1)[0] in _EXEMPT_TARGETS:
            return None
        head = data[line_end:end + 2]
        low = head.lower()
        if b"transfer-encoding" in low or b"expect" in low or b"upgrade" in low:
            return None  # chunked bodies, 100-continue, h2c or websocket: the server's to answer
        size = end + 4
        if b"content-length" in low:
            m = _CONTENT_LENGTH.search(low)
            if m is None or low.count(b"content-length") != 1:
                return None  # h11 answers 400
            size += int(m.group(1))
            if len(data) < size:
                return None  # a body still arriving: closing on it could reset our answer away
        keep = (keep_open and len(data) == size and parts[2] == b"HTTP/1.1"
                and not (b"connection" in low and b"close" in low)
                and _STRICT_HEAD.fullmatch(head, 2) is not None)
        self._canned()
        return (self._head if parts[0] == b"HEAD" else self._full)[keep], keep


async def reporter(gate: Gate, log, every: float = REPORT_EVERY_S) -> None:
    """One `requests_refused` warning per `every` seconds at most while refusals happen (the counts
    since the last line, and the most requests in flight meanwhile), and a last one when the
    server stops with refusals not yet reported."""
    last = dict(gate.counts)

    def report() -> None:
        nonlocal last
        if gate.counts != last:
            delta = {k: v - last.get(k, 0) for k, v in gate.counts.items()}
            last = dict(gate.counts)
            log.warning("requests_refused", **delta, max_inflight=gate.cap, peak_inflight=gate.peak,
                        inflight=gate.inflight)
            gate.peak = gate.inflight

    try:
        while True:
            await trio.sleep(every)
            report()
    finally:
        report()


class AdmitASGI:
    """Outermost ASGI layer: refuses, with the same 503 and before the app sees it, a request the
    connection guard found over the cap when it was parsed (the requests `Gate.refusal` left to
    the server: pipelined, split, HTTP/1.0, ...). The verdict is taken at parse time, in order:
    judged here, a burst parsed in one scheduler pass would all see the whole burst in flight."""

    def __init__(self, app, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope, receive, send):
        if not ADMITTED.get() and scope["type"] == "http" and scope["path"] not in EXEMPT_PATHS:
            gate = self.gate
            gate.refused("refused_asgi", 0 if scope["method"] == "HEAD" else len(gate.body))
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"cache-control", b"no-store"),
                (b"retry-after", str(RETRY_AFTER_S).encode()), (b"connection", b"close"),
                (b"content-length", str(len(gate.body)).encode())]})
            await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else gate.body})
            return
        return await self.app(scope, receive, send)
