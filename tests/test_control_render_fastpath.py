"""The OQL routes' fast path (workbooks/web_control/fastpath.py) keeps the Quart route's contract.

Real control-plane processes on loopback: one with the fast path (the default), one with
`WB_OQL_FASTPATH=0` (every request through Quart) on the same data dir. The same requests go to
both, and status, headers (but Date) and body must be identical: successes, metadata JSON,
options errors, missing and unknown keys, bad bodies, wrong methods and paths, oversize bodies,
and the pool's `overloaded` (503 with Retry-After). A key revoked through another process stops
working within a second; a coarse guard holds the control process's CPU per render.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from workbooks.web_control.launch import Planes, free_port, wait_http

TICK = os.sysconf("SC_CLK_TCK")
DOC = "#+TITLE: Fast\n* One :tag:\nSome *bold* text and a [[https://example.org][link]].\n- a\n- b\n| x | y |\n|---+---|\n| 1 | 2 |\n"


class ControlProc:
    """One extra control-plane process on its own port, sharing a data dir (and pool) with others."""

    def __init__(self, data: Path, logs: Path, env: dict, pool: str | None = None, name: str = "extra"):
        self.port = free_port()
        logs.mkdir(parents=True, exist_ok=True)
        self.out = open(logs / f"{name}.log", "ab")
        argv = [sys.executable, "-m", "workbooks.web_control", "--port", str(self.port), "--data-dir", str(data),
                "--proc", "9", *(["--pool", pool] if pool else [])]
        self.p = subprocess.Popen(argv, stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env={**os.environ, "WB_DATA": str(data), **env})
        try:
            wait_http(self.url + "/healthz", procs=[self.p])
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.out.close()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _same(fast: httpx.Response, slow: httpx.Response, what: str) -> None:
    def hdrs(r):
        return sorted((k, v) for k, v in r.headers.multi_items() if k != "date")

    assert fast.status_code == slow.status_code, (what, fast.status_code, slow.status_code, fast.text[:300])
    assert hdrs(fast) == hdrs(slow), (what, hdrs(fast), hdrs(slow))
    assert fast.content == slow.content, (what, fast.content[:300], slow.content[:300])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A control plane with the fast path and one without it, on one data dir (in-process kernel)."""
    d = tmp_path_factory.mktemp("fastpath")
    env = {"WB_MAX_BODY": str(64 * 1024)}
    planes = Planes(d / "data", env=env).start()
    slow = None
    try:
        slow = ControlProc(d / "data", planes.log_dir, {**env, "WB_OQL_FASTPATH": "0"}, name="quart")
        c = httpx.Client(timeout=30)
        admin = {"Authorization": f"Bearer {planes.admin_key()}"}
        assert c.post(planes.control_url + "/api/tenants", json={"name": "fp"}, headers=admin).status_code == 201
        keys = {}
        for scope in ("tenant", "operator"):
            body = {"scope": scope}
            url = planes.control_url + ("/api/tenants/fp/keys")
            r = c.post(url, json=body, headers=admin)
            assert r.status_code == 201, r.text
            keys[scope] = r.json()
        yield planes, slow, c, admin, keys
        c.close()
    finally:
        if slow is not None:
            slow.stop()
        planes.stop()


