#!/usr/bin/env python3
"""Kernel speed and robustness figures (issue 2): prints tables, writes load/results/kernel_bench.json.

1. Throughput: MB/s of parse_headlines, tangle_plan, validate, render and parse inside oql.wasm,
   called from Python through `Kernel.call_raw`, on the corpus's largest files, beside the
   same crate built natively (`oql-native bench OP FILE ITERS`) and the ratio wasm / native.
2. Call overhead: wasmtime's `Func.__call__` against the raw fast call, per call.
3. Linear time on hostile input: for every family and every op, the CPU time at N and 2N
   bytes (ratio should be <= ~2) and the wall time of a 1 MB instance (should be < 0.5 s).
4. Memory: the instance's linear memory after one call on a fresh instance, against 10*N + 4 MB.

Usage: .venv/bin/python load/kernel_bench.py [--quick]   (--quick: under a minute)
The machine is shared and noisy: compare figures from one run (ratios), not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbooks.oql.errors import KernelError  # noqa: E402
from workbooks.oql.kernel import Kernel  # noqa: E402

CORPUS = ROOT / "tests" / "fixtures" / "conformance" / "corpus"
KERNEL_DIR = ROOT / "kernel"
NATIVE = KERNEL_DIR / "target" / "release" / "oql-native"
RESULTS = ROOT / "load" / "results" / "kernel_bench.json"
OPS = ("parse_headlines", "tangle_plan", "validate", "render")
# Timed (throughput, linearity) but not held to 10*N + 4 MB: parse's JSON is one node per element,
# so its output alone can pass that on element-dense text (see README, the parse export).
TIMED_OPS = OPS + ("parse",)
MB = 1 << 20
TARGET_MB_S = {"parse_headlines": 100.0, "tangle_plan": 100.0}


# -- hostile families: each builds a document of about `n` bytes -------------------------------
def _repeat(unit: str, n: int) -> str:
    return unit * max(1, n // len(unit))


def nested_lists(n: int) -> str:
    out, size, i = [], 0, 0
    while size < n:
        line = " " * i + "- item\n"
        out.append(line)
        size += len(line)
        i += 1
    return "".join(out)


def nested_headlines(n: int) -> str:
    out, size, i = [], 0, 1
    while size < n:
        line = "*" * i + " w :workflow:\n"
        out.append(line)
        size += len(line)
        i += 1
    return "".join(out)


FAMILIES = {
    "unclosed *bold": lambda n: _repeat("*bold ", n),
    "unclosed =verbatim": lambda n: _repeat("=code ", n),
    "unclosed [[links": lambda n: _repeat("[[link ", n),
    "unclosed #+begin_": lambda n: _repeat("#+begin_src js :in x\n", n),
    "unclosed #+begin_ (names)": lambda n: "".join(f"#+begin_b{i}\n" for i in range(n // 12)),
    ":DRAWER: no :END:": lambda n: _repeat(":DRAWER:\ntext\n", n),
    ":PROPERTIES: no :END:": lambda n: _repeat("* h :component:\n:PROPERTIES:\n:ID: x\n", n),
    "single line": lambda n: _repeat("word *b =c [[d <2024-01-01 ", n),
    "nested list levels": nested_lists,
    "star run": lambda n: "*" * n + " deep\n",
    "nested headline levels": nested_headlines,
    # Every line a bare headline: the JSON rows alone are ~36 bytes per input byte, so this
    # one cannot fit 10*N + 4 MB (the output contract, not the parser, sets the floor).
    "bare headlines": lambda n: _repeat("* h\n", n),
    "unbalanced header args": lambda n: "* w :workflow:\n** c :component:\n#+begin_src js " + _repeat("( [ \" :in ", n) + "\n#+end_src\n",
}


HOSTILE_DEADLINE_MS = 5_000


def best_time(k: Kernel, op: str, doc: str, repeat: int) -> tuple[float, float]:
    """Best (wall, thread CPU) seconds of `repeat` calls; inf when a call hits the deadline.
    Linearity is judged on CPU time: on a shared box a longer call is preempted more often,
    which makes wall-clock ratios drift above 2 for reasons that are not the kernel's."""
    data = doc.encode()
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        c0, t0 = time.thread_time(), time.perf_counter()
        try:
            k.call_raw(op, data, deadline_ms=HOSTILE_DEADLINE_MS)
        except KernelError as e:
            print(f"  ! {op}: {e.code}: {e}", file=sys.stderr)
            return float("inf"), float("inf")
        best_wall = min(best_wall, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.thread_time() - c0)
    return best_wall, best_cpu


