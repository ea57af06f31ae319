"""`wbx loadtest` measured with itself, and the service measured by it (issue 19's figures).

    .venv/bin/python load/loadtest_bench.py [--quick] [--json PATH] [--skip-find-max]

Starts one `wbx serve` (temp data dir, free loopback ports) and drives it with the real CLI
(`python -m workbooks loadtest run …`, process start to exit), reading each run's run.json:

1. stall drill: 400 req/s for 10 s at the demo page, the public-plane process stopped 1.0 s at
   t ~ 4 s -> share of requests over 100 ms, p99, the generator's lag p99, flagged or not;
2. rate accuracy: one public process's closed-model capacity (32 connections), then an open load
   at half of it for 60 s (10 s with --quick) -> requests sent / planned, lag p99;
3. generator cost: CPU µs per request (the generator processes' CPU over requests sent), page GET
   and pool render call, recording included;
4. render API vs the pool: the same 8 KB document, closed model, same concurrency -> renders/s
   and their ratio (target >= 0.8);
5. overload: the public plane at 2x its closed capacity as open load with unlimited connections ->
   goodput / capacity (target >= 0.9), refusals, p99 admitted vs p99 at half load (target <= 10x),
   plane processes' RSS before and after;
6. --find-max on the render API with latency.p99<50ms against a manual bisection of 20 s runs
   (skipped with --quick or --skip-find-max: it takes minutes).

Every process started here is stopped here. A table on stdout, JSON in load/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from load._bench_common import doc_of_size, stop_serve  # noqa: E402

CORES = os.cpu_count() or 1


class Serve:
    """`wbx serve` on free ports; stopped (the whole session) on exit."""

    def __init__(self, tmp: Path, workers: int = CORES):
        from workbooks.web_control.launch import free_port

        self.data = tmp / "data"
        self.cport, self.pport = free_port(), free_port()
        self.control = f"http://127.0.0.1:{self.cport}"
        self.public = f"http://127.0.0.1:{self.pport}"
        env = dict(os.environ, WB_DATA=str(self.data))
        env.pop("WBX_AGENT", None)
        self.log = open(tmp / "serve.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workbooks", "serve", "--data", str(self.data), "--workers", str(workers),
             "--control", f"127.0.0.1:{self.cport}", "--public", f"127.0.0.1:{self.pport}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
            start_new_session=True)

    def wait_up(self, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=5) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise SystemExit(f"wbx serve exited: see {self.log.name}")
                try:
                    if c.get(self.public + "/", headers={"Host": "demo.localhost"}).status_code == 200:
                        self.key = (self.data / "admin.key").read_text().strip()
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        raise SystemExit("wbx serve did not come up")

    def children(self, group: str | None = None) -> list[dict]:
        from workbooks.pool import endpoints as E
        from workbooks.supervisor import ControlClient

        st = ControlClient(E.supervisor_endpoint(self.data), timeout=30).request("status")
        return [c for c in st["children"] if c["state"] == "running" and (group is None or c["group"] == group)]

    def stop(self) -> None:
        stop_serve(self.proc, 60)
        self.log.close()


def loadtest(serve: Serve, out: Path, *args: str, on_line=None, timeout: float = 900, cpus: set | None = None) -> dict:
    """Run `wbx loadtest run … --out OUT` as a process (on `cpus` only, when given, with every
    generator process it starts); return its run.json (with `exit_code`)."""
    env = dict(os.environ, WB_DATA=str(serve.data))
    env.pop("WBX_AGENT", None)
    p = subprocess.Popen([sys.executable, "-m", "workbooks", "loadtest", "run", *args, "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
                         preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    err: list[bytes] = []
    t = threading.Thread(target=lambda: err.append(p.stderr.read()), daemon=True)
    t.start()
    for raw in iter(p.stdout.readline, b""):
        if on_line is not None:
            try:
                on_line(json.loads(raw))
            except ValueError:
                pass
    p.wait(timeout)
    t.join(5)
    try:
        run = json.loads((out / "run.json").read_text())
    except OSError:
        shown = ["<key>" if i and args[i - 1] == "--key" else a for i, a in enumerate(args)]  # never print a key
        raise SystemExit(f"wbx loadtest {' '.join(shown)} wrote no run.json (exit {p.returncode}): "
                         f"{b''.join(err).decode(errors='replace')[-2000:]}")
    run["exit_code"] = p.returncode
    return run


def gen_cpu_us_per_request(run: dict) -> float | None:
    cpu = sum(sum((s.get("gen_cpu") or {}).values()) for s in run.get("series") or [])
    n = (run.get("requests") or {}).get("sent") or 0
    return round(cpu * 1e6 / n, 1) if n else None


def rss_kb(pids: list[int]) -> dict:
    out = {}
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[pid] = int(line.split()[1])
        except OSError:
            pass
    return out


def share_over(run_dir: Path, ms: float) -> float:
    from workbooks.loadtest import hist

    total = hist.new()
    for tag, _s, _e, h in hist.read_hlog(run_dir / "latency.hlog"):
        if tag and tag.startswith("latency|"):
            total.add(h)
    n = total.get_total_count()
    below = sum(it.count_at_value_iterated_to for it in total.get_recorded_iterator() if it.value_iterated_to <= ms * 1000)
    return 1 - below / n if n else 0.0


def page_args(serve: Serve) -> list[str]:
    return ["--url", serve.public, "--host", "demo.localhost", "--path", "/", "--no-scrape"]


def bench_stall(serve: Serve, tmp: Path, res: dict) -> None:
    pid = serve.children("public")[0]["pid"]
    done = {}

    def on_line(line: dict) -> None:
        if line.get("event") == "second" and line.get("t") == 3 and not done:
            done["at"] = True
            os.kill(pid, signal.SIGSTOP)
            time.sleep(1.0)
            os.kill(pid, signal.SIGCONT)

    try:
        run = loadtest(serve, tmp / "stall", *page_args(serve), "--rate", "400", "--duration", "10s", on_line=on_line)
    finally:
        os.kill(pid, signal.SIGCONT)
    png = tmp / "stall" / "report.png"
    if png.exists():  # the README's picture of a report
        import shutil

        (ROOT / "load" / "results").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, ROOT / "load" / "loadtest-report.png")
    res["stall"] = {"share_over_100ms": round(share_over(tmp / "stall", 100), 4), "p99_ms": run["latency"]["p99"],
                    "lag_p99_ms": run["lag"]["p99"], "flagged": run["generator_bound"], "exit": run["exit_code"],
                    "service_p99_ms": run["service"]["p99"]}


def closed_capacity(serve: Serve, out: Path, secs: int, *extra: str, cpus: set | None = None) -> dict:
    run = loadtest(serve, out, *extra, "--closed", "--concurrency", "32", "--duration", f"{secs}s", cpus=cpus)
    return run


def bench_rate(serve: Serve, tmp: Path, res: dict, quick: bool) -> float:
    cap = closed_capacity(serve, tmp / "cap", 3 if quick else 5, *page_args(serve))
    capacity = cap["rate"]["achieved"]
    half = round(capacity / 2)
    secs = 10 if quick else 60
    run = loadtest(serve, tmp / "rate", *page_args(serve), "--rate", str(half), "--duration", f"{secs}s")
    planned = half * secs
    res["rate_accuracy"] = {"capacity_closed_32": round(capacity, 1), "rate": half, "secs": secs,
                            "planned": planned, "sent": run["requests"]["sent"],
                            "accuracy": round(run["requests"]["sent"] / planned, 4), "lag_p99_ms": run["lag"]["p99"],
                            "gen_cpu_us_per_get": gen_cpu_us_per_request(run)}
    return capacity


def bench_cost(serve: Serve, tmp: Path, res: dict, quick: bool) -> None:
    """CPU per request of the generator processes at 1,000 req/s (a wake-up from idle costs more
    at low rates, so the figure is taken where a generator's cost matters), small pool documents."""
    secs = "5s" if quick else "10s"
    small = tmp / "doc1k"
    small.mkdir(exist_ok=True)
    (small / "doc.org").write_text(doc_of_size(1024, "cost bench"))
    page = loadtest(serve, tmp / "cost-page", *page_args(serve), "--rate", "1000", "--duration", secs)
    pool = loadtest(serve, tmp / "cost-pool", "--target", "pool", "--corpus", str(small), "--data", str(serve.data),
                    "--rate", "1000", "--duration", secs, "--no-scrape")
    res["generator_cost"] = {"rate": 1000, "page_get_us": gen_cpu_us_per_request(page),
                             "pool_render_us": gen_cpu_us_per_request(pool), "target_us": 300,
                             "page_lag_p99_ms": page["lag"]["p99"], "pool_lag_p99_ms": pool["lag"]["p99"]}


def bench_render_vs_pool(serve: Serve, tmp: Path, res: dict, quick: bool, doc_dir: Path) -> None:
    secs = "4s" if quick else "10s"
    conc = str(2 * CORES + 2)
    http = loadtest(serve, tmp / "render-api", "--target", "render-api", "--url", serve.control, "--key", serve.key,
                    "--corpus", str(doc_dir), "--closed", "--concurrency", conc, "--duration", secs,
                    "--no-scrape")
    pool = loadtest(serve, tmp / "pool", "--target", "pool", "--corpus", str(doc_dir), "--data", str(serve.data),
                    "--closed", "--concurrency", conc, "--duration", secs, "--no-scrape")
    h, p = http["rate"]["achieved"], pool["rate"]["achieved"]
    res["render_api_vs_pool"] = {"doc_bytes": 8192, "concurrency": int(conc), "http_renders_s": round(h, 1),
                                 "pool_renders_s": round(p, 1), "ratio": round(h / p, 3) if p else None,
                                 "http_errors": http["requests"]["errors"], "target": 0.8}


OVERLOAD_CPU_SHARE = 0.35


def bench_overload(serve: Serve, tmp: Path, res: dict, quick: bool, capacity: float) -> None:
    """The public plane at 2x its closed capacity. On a box of fewer than 4 cores a Python generator
    offering twice what a plane does with a whole core needs more than the rest of the box, and a
    generator-bound run measures the generator: there the plane (and its capacity) is held to
    OVERLOAD_CPU_SHARE of CPU 0 (a cgroup v1 quota, as load/overload_probe.py --cpu-share) and the
    generator runs on the other CPUs."""
    from load.overload_probe import CGROUP_CPU, cpu_quota, release_quota

    secs = "5s" if quick else "15s"
    pids = [c["pid"] for c in serve.children("public")]
    cpus = sorted(os.sched_getaffinity(0))
    gen_cpus = None
    group = None
    share = None
    if len(cpus) < 4 and len(cpus) >= 2 and (CGROUP_CPU / "cgroup.procs").exists() and os.geteuid() == 0:
        share, gen_cpus = OVERLOAD_CPU_SHARE, set(cpus[1:])
        for pid in pids:
            os.sched_setaffinity(pid, {cpus[0]})
        group = cpu_quota(pids, share)
    try:
        if group is not None:
            capacity = closed_capacity(serve, tmp / "cap-quota", 3 if quick else 5, *page_args(serve),
                                       cpus=gen_cpus)["rate"]["achieved"]
        half = loadtest(serve, tmp / "half", *page_args(serve), "--rate", str(round(capacity / 2)), "--duration", secs,
                        cpus=gen_cpus)
        before = rss_kb(pids)
        over = loadtest(serve, tmp / "over", *page_args(serve), "--rate", str(round(capacity * 2)), "--duration", secs,
                        "--connections", "0", "--procs", "2", "--allow-saturated", cpus=gen_cpus)
        after = rss_kb(pids)
    finally:
        if group is not None:
            release_quota(group)
            for pid in pids:
                try:
                    os.sched_setaffinity(pid, set(cpus))
                except OSError:
                    pass
    secs_f = float(secs[:-1])
    goodput = over["requests"]["ok"] / secs_f
    res["overload"] = {"cpu_share": share, "capacity": round(capacity, 1), "offered": round(capacity * 2),
                       "goodput": round(goodput, 1),
                       "goodput_ratio": round(goodput / capacity, 3), "refused": over["requests"]["errors"],
                       "by_status": over["requests"]["by_status"], "by_error": over["requests"]["by_error"],
                       "p99_half_ms": half["latency"]["p99"], "p99_admitted_ms": over["admitted"]["p99"],
                       "p99_ratio": round(over["admitted"]["p99"] / max(1e-9, half["latency"]["p99"]), 2),
                       "rss_kb_before": before, "rss_kb_after": after, "generator_bound": over["generator_bound"]}


def bench_find_max(serve: Serve, tmp: Path, res: dict, doc_dir: Path) -> None:
    t0 = time.monotonic()
    fm = loadtest(serve, tmp / "fm", "--target", "render-api", "--url", serve.control, "--key", serve.key,
                  "--corpus", str(doc_dir), "--threshold", "latency.p99<50ms", "--find-max", "--no-scrape")
    took = time.monotonic() - t0
    found = (fm.get("find_max") or {}).get("max_rate")
    # the manual bisection: 20 s runs at fixed rates between half and twice what find-max found, each
    # after a 3 s pause (near the knee one VM hiccup of ~100 ms decides a 10 s run's p99 at 1,000/s)
    lo, hi = (found or 100) / 2, (found or 100) * 2
    manual = []
    while hi / lo > 1.05:
        mid = (lo + hi) / 2
        time.sleep(3)
        r = loadtest(serve, tmp / f"manual-{len(manual)}", "--target", "render-api", "--url", serve.control,
                     "--key", serve.key, "--corpus", str(doc_dir), "--rate", f"{mid:.0f}", "--duration", "20s",
                     "--threshold", "latency.p99<50ms", "--no-scrape")
        ok = r["exit_code"] == 0
        manual.append({"rate": round(mid), "p99_ms": r["latency"]["p99"], "held": ok})
        lo, hi = (mid, hi) if ok else (lo, mid)
    steps = [{k: st.get(k) for k in ("rate", "outcome", "seconds", "latency_p99_ms", "confirm")}
             for st in (fm.get("find_max") or {}).get("steps") or []]
    res["find_max"] = {"found": found, "seconds": round(took, 1), "manual": round(lo, 1), "manual_steps": manual,
                       "steps": steps, "confirmed": (fm.get("find_max") or {}).get("confirmed"),
                       "within": round(found / lo - 1, 3) if found and lo else None}


def table(res: dict) -> str:
    lines = [f"# loadtest_bench: {CORES} cores"]
    s = res.get("stall")
    if s:
        lines.append(f"stall drill (400/s, 1.0 s stop): over 100 ms {s['share_over_100ms'] * 100:.1f} % (9.5-11)  "
                     f"p99 {s['p99_ms']:.0f} ms (850-1050)  lag p99 {s['lag_p99_ms']:.2f} ms (<5)  flagged {s['flagged']}")
    r = res.get("rate_accuracy")
    if r:
        lines.append(f"rate accuracy: {r['sent']}/{r['planned']} = {r['accuracy'] * 100:.2f} % over {r['secs']} s at "
                     f"{r['rate']}/s (half of {r['capacity_closed_32']}/s)  lag p99 {r['lag_p99_ms']:.2f} ms (<2)")
    c = res.get("generator_cost")
    if c:
        lines.append(f"generator CPU per request: page GET {c['page_get_us']} µs, pool render {c['pool_render_us']} µs (<= 300)")
    v = res.get("render_api_vs_pool")
    if v:
        lines.append(f"render API {v['http_renders_s']}/s vs pool {v['pool_renders_s']}/s = {v['ratio']} (>= 0.8)")
    o = res.get("overload")
    if o:
        held = f", plane held to {o['cpu_share']} of a core" if o.get("cpu_share") else ""
        lines.append(f"overload 2x ({o['offered']}/s offered, capacity {o['capacity']}/s{held}): goodput {o['goodput']}/s = "
                     f"{o['goodput_ratio']} (>= 0.9)  p99 admitted {o['p99_admitted_ms']:.1f} ms vs half-load "
                     f"{o['p99_half_ms']:.1f} ms = {o['p99_ratio']}x (<= 10)  refused {o['refused']}  "
                     f"generator bound {o['generator_bound']}")
    f = res.get("find_max")
    if f and "error" in f:
        lines.append(f"find-max: {f['error'][:300]}")
    elif f:
        lines.append(f"find-max render API (p99<50ms): {f['found']}/s in {f['seconds']} s (<= 300); manual bisection "
                     f"{f['manual']}/s; difference {f['within']}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs (a couple of minutes)")
    ap.add_argument("--skip-find-max", action="store_true", help="skip the find-max comparison (minutes)")
    ap.add_argument("--only", default="", help="comma-separated parts to run (stall, rate, cost, render, "
                                                "overload, find-max); the JSON then holds only those")
    ap.add_argument("--json", default=str(ROOT / "load" / "results" / "loadtest_bench.json"))
    ns = ap.parse_args()
    parts = {p.strip() for p in ns.only.split(",") if p.strip()}
    unknown = parts - {"stall", "rate", "cost", "render", "overload", "find-max"}
    if unknown:
        ap.error(f"--only: unknown part(s) {', '.join(sorted(unknown))}")
    want = lambda part: not parts or part in parts  # noqa: E731
    res: dict = {"cores": CORES, "quick": ns.quick}
    with tempfile.TemporaryDirectory(prefix="wb-ltbench-") as d:
        tmp = Path(d)
        doc_dir = tmp / "doc8k"
        doc_dir.mkdir()
        (doc_dir / "doc.org").write_text(doc_of_size(8 * 1024, "render bench"))
        serve = Serve(tmp)
        try:
            serve.wait_up()
            if want("stall"):
                bench_stall(serve, tmp, res)
            capacity = bench_rate(serve, tmp, res, ns.quick) if want("rate") or want("overload") else 0.0
            if want("cost"):
                bench_cost(serve, tmp, res, ns.quick)
            if want("render"):
                bench_render_vs_pool(serve, tmp, res, ns.quick, doc_dir)
            if want("overload"):
                bench_overload(serve, tmp, res, ns.quick, capacity)
            if want("find-max") and not (ns.quick or ns.skip_find_max):
                try:
                    bench_find_max(serve, tmp, res, doc_dir)
                except SystemExit as e:  # the figures above still stand
                    res["find_max"] = {"error": str(e)}
        finally:
            serve.stop()
    print(table(res))
    Path(ns.json).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.json).write_text(json.dumps(res, indent=1, sort_keys=True))
    print(f"JSON: {ns.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
