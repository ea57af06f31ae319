"""Every JSON route of the control plane (walked from /openapi.json, which a test keeps equal to
the app's routes) takes only JSON media types and refuses numbers the parser cannot hold,
with a 400/415 JSON error and no change, never a 500."""

from __future__ import annotations

import re

import pytest

HUGE_INT = b'{"name": ' + b"9" * 100_000 + b"}"
NOT_NUMBERS = [
    HUGE_INT,
    b'{"name": -' + b"1" * 5000 + b"}",
    b'{"name": NaN}',
    b'{"name": Infinity}',
    b'{"name": -Infinity}',
    b'{"name": 1e999}',
    b'{"name": -' + b"9" * 400 + b'.5e99999}',
    b'{"a": [1, 2, {"b": NaN}]}',
]
OTHER_TYPES = [
    None,  # no Content-Type at all
    "application/xml",
    "text/plain",
    "text/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonx",
    "application/json; charset=latin-1",
    "application/json; foo=bar",
    "json",
]
# Routes that take a body but not JSON, or no body at all. A new POST/PUT/PATCH route must either
# document a JSON body (and so be walked by the tests below) or be added here with its reason.
NOT_JSON = {
    ("POST", "/api/oql/query"): "Org text",
    ("POST", "/api/oql/parse"): "Org text",
    ("POST", "/api/oql/tangle"): "Org text",
    ("POST", "/api/oql/lint"): "Org text",
    ("POST", "/api/oql/render"): "Org text",
    ("POST", "/api/domains/{host}/verify"): "no body",
    ("POST", "/api/ops/workers/{id}/restart"): "no body",
}
ACCEPTED_TYPES = ["application/json", "application/json; charset=utf-8", "Application/JSON;Charset=\"UTF-8\"",
                  "application/merge-patch+json", "application/vnd.workbooks+json; charset=utf-8"]


def _json_routes(web) -> list[tuple[str, str]]:
    doc = web.http.get(web.control + "/openapi.json").json()
    out = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if "application/json" in op.get("requestBody", {}).get("content", {}):
                out.append((method.upper(), path))
    return out


def _fill(path: str, tenant: str) -> str:
    values = {"tenant": tenant, "id": "jdoc", "key": "JKEY", "host": "json-hygiene.example.com", "run": "r1"}
    return re.sub(r"\{([a-z_]+)\}", lambda m: values.get(m.group(1), "x1"), path)


def test_every_route_with_a_body_is_classified(web):
    doc = web.http.get(web.control + "/openapi.json").json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method not in ("post", "put", "patch"):
                continue
            content = op.get("requestBody", {}).get("content", {})
            if "application/json" not in content:
                assert (method.upper(), path) in NOT_JSON, f"{method.upper()} {path}: JSON body or not? (see NOT_JSON)"
                assert not any(is_json for is_json in (c.endswith("json") for c in content)), (path, content)


@pytest.fixture(scope="module")
def routes(web):
    tenant, key = web.new_tenant("jh")
    found = _json_routes(web)
    # the walk really covers the JSON routes (new ones join automatically)
    assert {("POST", "/api/tenants"), ("PUT", "/api/vars/{key}"), ("POST", "/api/ops/scale"),
            ("PUT", "/api/workbooks/{id}"), ("POST", "/api/oql/check_upgrade")} <= set(found), found
    headers = {**web.admin(), "X-Workbooks-Tenant": tenant}
    return tenant, key, headers, [(m, _fill(p, tenant)) for m, p in found]


def _state(web, tenant, headers) -> tuple:
    tenants = web.http.get(web.control + "/api/tenants", headers=web.admin()).json()
    wbs = web.http.get(web.control + "/api/workbooks", headers=headers).json()
    vars_ = web.http.get(web.control + "/api/vars", headers=headers).json()
    keys = web.http.get(web.control + "/api/keys", headers=web.admin()).json()
    return tenants, wbs, vars_, keys


def test_other_media_types_are_415_on_every_json_route(web, routes):
    tenant, _, headers, found = routes
    before = _state(web, tenant, headers)
    body = b'{"name": "xml-tenant", "value": "v", "workbook": "w", "group": "worker", "n": 1, "old": "", "new": ""}'
    for method, path in found:
        for ctype in OTHER_TYPES:
            if path.startswith("/api/workbooks/") and ctype in (None, "text/plain"):
                continue  # a deploy also takes Org text (tests/test_control_deploy_body.py)
            h = dict(headers)
            if ctype is not None:
                h["Content-Type"] = ctype
            r = web.http.request(method, web.control + path, content=body, headers=h)
            assert r.status_code == 415, (method, path, ctype, r.status_code, r.text)
            err = r.json()["error"]
            assert err["code"] == "unsupported_media_type" and err["message"], (method, path, ctype)
    # the XML body of the issue: no tenant was created, nothing else changed either
    r = web.http.post(web.control + "/api/tenants", content=b"<tenant><name>xml1</name></tenant>",
                      headers={**web.admin(), "Content-Type": "application/xml"})
    assert r.status_code == 415
    assert _state(web, tenant, headers) == before
    assert "xml-tenant" not in str(before[0]) and "xml1" not in str(before[0])


def test_numbers_the_parser_cannot_hold_are_400_bad_json(web, routes):
    tenant, _, headers, found = routes
    before = _state(web, tenant, headers)
    for method, path in found:
        for body in NOT_NUMBERS:
            r = web.http.request(method, web.control + path, content=body,
                                 headers={**headers, "Content-Type": "application/json"})
            assert r.status_code == 400, (method, path, body[:40], r.status_code, r.text[:300])
            assert r.json()["error"]["code"] == "bad_json", (method, path, r.text[:300])
    assert _state(web, tenant, headers) == before
    r = web.http.post(web.control + "/api/tenants", content=HUGE_INT,
                      headers={**web.admin(), "Content-Type": "application/json"})
    assert "digits" in r.json()["error"]["message"]
    assert web.http.get(web.control + "/healthz").status_code == 200
    assert "unhandled_exception" not in web.planes.logs()


def test_json_types_with_or_without_charset_are_accepted(web, routes):
    tenant, key, headers, _ = routes
    for i, ctype in enumerate(ACCEPTED_TYPES):
        r = web.http.put(web.control + f"/api/vars/CT{i}", content=b'{"value": "v%d"}' % i,
                         headers={**web.auth(key), "Content-Type": ctype})
        assert r.status_code == 200, (ctype, r.text)
        assert web.http.get(web.control + f"/api/vars/CT{i}", headers=web.auth(key)).json()["value"] == f"v{i}"
    # big-but-sane numbers still parse: 10**30 where a string belongs is a field error, not a parse error
    r = web.http.put(web.control + "/api/vars/BIG", json={"value": 10 ** 30}, headers=web.auth(key))
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_field"