def wasm_mb_s(k: Kernel, op: str, data: bytes, min_seconds: float) -> tuple[float, float, float, int]:
    """(mean, median and best single-call MB/s, iterations). The box is shared: the mean
    carries every preemption, so the target is judged on the median call."""
    k.call_raw(op, data, deadline_ms=60_000)  # warm: input buffer sized, code paged in
    times: list[float] = []
    t0 = time.perf_counter()
    while True:
        t1 = time.perf_counter()
        k.call_raw(op, data, deadline_ms=60_000)
        times.append(time.perf_counter() - t1)
        el = time.perf_counter() - t0
        if el >= min_seconds and len(times) >= 5:
            times.sort()
            mb = len(data) / 1e6
            return mb * len(times) / el, mb / times[len(times) // 2], mb / times[0], len(times)


def build_native() -> bool:
    env = dict(os.environ, RUSTC=os.environ.get("WB_RUSTC", "/usr/bin/rustc"))
    r = subprocess.run([os.environ.get("WB_CARGO", "/usr/bin/cargo"), "build", "--release", "--quiet", "--bin", "oql-native"],
                       cwd=KERNEL_DIR, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print("native build failed (ratios skipped):\n" + r.stderr[-2000:], file=sys.stderr)
    return r.returncode == 0 and NATIVE.exists()


def native_mb_s(op: str, path: Path, iters: int) -> float | None:
    r = subprocess.run([str(NATIVE), "bench", op, str(path), str(iters)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        return None
    return float(json.loads(r.stdout.strip().splitlines()[-1])["mb_s"])


def call_overhead(k: Kernel, calls: int) -> dict:
    """Per-call cost of a trivial op: wasmtime's Func.__call__ vs the raw unchecked call."""
    k.call_raw("lint", b"x")  # the input buffer now holds valid UTF-8 at offset 0
    func = k._funcs["lint"]
    store = k.store
    t0 = time.perf_counter()
    for _ in range(calls):
        func(store, 1)
    func_call = (time.perf_counter() - t0) / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        k._raw_call(func, (1,))
    raw = (time.perf_counter() - t0) / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        k.call_raw("lint", b"x")
    full = (time.perf_counter() - t0) / calls
    return {"func_call_us": func_call * 1e6, "raw_call_us": raw * 1e6, "call_raw_us": full * 1e6,
            "speedup": func_call / raw if raw else None}


def memory_after(op: str, doc: bytes) -> int | None:
    k = Kernel(memory_mb=2048)
    try:
        k.call_raw(op, doc, deadline_ms=HOSTILE_DEADLINE_MS)
    except KernelError as e:
        print(f"  ! {op}: {e.code}: {e}", file=sys.stderr)
        return None
    return k.memory_bytes()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short run (under a minute)")
    args = ap.parse_args()
    quick = args.quick
    global HOSTILE_DEADLINE_MS
    if quick:
        HOSTILE_DEADLINE_MS = 2_000  # a hang is still a hang at 2 s; keeps --quick under a minute
    results: dict = {"quick": quick, "throughput": [], "overhead": {}, "linear": [], "memory": [], "checks": {}}
    t_start = time.perf_counter()
    k = Kernel(memory_mb=2048, deadline_ms=60_000)

    # 1. throughput ---------------------------------------------------------------------------
    files = sorted(CORPUS.glob("*.org"), key=lambda p: p.stat().st_size, reverse=True)[: 1 if quick else 3]
    have_native = build_native()
    print(f"\n== throughput (MB/s) on the corpus's largest files{' [quick]' if quick else ''} ==")
    print(f"{'file':<22}{'op':<17}{'wasm mean':>10}{'median':>9}{'best':>8}{'native MB/s':>13}{'wasm/native':>13}")
    for f in files:
        data = f.read_bytes()
        for op in TIMED_OPS:
            w, w_med, w_best, iters = wasm_mb_s(k, op, data, 0.3 if quick else 1.0)
            n_iters = max(3, int(iters * (1 if quick else 2)))
            nat = native_mb_s(op, f, n_iters) if have_native else None
            ratio = w / nat if nat else None
            results["throughput"].append({"file": f.name, "bytes": len(data), "op": op, "wasm_mb_s": round(w, 1), "wasm_median_call_mb_s": round(w_med, 1), "wasm_best_call_mb_s": round(w_best, 1),
                                          "native_mb_s": round(nat, 1) if nat else None,
                                          "ratio": round(ratio, 3) if ratio else None})
            print(f"{f.name:<22}{op:<17}{w:>10.1f}{w_med:>9.1f}{w_best:>8.1f}{(f'{nat:.1f}' if nat else '-'):>13}{(f'{ratio:.2f}' if ratio else '-'):>13}")
    for op, target in TARGET_MB_S.items():
        worst = min(r["wasm_median_call_mb_s"] for r in results["throughput"] if r["op"] == op)
        results["checks"][f"{op}_wasm_median_mb_s>={target:g}"] = worst >= target
        results["checks"][f"{op}_worst_wasm_median_mb_s"] = worst
        results["checks"][f"{op}_worst_wasm_mean_mb_s"] = min(r["wasm_mb_s"] for r in results["throughput"] if r["op"] == op)

    # 2. call overhead ------------------------------------------------------------------------
    ov = call_overhead(k, 2000 if quick else 20000)
    results["overhead"] = ov
    print("\n== per-call cost of a trivial op (lint on 1 byte) ==")
    print(f"wasmtime Func.__call__ {ov['func_call_us']:.2f} us | raw unchecked call {ov['raw_call_us']:.2f} us"
          f" ({ov['speedup']:.1f}x) | Kernel.call_raw incl. input copy {ov['call_raw_us']:.2f} us")

    # 3. linear time on hostile input ---------------------------------------------------------
    n1 = 256 * 1024 if quick else 512 * 1024
    rep = 2 if quick else 3  # best of: the first call at a new size also pays memory growth
    print(f"\n== hostile input: CPU time at N={n1 >> 10} KB and 2N, ratio (<= ~2 is linear); wall time at 1 MB (< 0.5 s) ==")
    print(f"{'family':<28}{'op':<17}{'cpu(N) ms':>10}{'cpu(2N) ms':>11}{'ratio':>7}{'wall(1MB) ms':>13}")
    inf = float("inf")
    for fam, gen in FAMILIES.items():
        d1, d2, dm = gen(n1), gen(2 * n1), gen(MB)
        for op in TIMED_OPS:
            # best of several: the first call at a new size also pays memory growth; the
            # structural ops take milliseconds, so more samples are cheap
            r = (1 if quick else rep) if op == "render" else (3 if quick else 7)
            w1, t1 = best_time(k, op, d1, r)
            w2, t2 = best_time(k, op, d2, r) if w1 < 1 else (inf, inf)
            wm = w2 if len(d2) == len(dm) else (best_time(k, op, dm, r)[0] if w2 < 1 else inf)
            ratio = t2 / t1 if 0 < t1 < inf else inf
            ms = lambda t: round(t * 1e3, 3) if t != inf else None  # noqa: E731  (None: hit the deadline)
            results["linear"].append({"family": fam, "op": op, "bytes_n": len(d1.encode()), "cpu_n_ms": ms(t1),
                                      "cpu_2n_ms": ms(t2), "wall_n_ms": ms(w1), "wall_2n_ms": ms(w2),
                                      "ratio": round(ratio, 2) if ratio != inf else None,
                                      "bytes_1mb": len(dm.encode()), "t_1mb_ms": ms(wm)})
            judged = ratio if t2 >= 0.010 else min(ratio, 2.0)  # below 10 ms a ratio is timer noise
            flag = "  <-- slow" if (wm >= 0.5 or judged > 2.6) else ""
            print(f"{fam:<28}{op:<17}{t1 * 1e3:>10.2f}{t2 * 1e3:>11.2f}{ratio:>7.2f}{wm * 1e3:>13.2f}{flag}")
    for op in TIMED_OPS:
        rows = [r for r in results["linear"] if r["op"] == op]
        judged = [(r["ratio"] if (r["cpu_2n_ms"] or 0) >= 10 else min(r["ratio"], 2.0)) if r["ratio"] is not None else float("inf") for r in rows]
        t1mb = [r["t_1mb_ms"] if r["t_1mb_ms"] is not None else float("inf") for r in rows]
        results["checks"][f"hostile_{op}_worst_ratio"] = round(max(judged), 2)
        results["checks"][f"hostile_{op}_linear(ratio<=2.6)"] = max(judged) <= 2.6
        results["checks"][f"hostile_{op}_worst_1mb_ms"] = round(max(t1mb), 1)
        results["checks"][f"hostile_{op}_1mb_under_500ms"] = max(t1mb) < 500

    # 4. memory -------------------------------------------------------------------------------
    print("\n== kernel memory after one call (fresh instance) vs 10*N + 4 MB ==")
    print(f"{'document':<28}{'op':<17}{'N KB':>8}{'memory MB':>11}{'limit MB':>10}")
    docs = [(f.name, f.read_bytes()) for f in files[:1]]
    fams = list(FAMILIES.items()) if not quick else list(FAMILIES.items())[::3]
    docs += [(fam, gen(MB).encode()) for fam, gen in fams]
    all_ok = True
    for name, doc in docs:
        for op in OPS:
            mem = memory_after(op, doc)
            limit = 10 * len(doc) + 4 * MB
            ok = mem is not None and mem <= limit
            all_ok &= ok
            results["memory"].append({"document": name, "op": op, "bytes": len(doc), "memory_bytes": mem,
                                      "limit_bytes": limit, "ok": ok})
            shown = f"{mem / MB:.1f}" if mem is not None else "timeout"
            print(f"{name:<28}{op:<17}{len(doc) >> 10:>8}{shown:>11}{limit / MB:>10.1f}{'' if ok else '  <-- over'}")
    results["checks"]["memory_under_10N_plus_4MB"] = all_ok

    results["seconds"] = round(time.perf_counter() - t_start, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print("\n== checks ==")
    for key, v in results["checks"].items():
        print(f"  {key}: {v}")
    print(f"\nwrote {RESULTS.relative_to(ROOT)} in {results['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
