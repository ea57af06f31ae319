"""What "durable before acknowledged" costs a deploy (figures, not pass/fail).

    .venv/bin/python load/durability_bench.py [--quick] [--deploys N] [--json PATH]

Runs two control planes side by side in one run, each with its own temp data dir on the same
file system: one as shipped (git core.fsync=committed,index + fsyncMethod=fsync, SQLite
synchronous=FULL, fsync of files and directories, the deploy intent) and one with the test-only
`WB_FSYNC=0` (no flush anywhere). Deploys go to both in alternating batches (the box is shared:
alternating keeps the noise fair), each a real commit of a ~6 KB workbook with new content:

- sequential: deploy latency p50/p99 and deploys/s for one client;
- 4 clients: deploys/s (they serialise on the tenant lock, as in production);
- the parts, in process: one git commit (GitStore.commit_file) and one SQLite write transaction
  (Store.put_var), flushing vs not.

Target: <= 10 ms added to a deploy's p50. Table on stdout; JSON to load/results/durability_bench.json.
Every process started here is stopped here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbooks.web_control.launch import Planes  # noqa: E402

TARGET_MS = 10.0


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def workbook(i: int) -> bytes:
    body = "".join(f"** Item {i}.{j}\nSome prose for item {j} of round {i}, with /emphasis/ and a [[https://example.org][link]].\n"
                   for j in range(40))
    return f"#+TITLE: Bench {i}\n* Section\n{body}".encode()


class Target:
    """One running control plane with a tenant and its key."""

    def __init__(self, name: str, root: Path, env: dict):
        import httpx

        self.name = name
        self.planes = Planes(root / name / "data", env=env, log_dir=root / name / "logs").start()
        self.http = httpx.Client(timeout=60)
        admin = {"Authorization": f"Bearer {self.planes.admin_key()}"}
        r = self.http.post(self.planes.control_url + "/api/tenants", json={"name": "bench"}, headers=admin)
        r.raise_for_status()
        key = self.http.post(self.planes.control_url + "/api/tenants/bench/keys", json={"scope": "tenant"},
                             headers=admin).json()["key"]
        self.auth = {"Authorization": f"Bearer {key}"}
        self.n = 0
        self.lat: list[float] = []
        self.par_rates: list[float] = []
        self.seq_time = 0.0

    def deploy(self, client, wid: str) -> float:
        self.n += 1
        body = workbook(self.n)
        t0 = time.perf_counter()
        r = client.put(f"{self.planes.control_url}/api/workbooks/{wid}", content=body, headers=self.auth)
        dt = time.perf_counter() - t0
        if r.status_code != 200 or "sha" not in r.json():
            raise RuntimeError(f"{self.name}: deploy answered {r.status_code} {r.text[:200]}")
        return dt

    def batch_sequential(self, n: int) -> None:
        t0 = time.perf_counter()
        for i in range(n):
            self.lat.append(self.deploy(self.http, f"doc-{i % 8}"))
        self.seq_time += time.perf_counter() - t0

    def batch_parallel(self, n: int, clients: int = 4) -> None:
        import httpx

        def run(c: int) -> None:
            with httpx.Client(timeout=60) as h:
                for i in range(n // clients):
                    self.deploy(h, f"par-{c}-{i % 4}")

        threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.par_rates.append((n // clients * clients) / (time.perf_counter() - t0))

    def close(self) -> None:
        self.http.close()
        self.planes.stop()


def parts(root: Path, n: int) -> dict:
    """One git commit and one SQLite write, flushing vs WB_FSYNC=0, alternating."""
    from workbooks.gitstore import GitStore
    from workbooks.store import Store

    out: dict = {}
    saved = os.environ.get("WB_FSYNC")
    try:
        for label, val in (("flush", "1"), ("no_flush", "0")):
            os.environ["WB_FSYNC"] = val
            d = root / f"parts-{label}"
            gs = GitStore(d, "p").ensure()
            store = Store(d)
            store.create_tenant("p")
            out[label] = {"gs": gs, "store": store, "git": [], "sqlite": []}
        for i in range(n):
            for label, val in (("flush", "1"), ("no_flush", "0")):
                os.environ["WB_FSYNC"] = val
                o = out[label]
                t0 = time.perf_counter()
                o["gs"].commit_file("x.org", f"* {i}\n".encode(), f"bench {i}")
                o["git"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                o["store"].put_var("p", "k", str(i), False)
                o["sqlite"].append(time.perf_counter() - t0)
    finally:
        if saved is None:
            os.environ.pop("WB_FSYNC", None)
        else:
            os.environ["WB_FSYNC"] = saved
    res = {}
    for label, o in out.items():
        o["store"].close()
        res[label] = {"git_commit_p50_ms": pct(o["git"], 50) * 1000, "sqlite_tx_p50_ms": pct(o["sqlite"], 50) * 1000}
    return res


def fsync_probe(root: Path, n: int) -> dict:
    """The data volume's own fsync latency right now (a 4 KB file, then its directory after a
    rename): a deploy's added cost is about twelve of these."""
    d = root / "probe"
    d.mkdir(exist_ok=True)
    files, dirs = [], []
    for i in range(n):
        p = d / f"f{i}"
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, os.urandom(4096))
        t0 = time.perf_counter()
        os.fsync(fd)
        files.append(time.perf_counter() - t0)
        os.close(fd)
        os.rename(p, d / f"g{i}")
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        t0 = time.perf_counter()
        os.fsync(dfd)
        dirs.append(time.perf_counter() - t0)
        os.close(dfd)
    return {"file_fsync_p50_ms": pct(files, 50) * 1000, "dir_fsync_p50_ms": pct(dirs, 50) * 1000}


