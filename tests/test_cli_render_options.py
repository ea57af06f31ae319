"""Render options: one list (checked against the kernel's parser and its README), unknown keys
refused by name in `wbx render --options` (exit 2) and in `POST /api/oql/render?options=` (400)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import run_wbx
from workbooks.oql.render_options import RENDER_OPTION_KEYS

ROOT = Path(__file__).resolve().parent.parent
DOC = b"* One\ntext\n** Two\nmore\n"


def _parser_keys() -> set[str]:
    """The JSON keys `apply_json_options` in kernel/src/render/options.rs reads."""
    src = (ROOT / "kernel/src/render/options.rs").read_text()
    body = src[src.index("pub fn apply_json_options"):]
    body = body[: body.index("\n}\n")]
    return set(re.findall(r'(?:\bb|v\.get|or_else\(\|\| v\.get)\("([A-Za-z_]+)"\)', body))


def _readme_keys() -> set[str]:
    """The JSON keys of the options table in kernel/src/render/README.md."""
    text = (ROOT / "kernel/src/render/README.md").read_text()
    table = text[text.index("| JSON key |"):].split("\n\n", 1)[0]
    return set(re.findall(r"^\| `([A-Za-z_]+)` \|", table, re.MULTILINE))


def test_the_option_list_is_the_kernels():
    parser = _parser_keys()
    assert {"toc", "num", "H", "raw_html", "metadata", "macros"} <= parser  # the extraction found the code
    assert RENDER_OPTION_KEYS == parser
    assert _readme_keys() <= RENDER_OPTION_KEYS and RENDER_OPTION_KEYS - _readme_keys() <= {"headline_levels"}
    assert "raw_html" in RENDER_OPTION_KEYS


def test_cli_refuses_an_unknown_option_by_name():
    r = run_wbx("--json", "render", "-", "--options", '{"toc": true, "tok": 1}', input=DOC)
    assert r.returncode == 2
    err = json.loads(r.stdout)["error"]
    assert err["code"] == 2 and err["kind"] == "usage" and "unknown render option 'tok'" in err["message"]
    assert "toc" in err["hint"]  # the known ones are listed
    r = run_wbx("render", "-", "--options", "[1, 2]", input=DOC)
    assert r.returncode == 2 and b"JSON object" in r.stderr


def test_cli_known_options_still_apply():
    plain = run_wbx("render", "-", input=DOC)
    toc = run_wbx("render", "-", "--options", '{"toc": true, "raw_html": false, "H": 2}', input=DOC)
    assert plain.returncode == toc.returncode == 0, toc.stderr
    assert b'id="table-of-contents"' in toc.stdout and b'id="table-of-contents"' not in plain.stdout


def test_http_render_options(web):
    _, key = web.new_tenant("ropts")
    h = web.auth(key)
    url = web.control + "/api/oql/render"
    r = web.http.post(url, params={"options": '{"foo": true}'}, content=DOC, headers=h)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "bad_request" and err["message"] == "unknown render option 'foo'"
    r = web.http.post(url, params={"options": "{nope"}, content=DOC, headers=h)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    r = web.http.post(url, params={"options": '"toc"'}, content=DOC, headers=h)
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    r = web.http.post(url, params={"options": '{"toc": true}'}, content=DOC, headers=h)
    assert r.status_code == 200 and 'id="table-of-contents"' in r.text
    assert r.headers["content-type"].startswith("text/html")
    r = web.http.post(url, params={"options": '{"metadata": true}'}, content=DOC, headers=h)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert "html" in r.json()
    r = web.http.post(url, content=DOC, headers=h)  # no options: as before
    assert r.status_code == 200 and 'id="table-of-contents"' not in r.text
