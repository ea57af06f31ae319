"""Every benchmark in load/ is a command a user can ask for help and mistype safely.

`--help` prints usage and exits 0 without running anything; an unknown flag exits 2 with argparse's
message, also without running. New benchmarks are picked up by the glob, so none can slip through.
The README's benchmark commands must name interpreters that have the project's dependencies.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHES = sorted(p for p in (ROOT / "load").glob("*.py") if not p.name.startswith("_"))


def run(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    t = time.monotonic()
    cp = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, stdin=subprocess.DEVNULL)
    return cp, time.monotonic() - t


def test_there_are_benchmarks():
    assert len(BENCHES) >= 5, BENCHES


@pytest.mark.parametrize("bench", BENCHES, ids=lambda p: p.name)
def test_help_prints_usage_and_runs_nothing(bench, tmp_path):
    before = {p: p.stat().st_mtime for p in (ROOT / "load" / "results").glob("*")} \
        if (ROOT / "load" / "results").exists() else {}
    cp, took = run(str(bench.relative_to(ROOT)), "--help")
    assert cp.returncode == 0, cp.stderr
    assert "usage:" in cp.stdout.lower()
    assert "--quick" in cp.stdout, "every benchmark offers a short run"
    assert took < 20, f"--help took {took:.1f}s: it must not run the benchmark"
    after = {p: p.stat().st_mtime for p in (ROOT / "load" / "results").glob("*")} \
        if (ROOT / "load" / "results").exists() else {}
    assert after == before, "--help wrote results"


@pytest.mark.parametrize("bench", BENCHES, ids=lambda p: p.name)
def test_unknown_flag_is_refused(bench):
    cp, took = run(str(bench.relative_to(ROOT)), "--no-such-flag")
    assert cp.returncode == 2, (cp.returncode, cp.stdout[-500:], cp.stderr[-500:])
    assert "--no-such-flag" in cp.stderr
    assert took < 20


def test_documented_benchmark_commands_use_the_projects_interpreter():
    for doc in [ROOT / "README.md", *ROOT.glob("kernel/**/README.md"), *ROOT.glob("workbooks/**/README.md"),
                *BENCHES]:
        text = doc.read_text()
        bad = re.findall(r"(?:^|[\s`(])(python3?) load/\w+\.py", text, re.MULTILINE)
        assert not bad, f"{doc}: '{bad[0]} load/...' fails without the virtualenv; use make bench or .venv/bin/python"
