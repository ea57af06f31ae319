"""The public plane's /metrics, and its page cache bounded in bytes (WB_PAGE_CACHE_MB, LRU).

One public process with a 0.25 MB cache; pages of ~100 KB each (random text: gzip cannot shrink
it much), so only a couple fit and every further page evicts the least recently used one.
"""

from __future__ import annotations

import os
import re

import httpx
import pytest

LIMIT_MB = 0.25


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from workbooks.web_control.launch import Planes

    data = tmp_path_factory.mktemp("metrics") / "data"
    with Planes(data, env={"WB_PAGE_CACHE_MB": str(LIMIT_MB)}) as planes, httpx.Client(timeout=30) as http:
        admin = {"Authorization": f"Bearer {planes.admin_key()}"}
        assert http.post(planes.control_url + "/api/tenants", json={"name": "m"}, headers=admin).status_code == 201
        keys = {}
        for scope in ("tenant", "operator"):
            r = http.post(planes.control_url + "/api/tenants/m/keys", json={"scope": scope}, headers=admin)
            keys[scope] = {"Authorization": f"Bearer {r.json()['key']}"}
        for i in range(6):
            org = f"#+TITLE: Page {i}\n* Big\n" + "\n\n".join(os.urandom(3000).hex() for _ in range(12)) + "\n"
            r = http.put(planes.control_url + f"/api/workbooks/p{i}", content=org.encode(), headers=keys["tenant"])
            assert r.status_code == 200, r.text
        yield {"planes": planes, "http": http, "admin": admin, **keys}


def scrape(env) -> dict[str, float]:
    r = env["http"].get(env["planes"].public_url + "/metrics", headers=env["operator"])
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[str, float] = {}
    for line in r.text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        name = re.sub(r'pid="\d+",?', "", name).replace("{}", "")
        out[name] = out.get(name, 0) + float(value)
    return out


def get(env, i: int, **headers) -> httpx.Response:
    return env["http"].get(env["planes"].public_url + "/", headers={"Host": f"p{i}.m.localhost", **headers})


def test_metrics_need_an_operator_key(env):
    url = env["planes"].public_url + "/metrics"
    r = env["http"].get(url)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert env["http"].get(url, headers={"Authorization": "Bearer wbk_nope"}).status_code == 401
    r = env["http"].get(url, headers=env["tenant"])
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert env["http"].get(url, headers=env["admin"]).status_code == 200
    # whatever the Host says
    assert env["http"].get(url, headers={**env["operator"], "Host": "p0.m.localhost"}).status_code == 200


def test_requests_bytes_and_cache_figures(env):
    before = scrape(env)
    r = get(env, 0, **{"Accept-Encoding": "identity"})
    assert r.status_code == 200
    size = len(r.content)
    assert get(env, 0, **{"Accept-Encoding": "identity"}).status_code == 200
    assert env["http"].get(env["planes"].public_url + "/", headers={"Host": "nothing.m.localhost"}).status_code == 404
    after = scrape(env)
    assert after['wb_public_requests_total{status="200"}'] - before.get('wb_public_requests_total{status="200"}', 0) >= 3
    assert after['wb_public_requests_total{status="404"}'] - before.get('wb_public_requests_total{status="404"}', 0) == 1
    assert after["wb_public_bytes_sent_total"] - before["wb_public_bytes_sent_total"] >= 2 * size
    assert after["wb_public_page_cache_hits_total"] - before["wb_public_page_cache_hits_total"] >= 1
    assert after["wb_public_page_cache_limit_bytes"] == int(LIMIT_MB * 1024 * 1024)


def test_page_cache_stays_within_its_bytes_and_evicts_the_least_recently_used(env):
    limit = int(LIMIT_MB * 1024 * 1024)
    sizes = []
    for i in range(6):
        plain = get(env, i, **{"Accept-Encoding": "identity"})
        assert plain.status_code == 200 and f"<title>Page {i}</title>" in plain.text
        zipped = get(env, i, **{"Accept-Encoding": "gzip"})
        assert zipped.headers["content-encoding"] == "gzip"
        sizes.append(len(plain.content) + zipped.num_bytes_downloaded)  # what the cache holds for it
        m = scrape(env)
        assert 0 < m["wb_public_page_cache_bytes"] <= limit, m
    assert limit / 3 < min(sizes) and 2 * max(sizes) + 4096 < limit  # two fit, three do not
    m = scrape(env)
    assert m["wb_public_page_cache_evictions_total"] >= 3 and m["wb_public_page_cache_entries"] < 6
    # the most recent page is a hit; the first one was evicted long ago: a miss
    hits, misses = m["wb_public_page_cache_hits_total"], m["wb_public_page_cache_misses_total"]
    assert get(env, 5).status_code == 200
    m = scrape(env)
    assert (m["wb_public_page_cache_hits_total"] - hits, m["wb_public_page_cache_misses_total"] - misses) == (1, 0)
    assert get(env, 0).status_code == 200
    m2 = scrape(env)
    assert (m2["wb_public_page_cache_hits_total"] - m["wb_public_page_cache_hits_total"],
            m2["wb_public_page_cache_misses_total"] - m["wb_public_page_cache_misses_total"]) == (0, 1)
    # LRU, not FIFO (a page costs ~124 KB with its gzip: two fit in 0.25 MB, three do not).
    # p0 and p5 are cached, p5 least recently used; touching p5 then loading p1 must evict p0.
    def delta(before, after):
        return (after["wb_public_page_cache_hits_total"] - before["wb_public_page_cache_hits_total"],
                after["wb_public_page_cache_misses_total"] - before["wb_public_page_cache_misses_total"])

    for i, want in ((5, (1, 0)), (1, (0, 1)), (5, (1, 0)), (0, (0, 1))):
        before = scrape(env)
        assert get(env, i).status_code == 200
        after = scrape(env)
        assert delta(before, after) == want, (i, delta(before, after))
        assert after["wb_public_page_cache_bytes"] <= limit
