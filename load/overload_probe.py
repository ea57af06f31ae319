"""Overload probe: does a plane degrade or collapse when offered twice what it can serve?

    .venv/bin/python load/overload_probe.py [--plane public|control] [--seconds 8] [--factor 2]
                                            [--url URL --host HOST] [--json PATH]

Without --url it starts a whole `wbx serve` (one process per plane) in a temp data dir and aims at
the demo page (public) or POST /api/oql/render with an 8 KB document (control). Then, in order:

1. capacity: a closed loop of 32 keep-alive connections (2 generator processes) for --seconds;
2. half load: an open-model load at 0.5x that capacity (its p99 is the reference);
3. overload: an open-model load at --factor x capacity with unlimited connections (a new one
   whenever none is idle): goodput (200s completed inside the window), p99 of admitted requests,
   refusals (503s and connections refused or closed before an answer) and how fast they came,
   timeouts, dropped arrivals, the most connections open at once, each server process's RSS and
   sockets sampled every 0.25 s.

The generator is raw non-blocking sockets on epoll in 2 processes; each request is timed from its
intended start (coordinated omission included), and the generator's own lateness (`lag`) is
reported so a generator-bound run can be told from a server-bound one. Figures, not pass/fail;
JSON goes to load/results/overload_probe.json. Every process started here is stopped here.
"""

from __future__ import annotations

import argparse
import errno
import json
import multiprocessing as mp
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from load._bench_common import stop_serve  # noqa: E402

PROCS = 2
CLOSED_CONNS = 32
TIMEOUT_S = 10.0
MAX_INFLIGHT = 8000  # per generator process (its file limit is raised to match)
_CL = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)
_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.I)


class _Conn:
    __slots__ = ("sock", "buf", "intended", "sent", "state", "uses")

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.intended = 0.0
        self.sent = 0.0
        self.state = "connecting"
        self.uses = 0


