"""HTTP benchmarks for the two planes (figures, not pass/fail).

    .venv/bin/python load/http_bench.py [--quick] [--json PATH]

Starts the whole service (`wbx serve`: supervisor, pool, control plane, public plane) in a temp
data dir on free loopback ports, and measures in one run:

1. Public plane: requests/s for a cached page (keep-alive, Host header → workbook) with one
   process, then one per core (short rounds alternating with the floor, medians: the box is shared) (extra processes join the same port with SO_REUSEPORT), against the
   floor: a bare hypercorn trio ASGI app returning the same bytes and headers, one process and one
   per core. The ratio plane/floor is the figure that matters (target >= 0.8). nginx serving the
   same file is printed for scale when nginx is installed.
2. Control plane: deploys/s and p50/p99 latency for a 50 KB workbook (sequential, and 4 clients).
3. Renders/s through POST /api/oql/render compared with the pool's own rate (AsyncPoolClient),
   same document, same concurrency.

Load comes from `wrk` when installed, else from a small keep-alive raw-socket generator in
worker processes. Every process started here is stopped here. JSON goes to load/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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

from workbooks.web_control.launch import free_port  # noqa: E402

CORES = os.cpu_count() or 1


# -- the floor: a bare hypercorn trio app -----------------------------------------------------------
def run_bare(port: int, page_file: str, headers_file: str) -> None:
    """A bare ASGI app on hypercorn's trio worker: the same page bytes and headers, nothing else."""
    import trio

    from workbooks.log import configure
    from workbooks.web_control.runtime import listen_socket, serve_app

    body = Path(page_file).read_bytes()
    hdrs = [(k.encode(), v.encode()) for k, v in json.loads(Path(headers_file).read_text())]
    hdrs.append((b"content-length", str(len(body)).encode()))

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                m = await receive()
                if m["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif m["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})

    log = configure("bench-bare")
    trio.run(serve_app, app, listen_socket("127.0.0.1", port), "bare", log)


# -- load generation ------------------------------------------------------------------------------
def wrk(url: str, host: str, seconds: float, conns: int = 32, threads: int = 2) -> dict:
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, int(seconds))}s", "--latency", "-H", f"Host: {host}", url],
        capture_output=True, text=True, timeout=seconds + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)

    def ms(m):
        if not m:
            return None
        v = float(m.group(1))
        return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v

    return {"rps": rps, "p50_ms": ms(p50), "p99_ms": ms(p99), "errors": int(non2xx.group(1)) if non2xx else 0,
            "tool": "wrk"}


def _pygen_worker(port: int, host: str, seconds: float, conns: int, q) -> None:
    import selectors

    req = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    sel = selectors.DefaultSelector()
    done = 0
    bad = 0
    end = time.time() + seconds
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        s.send(req)
        sel.register(s, selectors.EVENT_READ, {"buf": b""})
    while time.time() < end:
        for key, _ in sel.select(0.5):
            s, st = key.fileobj, key.data
            chunk = s.recv(1 << 20)
            if not chunk:
                sel.unregister(s)
                continue
            st["buf"] += chunk
            while True:
                head, sep, rest = st["buf"].partition(b"\r\n\r\n")
                if not sep:
                    break
                m = re.search(rb"content-length:\s*(\d+)", head, re.I)
                n = int(m.group(1)) if m else 0
                if len(rest) < n:
                    break
                if not head.startswith(b"HTTP/1.1 200"):
                    bad += 1
                st["buf"] = rest[n:]
                done += 1
                s.send(req)
    q.put((done, bad))


def pygen(port: int, host: str, seconds: float, conns: int = 32, procs: int = 2) -> dict:
    import multiprocessing as mp

    q = mp.Queue()
    ps = [mp.Process(target=_pygen_worker, args=(port, host, seconds, conns // procs, q)) for _ in range(procs)]
    for p in ps:
        p.start()
    res = [q.get() for _ in ps]
    for p in ps:
        p.join()
    return {"rps": sum(r[0] for r in res) / seconds, "errors": sum(r[1] for r in res), "tool": "python"}


def load(port: int, host: str, seconds: float) -> dict:
    if shutil.which("wrk"):
        return wrk(f"http://127.0.0.1:{port}/", host, seconds)
    return pygen(port, host, seconds)


# -- processes ------------------------------------------------------------------------------------
class Procs:
    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], name: str, env: dict | None = None) -> subprocess.Popen:
        out = open(self.logdir / f"{name}.log", "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env={**os.environ, **(env or {})}, start_new_session=True)
        out.close()
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen, grace: float = 20) -> None:
        stop_serve(p, grace)
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.procs)):
            self.stop(p)


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(port)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


