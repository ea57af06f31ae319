"""The deploy route's bodies: Org text (text/plain, text/org, text/x-org) or JSON {source, message},
where message becomes the git commit message; anything else is 415, bad messages are 400, and
neither changes anything."""

from __future__ import annotations

import subprocess


def _git(repo, *args) -> str:
    return subprocess.run(["git", "-c", "safe.directory=*", "-C", str(repo), *args], capture_output=True,
                          check=True).stdout.decode()


def _put(web, key, wid, body: bytes, ctype: str | None):
    h = web.auth(key)
    if ctype is not None:
        h["Content-Type"] = ctype
    return web.http.put(web.control + f"/api/workbooks/{wid}", content=body, headers=h)


def _log(web, key) -> list[str]:
    r = web.http.get(web.control + "/api/git/log", headers=web.auth(key))
    assert r.status_code == 200
    return [c["msg"] for c in r.json()["commits"]]


def test_org_media_types_deploy(web):
    tenant, key = web.new_tenant("orgct")
    for i, ctype in enumerate(["text/org", "text/x-org", "text/plain; charset=utf-8", "TEXT/ORG;charset=UTF-8",
                               None]):
        r = _put(web, key, "doc", f"* version {i}\n".encode(), ctype)
        assert r.status_code == 200, (ctype, r.text)
        got = web.http.get(web.control + "/api/workbooks/doc", headers=web.auth(key)).json()
        assert got["source"] == f"* version {i}\n" and got["sha"] == r.json()["sha"]
    assert _log(web, key) == ["deploy doc"] * 5


def test_json_body_message_lands_in_git(web):
    tenant, key = web.new_tenant("jsonct")
    r = web.http.put(web.control + "/api/workbooks/notes", headers=web.auth(key),
                     json={"source": "#+TITLE: Notes\n* first\n", "message": "Add the notes page"})
    assert r.status_code == 200, r.text
    sha = r.json()["sha"]
    assert _log(web, key) == ["Add the notes page"]
    repo = web.data_dir / tenant
    assert _git(repo, "log", "-1", "--format=%H%n%B", sha).strip() == f"{sha}\nAdd the notes page"
    assert _git(repo, "show", f"{sha}:notes.org") == "#+TITLE: Notes\n* first\n"
    # a subject and a body (CRLF normalised, trailing blanks dropped); the log shows the subject
    r = web.http.put(web.control + "/api/workbooks/notes", headers={**web.auth(key), "Content-Type":
                     "application/json; charset=utf-8"},
                     content=b'{"source": "* second\\n", "message": "Fix typo \\u00e9t\\u00e9\\r\\n\\r\\nDetails here.  \\n\\n"}')
    assert r.status_code == 200, r.text
    assert _log(web, key)[0] == "Fix typo \u00e9t\u00e9"
    assert _git(repo, "log", "-1", "--format=%B").rstrip("\n") == "Fix typo \u00e9t\u00e9\n\nDetails here."
    # without a message: the default
    r = web.http.put(web.control + "/api/workbooks/notes", headers=web.auth(key), json={"source": "* third\n"})
    assert r.status_code == 200 and _log(web, key)[0] == "deploy notes"
    # If-Match works with JSON bodies too
    r = web.http.put(web.control + "/api/workbooks/notes", headers={**web.auth(key), "If-Match": f'"{sha}"'},
                     json={"source": "* stale\n", "message": "stale"})
    assert r.status_code == 412


def test_bad_messages_and_fields_are_400_and_change_nothing(web):
    tenant, key = web.new_tenant("badmsg")
    assert web.deploy(key, "keep", "* keep\n").status_code == 200
    repo = web.data_dir / tenant
    head = _git(repo, "rev-parse", "HEAD")
    bad = [
        ({"source": "* x\n", "message": 5}, "bad_field"),
        ({"source": "* x\n", "message": None}, "bad_field"),
        ({"source": "* x\n", "message": ["a"]}, "bad_field"),
        ({"source": "* x\n", "message": ""}, "bad_field"),
        ({"source": "* x\n", "message": "   \n\n  "}, "bad_field"),
        ({"source": "* x\n", "message": "\nsubject on line two"}, "bad_field"),
        ({"source": "* x\n", "message": "nul \x00 byte"}, "bad_field"),
        ({"source": "* x\n", "message": "escape \x1b[31m red"}, "bad_field"),
        ({"source": "* x\n", "message": "bare \r return"}, "bad_field"),
        ({"source": "* x\n", "message": "line\u2028separator"}, "bad_field"),
        ({"source": "* x\n", "message": "bidi \u202e reversed"}, "bad_field"),
        ({"source": "* x\n", "message": "s" * 201}, "bad_field"),
        ({"source": "* x\n", "message": "ok\n\n" + "b" * 2100}, "bad_field"),
        ({"source": "* x\n", "message": "ok\n" + "\n".join(["l"] * 60)}, "bad_field"),
        ({"source": 7}, "bad_field"),
        ({"source": "* nul \x00\n"}, "bad_request"),
        ({"message": "no source"}, "missing_field"),
        ({"source": "* x\n", "messge": "typo"}, "unknown_field"),
    ]
    for body, code in bad:
        r = web.http.put(web.control + "/api/workbooks/keep", headers=web.auth(key), json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["code"] == code, (body, r.text)
    for raw in (b"[]", b'"* text"', b"{", b'{"source": "\\ud800"}'):
        r = _put(web, key, "keep", raw, "application/json")
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_json", (raw, r.text)
    assert _git(repo, "rev-parse", "HEAD") == head
    assert web.http.get(web.control + "/api/workbooks/keep", headers=web.auth(key)).json()["source"] == "* keep\n"


def test_other_content_types_are_415(web):
    tenant, key = web.new_tenant("ct415")
    assert web.deploy(key, "keep", "* keep\n").status_code == 200
    head = _git(web.data_dir / tenant, "rev-parse", "HEAD")
    for ctype in ("application/xml", "text/html", "application/octet-stream", "multipart/form-data; boundary=b",
                  "application/x-www-form-urlencoded", "text/plain; charset=latin-1", "text/orgx", "image/png",
                  "application/json; charset=utf-16", "text/markdown"):
        r = _put(web, key, "keep", b"* replaced\n", ctype)
        assert r.status_code == 415, (ctype, r.text)
        err = r.json()["error"]
        assert err["code"] == "unsupported_media_type" and "text/org" in err["message"], err
    # and for a workbook that does not exist yet: not created
    assert _put(web, key, "other", b"* new\n", "application/xml").status_code == 415
    assert web.http.get(web.control + "/api/workbooks/other", headers=web.auth(key)).status_code == 404
    assert _git(web.data_dir / tenant, "rev-parse", "HEAD") == head