def _gen(spec: dict, q) -> None:
    """One generator process: closed (spec['conns'] loops) or open (spec['rate'] arrivals/s)."""
    import resource

    if spec.get("renice") is not None:
        os.setpriority(os.PRIO_PROCESS, 0, spec["renice"])
    if spec.get("cpus"):
        os.sched_setaffinity(0, spec["cpus"])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    addr, req, secs = tuple(spec["addr"]), spec["request"], spec["seconds"]
    closed = spec["mode"] == "closed"
    sel = selectors.DefaultSelector()
    idle: list[_Conn] = []
    busy: set[_Conn] = set()
    out = {"ok": [], "s503": [], "refused": [], "other": {}, "timeouts": 0, "dropped": 0, "lag": [],
           "new_conns": 0, "max_open": 0, "retry_after": 0, "sent": 0, "late_ok": 0}
    t0 = spec["start"]
    end = t0 + secs
    hard_end = end + spec.get("drain", 3.0)
    gap = 1.0 / spec["rate"] if not closed else 0.0
    nxt = t0 + spec.get("phase", 0.0) * gap

    def open_conn(now: float, intended: float) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = _Conn(s)
        c.intended = intended
        out["new_conns"] += 1
        rc = s.connect_ex(addr)
        busy.add(c)
        out["max_open"] = max(out["max_open"], len(busy) + len(idle))
        if rc in (0, errno.EINPROGRESS):
            sel.register(s, selectors.EVENT_WRITE, c)
        else:
            finish(c, time.perf_counter(), "refused")

    def send(c: _Conn, now: float) -> None:
        c.state = "busy"
        c.sent = now
        c.uses += 1
        out["sent"] += 1
        try:
            c.sock.send(req)
        except OSError:
            finish(c, now, "refused")
            return
        sel.modify(c.sock, selectors.EVENT_READ, c)

    def close(c: _Conn) -> None:
        busy.discard(c)
        try:
            idle.remove(c)
        except ValueError:
            pass
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def finish(c: _Conn, now: float, kind: str, status: int = 0, keep: bool = False) -> None:
        ms = (now - c.intended) * 1000.0
        if kind == "ok":
            if now <= end:
                out["ok"].append(ms)
            else:
                out["late_ok"] += 1
        elif kind == "503":
            out["s503"].append(ms)
        elif kind == "refused":
            out["refused"].append(ms)
        else:
            out["other"][kind] = out["other"].get(kind, 0) + 1
        if keep:
            c.state = "idle"
            c.buf = b""
            busy.discard(c)
            idle.append(c)
        else:
            close(c)
        if closed and now < end:
            nc = idle.pop() if idle else None
            if nc is not None:
                busy.add(nc)
                nc.intended = now
                send(nc, now)
            else:
                open_conn(now, now)

    def on_read(c: _Conn, now: float) -> None:
        try:
            chunk = c.sock.recv(1 << 20)
        except (ConnectionResetError, BrokenPipeError, ConnectionRefusedError):
            chunk = b""
        except BlockingIOError:
            return
        if c.state == "idle":
            close(c)  # the server closed an idle keep-alive connection (or sent junk): drop it
            return
        if not chunk:
            finish(c, now, "refused")
            return
        c.buf += chunk
        head, sep, rest = c.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        m = _CL.search(head)
        n = int(m.group(1)) if m else 0
        if len(rest) < n:
            return
        status = int(head[9:12])
        keep = not _CLOSE.search(head) and len(rest) == n
        if status == 200:
            finish(c, now, "ok", status, keep)
        elif status == 503:
            if b"\r\nretry-after:" in head.lower():
                out["retry_after"] += 1
            if "sample_503" not in out:
                out["sample_503"] = (head + b"\r\n\r\n" + rest[:n]).decode("latin-1")
            finish(c, now, "503", status, keep)
        else:
            finish(c, now, f"http_{status}", status, keep)

    last_sweep = t0
    if closed:
        while time.perf_counter() < t0:
            time.sleep(0.0005)
        now = time.perf_counter()
        for _ in range(spec["conns"]):
            open_conn(now, now)
    while True:
        now = time.perf_counter()
        if not closed:
            while nxt <= now and nxt < end:
                out["lag"].append((now - nxt) * 1000.0)
                if len(busy) >= MAX_INFLIGHT:
                    out["dropped"] += 1
                elif idle:
                    c = idle.pop()
                    busy.add(c)
                    c.intended = nxt
                    send(c, now)
                else:
                    open_conn(now, nxt)
                nxt += gap
        if now >= end and (closed or not busy) or now >= hard_end:
            break
        wait = max(0.0, min(nxt, end) - now) if not closed and nxt < end else 0.05
        for key, ev in sel.select(wait):
            c = key.data
            t = time.perf_counter()
            if c.state == "connecting":
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    finish(c, t, "refused")
                else:
                    send(c, t)
            else:
                on_read(c, t)
        # requests older than the timeout: the client gives up on them
        if now - last_sweep > 0.5:
            last_sweep = now
            for c in [c for c in busy if now - c.intended > TIMEOUT_S]:
                out["timeouts"] += 1
                close(c)
    if not closed:
        out["timeouts"] += len(busy)  # still unanswered when the drain ended (a closed loop just stops)
    for c in list(busy) + list(idle):
        close(c)
    q.put(out)


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(len(xs) * p / 100))], 2)


class Sampler:
    """RSS and open sockets of every process under `root_pid`, every 0.25 s, in a thread."""

    def __init__(self, root_pid: int):
        self.root = root_pid
        self.rows: dict[int, dict] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def tree(self) -> list[int]:
        kids: dict[int, list[int]] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    stat = Path(f"/proc/{name}/stat").read_text()
                except OSError:
                    continue
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(name))
        out, todo = [], [self.root]
        while todo:
            p = todo.pop()
            out.append(p)
            todo += kids.get(p, [])
        return out

    def sample(self) -> None:
        for pid in self.tree():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
                cmd = " ".join(argv)
                socks = 0
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    try:
                        socks += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
                    except OSError:
                        pass
            except OSError:
                continue
            rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) // 1024 if "VmRSS" in status else 0
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                cpu = 0.0
            module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
            role = next((r for r in ("web_public", "web_control") if module == f"workbooks.{r}"), None) or \
                next((r for r in ("pool.worker", "pool.broker", "serve") if r in cmd), cmd[:40])
            row = self.rows.setdefault(pid, {"role": role, "rss_mb_first": rss, "rss_mb_max": rss,
                                             "sockets_max": socks})
            row.setdefault("cpu_s_first", cpu)
            row["cpu_s"] = round(cpu - row["cpu_s_first"], 2)
            row["rss_mb_max"] = max(row["rss_mb_max"], rss)
            row["rss_mb_last"] = rss
            row["sockets_max"] = max(row["sockets_max"], socks)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.sample()

    def __enter__(self):
        self.rows = {}
        self.sample()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._stop.clear()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.sample()

    def plane(self, role: str) -> list[dict]:
        return [dict(pid=p, **r) for p, r in self.rows.items() if r["role"] == role]


