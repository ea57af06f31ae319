"""Bad input gets a clear JSON error and changes nothing: bad UTF-8, huge bodies, malformed JSON,
kernel diagnostics (422), a kernel that hangs or traps mid-deploy."""

from __future__ import annotations

import socket
import subprocess

import pytest

# A test kernel (same ABI as oql.wasm): `validate` reports an error for documents starting with
# "BAD!", `render`/`render_with` spin forever on "LOOP" and trap on "TRAP"; otherwise they answer
# "[]", "<p>ok</p>" and {"html": "<p>ok</p>", "meta": {}}. Only the web tests use it.
DIAG_WAT = r"""
(module
  (memory (export "memory") 2)
  (data (i32.const 16) "[]<p>ok</p>[{\"level\":\"error\",\"scope\":\"doc\",\"message\":\"bad document\"}]{\"html\":\"<p>ok</p>\",\"meta\":{}}")
  (func (export "wb_reserve") (param $n i32) (result i32)
    (local $need i32)
    (local.set $need (i32.add (i32.div_u (local.get $n) (i32.const 65536)) (i32.const 2)))
    (if (i32.gt_u (local.get $need) (memory.size))
      (then (drop (memory.grow (i32.sub (local.get $need) (memory.size))))))
    (i32.const 65536))
  (func (export "wb_oom") (result i32) (i32.const 0))
  (func $word (param $len i32) (result i32)
    (if (result i32) (i32.ge_u (local.get $len) (i32.const 4))
      (then (i32.load (i32.const 65536))) (else (i32.const 0))))
  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32)) (i64.extend_i32_u (local.get $len))))
  (func (export "validate") (param $len i32) (result i64)
    (if (result i64) (i32.eq (call $word (local.get $len)) (i32.const 0x21444142))
      (then (call $pack (i32.const 27) (i32.const 58)))
      (else (call $pack (i32.const 16) (i32.const 2)))))
  (func (export "render") (param $len i32) (result i64)
    (if (i32.eq (call $word (local.get $len)) (i32.const 0x504f4f4c)) (then (loop $spin (br $spin))))
    (if (i32.eq (call $word (local.get $len)) (i32.const 0x50415254)) (then (unreachable)))
    (call $pack (i32.const 18) (i32.const 9)))
  (func (export "render_with") (param $len i32) (param $olen i32) (result i64)
    (if (i32.eq (call $word (local.get $len)) (i32.const 0x504f4f4c)) (then (loop $spin (br $spin))))
    (if (i32.eq (call $word (local.get $len)) (i32.const 0x50415254)) (then (unreachable)))
    (call $pack (i32.const 85) (i32.const 30)))
  (func $empty (param i32) (result i64) (call $pack (i32.const 16) (i32.const 2)))
  (func $empty2 (param i32 i32) (result i64) (call $pack (i32.const 16) (i32.const 2)))
  (export "parse_headlines" (func $empty))
  (export "tangle_plan" (func $empty))
  (export "lint" (func $empty))
  (export "check_upgrade" (func $empty2)))
"""


def _git(repo, *args) -> str:
    return subprocess.run(["git", "-c", "safe.directory=*", "-C", str(repo), *args], capture_output=True,
                          check=True).stdout.decode()


