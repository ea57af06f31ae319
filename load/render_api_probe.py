"""Renders/s through `POST /api/oql/render` against the pool's own rate, with lean generators on both sides.

    .venv/bin/python load/render_api_probe.py [--seconds 4] [--rounds 3] [--concurrency N]
        [--gen-procs 1] [--control-procs N] [--doc-kb 8] [--json PATH]

Starts `wbx serve` in a temp data dir on free loopback ports (every process it starts, it stops),
then measures in alternating rounds (the box is shared; medians are reported):

- http: keep-alive raw sockets in separate generator processes posting the same Org document
  (~200 µs of generator CPU a request, the same order as the pool client), every answer checked
  (status 200, length);
- pool: AsyncPoolClient in separate generator processes, same document, same concurrency;
- the CPU (utime+stime from /proc/<pid>/stat) per render of every process of the service, by
  kind (supervisor, which relays every log line; control; broker; pool workers), and of the
  generators, on both sides. Their totals give the ratio the rates would have on a box with
  nothing else running and every core busy (`cpu_ratio`): a figure a shared box cannot skew.

The figure that matters is http / pool (target >= 0.8). JSON goes to load/results/render_api_probe.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from load._bench_common import doc_of_size, stop_serve  # noqa: E402

CORES = os.cpu_count() or 1
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


GROUPS = (("workbooks.web_control", "control"), ("workbooks.web_public", "public"),
          ("workbooks.pool.broker", "broker"), ("workbooks.pool.worker", "workers"))


def service_groups(root: int) -> dict[int, str]:
    """Every process under `wbx serve` (pid `root`), named by what it is: supervisor (which also
    relays every child's log lines), control, public, broker, workers (the pool's), other."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    kids.setdefault(int(f.read().rsplit(b")", 1)[1].split()[1]), []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    out = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        todo += kids.get(pid, [])
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        name = "supervisor" if pid == root else next((g for m, g in GROUPS if m.encode() in argv), None)
        if name is None:  # pool workers are started as `python -S -c <code>`
            name = "workers" if b"worker" in argv else "other"
        out[pid] = name
    return out


