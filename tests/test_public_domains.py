"""A custom domain serves only once its claimant proves control of it (DNS TXT or a well-known file).

Real planes; the DNS check asks a real (tiny) DNS server on 127.0.0.1 over UDP
(`WB_DOMAIN_RESOLVER=dns:...`), the HTTP check fetches from an HTTP server on 127.0.0.1 that the
operator override `WB_DOMAIN_HTTP_ADDR` names for a few hosts. Nothing else may be fetched:
redirects elsewhere, big or slow answers and non-public addresses fail the check.
"""

from __future__ import annotations

import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from dns_server import TxtServer  # noqa: E402


class Web:
    """A local web server standing in for the domain owner's own site (and an internal service)."""

    def __init__(self):
        self.files: dict[tuple[str, str], tuple[int, dict, bytes]] = {}
        self.seen: list[tuple[str, str]] = []
        self.delay = 0.0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                host = (self.headers.get("Host") or "").split(":")[0]
                owner.seen.append((host, self.path))
                status, headers, body = owner.files.get((host, self.path), (404, {}, b"no"))
                if headers.get("x-slow"):
                    time.sleep(8)
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


OVERRIDDEN = ("web-proof.example", "redirects.example", "big.example", "slow.example", "wrong.example")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from workbooks.web_control.launch import Planes

    data = tmp_path_factory.mktemp("domains") / "data"
    with TxtServer() as dns, Web() as site, Web() as internal:
        overrides = ",".join(f"{h}=127.0.0.1:{site.port}" for h in OVERRIDDEN)
        planes_env = {"WB_DOMAIN_RESOLVER": f"dns:127.0.0.1:{dns.port}", "WB_DOMAIN_HTTP_ADDR": overrides}
        with Planes(data, env=planes_env) as planes, httpx.Client(timeout=30) as http:
            admin = {"Authorization": f"Bearer {planes.admin_key()}"}
            keys = {}
            for name in ("owner", "rival"):
                assert http.post(planes.control_url + "/api/tenants", json={"name": name}, headers=admin).status_code == 201
                r = http.post(planes.control_url + f"/api/tenants/{name}/keys", json={"scope": "tenant"}, headers=admin)
                keys[name] = {"Authorization": f"Bearer {r.json()['key']}"}
                org = f"#+TITLE: Site of {name}\n* {name}\n"
                assert http.put(planes.control_url + "/api/workbooks/site", content=org.encode(),
                                headers=keys[name]).status_code == 200
            yield {"planes": planes, "http": http, "dns": dns, "site": site, "internal": internal, **keys}


def _claim(env, who: str, host: str):
    return env["http"].put(env["planes"].control_url + f"/api/domains/{host}", json={"workbook": "site"}, headers=env[who])


def _verify(env, who: str, host: str):
    return env["http"].post(env["planes"].control_url + f"/api/domains/{host}/verify", headers=env[who])


def _page(env, host: str):
    return env["http"].get(env["planes"].public_url + "/", headers={"Host": host})


def test_dns_proof(env):
    host = "docs.acme.example"
    r = _claim(env, "owner", host)
    assert r.status_code == 200, r.text
    claim = r.json()
    assert claim["status"] == "pending" and claim["token"]
    assert claim["verify"]["dns"] == {"name": f"_workbooks.{host}", "type": "TXT", "value": claim["token"]}
    assert claim["verify"]["http"]["url"] == f"http://{host}/.well-known/workbooks-challenge/{claim['token']}"
    # pending: nothing serves, and nobody else may claim it meanwhile
    assert _page(env, host).status_code == 404
    r = _claim(env, "rival", host)
    assert r.status_code == 409 and r.json()["error"]["code"] == "host_taken"
    # no record, then a wrong one: 422 with what each method found
    r = _verify(env, "owner", host)
    assert r.status_code == 422 and r.json()["error"]["code"] == "verification_failed"
    assert [d["method"] for d in r.json()["error"]["details"]] == ["dns", "http"]
    env["dns"].records[f"_workbooks.{host}"] = ["wbv-not-the-token", "v=spf1 -all"]
    assert _verify(env, "owner", host).status_code == 422
    assert _page(env, host).status_code == 404
    # the rival cannot verify a claim it does not hold, even with the record in place
    env["dns"].records[f"_workbooks.{host}"] = ["v=spf1 -all", claim["token"]]
    assert _verify(env, "rival", host).status_code == 404
    r = _verify(env, "owner", host)
    assert r.status_code == 200 and r.json()["status"] == "verified" and r.json()["proof"]["method"] == "dns"
    assert f"_workbooks.{host}" in env["dns"].questions
    page = _page(env, host)
    assert page.status_code == 200 and "Site of owner" in page.text
    listed = env["http"].get(env["planes"].control_url + "/api/domains", headers=env["owner"]).json()["domains"]
    assert [(d["host"], d["status"]) for d in listed] == [(host, "verified")] and "token" not in listed[0]
    assert _claim(env, "rival", host).status_code == 409
    assert "Site of owner" in _page(env, host).text
    # re-pointing its own verified domain keeps it verified
    assert _claim(env, "owner", host).json()["status"] == "verified"


