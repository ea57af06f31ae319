"""The operator's switch for author HTML: `WB_RAW_HTML=0` in the environment (wbx render, the
control plane's deploys and /api/oql/render) and the tenant variable `WB_RAW_HTML` (that tenant's
deploys). Off drops author HTML; on lets it through balanced."""

from __future__ import annotations

import json

import pytest
from conftest import WebEnv, run_wbx

from workbooks.web_control.launch import Planes

DOC = (
    "#+TITLE: Switch\n* Intro\n"
    "#+HTML: <div class=\"authorbox\"><b>\n"
    "#+begin_export html\n<script>window.authorScript = 1</script>\n#+end_export\n"
    "Text with @@html:<u class=authorinline>@@inline@@html:</u>@@ markup.\n"
    "* Next\nplain words\n"
)
AUTHOR_MARKS = ("authorbox", "authorScript", "authorinline")


def has_author_html(html: str) -> bool:
    found = [m in html for m in AUTHOR_MARKS]
    assert len(set(found)) == 1, (found, html)  # all or nothing
    return found[0]


# --- wbx render ---------------------------------------------------------------------------------


def test_wbx_render_lets_author_html_through_balanced_by_default():
    r = run_wbx("render", "-", input=DOC.encode())
    assert r.returncode == 0, r.stderr
    html = r.stdout.decode()
    assert has_author_html(html)
    assert '<div class="authorbox"><b></b></div>' in html  # closed where its piece ends


@pytest.mark.parametrize("value", ["0", "false", "OFF", "no", "nonsense"])
def test_wbx_render_honours_wb_raw_html_off(value):
    for args in (["render", "-"], ["render", "-", "--page"], ["render", "-", "--options", '{"raw_html": true}'],
                 ["render", "-", "--json"]):
        r = run_wbx(*args, input=DOC.encode(), env={"WB_RAW_HTML": value})
        assert r.returncode == 0, r.stderr
        out = r.stdout.decode()
        if "--json" in args:
            out = json.loads(out)["data"]["html"]
        assert not has_author_html(out), (value, args)
        assert "plain words" in out and "inline" in out  # the document itself is all there


@pytest.mark.parametrize("value", ["1", "true", "on", ""])
def test_wbx_render_wb_raw_html_on_values(value):
    r = run_wbx("render", "-", input=DOC.encode(), env={"WB_RAW_HTML": value})
    assert r.returncode == 0 and has_author_html(r.stdout.decode())


# --- the control plane: per tenant ---------------------------------------------------------------


def _page(web: WebEnv, tenant: str, wid: str) -> str:
    r = web.public_get(f"{wid}.{tenant}.localhost")
    assert r.status_code == 200, r.text
    return r.text


def test_tenant_variable_turns_author_html_off_for_that_tenant_only(web):
    off_tenant, off_key = web.new_tenant("rawoff")
    on_tenant, on_key = web.new_tenant("rawon")
    r = web.http.put(web.control + "/api/vars/WB_RAW_HTML", json={"value": "0"}, headers=web.auth(off_key))
    assert r.status_code == 200, r.text
    for key in (off_key, on_key):
        r = web.deploy(key, "doc", DOC)
        assert r.status_code == 200, r.text
    off_page, on_page = _page(web, off_tenant, "doc"), _page(web, on_tenant, "doc")
    assert not has_author_html(off_page) and "plain words" in off_page
    assert has_author_html(on_page) and '<div class="authorbox"><b></b></div>' in on_page
    got = web.http.get(web.control + "/api/workbooks/doc", headers=web.auth(off_key)).json()
    assert not has_author_html(got["html"])
    # switched back on: the next deploy has it again
    r = web.http.put(web.control + "/api/vars/WB_RAW_HTML", json={"value": "1"}, headers=web.auth(off_key))
    assert r.status_code == 200
    r = web.deploy(off_key, "doc", DOC + "\nmore\n")
    assert r.status_code == 200, r.text
    assert has_author_html(_page(web, off_tenant, "doc"))


def test_switching_a_tenant_off_takes_author_html_out_of_pages_already_published(web):
    tenant, key = web.new_tenant("rawlive")
    for wid in ("one", "two"):
        assert web.deploy(key, wid, DOC).status_code == 200
    assert has_author_html(_page(web, tenant, "one")) and has_author_html(_page(web, tenant, "two"))
    commits = len(web.http.get(web.control + "/api/git/log", headers=web.auth(key)).json()["commits"])
    r = web.http.put(web.control + "/api/vars/WB_RAW_HTML", json={"value": "off"}, headers=web.auth(key))
    assert r.status_code == 200, r.text
    for wid in ("one", "two"):  # at once, with no redeploy
        page = _page(web, tenant, wid)
        assert not has_author_html(page) and "plain words" in page
        got = web.http.get(web.control + f"/api/workbooks/{wid}", headers=web.auth(key)).json()
        assert not has_author_html(got["html"])
    # the source did not change, so neither did git
    log = web.http.get(web.control + "/api/git/log", headers=web.auth(key)).json()["commits"]
    assert len(log) == commits
    # deleting the variable switches it back on for the published pages too
    assert web.http.delete(web.control + "/api/vars/WB_RAW_HTML", headers=web.auth(key)).status_code == 200
    assert has_author_html(_page(web, tenant, "one")) and has_author_html(_page(web, tenant, "two"))


# --- the control plane: globally -----------------------------------------------------------------


@pytest.fixture(scope="module")
def web_off(tmp_path_factory):
    data = tmp_path_factory.mktemp("rawoff")
    with Planes(data, env={"WB_LOG_LEVEL": "INFO", "WB_RAW_HTML": "0"}) as planes:
        env = WebEnv(planes)
        yield env
        env.http.close()


def test_global_switch_turns_author_html_off_for_every_tenant(web_off):
    tenant, key = web_off.new_tenant("glob")
    # a tenant cannot turn it back on
    r = web_off.http.put(web_off.control + "/api/vars/WB_RAW_HTML", json={"value": "1"}, headers=web_off.auth(key))
    assert r.status_code == 200
    r = web_off.deploy(key, "doc", DOC)
    assert r.status_code == 200, r.text
    page = _page(web_off, tenant, "doc")
    assert not has_author_html(page) and "plain words" in page
    for q in ("", "?options=" + json.dumps({"raw_html": True, "toc": False})):
        r = web_off.http.post(web_off.control + "/api/oql/render" + q, content=DOC.encode(), headers=web_off.auth(key))
        assert r.status_code == 200, r.text
        assert not has_author_html(r.text) and "plain words" in r.text
