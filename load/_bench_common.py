"""What several benchmarks in load/ share: the benchmark document and stopping a `wbx serve`.

(A leading underscore: not a benchmark itself; tests/test_bench_cli.py skips it.)
"""

from __future__ import annotations

import os
import signal
import subprocess


def doc_of_size(n: int, title: str) -> str:
    """A workbook of ~n bytes: headings with tags, markup, a link, lists and a table per section."""
    parts = [f"#+TITLE: {title}\n#+DESCRIPTION: a benchmark workbook\n"]
    i = 0
    while sum(len(p) for p in parts) < n:
        parts.append(f"* Section {i} :tag{i % 5}:\nSome *bold* and /italic/ text with =code= and a [[https://example.org][link]] {i}.\n"
                     f"- item one {i}\n- item two\n| a | b |\n|---+---|\n| {i} | {i * 2} |\n")
        i += 1
    return "".join(parts)


def stop_serve(p: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM a `wbx serve` started in its own session; SIGKILL its whole group if it hangs."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