def cpu_by_group(groups: dict[int, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for pid, name in groups.items():
        out[name] = out.get(name, 0.0) + cpu_seconds(pid)
    return out


# -- generators (each in its own process) -----------------------------------------------------------
def _http_worker(port: int, path: str, key: str, body: bytes, conns: int, seconds: float, start_at: float, q) -> None:
    """Keep-alive POSTs on `conns` sockets, one request in flight per socket. A connection the
    server closes after its answer (`connection: close`: hypercorn does after 1,000 requests) is
    replaced; one closed with a request in flight counts as an error (and is replaced)."""
    req = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
           f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    sel = selectors.DefaultSelector()
    while time.time() < start_at:
        time.sleep(0.001)
    c0 = time.process_time()
    done = bad = 0

    def connect() -> None:
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        s.sendall(req)
        sel.register(s, selectors.EVENT_READ, [b""])

    def replace(s) -> None:
        sel.unregister(s)
        s.close()
        connect()

    for _ in range(conns):
        connect()
    end = time.time() + seconds
    while time.time() < end:
        for k, _ in sel.select(0.2):
            s, st = k.fileobj, k.data
            chunk = s.recv(1 << 20)
            if not chunk:
                bad += 1
                replace(s)
                continue
            buf = st[0] + chunk
            while True:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    break
                head = buf[:i].lower()
                j = head.find(b"content-length:")
                n = int(head[j + 15:head.find(b"\r\n", j) if head.find(b"\r\n", j) > 0 else None]) if j >= 0 else 0
                if len(buf) < i + 4 + n:
                    break
                if not head.startswith(b"http/1.1 200"):
                    bad += 1
                buf = buf[i + 4 + n:]
                done += 1
                if b"\r\nconnection: close" in head:
                    replace(s)
                    break
                s.send(req)
            st[0] = buf
    cpu = time.process_time() - c0
    for k in list(sel.get_map().values()):
        k.fileobj.close()
    q.put((done, bad, cpu))


def _pool_worker(endpoint: str, doc: str, conc: int, seconds: float, start_at: float, q) -> None:
    import trio

    from workbooks.pool.client import AsyncPoolClient

    async def main():
        client = AsyncPoolClient(endpoint)
        await client.call("render", [doc], deadline_ms=10000)  # connected before the clock starts
        while time.time() < start_at:
            await trio.sleep(0.001)
        c0 = time.process_time()
        n = bad = 0
        end = trio.current_time() + seconds

        async def one():
            nonlocal n, bad
            while trio.current_time() < end:
                try:
                    await client.call("render", [doc], deadline_ms=10000)
                    n += 1
                except Exception:  # noqa: BLE001 - counted, the run goes on
                    bad += 1

        async with trio.open_nursery() as nursery:
            for _ in range(conc):
                nursery.start_soon(one)
        cpu = time.process_time() - c0
        client.close()
        return n, bad, cpu

    q.put(trio.run(main))


def run_gen(target, args_for, procs: int, seconds: float) -> dict:
    q = mp.Queue()
    start_at = time.time() + 0.5
    ps = [mp.Process(target=target, args=(*args_for(i), seconds, start_at, q)) for i in range(procs)]
    for p in ps:
        p.start()
    res = [q.get(timeout=seconds + 60) for _ in ps]
    for p in ps:
        p.join()
    n = sum(r[0] for r in res)
    return {"n": n, "errors": sum(r[1] for r in res), "rps": n / seconds,
            "gen_cpu_us_per_req": round(1e6 * sum(r[2] for r in res) / max(1, n), 1)}


def split(total: int, parts: int, i: int) -> int:
    return total // parts + (1 if i < total % parts else 0)


# -- the service ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(tmp: Path, control_procs: int | None, env_extra: dict) -> tuple[subprocess.Popen, Path, int]:
    data = tmp / "data"
    cport, pport = free_port(), free_port()
    argv = [sys.executable, "-m", "workbooks", "serve", "--data", str(data),
            "--control", f"127.0.0.1:{cport}", "--public", f"127.0.0.1:{pport}"]
    if control_procs:
        argv += ["--control-procs", str(control_procs)]
    log = open(tmp / "serve.log", "ab")
    env = {**os.environ, "WB_DATA": str(data), "WB_FIRST_RUN": "0", "WB_AGENTS": "0", **env_extra}
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                         start_new_session=True)
    log.close()
    import urllib.request

    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{cport}/readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except Exception:  # noqa: BLE001
            pass
        if p.poll() is not None or time.time() > deadline:
            raise RuntimeError("wbx serve did not come up; see " + str(tmp / "serve.log"))
        time.sleep(0.3)
    return p, data, cport


def probe(ns) -> dict:
    from workbooks.pool import endpoints as E

    tmp = Path(tempfile.mkdtemp(prefix="wb-render-probe-"))
    env_extra = {"WB_ACCESS_LOG": "0"} if ns.no_access_log else {}
    if ns.quart:
        env_extra["WB_OQL_FASTPATH"] = "0"
    serve, data, cport = start_serve(tmp, ns.control_procs, env_extra)
    res: dict = {"cores": CORES, "fast_path": not ns.quart, "access_log": not ns.no_access_log, "doc_bytes": 0,
                 "concurrency": ns.concurrency, "gen_procs": ns.gen_procs, "seconds_per_round": ns.seconds,
                 "rounds": ns.rounds}
    try:
        key = (data / "admin.key").read_text().strip()
        doc = doc_of_size(ns.doc_kb * 1024, "render bench")
        res["doc_bytes"] = len(doc.encode())
        endpoint = E.client_endpoint(data)
        groups = service_groups(serve.pid)
        control = [p for p, g in groups.items() if g == "control"]
        res["control_procs"] = len(control)
        body = doc.encode()
        G, C = ns.gen_procs, ns.concurrency

        def measured(round_fn) -> dict:
            c0 = cpu_by_group(groups)
            r = round_fn()
            c1 = cpu_by_group(groups)
            n = max(1, r["n"])
            r["cpu_us_per_render"] = {g: round(1e6 * (c1[g] - c0.get(g, 0.0)) / n, 1) for g in sorted(c1)}
            r["cpu_us_per_render"]["generator"] = r["gen_cpu_us_per_req"]
            r["cpu_us_per_render_total"] = round(sum(r["cpu_us_per_render"].values()), 1)
            return r

        def http_round() -> dict:
            r = measured(lambda: run_gen(_http_worker, lambda i: (cport, "/api/oql/render", key, body, split(C, G, i)),
                                         G, ns.seconds))
            r["control_cpu_us_per_render"] = r["cpu_us_per_render"].get("control", 0.0)
            return r

        def pool_round() -> dict:
            return measured(lambda: run_gen(_pool_worker, lambda i: (endpoint, doc, split(C, G, i)), G, ns.seconds))

        http_round()  # warm-up (connections, caches)
        hs, ps = [], []
        for i in range(ns.rounds):
            hs.append(http_round())
            ps.append(pool_round())
            print(f"  round {i + 1}: http {hs[-1]['rps']:.0f}/s (control {hs[-1]['control_cpu_us_per_render']} us/render)"
                  f"  pool {ps[-1]['rps']:.0f}/s", flush=True)
        med = lambda rs: sorted(rs, key=lambda r: r["rps"])[len(rs) // 2]  # noqa: E731
        h, p = med(hs), med(ps)
        res["http"] = {**h, "all_rps": [round(r["rps"]) for r in hs]}
        res["pool"] = {**p, "all_rps": [round(r["rps"]) for r in ps]}
        res["ratio"] = round(h["rps"] / max(1e-9, p["rps"]), 3)
        res["control_cpu_us_per_render"] = sorted(r["control_cpu_us_per_render"] for r in hs)[len(hs) // 2]
        # CPU of every process per render (median rounds): on a box with nothing else running and
        # every core busy, rates go as the inverse of these totals, whatever else the box is doing now
        tot = lambda rs: sorted(r["cpu_us_per_render_total"] for r in rs)[len(rs) // 2]  # noqa: E731
        res["cpu_ratio"] = round(tot(ps) / max(1e-9, tot(hs)), 3)
        if sum(r["errors"] for r in hs + ps):
            res["errors"] = sum(r["errors"] for r in hs + ps)
    finally:
        stop_serve(serve)
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def measure(*, seconds: float = 4, rounds: int = 3, concurrency: int = 2 * CORES + 2, gen_procs: int = 1,
            control_procs: int | None = None, doc_kb: int = 8, quart: bool = False,
            no_access_log: bool = False) -> dict:
    """The probe as a function (for load/loadtest_bench.py): the JSON this script writes."""
    return probe(argparse.Namespace(seconds=seconds, rounds=rounds, concurrency=concurrency, gen_procs=gen_procs,
                                    control_procs=control_procs, doc_kb=doc_kb, quart=quart,
                                    no_access_log=no_access_log))


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run (one 2 s round per side)")
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=2 * CORES + 2, help="requests in flight (as load/http_bench.py)")
    ap.add_argument("--gen-procs", type=int, default=1, help="generator processes per side")
    ap.add_argument("--control-procs", type=int, default=None, help="control-plane processes (default: wbx serve's)")
    ap.add_argument("--doc-kb", type=int, default=8)
    ap.add_argument("--no-access-log", action="store_true", help="WB_ACCESS_LOG=0 (to see what the log costs)")
    ap.add_argument("--quart", action="store_true", help="WB_OQL_FASTPATH=0: every request through Quart (the before)")
    ap.add_argument("--json", default=str(ROOT / "load" / "results" / "render_api_probe.json"))
    ns = ap.parse_args()
    if ns.quick:
        ns.seconds, ns.rounds = min(ns.seconds, 2), 1
    print(f"# render_api_probe: {CORES} cores, {ns.rounds} x {ns.seconds:g}s per side, concurrency {ns.concurrency}, "
          f"{ns.gen_procs} generator process(es) per side", flush=True)
    res = probe(ns)
    print(f"\nrenders, {res['doc_bytes'] // 1024} KB document, {res['control_procs']} control-plane process(es), "
          f"fast path {'on' if res['fast_path'] else 'off (Quart)'}")
    print(f"  POST /api/oql/render: {res['http']['rps']:.0f}/s  (generator {res['http']['gen_cpu_us_per_req']} us/req,"
          f" control plane {res['control_cpu_us_per_render']} us CPU/render)")
    print(f"  pool directly:        {res['pool']['rps']:.0f}/s  (generator {res['pool']['gen_cpu_us_per_req']} us/req)")
    print(f"  http / pool = {res['ratio']:.2f}   target >= 0.80" + (f"   ERRORS {res['errors']}" if res.get("errors") else ""))
    for side in ("http", "pool"):
        print(f"  CPU us per render, {side + ':':<5} " + "  ".join(f"{g} {v:.0f}" for g, v in res[side]["cpu_us_per_render"].items()
                                                            if v >= 1) + f"   total {res[side]['cpu_us_per_render_total']:.0f}")
    print(f"  pool CPU / http CPU per render = {res['cpu_ratio']:.2f}   (the ratio on an otherwise idle box, all cores busy)")
    out = Path(ns.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"JSON: {out}")
    return 1 if res.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
