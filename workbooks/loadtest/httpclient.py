"""The load generator's HTTP/1.1 client: keep-alive connections on non-blocking sockets under trio.

Why not httpx or h11: a generator must spend far less CPU per request than the server it
measures (httpx costs 1-2 ms a request, h11 a few hundred µs). This client sends request bytes
built once per request shape (`build_request`) and parses only what framing needs from the
answer: the status line, `Content-Length`, `Transfer-Encoding: chunked`, `Connection`. Bodies
are counted, never kept or decompressed (a gzip body is just bytes).

Failures are `TransportError`s with a `kind`: `connect` (no connection), `reset` (the peer closed
or reset mid-exchange), `timeout` (the request's deadline passed: slow headers or a slow body),
`protocol` (not HTTP/1.x, bad framing, a header block over `MAX_HEADER_BYTES`). A request that
fails because the server closed an idle keep-alive connection before reading it (the send
fails, or EOF before any byte of the answer) is retried once on a new connection; that is the
ordinary race of keep-alive, not a failure. Before reusing a socket the client peeks at it: a
server's EOF, a reset or unsolicited bytes already there mean a fresh connection at once.
"""

from __future__ import annotations

import errno
import socket
import time
from urllib.parse import urlsplit

import trio

MAX_HEADER_BYTES = 64 * 1024  # a response header block longer than this is a protocol error
MAX_CHUNK_LINE = 1024  # a chunk-size line (with extensions) longer than this is a protocol error
RECV_BYTES = 256 * 1024

_perf = time.perf_counter
_wait_readable = trio.lowlevel.wait_readable
_wait_writable = trio.lowlevel.wait_writable
_RESET_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ENOTCONN, errno.ESHUTDOWN}


class TransportError(Exception):
    """A request that got no complete HTTP answer; `kind` is connect|reset|timeout|protocol."""

    def __init__(self, kind: str, message: str = ""):
        super().__init__(f"{kind}: {message}" if message else kind)
        self.kind = kind


class _EarlyEOF(Exception):
    """The peer closed before sending any byte of the answer (retryable on a reused connection)."""