def _snapshot(web, tenant, key) -> tuple:
    h = web.auth(key)
    wbs = web.http.get(web.control + "/api/workbooks", headers=h).json()
    doc = web.http.get(web.control + "/api/workbooks/keep", headers=h).json()
    return wbs, doc["source"], doc["sha"], _git(web.data_dir / tenant, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def victim(web):
    tenant, key = web.new_tenant("bad")
    assert web.deploy(key, "keep", "#+TITLE: Keep\n* stays as it is\n").status_code == 200
    return tenant, key


def test_invalid_utf8_is_400_and_changes_nothing(web, victim):
    tenant, key = victim
    before = _snapshot(web, tenant, key)
    for body in (b"* ok\n\xff\xfe bad", b"\xc3\x28", b"* \xed\xa0\x80 surrogate"):
        r = web.deploy(key, "keep", body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "bad_request" and "UTF-8" in r.json()["error"]["message"]
        r = web.http.post(web.control + "/api/oql/query", content=body, headers=web.auth(key))
        assert r.status_code == 400
    r = web.deploy(key, "keep", b"* nul \x00 byte\n")
    assert r.status_code == 400
    assert _snapshot(web, tenant, key) == before


def test_20mb_body_is_413_and_changes_nothing(web, victim):
    tenant, key = victim
    before = _snapshot(web, tenant, key)
    big = b"* x\n" + b"a" * (20 * 1024 * 1024)
    r = web.deploy(key, "keep", big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    # chunked, without a Content-Length
    r = web.http.put(web.control + "/api/workbooks/keep", content=iter([big[:1 << 20]] * 20), headers=web.auth(key))
    assert r.status_code == 413
    # the server is fine afterwards
    assert web.http.get(web.control + "/healthz").status_code == 200
    assert _snapshot(web, tenant, key) == before


def test_malformed_json_is_400(web, victim):
    tenant, key = victim
    h = {**web.auth(key), "Content-Type": "application/json"}
    for body in (b"{", b"{'a': 1}", b"[]", b"\xff", b"null", b'{"value": 5}', b'{"value": "x", "secret": "yes"}',
                 b"[" * 100_000, b'{"value": "\\ud800"}', b'{"value": "x", "secret": NaN}',
                 b'{"value": ' + b"7" * 100_000 + b"}", b'{"value": "x", "n": -Infinity}', b'{"value": 1e400}'):
        r = web.http.put(web.control + "/api/vars/K", content=body, headers=h)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["code"] in ("bad_json", "bad_field", "missing_field")
    assert web.http.get(web.control + "/api/vars/K", headers=h).status_code == 404
    r = web.http.post(web.control + "/api/tenants", content=b'{"name": ', headers={**web.admin(), "Content-Type": "application/json"})
    assert r.status_code == 400
    r = web.http.put(web.control + "/api/domains/x.example.com", content=b"nope", headers=h)
    assert r.status_code == 400


def test_bad_query_and_headers(web, victim):
    tenant, key = victim
    h = web.auth(key)
    for q in ("0", "-1", "abc", "99999999999999999999"):
        r = web.http.get(web.control + f"/api/git/log?limit={q}", headers=h)
        assert r.status_code == 400
    # a huge header block is refused by the server, which keeps serving
    s = socket.create_connection(("127.0.0.1", web.planes.control_port))
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
    s.settimeout(10)
    try:
        data = s.recv(200)
    except (ConnectionResetError, BrokenPipeError):
        data = b""
    s.close()
    assert data == b"" or int(data.split(b" ", 2)[1]) in (400, 431)
    assert web.http.get(web.control + "/healthz").status_code == 200


@pytest.fixture(scope="module")
def hostile_planes(tmp_path_factory):
    import httpx
    import wasmtime

    from workbooks.web_control.launch import Planes

    d = tmp_path_factory.mktemp("hostile-web")
    wasm = d.parent / (d.name + "-diag.wasm")
    wasm.write_bytes(wasmtime.wat2wasm(DIAG_WAT))
    env = {"WB_KERNEL_WASM": str(wasm), "WB_DEPLOY_DEADLINE_MS": "300", "WB_CACHE": str(d.parent / (d.name + "-cache"))}
    with Planes(d, env=env) as planes:
        c = httpx.Client(timeout=30)
        admin = {"Authorization": f"Bearer {planes.admin_key()}"}
        assert c.post(planes.control_url + "/api/tenants", json={"name": "hk"}, headers=admin).status_code == 201
        key = c.post(planes.control_url + "/api/tenants/hk/keys", json={"scope": "tenant"}, headers=admin).json()["key"]
        h = {"Authorization": f"Bearer {key}"}
        assert c.put(planes.control_url + "/api/workbooks/keep", content=b"* fine\n", headers=h).status_code == 200
        yield planes, c, h
        c.close()


def test_validation_errors_are_422_with_diagnostics(hostile_planes):
    planes, c, h = hostile_planes
    before = c.get(planes.control_url + "/api/workbooks/keep", headers=h).json()
    r = c.put(planes.control_url + "/api/workbooks/keep", content=b"BAD! document\n", headers=h)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_workbook"
    assert err["details"] == [{"level": "error", "scope": "doc", "message": "bad document"}]
    r = c.put(planes.control_url + "/api/workbooks/new-one", content=b"BAD! document\n", headers=h)
    assert r.status_code == 422
    assert c.get(planes.control_url + "/api/workbooks/new-one", headers=h).status_code == 404
    assert c.get(planes.control_url + "/api/workbooks/keep", headers=h).json() == before
    log = c.get(planes.control_url + "/api/git/log", headers=h).json()["commits"]
    assert len(log) == 1


def test_kernel_hang_and_trap_mid_deploy_lose_nothing(hostile_planes):
    planes, c, h = hostile_planes
    before = c.get(planes.control_url + "/api/workbooks/keep", headers=h).json()
    r = c.put(planes.control_url + "/api/workbooks/keep", content=b"LOOP forever\n", headers=h)
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline"
    r = c.put(planes.control_url + "/api/workbooks/keep", content=b"TRAP now\n", headers=h)
    assert r.status_code == 422 and r.json()["error"]["code"] == "kernel_trap"
    assert c.get(planes.control_url + "/api/workbooks/keep", headers=h).json() == before
    assert len(c.get(planes.control_url + "/api/git/log", headers=h).json()["commits"]) == 1
    # and the plane still deploys afterwards
    r = c.put(planes.control_url + "/api/workbooks/keep", content=b"* fine again\n", headers=h)
    assert r.status_code == 200 and r.json()["sha"] != before["sha"]


def test_an_unreachable_pool_is_503_with_retry_after(tmp_path):
    """A control plane whose pool is gone answers 503 + Retry-After and changes nothing."""
    import httpx

    from workbooks.web_control.launch import Planes

    with Planes(tmp_path / "d", pool_endpoint=f"ipc://{tmp_path}/nothing-listens.sock") as planes:
        with httpx.Client(timeout=30) as c:
            admin = {"Authorization": f"Bearer {planes.admin_key()}"}
            assert c.post(planes.control_url + "/api/tenants", json={"name": "np"}, headers=admin).status_code == 201
            h = {**admin, "X-Workbooks-Tenant": "np"}
            r = c.put(planes.control_url + "/api/workbooks/doc", content=b"* x\n", headers=h)
            assert r.status_code == 503 and r.headers["retry-after"]
            assert r.json()["error"]["code"] == "no_workers"
            assert c.get(planes.control_url + "/api/workbooks/doc", headers=h).status_code == 404
            assert c.get(planes.control_url + "/readyz").status_code == 503


def test_pool_error_codes_map_to_statuses():
    from workbooks.pool.client import PoolError
    from workbooks.web_control.oql import as_http_error

    cases = {"overloaded": 503, "no_workers": 503, "deadline": 504, "memory": 413, "bad_request": 400,
             "kernel_trap": 422, "protocol": 502}
    for code, status in cases.items():
        e = as_http_error(PoolError(code, f"{code} happened"))
        assert (e.http_status, e.code) == (status, code)
        assert ("Retry-After" in e.headers) == (status == 503)
