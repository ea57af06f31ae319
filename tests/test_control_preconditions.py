"""HTTP preconditions on deploy and delete (RFC 9110 section 13): a false If-Match / If-None-Match
is 412 precondition_failed with the current sha, and changes nothing."""

from __future__ import annotations

import os
import subprocess

ZERO = '"' + "0" * 40 + '"'


def _git(repo, *args) -> str:
    return subprocess.run(["git", "-c", "safe.directory=*", "-C", str(repo), *args], capture_output=True,
                          check=True).stdout.decode()


def _get(web, key, wid):
    return web.http.get(web.control + f"/api/workbooks/{wid}", headers=web.auth(key))


def _commits(web, tenant) -> str:
    return _git(web.data_dir / tenant, "rev-list", "--count", "HEAD").strip()


def _412(r, current):
    assert r.status_code == 412, r.text
    err = r.json()["error"]
    assert err["code"] == "precondition_failed"
    assert err["details"] == {"current": current}


def test_if_none_match_star_creates_only(web):
    tenant, key = web.new_tenant("inm")
    r = web.deploy(key, "doc", "* one\n", **{"If-None-Match": "*"})
    assert r.status_code == 200, r.text
    sha = r.json()["sha"]
    assert r.headers["etag"] == f'"{sha}"'
    # the workbook exists now: the same create-only request is refused, nothing changes
    r = web.deploy(key, "doc", "* two\n", **{"If-None-Match": "*"})
    _412(r, sha)
    assert "If-None-Match" in r.json()["error"]["message"]
    assert _get(web, key, "doc").json()["source"] == "* one\n"
    assert _commits(web, tenant) == "1"
    # an If-None-Match list naming the current ETag is false too; one naming another is true
    _412(web.deploy(key, "doc", "* two\n", **{"If-None-Match": f'{ZERO}, W/"{sha}"'}), sha)
    assert web.deploy(key, "doc", "* two\n", **{"If-None-Match": ZERO}).status_code == 200


def test_if_match_mismatch_and_missing_are_412(web):
    tenant, key = web.new_tenant("ifm")
    sha = web.deploy(key, "doc", "* one\n").json()["sha"]
    _412(web.deploy(key, "doc", "* two\n", **{"If-Match": ZERO}), sha)
    # strong comparison: a weak tag never matches, even the right sha
    _412(web.deploy(key, "doc", "* two\n", **{"If-Match": f'W/"{sha}"'}), sha)
    assert _get(web, key, "doc").json()["source"] == "* one\n"
    assert _commits(web, tenant) == "1"
    # the right one (quoted, bare, in a list, or *) goes through
    r = web.deploy(key, "doc", "* two\n", **{"If-Match": f'"{sha}"'})
    assert r.status_code == 200 and r.json()["sha"] != sha
    sha2 = r.json()["sha"]
    r = web.deploy(key, "doc", "* three\n", **{"If-Match": f'{ZERO}, "{sha2}"'})
    assert r.status_code == 200
    sha3 = r.json()["sha"]
    assert web.deploy(key, "doc", "* four\n", **{"If-Match": sha3}).status_code == 200
    assert web.deploy(key, "doc", "* five\n", **{"If-Match": "*"}).status_code == 200
    # If-Match on a workbook that does not exist: 412, and it is not created
    for value in (f'"{sha}"', "*"):
        _412(web.deploy(key, "fresh", "* x\n", **{"If-Match": value}), None)
    assert _get(web, key, "fresh").status_code == 404
    assert _commits(web, tenant) == "5"


def test_concurrent_create_only_deploys_one_wins(web):
    import threading

    tenant, key = web.new_tenant("race")
    results = []

    def one(i):
        r = web.deploy(key, "race", f"* writer {i}\n", **{"If-None-Match": "*"})
        results.append(r.status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] + [412] * 5, results
    assert _commits(web, tenant) == "1"


def test_delete_preconditions(web):
    tenant, key = web.new_tenant("del")
    sha = web.deploy(key, "doc", "* one\n").json()["sha"]
    h = web.auth(key)
    _412(web.http.delete(web.control + "/api/workbooks/doc", headers={**h, "If-Match": ZERO}), sha)
    _412(web.http.delete(web.control + "/api/workbooks/doc", headers={**h, "If-None-Match": "*"}), sha)
    assert _get(web, key, "doc").status_code == 200
    r = web.http.delete(web.control + "/api/workbooks/doc", headers={**h, "If-Match": f'"{sha}"'})
    assert r.status_code == 200 and r.json()["deleted"] is True
    # a missing workbook stays a 404 with preconditions (they are ignored when the answer is not 2xx)
    r = web.http.delete(web.control + "/api/workbooks/doc", headers={**h, "If-Match": f'"{sha}"'})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_conflicts_that_are_not_preconditions_stay_409(web):
    name = f"dup{os.getpid()}x409"
    r = web.http.post(web.control + "/api/tenants", json={"name": name}, headers=web.admin())
    assert r.status_code == 201
    r = web.http.post(web.control + "/api/tenants", json={"name": name}, headers=web.admin())
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
