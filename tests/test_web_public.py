"""The public plane over real HTTP: Host → workbook, headers, ETag/304, gzip, clean URLs, feeds."""

from __future__ import annotations

import gzip
import json
import socket
import xml.etree.ElementTree as ET
from importlib import resources

import pytest

DEMO = resources.files("workbooks.samples").joinpath("demo.org").read_text("utf-8")


@pytest.fixture(scope="module")
def site(web):
    tenant, key = web.new_tenant("pub")
    wid = f"pub{tenant[3:]}".replace("x", "-")[:40]
    assert web.deploy(key, wid, DEMO).status_code == 200
    assert web.deploy(key, f"{wid}-notes", "#+TITLE: Notes\n* n\n").status_code == 200
    return {"tenant": tenant, "key": key, "wid": wid, "host": f"{wid}.{tenant}.localhost",
            "notes": f"{wid}-notes.{tenant}.localhost"}


def test_automatic_name_serves_the_workbook(web, site):
    r = web.public_get(site["host"])
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>Workbooks demo</title>" in r.text
    # with a port, upper case, a trailing dot
    for host in (site["host"] + ":4001", site["host"].upper(), site["host"] + "."):
        assert web.public_get(host).status_code == 200, host
    # unknown label, the short form (the primary tenant's only), another parent domain, another
    # tenant's namespace, too many labels, bare names, IP addresses
    for host in ("nothing-here.localhost", f"{site['wid']}.localhost", f"{site['wid']}.example.org",
                 f"{site['wid']}.other.localhost", f"x.{site['host']}", f"{site['wid']}.{site['tenant']}.example.org",
                 "localhost", "127.0.0.1", "127.0.0.1:4001"):
        r = web.public_get(host)
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_host", host


def test_security_and_cache_headers(web, site):
    import re

    from workbooks.page import header_csp, page_csp

    r = web.public_get(site["host"])
    csp = r.headers["content-security-policy"]
    # one policy: the page's own <meta> policy, plus only what a <meta> cannot carry
    meta = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', r.text).group(1)
    assert csp == header_csp(False) == meta.replace("&#x27;", "'") + "; frame-ancestors 'self'"
    assert meta.replace("&#x27;", "'") == page_csp(False)
    assert "img-src 'self' data: https:" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["cache-control"].startswith("public")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["etag"].startswith('"')
    assert "accept-encoding" in r.headers["vary"].lower()
    # nothing points at the control plane
    assert str(web.planes.control_port) not in r.text and "/api/" not in r.text


