"""The `wb` tool through a real OQL pool (a broker and a worker process on ipc sockets): the kernel
verbs on working-dir files, confinement of FILE, `var get` with secrets shown only as
[secret:KEY], and the exec gate on verbs that write."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pool_harness import BarePool  # noqa: E402

from workbooks.agent.secrets import Secrets  # noqa: E402
from workbooks.agent.tools.base import ToolContext  # noqa: E402
from workbooks.agent.tools.wb import WB  # noqa: E402
from workbooks.web_control.oql import PoolOql  # noqa: E402

SECRET = "pk_live_51Hq9zXgRk2"
DOC = """#+TITLE: Site
#+SETUPFILE: setup.org
* TODO Write the post :blog:
* WAIT Review it
* Build :workflow:
** fetch :component:
#+begin_src python :out data.json
print(1)
#+end_src
"""


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    p = BarePool(tmp_path_factory.mktemp("wbpool"), workers=1)
    yield p
    p.stop()


@pytest.fixture
def wd(tmp_path) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    (d / "site.org").write_text(DOC)
    (d / "setup.org").write_text("#+TODO: TODO WAIT | DONE\n")
    (tmp_path / "outside.org").write_text("* Outside\n")
    return d


async def var_get(key: str):
    from workbooks.errors import BadRequest

    if not key.replace("_", "").isalnum():
        raise BadRequest(f"invalid variable name {key!r}")
    return {"API_TOKEN": (SECRET, True), "REGION": ("eu-west", False)}.get(key)


def run_wb(pool, wd: Path, *argses, exec_=False, extra=None):
    """Call the wb tool once per args with a pool client made inside the trio run."""

    async def go():
        oql = PoolOql(pool.client_endpoint)
        ctx = ToolContext(tenant="dev", run_id="run-1", data_dir=wd.parent, workdir=wd, exec=exec_, oql=oql,
                          var_get=var_get, secrets=Secrets({"API_TOKEN": SECRET}), extra=extra or {})
        try:
            return [await WB(ctx, {"args": a}) for a in argses]
        finally:
            await oql.aclose()

    return trio.run(go)


def served(pool) -> int:
    return sum(w["served"] for w in pool.stats()["workers"])


def test_kernel_verbs_on_workdir_files(pool, wd):
    before = served(pool)
    q, t, lint, html, page, toc, toc2 = run_wb(pool, wd, "query site.org", ["tangle", "site.org"], "lint site.org",
                                               "render site.org", "render site.org --page", "render --toc site.org",
                                               """render --options '{"toc": true}' site.org""")
    rows = json.loads(q.output)
    assert [(r["state"], r["title"]) for r in rows[:2]] == [("TODO", "Write the post"), ("WAIT", "Review it")]  # setup file's TODO line
    assert q.exit_code == 0
    plan = json.loads(t.output)
    assert plan["worlds"][0]["name"] == "Build" and plan["worlds"][0]["components"][0]["name"] == "fetch"
    assert isinstance(json.loads(lint.output), list) and lint.exit_code == 0
    assert "Write the post" in html.output and "<html" not in html.output
    assert page.output.lstrip().lower().startswith("<!doctype html") and "<title>Site</title>" in page.output
    assert "table-of-contents" in toc.output and "table-of-contents" not in html.output
    assert toc2.output == toc.output
    assert served(pool) - before >= 7  # every verb went through the pool's worker


def test_lint_reports_unreadable_setup_files_with_lines(pool, wd):
    (wd / "bad.org").write_text("#+SETUPFILE: ../outside.org\n* A\n")
    (r,) = run_wb(pool, wd, "lint bad.org")
    diags = json.loads(r.output)
    assert diags[0]["line"] == 1 and "outside the document's folder" in diags[0]["message"]


def test_files_are_confined_and_errors_are_answers(pool, wd, tmp_path):
    os.symlink(tmp_path / "outside.org", wd / "link.org")
    outs = run_wb(pool, wd, "query ../outside.org", f"query {tmp_path}/outside.org", "query link.org", "query nope.org",
                  "query", "frobnicate x", "query 'unbalanced", "", "render site.org --options '{\"bogus\":1}'",
                  "render a.org b.org", "render --wat site.org")
    texts = [o.output for o in outs]
    assert texts[0] == "read blocked: path escapes your working dir (../outside.org)"
    assert texts[1] == f"read blocked: path escapes your working dir ({tmp_path}/outside.org)"
    assert texts[2] == "read blocked: path escapes your working dir (link.org)"
    assert texts[3] == "not found: nope.org"
    assert texts[4].startswith("wb query: expected one FILE") and outs[4].exit_code == 2
    assert texts[5].startswith("wb: unknown verb frobnicate") and outs[5].exit_code == 2
    assert texts[6].startswith("wb error: cannot split the arguments")
    assert texts[7].startswith("usage: wb query FILE")
    assert texts[8].startswith("wb render: --options:") and "bogus" in texts[8]
    assert texts[9].startswith("wb render: expected one FILE") and texts[10].startswith("wb render: unknown flag --wat")
    (wd / "bin.org").write_bytes(b"* \xff\xfe\n")
    assert run_wb(pool, wd, "query bin.org")[0].output == "wb error: bin.org is not UTF-8 text"


def test_var_get_shows_secrets_only_as_placeholders(pool, wd):
    sec, plain, missing, bad = run_wb(pool, wd, "var get API_TOKEN", "var get REGION", "var get NOPE", "var get '../x'")
    assert bad.output == "wb error: invalid variable name '../x'" and bad.exit_code == 1
    assert sec.output == "[secret:API_TOKEN]" and SECRET not in sec.output
    assert plain.output == "eu-west"
    assert missing.output == "not found: var NOPE" and missing.exit_code == 1


def test_writing_verbs_need_exec(pool, wd):
    outs = run_wb(pool, wd, "var set REGION us", "deploy site.org", "bundle site.org", "unbundle x.html", "fetch http://x")
    assert [o.output for o in outs] == [
        "wb var set not permitted (no exec capability)",
        "wb deploy not permitted (no exec capability)",
        "wb bundle not permitted (no exec capability)",
        "wb unbundle not permitted (no exec capability)",
        "wb fetch not permitted (no exec capability)",
    ]
    assert all(o.exit_code == 1 and o.error == "no_exec" for o in outs)
    seen = []

    async def var_set(k, v):
        seen.append((k, v))

    ok, deploy = run_wb(pool, wd, "var set REGION us", "deploy site.org", exec_=True, extra={"var_set": var_set})
    assert ok.output == "set REGION" and seen == [("REGION", "us")]
    assert deploy.output.startswith("wb deploy: not available to agents")


def test_a_kernel_failure_is_an_answer(pool, wd):
    async def go():
        class Down:
            async def call(self, op, args, deadline_ms=10000):
                from workbooks.pool.client import PoolError

                raise PoolError("no_workers", "no worker is available")

        ctx = ToolContext(tenant="dev", run_id="r", data_dir=wd.parent, workdir=wd, oql=Down())
        return await WB(ctx, {"args": "query site.org"}), await WB(
            ToolContext(tenant="dev", run_id="r", data_dir=wd.parent, workdir=wd), {"args": "query site.org"})

    down, none = trio.run(go)
    assert down.output == "wb error: no_workers: no worker is available" and down.exit_code == 1
    assert none.output == "wb error: the kernel is not available in this run"


def test_toolkit_list_show_and_search(pool, wd, monkeypatch):
    monkeypatch.delenv("WB_TOOLKITS_PATH", raising=False)
    tk = wd.parent / "dev" / "toolkits" / "rsync"  # the tenant repo's toolkits/ (data_dir is wd.parent)
    (tk / "skills").mkdir(parents=True)
    (tk / "manifest.org").write_text(
        "#+TOOLKIT: rsync\n#+STATUS: beta\n#+TAGLINE: Copy trees over ssh\n\n"
        "* rsync :toolkit:\n  :PROPERTIES:\n  :ID: rsync\n  :END:\n  Mirrors directories.\n")
    (tk / "skills" / "mirror.org").write_text("#+TITLE: mirror\n* Steps\n  #+CAPTION: dry run first\n  rsync -an src/ dst/\n")
    lst, show, skill, found, missing, usage = run_wb(
        pool, wd, "toolkit list", "toolkit show rsync", "toolkit show rsync mirror", "toolkit search dry",
        "toolkit show nope", "toolkit sign rsync")
    assert lst.output == "rsync            beta         Copy trees over ssh" and lst.exit_code == 0
    assert "Skills (read with `wb toolkit show rsync <skill>`):\n  mirror" in show.output
    assert skill.output.startswith("TOC (CAPTIONs):\n  • dry run first\n")
    assert "dry run first" in found.output
    assert missing.output == "no such toolkit: nope" and missing.exit_code == 4
    assert usage.output.startswith("usage: toolkit list") and usage.exit_code == 2
    assert str(wd.parent) not in "".join(o.output for o in (lst, show, skill, found))  # no host path