# -- phases ---------------------------------------------------------------------------------------
def bench_public(pr: Procs, tmp: Path, data: Path, pport: int, host: str, secs: float, rounds: int, res: dict) -> None:
    import httpx

    page = httpx.get(f"http://127.0.0.1:{pport}/", headers={"Host": host})
    assert page.status_code == 200
    keep = ("content-type", "content-security-policy", "cache-control", "vary", "x-content-type-options",
            "referrer-policy", "last-modified", "etag")
    (tmp / "page.html").write_bytes(page.content)
    (tmp / "headers.json").write_text(json.dumps([[k, page.headers[k]] for k in keep if k in page.headers]))
    rows = {}
    bport = free_port()

    def alternate(key_plane: str, key_floor: str) -> None:
        """Plane and floor measured in turns (load on a shared box drifts); the median of each."""
        planes, floors = [], []
        for _ in range(rounds):
            planes.append(load(qport, host, secs))
            floors.append(load(bport, host, secs))
        med = lambda rs: sorted(rs, key=lambda r: r["rps"])[len(rs) // 2]  # noqa: E731
        rows[key_plane], rows[key_floor] = med(planes), med(floors)
        rows[key_plane]["all_rps"] = [round(r["rps"]) for r in planes]
        rows[key_floor]["all_rps"] = [round(r["rps"]) for r in floors]

    # Both sides are started the same way by this script (the stack's own public process keeps
    # running but gets no load): N plane processes on one port against N bare processes on another.
    qport = free_port()

    def plane_proc(i: int):
        return pr.start([sys.executable, "-m", "workbooks.web_public", "--port", str(qport), "--data-dir", str(data),
                         "--proc", str(i)], f"public-bench-{i}")

    def bare_proc(i: int):
        return pr.start([sys.executable, __file__, "--bare", str(bport), str(tmp / "page.html"),
                         str(tmp / "headers.json")], f"bare-{i}")

    started = [plane_proc(1), bare_proc(1)]
    wait_port(qport)
    wait_port(bport)
    time.sleep(1.0)
    alternate("plane_1", "floor_1")
    started += [plane_proc(i) for i in range(2, CORES + 1)] + [bare_proc(i) for i in range(2, CORES + 1)]
    time.sleep(3.0)
    alternate(f"plane_{CORES}", f"floor_{CORES}")
    for p in started:
        pr.stop(p)
    # nginx, for scale
    if shutil.which("nginx"):
        nport = free_port()
        root = tmp / "nginx"
        (root / "www").mkdir(parents=True, exist_ok=True)
        (root / "www" / "index.html").write_bytes(page.content)
        conf = root / "nginx.conf"
        conf.write_text(
            f"worker_processes {CORES};\npid {root}/nginx.pid;\nerror_log {root}/error.log;\n"
            "events { worker_connections 1024; }\n"
            "http { access_log off; keepalive_requests 1000000; default_type text/html;\n"
            f"  client_body_temp_path {root}/body; proxy_temp_path {root}/proxy; fastcgi_temp_path {root}/fcgi;\n"
            f"  uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;\n"
            f"  server {{ listen 127.0.0.1:{nport}; root {root}/www; index index.html; }} }}\n")
        ng = pr.start(["nginx", "-c", str(conf), "-p", str(root), "-g", "daemon off;"], "nginx")
        try:
            wait_port(nport)
            rows[f"nginx_{CORES}"] = load(nport, host, secs)
        except Exception as e:  # noqa: BLE001
            rows[f"nginx_{CORES}"] = {"error": str(e)}
        pr.stop(ng)
    res["public"] = rows
    res["public"]["ratio_1"] = round(rows["plane_1"]["rps"] / rows["floor_1"]["rps"], 3)
    res["public"][f"ratio_{CORES}"] = round(rows[f"plane_{CORES}"]["rps"] / rows[f"floor_{CORES}"]["rps"], 3)


def bench_deploys(control: str, admin: dict, n: int, res: dict) -> None:
    import threading

    import httpx

    c = httpx.Client(timeout=60)
    assert c.post(control + "/api/tenants", json={"name": "bench"}, headers=admin).status_code == 201
    key = c.post(control + "/api/tenants/bench/keys", json={"scope": "tenant"}, headers=admin).json()["key"]
    h = {"Authorization": f"Bearer {key}"}
    base = doc_of_size(50 * 1024, "deploy bench")
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        r = c.put(control + "/api/workbooks/big", content=(base + f"\n* rev {i}\n").encode(), headers=h)
        lat.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200 and "sha" in r.json(), r.text
    wall = time.perf_counter() - t0
    res["deploy_sequential"] = {"n": n, "bytes": len(base), "deploys_s": round(n / wall, 1),
                                "p50_ms": round(pct(lat, 50), 1), "p99_ms": round(pct(lat, 99), 1)}
    # 4 clients, one workbook each (one tenant: deploys are serialised on its repo)
    lat4: list[float] = []
    per = max(1, n // 4)

    def client(k: int) -> None:
        with httpx.Client(timeout=60) as cc:
            for i in range(per):
                t = time.perf_counter()
                r = cc.put(control + f"/api/workbooks/big{k}", content=(base + f"\n* rev {i}\n").encode(), headers=h)
                lat4.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, r.text

    t0 = time.perf_counter()
    ts = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    res["deploy_4_clients"] = {"n": per * 4, "deploys_s": round(per * 4 / wall, 1),
                               "p50_ms": round(pct(lat4, 50), 1), "p99_ms": round(pct(lat4, 99), 1)}
    c.close()


def bench_renders(control: str, admin: dict, pool_endpoint: str, secs: float, res: dict) -> None:
    import httpx
    import trio

    from workbooks.pool.client import AsyncPoolClient

    doc = doc_of_size(8 * 1024, "render bench")
    conc = 2 * CORES + 2
    key = admin["Authorization"]

    async def via_http() -> tuple[int, list]:
        n = 0
        lat: list = []
        end = trio.current_time() + secs
        async with httpx.AsyncClient(timeout=60) as c:
            async def one():
                nonlocal n
                while trio.current_time() < end:
                    t = time.perf_counter()
                    r = await c.post(control + "/api/oql/render", content=doc.encode(), headers={"Authorization": key})
                    assert r.status_code == 200, r.text
                    lat.append((time.perf_counter() - t) * 1000)
                    n += 1

            async with trio.open_nursery() as nursery:
                for _ in range(conc):
                    nursery.start_soon(one)
        return n, lat

    async def via_pool() -> tuple[int, list]:
        client = AsyncPoolClient(pool_endpoint)
        n = 0
        lat: list = []
        end = trio.current_time() + secs

        async def one():
            nonlocal n
            while trio.current_time() < end:
                t = time.perf_counter()
                await client.call("render", [doc], deadline_ms=10000)
                lat.append((time.perf_counter() - t) * 1000)
                n += 1

        async with trio.open_nursery() as nursery:
            for _ in range(conc):
                nursery.start_soon(one)
        client.close()
        return n, lat

    if shutil.which("wrk"):
        # wrk is C: the client does not eat the CPU the control plane needs
        script = Path(tempfile.mkdtemp(prefix="wb-wrk-")) / "render.lua"
        (script.parent / "doc.org").write_text(doc)
        script.write_text(
            'wrk.method = "POST"\n'
            f'local f = io.open("{script.parent / "doc.org"}", "rb"); wrk.body = f:read("*all"); f:close()\n'
            f'wrk.headers["Authorization"] = "{key}"\n')
        out = subprocess.run(["wrk", "-t1", f"-c{conc}", f"-d{max(1, int(secs))}s", "--latency", "-s", str(script),
                              control + "/api/oql/render"], capture_output=True, text=True, timeout=secs + 60).stdout
        shutil.rmtree(script.parent, ignore_errors=True)
        assert "Non-2xx" not in out, out
        hn = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)) * secs
        m = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
        v = float(m.group(1))
        hl = [v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v]
    else:
        hn, hl = trio.run(via_http)
    pn, pl = trio.run(via_pool)
    res["renders"] = {
        "doc_bytes": len(doc), "concurrency": conc,
        "http_renders_s": round(hn / secs, 1), "http_p50_ms": round(pct(hl, 50), 2),
        "pool_renders_s": round(pn / secs, 1), "pool_p50_ms": round(pct(pl, 50), 2),
        "ratio": round((hn / secs) / max(1e-9, pn / secs), 3),
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--bare":
        run_bare(int(sys.argv[2]), sys.argv[3], sys.argv[4])
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    ap.add_argument("--json", default=str(ROOT / "load" / "results" / "http_bench.json"))
    ap.add_argument("--control-procs", type=int, default=CORES, help="control-plane processes (default: one per core)")
    ns = ap.parse_args()
    secs = 3 if ns.quick else 10
    n_deploys = 24 if ns.quick else 120
    tmp = Path(tempfile.mkdtemp(prefix="wb-http-bench-"))
    data = tmp / "data"
    pr = Procs(tmp)
    res: dict = {"cores": CORES, "quick": ns.quick, "seconds_per_point": secs, "control_procs": ns.control_procs,
                 "load_tool": "wrk" if shutil.which("wrk") else "python"}
    cport, pport = free_port(), free_port()
    try:
        stack = pr.start([sys.executable, "-m", "workbooks", "serve", "--data", str(data), "--workers", str(CORES),
                          "--control", f"127.0.0.1:{cport}", "--public", f"127.0.0.1:{pport}",
                          "--control-procs", str(ns.control_procs)], "serve",
                         env={"WB_DATA": str(data)})
        host = f"demo.localhost:{pport}"
        deadline = time.time() + 120
        import httpx

        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{pport}/", headers={"Host": host}).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if stack.poll() is not None or time.time() > deadline:
                raise RuntimeError("wbx serve did not come up; see " + str(tmp / "serve.log"))
            time.sleep(0.3)
        admin = {"Authorization": "Bearer " + (data / "admin.key").read_text().strip()}
        control = f"http://127.0.0.1:{cport}"
        print(f"# http_bench: {CORES} cores, {secs}s per point, load from {res['load_tool']}", flush=True)
        res["public_rounds"] = 5 if ns.quick else 9
        bench_public(pr, tmp, data, pport, host, 1 if ns.quick else 2, res["public_rounds"], res)
        bench_deploys(control, admin, n_deploys, res)
        from workbooks.pool import endpoints as E

        bench_renders(control, admin, E.client_endpoint(data), secs, res)
    finally:
        pr.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(res)
    out = Path(ns.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nJSON: {out}")
    return 0


def print_table(res: dict) -> None:
    p = res["public"]
    n = res["cores"]
    print(f"\npublic plane, cached page (keep-alive; median of {res['public_rounds']} alternating rounds)")
    print(f"  {'server':<34} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for label, k in [("workbooks public plane, 1 proc", "plane_1"), ("bare hypercorn trio app, 1 proc", "floor_1"),
                     (f"workbooks public plane, {n} procs", f"plane_{n}"), (f"bare hypercorn trio app, {n} procs", f"floor_{n}"),
                     (f"nginx, {n} workers (for scale)", f"nginx_{n}")]:
        r = p.get(k)
        if r and "rps" in r:
            f = lambda v: f"{v:8.2f}" if isinstance(v, (int, float)) else f"{'-':>8}"  # noqa: E731
            print(f"  {label:<34} {r['rps']:>10.0f} {f(r.get('p50_ms'))} {f(r.get('p99_ms'))}")
    print(f"  plane / floor: {p['ratio_1']:.2f} (1 proc), {p[f'ratio_{n}']:.2f} ({n} procs)   target >= 0.80")
    d, d4 = res["deploy_sequential"], res["deploy_4_clients"]
    print(f"\ncontrol plane deploys, {d['bytes'] // 1024} KB workbook (validate + render + index + git commit)")
    print(f"  sequential: {d['deploys_s']:.1f} deploys/s   p50 {d['p50_ms']:.1f} ms   p99 {d['p99_ms']:.1f} ms   (n={d['n']})")
    print(f"  4 clients:  {d4['deploys_s']:.1f} deploys/s   p50 {d4['p50_ms']:.1f} ms   p99 {d4['p99_ms']:.1f} ms   (n={d4['n']})")
    r = res["renders"]
    print(f"\nrenders, {r['doc_bytes'] // 1024} KB document, concurrency {r['concurrency']}, "
          f"{res['control_procs']} control-plane process(es)")
    print(f"  POST /api/oql/render: {r['http_renders_s']:.0f}/s (p50 {r['http_p50_ms']} ms)")
    print(f"  pool directly:        {r['pool_renders_s']:.0f}/s (p50 {r['pool_p50_ms']} ms)   http / pool = {r['ratio']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