def listen_drops() -> int:
    """The box's TcpExt ListenOverflows (a full accept queue dropping connections), for deltas."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for a, b in zip(lines, lines[1:]):
        if a.startswith("TcpExt:") and b.startswith("TcpExt:"):
            row = dict(zip(a.split()[1:], b.split()[1:]))
            return int(row.get("ListenOverflows", 0))
    return 0


RENICE: int | None = None  # --renice: the generator processes run at this nice value too
GEN_CPUS: set[int] | None = None  # --pin: the generator processes run on these CPUs only


def run_phase(addr, request: bytes, mode: str, seconds: float, *, rate: float = 0.0,
              conns: int = CLOSED_CONNS, sampler: Sampler | None = None, role: str = "web_public") -> dict:
    q = mp.Queue()
    start = time.perf_counter() + 0.3
    specs = [{"addr": addr, "request": request, "mode": mode, "seconds": seconds, "start": start,
              "rate": rate / PROCS if rate else 0.0, "phase": i / PROCS, "conns": conns // PROCS,
              "renice": RENICE, "cpus": GEN_CPUS}
             for i in range(PROCS)]
    ps = [mp.Process(target=_gen, args=(s, q)) for s in specs]
    if sampler:
        sampler.__enter__()
    drops0 = listen_drops()
    for p in ps:
        p.start()
    res = [q.get() for _ in ps]
    for p in ps:
        p.join()
    if sampler:
        sampler.__exit__()
    ok = [x for r in res for x in r["ok"]]
    s503 = [x for r in res for x in r["s503"]]
    ref = [x for r in res for x in r["refused"]]
    lag = [x for r in res for x in r["lag"]]
    other: dict = {}
    for r in res:
        for k, v in r["other"].items():
            other[k] = other.get(k, 0) + v
    out = {
        "mode": mode, "seconds": seconds, "offered_rps": round(rate, 1) if rate else None,
        "goodput_rps": round(len(ok) / seconds, 1), "ok": len(ok),
        "p50_ms": pct(ok, 50), "p99_ms": pct(ok, 99), "max_ms": round(max(ok), 2) if ok else None,
        "refused_503": len(s503), "refused_503_p99_ms": pct(s503, 99), "retry_after": sum(r["retry_after"] for r in res),
        "refused_conn": len(ref), "refused_conn_p99_ms": pct(ref, 99),
        "other": other, "timeouts": sum(r["timeouts"] for r in res), "dropped": sum(r["dropped"] for r in res),
        "late_ok": sum(r["late_ok"] for r in res),
        "new_conns": sum(r["new_conns"] for r in res), "max_open_conns": sum(r["max_open"] for r in res),
        "lag_p99_ms": pct(lag, 99), "listen_overflows": listen_drops() - drops0,
        "sample_503": next((r["sample_503"] for r in res if "sample_503" in r), None),
    }
    if sampler:
        out["server"] = sampler.plane(role)
    return out


def demo_doc() -> str:
    parts = ["#+TITLE: overload probe\n"]
    i = 0
    while sum(len(p) for p in parts) < 8 * 1024:
        parts.append(f"* Section {i}\nSome *bold* and /italic/ text with =code= {i}.\n- item {i}\n| a | b |\n|---+---|\n| {i} | {i * 2} |\n")
        i += 1
    return "".join(parts)


def start_serve(tmp: Path, env_extra: dict) -> tuple[subprocess.Popen, int, int, Path]:
    from workbooks.web_control.launch import free_port

    data = tmp / "data"
    cport, pport = free_port(), free_port()
    log = open(tmp / "serve.log", "ab")
    env = {**os.environ, "WB_DATA": str(data), **env_extra}
    p = subprocess.Popen([sys.executable, "-m", "workbooks", "serve", "--data", str(data),
                          "--control", f"127.0.0.1:{cport}", "--public", f"127.0.0.1:{pport}"],
                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                         start_new_session=True)
    log.close()
    import urllib.request

    deadline = time.time() + 120
    while True:
        try:
            r = urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{pport}/",
                                                              headers={"Host": f"demo.localhost:{pport}"}), timeout=2)
            if r.status == 200:
                break
        except Exception:  # noqa: BLE001
            pass
        if p.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"wbx serve did not come up; see {tmp / 'serve.log'}")
        time.sleep(0.3)
    return p, cport, pport, data


def refusals_logged(log: Path) -> dict:
    """The plane's `requests_refused` log lines summed: how each refusal was made (at accept, on
    a parked keep-alive connection, in the ASGI layer)."""
    out: dict = {}
    try:
        lines = log.read_bytes().splitlines()
    except OSError:
        return out
    for line in lines:
        if b'"requests_refused"' in line:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            for k, v in rec.items():
                if k.startswith("refused_") and isinstance(v, int):
                    out[k] = out.get(k, 0) + v
    return out


CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
QUOTA_PERIOD_US = 10_000


def cpu_quota(pids: list[int], share: float) -> Path:
    """Move `pids` into a new cgroup (v1 cpu controller) limited to `share` of one core."""
    if not (CGROUP_CPU / "cgroup.procs").exists():
        raise SystemExit("--cpu-share needs the cgroup v1 cpu controller at /sys/fs/cgroup/cpu")
    group = CGROUP_CPU / f"wb-overload-{os.getpid()}"
    group.mkdir()
    (group / "cpu.cfs_period_us").write_text(str(QUOTA_PERIOD_US))
    (group / "cpu.cfs_quota_us").write_text(str(max(1000, int(share * QUOTA_PERIOD_US))))
    for pid in pids:
        (group / "cgroup.procs").write_text(str(pid))
    return group


def release_quota(group: Path) -> None:
    """Put whatever is left in `group` back in the root group and remove it."""
    try:
        for pid in (group / "cgroup.procs").read_text().split():
            try:
                (CGROUP_CPU / "cgroup.procs").write_text(pid)
            except OSError:
                pass
        group.rmdir()
    except OSError:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run (3 s per phase)")
    ap.add_argument("--plane", choices=("public", "control"), default="public")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--capacity", type=float, help="skip the closed run: use this capacity (req/s)")
    ap.add_argument("--json", default=str(ROOT / "load" / "results" / "overload_probe.json"))
    ap.add_argument("--label", default="", help="a name for this run in the JSON (e.g. before/after)")
    ap.add_argument("--pin", action="store_true",
                    help="the measured plane (and pool) on CPU 0, the generator on the others: a Python "
                         "generator costs about what the server does per request, so on a small box they "
                         "would share the plane's core and refusing fast would starve the server")
    ap.add_argument("--renice", type=int, default=None,
                    help="run the measured plane's processes (and pool workers) and the generator at this "
                         "nice value, e.g. -10 on a box shared with other work (a negative value needs root)")
    ap.add_argument("--cpu-share", type=float, default=None,
                    help="give the measured plane's processes (and pool) this share of one core (a cgroup v1 "
                         "cpu quota, 10 ms period; needs root): on a 2-core box a Python generator offering "
                         "2x of a plane that has a whole core needs more than the other core, and a "
                         "generator-bound run measures the generator")
    ns = ap.parse_args()
    if ns.quick:
        ns.seconds = min(ns.seconds, 3.0)
    tmp = Path(tempfile.mkdtemp(prefix="wb-overload-"))
    serve = cgroup = None
    res: dict = {}
    try:
        serve, cport, pport, data = start_serve(tmp, {})
        if ns.plane == "public":
            addr = ("127.0.0.1", pport)
            request = f"GET / HTTP/1.1\r\nHost: demo.localhost:{pport}\r\nAccept-Encoding: gzip\r\n\r\n".encode()
            role = "web_public"
        else:
            addr = ("127.0.0.1", cport)
            key = (data / "admin.key").read_text().strip()
            body = demo_doc().encode()
            request = (f"POST /api/oql/render HTTP/1.1\r\nHost: 127.0.0.1:{cport}\r\nAuthorization: Bearer {key}\r\n"
                       f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
            role = "web_control"
        sampler = Sampler(serve.pid)
        global RENICE, GEN_CPUS
        sampler.sample()
        plane_pids = [pid for pid, row in sampler.rows.items() if row["role"] in (role, "pool.worker", "pool.broker")]
        if ns.renice is not None:
            RENICE = ns.renice
            for pid in plane_pids:
                os.setpriority(os.PRIO_PROCESS, pid, ns.renice)
        if ns.pin:
            cpus = sorted(os.sched_getaffinity(0))
            if len(cpus) < 2:
                raise SystemExit("--pin needs at least 2 CPUs")
            GEN_CPUS = set(cpus[1:])
            for pid in plane_pids:
                os.sched_setaffinity(pid, {cpus[0]})
        if ns.cpu_share:
            cgroup = cpu_quota(plane_pids, ns.cpu_share)
        res.update({"plane": ns.plane, "label": ns.label, "cores": os.cpu_count(), "seconds": ns.seconds,
                     "factor": ns.factor, "generator_procs": PROCS, "renice": ns.renice, "pin": ns.pin,
                     "cpu_share": ns.cpu_share,
                     "loadavg_before": os.getloadavg()[0]})
        if ns.capacity:
            cap = ns.capacity
        else:
            res["closed"] = run_phase(addr, request, "closed", ns.seconds, sampler=sampler, role=role)
            cap = res["closed"]["goodput_rps"]
            print(f"closed ({CLOSED_CONNS} conns): {cap} req/s  p99 {res['closed']['p99_ms']} ms", flush=True)
        res["capacity_rps"] = cap
        time.sleep(1)
        res["half"] = run_phase(addr, request, "open", ns.seconds, rate=cap / 2, sampler=sampler, role=role)
        print(f"half ({cap / 2:.0f}/s open): goodput {res['half']['goodput_rps']}  p99 {res['half']['p99_ms']} ms"
              f"  lag p99 {res['half']['lag_p99_ms']} ms", flush=True)
        time.sleep(1)
        res["over"] = o = run_phase(addr, request, "open", ns.seconds, rate=cap * ns.factor, sampler=sampler, role=role)
        print(f"over ({cap * ns.factor:.0f}/s open): goodput {o['goodput_rps']} ({o['goodput_rps'] / cap:.2f}x)  "
              f"p99 admitted {o['p99_ms']} ms  503s {o['refused_503']} (p99 {o['refused_503_p99_ms']} ms)  "
              f"conn refused {o['refused_conn']} (p99 {o['refused_conn_p99_ms']} ms)  timeouts {o['timeouts']}  "
              f"dropped {o['dropped']}  listen overflows {o['listen_overflows']}  max conns {o['max_open_conns']}  lag p99 {o['lag_p99_ms']} ms", flush=True)
        for row in o.get("server", []):
            print(f"  {row['role']} pid {row['pid']}: rss {row['rss_mb_first']} -> max {row['rss_mb_max']} MB, "
                  f"sockets max {row['sockets_max']}, cpu {row['cpu_s']} s", flush=True)
        time.sleep(1)
        res["after"] = run_phase(addr, request, "open", 2.0, rate=cap / 2)
        print(f"after: goodput {res['after']['goodput_rps']}  p99 {res['after']['p99_ms']} ms", flush=True)
        res["ratio_goodput"] = round(o["goodput_rps"] / cap, 3) if cap else None
        res["ratio_p99"] = round(o["p99_ms"] / res["half"]["p99_ms"], 2) if o["p99_ms"] and res["half"]["p99_ms"] else None
        print(f"goodput/capacity {res['ratio_goodput']}  p99 admitted/half {res['ratio_p99']}", flush=True)
    finally:
        if serve is not None:
            stop_serve(serve)
        if cgroup is not None:
            release_quota(cgroup)
        res["server_refusals"] = refusals_logged(tmp / "serve.log")
        print(f"server refusals by path (whole run): {res['server_refusals']}", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    outp = Path(ns.json)
    outp.parent.mkdir(parents=True, exist_ok=True)
    prev = json.loads(outp.read_text()) if outp.exists() else {}
    prev[f"{ns.plane}{'-' + ns.label if ns.label else ''}"] = res
    outp.write_text(json.dumps(prev, indent=2) + "\n")
    print(f"JSON: {outp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
