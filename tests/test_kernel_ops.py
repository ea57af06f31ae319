"""tangle_plan, validate, check_upgrade and lint through the real oql.wasm: the behaviour a
workbook author sees (worlds, derived wiring, diagnostics, upgrade gates)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbooks.oql import default_kernel

CASES = Path(__file__).parent / "fixtures" / "cases"


@pytest.fixture(scope="module")
def k():
    return default_kernel()


def comp(name, lang="js", args="", body="run()"):
    return f"** {name} :component:\n#+begin_src {lang} {args}\n{body}\n#+end_src\n"


def test_nested_workflows_and_component_ownership(k):
    org = (
        "* outer :workflow:\n" + comp("a", args=":out x")
        + "** group\n*** deep :component:\n#+begin_src py :in x\n#+end_src\n"
        + "** inner :workflow:\n*** b :component:\n#+begin_src sh :in x :out y\n#+end_src\n"
        + "**** inner2 :workflow:\n" + "* stray :component:\n#+begin_src js\n#+end_src\n"
        + "* second :workflow:\nSCHEDULED: <2026-01-05 Mon 09:00 +1d>\n"
    )
    plan = k.call_json("tangle_plan", org)
    outer, second = plan["worlds"]
    assert [c["name"] for c in outer["components"]] == ["a", "deep"]
    assert outer["edges"] == [{"from": "a", "to": "deep"}]
    (inner,) = outer["workflows"]
    assert inner["name"] == "inner" and [c["name"] for c in inner["components"]] == ["b"]
    assert inner["imports"] == [] and inner["exports"] == ["y"]  # x comes from another world: no edge
    assert inner["workflows"][0]["name"] == "inner2" and inner["workflows"][0]["workflows"] == []
    assert outer["schedule"] is None
    assert second["schedule"] == {"active": True, "at": "2026-01-05T09:00", "repeat": "+1d"}
    assert second["components"] == [] and second["edges"] == []


def test_component_fields_from_header_args(k):
    org = ("* w :workflow:\n** c :component:\nprose\n#+NAME: n\n#+HEADER: :uses http,db\n#+HEADER: :dir /srv\n"
           "#+begin_src python -n 3 :deps requests, lxml :uses kv :persist :in \"raw data\" :out table\n"
           "  ,* starred\n  ,#+not a keyword\n  print(1)\n#+end_src\n#+begin_src js :out ignored\n#+end_src\n")
    (c,) = k.call_json("tangle_plan", org)["worlds"][0]["components"]
    assert c == {"deps": ["requests", "lxml"], "dir": "/srv", "in": "raw data", "lang": "python", "name": "c",
                 "out": "table", "persist": True, "src": "* starred\n#+not a keyword\nprint(1)", "uses": ["http", "db", "kv"]}


# Org's own answer (Emacs 28.2, Org 9.5.5: `(org-unescape-code-in-string BODY)`): a run of commas
# before `*` or `#+` loses exactly one comma, wherever the line is indented; other commas stay.
COMMA_BODY = ",,* two\n,* one\n,#+x\n,,#+y\n,z\n  ,* ind\n,,,* three"
COMMA_ORG = ",* two\n* one\n#+x\n,#+y\n,z\n  * ind\n,,* three"


def test_src_bodies_are_unescaped_like_org_in_tangle_and_render_alike(k):
    """issue 13 point 13: `,,* two` tangles as `,* two` (it was left alone), as render shows it."""
    org = f"* w :workflow:\n** c :component:\n#+begin_src sh\n{COMMA_BODY}\n#+end_src\n"
    (c,) = k.call_json("tangle_plan", org)["worlds"][0]["components"]
    assert c["src"] == COMMA_ORG
    html = k.call("render", org)
    import html as htmllib
    import re

    inner = html.split("<pre", 1)[1].split(">", 1)[1].split("</pre>", 1)[0]
    pre = htmllib.unescape(re.sub(r"<[^>]+>", "", inner))  # without the highlighting's spans
    assert pre.rstrip("\n") == COMMA_ORG, pre


def test_component_without_block_has_null_lang(k):
    org = "* w :workflow:\n** c :component:\n#+begin_example\n#+begin_src js\n#+end_src\n#+end_example\n#+begin_src js\nunterminated\n"
    (c,) = k.call_json("tangle_plan", org)["worlds"][0]["components"]
    assert c["lang"] is None and c["src"] == ""


def test_header_args_agree_with_org_babel(k):
    """Reference: Emacs's org-babel-parse-header-arguments (fixture from org-srcblocks.el)."""
    ref = json.loads((CASES / "workflow-srcblocks.srcblocks.json").read_text())
    first = {}
    for blk in ref:
        first.setdefault(blk["headline"], blk)
    comps = k.call_json("tangle_plan", (CASES / "workflow-srcblocks.org").read_text())["worlds"][0]["components"]
    assert len(comps) == 5
    for c in comps:
        blk = first[c["name"]]
        params = blk["params"] or {}
        assert c["lang"] == blk["lang"], c["name"]
        assert c["in"] == params.get(":in"), c["name"]
        assert c["out"] == params.get(":out"), c["name"]
        assert c["dir"] == params.get(":dir"), c["name"]
        assert c["persist"] == (":persist" in params), c["name"]
        if ":deps" in params:
            assert c["deps"] == [d.strip() for d in params[":deps"].split(",")]


