"""The fetch tool and its SSRF guard against real sockets: every case of the original's
fetch_ssrf_test.exs, DNS answers (names that resolve to loopback), the address matrix (CGNAT,
multicast, ULA, site-local, mapped/NAT64/6to4 forms), redirects re-checked and capped, the body
cap (an endless body and a gzip bomb), HTML to text, secrets resolved only on the wire and redacted
in the answer, and a real 127.0.0.1 server reached through the allow-list."""

from __future__ import annotations

import gzip
import ipaddress
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trio

from workbooks.agent.secrets import Secrets
from workbooks.agent.tools.base import ToolContext
from workbooks.agent.tools.fetch import FETCH, MAX_BODY
from workbooks.agent.tools.netguard import BLOCKED, Refused, addresses, is_public, parse

SECRET = "sk-live-7f3a9c1e55d04b2a"


class Server:
    """A threaded HTTP server on 127.0.0.1 with a few routes; it records what it was asked."""

    def __init__(self):
        self.requests: list[dict] = []
        self.write_errors = 0
        self.sent_bytes = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.requests.append({"path": self.path, "headers": dict(self.headers)})
                route = self.path.split("?", 1)[0]
                fn = outer.routes.get(route)
                if fn is None:
                    return self._send(404, b"nope", "text/plain")
                fn(self)

            def _send(self, status, body: bytes, ctype="text/html; charset=utf-8", extra=()):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        self.handler = H
        self.routes: dict = {}
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def route(self, path):
        def deco(fn):
            self.routes[path] = fn
            return fn

        return deco

    def paths(self):
        return [r["path"] for r in self.requests]

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def srv():
    s = Server()
    yield s
    s.stop()


def ctx_for(tmp_path: Path, allow=("127.0.0.1",), secrets=None, deadline_s=None) -> ToolContext:
    return ToolContext(tenant="dev", run_id="run-1", data_dir=tmp_path, workdir=tmp_path,
                       fetch_allow_hosts=frozenset(allow), secrets=Secrets(secrets or {}),
                       extra={"deadline_s": deadline_s})


def fetch(ctx: ToolContext, url, **more):
    async def go():
        if ctx.extra.get("deadline_s"):
            ctx.deadline = trio.current_time() + ctx.extra["deadline_s"]
        return await FETCH(ctx, {"url": url, **more})

    return trio.run(go)


# -- the original's cases (no network: refused before any connection) --------------------------------
ORIGINAL_BLOCKED = [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://127.0.0.1:4000/api/sessions",
    "http://localhost:4000/health",
    "http://10.0.0.5/internal",
    "http://192.168.1.1/admin",
    "http://172.16.0.9/x",
    "http://[::1]:4000/x",
    "http://0.0.0.0/x",
]


@pytest.mark.parametrize("url", ORIGINAL_BLOCKED)
def test_metadata_loopback_private_and_link_local_are_blocked(tmp_path, url):
    r = fetch(ctx_for(tmp_path, allow=()), url)
    assert r.output == BLOCKED and r.exit_code == 1 and r.error == "blocked"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://169.254.169.254/", "javascript:alert(1)"])
def test_non_http_schemes_are_blocked(tmp_path, url):
    r = fetch(ctx_for(tmp_path), url)
    assert r.output.startswith("fetch blocked: only http and https URLs are fetched"), r.output


def test_a_public_ip_literal_passes_the_guard():
    # the guard's verdict only (nothing is fetched: this machine reaches no public address)
    for url in ("http://93.184.216.34/", "https://93.184.216.34/docs"):
        t = parse(url)
        assert trio.run(addresses, t) == [(socket.AF_INET, ("93.184.216.34", t.port))]


def test_a_missing_host_or_url_is_rejected(tmp_path):
    ctx = ctx_for(tmp_path)
    assert fetch(ctx, "http:///nohost").output == "fetch blocked: the URL has no host"
    for bad in ("", None, 42):
        assert trio.run(FETCH, ctx, {"url": bad}).output == "fetch error: no url given"
    assert trio.run(FETCH, ctx, {}).output == "fetch error: no url given"
    assert fetch(ctx, "http://127.0.0.1:99999/").output.startswith("fetch error: the URL's port")
    assert fetch(ctx, "http://example.com:0/").output.startswith("fetch error: the URL's port")  # not "80"
    for bad in ("http://a b/", "http://%00/", "http://a..b/", "http://-a.com/", "http://" + "a" * 70 + ".com/"):
        assert fetch(ctx, bad).output == "fetch error: the URL's host is not a valid name", bad
    assert fetch(ctx, "http://[::1/").output.startswith("fetch error: not a URL")


