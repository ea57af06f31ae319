"""tangle_plan's source-block reading against Emacs (org-element + org-babel-parse-header-arguments)
on every section of the corpus and the synthetic agendas: which block is a section's first
src block, its language, and its `:in`/`:out`/`:dir`/`:uses`/`:persist` header arguments.

Every headline is made a component (one more star, a `:component:` tag, all under one
`:workflow:` root), so the plan lists one component per section, in document order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbooks.oql import default_kernel

CONF = Path(__file__).parent / "fixtures" / "conformance"
DOCS = sorted((CONF / "corpus").glob("*.org")) + sorted((CONF / "synthetic").glob("*.org"))


def ref_for(org: Path) -> Path:
    return org.parent / f"{org.stem}.srcblocks.json" if org.parent.name == "synthetic" else CONF / f"{org.stem}.srcblocks.json"


def as_components(text: str, heads: list[dict]) -> str:
    lines = text.split("\n")
    for h in heads:
        lines[h["line"] - 1] = "*" + lines[h["line"] - 1] + " :component:"
    return "* root :workflow:\n" + "\n".join(lines)


@pytest.mark.parametrize("org", DOCS, ids=[f"{p.parent.name}/{p.name}" for p in DOCS])
def test_first_src_block_of_every_section_matches_org(org, capsys):
    k = default_kernel()
    text = org.read_text(encoding="utf-8")
    heads = k.call_json("parse_headlines", text)
    blocks = json.loads(ref_for(org).read_text())
    plan = k.call_json("tangle_plan", as_components(text, heads))
    comps = plan["worlds"][0]["components"] if heads else []
    assert len(comps) == len(heads)
    bounds = [h["line"] for h in heads] + [10**9]
    checked = with_block = 0
    problems = []
    for i, c in enumerate(comps):
        first = next((b for b in blocks if bounds[i] < b["begin_line"] < bounds[i + 1]), None)
        checked += 1
        if first is None:
            if c["lang"] is not None or c["src"] != "":
                problems.append(f"{heads[i]['title']!r}: kernel found a block Org does not see")
            continue
        with_block += 1
        p = first["params"] or {}
        got = {"lang": c["lang"], "in": c["in"], "out": c["out"], "dir": c["dir"], "persist": c["persist"]}
        want = {"lang": first["lang"], "in": p.get(":in") or None, "out": p.get(":out") or None,
                "dir": p.get(":dir") or None, "persist": ":persist" in p}
        if got != want:
            problems.append(f"{heads[i]['title']!r} (line {heads[i]['line']}): kernel {got} org {want}")
        if ":uses" in p and p[":uses"] not in c["uses"]:
            problems.append(f"{heads[i]['title']!r}: uses {c['uses']} lacks {p[':uses']!r}")
    with capsys.disabled():
        print(f"\n  {org.parent.name}/{org.name}: {checked} sections, {with_block} with a src block, {len(problems)} mismatches", end="")
    assert not problems, "\n".join(problems[:20])


RANDOM = sorted((Path(__file__).parent / "fixtures" / "cases").glob("random-src-*.org"))


@pytest.mark.parametrize("org", RANDOM, ids=[p.name for p in RANDOM])
def test_adversarial_header_arguments_match_org_babel(org):
    """Brackets, quotes, colons, #+HEADER lines and switches, generated at random
    (gen_random_srcblocks.py); Org's parse is the reference (a key without value is nil)."""
    ref = json.loads(org.with_suffix(".srcblocks.json").read_text())
    comps = default_kernel().call_json("tangle_plan", org.read_text(encoding="utf-8"))["worlds"][0]["components"]
    assert len(comps) == len(ref) > 50
    nz = lambda v: None if v in (None, "", "nil") else v  # noqa: E731
    for c, b in zip(comps, ref):
        p = b["params"] or {}
        want = {"lang": b["lang"], "in": nz(p.get(":in")), "out": nz(p.get(":out")), "dir": nz(p.get(":dir")), "persist": ":persist" in p}
        got = {"lang": c["lang"], "in": c["in"], "out": c["out"], "dir": c["dir"], "persist": c["persist"]}
        assert got == want, (c["name"], p)
