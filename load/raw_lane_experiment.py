"""EXPERIMENT (measurement of a proposal, not product code): what a raw HTTP/1.1 lane below
hypercorn's parser would save on the render API.

    .venv/bin/python load/raw_lane_experiment.py [--seconds 4] [--rounds 3]

Why: with the ASGI fast path (workbooks/web_control/fastpath.py) about half of the control
process's CPU per render is hypercorn's: h11 parsing the request, a stream and a task per
request, and three writes per response (head, body, end). The public plane already answers
canned 503s from raw bytes on a parked keep-alive connection (workbooks/admission.py, called from
workbooks/connlimit.py). This script measures the same idea for `POST /api/oql/render`: a complete,
strictly framed request (one Content-Length, no Transfer-Encoding/Expect/Upgrade/Connection) that
arrives whole on a parked connection is handed to the same ASGI chain (admission, access log,
counting, body guard, fast path) with an in-memory receive/send, and the answer goes out in one
write. Everything else goes to hypercorn as before.

It starts `wbx serve` (pool, planes), then two extra control-plane processes on their own ports
against the same data dir and pool: one as shipped, one with the lane patched in at start
(this file run with `--serve`), and drives both in alternating rounds with the keep-alive
raw-socket generator of load/render_api_probe.py. It prints renders/s and control-plane CPU per
render for each. The patch is NOT complete for production (no in-flight accounting for the
admission gate, no 500 on an app crash, no access to hypercorn's keep-alive counters); the
figure is what a complete lane in connlimit.GuardedTCPServer._read_data could save.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "load"))

_CL = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]{1,9})[ \t]*\r\n")


def serve_with_lane(argv: list[str]) -> None:
    """Run `python -m workbooks.web_control ARGV` with the lane patched into the connection reader."""
    import runpy
    from email.utils import formatdate

    import trio
    from hypercorn.events import Closed, RawData
    from hypercorn.trio.tcp_server import MAX_RECV

    from workbooks import connlimit

    stamp = [0, b""]

    def date() -> bytes:
        now = int(time.time())
        if now != stamp[0]:
            stamp[0], stamp[1] = now, formatdate(now, usegmt=True).encode()
        return stamp[1]

    async def lane(conn, data: bytes) -> bool:
        if not data.startswith(b"POST /api/oql/render"):
            return False
        end = data.find(b"\r\n\r\n")
        line_end = data.find(b"\r\n")
        if end < 0:
            return False
        parts = data[:line_end].split(b" ")
        if len(parts) != 3 or parts[2] != b"HTTP/1.1":
            return False
        head = data[line_end:end + 2]
        low = head.lower()
        if b"transfer-encoding" in low or b"expect" in low or b"upgrade" in low or b"connection" in low:
            return False
        m = _CL.search(low)
        if m is None or low.count(b"content-length") != 1 or len(data) != end + 4 + int(m.group(1)):
            return False
        path, _, query = parts[1].partition(b"?")
        headers = []
        for ln in head[2:-2].split(b"\r\n"):
            k, _, v = ln.partition(b":")
            headers.append((k.strip().lower(), v.strip()))
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": path.decode("ascii"), "raw_path": path,
                 "query_string": query, "root_path": "", "headers": headers, "client": None, "server": None,
                 "extensions": {}}
        body = data[end + 4:]
        given = [False]

        async def receive():
            if not given[0]:
                given[0] = True
                return {"type": "http.request", "body": body, "more_body": False}
            await trio.sleep_forever()

        status, hdrs, out = [0], [], []

        async def send(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
                hdrs.extend(msg["headers"])
            else:
                out.append(msg.get("body", b""))

        conn.guard.touch(conn)
        await conn.app.app(scope, receive, send)  # hypercorn's wrapper -> the ASGI chain
        buf = (b"HTTP/1.1 %d \r\n" % status[0] + b"".join(k + b": " + v + b"\r\n" for k, v in hdrs)
               + b"date: " + date() + b"\r\n\r\n" + b"".join(out))
        async with conn.send_lock:
            await conn.stream.send_all(buf)
        return True

    async def _read_data(self) -> None:
        while True:
            try:
                data = await self.stream.receive_some(MAX_RECV)
            except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                break
            if data and self.parked() and await lane(self, data):
                continue
            await self.protocol.handle(RawData(bytes(data)))
            if not data:
                break
        await self.protocol.handle(Closed())

    connlimit.GuardedTCPServer._read_data = _read_data
    sys.argv = ["workbooks.web_control", *argv]
    runpy.run_module("workbooks.web_control", run_name="__main__")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve_with_lane(sys.argv[2:])
        return 0
    import render_api_probe as R
    from workbooks.pool import endpoints as E
    from workbooks.web_control.launch import wait_http

    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=2 * R.CORES + 2)
    ns = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wb-raw-lane-"))
    serve, data, _ = R.start_serve(tmp, 1, {})
    procs = {}
    try:
        key = (data / "admin.key").read_text().strip()
        body = R.doc_of_size(8 * 1024, "render bench").encode()
        for name, head in (("asgi fast path", ["-m", "workbooks.web_control"]), ("raw lane", [__file__, "--serve"])):
            port = R.free_port()
            log = open(tmp / f"{name.replace(' ', '-')}.log", "ab")
            p = subprocess.Popen([sys.executable, *head, "--port", str(port), "--data-dir", str(data), "--proc", "9",
                                  "--pool", E.client_endpoint(data)], stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env={**os.environ, "WB_DATA": str(data)})
            log.close()
            wait_http(f"http://127.0.0.1:{port}/healthz", procs=[p])
            procs[name] = (p, port)
        rows: dict = {name: [] for name in procs}
        for _ in range(ns.rounds):
            for name, (p, port) in procs.items():
                c0 = R.cpu_seconds(p.pid)
                r = R.run_gen(R._http_worker, lambda i: (port, "/api/oql/render", key, body, ns.concurrency), 1,
                              ns.seconds)
                r["control_cpu_us_per_render"] = round(1e6 * (R.cpu_seconds(p.pid) - c0) / max(1, r["n"]), 1)
                rows[name].append(r)
                print(f"  {name:<15} {r['rps']:7.0f}/s  control {r['control_cpu_us_per_render']:7.1f} us CPU/render"
                      f"  errors {r['errors']}", flush=True)
        print(f"\nmedians ({ns.rounds} alternating rounds of {ns.seconds:g}s, concurrency {ns.concurrency}, 8 KB document):")
        for name, rs in rows.items():
            med = lambda k: sorted(r[k] for r in rs)[len(rs) // 2]  # noqa: E731
            print(f"  {name:<15} {med('rps'):7.0f}/s  control {med('control_cpu_us_per_render'):7.1f} us CPU/render")
    finally:
        for p, _ in procs.values():
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        R.stop_serve(serve)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
