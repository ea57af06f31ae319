"""`wbx tenant` and `wbx key` against a real control plane: output, exit codes 3 and 7."""

from __future__ import annotations

import json

from conftest import run_wbx


def _wbx(web, *args, key=None, url=None):
    env = {"WB_DATA": str(web.data_dir), "WB_CONTROL_URL": url or web.control}
    if key:
        env["WB_API_KEY"] = key
    return run_wbx(*args, env=env)


def test_tenant_and_key_verbs(web):
    r = _wbx(web, "tenant", "create", "cli-tenant")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["name"] == "cli-tenant"
    assert _wbx(web, "tenant", "create", "cli-tenant").returncode == 6
    r = _wbx(web, "key", "create", "--tenant", "cli-tenant")
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    key = created["key"]
    assert created["scope"] == "tenant"
    r = _wbx(web, "key", "list", "--tenant", "cli-tenant")
    listed = json.loads(r.stdout)["keys"]
    assert [k["id"] for k in listed] == [created["id"]] and key.encode() not in r.stdout
    # the new key works on the API, then is revoked
    assert web.http.get(web.control + "/api/workbooks", headers=web.auth(key)).status_code == 200
    r = _wbx(web, "key", "revoke", created["id"])
    assert r.returncode == 0 and json.loads(r.stdout)["revoked"] is True
    assert web.http.get(web.control + "/api/workbooks", headers=web.auth(key)).status_code == 401
    assert _wbx(web, "key", "revoke", "k_doesnotexist").returncode == 4
    assert _wbx(web, "--json", "key", "list").returncode == 0


def test_rejected_key_exits_7_and_unreachable_exits_3(web):
    tenant, tkey = web.new_tenant("clirej")
    r = _wbx(web, "tenant", "create", "nope-1", key=tkey)  # a tenant key may not create tenants
    assert r.returncode == 7, (r.returncode, r.stderr)
    assert b"rejected" in r.stderr
    r = _wbx(web, "key", "list", key="wbk_not_a_real_key")
    assert r.returncode == 7
    from workbooks.web_control.launch import free_port

    r = _wbx(web, "key", "list", url=f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 3
    assert json.loads(r.stderr)["error"]["kind"] == "unreachable" and json.loads(r.stderr)["error"]["code"] == 3
