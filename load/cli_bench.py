#!/usr/bin/env python3
"""How fast the real `wbx` is, process start to exit (issue 10): table + load/results/cli_bench.json.

Runs `.venv/bin/wbx` as separate processes, the commands of one round interleaved so a noisy
neighbour hits them alike, and takes each command's median wall time over the rounds:

- `wbx query BIG` and `wbx render BIG` on ~7 MB of Org (the corpus's largest files concatenated,
  the Org manual x8), MINUS the same command on an empty file: the cost of the document, as
  MB/s (targets: query >= 100 MB/s, render >= 40 MB/s), beside the kernel's own time for the
  same call in this process (the share the kernel takes of that cost should be most of it);
- `wbx lint -` on a one-line document against `python -c "import wasmtime"` in the same run
  (target: at most 2x).

Python's bytecode cache is allowed (PYTHONDONTWRITEBYTECODE is dropped for the children), as it
is for any installed package: otherwise wbx would be timed compiling itself from source.

Usage: .venv/bin/python load/cli_bench.py [--quick] [--rounds N] [--wbx PATH] [--out FILE]
The machine is shared: compare figures within one run (ratios), not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
RESULTS = ROOT / "load" / "results" / "cli_bench.json"
BIG_BYTES = 7_000_000
MB = 1_000_000  # MB/s in decimal megabytes, as the targets are stated
TARGETS = {"query": 100.0, "render": 40.0}  # MB/s, net of start-up
LINT_RATIO = 2.0  # wbx lint - <= 2x python -c "import wasmtime"


def build_big(folder: Path, size: int = BIG_BYTES) -> Path:
    """~`size` bytes of real Org: the largest fixture files, repeated until it is reached."""
    files = sorted(FIXTURES.rglob("*.org"), key=lambda p: p.stat().st_size, reverse=True)[:1]
    parts, total = [], 0
    while total < size:
        for f in files:
            data = f.read_bytes()
            parts.append(data if data.endswith(b"\n") else data + b"\n")
            total += len(parts[-1])
            if total >= size:
                break
    big = folder / "big.org"
    big.write_bytes(b"".join(parts))
    return big


def run_once(cmd: list[str], stdin: Path | None, env: dict) -> tuple[float, float]:
    """(wall, CPU) seconds of one process, start to exit (stdout to /dev/null); fails loudly on an error.

    CPU is user + system of the process and its threads: on a busy shared machine it moves far
    less than wall time, so the regression test reads it beside the wall-time targets."""
    fin = open(stdin, "rb") if stdin else subprocess.DEVNULL
    try:
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run(cmd, stdin=fin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=120)
        dt = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        if stdin:
            fin.close()
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.decode(errors='replace')[:500]}")
    return dt, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def kernel_ms(big: Path, rounds: int) -> dict:
    """The kernel's own time for each op on BIG, in this process (median of `rounds`): the first
    call on a fresh instance, as in a wbx process (UTF-8 check, copy in, the call, copy out)."""
    sys.path.insert(0, str(ROOT))
    from workbooks.oql.kernel import Kernel

    k = Kernel()
    data = big.read_bytes()
    out = {}
    for op in ("parse_headlines", "render"):
        times = []
        for _ in range(rounds):
            k.reset()  # a fresh instance, as each wbx process has: its first call grows the memory
            t0 = time.perf_counter()
            k.call_raw(op, data)
            times.append(time.perf_counter() - t0)
        out[op] = statistics.median(times) * 1000
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cli_bench.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds instead of 9")
    ap.add_argument("--rounds", type=int, help="rounds per command (default 9, --quick 3)")
    ap.add_argument("--wbx", default=str(ROOT / ".venv" / "bin" / "wbx"), help="the wbx to run (default .venv/bin/wbx)")
    ap.add_argument("--out", default=str(RESULTS), help=f"JSON results file (default {RESULTS.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 9)
    if rounds < 1:
        ap.error("--rounds must be at least 1")
    wbx = args.wbx
    if not os.access(wbx, os.X_OK):
        ap.error(f"{wbx} is not an executable (run `make setup`)")
    python = str(Path(wbx).with_name("python"))
    env = dict(os.environ)
    # PYTHONDONTWRITEBYTECODE (set in some CI and sandbox shells) would make every wbx process
    # compile its own modules from source (~10-20 ms), while wasmtime's come compiled from the
    # wheel; an installed wbx has its bytecode too, so the warm-up round may write it here.
    for k in ("WBX_AGENT", "WB_MAX_INPUT_MB", "WB_KERNEL_WASM", "PYTHONDONTWRITEBYTECODE"):
        env.pop(k, None)

    with tempfile.TemporaryDirectory(prefix="cli-bench-") as tmp:
        folder = Path(tmp)
        big = build_big(folder)
        empty = folder / "empty.org"
        empty.write_bytes(b"")
        one = folder / "one.org"
        one.write_bytes(b"* one line\n")
        cmds = {
            "query big": ([wbx, "query", str(big)], None),
            "query empty": ([wbx, "query", str(empty)], None),
            "render big": ([wbx, "render", str(big)], None),
            "render empty": ([wbx, "render", str(empty)], None),
            "lint - (one line)": ([wbx, "lint", "-"], one),
            "import wasmtime": ([python, "-c", "import wasmtime"], None),
        }
        for cmd, stdin in cmds.values():  # warm: page cache, .pyc files, the compiled-module cache
            run_once(cmd, stdin, env)
        samples: dict[str, list[float]] = {name: [] for name in cmds}
        cpu: dict[str, list[float]] = {name: [] for name in cmds}
        for _ in range(rounds):
            for name, (cmd, stdin) in cmds.items():
                wall, used = run_once(cmd, stdin, env)
                samples[name].append(wall)
                cpu[name].append(used)
        med = {name: statistics.median(v) * 1000 for name, v in samples.items()}
        cpu_med = {name: statistics.median(v) * 1000 for name, v in cpu.items()}
        size = big.stat().st_size
        kern = kernel_ms(big, max(3, rounds))

    rows = []
    for verb, op in (("query", "parse_headlines"), ("render", "render")):
        net = med[f"{verb} big"] - med[f"{verb} empty"]
        # net <= 0: the noise of this machine exceeded the document's cost; no figure, not met
        mbs = size / MB / (net / 1000) if net > 0 else None
        cpu_net = cpu_med[f"{verb} big"] - cpu_med[f"{verb} empty"]
        rows.append({
            "command": f"wbx {verb} big.org ({size / MB:.1f} MB) - empty",
            "median_ms": round(med[f"{verb} big"], 1),
            "net_ms": round(net, 1),
            "mb_s": round(mbs, 1),
            "kernel_ms": round(kern[op], 1),
            "kernel_share": round(kern[op] / net, 2) if net > 0 else None,
            "cpu_net_ms": round(cpu_net, 1),
            "cpu_mb_s": round(size / MB / (cpu_net / 1000), 1) if cpu_net > 0 else None,
            "target": f">= {TARGETS[verb]:g} MB/s",
            "met": mbs is not None and mbs >= TARGETS[verb],
        })
    ratio = med["lint - (one line)"] / med["import wasmtime"]
    rows.append({
        "command": "wbx lint - (one line)",
        "median_ms": round(med["lint - (one line)"], 1),
        "net_ms": None,
        "mb_s": None,
        "kernel_ms": None,
        "kernel_share": None,
        "target": f"<= {LINT_RATIO:g}x import wasmtime ({med['import wasmtime']:.1f} ms): {ratio:.2f}x",
        "met": ratio <= LINT_RATIO,
        "ratio": round(ratio, 2),
        "cpu_ratio": round(cpu_med["lint - (one line)"] / cpu_med["import wasmtime"], 2),
    })

    print(f"wbx, process start to exit; median of {rounds} rounds; {size} bytes of Org; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'command':<40} {'median ms':>10} {'net ms':>8} {'MB/s':>7} {'kernel ms':>10} {'share':>6}  {'target':<44} met?")
    for r in rows:
        f = lambda v, fmt: (fmt % v) if v is not None else "n/a"  # noqa: E731
        print(f"{r['command']:<40} {r['median_ms']:>10.1f} {f(r['net_ms'], '%.1f'):>8} {f(r['mb_s'], '%.1f'):>7} "
              f"{f(r['kernel_ms'], '%.1f'):>10} {f(r['kernel_share'], '%.2f'):>6}  {r['target']:<44} {'yes' if r['met'] else 'NO'}")
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rounds": rounds,
        "big_bytes": size,
        "median_ms": {k: round(v, 2) for k, v in med.items()},
        "median_cpu_ms": {k: round(v, 2) for k, v in cpu_med.items()},
        "kernel_ms": {k: round(v, 2) for k, v in kern.items()},
        "rows": rows,
        "all_met": all(r["met"] for r in rows),
        "load_average": os.getloadavg(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("CPU (user+sys) net of start-up: " + ", ".join(
        f"{r['command'].split()[1]} {r['cpu_mb_s']} MB/s" for r in rows[:2]) + f"; lint - {rows[2]['cpu_ratio']}x import wasmtime")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
