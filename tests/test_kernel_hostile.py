"""Hostile documents through the real oql.wasm: every structural op finishes inside the
kernel's deadline without trapping, returns valid JSON, and the instance stays usable.
(Timings and memory figures live in load/kernel_bench.py, not here.)"""

from __future__ import annotations

import json
import random

import pytest

from workbooks.oql.kernel import Kernel

N = 20_000
FAMILIES = {
    "unclosed_bold": "*bold " * N,
    "unclosed_verbatim": "=code " * N,
    "unclosed_links": "[[link " * N,
    "unclosed_blocks": "#+begin_src js :in x\n" * N,
    "unclosed_blocks_with_todo": "#+begin_example\n#+TODO: A B\n" * N,
    "drawers_without_end": ":DRAWER:\n" * N,
    "property_drawers_without_end": "* h :component:\n:PROPERTIES:\n:ID: x\n" * (N // 4),
    "one_megabyte_line": "x" * (1 << 20),
    "one_megabyte_headline": "* " + "a:b " * (1 << 18) + " :t:",
    "one_megabyte_planning": "* h\nSCHEDULED: " + "<2024-01-01 " * (1 << 16),
    "nested_lists": "".join(" " * i + "- item\n" for i in range(10_000)),
    "ten_thousand_stars": "*" * 10_000 + " deep :workflow:\n",
    "ten_thousand_levels": "".join("*" * i + " w :workflow:\n" for i in range(1, 2_000)),
    "unbalanced_header_args": "* w :workflow:\n** c :component:\n#+begin_src js " + "( [ \" :in " * N + "\n#+end_src\n",
    "same_value_everywhere": "* w :workflow:\n" + "** c :component:\n#+begin_src js :in x :out x :uses u :deps d\n#+end_src\n" * 5000,
    "distinct_unknown_args": "* w :workflow:\n** c :component:\n#+begin_src js " + "".join(f":a{i} " for i in range(N)) + "\n#+end_src\n",
    "many_components": "* w :workflow:\n" + "".join(f"** c{i} :component:\n#+begin_src js :in v{i} :out v{i+1}\n#+end_src\n" for i in range(3000)),
}


@pytest.fixture(scope="module")
def k():
    # Its own instance: 10,000 nested list levels is a 50 MB document, and wasm memory never
    # shrinks, so the process-wide default kernel should not carry that high-water mark.
    return Kernel()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hostile_family_never_traps(k, family):
    doc = FAMILIES[family]
    for op in ("parse_headlines", "tangle_plan", "validate"):
        out = k.call_raw(op, doc, deadline_ms=5000)
        if op == "tangle_plan" and family == "ten_thousand_levels":
            # 2,000 nested worlds: deeper than Python's json can decode; check the shape
            assert out.count(b'"name":"w"') == 1999 and out.endswith(b"]}" * 2000)
        else:
            json.loads(out)
    assert k.call_json("check_upgrade", doc, doc) == []
    assert k.call_json("parse_headlines", "* ok\n")[0]["title"] == "ok"


def test_deep_nesting_is_emitted_without_recursion(k):
    plan = k.call_json("tangle_plan", "".join("*" * i + " w :workflow:\n" for i in range(1, 400)))
    depth, w = 0, plan["worlds"][0]
    while w["workflows"]:
        w, depth = w["workflows"][0], depth + 1
    assert depth == 398
    rows = k.call_json("parse_headlines", FAMILIES["ten_thousand_stars"])
    assert rows[0]["level"] == 10_000 and rows[0]["tags"] == ["workflow"]


def test_chain_of_components_is_wired_linearly(k):
    (w,) = k.call_json("tangle_plan", FAMILIES["many_components"])["worlds"]
    assert len(w["edges"]) == 2999 and w["imports"] == [] and w["exports"] == ["v3000"]


def test_random_org_soup_never_traps(k):
    rng = random.Random(7)
    tokens = ["*", "* ", "** ", "\n", "\r\n", ":", "#+begin_src js", "#+end_src", "#+TODO: A | B", "SCHEDULED: ",
              "<2024-01-01", ">", "]", "[", "(", ")", "\"", ":PROPERTIES:", ":END:", ":workflow:", ":component:",
              " :in x", " :out x", "é", "\u2028", "\ufeff", "\t", "+1w", "<%%(", "[#A]", "COMMENT", ":SCHEDULE: "]
    for _ in range(300):
        doc = "".join(rng.choice(tokens) for _ in range(rng.randint(0, 200)))
        for op in ("parse_headlines", "tangle_plan", "validate"):
            json.loads(k.call_raw(op, doc))
        json.loads(k.call_raw("check_upgrade", doc, doc[::-1]))


def test_duplicate_producers_give_one_edge_per_consumer(k):
    (w,) = k.call_json("tangle_plan", FAMILIES["same_value_everywhere"])["worlds"]
    assert len(w["edges"]) == 5000 and all(e["from"] == "c" for e in w["edges"])
    assert w["components"][0]["uses"] == ["u"] and w["components"][0]["deps"] == ["d"]
    ds = k.call_json("validate", FAMILIES["distinct_unknown_args"])
    assert len(ds) == N and ds[0]["message"] == "unknown header argument `:a0`"


def test_control_characters_and_quotes_are_escaped(k):
    doc = '* a "quoted" \\ title\x01\x1f :t:\n:PROPERTIES:\n:K: v"\\\x07\n:END:\n'
    (row,) = k.call_json("parse_headlines", doc)
    assert row["title"] == 'a "quoted" \\ title\x01\x1f'
    assert row["props"] == {"K": 'v"\\\x07'}