def parse_base_url(url: str) -> tuple[str, int]:
    """(host, port) of an http:// base URL; anything else is a ValueError with the reason."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"{url!r}: only http:// URLs are supported (put a TLS terminator's plain-HTTP side under load)")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    try:
        port = parts.port or 80
    except ValueError as e:
        raise ValueError(f"{url!r}: {e}") from None
    return parts.hostname, port


def build_request(method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> bytes:
    """The exact bytes of one request (sent as they are, every time)."""
    if not path.startswith("/") or any(c in path for c in " \r\n\t"):
        raise ValueError(f"bad request path {path[:80]!r}")
    lines = [f"{method} {path} HTTP/1.1"]
    for k, v in headers.items():
        if any(c in str(v) for c in "\r\n") or any(c in k for c in ":\r\n "):
            raise ValueError(f"bad header {k[:40]!r}")
        lines.append(f"{k}: {v}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body if body else head


class Conn:
    """One keep-alive connection slot: at most one socket at a time, re-opened when it dies."""

    __slots__ = ("client", "sock", "buf", "served", "opened")

    def __init__(self, client: "HTTPClient"):
        self.client = client
        self.sock: socket.socket | None = None
        self.buf = bytearray()  # bytes read past the previous answer (none with a sane server)
        self.served = 0  # answers read on the current socket
        self.opened = 0  # sockets opened by this slot over its life

    def close(self) -> None:
        s = self.sock
        self.sock = None
        self.buf.clear()
        self.served = 0
        if s is not None:
            s.close()


class HTTPClient:
    """Connections to one address; `request` sends pre-built bytes and reads one answer."""

    def __init__(self, host: str, port: int, *, max_header: int = MAX_HEADER_BYTES):
        self.host = host
        self.port = port
        self.max_header = max_header
        self._addr = None
        self._scratch = bytearray(RECV_BYTES)
        self._view = memoryview(self._scratch)
        self.connects = 0  # sockets opened by all slots (what the connection cap is checked on)

    async def resolve(self) -> None:
        try:
            infos = await trio.socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise TransportError("connect", f"cannot resolve {self.host}: {e}") from None
        fam, _, proto, _, addr = infos[0]
        self._addr = (fam, proto, addr)

    def conn(self) -> Conn:
        return Conn(self)

    async def _open(self, c: Conn) -> None:
        if self._addr is None:
            await self.resolve()
        fam, proto, addr = self._addr
        s = socket.socket(fam, socket.SOCK_STREAM, proto)
        try:
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                s.connect(addr)
            except BlockingIOError:
                await _wait_writable(s)
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, errno.errorcode.get(err, str(err)))
        except OSError as e:
            s.close()
            raise TransportError("connect", f"{self.host}:{self.port}: {e.strerror or e}") from None
        except BaseException:
            s.close()
            raise
        c.close()
        c.sock = s
        c.opened += 1
        self.connects += 1

    async def request(self, c: Conn, data: bytes, deadline: float, *, head: bool = False) -> tuple[int, float, int]:
        """Send `data` on `c` and read the answer: (status, perf_counter time of its first byte,
        body bytes). `deadline` (trio's clock) bounds the whole exchange, connecting included."""
        with trio.CancelScope(deadline=deadline) as scope:
            try:
                return await self._exchange(c, data, head)
            except BaseException:
                c.close()  # a half-read answer leaves the socket unusable
                raise
        c.close()
        if scope.cancelled_caught:
            raise TransportError("timeout", "no complete answer before the deadline")
        raise TransportError("protocol", "exchange ended without an answer")  # pragma: no cover

    async def _exchange(self, c: Conn, data: bytes, head: bool) -> tuple[int, float, int]:
        if c.sock is not None:
            # Reusing a socket: anything readable now is the server's EOF (it closed the idle
            # connection), a reset, or bytes nobody asked for; each means: start afresh.
            if c.buf:
                c.close()
            else:
                try:
                    c.sock.recv(1, socket.MSG_PEEK)
                except BlockingIOError:
                    pass  # nothing there: a healthy idle connection
                except OSError:
                    c.close()
                else:
                    c.close()
        for attempt in (0, 1):
            if c.sock is None:
                await self._open(c)
            reused = c.served > 0
            try:
                s = c.sock
                try:
                    n = s.send(data)
                except BlockingIOError:
                    n = 0
                if n != len(data):
                    await self._send_all(s, data, n)
                return await self._read(c, head)
            except _EarlyEOF:
                c.close()
                if reused and attempt == 0:
                    continue
                raise TransportError("reset", "connection closed before an answer") from None
            except OSError as e:
                c.close()
                if e.errno in _RESET_ERRNOS:
                    if reused and attempt == 0:
                        continue
                    raise TransportError("reset", e.strerror or str(e)) from None
                raise TransportError("reset", f"{e.strerror or e}") from None
        raise TransportError("reset", "connection closed before an answer")  # pragma: no cover

    @staticmethod
    async def _send_all(s: socket.socket, data: bytes, done: int) -> None:
        view = memoryview(data)[done:]
        while view:
            try:
                n = s.send(view)
            except BlockingIOError:
                await _wait_writable(s)
                continue
            view = view[n:]

    async def _recv(self, s: socket.socket, want: int = RECV_BYTES) -> int:
        """Read up to `want` bytes into the scratch buffer; 0 at EOF."""
        view = self._view
        if want > RECV_BYTES:
            want = RECV_BYTES
        while True:
            try:
                return s.recv_into(view, want)
            except BlockingIOError:
                await _wait_readable(s)

    async def _read(self, c: Conn, head: bool) -> tuple[int, float, int]:
        s = c.sock
        buf = c.buf
        first = None
        while True:  # a final answer, skipping 1xx interim ones
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                if len(buf) > self.max_header:
                    raise TransportError("protocol", f"response header block over {self.max_header} bytes")
                n = await self._recv(s)
                if first is None:
                    first = _perf()
                if n == 0:
                    if not buf:
                        raise _EarlyEOF
                    raise TransportError("reset", "connection closed inside the response headers")
                buf += self._view[:n]
                end = buf.find(b"\r\n\r\n", max(0, len(buf) - n - 3))
            if end > self.max_header:
                raise TransportError("protocol", f"response header block over {self.max_header} bytes")
            h = bytes(buf[: end + 2]).lower()
            del buf[: end + 4]
            if h[:7] != b"http/1." or h[8:9] != b" " or not h[9:12].isdigit():
                raise TransportError("protocol", f"not an HTTP/1.x status line: {h[:40]!r}")
            status = int(h[9:12])
            if 100 <= status < 200 and status != 101:
                continue
            break
        keep = (b"\r\nconnection:" not in h or not _has_token(h, b"\r\nconnection:", b"close")) and (
            h[7:8] == b"1" or _has_token(h, b"\r\nconnection:", b"keep-alive"))
        if head or status == 204 or status == 304:
            nbytes = 0
        elif b"\r\ntransfer-encoding:" in h:
            if not _has_token(h, b"\r\ntransfer-encoding:", b"chunked", last=True):
                nbytes = await self._until_close(c)
                keep = False
            else:
                nbytes = await self._chunked(c)
        elif b"\r\ncontent-length:" in h:
            nbytes = _content_length(h)
            await self._skip(c, nbytes)
        else:
            nbytes = await self._until_close(c)
            keep = False
        if keep:
            c.served += 1
        else:
            c.close()
        return status, first, nbytes

    async def _skip(self, c: Conn, n: int) -> None:
        """Consume exactly n body bytes (buffered ones first)."""
        buf = c.buf
        if len(buf) >= n:
            del buf[:n]
            return
        n -= len(buf)
        buf.clear()
        s = c.sock
        while n > 0:
            got = await self._recv(s, n)
            if got == 0:
                raise TransportError("reset", "connection closed inside the response body")
            n -= got

    async def _until_close(self, c: Conn) -> int:
        total = len(c.buf)
        c.buf.clear()
        while True:
            got = await self._recv(c.sock)
            if got == 0:
                return total
            total += got

    async def _line(self, c: Conn) -> bytes:
        buf = c.buf
        while True:
            i = buf.find(b"\r\n")
            if i >= 0:
                line = bytes(buf[:i])
                del buf[: i + 2]
                return line
            if len(buf) > MAX_CHUNK_LINE:
                raise TransportError("protocol", "chunk-size line too long")
            n = await self._recv(c.sock, 4096)
            if n == 0:
                raise TransportError("reset", "connection closed inside a chunked body")
            buf += self._view[:n]

    async def _chunked(self, c: Conn) -> int:
        total = 0
        while True:
            line = await self._line(c)
            size_s = line.split(b";", 1)[0].strip()
            if not size_s or len(size_s) > 15 or size_s.strip(b"0123456789abcdefABCDEF"):
                raise TransportError("protocol", f"bad chunk size {line[:32]!r}")
            size = int(size_s, 16)
            if size == 0:
                trailer_bytes = 0
                while True:  # trailers, then the empty line
                    t = await self._line(c)
                    if not t:
                        return total
                    trailer_bytes += len(t)
                    if trailer_bytes > self.max_header:
                        raise TransportError("protocol", "trailers too long")
            await self._skip(c, size)
            total += size
            if await self._line(c) != b"":
                raise TransportError("protocol", "chunk not followed by CRLF")


def _values(h: bytes, name: bytes) -> list[bytes]:
    out, i = [], h.find(name)
    while i >= 0:
        j = h.find(b"\r\n", i + len(name))
        out.append(h[i + len(name): j if j >= 0 else len(h)].strip())
        i = h.find(name, i + len(name))
    return out


def _has_token(h: bytes, name: bytes, token: bytes, *, last: bool = False) -> bool:
    toks = [t.strip() for v in _values(h, name) for t in v.split(b",")]
    toks = [t for t in toks if t]
    if last:
        return bool(toks) and toks[-1] == token
    return token in toks


def _content_length(h: bytes) -> int:
    vals = {t.strip() for v in _values(h, b"\r\ncontent-length:") for t in v.split(b",")}
    if len(vals) != 1:
        raise TransportError("protocol", "conflicting Content-Length headers")
    v = vals.pop()
    if not v.isdigit() or len(v) > 15:
        raise TransportError("protocol", f"bad Content-Length {v[:20]!r}")
    return int(v)
