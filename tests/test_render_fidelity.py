"""Fidelity of `render` against Emacs's own HTML export (ox-html, Org 9.5) on the corpus.

Per corpus file: same number of headings per level, paragraphs, list items, table cells, src
blocks (with languages), footnotes and images; the same set of link targets (internal links are
compared by the text of the element they point to, since Emacs's ids are random); and visible
text at least 98% similar (difflib ratio, computed block by block: equal blocks count whole,
differing runs are compared character by character, which equals the character-level ratio
where it matters and runs in seconds instead of hours on the 881 KB manual).

The reference exports are tests/fixtures/conformance/<name>.export.html, regenerated with
tests/fixtures/conformance/regen_html.sh. `#+SETUPFILE:` is resolved on the host side
(workbooks.page.resolve_setupfiles), exactly as `wbx render FILE` does, since the kernel has no
file access. Run as a script to print the table: python3 tests/test_render_fidelity.py
"""

from __future__ import annotations

import difflib
import re
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CONF = HERE / "fixtures" / "conformance"
CORPUS = CONF / "corpus"
NAMES = sorted(p.stem for p in CORPUS.glob("*.org"))

BLOCK_TAGS = {
    "p", "li", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "td", "th", "div", "tr",
    "blockquote", "ul", "ol", "dl", "table", "caption", "label", "br", "hr",
}


