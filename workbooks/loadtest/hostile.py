"""Hostile Org documents: each family builds ~`size` bytes of input that stresses one parser path
(unclosed markup, deep nesting, huge lines, macro and footnote bombs).

One list, so the render tests, load/render_bench.py and `wbx loadtest`'s hostile share
(workbooks.loadtest.corpus) always exercise the same inputs.
"""

from __future__ import annotations

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
    "unclosed *bold": lambda n: repeat("*bold ", n),
    "unclosed =verbatim": lambda n: repeat("=x ", n),
    "unclosed [[": lambda n: repeat("[[a ", n),
    "unclosed [[x][": lambda n: repeat("[[x][y ", n),
    "unclosed #+begin_": lambda n: repeat("#+begin_src\n", n),
    "unclosed #+begin_quote": lambda n: repeat("#+begin_quote\nx\n", n),
    ":DRAWER: without :END:": lambda n: repeat(":DRAWER:\nx\n", n),
    "one 1 MB line": lambda n: repeat("word *b /i _u =v ~c +s x ", n),
    "10,000 nested list levels": nested_lists,
    "10,000 stars": stars,
    "unclosed {{{": lambda n: repeat("{{{m ", n),
    "unclosed @@": lambda n: repeat("@@html:x ", n),
    "unclosed $ / \\(": lambda n: repeat("$x \\(y ", n),
    "unclosed [fn::": lambda n: repeat("[fn::x ", n),
    "unclosed src_": lambda n: repeat("src_x{ ", n),
    "<<<radio>>> everywhere": lambda n: repeat("<<<r>>> r ", n),
    "20,000 distinct radio targets": lambda n: distinct_radios(n),
    "#+TOC: after every headline": lambda n: repeat("* h\n#+TOC: headlines\n", n),
    "links to a huge title": lambda n: ("#+OPTIONS: num:nil\n* " + "word " * (n // 10) + "\n:PROPERTIES:\n:CUSTOM_ID: a\n:END:\n" + repeat("[[#a]] ", n // 2))[:n],
    "nested inline footnotes": lambda n: "[fn::" * (n // 12) + "x" + "]" * (n // 12),
    "1000-cell row + 1-cell rows": lambda n: ("|" + "c|" * 1000 + "\n" + repeat("|x|\n", n))[:n],
    "headlines with tags": lambda n: repeat("* h :a:b:c:\n", n),
    "list items": lambda n: repeat("- a\n", n),
    "table rows": lambda n: repeat("|a|b|c|\n", n),
    "footnote refs and definitions": lambda n: repeat("x [fn:1] y [fn:1]\n[fn:1] def [fn:1]\n", n),
    "macro bomb": lambda n: repeat("#+MACRO: m {{{m}}}{{{m}}}\n{{{m}}}\n", n),
    "one line of every opener": lambda n: repeat("w *b /i _u =v ~c +s [[x $y \\(z {{{m @@h:", n),
    "unclosed [fn:: with refs": lambda n: repeat("[fn::x [fn:y] ", n),
    "macro bomb (x3)": lambda n: repeat("#+MACRO: m {{{m}}}{{{m}}}{{{m}}}\n{{{m}}}\n", n),
}