# -- beyond the original ---------------------------------------------------------------------------
BLOCKED_ADDRESSES = [
    "100.64.0.1", "100.127.255.254",  # CGNAT
    "224.0.0.1", "239.255.255.250",  # multicast
    "255.255.255.255", "240.0.0.1", "0.1.2.3", "198.18.0.1", "192.0.2.1",
    "fc00::1", "fd12:3456::1", "fe80::1", "fec0::1", "ff02::1", "::", "::1", "2001:db8::1", "2001::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "::127.0.0.1",
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::808:808", "2002:7f00:1::1", "2002:a00:1::",
]
PUBLIC_ADDRESSES = ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]


def test_the_address_matrix():
    for a in BLOCKED_ADDRESSES:
        assert not is_public(ipaddress.ip_address(a)), a
    for a in PUBLIC_ADDRESSES:
        assert is_public(ipaddress.ip_address(a)), a


@pytest.mark.parametrize("host", ["[::ffff:127.0.0.1]", "[::ffff:a9fe:a9fe]", "[64:ff9b::a9fe:a9fe]", "[fd00::1]", "100.64.1.1"])
def test_mapped_and_other_literals_are_blocked_by_the_tool(tmp_path, host):
    assert fetch(ctx_for(tmp_path, allow=()), f"http://{host}/").output == BLOCKED


def test_dns_answers_are_checked(tmp_path, srv):
    srv.route("/")(lambda h: h._send(200, b"<p>internal</p>"))
    ctx = ctx_for(tmp_path, allow=())  # 127.0.0.1 is NOT allowed here
    for url in (f"http://localhost:{srv.port}/", f"http://LOCALHOST.:{srv.port}/",
                f"http://2130706433:{srv.port}/", f"http://0x7f000001:{srv.port}/", f"http://127.1:{srv.port}/"):
        assert fetch(ctx, url).output == BLOCKED, url  # each resolves to loopback
    assert srv.requests == []  # nothing reached the server
    assert fetch(ctx, "http://no-such-host.invalid/").output == "fetch error: cannot resolve no-such-host.invalid"


def test_a_real_local_server_through_the_allow_list_html_to_text(tmp_path, srv):
    page = (b"<!doctype html><html><head><title>Brand &amp; Co</title><style>body{color:red}</style>"
            b"<script>var secret = 1;</script></head><body><nav>Home | About</nav>"
            b"<h1>Caf&eacute; &#8212; &#x41;BC</h1><p>Hello\n\n   <b>world</b>.</p><footer>(c) 2026</footer></body></html>")
    srv.route("/page")(lambda h: h._send(200, page))
    r = fetch(ctx_for(tmp_path), srv.base + "/page")
    assert r.exit_code == 0
    assert r.output == "Brand & Co Café — ABC Hello world ."
    # named hosts in the allow-list work too (localhost resolves to loopback, allowed by name)
    assert fetch(ctx_for(tmp_path, allow=("localhost",)), f"http://localhost:{srv.port}/page").output.startswith("Brand & Co")
    srv.route("/json")(lambda h: h._send(200, b'{"a": [1, 2]}\n', "application/json"))
    assert fetch(ctx_for(tmp_path), srv.base + "/json").output == '{"a": [1, 2]}'
    srv.route("/png")(lambda h: h._send(200, b"\x89PNG....", "image/png"))
    assert fetch(ctx_for(tmp_path), srv.base + "/png").output == "fetch error: not text (image/png, 8 bytes)"
    long_page = b"<p>" + b"word " * 5000 + b"</p>"
    srv.route("/long")(lambda h: h._send(200, long_page))
    assert len(fetch(ctx_for(tmp_path), srv.base + "/long").output) == 4000


def test_http_errors(tmp_path, srv):
    srv.route("/gone")(lambda h: h._send(410, b"gone"))
    srv.route("/boom")(lambda h: h._send(500, b"boom"))
    ctx = ctx_for(tmp_path)
    assert fetch(ctx, srv.base + "/missing").output == "fetch failed: HTTP 404"
    assert fetch(ctx, srv.base + "/gone").output == "fetch failed: HTTP 410"
    assert fetch(ctx, srv.base + "/boom").output == "fetch failed: HTTP 500"
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    assert fetch(ctx, f"http://127.0.0.1:{port}/").output.startswith("fetch error: cannot connect to 127.0.0.1")


def redirect(to):
    return lambda h: h._send(302, b"", "text/plain", extra=[("Location", to)])


