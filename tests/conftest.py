"""Shared fixtures. Engineers append fixtures here; keep each one self-contained."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def child_pids(pid: int | None = None) -> list[int]:
    """Live descendants of `pid` (default: this process), from /proc."""
    pid = pid or os.getpid()
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode("latin-1")
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] == "Z":
                continue
            parents[int(entry)] = int(fields[1])
        except (OSError, ValueError):
            continue
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        for c, pp in parents.items():
            if pp == p:
                out.append(c)
                frontier.append(c)
    return out


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """Fail the run if any test left a child process alive."""
    yield
    import time

    deadline = time.time() + 5
    left = child_pids()
    while left and time.time() < deadline:
        time.sleep(0.1)
        left = child_pids()
    if left:
        details = []
        for p in left:
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                details.append(f"{p}: {cmd}")
            except OSError:
                pass
        pytest.fail("processes left behind after the test session:\n" + "\n".join(details))


@pytest.fixture(scope="session")
def hostile_wasm(tmp_path_factory) -> Path:
    """The test-only kernel (hangs, memory bombs, traps on demand), compiled from WAT."""
    import wasmtime

    out = tmp_path_factory.mktemp("hostile") / "hostile.wasm"
    out.write_bytes(wasmtime.wat2wasm((FIXTURES / "hostile_kernel.wat").read_text()))
    return out


def run_wbx(*args: str, input: bytes | None = None, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the real `wbx` entry point in a subprocess (stdout is a pipe: agent mode unless flagged)."""
    e = dict(os.environ)
    e.pop("WBX_AGENT", None)
    if env:
        e.update(env)
    return subprocess.run(
        [sys.executable, "-m", "workbooks", *args], input=input, capture_output=True, env=e, timeout=timeout
    )