def test_fast_path_answers_exactly_as_the_quart_route(pair):
    planes, slow, c, admin, keys = pair
    tenant = {"Authorization": f"Bearer {keys['tenant']['key']}"}
    operator = {"Authorization": f"Bearer {keys['operator']['key']}"}
    opts = lambda o: "?options=" + quote(o)  # noqa: E731
    cases = [
        ("render", "POST", "/api/oql/render", tenant, DOC.encode()),
        ("render by an admin key", "POST", "/api/oql/render", admin, DOC.encode()),
        ("render by an operator key", "POST", "/api/oql/render", operator, DOC.encode()),
        ("empty body", "POST", "/api/oql/render", tenant, b""),
        ("unicode", "POST", "/api/oql/render", tenant, "* Ünïcødé ☃ 𝄞\n".encode()),
        ("metadata JSON", "POST", "/api/oql/render" + opts('{"metadata":true}'), tenant, DOC.encode()),
        ("options", "POST", "/api/oql/render" + opts('{"num":false,"tags":false}'), tenant, DOC.encode()),
        ("empty options", "POST", "/api/oql/render?options=", tenant, DOC.encode()),
        ("plus in query", "POST", "/api/oql/render?options={+}", tenant, DOC.encode()),
        ("first options wins", "POST", "/api/oql/render" + opts('{"metadata":true}') + "&options=nope", tenant,
         DOC.encode()),
        ("raw bytes in query", "POST", "/api/oql/render?options=%ff%fe", tenant, DOC.encode()),
        ("unknown option", "POST", "/api/oql/render" + opts('{"bogus":1}'), tenant, DOC.encode()),
        ("options not JSON", "POST", "/api/oql/render" + opts("{nope"), tenant, DOC.encode()),
        ("options not an object", "POST", "/api/oql/render" + opts("[1]"), tenant, DOC.encode()),
        ("no key", "POST", "/api/oql/render", {}, DOC.encode()),
        ("unknown key", "POST", "/api/oql/render", {"Authorization": "Bearer wbk_" + "x" * 43}, DOC.encode()),
        ("not bearer", "POST", "/api/oql/render", {"Authorization": "Basic " + keys["tenant"]["key"]}, DOC.encode()),
        ("key too long", "POST", "/api/oql/render", {"Authorization": "Bearer wbk_" + "y" * 300}, DOC.encode()),
        ("not UTF-8", "POST", "/api/oql/render", tenant, b"* caf\xe9\n"),
        ("NUL", "POST", "/api/oql/render", tenant, b"* a\x00b\n"),
        ("query", "POST", "/api/oql/query", tenant, DOC.encode()),
        ("tangle", "POST", "/api/oql/tangle", tenant, b"#+begin_src sh :tangle a.sh\necho hi\n#+end_src\n"),
        ("lint", "POST", "/api/oql/lint", tenant, DOC.encode()),
        ("parse", "POST", "/api/oql/parse", tenant, DOC.encode()),
        ("parse without key", "POST", "/api/oql/parse", {}, DOC.encode()),
        ("parse not UTF-8", "POST", "/api/oql/parse", tenant, b"* caf\xe9\n"),
        ("lint without key", "POST", "/api/oql/lint", {}, DOC.encode()),
        ("check_upgrade (Quart's)", "POST", "/api/oql/check_upgrade", {**tenant, "Content-Type": "application/json"},
         b'{"old": "* a\\n", "new": "* b\\n"}'),
        ("GET", "GET", "/api/oql/render", tenant, None),
        ("trailing slash", "POST", "/api/oql/render/", tenant, DOC.encode()),
        ("over the body limit", "POST", "/api/oql/render", tenant, b"* x\n" * (17 * 1024)),
    ]
    for what, method, path, headers, body in cases:
        fast = c.request(method, planes.control_url + path, headers=headers, content=body)
        ref = c.request(method, slow.url + path, headers=headers, content=body)
        _same(fast, ref, what)
        if what == "render":
            assert fast.status_code == 200 and "<h2" in fast.text and fast.headers["cache-control"] == "no-store"
        if what == "metadata JSON":
            assert fast.headers["content-type"] == "application/json" and "html" in fast.json()
        if what in ("unknown option", "options not JSON"):
            assert fast.status_code == 400 and fast.json()["error"]["code"] == "bad_request"
        if what == "no key":
            assert fast.status_code == 401 and fast.headers["www-authenticate"] == 'Bearer realm="workbooks"'
        if what == "over the body limit":
            assert fast.status_code == 413 and fast.json()["error"]["code"] == "payload_too_large"


