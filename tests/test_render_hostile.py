"""Hostile inputs never hang `render` and never break its output.

Each family from the kernel issue (thousands of unclosed openers, a 1 MB line, 10,000 nested
list levels, 10,000 stars, ...) renders 1 MB inside the kernel's wall-time deadline, and a
64 KB instance renders well-formed. Timings and growth ratios are figures, printed by
load/render_bench.py, not asserted here.
"""

from __future__ import annotations

import json

import pytest

from workbooks.oql import Kernel
try:
    from tests.test_render_safety import wellformed_errors
except ImportError:  # tests/ itself on sys.path
    from test_render_safety import wellformed_errors

MB = 1 << 20


def repeat(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def nested_lists(size: int) -> str:
    out, n, d = [], 0, 0
    while n < size:
        line = " " * d + "- x\n"
        out.append(line)
        n += len(line)
        d = d + 1 if d < 10000 else 0
    return "".join(out)[:size]


def distinct_radios(size: int) -> str:
    head = " ".join(f"<<<r{i}>>>" for i in range(20000)) + "\n\n"
    words = " ".join(f"r{(i * 7919) % 20000}" for i in range(size // 6))
    return (head + words)[:size]


def stars(size: int) -> str:
    out, n, d = [], 0, 1
    while n < size:
        line = "*" * d + " h\n"
        out.append(line)
        n += len(line)
        d = d + 1 if d < 10000 else 1
    return "".join(out)[:size]


FAMILIES = {
    "bold": lambda n: repeat("*bold ", n),
    "verbatim": lambda n: repeat("=x ", n),
    "brackets": lambda n: repeat("[[a ", n),
    "link-desc": lambda n: repeat("[[x][y ", n),
    "begin": lambda n: repeat("#+begin_src\n", n),
    "begin-quote": lambda n: repeat("#+begin_quote\nx\n", n),
    "drawer": lambda n: repeat(":DRAWER:\nx\n", n),
    "one-line": lambda n: repeat("w *b /i _u =v ~c +s [[x $y \\(z {{{m @@h:", n),
    "nested-lists": nested_lists,
    "stars": stars,
    "macros": lambda n: repeat("{{{m ", n),
    "footnotes": lambda n: repeat("[fn::x [fn:y] ", n),
    "src": lambda n: repeat("src_x{ ", n),
    "radio": lambda n: repeat("<<<r>>> r ", n),
    "distinct-radios": lambda n: distinct_radios(n),
    "toc-keywords": lambda n: repeat("* h\n#+TOC: headlines\n", n),
    "links-to-a-huge-title": lambda n: ("#+OPTIONS: num:nil\n* " + "word " * (n // 10) + "\n:PROPERTIES:\n:CUSTOM_ID: a\n:END:\n" + repeat("[[#a]] ", n // 2))[:n],
    "nested-inline-footnotes": lambda n: "[fn::" * (n // 12) + "x" + "]" * (n // 12),
    "ragged-table": lambda n: ("|" + "c|" * 1000 + "\n" + repeat("|x|\n", n))[:n],
    "headlines": lambda n: repeat("* h :a:b:\n", n),
    "items": lambda n: repeat("- a\n", n),
    "tables": lambda n: repeat("|a|b|\n", n),
    "macro-bomb": lambda n: repeat("#+MACRO: m {{{m}}}{{{m}}}{{{m}}}\n{{{m}}}\n", n),
}


@pytest.fixture(scope="module")
def kernel():
    # A hang would hit this deadline (KernelDeadline) instead of the test timing out.
    return Kernel(deadline_ms=5000)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_megabyte_renders_within_the_deadline(kernel, family):
    doc = FAMILIES[family](MB)
    out = kernel.call_raw("render_with", doc, json.dumps({"raw_html": False}))
    assert out  # rendered, no trap, no deadline


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hostile_output_is_well_formed(kernel, family):
    doc = FAMILIES[family](64 * 1024)
    html = kernel.call_raw("render_with", doc, json.dumps({"raw_html": False, "toc": True})).decode()
    assert wellformed_errors(html) == []
