"""Hostnames are owned: no tenant ever serves under a name another tenant holds.

Real planes on a fresh data dir; first run creates the primary tenant `dev` and deploys `demo`,
exactly as `wbx serve` does. Tenant `b` then deploys a workbook named `demo` too.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import httpx
import pytest

B_DEMO = "#+TITLE: B's demo\n* Bee\nB's own page.\n"


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    from workbooks.web_control.first_run import first_run
    from workbooks.web_control.launch import Planes

    data = tmp_path_factory.mktemp("hosts") / "data"
    with Planes(data, env={"WB_PUBLIC_BASES": "localhost,wb.test"}) as planes, httpx.Client(timeout=30) as http:
        info = first_run(data, planes.control_url, planes.public_port)
        assert info["url"] == f"http://demo.localhost:{planes.public_port}/"
        admin = {"Authorization": f"Bearer {planes.admin_key()}"}

        def tenant(name: str) -> dict:
            assert http.post(planes.control_url + "/api/tenants", json={"name": name}, headers=admin).status_code == 201
            r = http.post(planes.control_url + f"/api/tenants/{name}/keys", json={"scope": "tenant"}, headers=admin)
            return {"Authorization": f"Bearer {r.json()['key']}"}

        env = {"planes": planes, "http": http, "admin": admin, "dev": {**admin, "X-Workbooks-Tenant": "dev"},
               "b": tenant("b"), "c": tenant("c")}

        def deploy(who: str, wid: str, org: str) -> httpx.Response:
            return http.put(planes.control_url + f"/api/workbooks/{wid}", content=org.encode(), headers=env[who])

        def get(host: str, path: str = "/") -> httpx.Response:
            return http.get(planes.public_url + path, headers={"Host": host})

        env["deploy"], env["get"] = deploy, get
        yield env


def _title(r: httpx.Response) -> str:
    import html

    return html.unescape(r.text.split("<title>", 1)[1].split("</title>", 1)[0]) if "<title>" in r.text else ""


def test_another_tenant_never_takes_the_primarys_short_name(plane):
    get, deploy = plane["get"], plane["deploy"]
    assert _title(get("demo.localhost")) == "Workbooks demo"
    # B deploys a workbook named like the primary's, and redeploys it
    assert deploy("b", "demo", B_DEMO).status_code == 200
    assert deploy("b", "demo", B_DEMO + "* Again\n").status_code == 200
    for host in ("demo.localhost", "demo.wb.test", "demo.dev.localhost", "DEMO.localhost:80"):
        assert _title(get(host)) == "Workbooks demo", host
    for host in ("demo.b.localhost", "demo.b.wb.test"):
        r = get(host)
        assert r.status_code == 200 and _title(r) == "B's demo" and "Again" in r.text, host
    # the primary's workbook gone: its short name answers nothing, never B's page
    admin_dev = plane["dev"]
    http, control = plane["http"], plane["planes"].control_url
    demo_src = http.get(control + "/api/workbooks/demo", headers=admin_dev).json()["source"]
    assert http.delete(control + "/api/workbooks/demo", headers=admin_dev).status_code == 200
    r = get("demo.localhost")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_host" and "B's" not in r.text
    assert _title(get("demo.b.localhost")) == "B's demo"
    assert deploy("dev", "demo", demo_src).status_code == 200
    assert _title(get("demo.localhost")) == "Workbooks demo"
    # a tenant's own namespace only: C has no `demo`, so nothing answers at demo.c.localhost
    assert get("demo.c.localhost").status_code == 404
    assert deploy("c", "demo", "#+TITLE: C's demo\n* c\n").status_code == 200
    assert _title(get("demo.c.localhost")) == "C's demo"
    assert _title(get("demo.b.localhost")) == "B's demo" and _title(get("demo.localhost")) == "Workbooks demo"


def test_nobody_claims_a_name_under_a_base_and_a_claim_is_held_once(plane):
    http, control, deploy, get = plane["http"], plane["planes"].control_url, plane["deploy"], plane["get"]
    assert deploy("b", "site", "#+TITLE: B site\n* b\n").status_code == 200
    assert deploy("c", "site", "#+TITLE: C site\n* c\n").status_code == 200
    for host in ("demo.localhost", "site.localhost", "site.c.localhost", "x.wb.test", "wb.test", "a.b.c.localhost"):
        r = http.put(control + f"/api/domains/{host}", json={"workbook": "site"}, headers=plane["b"])
        assert r.status_code == 400 and r.json()["error"]["code"] == "reserved_domain", host
    # a local-style name outside the bases: the first claim holds it and serves at once
    r = http.put(control + "/api/domains/site.b.test", json={"workbook": "site"}, headers=plane["b"])
    assert r.status_code == 200 and r.json()["status"] == "verified"
    assert _title(get("site.b.test")) == "B site"
    for who in ("c", "dev"):
        r = http.put(control + "/api/domains/site.b.test", json={"workbook": "site" if who == "c" else "demo"},
                     headers=plane[who])
        assert r.status_code == 409 and r.json()["error"]["code"] == "host_taken", who
        assert http.delete(control + "/api/domains/site.b.test", headers=plane[who]).status_code == 404
    assert _title(get("site.b.test")) == "B site"
    # released, it is anyone's again
    assert http.delete(control + "/api/domains/site.b.test", headers=plane["b"]).status_code == 200
    assert get("site.b.test").status_code == 404
    r = http.put(control + "/api/domains/site.b.test", json={"workbook": "site"}, headers=plane["c"])
    assert r.status_code == 200 and _title(get("site.b.test")) == "C site"


def test_a_host_lists_and_serves_only_its_workbook(plane):
    http, control, deploy, get = plane["http"], plane["planes"].control_url, plane["deploy"], plane["get"]
    assert deploy("b", "notes", "#+TITLE: B notes\n* private-ish notes\n").status_code == 200
    assert deploy("b", "notes", "#+TITLE: B notes\n* private-ish notes v2\n").status_code == 200
    host = "demo.b.localhost"
    # other workbooks of the tenant are not reachable under this host
    for path in ("/notes", "/notes.html", "/site"):
        r = get(host, path)
        assert r.status_code == 404 and "notes" not in r.text.lower().replace(path, ""), path
    changes = get(host, "/_changes").json()["changes"]
    assert changes and {c["msg"] for c in changes} == {"deploy demo"}
    notes = get("notes.b.localhost", "/_changes").json()["changes"]
    assert [c["msg"] for c in notes] == ["deploy notes", "deploy notes"]
    assert not {c["sha"] for c in notes} & {c["sha"] for c in changes}
    ns = {"a": "http://www.w3.org/2005/Atom"}
    feed = ET.fromstring(get(host, "/feed.atom").content)
    assert {e.find("a:title", ns).text for e in feed.findall("a:entry", ns)} == {"deploy demo"}
    locs = [u.text for u in ET.fromstring(get(host, "/sitemap.xml").content)
            .iter("{http://www.sitemaps.org/schemas/sitemap/0.9}loc")]
    assert locs == [f"http://{host}/"]
    # the same on a claimed host
    r = http.put(control + "/api/domains/notes.b-own.test", json={"workbook": "notes"}, headers=plane["b"])
    assert r.status_code == 200
    assert [c["msg"] for c in get("notes.b-own.test", "/_changes").json()["changes"]] == ["deploy notes", "deploy notes"]
    assert get("notes.b-own.test", "/demo").status_code == 404
    # the bare base is not a tenant-wide index: nothing is published there
    for bare in ("localhost", "wb.test", "b.localhost"):
        r = get(bare, "/_changes")
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_host", bare


def test_first_run_seeds_the_primary_tenant_it_is_told(tmp_path, monkeypatch):
    """WB_PRIMARY_TENANT renames the primary: first run seeds that tenant, so the URL it prints serves."""
    from workbooks.web_control.first_run import first_run
    from workbooks.web_control.launch import Planes

    monkeypatch.setenv("WB_PRIMARY_TENANT", "acme")
    data = tmp_path / "data"
    with Planes(data, env={"WB_PRIMARY_TENANT": "acme"}) as planes, httpx.Client(timeout=30) as http:
        info = first_run(data, planes.control_url, planes.public_port)
        assert info["url"] == f"http://demo.localhost:{planes.public_port}/"
        r = http.get(planes.public_url + "/", headers={"Host": "demo.localhost"})
        assert r.status_code == 200 and "<html" in r.text.lower()
        admin = {"Authorization": f"Bearer {planes.admin_key()}"}
        names = [t["name"] for t in http.get(planes.control_url + "/api/tenants", headers=admin).json()["tenants"]]
        assert "acme" in names and "dev" not in names
