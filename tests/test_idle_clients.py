"""No idle client can exhaust a plane: real plane processes, real sockets, real file limits.

- 1,100 HTTP/2 preface-only connections plus HTTP/1.1 half headers against a plane started with
  a 1,024 open-file limit: a new client still gets /healthz and a real page within 1 s.
- 300 keep-alive connections closed by the client: the plane's sockets are released within 1 s
  (no CLOSE-WAIT until a keep-alive timeout).
- Every kind of connection that sends no complete request (nothing, half headers trickled,
  the HTTP/2 preface, PINGs, a reset stream, h2c, idle keep-alive after a response) is closed after
  WB_IDLE_TIMEOUT_S; a client that keeps making requests is not; an HTTP/2 client that holds
  its flow-control window at zero is dropped too.
Both planes, each test.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import pytest

from workbooks.web_control.launch import free_port, wait_http

DEMO = resources.files("workbooks.samples").joinpath("demo.org").read_text("utf-8")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
IDLE_S = 1.0  # WB_IDLE_TIMEOUT_S for the planes of the timeout tests
SEND_S = 2.0  # WB_SEND_TIMEOUT_S for them


class Plane:
    """One plane process started here (optionally under an open-file limit)."""

    def __init__(self, module: str, data: Path, logs: Path, *, nofile: tuple[int, int] | None = None,
                 env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = logs / f"{module.rsplit('.', 1)[-1]}-{self.port}.log"
        out = open(self.log_path, "ab")

        def limit() -> None:
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        e = {**os.environ, "WB_DATA": str(data), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--port", str(self.port), "--data-dir", str(data)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=e, preexec_fn=limit)
        out.close()
        try:
            wait_http(self.url + "/healthz", procs=[self.proc])
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fds(self) -> list[str]:
        out = []
        for name in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                out.append(os.readlink(f"/proc/{self.pid}/fd/{name}"))
            except OSError:
                pass
        return out

    def sockets(self) -> int:
        return sum(1 for f in self.fds() if f.startswith("socket:"))

    def log_events(self, event: str) -> list[dict]:
        rows = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if f'"{event}"' in line:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass
        return rows

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _pair(tmp: Path, **kw) -> dict:
    """A control plane (creating the data dir, admin key, a tenant and a deployed workbook) and a
    public plane serving it."""
    data, logs = tmp / "data", tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    control = Plane("workbooks.web_control", data, logs, **kw)
    planes = [control]
    try:
        admin = {"Authorization": "Bearer " + (data / "admin.key").read_text().strip()}
        with httpx.Client(timeout=30) as c:
            assert c.post(control.url + "/api/tenants", json={"name": "idle"}, headers=admin).status_code == 201
            key = c.post(control.url + "/api/tenants/idle/keys", json={"scope": "tenant"}, headers=admin).json()["key"]
            r = c.put(control.url + "/api/workbooks/idlebook", content=DEMO.encode(),
                      headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
        public = Plane("workbooks.web_public", data, logs, **kw)
        planes.append(public)
        # the name the page is published under (automatic names: `wid.tenant.<base>`, or the
        # leftmost label alone in older layouts)
        with httpx.Client(timeout=30) as c:
            host = next((h for h in ("idlebook.idle.localhost", "idlebook.localhost")
                         if c.get(public.url + "/", headers={"Host": h}).status_code == 200), None)
        assert host, "the public plane does not serve the deployed workbook"
    except BaseException:
        for p in planes:
            p.stop()
        raise
    return {"control": control, "public": public, "key": key, "host": host,
            "planes": planes}


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """Both planes started with RLIMIT_NOFILE soft = hard = 1024, default idle timeout."""
    env = _pair(tmp_path_factory.mktemp("idle-limited"), nofile=(1024, 1024),
                env={"WB_IDLE_TIMEOUT_S": "", "WB_MAX_CONNECTIONS": ""})
    yield env
    for p in env["planes"]:
        p.stop()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """Both planes with WB_IDLE_TIMEOUT_S=1 and WB_SEND_TIMEOUT_S=2."""
    env = _pair(tmp_path_factory.mktemp("idle-quick"),
                env={"WB_IDLE_TIMEOUT_S": str(IDLE_S), "WB_SEND_TIMEOUT_S": str(SEND_S)})
    yield env
    for p in env["planes"]:
        p.stop()


# -- helpers -------------------------------------------------------------------------------------
def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_response(s: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length (what both planes send)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, "server closed before answering"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, "server closed mid-body"
        body += chunk
    return int(head.split(b" ", 2)[1]), body


def readable(s: socket.socket, timeout: float) -> bool:
    """poll(), not select(): the flood's descriptors go past select()'s 1,024."""
    p = select.poll()
    p.register(s, select.POLLIN)
    return bool(p.poll(timeout * 1000))


def is_closed(s: socket.socket) -> bool:
    """True once the server has closed this connection (EOF or reset); drains what it sent."""
    s.setblocking(False)
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        s.setblocking(True)


def h2_client(window: int | None = None) -> h2.connection.H2Connection:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    c.initiate_connection()
    if window is not None:
        c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    return c


def h2_get(s: socket.socket, c: h2.connection.H2Connection, path: str, host: str, sid: int) -> tuple[int, bytes]:
    c.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", host)],
                   end_stream=True)
    s.sendall(c.data_to_send())
    status, body = 0, b""
    s.settimeout(5)
    while True:
        data = s.recv(65536)
        assert data, "server closed the HTTP/2 connection mid-request"
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                status = int(dict(ev.headers)[":status"])
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                body += ev.data
                c.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                s.sendall(c.data_to_send())
                return status, body
        s.sendall(c.data_to_send())


# -- 1,100 idle connections against a 1,024-file limit -----------------------------------------------
@pytest.mark.parametrize("which", ["public", "control"])
def test_idle_flood_at_the_file_limit_leaves_room_for_a_new_client(limited, which):
    plane = limited[which]
    limits = Path(f"/proc/{plane.pid}/limits").read_text()
    assert any(line.startswith("Max open files") and line.split()[3:5] == ["1024", "1024"]
               for line in limits.splitlines()), limits
    flood: list[socket.socket] = []
    try:
        for _ in range(60):
            s = connect(plane.port)
            try:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            except OSError:
                pass
            flood.append(s)
        t = time.monotonic()
        for _ in range(1100):
            s = connect(plane.port)
            try:
                s.sendall(PREFACE)
            except OSError:
                pass  # already shed by the server: that is the point
            flood.append(s)
        # The server answers a preface with its SETTINGS: once the last one has them, every
        # connection has been accepted and is held open by the client (the state the chaos run
        # found fatal), whatever the machine's load made the burst cost.
        assert readable(flood[-1], 20), "the flood was not taken in within 20 s"
        absorbed = time.monotonic() - t

        with httpx.Client(timeout=5) as c:
            t = time.monotonic()
            r = c.get(plane.url + "/healthz")
            elapsed = time.monotonic() - t
            assert r.status_code == 200 and r.json()["ok"] is True
            assert elapsed < 1.0, f"/healthz took {elapsed:.2f}s behind 1,160 idle connections ({absorbed=:.2f}s)"
            t = time.monotonic()
            if which == "public":
                r = c.get(plane.url + "/", headers={"Host": limited["host"]})
                assert r.status_code == 200 and "<title>Workbooks demo</title>" in r.text
            else:
                r = c.get(plane.url + "/api/workbooks/idlebook", headers={"Authorization": f"Bearer {limited['key']}"})
                assert r.status_code == 200 and r.json()["id"] == "idlebook"
            elapsed = time.monotonic() - t
            assert elapsed < 1.0, f"the page took {elapsed:.2f}s behind 1,160 idle connections"

        assert plane.proc.poll() is None
        assert len(plane.fds()) < 1024
        # the oldest idle connections were shed to make the room; the newest are still open
        [limits_row] = plane.log_events("connection_limits")
        cap = limits_row["max_connections"]
        assert cap < 1024
        shed = sum(1 for s in flood if is_closed(s))
        assert shed >= len(flood) - cap, (shed, cap)
        assert not is_closed(flood[-1])
        assert is_closed(flood[0])
    finally:
        for s in flood:
            s.close()


# -- CLOSE-WAIT ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["public", "control"])
def test_client_closed_keepalive_connections_are_released_at_once(limited, which):
    plane = limited[which]
    baseline, deadline = plane.sockets(), time.monotonic() + 15
    while time.monotonic() < deadline:  # until the previous test's sockets have gone
        time.sleep(0.3)
        now = plane.sockets()
        if now == baseline:
            break
        baseline = now
    conns = []
    try:
        for _ in range(300):
            s = connect(plane.port)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            status, _ = read_response(s)
            assert status == 200
            conns.append(s)
        assert plane.sockets() >= baseline + 290  # kept alive by the server
    finally:
        for s in conns:
            s.close()
    t = time.monotonic()
    while plane.sockets() > baseline + 5 and time.monotonic() - t < 5:
        time.sleep(0.02)
    released = time.monotonic() - t
    assert plane.sockets() <= baseline + 5
    assert released < 1.0, f"sockets took {released:.2f}s to be released"
    ss = subprocess.run(["ss", "-Htan", "state", "close-wait", f"( sport = :{plane.port} )"],
                        capture_output=True, text=True, check=True).stdout
    assert ss.strip() == "", ss


# -- idle deadline -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["public", "control"])
def test_connections_without_a_complete_request_are_closed_after_the_idle_timeout(quick, which):
    plane = quick[which]
    host = quick["host"] if which == "public" else "localhost"
    path = "/" if which == "public" else "/healthz"
    watched: dict[str, socket.socket] = {}
    t0 = time.monotonic()
    watched["silent"] = connect(plane.port)
    watched["half-headers"] = connect(plane.port)
    watched["half-headers"].sendall(b"GET / HTTP/1.1\r\nHost: ")
    watched["slowloris"] = connect(plane.port)
    watched["slowloris"].sendall(b"GET / HTTP/1.1\r\n")
    watched["h2-preface"] = connect(plane.port)
    watched["h2-preface"].sendall(PREFACE)
    ping = h2_client()
    watched["h2-pings"] = connect(plane.port)
    watched["h2-pings"].sendall(ping.data_to_send())
    # h11 keep-alive, idle after one complete request
    watched["h1-keepalive"] = connect(plane.port)
    watched["h1-keepalive"].sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert read_response(watched["h1-keepalive"])[0] == 200
    # HTTP/2 prior knowledge, idle after one complete request
    h2c = h2_client()
    watched["h2-keepalive"] = connect(plane.port)
    assert h2_get(watched["h2-keepalive"], h2c, path, host, 1)[0] == 200
    # HTTP/2: a request started, then reset by the client (no response, no request in flight)
    rst = h2_client()
    watched["h2-reset"] = connect(plane.port)
    rst.send_headers(1, [(":method", "POST"), (":path", path), (":scheme", "http"), (":authority", host),
                         ("content-length", "10")])
    rst.reset_stream(1)
    watched["h2-reset"].sendall(rst.data_to_send())
    # h2c upgrade, idle after the upgraded request
    watched["h2c-upgrade"] = connect(plane.port)
    watched["h2c-upgrade"].sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n".encode())
    # a client that keeps working on one keep-alive connection is left alone
    busy = connect(plane.port)

    closed_at: dict[str, float] = {}
    last_busy = last_trickle = t0
    busy_requests = 0
    while time.monotonic() - t0 < 3 * IDLE_S + 2 and (len(closed_at) < len(watched)
                                                     or time.monotonic() - t0 < 2.5 * IDLE_S):
        now = time.monotonic()
        if now - last_trickle >= 0.2:  # bytes keep coming, but never a whole request
            last_trickle = now
            for name, data in (("slowloris", b"X"), ("h2-pings", None)):
                if name in closed_at:
                    continue
                try:
                    if data is None:
                        ping.ping(b"12345678")
                        data = ping.data_to_send()
                    watched[name].sendall(data)
                except OSError:
                    pass
        if now - t0 < 2.5 * IDLE_S and now - last_busy >= 0.4 * IDLE_S:
            last_busy = now
            busy.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert read_response(busy)[0] == 200, "the busy client's connection was closed under it"
            busy_requests += 1
        socks = [s for n, s in watched.items() if n not in closed_at]
        ready, _, _ = select.select(socks, [], [], 0.05)
        for name, s in watched.items():
            if name not in closed_at and s in ready and is_closed(s):
                closed_at[name] = time.monotonic() - t0
    try:
        assert set(closed_at) == set(watched), f"still open: {set(watched) - set(closed_at)}"
        for name, at in closed_at.items():
            assert 0.8 * IDLE_S <= at <= 3 * IDLE_S + 0.5, (name, at)
        # the busy connection is still usable after working past several idle timeouts
        assert busy_requests >= 5
        busy.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert read_response(busy)[0] == 200
        # ...and, once it stops, it is closed as well
        t = time.monotonic()
        busy.settimeout(3 * IDLE_S + 2)
        assert busy.recv(1) == b""
        assert time.monotonic() - t >= 0.8 * IDLE_S
    finally:
        busy.close()
        for s in watched.values():
            s.close()


@pytest.mark.parametrize("which", ["public", "control"])
def test_http2_client_holding_a_zero_window_is_dropped(quick, which):
    """A request is in flight, but the client never opens its flow-control window: the response
    can never leave, so the connection counts as stalled and is dropped."""
    plane = quick[which]
    host = quick["host"] if which == "public" else "localhost"
    path = "/" if which == "public" else "/healthz"
    c = h2_client(window=0)
    s = connect(plane.port)
    try:
        s.sendall(c.data_to_send())
        c.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", host)],
                       end_stream=True)
        s.sendall(c.data_to_send())
        t0 = time.monotonic()
        got_headers = False
        while time.monotonic() - t0 < 4 * IDLE_S + 3:
            # PINGs (answered by the server) are no progress for the stuck response
            c.ping(b"pingpong")
            try:
                s.sendall(c.data_to_send())
                if not readable(s, 0.3):
                    continue
                data = s.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                break
            if not data:
                break
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    got_headers = True
                assert not isinstance(ev, h2.events.DataReceived), "data sent through a zero window"
        dropped = time.monotonic() - t0
        assert got_headers  # the request was taken: this is a stalled response, not an idle one
        assert IDLE_S <= dropped <= 3 * IDLE_S + 1, dropped
    finally:
        s.close()


def _server_side(port: int, client_port: int) -> str:
    return subprocess.run(["ss", "-Htn", f"( sport = :{port} and dport = :{client_port} )"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_a_client_that_stops_reading_a_big_response_is_dropped(quick):
    """The response is bigger than the socket buffers and the client reads none of it: the
    server's send waits on a zero TCP window until WB_SEND_TIMEOUT_S, then the socket goes."""
    big = "#+TITLE: Big\n" + "".join(f"* Part {i}\n" + "Some prose to make the page long. " * 45 + "\n"
                                      for i in range(3000))
    with httpx.Client(timeout=120) as c:
        r = c.put(quick["control"].url + "/api/workbooks/bigbook", content=big.encode(),
                  headers={"Authorization": f"Bearer {quick['key']}"})
        assert r.status_code == 200, r.text
    host = quick["host"].replace("idlebook", "bigbook")
    for which, path, headers in (("public", "/", f"Host: {host}\r\n"),
                                 ("control", "/api/workbooks/bigbook",
                                  f"Host: localhost\r\nAuthorization: Bearer {quick['key']}\r\n")):
        plane = quick[which]
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            s.connect(("127.0.0.1", plane.port))
            s.sendall(f"GET {path} HTTP/1.1\r\n{headers}Accept-Encoding: identity\r\n\r\n".encode())
            me = s.getsockname()[1]
            t0 = time.monotonic()
            while _server_side(plane.port, me) and time.monotonic() - t0 < SEND_S + 10:
                time.sleep(0.1)
            gone = time.monotonic() - t0
            assert not _server_side(plane.port, me), f"{which}: still held after {gone:.1f}s"
            assert SEND_S - 0.5 <= gone <= SEND_S + 6, (which, gone)
        finally:
            s.close()