def test_hostile_queries_headers_and_bodies_get_the_same_answers(pair):
    """Seeded random queries, Authorization values and bodies: byte-for-byte the Quart route's answers."""
    import random

    planes, slow, c, admin, keys = pair
    rnd = random.Random(1906)
    key = keys["tenant"]["key"]
    queries = ["", "?", "?options", "?options=", "?options=%", "?options=%zz", "?options=%7B", "?options=null",
               "?options=%7B%22metadata%22%3A1%7D", "?options=%7B%22metadata%22%3Atrue%7D%3B", "?Options=%7B%7D",
               "?options[]=1", "?a=1&&options=%7B%7D", "?options=%7B%22raw_html%22%3Atrue%7D",
               "?options=" + "%5B" * 5000, "?options=%7B%22base_url%22%3A%22javascript%3Aalert(1)%22%7D"]
    auths = [None, "", "Bearer", "Bearer ", "bearer " + key, "BEARER  " + key + " ", "Bearer " + key + "x",
             "Bearer " + key[:-1], "Token " + key, "Bearer wbk_", "Bearer " + key + "\t", "Bearer " + "é" * 10]
    bodies = [DOC.encode(), b"", b"\xef\xbb\xbf* bom\n", b"* a\r\n** b\r\n", "* \ud7ff\n".encode(),
              b"\xed\xa0\x80", b"#+TITLE: \x00", b"* x\n" * 2000]
    for _ in range(60):
        q, a, b = rnd.choice(queries), rnd.choice(auths), rnd.choice(bodies)
        route = rnd.choice(["render"] * 4 + ["query", "lint", "tangle"])
        headers = {} if a is None else {"Authorization": a}
        what = f"{route}{q[:60]} auth={a!r:.30} body={b[:20]!r}"
        try:
            fast = c.post(planes.control_url + f"/api/oql/{route}{q}", headers=headers, content=b)
        except (httpx.LocalProtocolError, UnicodeEncodeError):
            continue  # the client cannot send this header at all
        ref = c.post(slow.url + f"/api/oql/{route}{q}", headers=headers, content=b)
        _same(fast, ref, what)
    # a chunked body (read whole by the body guard before either answers)
    h = {"Authorization": f"Bearer {key}"}
    fast = c.post(planes.control_url + "/api/oql/render", headers=h, content=iter([b"* chunk", b"ed\n", b"text\n"]))
    ref = c.post(slow.url + "/api/oql/render", headers=h, content=iter([b"* chunk", b"ed\n", b"text\n"]))
    _same(fast, ref, "chunked")
    assert fast.status_code == 200 and "chunked" in fast.text


def test_access_lines_name_the_key_and_tenant(pair):
    planes, slow, c, admin, keys = pair
    tenant = {"Authorization": f"Bearer {keys['tenant']['key']}"}
    marker = f"/api/oql/render?probe={time.time_ns()}"
    assert c.post(planes.control_url + marker, headers=tenant, content=DOC.encode()).status_code == 200
    assert c.post(planes.control_url + marker, content=DOC.encode()).status_code == 401
    import json

    def lines():
        out = []
        for f in planes.log_dir.glob("web_control-*.log"):
            for line in f.read_text().splitlines():
                rec = json.loads(line)
                if rec.get("event") == "access" and rec.get("query") == marker.split("?", 1)[1]:
                    out.append(rec)
        return out

    deadline = time.time() + 5
    while len(lines()) < 2 and time.time() < deadline:
        time.sleep(0.05)
    got = sorted(lines(), key=lambda r: r["status"])
    assert [r["status"] for r in got] == [200, 401], got
    ok, denied = got
    assert ok["key_id"] == keys["tenant"]["id"] and ok["tenant"] == "fp" and ok["bytes"] > 100
    assert ok["path"] == "/api/oql/render" and ok["method"] == "POST"
    assert denied["key_id"] is None and denied["tenant"] is None
    text = "".join(f.read_text() for f in planes.log_dir.glob("*.log"))
    assert keys["tenant"]["key"] not in text


def test_a_revoked_key_is_refused_within_a_second(pair):
    planes, slow, c, admin, keys = pair
    r = c.post(planes.control_url + "/api/tenants/fp/keys", json={"scope": "tenant"}, headers=admin)
    key, kid = r.json()["key"], r.json()["id"]
    h = {"Authorization": f"Bearer {key}"}
    for _ in range(5):  # the fast path has it cached now
        assert c.post(planes.control_url + "/api/oql/lint", headers=h, content=b"* a\n").status_code == 200
    # revoked through the other process: this one has no word of it but the index
    assert c.delete(slow.url + f"/api/keys/{kid}", headers=admin).status_code == 200
    t0 = time.monotonic()
    statuses = []
    while True:
        statuses.append(c.post(planes.control_url + "/api/oql/lint", headers=h, content=b"* a\n").status_code)
        if statuses[-1] == 401 or time.monotonic() - t0 > 3:
            break
        time.sleep(0.02)
    took = time.monotonic() - t0
    assert statuses[-1] == 401 and took < 1.0, (statuses, took)
    assert set(statuses) <= {200, 401}
    # and it stays refused
    assert c.post(planes.control_url + "/api/oql/render", headers=h, content=b"* a\n").status_code == 401
    # revoked through the process that serves it: refused at once
    r = c.post(planes.control_url + "/api/tenants/fp/keys", json={"scope": "tenant"}, headers=admin)
    key2, kid2 = r.json()["key"], r.json()["id"]
    h2 = {"Authorization": f"Bearer {key2}"}
    assert c.post(planes.control_url + "/api/oql/lint", headers=h2, content=b"* a\n").status_code == 200
    assert c.delete(planes.control_url + f"/api/keys/{kid2}", headers=admin).status_code == 200
    assert c.post(planes.control_url + "/api/oql/lint", headers=h2, content=b"* a\n").status_code == 401


