"""wbx loadtest's lean HTTP/1.1 client against a real (tiny, trio + h11) server on 127.0.0.1:
keep-alive, chunked and Content-Length bodies, `Connection: close`, gzip bodies counted not
decoded, a server that closes an idle connection (retried once, transparently), and hostile
answers (huge headers, garbage, slow heads and bodies) as typed errors within their deadline."""

from __future__ import annotations

import gzip
import socket
import time

import h11
import pytest
import trio

from workbooks.loadtest.httpclient import HTTPClient, TransportError, build_request, parse_base_url

PAGE = b"<html>" + b"x" * 5000 + b"</html>"


class TinyServer:
    """h11 on trio sockets; the path picks the behaviour. Counts connections and requests."""

    def __init__(self):
        self.port = None
        self.connections = 0
        self.requests = 0
        self.open_now = 0
        self.open_max = 0
        self.stall_until = 0.0  # trio time: every answer waits until then (a frozen server)
        self.stall_once: float | None = None  # seconds: the first request at/after arm time stalls this long
        self.stall_armed_at: float | None = None
        self.stall_started: float | None = None

    async def serve(self, nursery, *, task_status=trio.TASK_STATUS_IGNORED):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, stream: trio.SocketStream):
        self.connections += 1
        self.open_now += 1
        self.open_max = max(self.open_max, self.open_now)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(ev, h11.Request):
                    body = b""
                    while True:
                        e2 = conn.next_event()
                        if e2 is h11.NEED_DATA:
                            conn.receive_data(await stream.receive_some(65536))
                            continue
                        if isinstance(e2, h11.Data):
                            body += e2.data
                            continue
                        break
                    self.requests += 1
                    keep = await self._answer(conn, stream, ev.target.decode(), body, dict(ev.headers))
                    if not keep or conn.our_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
                    continue
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            self.open_now -= 1
            await stream.aclose()

    async def _send(self, conn, stream, status, headers, body=b"", chunks=None):
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
        if chunks is not None:
            for c in chunks:
                await stream.send_all(conn.send(h11.Data(data=c)))
        elif body:
            await stream.send_all(conn.send(h11.Data(data=body)))
        await stream.send_all(conn.send(h11.EndOfMessage()))

    async def _answer(self, conn, stream, path, body, headers=None) -> bool:
        now = trio.current_time()
        if self.stall_until > now:
            await trio.sleep_until(self.stall_until)
        if self.stall_once is not None and self.stall_armed_at is not None and now >= self.stall_armed_at:
            d, self.stall_once = self.stall_once, None
            self.stall_started = now
            self.stall_until = now + d
            await trio.sleep(d)
        if path == "/sitemap.xml":
            if (headers or {}).get(b"host") == b"huge.localhost":  # hostile: a header over any sane limit
                await stream.send_all(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
                return False
            xml = (b'<?xml version="1.0"?><urlset>'
                   b"<url><loc>http://t.localhost/</loc></url>"
                   b"<url><loc> http://t.localhost/a?x=1&amp;y=2 </loc></url>"
                   b"<url><loc>http://elsewhere.example/b</loc></url>"
                   b"<url><loc>http://t.localhost/</loc></url></urlset>")
            await self._send(conn, stream, 200, [("Content-Length", str(len(xml)))], xml)
        elif path == "/ok":
            await self._send(conn, stream, 200, [("Content-Length", str(len(PAGE)))], PAGE)
        elif path == "/echo":
            await self._send(conn, stream, 200, [("Content-Length", str(len(body)))], body)
        elif path == "/chunked":
            await self._send(conn, stream, 200, [("Transfer-Encoding", "chunked")],
                             chunks=[b"a" * 10, b"b" * 70000, b"c"])
        elif path == "/close":
            await self._send(conn, stream, 200, [("Content-Length", "5"), ("Connection", "close")], b"hello")
            return False
        elif path == "/gzip":
            z = gzip.compress(PAGE)
            await self._send(conn, stream, 200, [("Content-Length", str(len(z))), ("Content-Encoding", "gzip")], z)
        elif path == "/503":
            await self._send(conn, stream, 503, [("Content-Length", "0"), ("Retry-After", "1")])
        elif path == "/304":
            await self._send(conn, stream, 304, [("ETag", '"x"')])
        elif path == "/idle-close":  # answer keep-alive, then drop the idle connection
            await self._send(conn, stream, 200, [("Content-Length", "2")], b"ok")
            await trio.sleep(0.05)
            return False
        elif path == "/slow-head":
            await trio.sleep(5)
            await self._send(conn, stream, 200, [("Content-Length", "2")], b"ok")
        elif path == "/slow-body":
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            await trio.sleep(5)
            return False
        elif path == "/huge-header":
            await stream.send_all(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (1 << 20) + b"\r\nContent-Length: 0\r\n\r\n")
            return False
        elif path == "/garbage":
            await stream.send_all(b"SSH-2.0-OpenSSH_9.0\r\n\r\n")
            return False
        elif path == "/bad-chunk":
            await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
            return False
        elif path == "/drop-once":  # read the request, close without a word (the keep-alive race)
            self.dropped = getattr(self, "dropped", 0) + 1
            if self.dropped == 1:
                return False
            await self._send(conn, stream, 200, [("Content-Length", "2")], b"ok")
        elif path == "/drop-always":
            return False
        elif path == "/overlong":  # more body than Content-Length says, then keep-alive
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 299 Bogus\r\n\r\n")
            await trio.sleep(5)
            return False
        elif path == "/signed-chunk":  # Python's int() would take these; HTTP does not
            await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0x3\r\n")
            return False
        elif path == "/two-lengths":
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd")
            return False
        elif path == "/cut-body":
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-this")
            return False
        elif path == "/until-close":
            await stream.send_all(b"HTTP/1.0 200 OK\r\n\r\n" + b"z" * 3000)
            return False
        elif path == "/interim":
            await stream.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            await self._send(conn, stream, 201, [("Content-Length", "2")], b"ok")
        else:
            await self._send(conn, stream, 404, [("Content-Length", "0")])
        return True


def with_server(fn):
    """Run `fn(server, client)` under trio with a fresh TinyServer; everything stops after."""

    async def main():
        srv = TinyServer()
        async with trio.open_nursery() as n:
            await n.start(srv.serve, n)
            client = HTTPClient("127.0.0.1", srv.port)
            try:
                return await fn(srv, client)
            finally:
                n.cancel_scope.cancel()

    return trio.run(main)


def get(path, **extra):
    return build_request("GET", path, {"Host": "t.localhost", **extra})


def test_keep_alive_reuses_one_connection_and_counts_bodies():
    async def go(srv, client):
        c = client.conn()
        out = []
        for path in ("/ok", "/chunked", "/ok", "/304", "/interim", "/ok"):
            t0 = time.perf_counter()  # the first byte's time is perf_counter's (the recorder's clock)
            status, first, n = await client.request(c, get(path), trio.current_time() + 5)
            assert t0 <= first <= time.perf_counter()
            out.append((status, n))
        echo = await client.request(c, build_request("POST", "/echo", {"Host": "x"}, b"q" * 200_000), trio.current_time() + 5)
        c.close()
        return out, echo, srv.connections

    out, echo, conns = with_server(go)
    assert out == [(200, len(PAGE)), (200, 70011), (200, len(PAGE)), (304, 0), (201, 2), (200, len(PAGE))]
    assert echo[0] == 200 and echo[2] == 200_000
    assert conns == 1


def test_gzip_body_is_counted_compressed_and_close_reopens():
    async def go(srv, client):
        c = client.conn()
        a = await client.request(c, get("/gzip", **{"Accept-Encoding": "gzip"}), trio.current_time() + 5)
        b = await client.request(c, get("/close"), trio.current_time() + 5)
        closed = c.sock is None
        d = await client.request(c, get("/until-close"), trio.current_time() + 5)
        e = await client.request(c, get("/ok"), trio.current_time() + 5)
        return a, b, closed, d, e, srv.connections, c.opened

    a, b, closed, d, e, conns, opened = with_server(go)
    assert a[0] == 200 and a[2] == len(gzip.compress(PAGE)) < len(PAGE)
    assert b[0] == 200 and b[2] == 5 and closed
    assert d[0] == 200 and d[2] == 3000  # HTTP/1.0, body delimited by the close
    assert e[0] == 200
    assert conns == opened == 3


def test_server_closing_an_idle_connection_is_retried_once():
    async def go(srv, client):
        c = client.conn()
        first = await client.request(c, get("/idle-close"), trio.current_time() + 5)
        await trio.sleep(0.2)  # the server has closed it by now; the client does not know yet
        second = await client.request(c, get("/ok"), trio.current_time() + 5)
        return first, second, srv.connections, srv.requests

    first, second, conns, reqs = with_server(go)
    assert first[0] == 200 and second[0] == 200 and second[2] == len(PAGE)
    assert conns == 2 and reqs == 2  # the retry went on a new connection; nothing was sent twice


def test_bytes_past_an_answer_are_not_taken_for_the_next_one():
    async def go(srv, client):
        c = client.conn()
        a = await client.request(c, get("/overlong"), trio.current_time() + 5)
        await trio.sleep(0.05)
        b = await client.request(c, get("/ok"), trio.current_time() + 5)
        return a, b, srv.connections

    a, b, conns = with_server(go)
    assert a[0] == 200 and a[2] == 2
    assert b[0] == 200 and b[2] == len(PAGE) and conns == 2  # not the bogus 299: a fresh connection


def test_a_reused_connection_closed_before_the_answer_is_retried_once():
    async def go(srv, client):
        c = client.conn()
        await client.request(c, get("/ok"), trio.current_time() + 5)
        retried = await client.request(c, get("/drop-once"), trio.current_time() + 5)
        conns_after_retry = srv.connections
        fresh = client.conn()  # on a new connection there is no race to excuse: an error
        with pytest.raises(TransportError) as ei:
            await client.request(fresh, get("/drop-always"), trio.current_time() + 5)
        reused = client.conn()  # reused, and closed again on the retry: one retry only
        await client.request(reused, get("/ok"), trio.current_time() + 5)
        before = srv.requests
        with pytest.raises(TransportError) as ei2:
            await client.request(reused, get("/drop-always"), trio.current_time() + 5)
        return retried, conns_after_retry, ei.value.kind, ei2.value.kind, srv.requests - before

    retried, conns, kind, kind2, tries = with_server(go)
    assert retried[0] == 200 and conns == 2
    assert kind == kind2 == "reset" and tries == 2


def test_503_is_an_answer_not_a_transport_error():
    async def go(srv, client):
        c = client.conn()
        r = await client.request(c, get("/503"), trio.current_time() + 5)
        again = await client.request(c, get("/ok"), trio.current_time() + 5)
        return r, again, srv.connections

    r, again, conns = with_server(go)
    assert r[0] == 503 and again[0] == 200 and conns == 1


@pytest.mark.parametrize("path,kind", [
    ("/huge-header", "protocol"), ("/garbage", "protocol"), ("/bad-chunk", "protocol"), ("/signed-chunk", "protocol"),
    ("/two-lengths", "protocol"), ("/cut-body", "reset"), ("/slow-head", "timeout"), ("/slow-body", "timeout"),
])
def test_hostile_answers_are_typed_errors_within_the_deadline(path, kind):
    async def go(srv, client):
        c = client.conn()
        t0 = trio.current_time()
        with pytest.raises(TransportError) as ei:
            await client.request(c, get(path), t0 + 0.5)
        took = trio.current_time() - t0
        assert c.sock is None  # a connection left mid-answer is never reused
        after = await client.request(c, get("/ok"), trio.current_time() + 5)
        return ei.value.kind, took, after

    got, took, after = with_server(go)
    assert got == kind
    assert took < 2.0
    assert after[0] == 200


def test_connect_refused_is_a_connect_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused

        async def go():
            client = HTTPClient("127.0.0.1", port)
            with pytest.raises(TransportError) as ei:
                await client.request(client.conn(), get("/"), trio.current_time() + 2)
            return ei.value.kind

        assert trio.run(go) == "connect"


def test_bad_urls_and_headers_are_refused():
    assert parse_base_url("http://127.0.0.1:4001") == ("127.0.0.1", 4001)
    assert parse_base_url("http://demo.localhost") == ("demo.localhost", 80)
    for bad in ("https://x", "ftp://x", "http://", "http://x:99999"):
        with pytest.raises(ValueError):
            parse_base_url(bad)
    with pytest.raises(ValueError):
        build_request("GET", "/a b", {})
    with pytest.raises(ValueError):
        build_request("GET", "/", {"X": "a\r\nInjected: 1"})
