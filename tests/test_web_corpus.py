"""Real Org documents (the conformance corpus) deploy through the control plane and publish:
each is a commit and a page, or a 422 with diagnostics; never a server error."""

from __future__ import annotations

import re
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "fixtures" / "conformance" / "corpus"


def test_corpus_deploys_and_publishes(web):
    tenant, key = web.new_tenant("corpus")
    docs = sorted(CORPUS.glob("*.org"))
    assert docs
    published = []
    for doc in docs:
        wid = re.sub(r"[^a-z0-9-]", "-", doc.stem.lower()).strip("-")
        r = web.deploy(key, wid, doc.read_bytes())
        assert r.status_code in (200, 422), (doc.name, r.status_code, r.text[:300])
        if r.status_code == 422:
            assert isinstance(r.json()["error"]["details"], list) and r.json()["error"]["details"]
            continue
        sha = r.json()["sha"]
        got = web.http.get(web.control + f"/api/workbooks/{wid}", headers=web.auth(key)).json()
        assert got["sha"] == sha and got["source"] == doc.read_text("utf-8")
        published.append(wid)
        page = web.http.get(web.public + "/", headers={"Host": f"{wid}.{tenant}.localhost"})  # its own host
        assert page.status_code == 200, (wid, page.text[:200])
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        assert "<title>" in page.text and "</html>" in page.text.lower()
    assert published, "no corpus document deployed"
    log = web.http.get(web.control + "/api/git/log?limit=100", headers=web.auth(key)).json()["commits"]
    assert len(log) == len(published)