def test_http_proof(env):
    host = "web-proof.example"
    token = _claim(env, "owner", host).json()["token"]
    path = f"/.well-known/workbooks-challenge/{token}"
    assert _verify(env, "owner", host).status_code == 422
    env["site"].files[(host, path)] = (200, {"Content-Type": "text/plain"}, (token + "\n").encode())
    r = _verify(env, "owner", host)
    assert r.status_code == 200 and r.json()["status"] == "verified" and r.json()["proof"]["method"] == "http"
    assert (host, path) in env["site"].seen
    assert "Site of owner" in _page(env, host).text


def test_http_check_fetches_only_the_claimed_host(env):
    internal = env["internal"]
    internal.files[("127.0.0.1", "/secret")] = (200, {}, b"internal data")
    for host, answer in {
        # a redirect to an internal address, to another host, to another path, to another port
        "redirects.example": lambda t: (302, {"Location": f"http://127.0.0.1:{internal.port}/secret"}, b""),
        "wrong.example": lambda t: (302, {"Location": f"http://other.example/.well-known/workbooks-challenge/{t}"}, b""),
        "big.example": lambda t: (200, {}, (t + "\n").encode() + b"x" * 100_000),
        "slow.example": lambda t: (200, {"x-slow": "1"}, t.encode()),
    }.items():
        token = _claim(env, "owner", host).json()["token"]
        env["site"].files[(host, f"/.well-known/workbooks-challenge/{token}")] = answer(token)
        t0 = time.monotonic()
        r = _verify(env, "owner", host)
        assert r.status_code == 422, (host, r.text)
        assert time.monotonic() - t0 < 7, host  # the check gives up after a few seconds
        assert _page(env, host).status_code == 404, host
    assert internal.seen == []
    # same host, other path or port: not followed either
    token = _claim(env, "owner", "redirects.example").json()["token"]
    for loc in (f"http://redirects.example/elsewhere/{token}",
                f"http://redirects.example:{internal.port}/.well-known/workbooks-challenge/{token}"):
        env["site"].files[("redirects.example", f"/.well-known/workbooks-challenge/{token}")] = (302, {"Location": loc}, b"")
        r = _verify(env, "owner", "redirects.example")
        assert r.status_code == 422 and "redirected away" in r.text, loc


def test_non_public_addresses_are_never_fetched():
    """Without the operator's override, a host that resolves to loopback or a private address is refused."""
    from workbooks.web_control import domain_proof

    with pytest.raises(domain_proof.ProofFailed, match="non-public"):
        domain_proof.check_http("localhost", "wbv-x")
    for ip in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "fc00::1", "::ffff:127.0.0.1",
               "0.0.0.0", "224.0.0.1", "100.64.0.1"):
        assert not domain_proof.public_address(ip), ip
    assert domain_proof.public_address("93.184.216.34")


def test_bad_claims(env):
    http, control = env["http"], env["planes"].control_url
    assert _verify(env, "owner", "never-claimed.example").status_code == 404
    r = http.put(control + "/api/domains/x.example", json={"workbook": "nope"}, headers=env["owner"])
    assert r.status_code == 404
    for bad in ("localhost", "1.2.3.4", "a..b", "-x.com", "x_y.com"):
        r = _verify(env, "owner", bad)
        assert r.status_code == 400 and r.json()["error"]["code"] in ("invalid_name", "reserved_domain"), bad


def test_an_unproved_claim_does_not_hold_a_domain_for_ever(tmp_path):
    from workbooks.store import Store
    from workbooks.store.hosts import PENDING_TTL_S, HostRegistry, HostTaken

    st = Store(tmp_path)
    for t in ("squat", "owner"):
        st.create_tenant(t)
        st.put_workbook(t, "site", source="* x\n", fragment="<p>x</p>", page="<p>x</p>", headlines=[], meta={}, sha="0" * 40)
    reg = HostRegistry(st)
    now = time.time()
    assert reg.claim("acme.example", "squat", "site", now=now)["status"] == "pending"
    with pytest.raises(HostTaken):
        reg.claim("acme.example", "owner", "site", now=now + PENDING_TTL_S - 60)
    assert reg.claim("acme.example", "owner", "site", now=now + PENDING_TTL_S + 1)["status"] == "pending"
    assert reg.get("acme.example", "squat") is None and reg.resolve("acme.example") is None
    st.close()


def test_hosts_registered_before_claims_existed(tmp_path):
    """An upgrade keeps local-style hosts serving; a real domain registered without proof must be proved."""
    from workbooks.store import Store
    from workbooks.store.hosts import HostRegistry

    st = Store(tmp_path)
    st.create_tenant("old")
    st.put_workbook("old", "site", source="* x\n", fragment="<p>x</p>", page="<p>x</p>", headlines=[], meta={}, sha="0" * 40)
    st.put_domain("old-site.test", "old", "site")
    st.put_domain("docs.old.example", "old", "site")
    reg = HostRegistry(st, migrate=True)
    assert reg.resolve("old-site.test") == ("old", "site")
    assert reg.resolve("docs.old.example") is None
    assert {d["host"]: d["status"] for d in reg.list("old")} == {"old-site.test": "verified", "docs.old.example": "pending"}
    HostRegistry(st, migrate=True)  # idempotent
    assert len(reg.list("old")) == 2
    st.close()