@pytest.fixture
def busy_pool(tmp_path):
    """One worker, no queue: while it spins on a looping document every other call is `overloaded`."""
    import wasmtime
    from pool_harness import BarePool
    from test_web_badinput import DIAG_WAT

    wasm = tmp_path / "diag.wasm"
    wasm.write_bytes(wasmtime.wat2wasm(DIAG_WAT))
    pool = BarePool(tmp_path / "pool", workers=1, broker_args=["--max-queue", "0"],
                    env={"WB_KERNEL_WASM": str(wasm), "WB_CACHE": str(tmp_path / "cache"), "WB_POOL_SPARES": "0"})
    try:
        yield pool
    finally:
        pool.stop()


def test_overloaded_pool_is_a_503_with_retry_after_as_before(busy_pool, tmp_path):
    env = {"WB_DEPLOY_DEADLINE_MS": "4000"}
    with Planes(tmp_path / "d", pool_endpoint=busy_pool.client_endpoint, env=env) as planes:
        slow = ControlProc(tmp_path / "d", planes.log_dir, {**env, "WB_OQL_FASTPATH": "0"},
                           pool=busy_pool.client_endpoint, name="quart")
        try:
            c = httpx.Client(timeout=30)
            h = {"Authorization": f"Bearer {planes.admin_key()}"}
            hog = threading.Thread(target=lambda: c.post(planes.control_url + "/api/oql/render",
                                                         content=b"LOOP forever\n", headers=h))
            hog.start()
            try:
                time.sleep(0.5)  # the one worker is spinning now
                for path in ("/api/oql/render", "/api/oql/lint"):
                    fast = c.post(planes.control_url + path, content=b"* x\n", headers=h)
                    ref = c.post(slow.url + path, content=b"* x\n", headers=h)
                    _same(fast, ref, "overloaded " + path)
                    assert fast.status_code == 503 and fast.headers["retry-after"] == "1"
                    assert fast.json()["error"]["code"] == "overloaded"
            finally:
                hog.join()
            c.close()
        finally:
            slow.stop()
    import json

    warned = [json.loads(x) for f in planes.log_dir.glob("web_control-*.log") for x in f.read_text().splitlines()]
    warned = [r for r in warned if r.get("event") == "request_failed" and r.get("code") == "overloaded"]
    first = [r for r in warned if "status" in r]  # (a "repeats" line after the storm names no request)
    assert first and all(r.get("actor_key_id", "").startswith("k_") for r in first), warned


def test_control_cpu_per_render_stays_low(tmp_path):
    """Coarse guard: the control process's own CPU (utime+stime) per render over 2,000 renders of a
    small document through the pool, one keep-alive connection at a time. The bound is generous:
    CPU time does not stretch when the box is busy, as wall time does."""
    from pool_harness import BarePool

    pool = BarePool(tmp_path / "pool", workers=1, env={"WB_POOL_SPARES": "0"})
    try:
        with Planes(tmp_path / "d", pool_endpoint=pool.client_endpoint, env={"WB_ACCESS_LOG": "1"}) as planes:
            pid = planes.procs[0].pid
            key = planes.admin_key()
            body = DOC.encode()
            req = (f"POST /api/oql/render HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            import socket

            conn: list = []

            def one(i: int) -> None:
                if i % 500 == 0:  # hypercorn closes a keep-alive connection after 1,000 requests
                    for old in conn:
                        old.close()
                    conn[:] = [socket.create_connection(("127.0.0.1", planes.control_port), timeout=30)]
                s = conn[0]
                s.sendall(req)
                buf = b""
                while True:
                    chunk = s.recv(65536)
                    assert chunk, f"render {i}: the connection closed\n" + planes.logs()[-3000:]
                    buf += chunk
                    head, sep, rest = buf.partition(b"\r\n\r\n")
                    if sep:
                        n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                        if len(rest) >= n:
                            assert head.startswith(b"HTTP/1.1 200"), head
                            return

            for i in range(50):  # warm: imports, caches
                one(i)
            c0 = cpu_seconds(pid)
            n = 2000
            for i in range(n):
                one(i)
            per = (cpu_seconds(pid) - c0) / n
            for old in conn:
                old.close()
    finally:
        pool.stop()
    # measured on a busy 2-core box, one connection: ~1.0-1.2 ms (through Quart 1.3-1.4 ms)
    assert per < 0.002, f"{per * 1e6:.0f} us of control-plane CPU per render"