def test_redirects_are_followed_by_hand_and_each_hop_rechecked(tmp_path, srv):
    srv.route("/a")(redirect("/b"))
    srv.route("/b")(redirect(srv.base + "/c?x=1"))
    srv.route("/c")(lambda h: h._send(200, b"<p>landed</p>"))
    ctx = ctx_for(tmp_path)
    assert fetch(ctx, srv.base + "/a").output == "landed"
    assert srv.paths() == ["/a", "/b", "/c?x=1"]
    # a redirect to a private address or to a name resolving to loopback is blocked at that hop
    for target in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.5/", f"http://localhost:{srv.port}/c",
                   "http://[::ffff:127.0.0.1]/", "file:///etc/passwd"):
        srv.requests.clear()
        srv.route("/evil")(redirect(target))
        out = fetch(ctx, srv.base + "/evil").output
        assert out.startswith("fetch blocked:"), (target, out)
        assert srv.paths() == ["/evil"]  # the loopback target was not requested


def test_a_redirect_loop_is_capped_at_five(tmp_path, srv):
    srv.route("/loop")(redirect("/loop"))
    assert fetch(ctx_for(tmp_path), srv.base + "/loop").output == "fetch error: too many redirects (more than 5)"
    assert srv.paths() == ["/loop"] * 6  # the first request and five redirects


def test_the_body_cap_stops_an_endless_body(tmp_path, srv):
    def endless(h):
        h.send_response(200)
        h.send_header("Content-Type", "text/plain")
        h.end_headers()
        chunk = b"a" * 65536
        try:
            for _ in range(800):  # at most 50 MiB, if the client kept reading
                h.wfile.write(chunk)
                srv.sent_bytes += len(chunk)
        except OSError:
            srv.write_errors += 1

    srv.route("/endless")(endless)
    t0 = time.monotonic()
    r = fetch(ctx_for(tmp_path), srv.base + "/endless")
    assert r.output == "a" * 4000 and time.monotonic() - t0 < 10
    deadline = time.monotonic() + 5
    while not srv.write_errors and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.write_errors == 1 and srv.sent_bytes < 20 * MAX_BODY  # the client hung up; it did not take 50 MiB

    bomb = gzip.compress(b"<p>" + b"z" * (64 << 20) + b"</p>")  # 64 MiB of text in ~64 KiB
    srv.route("/bomb")(lambda h: h._send(200, bomb, "text/html", extra=[("Content-Encoding", "gzip")]))
    t0 = time.monotonic()
    assert fetch(ctx_for(tmp_path), srv.base + "/bomb").output == "z" * 4000
    assert time.monotonic() - t0 < 10


def test_a_silent_server_times_out_at_the_deadline(tmp_path):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    try:
        t0 = time.monotonic()
        r = fetch(ctx_for(tmp_path, deadline_s=1.0), f"http://127.0.0.1:{lsock.getsockname()[1]}/")
        assert r.output.startswith("fetch error: timed out after 1s") and r.error == "timeout"
        assert time.monotonic() - t0 < 5
        # a TLS handshake that never gets an answer ends at the deadline too
        r = fetch(ctx_for(tmp_path, deadline_s=1.0), f"https://127.0.0.1:{lsock.getsockname()[1]}/")
        assert r.output.startswith("fetch error: timed out after 1s"), r.output
    finally:
        lsock.close()


def test_secrets_resolved_on_the_wire_only_and_redacted_in_the_answer(tmp_path, srv):
    def echo(h):
        h._send(200, f"<p>you sent {h.path} with {h.headers.get('X-Api-Key')}</p>".encode())

    srv.route("/echo")(echo)
    ctx = ctx_for(tmp_path, secrets={"API": SECRET})
    r = fetch(ctx, srv.base + "/echo?k={{secret:API}}", headers={"X-Api-Key": "{{secret:API}}", "Host": "evil"})
    assert srv.requests[0]["path"] == f"/echo?k={SECRET}"
    assert srv.requests[0]["headers"]["X-Api-Key"] == SECRET
    assert srv.requests[0]["headers"]["Host"] == f"127.0.0.1:{srv.port}"  # the caller cannot pick Host
    assert SECRET not in r.output and r.output == "you sent /echo?k=[secret:API] with [secret:API]"
    # headers (and their secrets) do not follow a redirect to another origin
    other = Server()
    try:
        other.route("/land")(lambda h: h._send(200, b"<p>ok</p>"))
        srv.route("/away")(redirect(other.base + "/land"))
        assert fetch(ctx, srv.base + "/away", headers={"X-Api-Key": "{{secret:API}}"}).output == "ok"
        assert srv.requests[-1]["headers"]["X-Api-Key"] == SECRET
        assert "X-Api-Key" not in other.requests[0]["headers"]
    finally:
        other.stop()


