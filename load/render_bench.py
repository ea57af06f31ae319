#!/usr/bin/env python3
"""render benchmark: corpus MB/s inside oql.wasm (called from Python) and natively, plus the
hostile families at 0.5 MB and 1 MB (time and growth ratio; linear means ratio ~2).

Prints a table and writes load/results/render.json. Numbers are noisy on a shared machine:
compare the ratios measured in one run.
Usage: make bench, or .venv/bin/python load/render_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbooks.oql import Kernel  # noqa: E402
from tests.hostile_docs import FAMILIES  # noqa: E402

CORPUS = ROOT / "tests" / "fixtures" / "conformance" / "corpus"
NATIVE = ROOT / "kernel" / "target" / "release" / "oql-native"
MB = 1 << 20




def best_of(fn, k: int) -> float:
    best = float("inf")
    for _ in range(k):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def native_mb_s(path: Path, iters: int) -> float | None:
    if not NATIVE.exists():
        return None
    out = subprocess.run([str(NATIVE), "bench", "render", str(path), str(iters)], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout)["mb_s"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short run (under a minute)")
    quick = ap.parse_args().quick
    k = Kernel(deadline_ms=60_000)
    results: dict = {"corpus": [], "hostile": []}
    print(f"{'corpus file':<22} {'KB':>6} {'wasm MB/s':>10} {'native MB/s':>12} {'wasm/native':>12}")
    for name in ("org-manual", "worg-org-faq", "worg-org-hacks", "org-guide", "worg-org-syntax"):
        p = CORPUS / f"{name}.org"
        data = p.read_bytes()
        k.call_raw("render", data)
        iters = 3 if quick else 10
        dt = best_of(lambda: k.call_raw("render", data), iters)
        wasm = len(data) / dt / 1e6
        nat = native_mb_s(p, 10 if quick else 30)
        ratio = f"{wasm / nat:.2f}" if nat else "n/a"
        print(f"{name:<22} {len(data) // 1024:>6} {wasm:>10.1f} {nat or 0:>12.1f} {ratio:>12}")
        results["corpus"].append({"file": name, "bytes": len(data), "wasm_mb_s": wasm, "native_mb_s": nat})
    print()
    print(f"{'hostile family':<28} {'0.5 MB ms':>10} {'1 MB ms':>9} {'growth':>7}  1 MB < 500 ms")
    worst = 0.0
    for name, make in FAMILIES.items():
        half, full = make(MB // 2).encode(), make(MB).encode()
        reps = 1 if quick else 3
        t_half = best_of(lambda: k.call_raw("render", half), reps)
        t_full = best_of(lambda: k.call_raw("render", full), reps)
        growth = t_full / max(t_half, 1e-6)
        worst = max(worst, t_full)
        print(f"{name:<28} {t_half * 1000:>10.1f} {t_full * 1000:>9.1f} {growth:>7.2f}  {'yes' if t_full < 0.5 else 'NO'}")
        results["hostile"].append({"family": name, "half_ms": t_half * 1000, "full_ms": t_full * 1000, "growth": growth})
    results["worst_1mb_ms"] = worst * 1000
    out = ROOT / "load" / "results" / "render.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nworst 1 MB hostile render: {worst * 1000:.0f} ms; results in {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
