"""A step's capabilities (workbooks.workflow.caps): exactly the declared ones exist. http through the
agent's SSRF guard with secrets at egress (a real HTTP server on 127.0.0.1), kv that survives runs
and stays inside its tenant and workflow, log lines; for JS (`host.*`) and for wasm (`wb` imports)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import wasmtime

from workbooks.agent.secrets import Secrets
from workbooks.workflow.build import Built
from workbooks.workflow.kv import KvStore
from workbooks.workflow.step import run_step
from workbooks.workflow.types import Limits, StepContext

SECRET = "sk-live-5f4e3d2c1b"


class _Handler(BaseHTTPRequestHandler):
    seen: list = []

    def log_message(self, *a):
        pass

    def _reply(self, status: int, body: bytes, ctype="application/json", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.seen.append(("GET", self.path, dict(self.headers), b""))
        if self.path.startswith("/feed"):
            self._reply(200, json.dumps({"items": [{"title": "alpha", "n": 2}, {"title": "beta", "n": 5}]}).encode())
        elif self.path == "/moved":
            self._reply(302, b"", extra=[("Location", "/feed")])
        elif self.path == "/slow":
            time.sleep(3)
            self._reply(200, b"late", "text/plain")
        elif self.path == "/echo-auth":
            self._reply(200, ("auth=" + self.headers.get("Authorization", "")).encode(), "text/plain")
        else:
            self._reply(404, b"nope", "text/plain")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.seen.append(("POST", self.path, dict(self.headers), body))
        self._reply(201, b"got " + body, "text/plain")


@pytest.fixture()
def server():
    _Handler.seen = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.block_on_close = False
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", _Handler.seen
    finally:
        srv.shutdown()
        srv.server_close()
        th.join(5)


def make_ctx(tmp_path: Path, name="s", **kw) -> StepContext:
    return StepContext(tenant=kw.pop("tenant", "acme"), workflow=kw.pop("workflow", "digest"), run_id="wf-1",
                       step_dir=tmp_path / "steps" / name, data_dir=tmp_path / "data",
                       limits=kw.pop("limits", Limits(timeout_s=15, memory_mb=128)), **kw)


def js(src: str) -> Built:
    return Built(lang="js", key="k", wasm=None, js=src, kind="js", cached=True, ms=0.0)


def wat(tmp_path: Path, text: str) -> Built:
    p = tmp_path / f"m{abs(hash(text))}.wasm"
    p.write_bytes(wasmtime.wat2wasm(text))
    return Built(lang="wat", key="k", wasm=p, js=None, kind="command", cached=False, ms=0.0)


def test_http_get_and_post_to_an_allowed_local_server(server, tmp_path):
    base, seen = server
    ctx = make_ctx(tmp_path, allow_hosts=frozenset({"127.0.0.1"}))
    src = f"""export async function run() {{
      const feed = JSON.parse(host.http.get('{base}/feed?x=1'));
      const moved = JSON.parse(host.http.get('{base}/moved'));
      const posted = host.http.post('{base}/sink', {{count: feed.items.length}});
      return {{titles: feed.items.map((i) => i.title), same: moved.items.length, posted}};
    }}"""
    r = run_step(js(src), b"", ctx, ("http",))
    assert r.ok, r.error
    assert json.loads(r.output) == {"titles": ["alpha", "beta"], "same": 2, "posted": 'got {"count":2}'}
    methods = [(m, p) for m, p, _h, _b in seen]
    assert methods == [("GET", "/feed?x=1"), ("GET", "/moved"), ("GET", "/feed"), ("POST", "/sink")]
    assert seen[-1][2]["Content-Type"] == "application/json"


def test_http_error_status_is_an_exception_the_step_can_catch(server, tmp_path):
    base, _ = server
    ctx = make_ctx(tmp_path, allow_hosts=frozenset({"127.0.0.1"}))
    src = f"export function run() {{ try {{ host.http.get('{base}/missing'); return 'no'; }} catch (e) {{ return e.message; }} }}"
    r = run_step(js(src), b"", ctx, ("http",))
    assert r.ok and r.output.decode().endswith("HTTP 404")


def test_http_secrets_resolved_at_egress_and_redacted_on_the_way_back(server, tmp_path):
    base, seen = server
    ctx = make_ctx(tmp_path, allow_hosts=frozenset({"127.0.0.1"}), secrets=Secrets({"FEED_KEY": SECRET}))
    src = f"""export function run() {{
      const echoed = host.http.get('{base}/echo-auth', {{Authorization: 'Bearer {{{{secret:FEED_KEY}}}}'}});
      console.log('server said ' + echoed);
      return echoed;
    }}"""
    r = run_step(js(src), b"", ctx, ("http",))
    assert r.ok, r.error
    assert seen[0][2]["Authorization"] == f"Bearer {SECRET}"  # the real value went out
    assert r.output == b"auth=Bearer [secret:FEED_KEY]"  # and never came back to the step in clear
    assert r.logs == ["server said auth=Bearer [secret:FEED_KEY]"]
    # a POST body is resolved at egress too; the echo comes back redacted
    r = run_step(js(f"export function run() {{ return host.http.post('{base}/sink', 'key={{{{secret:FEED_KEY}}}}'); }}"), b"", ctx, ("http",))
    assert seen[-1][3] == f"key={SECRET}".encode()
    assert r.ok and r.output == b"got key=[secret:FEED_KEY]"


def test_a_slow_server_cannot_keep_a_step_past_its_deadline(server, tmp_path):
    base, _ = server
    ctx = make_ctx(tmp_path, allow_hosts=frozenset({"127.0.0.1"}), limits=Limits(timeout_s=1, memory_mb=64))
    for src in (f"export function run() {{ return host.http.get('{base}/slow'); }}",
                f"export function run() {{ try {{ host.http.get('{base}/slow'); }} catch (e) {{}} for (;;) {{}} }}"):
        t = time.monotonic()
        r = run_step(js(src), b"", ctx, ("http",))
        took = time.monotonic() - t
        assert r.code == "timeout", (r.code, r.error)
        assert took < 2.5, took


def test_http_private_addresses_are_blocked(server, tmp_path):
    base, seen = server
    ctx = make_ctx(tmp_path)  # 127.0.0.1 is not allow-listed here
    src = """export function run(urls) {
      return urls.map((u) => { try { host.http.get(u); return 'fetched'; } catch (e) { return e.message; } });
    }"""
    urls = [f"{base}/feed", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "http://[::1]:9/",
            "file:///etc/passwd"]
    r = run_step(js(src), json.dumps(urls).encode(), ctx, ("http",))
    assert r.ok, r.error
    got = json.loads(r.output)
    assert all("blocked" in g for g in got), got
    assert seen == []  # nothing reached the local server


def test_http_not_declared_is_absent(server, tmp_path):
    base, seen = server
    ctx = make_ctx(tmp_path, allow_hosts=frozenset({"127.0.0.1"}))
    r = run_step(js(f"export function run() {{ return host.http.get('{base}/feed'); }}"), b"", ctx, ("kv",))
    assert r.code == "error" and "capability http not declared (:uses)" in r.error
    assert seen == []


WAT_HTTP = r"""
(module
  (import "wb" "http_get" (func $get (param i32 i32) (result i32)))
  (import "wb" "result" (func $result (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start") (local $n i32)
    ;; the URL is the step's input
    (i32.store (i32.const 0) (i32.const 256)) (i32.store (i32.const 4) (i32.const 1024))
    (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (local.set $n (call $get (i32.const 256) (i32.load (i32.const 8))))
    ;; the body (or the error message when $n < 0) goes to stdout
    (local.set $n (call $result (i32.const 4096) (i32.const 60000)))
    (i32.store (i32.const 0) (i32.const 4096)) (i32.store (i32.const 4) (local.get $n))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def test_wasm_http_import_abi(server, tmp_path):
    base, seen = server
    ctx = make_ctx(tmp_path, allow_hosts=frozenset({"127.0.0.1"}))
    r = run_step(wat(tmp_path, WAT_HTTP), f"{base}/feed".encode(), ctx, ("http",))
    assert r.ok, r.error
    assert json.loads(r.output)["items"][1] == {"title": "beta", "n": 5}
    r = run_step(wat(tmp_path, WAT_HTTP), b"http://10.1.2.3/", ctx, ("http",))
    assert r.ok and b"blocked" in r.output
    # the same module without `:uses http` does not start
    r = run_step(wat(tmp_path, WAT_HTTP), f"{base}/feed".encode(), ctx, ())
    assert r.code == "capability" and "capability http not declared (:uses)" in r.error and "wb.http_get" in r.error
    assert len(seen) == 1


def test_unknown_imports_and_capability_names_are_refused(tmp_path):
    ctx = make_ctx(tmp_path)
    r = run_step(wat(tmp_path, '(module (import "env" "socket" (func)) (func (export "_start")))'), b"", ctx, ())
    assert r.code == "capability" and "env.socket" in r.error
    r = run_step(js("export function run() { return 1 }"), b"", ctx, ("net",))
    assert r.code == "capability" and "unknown capability net" in r.error


def test_kv_persists_across_runs_and_stays_in_its_workflow(tmp_path):
    writer = js("""export function run(x) {
      const before = host.kv.get('count');
      host.kv.set('count', String(Number(before || 0) + x.add));
      host.kv.set('gone', 'soon');
      return {before, deleted: host.kv.del('gone'), again: host.kv.del('gone'), after: host.kv.get('count')};
    }""")
    r1 = run_step(writer, b'{"add": 2}', make_ctx(tmp_path, "a"), ("kv",))
    assert r1.ok, r1.error
    assert json.loads(r1.output) == {"before": None, "deleted": True, "again": False, "after": "2"}
    KvStore.close_all()  # the next run reads what is on disk
    r2 = run_step(writer, b'{"add": 3}', make_ctx(tmp_path, "b"), ("kv",))
    assert json.loads(r2.output)["before"] == "2" and json.loads(r2.output)["after"] == "5"
    reader = js("export function run() { return String(host.kv.get('count')); }")
    assert run_step(reader, b"", make_ctx(tmp_path, "c", tenant="other"), ("kv",)).output == b"null"
    assert run_step(reader, b"", make_ctx(tmp_path, "d", workflow="other"), ("kv",)).output == b"null"
    assert run_step(reader, b"", make_ctx(tmp_path, "e"), ("kv",)).output == b"5"
    assert (tmp_path / "data" / ".workbooks" / "kv.db").is_file()


def test_the_answer_channel_is_read_only_and_holds_only_this_steps_answers(tmp_path):
    src = """import * as os from 'qjs:os';
      export function run() {
        host.kv.set('a', 'b'); host.kv.get('a');
        const [names] = os.readdir('/.wb-host');
        return {names: names.filter((n) => n[0] !== '.'), write: std.open('/.wb-host/x', 'w') === null,
                up: std.open('/.wb-host/../../etc/passwd', 'r') === null};
      }"""
    r = run_step(js(src), b"", make_ctx(tmp_path), ("kv",))
    assert r.ok, r.error
    assert json.loads(r.output) == {"names": ["r2"], "write": True, "up": True}


def test_kv_bad_use_is_a_clear_error_and_undeclared_is_absent(tmp_path):
    ctx = make_ctx(tmp_path)
    catch = lambda expr: js(f"export function run() {{ try {{ {expr}; return 'ok'; }} catch (e) {{ return e.message; }} }}")
    assert b"must be a string" in run_step(catch("host.kv.set('k', {a: 1})"), b"", ctx, ("kv",)).output
    assert b"1 to 512 bytes" in run_step(catch("host.kv.get('')"), b"", ctx, ("kv",)).output
    assert b"at most 1048576 bytes" in run_step(catch("host.kv.set('k', 'v'.repeat(1048577))"), b"", ctx, ("kv",)).output
    assert run_step(catch("host.kv.get('k')"), b"", ctx, ("log",)).output == b"capability kv not declared (:uses)"


WAT_KV_LOG = r"""
(module
  (import "wb" "kv_get" (func $get (param i32 i32) (result i32)))
  (import "wb" "kv_set" (func $set (param i32 i32 i32 i32) (result i32)))
  (import "wb" "result" (func $result (param i32 i32) (result i32)))
  (import "wb" "log" (func $log (param i32 i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "visits")
  (data (i32.const 200) "wasm was here")
  (data (i32.const 300) "first")
  (func (export "_start") (local $n i32)
    (call $log (i32.const 200) (i32.const 13))
    (local.set $n (call $get (i32.const 100) (i32.const 6)))
    (if (i32.lt_s (local.get $n) (i32.const 0))
      (then (drop (call $set (i32.const 100) (i32.const 6) (i32.const 300) (i32.const 5)))
            (local.set $n (i32.const 0)))
      (else (local.set $n (call $result (i32.const 400) (i32.const 100)))))
    (i32.store (i32.const 0) (i32.const 400)) (i32.store (i32.const 4) (local.get $n))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def test_wasm_kv_and_log_imports(tmp_path):
    lines = []
    ctx = make_ctx(tmp_path, log=lines.append)
    m = wat(tmp_path, WAT_KV_LOG)
    r1 = run_step(m, b"", ctx, ("kv", "log"))
    assert r1.ok, r1.error
    assert r1.output == b"" and r1.logs == ["wasm was here"]
    r2 = run_step(m, b"", ctx, ("kv", "log"))
    assert r2.output == b"first"
    assert lines == ["wasm was here", "wasm was here"]
    r3 = run_step(m, b"", ctx, ("kv",))
    assert r3.code == "capability" and "capability log not declared" in r3.error


def test_log_lines_go_to_the_sink_and_the_result(tmp_path):
    lines = []
    ctx = make_ctx(tmp_path, log=lines.append, secrets=Secrets({"K": SECRET}))
    src = f"export function run() {{ host.log('step 1'); host.log({{n: 2}}); host.log('key {SECRET}'); return 'done'; }}"
    r = run_step(js(src), b"", ctx, ("log",))
    assert r.ok, r.error
    assert r.logs == ["step 1", '{"n":2}', "key [secret:K]"] and lines == r.logs
    r = run_step(js("export function run() { host.log('x'); }"), b"", make_ctx(tmp_path), ())
    assert r.code == "error" and "capability log not declared (:uses)" in r.error


def test_parallel_steps_keep_their_own_io_logs_and_kv(tmp_path):
    # eight steps at once in threads (as LocalExecutor runs a wave): JS and wasm, each with its own
    # input, log lines and kv namespace; nothing crosses between them
    from concurrent.futures import ThreadPoolExecutor

    jsm = js("export function run(x) { host.log('js ' + x.i); host.kv.set('me', String(x.i)); return {i: x.i, back: host.kv.get('me')}; }")
    wasm = wat(tmp_path, WAT_KV_LOG)

    def one(i):
        ctx = make_ctx(tmp_path, f"p{i}", workflow=f"wf{i}")
        if i % 2:
            return i, run_step(wasm, b"", ctx, ("kv", "log")), run_step(wasm, b"", ctx, ("kv", "log"))
        return i, run_step(jsm, json.dumps({"i": i}).encode(), ctx, ("kv", "log")), None

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(16)))
    for i, r, again in results:
        assert r.ok, r.error
        if i % 2:
            assert r.logs == ["wasm was here"] and again.output == b"first"
        else:
            assert json.loads(r.output) == {"i": i, "back": str(i)} and r.logs == [f"js {i}"]


def test_kv_file_is_private_and_a_forked_child_uses_its_own_connection(tmp_path):
    import os

    ctx = make_ctx(tmp_path)
    assert run_step(js("export function run() { host.kv.set('k', 'parent'); }"), b"", ctx, ("kv",)).ok
    db = tmp_path / "data" / ".workbooks" / "kv.db"
    assert db.stat().st_mode & 0o077 == 0
    pid = os.fork()
    if pid == 0:  # the child writes through a connection of its own
        try:
            store = KvStore.for_data(tmp_path / "data")
            store.set("acme", "digest", "k", store.get("acme", "digest", "k") + b"+child")
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    r = run_step(js("export function run() { return host.kv.get('k'); }"), b"", ctx, ("kv",))
    assert r.output == b"parent+child"


def test_hostile_guests_cannot_break_the_host_side(tmp_path):
    ctx = make_ctx(tmp_path)
    # stderr noise that looks almost like a host call is just stderr; a malformed call ends the step
    noise = "std.err.puts('\\x00\\x00 plain \\x00WB\\n'); print('fine');"
    r = run_step(js(noise), b"", ctx, ("log",))
    assert r.ok and r.output == b"fine\n"
    r = run_step(js("std.err.puts('\\x00WBH{not json\\n'); print('x');"), b"", ctx, ("log",))
    assert r.code == "error" and "host channel" in r.error
    # a forged call for an undeclared capability is refused like a real one
    forged = "std.err.puts('\\x00WBH' + JSON.stringify({n: 1, cap: 'kv', op: 'set', args: ['k', 'v']}) + '\\n'); print('done');"
    assert run_step(js(forged), b"", ctx, ("log",)).ok
    assert KvStore.for_data(tmp_path / "data").get("acme", "digest", "k") is None
    # wasm pointers out of bounds are a failed call, not a host crash
    oob = r"""
    (module
      (import "wb" "kv_get" (func $get (param i32 i32) (result i32)))
      (import "wb" "result" (func $result (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start") (local $n i32)
        (local.set $n (call $get (i32.const 65530) (i32.const 100)))
        (i32.store8 (i32.const 200) (i32.add (i32.const 48) (i32.sub (i32.const 0) (local.get $n))))
        (local.set $n (call $result (i32.const 201) (i32.const 100)))
        (i32.store (i32.const 0) (i32.const 200)) (i32.store (i32.const 4) (i32.add (local.get $n) (i32.const 1)))
        (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
    """
    r = run_step(wat(tmp_path, oob), b"", ctx, ("kv",))
    assert r.ok, r.error
    assert r.output == b"2pointer out of bounds"