def test_bad_header_arguments_are_refused(tmp_path, srv):
    ctx = ctx_for(tmp_path)
    assert fetch(ctx, srv.base + "/x", headers=["a"]).output == "fetch error: `headers` must be an object of string values"
    out = fetch(ctx, srv.base + "/x", headers={"X-A": "line\r\nInjected: 1"}).output
    assert out.startswith("fetch error: bad request header") and srv.requests == []


def test_guard_parse_refuses_control_characters():
    with pytest.raises(Refused):
        parse("http://example.com/\r\nHost: x")


def test_a_server_that_hangs_up_without_answering(tmp_path):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)

    def hang_up():
        conn, _ = lsock.accept()
        conn.recv(65536)
        conn.close()

    th = threading.Thread(target=hang_up, daemon=True)
    th.start()
    try:
        out = fetch(ctx_for(tmp_path), f"http://127.0.0.1:{lsock.getsockname()[1]}/").output
        assert out.startswith("fetch error: ") and "127.0.0.1" in out, out
    finally:
        th.join(5)
        lsock.close()


# -- TLS: the host name is checked against the certificate (a local CA made here) -------------------------
def make_ca_and_cert(tmp_path: Path, san_ip: str):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "server")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san_ip))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))


@pytest.fixture
def tls_srv(tmp_path):
    import ssl

    make_ca_and_cert(tmp_path, "127.0.0.1")
    s = Server()
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    s.httpd.socket = sctx.wrap_socket(s.httpd.socket, server_side=True)
    s.base = f"https://127.0.0.1:{s.port}"
    s.route("/tls")(lambda h: h._send(200, b"<p>over tls</p>"))
    yield s
    s.stop()


def test_https_verifies_the_certificate_for_the_host(tmp_path, tls_srv, monkeypatch):
    import ssl

    from workbooks.agent.tools import fetch as fetch_mod

    # the system's trust store does not know the test CA: refused
    out = fetch(ctx_for(tmp_path), tls_srv.base + "/tls").output
    assert out.startswith("fetch error: TLS with 127.0.0.1 failed: CERTIFICATE_VERIFY_FAILED (unable to get local issuer"), out
    trusting = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    monkeypatch.setattr(fetch_mod, "_ssl_context", trusting)
    assert fetch(ctx_for(tmp_path), tls_srv.base + "/tls").output == "over tls"
    # the certificate names 127.0.0.1 only: reached by another name, the name check refuses it
    out = fetch(ctx_for(tmp_path, allow=("localhost",)), f"https://localhost:{tls_srv.port}/tls").output
    assert out == "fetch error: TLS with localhost failed: CERTIFICATE_VERIFY_FAILED (Hostname mismatch, certificate is not valid for 'localhost'.)", out


class Resolver(trio.abc.HostnameResolver):
    """trio's hostname-resolver hook: answers from a script and counts the lookups."""

    def __init__(self, answers: list[list[str]]):
        self.answers = answers
        self.calls: list[str] = []

    async def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        self.calls.append(name)
        ips = self.answers[min(len(self.calls) - 1, len(self.answers) - 1)]
        out = []
        for ip in ips:
            if ":" in ip:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)))
        return out

    async def getnameinfo(self, sockaddr, flags):
        raise NotImplementedError


def fetch_with_resolver(ctx, resolver, url):
    async def go():
        trio.socket.set_custom_hostname_resolver(resolver)
        return await FETCH(ctx, {"url": url})

    return trio.run(go)


def test_every_dns_answer_is_checked_and_the_checked_address_is_used(tmp_path, srv):
    srv.route("/r")(lambda h: h._send(200, b"<p>pinned</p>"))
    # one private answer among public ones blocks the fetch
    res = Resolver([["93.184.216.34", "10.1.2.3"]])
    assert fetch_with_resolver(ctx_for(tmp_path, allow=()), res, "http://mixed.test/").output == BLOCKED
    res = Resolver([["2606:4700:4700::1111", "fd00::7"]])
    assert fetch_with_resolver(ctx_for(tmp_path, allow=()), res, "http://mixed6.test/").output == BLOCKED
    # one lookup only: a second answer (a rebinding to a private address) is never asked for
    res = Resolver([["127.0.0.1"], ["10.9.9.9"]])
    ctx = ctx_for(tmp_path, allow=("rebind.test",))
    assert fetch_with_resolver(ctx, res, f"http://rebind.test:{srv.port}/r").output == "pinned"
    assert res.calls == ["rebind.test"]
    assert srv.requests[-1]["headers"]["Host"] == f"rebind.test:{srv.port}"