def fs_type(path: Path) -> str:
    try:
        return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="durability_bench.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--quick", action="store_true", help="a short run (CI smoke): fewer deploys")
    ap.add_argument("--deploys", type=int, default=None, help="sequential deploys per configuration (default 300, quick 40)")
    ap.add_argument("--json", default=str(ROOT / "load" / "results" / "durability_bench.json"), help="where to write JSON")
    ns = ap.parse_args(argv)
    n = ns.deploys or (40 if ns.quick else 300)
    if n < 8:
        ap.error("--deploys must be at least 8")
    batch = 4 if ns.quick else 10
    git_version = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()

    with tempfile.TemporaryDirectory(prefix="wb-durability-") as tmp:
        root = Path(tmp)
        targets = {}
        try:
            targets["flush"] = Target("flush", root, {})
            targets["no_flush"] = Target("no_flush", root, {"WB_FSYNC": "0"})
            for t in targets.values():  # warm up: kernel, page cache, first commits
                t.batch_sequential(4)
                t.lat.clear()
                t.seq_time = 0.0
            done = 0
            probes = []
            while done < n:
                k = min(batch, n - done)
                for t in targets.values():
                    t.batch_sequential(k)
                probes.append(fsync_probe(root, 5))
                done += k
            for _ in range(2 if ns.quick else 5):
                for t in targets.values():
                    t.batch_parallel(16 if ns.quick else 40)
            part = parts(root, 20 if ns.quick else 100)
            fs = fs_type(root)
        finally:
            for t in targets.values():
                t.close()

    rows = {}
    for name, t in targets.items():
        rows[name] = {
            "deploys": len(t.lat),
            "p50_ms": pct(t.lat, 50) * 1000,
            "p99_ms": pct(t.lat, 99) * 1000,
            "deploys_per_s": len(t.lat) / t.seq_time if t.seq_time else 0.0,
            "deploys_per_s_4_clients": statistics.median(t.par_rates) if t.par_rates else 0.0,
            **part[name],
        }
    added = rows["flush"]["p50_ms"] - rows["no_flush"]["p50_ms"]
    result = {
        "bench": "durability",
        "quick": ns.quick,
        "git": git_version,
        "fs": fs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
        "rows": rows,
        "added_p50_ms": added,
        "volume_fsync_p50_ms": {k: statistics.median(p[k] for p in probes) for k in probes[0]},
        "load_avg": os.getloadavg(),
        "target_added_p50_ms": TARGET_MS,
        "within_target": added <= TARGET_MS,
        "ts": time.time(),
    }
    hdr = f"{'':<10} {'p50 ms':>8} {'p99 ms':>8} {'deploys/s':>10} {'4 clients/s':>12} {'git commit p50':>15} {'sqlite tx p50':>14}"
    print(f"durability cost of a deploy ({git_version}, {fs}, {len(targets['flush'].lat)} sequential deploys each)")
    print(hdr)
    for name, r in rows.items():
        print(f"{name:<10} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['deploys_per_s']:>10.1f} "
              f"{r['deploys_per_s_4_clients']:>12.1f} {r['git_commit_p50_ms']:>12.2f} ms {r['sqlite_tx_p50_ms']:>11.2f} ms")
    vf = result["volume_fsync_p50_ms"]
    print(f"added to p50: {added:.2f} ms (target <= {TARGET_MS:.0f} ms: {'met' if added <= TARGET_MS else 'NOT met'})")
    print(f"the volume's own fsync p50 meanwhile: file {vf['file_fsync_p50_ms']:.2f} ms, directory "
          f"{vf['dir_fsync_p50_ms']:.2f} ms (a deploy flushes ~12 times); load average "
          + " ".join(f"{x:.1f}" for x in result["load_avg"]))
    out = Path(ns.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"json: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