class Skeleton(HTMLParser):
    """Structural facts of an HTML fragment."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: Counter = Counter()
        self.src_langs: Counter = Counter()
        self.footdefs = 0
        self.hrefs: list[str] = []
        self.ids: dict[str, int] = {}  # id -> index into blocks where its text starts
        self.blocks: list[str] = []
        self.cur: list[str] = []
        self.skip = 0
        self.id_stack: list[tuple[str, str, int]] = []
        self.id_text: dict[str, str] = {}
        self.open_ids: list[list] = []  # [id, tag, depth, text parts]
        self.depth = 0

    def _flush(self) -> None:
        t = " ".join("".join(self.cur).split())
        if t:
            self.blocks.append(t)
        self.cur = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] += 1
        if tag in BLOCK_TAGS:
            self._flush()
        if tag in ("style", "script"):
            self.skip += 1
        cls = a.get("class") or ""
        if tag == "pre" and cls.startswith("src"):
            m = re.match(r"src src-(\S+)", cls)
            self.src_langs[m.group(1) if m else ""] += 1
        if tag == "div" and cls == "footdef":
            self.footdefs += 1
        if tag == "a" and a.get("href") is not None:
            self.hrefs.append(a["href"])
        if tag not in ("br", "hr", "img", "col", "meta", "input"):
            self.depth += 1
            if a.get("id"):
                self.open_ids.append([a["id"], tag, self.depth, []])

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag in BLOCK_TAGS:
            self._flush()
        if tag in ("style", "script"):
            self.skip = max(0, self.skip - 1)
        if tag not in ("br", "hr", "img", "col", "meta", "input"):
            while self.open_ids and self.open_ids[-1][2] >= self.depth:
                i, _t, _d, parts = self.open_ids.pop()
                self.id_text[i] = " ".join("".join(parts).split())[:80]
            self.depth -= 1

    def handle_data(self, data):
        if self.skip:
            return
        self.cur.append(data)
        for o in self.open_ids:
            if sum(len(p) for p in o[3]) < 200:
                o[3].append(data)

    def close(self):
        super().close()
        self._flush()


def skeleton(html: str) -> Skeleton:
    s = Skeleton()
    s.feed(html)
    s.close()
    return s


def facts(html: str) -> dict:
    s = skeleton(html)
    targets = set()
    for h in s.hrefs:
        if h.startswith("#"):
            t = s.id_text.get(h[1:])
            targets.add(("#", t if t is not None else "?unresolved"))
        else:
            targets.add(h)
    return {
        "headings": tuple(s.tags[f"h{k}"] for k in range(1, 7)),
        "paragraphs": s.tags["p"],
        "list_items": s.tags["li"] + s.tags["dt"],
        "table_cells": s.tags["td"] + s.tags["th"],
        "src_blocks": sorted(s.src_langs.items()),
        "footnotes": s.footdefs,
        "images": s.tags["img"],
        "targets": targets,
        "blocks": s.blocks,
    }


def _char_matches(a: str, b: str) -> int:
    if not a or not b:
        return 0
    if len(a) * len(b) > 25_000_000:
        # Very long differing runs: compare word by word, counting matched characters.
        wa, wb = a.split(" "), b.split(" ")
        sm = difflib.SequenceMatcher(None, wa, wb, autojunk=False)
        return sum(sum(len(w) + 1 for w in wa[m.a : m.a + m.size]) for m in sm.get_matching_blocks())
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return sum(m.size for m in sm.get_matching_blocks())


def text_ratio(blocks_a: list[str], blocks_b: list[str]) -> float:
    """difflib ratio of the two texts (blocks joined by spaces), computed block-first."""
    len_a = sum(len(x) for x in blocks_a) + max(0, len(blocks_a) - 1)
    len_b = sum(len(x) for x in blocks_b) + max(0, len(blocks_b) - 1)
    if len_a + len_b == 0:
        return 1.0
    sm = difflib.SequenceMatcher(None, blocks_a, blocks_b, autojunk=False)
    matched = 0
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            matched += sum(len(x) + 1 for x in blocks_a[i1:i2])
        elif tag == "replace":
            matched += _char_matches(" ".join(blocks_a[i1:i2]), " ".join(blocks_b[j1:j2]))
    matched = min(matched, len_a, len_b)
    return 2.0 * matched / (len_a + len_b)


def render_corpus_file(name: str, render) -> str:
    from workbooks.page import resolve_setupfiles

    path = CORPUS / f"{name}.org"
    org = resolve_setupfiles(path.read_text(encoding="utf-8"), path.parent)
    # The reference export pins {{{version}}} to "9.x" (org-export-global-macros); so do we.
    return render(org, {"toc": True, "macros": {"version": "9.x"}})


def compare(name: str, render) -> dict:
    ref = facts((CONF / f"{name}.export.html").read_text(encoding="utf-8"))
    got = facts(render_corpus_file(name, render))
    row = {"name": name}
    for k in ("headings", "paragraphs", "list_items", "table_cells", "src_blocks", "footnotes", "images"):
        row[k] = (ref[k], got[k])
    row["targets_missing"] = sorted(map(str, ref["targets"] - got["targets"]))
    row["targets_extra"] = sorted(map(str, got["targets"] - ref["targets"]))
    row["targets_n"] = len(ref["targets"])
    row["ratio"] = text_ratio(ref["blocks"], got["blocks"])
    return row


def row_ok(row: dict) -> bool:
    return (
        all(row[k][0] == row[k][1] for k in ("headings", "paragraphs", "list_items", "table_cells", "src_blocks", "footnotes", "images"))
        and not row["targets_missing"]
        and not row["targets_extra"]
        and row["ratio"] >= 0.98
    )


def format_table(rows: list[dict]) -> str:
    def cell(pair) -> str:
        a, b = pair
        if isinstance(a, list):
            a, b = sum(n for _, n in a), sum(n for _, n in b)
            return f"{a}" if pair[0] == pair[1] else f"{a}≠{b}*"
        if isinstance(a, tuple):
            a, b = "/".join(map(str, a)), "/".join(map(str, b))
        return f"{a}" if a == b else f"{a}≠{b}"

    head = f"{'file':<18} {'headings h1..h6':<22} {'p':>9} {'items':>9} {'cells':>9} {'src':>7} {'fn':>5} {'img':>5} {'links':>7} {'text':>8} ok"
    out = [head, "-" * len(head)]
    for r in rows:
        links = f"{r['targets_n']}" if not (r["targets_missing"] or r["targets_extra"]) else f"-{len(r['targets_missing'])}+{len(r['targets_extra'])}"
        out.append(
            f"{r['name']:<18} {cell(r['headings']):<22} {cell(r['paragraphs']):>9} {cell(r['list_items']):>9} "
            f"{cell(r['table_cells']):>9} {cell(r['src_blocks']):>7} {cell(r['footnotes']):>5} {cell(r['images']):>5} "
            f"{links:>7} {r['ratio']*100:7.3f}% {'yes' if row_ok(r) else 'NO'}"
        )
    return "\n".join(out)


def wasm_render():
    import json

    from workbooks.oql import default_kernel

    k = default_kernel()

    def render(org: str, opts: dict) -> str:
        return k.call_raw("render_with", org, json.dumps(opts)).decode("utf-8")

    return render


@pytest.fixture(scope="module")
def rows(request):
    render = wasm_render()
    rs = [compare(n, render) for n in NAMES]
    table = "\nrender fidelity vs Emacs ox-html (reference ≠ ours)\n" + format_table(rs) + "\n"
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        with capman.global_and_fixture_disabled():  # shown in the normal test output, not only with -s
            print(table)
    else:
        print(table)
    return {r["name"]: r for r in rs}


SAMPLES = HERE / "fixtures" / "render" / "samples"
SAMPLE_NAMES = sorted(p.stem for p in SAMPLES.glob("*.org"))


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_samples_match_emacs_export(name):
    """Hand-written documents covering elements the corpus uses little, same checks."""
    render = wasm_render()
    ref = facts((SAMPLES / f"{name}.export.html").read_text(encoding="utf-8"))
    # The reference script asks for a TOC; documents say toc:t or nothing, so ask too.
    got = facts(render((SAMPLES / f"{name}.org").read_text(encoding="utf-8"), {"toc": True}))
    for k in ("headings", "paragraphs", "list_items", "table_cells", "src_blocks", "footnotes", "images"):
        assert ref[k] == got[k], f"{name}: {k} differ: emacs={ref[k]} ours={got[k]}"
    assert ref["targets"] == got["targets"]
    assert text_ratio(ref["blocks"], got["blocks"]) >= 0.98


@pytest.mark.parametrize("name", NAMES)
def test_matches_emacs_export(rows, name):
    r = rows[name]
    for k in ("headings", "paragraphs", "list_items", "table_cells", "src_blocks", "footnotes", "images"):
        assert r[k][0] == r[k][1], f"{name}: {k} differ: emacs={r[k][0]} ours={r[k][1]}"
    assert not r["targets_missing"], f"{name}: link targets missing: {r['targets_missing'][:10]}"
    assert not r["targets_extra"], f"{name}: extra link targets: {r['targets_extra'][:10]}"
    assert r["ratio"] >= 0.98, f"{name}: visible text only {r['ratio']:.4f} similar"


if __name__ == "__main__":
    import json
    import subprocess

    native = HERE.parent / "kernel" / "target" / "release" / "oql-native"
    if "--native" in sys.argv:
        import tempfile

        def render(org: str, opts: dict) -> str:
            with tempfile.NamedTemporaryFile("w", suffix=".org", delete=False) as a, tempfile.NamedTemporaryFile("w", delete=False) as b:
                a.write(org)
                b.write(json.dumps(opts))
            return subprocess.run([str(native), "render_with", a.name, b.name], capture_output=True, text=True, check=True).stdout

    else:
        render = wasm_render()
    names = [a for a in sys.argv[1:] if not a.startswith("-")] or NAMES
    rs = [compare(n, render) for n in names]
    print(format_table(rs))
    if "-v" in sys.argv:
        for r in rs:
            for k in ("headings", "paragraphs", "list_items", "table_cells", "src_blocks", "footnotes", "images"):
                if r[k][0] != r[k][1]:
                    print(r["name"], k, "emacs", r[k][0], "ours", r[k][1])
            print(r["name"], "missing", r["targets_missing"][:15])
            print(r["name"], "extra", r["targets_extra"][:15])