def diags(k, org):
    return k.call_json("validate", org)


def test_validate_rules(k):
    org = ("* w :workflow:\n:PROPERTIES:\n:SCHEDULE: 0 25 * * *\n:END:\n"
           + comp("a", args=":in y :out x :frobnicate 1 :results silent :exports code :tangle no :var v=1 :session s")
           + comp("b", args=":in x :out y") + comp("b", args=":out y") + "** nolang :component:\nno block\n"
           + comp("d", args=":in ghost"))
    ds = diags(k, org)
    by = {(d["level"], d["scope"], d["message"]) for d in ds}
    assert ("warning", "a", "unknown header argument `:frobnicate`") in by
    assert ("error", "nolang", "component has no source block / language") in by
    assert ("error", "d", "input `ghost` has no upstream producer") in by
    assert ("error", "w", "output `y` has more than one producer: b, b") in by
    assert any(d["scope"] == "w" and d["message"].startswith("duplicate component name `b`") for d in ds)
    assert any(d["scope"] == "w" and d["message"] == "cycle in edges between components: a, b" for d in ds)
    assert any(d["scope"] == "w" and d["message"].startswith("invalid cron expression `0 25 * * *`") for d in ds)
    assert not any("results" in d["message"] or "session" in d["message"] for d in ds)
    assert all(list(d) == ["level", "message", "scope"] for d in ds)


@pytest.mark.parametrize("cron", ["0 7 * * *", "*/5 * * * *", "0 9-17/2 * jan-jun mon-fri", "@hourly", "@daily", "15 3 1,15 * 0", "0 0 * * 7"])
def test_valid_cron_is_quiet(k, cron):
    org = f"* w :workflow:\n:PROPERTIES:\n:SCHEDULE: {cron}\n:END:\n" + comp("a", args=":out x")
    assert diags(k, org) == []


@pytest.mark.parametrize("cron", ["0 7 * *", "60 * * * *", "* * 32 * *", "* * * 0 *", "* * * * mon-sun-x", "*/0 * * * *", "@reboot", "10-5 * * * *", "0 7 * * * *"])
def test_invalid_cron_is_an_error(k, cron):
    org = f"* w :workflow:\n:PROPERTIES:\n:SCHEDULE: {cron}\n:END:\n" + comp("a", args=":out x")
    (d,) = diags(k, org)
    assert d["level"] == "error" and d["scope"] == "w" and d["message"].startswith(f"invalid cron expression `{cron}`")


def test_nested_world_diagnostics_are_scoped_to_it(k):
    org = "* outer :workflow:\n" + comp("p", args=":out x") + "** inner :workflow:\n*** q :component:\n#+begin_src js :in x\n#+end_src\n"
    assert diags(k, org) == [{"level": "error", "message": "input `x` has no upstream producer", "scope": "q"}]


OLD = "* etl :workflow:\n" + comp("extract", args=":uses s3 :out raw") + comp("load", args=":in raw :out table") + "* gone :workflow:\n"


def test_upgrade_identical_or_growing_is_safe(k):
    assert k.call_json("check_upgrade", OLD, OLD) == []
    grown = "* etl :workflow:\n" + comp("extract", args=":out raw") + comp("load", args=":in raw :out table") + comp("extra", args=":out more") + "* gone :workflow:\n* brand new :workflow:\n"
    assert k.call_json("check_upgrade", OLD, grown) == []  # exports grew, imports shrank, a world was added


def test_upgrade_breaking_changes(k):
    new = "* etl :workflow:\n" + comp("extract", args=":uses s3 :uses gpu :out raw2") + comp("load", args=":in raw2")
    ds = k.call_json("check_upgrade", OLD, new)
    assert {"level": "error", "scope": "gone", "message": "workflow removed (breaking)"} in ds
    assert {"level": "error", "scope": "etl", "message": "export `table` removed (breaking)"} in ds
    assert {"level": "warning", "scope": "etl", "message": "new capability `gpu` now required"} in ds
    assert {"level": "error", "scope": "etl", "message": "component `extract` output type changed (breaking)"} in ds
    assert {"level": "error", "scope": "etl", "message": "component `load` output type changed (breaking)"} in ds
    assert len(ds) == 5


def test_lint_op_is_reserved_empty(k):
    assert k.call_json("lint", OLD) == []


def test_check_upgrade_verb(tmp_path):
    from conftest import run_wbx

    a, b = tmp_path / "a.org", tmp_path / "b.org"
    a.write_text(OLD)
    b.write_text("* etl :workflow:\n")
    r = run_wbx("check-upgrade", str(a), str(b))
    assert r.returncode == 0
    msgs = [d["message"] for d in json.loads(r.stdout)]
    assert "export `table` removed (breaking)" in msgs and "workflow removed (breaking)" in msgs