def test_etag_and_304(web, site):
    r = web.public_get(site["host"])
    etag = r.headers["etag"]
    r2 = web.public_get(site["host"], **{"If-None-Match": etag})
    assert r2.status_code == 304 and r2.content == b"" and r2.headers["etag"] == etag
    assert web.public_get(site["host"], **{"If-None-Match": f'"zzz", W/{etag}'}).status_code == 304
    assert web.public_get(site["host"], **{"If-None-Match": "*"}).status_code == 304
    assert web.public_get(site["host"], **{"If-None-Match": '"other"'}).status_code == 200
    # If-Modified-Since, when there is no If-None-Match
    lm = r.headers["last-modified"]
    assert web.public_get(site["host"], **{"If-Modified-Since": lm}).status_code == 304
    assert web.public_get(site["host"], **{"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200
    assert web.public_get(site["host"], **{"If-Modified-Since": "garbage"}).status_code == 200
    assert web.public_get(site["host"], **{"If-Modified-Since": lm, "If-None-Match": '"other"'}).status_code == 200


def test_gzip_when_asked(web, site):
    import httpx

    with httpx.Client() as c:
        raw = c.get(web.public + "/", headers={"Host": site["host"], "Accept-Encoding": "gzip"})
        assert raw.headers["content-encoding"] == "gzip"
        plain = c.get(web.public + "/", headers={"Host": site["host"], "Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers
        assert raw.text == plain.text  # httpx decodes; same page
        assert raw.headers["etag"] != plain.headers["etag"]
        refused = c.get(web.public + "/", headers={"Host": site["host"], "Accept-Encoding": "gzip;q=0, br"})
        assert "content-encoding" not in refused.headers
    # on the wire it really is gzip
    s = socket.create_connection(("127.0.0.1", web.planes.public_port))
    s.sendall(f"GET / HTTP/1.1\r\nHost: {site['host']}\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-encoding: gzip" in head.lower()
    assert b"<title>Workbooks demo</title>" in gzip.decompress(body)


def test_head_and_read_only(web, site):
    g = web.public_get(site["host"])
    h = web.http.head(web.public + "/", headers={"Host": site["host"]})
    assert h.status_code == 200 and h.content == b""
    assert h.headers["content-length"] == g.headers["content-length"] and h.headers["etag"] == g.headers["etag"]
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        r = web.http.request(method, web.public + "/", headers={"Host": site["host"]})
        assert r.status_code == 405, method
        assert r.json()["error"]["code"] == "method_not_allowed" and r.headers["allow"] == "GET, HEAD"
    r = web.http.post(web.public + "/api/workbooks/x", headers={"Host": site["host"]}, content=b"* x")
    assert r.status_code == 405


def test_a_host_serves_only_its_own_workbook(web, site):
    r = web.public_get(site["notes"])
    assert r.status_code == 200 and "<title>Notes</title>" in r.text
    # the tenant's other workbook is not reachable under this host, in any spelling
    for path in (f"/{site['wid']}-notes", f"/{site['wid']}-notes.html"):
        r = web.public_get(site["host"], path)
        assert r.status_code == 404 and "Notes" not in r.text, path
    # the workbook's own name and index.html lead to its page
    r = web.http.get(web.public + f"/{site['wid']}.html?x=1", headers={"Host": site["host"]})
    assert r.status_code == 301 and r.headers["location"] == "/?x=1"
    for path in (f"/{site['wid']}", "/index.html"):
        r = web.http.get(web.public + path, headers={"Host": site["host"]})
        assert r.status_code == 301 and r.headers["location"] == "/", path
    for path in ("/nope", "/a/b", "/../../etc/passwd", "/%2e%2e/x", "/.git/config", "/x.php"):
        r = web.public_get(site["host"], path)
        assert r.status_code in (404,), (path, r.status_code)
        assert r.json()["error"]["code"] in ("not_found",)


def test_changes_feed_and_sitemap_are_the_workbooks_own(web, site):
    r = web.public_get(site["host"], "/_changes")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"changes", "agent"}
    assert [c["msg"] for c in body["changes"]] == [f"deploy {site['wid']}"]
    assert set(body["changes"][0]) == {"sha", "ts", "author", "msg"} and body["changes"][0]["author"] == site["tenant"]
    assert [c["msg"] for c in web.public_get(site["notes"], "/_changes").json()["changes"]] == \
        [f"deploy {site['wid']}-notes"]
    # a new deploy shows at once, newest first, on its own workbook's host only
    sha = web.deploy(site["key"], site["wid"], DEMO + "\n* More\n").json()["sha"]
    body = web.public_get(site["host"], "/_changes").json()
    assert body["changes"][0]["sha"] == sha and len(body["changes"]) == 2
    assert sha not in web.public_get(site["notes"], "/_changes").text
    r = web.public_get(site["host"], "/feed.atom")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/atom+xml")
    ns = {"a": "http://www.w3.org/2005/Atom"}
    feed = ET.fromstring(r.content)
    entries = feed.findall("a:entry", ns)
    assert len(entries) == 2 and entries[0].find("a:id", ns).text.endswith(sha)
    assert all("notes" not in e.find("a:title", ns).text for e in entries)
    notes_feed = ET.fromstring(web.public_get(site["notes"], "/feed.atom").content)
    assert len(notes_feed.findall("a:entry", ns)) == 1
    r = web.public_get(site["host"], "/sitemap.xml")
    assert r.status_code == 200
    urls = [u.text for u in ET.fromstring(r.content).iter("{http://www.sitemaps.org/schemas/sitemap/0.9}loc")]
    assert urls == [f"http://{site['host']}/"]


def test_changes_capped_at_30(web):
    tenant, key = web.new_tenant("cap")
    for i in range(32):
        assert web.deploy(key, "capped", f"* v{i}\n").status_code == 200
    assert web.deploy(key, "other", "* other\n").status_code == 200
    host = f"capped.{tenant}.localhost"
    body = web.public_get(host, "/_changes").json()
    assert len(body["changes"]) == 30
    assert body["changes"][0]["msg"] == "deploy capped"
    ts = [c["ts"] for c in body["changes"]]
    assert ts == sorted(ts, reverse=True)


def test_deploy_is_visible_at_once_and_page_is_not_rendered_per_request(web, site):
    before = web.public_get(site["host"]).headers["etag"]
    web.deploy(site["key"], site["wid"], DEMO.replace("Workbooks demo", "Workbooks demo v2"))
    r = web.public_get(site["host"])
    assert "Workbooks demo v2" in r.text and r.headers["etag"] != before
    # the same bytes, the same ETag, every time
    a, b = web.public_get(site["host"]), web.public_get(site["host"])
    assert a.content == b.content and a.headers["etag"] == b.headers["etag"]


@pytest.mark.parametrize("host", [
    "", " ", "a b.localhost", "evil.com/../x", "x.localhost:99999", "x.localhost:abc", "[::1]", "[::1]:80",
    "x" * 300 + ".localhost", "under_score.localhost", "-lead.localhost", "trail-.localhost", "..localhost",
    "xn--\u00e9.localhost", "host\twith\ttabs", "a.localhost, b.localhost",
])
def test_hostile_host_headers(web, host):
    s = socket.create_connection(("127.0.0.1", web.planes.public_port))
    s.settimeout(10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: " + host.encode("utf-8") + b"\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    status = int(data.split(b" ", 2)[1])
    assert status in (400, 404), data[:200]
    body = data.partition(b"\r\n\r\n")[2]
    if body:
        assert json.loads(body)["error"]["code"] in ("bad_host", "unknown_host", "bad_request")
    assert b"Traceback" not in data


def test_missing_host_header(web):
    s = socket.create_connection(("127.0.0.1", web.planes.public_port))
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    assert int(data.split(b" ", 2)[1]) == 400


def test_csp_allows_only_the_shells_own_inline_blocks():
    import base64
    import hashlib
    import re

    from workbooks.page import render_page
    from workbooks.web_public.site import csp_for

    page = render_page("<style>evil{}</style><script>alert(1)</script>", title="", description="").encode()
    csp = csp_for(page)
    shell_css = re.search(rb"<style>(.*?)</style>", page, re.S).group(1)
    good = "'sha256-" + base64.b64encode(hashlib.sha256(shell_css).digest()).decode() + "'"
    bad = ["'sha256-" + base64.b64encode(hashlib.sha256(b).digest()).decode() + "'" for b in (b"evil{}", b"alert(1)")]
    assert f"style-src {good};" in csp and "script-src 'none'" in csp and not any(b in csp for b in bad)


def test_the_slow_path_serves_the_same_page(web, site):
    """A GET that carries a body skips the fast path; Quart serves the same bytes and headers."""
    fast = web.public_get(site["host"])
    slow = web.http.request("GET", web.public + "/", headers={"Host": site["host"]}, content=b"x")
    assert slow.status_code == 200 and slow.content == fast.content
    for k in ("etag", "content-security-policy", "cache-control", "content-type"):
        assert slow.headers[k] == fast.headers[k], k
    slow = web.http.request("GET", web.public + "/", headers={"Host": site["host"], "If-None-Match": fast.headers["etag"]},
                            content=b"x")
    assert slow.status_code == 304
    other = web.http.request("GET", web.public + "/", headers={"Host": site["notes"]}, content=b"x")
    assert other.status_code == 200 and "<title>Notes</title>" in other.text
    other = web.http.request("GET", web.public + f"/{site['wid']}-notes", headers={"Host": site["host"]}, content=b"x")
    assert other.status_code == 404


def test_csp_allows_the_shells_math_script():
    """A page with math carries the shell's math script; the header CSP allows exactly that one."""
    import base64
    import hashlib
    import re

    from workbooks.page import render_page
    from workbooks.web_public.site import csp_for

    page = render_page('<p><span class="math">x^2</span></p>', title="m", description="").encode()
    scripts = re.findall(rb"<script\b[^>]*>(.*?)</script>", page, re.S)
    csp = csp_for(page)
    for body in scripts:
        assert "'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'" in csp
    plain = csp_for(render_page("<p>x</p>", title="p", description="").encode())
    assert "script-src 'none'" in plain
