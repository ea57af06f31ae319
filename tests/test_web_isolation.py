"""Tenant isolation matrix: a key of A can neither read nor write B (workbooks, vars, git, domains)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def two(web):
    a, ka = web.new_tenant("isoa")
    b, kb = web.new_tenant("isob")
    assert web.deploy(kb, "secretbook", "#+TITLE: B only\n* private plans of B\n").status_code == 200
    r = web.http.put(web.control + "/api/vars/B_VAR", json={"value": "b-plain-value"}, headers=web.auth(kb))
    assert r.status_code == 200
    r = web.http.put(web.control + "/api/vars/B_SECRET", json={"value": "b-secret-value", "secret": True},
                     headers=web.auth(kb))
    assert r.status_code == 200
    host = f"b-{b}.test"  # a local-style name: held by its first claim, served at once
    assert web.http.put(web.control + f"/api/domains/{host}", json={"workbook": "secretbook"},
                        headers=web.auth(kb)).status_code == 200
    return {"a": a, "ka": ka, "b": b, "kb": kb, "host": host}


def _state_of_b(web, t) -> dict:
    h = web.auth(t["kb"])
    wb = web.http.get(web.control + "/api/workbooks/secretbook", headers=h).json()
    return {
        "workbooks": web.http.get(web.control + "/api/workbooks", headers=h).json(),
        "sha": wb["sha"], "source": wb["source"],
        "vars": web.http.get(web.control + "/api/vars", headers=h).json(),
        "domains": web.http.get(web.control + "/api/domains", headers=h).json(),
        "log": web.http.get(web.control + "/api/git/log", headers=h).json(),
    }


def test_a_cannot_read_b(web, two):
    h = web.auth(two["ka"])
    # A's own view has nothing of B
    assert web.http.get(web.control + "/api/workbooks", headers=h).json()["workbooks"] == []
    r = web.http.get(web.control + "/api/workbooks/secretbook", headers=h)
    assert r.status_code == 404 and "private plans" not in r.text
    assert web.http.get(web.control + "/api/vars/B_VAR", headers=h).status_code == 404
    assert web.http.get(web.control + "/api/vars/B_SECRET", headers=h).status_code == 404
    assert "b-plain-value" not in web.http.get(web.control + "/api/vars", headers=h).text
    assert web.http.get(web.control + "/api/domains", headers=h).json()["domains"] == []
    assert web.http.get(web.control + "/api/git/log", headers=h).json()["commits"] == []
    assert "private plans" not in web.http.get(web.control + "/api/git/diff", headers=h).text
    assert web.http.get(web.control + "/rcp/changes", headers=h).json()["changes"] == []
    # naming B's tenant explicitly is refused
    hb = {**h, "X-Workbooks-Tenant": two["b"]}
    for path in ("/api/workbooks", "/api/workbooks/secretbook", "/api/vars", "/api/vars/B_VAR",
                 "/api/domains", "/api/git/log", "/api/git/diff", "/rcp/changes"):
        r = web.http.get(web.control + path, headers=hb)
        assert r.status_code == 403, (path, r.status_code)
        assert "private plans" not in r.text and "b-plain-value" not in r.text
    # tenant-scoped admin routes are refused too
    assert web.http.get(web.control + f"/api/tenants/{two['b']}/keys", headers=h).status_code == 403
    assert web.http.post(web.control + f"/api/tenants/{two['b']}/keys", json={"scope": "tenant"}, headers=h).status_code == 403
    assert web.http.post(web.control + f"/api/mirror/{two['b']}", json={}, headers=h).status_code == 403


def test_a_cannot_write_b(web, two):
    before = _state_of_b(web, two)
    h = web.auth(two["ka"])
    hb = {**h, "X-Workbooks-Tenant": two["b"]}
    # writes under B's name are refused
    assert web.http.put(web.control + "/api/workbooks/secretbook", content=b"* pwned\n", headers=hb).status_code == 403
    assert web.http.delete(web.control + "/api/workbooks/secretbook", headers=hb).status_code == 403
    assert web.http.put(web.control + "/api/vars/B_VAR", json={"value": "x"}, headers=hb).status_code == 403
    assert web.http.delete(web.control + "/api/vars/B_SECRET", headers=hb).status_code == 403
    assert web.http.delete(web.control + f"/api/domains/{two['host']}", headers=hb).status_code == 403
    # writes in A's own namespace never touch B's
    assert web.http.delete(web.control + "/api/workbooks/secretbook", headers=h).status_code == 404
    assert web.http.delete(web.control + "/api/vars/B_VAR", headers=h).status_code == 404
    assert web.http.delete(web.control + f"/api/domains/{two['host']}", headers=h).status_code == 404
    assert web.deploy(two["ka"], "secretbook", "* A's own book of the same name\n").status_code == 200
    r = web.http.put(web.control + "/api/vars/B_VAR", json={"value": "a-value"}, headers=h)
    assert r.status_code == 200
    # B's domain cannot be taken over, nor pointed at A's workbook
    r = web.http.put(web.control + f"/api/domains/{two['host']}", json={"workbook": "secretbook"}, headers=h)
    assert r.status_code == 409
    after = _state_of_b(web, two)
    assert after == before
    # the public page at B's domain is still B's
    page = web.public_get(two["host"])
    assert page.status_code == 200 and "B only" in page.text
    # A's repo and B's repo are separate directories; A's never has B's file content
    a_repo = web.data_dir / two["a"]
    assert "private plans" not in (a_repo / "secretbook.org").read_text()


def test_path_traversal_in_ids_is_refused_and_changes_nothing(web, two):
    h = web.auth(two["ka"])
    before = sorted(p.name for p in web.data_dir.iterdir())
    for wid in ("..", "..%2F..%2Fetc", "%2e%2e", "a.b", "A", "-x", "x-", "a" * 64, ".git", "%00", "healthz"):
        r = web.http.put(web.control + f"/api/workbooks/{wid}", content=b"* x\n", headers=h)
        assert r.status_code in (400, 404), (wid, r.status_code, r.text)
        assert r.json()["error"]["code"] in ("invalid_name", "not_found")
    for key in ("..", "a b", "1abc", "x" * 200):
        r = web.http.put(web.control + f"/api/vars/{key}", json={"value": "v"}, headers=h)
        assert r.status_code in (400, 404), key
    assert web.http.put(web.control + f"/api/tenants/..%2f{two['b']}/keys", json={}, headers=web.admin()).status_code in (400, 404)
    assert sorted(p.name for p in web.data_dir.iterdir()) == before
    # the tenant header cannot traverse either
    r = web.http.get(web.control + "/api/workbooks", headers=web.auth(web.admin_key, "../" + two["b"]))
    assert r.status_code == 404


def test_no_tenant_can_shadow_a_workbook_host(web, two):
    # demo.localhost-style hosts are named by workbook id; registering one would hijack it
    for host in ("secretbook.localhost", "x.y.localhost"):
        r = web.http.put(web.control + f"/api/domains/{host}", json={"workbook": "secretbook"}, headers=web.auth(two["ka"]))
        assert r.status_code == 400 and r.json()["error"]["code"] == "reserved_domain"


def test_the_last_admin_key_cannot_be_revoked(tmp_path):
    from workbooks.errors import Conflict
    from workbooks.store import Store

    st = Store(tmp_path)
    key, _ = st.ensure_admin_key()
    first = st.authenticate(key).key_id
    with pytest.raises(Conflict):
        st.revoke_key(first)
    _, second = st.create_key("admin", None)
    assert st.revoke_key(first)["revoked"] is True
    assert st.authenticate(key) is None
    with pytest.raises(Conflict):
        st.revoke_key(second["id"])
    st.close()
