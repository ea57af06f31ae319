"""Both planes write one JSON `access` line per request (errors included) to their stdout log,
with the tenant and the key's id but never a key or a secret; admin and deploy events carry
the acting key's id; a storm of `overloaded` answers is a few rate-limited warning lines."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from workbooks.web_control.launch import Planes


def _lines(planes: Planes) -> list[dict]:
    """Every stdout line of every plane process, each parsed as one JSON object."""
    out = []
    files = sorted(planes.log_dir.glob("*.log"))
    assert files, planes.log_dir
    for f in files:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            rec = json.loads(line)  # one JSON object per line, nothing else on stdout
            assert isinstance(rec, dict), (f.name, n, line[:200])
            out.append(rec)
    return out


def _one(lines, **want) -> dict:
    found = [r for r in lines if all(r.get(k) == v for k, v in want.items())]
    assert len(found) == 1, (want, found, [r for r in lines if r.get("event") == "access"][-40:])
    return found[0]


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """Drive both planes through successes and failures, stop them, and return what they logged."""
    d = tmp_path_factory.mktemp("accesslog") / "data"
    planes = Planes(d).start()
    seen: dict = {}
    try:
        c = httpx.Client(timeout=30)
        admin_key = planes.admin_key()
        admin = {"Authorization": f"Bearer {admin_key}"}
        ctl = planes.control_url
        keys = c.get(ctl + "/api/keys", headers=admin).json()["keys"]
        seen["admin_id"] = next(k["id"] for k in keys if k["scope"] == "admin")
        assert c.post(ctl + "/api/tenants", json={"name": "acc"}, headers=admin).status_code == 201
        r = c.post(ctl + "/api/tenants/acc/keys", json={"scope": "tenant"}, headers=admin)
        key, kid = r.json()["key"], r.json()["id"]
        r = c.post(ctl + "/api/tenants/acc/keys", json={"scope": "tenant"}, headers=admin)
        spare_key, spare_id = r.json()["key"], r.json()["id"]
        h = {"Authorization": f"Bearer {key}"}
        seen.update(admin_key=admin_key, key=key, kid=kid, spare_key=spare_key, spare_id=spare_id)
        seen["secret"] = "s3cr3t-" + "9f1c2b7e4d"
        resp = {}
        resp["health"] = c.get(ctl + "/healthz?probe=1")
        resp["noauth"] = c.get(ctl + "/api/workbooks")
        resp["badkey"] = c.get(ctl + "/api/workbooks", headers={"Authorization": "Bearer wbk_notarealkey123"})
        resp["forbidden"] = c.get(ctl + "/api/keys", headers=h)
        resp["query"] = c.get(ctl + "/no/such/route?token=QUERYSECRET1&limit=5&api_key=QUERYSECRET2", headers=h)
        resp["keyinpath"] = c.get(ctl + f"/{key}")
        resp["keyinquery"] = c.get(ctl + f"/api/git/log?limit=2&q={key}", headers=h)
        resp["deploy"] = c.put(ctl + "/api/workbooks/doc", content=b"#+TITLE: Logged\n* one\n", headers=h)
        resp["var"] = c.put(ctl + "/api/vars/TOKEN", json={"value": seen["secret"], "secret": True}, headers=h)
        resp["domain"] = c.put(ctl + "/api/domains/acc-docs.test", json={"workbook": "doc"}, headers=h)
        resp["revoke"] = c.delete(ctl + f"/api/keys/{spare_id}", headers=admin)
        resp["revoked_use"] = c.get(ctl + "/api/workbooks", headers={"Authorization": f"Bearer {spare_key}"})
        resp["method"] = c.patch(ctl + "/api/tenants", headers=admin)
        resp["toobig"] = c.put(ctl + "/api/workbooks/doc", content=b"x" * (11 * 1024 * 1024), headers=h)
        resp["badhost"] = c.get(ctl + "/healthz", headers={"Host": "bad host!"})
        resp["hostkey"] = c.get(ctl + "/hostkey?tok%65n=QUERYSECRET3&x=1", headers={"Host": key})
        resp["badjson"] = c.post(ctl + "/api/tenants", content=b"{", headers={**admin, "Content-Type": "application/json"})
        pub = planes.public_url
        resp["pub_health"] = c.get(pub + "/healthz?probe=2")
        resp["pub_unknown"] = c.get(pub + "/", headers={"Host": "nobody-here.example"})
        resp["pub_post"] = c.post(pub + "/", headers={"Host": "nobody-here.example"}, content=b"x")
        for host in ("doc.acc.localhost", "doc.localhost"):  # the page, from the fast path
            r = c.get(pub + "/", headers={"Host": host})
            if r.status_code == 200:
                resp["page"] = r
                seen["page_host"] = host
                break
        c.close()
    finally:
        planes.stop()
    seen["resp"] = resp
    return planes, _lines(planes), seen


def test_every_line_is_json_and_no_key_or_secret_is_logged(logged):
    planes, lines, seen = logged
    text = "\n".join((planes.log_dir / f.name).read_text() for f in sorted(planes.log_dir.glob("*.log")))
    for secret in (seen["admin_key"], seen["key"], seen["spare_key"], seen["secret"], "wbk_notarealkey123",
                   "QUERYSECRET1", "QUERYSECRET2", "QUERYSECRET3", seen["key"][4:]):
        assert secret not in text, secret[:8]
    assert len([r for r in lines if r.get("event") == "access"]) >= 20


def test_control_plane_access_lines(logged):
    _, lines, seen = logged
    resp = seen["resp"]
    acc = [r for r in lines if r.get("event") == "access" and r.get("plane") == "control"]
    for r in acc:
        for k in ("method", "path", "status", "duration_ms", "bytes", "tenant", "key_id", "remote"):
            assert k in r, (k, r)
        assert r["remote"] == "127.0.0.1" and r["duration_ms"] >= 0
    health = _one(acc, path="/healthz", status=200, query="probe=1")  # (Planes probes it too)
    assert health["method"] == "GET" and health["bytes"] == resp["health"].num_bytes_downloaded > 0
    assert health["key_id"] is None and health["tenant"] is None
    noauth = [r for r in acc if r["path"] == "/api/workbooks" and r["status"] == 401]
    assert len(noauth) == 3 and all(r["key_id"] is None for r in noauth)  # none, unknown, revoked key
    forbidden = _one(acc, path="/api/keys", status=403)
    assert (forbidden["key_id"], forbidden["tenant"]) == (seen["kid"], "acc")
    q = _one(acc, path="/no/such/route", status=404)
    assert q["query"] == "token=[redacted]&limit=5&api_key=[redacted]"
    kp = _one(acc, status=404, path="/wbk_[redacted]")
    assert kp["key_id"] is None
    kq = _one(acc, path="/api/git/log", status=200)
    assert kq["query"] == "limit=2&q=[redacted]" and kq["key_id"] == seen["kid"]
    dep = _one(acc, method="PUT", path="/api/workbooks/doc", status=200)
    assert (dep["tenant"], dep["key_id"]) == ("acc", seen["kid"])
    assert dep["bytes"] == resp["deploy"].num_bytes_downloaded
    assert resp["toobig"].status_code == 413
    assert _one(acc, method="PUT", path="/api/workbooks/doc", status=413)["bytes"] > 0
    assert resp["badhost"].status_code == 400
    assert _one(acc, path="/healthz", status=400)["host"] == "bad host!"
    assert _one(acc, method="PATCH", path="/api/tenants", status=405)["key_id"] is None
    hk = _one(acc, path="/hostkey")
    assert hk["host"] == "wbk_[redacted]" and hk["query"] == "tok%65n=[redacted]&x=1"
    assert _one(acc, method="POST", path="/api/tenants", status=400)["key_id"] == seen["admin_id"]
    assert _one(acc, method="DELETE", path=f"/api/keys/{seen['spare_id']}", status=200)["key_id"] == seen["admin_id"]


def test_public_plane_access_lines(logged):
    _, lines, seen = logged
    resp = seen["resp"]
    acc = [r for r in lines if r.get("event") == "access" and r.get("plane") == "public"]
    assert _one(acc, path="/healthz", status=200, query="probe=2")["bytes"] == resp["pub_health"].num_bytes_downloaded
    unknown = _one(acc, method="GET", path="/", status=resp["pub_unknown"].status_code)
    assert resp["pub_unknown"].status_code == 404 and unknown["host"] == "nobody-here.example"
    assert _one(acc, method="POST", path="/", status=resp["pub_post"].status_code)["status"] >= 400
    # a page from the fast path is logged too, with the bytes actually sent (gzip here)
    assert "page" in resp, "the deployed page was not served under either host form"
    page = _one(acc, method="GET", path="/", status=200, host=seen["page_host"])
    assert page["bytes"] == resp["page"].num_bytes_downloaded > 0
    assert (page["tenant"], page["workbook"]) == ("acc", "doc"), "a page's line names whose page it was"
    assert unknown["tenant"] is None
    assert all(r["key_id"] is None for r in acc)


def test_admin_and_deploy_events_carry_the_acting_key_id(logged):
    _, lines, seen = logged
    admin_id, kid = seen["admin_id"], seen["kid"]
    assert _one(lines, event="tenant_created", tenant="acc")["actor_key_id"] == admin_id
    created = [r for r in lines if r.get("event") == "key_created"]
    assert {r["key_id"] for r in created} == {kid, seen["spare_id"]}
    assert all(r["actor_key_id"] == admin_id for r in created)
    revoked = _one(lines, event="key_revoked")
    assert (revoked["key_id"], revoked["actor_key_id"]) == (seen["spare_id"], admin_id)
    deployed = _one(lines, event="deployed", workbook="doc")
    assert (deployed["actor_key_id"], deployed["tenant"]) == (kid, "acc")
    assert seen["resp"]["domain"].status_code == 200, seen["resp"]["domain"].text
    claimed = _one(lines, event="domain_claimed", host="acc-docs.test")
    assert (claimed["actor_key_id"], claimed["tenant"]) == (kid, "acc")
    var = _one(lines, event="var_set", key="TOKEN")
    assert var["actor_key_id"] == kid and var["secret"] is True
    # the binding is per request: lines of requests without a key carry none
    assert all("actor_key_id" not in r for r in lines if r.get("event") in ("control_ready", "serving"))


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


def test_overloaded_warnings_are_rate_limited(busy_pool, tmp_path):
    env = {"WB_DEPLOY_DEADLINE_MS": "4000"}
    with Planes(tmp_path / "d", pool_endpoint=busy_pool.client_endpoint, env=env) as planes:
        c = httpx.Client(timeout=30)
        h = {"Authorization": f"Bearer {planes.admin_key()}"}
        url = planes.control_url + "/api/oql/lint"
        hog = threading.Thread(target=lambda: c.post(planes.control_url + "/api/oql/render",
                                                     content=b"LOOP forever\n", headers=h))
        hog.start()
        try:
            time.sleep(0.5)  # the one worker is spinning now
            first = [c.post(url, content=b"* x\n", headers=h).status_code for _ in range(40)]
            time.sleep(1.1)
            second = [c.post(url, content=b"* y\n", headers=h).status_code for _ in range(5)]
        finally:
            hog.join()
        time.sleep(1.1)
        assert c.get(planes.control_url + "/healthz").status_code == 200  # any later request reports the tail
        c.close()
    assert first.count(503) == 40 and second.count(503) == 5, (first, second)
    lines = _lines(planes)
    warned = [r for r in lines if r.get("event") == "request_failed" and r.get("code") == "overloaded"]
    # 45 overloaded answers in ~1.5 s: a few warning lines which, with their counts, account for all
    assert 3 <= len(warned) <= 4, warned
    assert warned[0]["suppressed"] == 0 and warned[1]["suppressed"] >= 30
    assert sum(r["suppressed"] for r in warned) + sum(1 for r in warned if "status" in r) == 45, warned
    # while the access log has every one of them
    acc = [r for r in lines if r.get("event") == "access" and r.get("path") == "/api/oql/lint"]
    assert [r["status"] for r in acc].count(503) == 45
