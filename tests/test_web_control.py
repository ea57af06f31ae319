"""The control plane over real HTTP: tenants and keys, deploy = index + commit, vars and secrets, domains, ops."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from importlib import resources

import pytest

DEMO = resources.files("workbooks.samples").joinpath("demo.org").read_text("utf-8")


def test_health_and_ready_on_both_planes(web):
    for base in (web.control, web.public):
        r = web.http.get(base + "/healthz")
        assert r.status_code == 200 and r.json()["ok"] is True
        r = web.http.get(base + "/readyz")
        assert r.status_code == 200 and r.json()["ready"] is True


def test_first_start_writes_admin_key_0600_and_keeps_it_out_of_the_log(web):
    path = web.data_dir / "admin.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text().strip()
    assert key.startswith("wbk_")
    logs = web.planes.log_dir
    stdout_logs = "".join(p.read_text() for p in logs.glob("*.log"))
    assert key not in stdout_logs  # JSON log lines never carry it
    stderr = "".join(p.read_text() for p in logs.glob("web_control-*.err"))
    assert stderr.count(key) == 1  # printed once, to the terminal
    # the database holds only its hash
    db = (web.data_dir / ".workbooks" / "index.db").read_bytes()
    assert key.encode() not in db


def test_tenants_and_keys(web):
    h = web.admin()
    r = web.http.post(web.control + "/api/tenants", json={"name": "acme-keys"}, headers=h)
    assert r.status_code == 201 and r.json()["name"] == "acme-keys"
    r = web.http.post(web.control + "/api/tenants", json={"name": "acme-keys"}, headers=h)
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    for bad in ("../etc", "UPPER", "", "a" * 80, "a/b"):
        r = web.http.post(web.control + "/api/tenants", json={"name": bad}, headers=h)
        assert r.status_code == 400, (bad, r.text)
    r = web.http.post(web.control + "/api/tenants/acme-keys/keys", json={"scope": "tenant"}, headers=h)
    assert r.status_code == 201
    created = r.json()
    key, kid = created["key"], created["id"]
    assert created["scope"] == "tenant" and created["tenant"] == "acme-keys"
    listed = web.http.get(web.control + "/api/tenants/acme-keys/keys", headers=h).json()["keys"]
    assert [k["id"] for k in listed] == [kid]
    assert key not in web.http.get(web.control + "/api/keys", headers=h).text
    # the key works, then is revoked
    assert web.http.get(web.control + "/api/workbooks", headers=web.auth(key)).status_code == 200
    r = web.http.delete(web.control + f"/api/keys/{kid}", headers=h)
    assert r.status_code == 200 and r.json()["revoked"] is True
    r = web.http.get(web.control + "/api/workbooks", headers=web.auth(key))
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    # bad scope, unknown tenant
    r = web.http.post(web.control + "/api/tenants/acme-keys/keys", json={"scope": "root"}, headers=h)
    assert r.status_code == 400
    r = web.http.post(web.control + "/api/tenants/nobody-here/keys", json={"scope": "tenant"}, headers=h)
    assert r.status_code == 404


def test_scopes(web):
    tenant, key = web.new_tenant("sc")
    h = web.admin()
    op = web.http.post(web.control + f"/api/tenants/{tenant}/keys", json={"scope": "operator"}, headers=h).json()["key"]
    # a tenant key cannot manage tenants or keys, or reach ops
    assert web.http.post(web.control + "/api/tenants", json={"name": "x1"}, headers=web.auth(key)).status_code == 403
    assert web.http.get(web.control + "/api/keys", headers=web.auth(key)).status_code == 403
    assert web.http.get(web.control + "/api/ops/workers", headers=web.auth(key)).status_code == 403
    assert web.http.get(web.control + "/metrics", headers=web.auth(key)).status_code == 403
    # an operator key reaches ops and metrics but no tenant data
    assert web.http.get(web.control + "/api/workbooks", headers=web.auth(op)).status_code == 403
    r = web.http.get(web.control + "/metrics", headers=web.auth(op))
    assert r.status_code == 200 and "wb_control_requests_total" in r.text
    r = web.http.get(web.control + "/api/ops/workers", headers=web.auth(op))
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_supervisor" and r.headers["retry-after"]
    # no key, a malformed header, an unknown key
    for hdr in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer wbk_nope"}):
        r = web.http.get(web.control + "/api/workbooks", headers=hdr)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    # an admin acts for a tenant only when it names one
    r = web.http.get(web.control + "/api/workbooks", headers=h)
    assert r.status_code == 400 and r.json()["error"]["code"] == "tenant_required"
    assert web.http.get(web.control + "/api/workbooks", headers=web.auth(web.admin_key, tenant)).status_code == 200


def _git(repo, *args) -> str:
    return subprocess.run(["git", "-c", "safe.directory=*", "-C", str(repo), *args], capture_output=True,
                          check=True).stdout.decode()


def test_deploy_is_index_plus_commit(web):
    tenant, key = web.new_tenant("dep")
    r = web.deploy(key, "demo", DEMO)
    assert r.status_code == 200, r.text
    sha = r.json()["sha"]
    repo = web.data_dir / tenant
    assert _git(repo, "rev-parse", "HEAD").strip() == sha
    assert _git(repo, "show", "HEAD:demo.org") == DEMO
    assert _git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%s").strip() == \
        f"{tenant} <{tenant}@workbooks.local>|{tenant} <{tenant}@workbooks.local>|deploy demo"
    got = web.http.get(web.control + "/api/workbooks/demo", headers=web.auth(key)).json()
    assert got["source"] == DEMO and got["sha"] == sha
    assert isinstance(got["headlines"], list) and isinstance(got["html"], str)
    assert got["meta"]["title"] == "Workbooks demo"
    # the same source again changes nothing
    r = web.deploy(key, "demo", DEMO)
    assert r.status_code == 200 and r.json()["nochange"] is True
    assert _git(repo, "rev-list", "--count", "HEAD").strip() == "1"
    listed = web.http.get(web.control + "/api/workbooks", headers=web.auth(key)).json()["workbooks"]
    assert [(w["id"], w["sha"], w["title"]) for w in listed] == [("demo", sha, "Workbooks demo")]
    # a second version: log and diff show it
    r = web.deploy(key, "demo", DEMO + "\n* Added later\n")
    sha2 = r.json()["sha"]
    assert sha2 != sha
    log = web.http.get(web.control + "/api/git/log", headers=web.auth(key)).json()["commits"]
    assert [c["sha"] for c in log] == [sha2, sha] and log[0]["author"] == tenant
    diff = web.http.get(web.control + "/api/git/diff", headers=web.auth(key)).json()
    assert diff["sha"] == sha2 and "+* Added later" in diff["diff"]
    ch = web.http.get(web.control + "/rcp/changes", headers=web.auth(key)).json()
    assert [c["msg"] for c in ch["changes"]] == ["deploy demo", "deploy demo"] and "agent" in ch
    # delete is a commit too
    r = web.http.delete(web.control + "/api/workbooks/demo", headers=web.auth(key))
    assert r.status_code == 200
    assert _git(repo, "rev-parse", "HEAD").strip() == r.json()["sha"]
    assert "demo.org" not in _git(repo, "ls-files")
    assert web.http.get(web.control + "/api/workbooks/demo", headers=web.auth(key)).status_code == 404
    assert web.http.delete(web.control + "/api/workbooks/demo", headers=web.auth(key)).status_code == 404


def test_if_match_gives_optimistic_concurrency(web):
    tenant, key = web.new_tenant("ifm")
    sha = web.deploy(key, "doc", "* one\n").json()["sha"]
    r = web.deploy(key, "doc", "* two\n", **{"If-Match": '"0000000000000000000000000000000000000000"'})
    assert r.status_code == 412 and r.json()["error"]["code"] == "precondition_failed"
    got = web.http.get(web.control + "/api/workbooks/doc", headers=web.auth(key)).json()
    assert got["source"] == "* one\n" and got["sha"] == sha
    r = web.deploy(key, "doc", "* two\n", **{"If-Match": f'"{sha}"'})
    assert r.status_code == 200 and r.json()["sha"] != sha
    # If-Match on a workbook that does not exist (more in tests/test_control_preconditions.py)
    assert web.deploy(key, "fresh", "* x\n", **{"If-Match": sha}).status_code == 412
    assert web.http.get(web.control + "/api/workbooks/fresh", headers=web.auth(key)).status_code == 404


def test_concurrent_deploys_to_one_tenant_lose_nothing(web):
    tenant, key = web.new_tenant("conc")
    results: list = []

    def one(i: int) -> None:
        r = web.deploy(key, f"w{i}", f"* doc {i}\n")
        results.append((i, r.status_code, r.text))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(code == 200 for _, code, _ in results), results
    repo = web.data_dir / tenant
    assert _git(repo, "rev-list", "--count", "HEAD").strip() == "16"
    assert sorted(_git(repo, "ls-files").split()) == sorted([".gitignore"] + [f"w{i}.org" for i in range(16)])
    assert not (repo / ".git" / "index.lock").exists()
    listed = web.http.get(web.control + "/api/workbooks", headers=web.auth(key)).json()["workbooks"]
    assert len(listed) == 16


def test_oql_over_http(web):
    _, key = web.new_tenant("oql")
    h = web.auth(key)
    r = web.http.post(web.control + "/api/oql/query", content=DEMO.encode(), headers=h)
    assert r.status_code == 200 and isinstance(r.json(), list)
    r = web.http.post(web.control + "/api/oql/tangle", content=DEMO.encode(), headers=h)
    assert r.status_code == 200 and isinstance(r.json(), dict)
    r = web.http.post(web.control + "/api/oql/lint", content=DEMO.encode(), headers=h)
    assert r.status_code == 200 and isinstance(r.json(), list)
    r = web.http.post(web.control + "/api/oql/render", content=DEMO.encode(), headers=h)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    r = web.http.post(web.control + "/api/oql/parse", content=DEMO.encode(), headers=h)
    assert r.status_code == 200 and r.json()["type"] == "org-data"
    assert [n["title"] for n in r.json()["children"] if n["type"] == "headline"] == [
        row["title"] for row in web.http.post(web.control + "/api/oql/query", content=DEMO.encode(), headers=h).json()
        if row["level"] == 1]
    assert web.http.post(web.control + "/api/oql/parse", content=b"* x").status_code == 401
    r = web.http.post(web.control + "/api/oql/check_upgrade", json={"old": DEMO, "new": DEMO}, headers=h)
    assert r.status_code == 200 and r.json() == []
    r = web.http.post(web.control + "/api/oql/check_upgrade", json={"old": DEMO}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_field"
    assert web.http.post(web.control + "/api/oql/explode", content=b"x", headers=h).status_code == 404
    assert web.http.post(web.control + "/api/oql/query", content=b"* x").status_code == 401


def test_vars_and_secrets(web):
    tenant, key = web.new_tenant("vars")
    h = web.auth(key)
    secret = "s3cr3t-" + os.urandom(8).hex()
    r = web.http.put(web.control + "/api/vars/GREETING", json={"value": "<b>hi</b> & welcome"}, headers=h)
    assert r.status_code == 200 and r.json()["value"] == "<b>hi</b> & welcome"
    r = web.http.put(web.control + "/api/vars/API_TOKEN", json={"value": secret, "secret": True}, headers=h)
    assert r.status_code == 200 and secret not in r.text
    assert r.json() == {**r.json(), "secret": True, "value": "[redacted]", "size": len(secret)}
    r = web.http.get(web.control + "/api/vars/API_TOKEN", headers=h)
    assert r.status_code == 200 and secret not in r.text and r.json()["size"] == len(secret)
    listed = web.http.get(web.control + "/api/vars", headers=h)
    assert secret not in listed.text and {v["key"] for v in listed.json()["vars"]} == {"GREETING", "API_TOKEN"}
    # a workbook using both: the variable is published (escaped), the secret never
    org = "#+TITLE: t\n* Hello\nSay {{var:GREETING}} with {{secret:API_TOKEN}}.\n"
    r = web.deploy(key, "greet", org)
    assert r.status_code == 200 and secret not in r.text
    page = web.public_get(f"greet.{tenant}.localhost")
    # (<workbook>.<tenant>.<base> names the workbook)
    assert page.status_code == 200
    if "Say" in page.text:  # the kernel renders paragraphs
        assert "&lt;b&gt;hi&lt;/b&gt; &amp; welcome" in page.text
        assert "{{secret:API_TOKEN}}" in page.text
    assert secret not in page.text
    got = web.http.get(web.control + "/api/workbooks/greet", headers=h)
    assert secret not in got.text
    # changing the variable republishes the page without a deploy
    web.http.put(web.control + "/api/vars/GREETING", json={"value": "bonjour"}, headers=h)
    page2 = web.public_get(f"greet.{tenant}.localhost")
    if "Say" in page.text:
        assert "bonjour" in page2.text
    # the secret resolves at egress only, for host code
    from workbooks.store import Store, resolve_for_egress

    st = Store(web.data_dir)
    assert resolve_for_egress(st, tenant, "Bearer {{secret:API_TOKEN}} {{var:GREETING}}") == f"Bearer {secret} bonjour"
    with pytest.raises(Exception):
        resolve_for_egress(st, tenant, "{{secret:MISSING}}")
    st.close()
    # never in git history, logs, or the database file in clear
    repo = web.data_dir / tenant
    assert secret not in _git(repo, "log", "-p", "--all")
    assert secret not in web.planes.logs()
    for f in (web.data_dir / ".workbooks").glob("index.db*"):
        assert secret.encode() not in f.read_bytes()
    # the data key was generated into the data dir, readable by the owner only
    assert stat.S_IMODE((web.data_dir / ".workbooks" / "secret.key").stat().st_mode) == 0o600
    # delete
    assert web.http.delete(web.control + "/api/vars/API_TOKEN", headers=h).status_code == 200
    assert web.http.get(web.control + "/api/vars/API_TOKEN", headers=h).status_code == 404
    assert web.http.delete(web.control + "/api/vars/API_TOKEN", headers=h).status_code == 404


def test_domains(web):
    tenant, key = web.new_tenant("dom")
    other, okey = web.new_tenant("dom")
    h = web.auth(key)
    assert web.deploy(key, "site", "#+TITLE: Site of A\n* a\n").status_code == 200
    assert web.deploy(okey, "other", "#+TITLE: Site of B\n* b\n").status_code == 200
    host = f"docs-{tenant}.test"  # local-style: served on claim (real domains need proof)
    r = web.http.put(web.control + f"/api/domains/{host}", json={"workbook": "site"}, headers=h)
    assert r.status_code == 200, r.text
    page = web.public_get(host)
    assert page.status_code == 200 and "Site of A" in page.text
    # case and port do not matter; the registered domain wins over the leftmost label
    assert "Site of A" in web.public_get(host.upper() + ":8080").text
    # another tenant cannot take it or remove it
    r = web.http.put(web.control + f"/api/domains/{host}", json={"workbook": "other"}, headers=web.auth(okey))
    assert r.status_code == 409
    assert web.http.delete(web.control + f"/api/domains/{host}", headers=web.auth(okey)).status_code == 404
    assert "Site of A" in web.public_get(host).text
    # unknown workbook, invalid hosts
    assert web.http.put(web.control + "/api/domains/x.example.com", json={"workbook": "nope"}, headers=h).status_code == 404
    for bad in ("localhost", "1.2.3.4", "a..b", "-x.com", "x_y.com"):
        assert web.http.put(web.control + f"/api/domains/{bad}", json={"workbook": "site"}, headers=h).status_code == 400
    assert [d["host"] for d in web.http.get(web.control + "/api/domains", headers=h).json()["domains"]] == [host]
    assert web.http.delete(web.control + f"/api/domains/{host}", headers=h).status_code == 200
    assert web.public_get(host).status_code == 404


def test_errors_are_json_with_status(web):
    r = web.http.get(web.control + "/no/such/route")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = web.http.patch(web.control + "/api/tenants", headers=web.admin())
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed" and "POST" in r.headers["allow"]
    r = web.http.post(web.control + "/api/tenants", content=b"{not json",
                      headers={**web.admin(), "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_json"
    r = web.http.post(web.control + "/api/tenants", content=b"{not json", headers=web.admin())
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = web.http.post(web.control + "/api/tenants", json=["a"], headers=web.admin())
    assert r.status_code == 400


def test_variables_in_the_title(web):
    tenant, key = web.new_tenant("ttl")
    h = web.auth(key)
    web.http.put(web.control + "/api/vars/SITE_NAME", json={"value": "Café <Noir>"}, headers=h)
    assert web.deploy(key, "titled", "#+TITLE: Welcome to {{var:SITE_NAME}}\n* a\ntext\n").status_code == 200
    host = f"titled-{tenant}.test"
    assert web.http.put(web.control + f"/api/domains/{host}", json={"workbook": "titled"}, headers=h).status_code == 200
    page = web.public_get(host)
    assert "<title>Welcome to Café &lt;Noir&gt;</title>" in page.text
    web.http.put(web.control + "/api/vars/SITE_NAME", json={"value": "Tea"}, headers=h)
    assert "<title>Welcome to Tea</title>" in web.public_get(host).text
    got = web.http.get(web.control + "/api/workbooks/titled", headers=h).json()
    assert got["meta"]["title"] == "Welcome to {{var:SITE_NAME}}"  # the index keeps the template


def test_real_kernel_diagnostics_on_deploy(web):
    tenant, key = web.new_tenant("diag")
    bad = "* wf :workflow:\n:PROPERTIES:\n:SCHEDULE: bad cron\n:END:\n** c :component:\n#+begin_src js\nx\n#+end_src\n"
    r = web.deploy(key, "flow", bad)
    assert r.status_code == 422
    details = r.json()["error"]["details"]
    assert any(d["level"] == "error" and "cron" in d["message"] for d in details)
    assert web.http.get(web.control + "/api/workbooks/flow", headers=web.auth(key)).status_code == 404
    assert web.http.get(web.control + "/api/git/log", headers=web.auth(key)).json()["commits"] == []
    # warnings do not block a deploy; they come back with it
    warn = "* wf :workflow:\n** c :component:\n#+begin_src js :foo bar\nx\n#+end_src\n"
    r = web.deploy(key, "flow", warn)
    assert r.status_code == 200 and "sha" in r.json()
    assert any(d["level"] == "warning" for d in r.json()["diagnostics"])