def test_a_bad_setting_is_a_clear_error_and_exit_78(tmp_path):
    for name, value in (("WB_IDLE_TIMEOUT_S", "soon"), ("WB_IDLE_TIMEOUT_S", "0"), ("WB_MAX_CONNECTIONS", "-3"),
                        ("WB_SEND_TIMEOUT_S", "inf")):
        out = subprocess.run([sys.executable, "-m", "workbooks.web_public", "--port", "0", "--data-dir",
                              str(tmp_path / "data")], env={**os.environ, name: value},
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 78, (name, value, out.stdout[-2000:], out.stderr[-2000:])
        errors = [json.loads(line) for line in out.stdout.splitlines() if '"bad_setting"' in line]
        assert errors and name in errors[0]["error"] and value in errors[0]["error"], out.stdout[-2000:]
        assert "Traceback" not in out.stderr


def test_plane_raises_its_soft_file_limit_to_the_hard_one(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    plane = Plane("workbooks.web_public", tmp_path / "data", logs, nofile=(1024, 4096), env={"WB_IDLE_TIMEOUT_S": ""})
    try:
        limits = Path(f"/proc/{plane.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"], line
        [row] = plane.log_events("connection_limits")
        assert row["nofile_soft_before"] == 1024 and row["nofile_soft"] == 4096 and row["nofile_hard"] == 4096
        assert row["max_connections"] < 4096 - 64
        assert row["idle_timeout_s"] == 10.0
    finally:
        plane.stop()
