"""The figures a load report puts beside client latency (issue 19), and the scraper that reads them.

- Plane counters (requests by status, bytes, durations) live in a shared file per process
  (`workbooks.procstats`): /metrics on any process of a plane gives the same plane totals, and
  they never go backwards when a process is killed (its counts move to pid="retired").
- The broker's busy-seconds, queue-wait and service histograms add up: request time = queue
  wait + service, busy seconds = service time, per worker and in total.
- `loadtest.scrape.Scraper` turns scrapes of a live `wbx serve` into per-second figures whose
  sums match what the client did; a down, hung or refusing server is a note, never an exception.

One real `wbx serve` (two control and two public processes, two workers, a pool queue of 2 so a
burst gets `overloaded`) for the server tests; real processes for the counter files.
"""

from __future__ import annotations

import http.client
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from serve_proc import ServeProc
from workbooks import procstats
from workbooks.errors import UsageError
from workbooks.loadtest.scrape import Scraper, parse_prometheus
from workbooks.pool import endpoints as E
from workbooks.web_control.launch import free_port

# ~40 KB of Org: a render takes a few ms, long enough for a burst to queue behind two workers
DOC = "#+TITLE: Load\n" + "".join(f"* Heading {i}\nSome *bold* text and a [[https://example.org][link]] {i}.\n"
                                  + "- item one\n- item two\n" for i in range(600))


# -- the exposition parser --------------------------------------------------------------------

HOSTILE = textwrap.dedent(r'''
    # HELP wb_x_total A help text with "quotes", \\ backslashes and {braces}.
    # TYPE wb_x_total counter
    wb_x_total{path="/a b,c}",q="say \"hi\"",nl="line1\nline2",bs="C:\\dir\\"} 3
    wb_x_total{path="",q="",nl="",bs=""} 0
    # a comment that is not HELP or TYPE

    wb_gauge 1.5e3
    wb_gauge_ts{a="1"} -2 1700000000000
    wb_inf{le="+Inf"} +Inf
    wb_ninf -Inf
    wb_nan NaN
    wb_trailing_comma{a="x",} 7
    wb_spaces { a = "1" , b="2" } 8
    colon:name_total 9
''').lstrip()


def _reference(text: str) -> list[tuple[str, dict, float]]:
    out = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.append((s.name, dict(s.labels), s.value))
    return out


def _same(a, b) -> bool:
    return a[0] == b[0] and a[1] == b[1] and (a[2] == b[2] or (math.isnan(a[2]) and math.isnan(b[2])))


def test_the_parser_reads_what_a_reference_parser_reads_and_skips_what_it_cannot():
    ours = parse_prometheus(HOSTILE)
    ref = _reference(HOSTILE.replace("wb_spaces { a = \"1\" , b=\"2\" } 8\n", ""))  # the reference refuses those spaces
    ours_no_spaces = [s for s in ours if s[0] != "wb_spaces"]
    assert len(ours_no_spaces) == len(ref) and all(_same(a, b) for a, b in zip(ours_no_spaces, ref)), (ours, ref)
    by = {(n, tuple(sorted(l.items()))): v for n, l, v in ours}
    assert by[("wb_x_total", (("bs", "C:\\dir\\"), ("nl", "line1\nline2"), ("path", "/a b,c}"), ("q", 'say "hi"')))] == 3
    assert by[("wb_inf", (("le", "+Inf"),))] == math.inf and by[("wb_ninf", ())] == -math.inf
    assert math.isnan(by[("wb_nan", ())]) and by[("wb_gauge_ts", (("a", "1"),))] == -2
    assert by[("wb_spaces", (("a", "1"), ("b", "2")))] == 8 and by[("colon:name_total", ())] == 9
    # garbage lines are skipped, the good ones around them still read; nothing raises
    garbage = "\n".join([
        "wb_ok 1", 'wb_bad{a="unterminated} 2', "wb_bad_value abc", "{nolabelname} 3", "9starts_with_digit 4",
        'wb_bad2{a=1} 5', "wb_bad3 1 2 3", 'wb_bad4{a="x"}6', "\x00\xff garbage", "wb_ok2 2 # {trace_id=\"x\"} 1",
        "# EOF", ""])
    assert parse_prometheus(garbage) == [("wb_ok", {}, 1.0), ("wb_ok2", {}, 2.0)]
    assert parse_prometheus("") == [] and parse_prometheus("# only comments\n\n") == []


# -- the counter files, with real processes -----------------------------------------------------

CHILD = textwrap.dedent('''
    import sys
    from workbooks.procstats import PlaneStats
    s = PlaneStats.open(sys.argv[1], "public")
    n = int(sys.argv[2])
    for i in range(n):
        s.record(200 if i % 4 else 404, 1000, 0.003)
    print("ready", flush=True)
    sys.stdin.read()          # until the test closes our stdin: then a clean exit folds our counts
    s.close()
''')


def _child(d, n):
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(d), str(n)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    return p


def test_counter_files_add_up_across_processes_and_never_go_backwards(tmp_path):
    d = tmp_path / "data"
    kids = [_child(d, n) for n in (400, 120, 80)]
    try:
        snap = procstats.read_plane(d, "public")
        assert sorted(snap.processes) == sorted(p.pid for p in kids)
        assert snap.total.statuses == {"200": 450, "404": 150} and snap.total.bytes == 600_000
        assert snap.total.count == 600 and sum(snap.total.buckets) == 600
        assert abs(snap.total.sum_ns / 1e9 - 1.8) < 1e-6
        # kill -9: its file stays until a reader folds it into the retired total; totals stay put
        kids[0].kill()
        kids[0].wait()
        snap = procstats.read_plane(d, "public")
        assert kids[0].pid not in snap.processes and snap.retired.statuses == {"200": 300, "404": 100}
        assert snap.total.statuses == {"200": 450, "404": 150}
        assert not (procstats.metrics_dir(d) / f"public-{kids[0].pid}.bin").exists()
        text = procstats.prometheus_lines("wb_public", snap)
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        per = [s for s in fams["wb_public_requests"].samples if s.name == "wb_public_requests_total"]
        assert sum(s.value for s in per) == 600  # the per-process series (retired included) add up to the plane
        assert {s.labels["pid"] for s in per} == {str(kids[1].pid), str(kids[2].pid), "retired"}
        assert fams["wb_public_plane_processes"].samples[0].value == 2
        # a clean exit folds its own counts and removes its file
        kids[1].stdin.close()
        assert kids[1].wait(10) == 0
        snap = procstats.read_plane(d, "public")
        assert sorted(snap.processes) == [kids[2].pid] and snap.total.statuses == {"200": 450, "404": 150}
    finally:
        for p in kids:
            if p.poll() is None:
                p.kill()
                p.wait()
    # a crash between writing the retired total and removing a folded file: that file is not counted twice
    mdir = procstats.metrics_dir(d)
    folded_copy = tmp_path / "copy.bin"
    dead = next(mdir.glob("public-*.bin"))  # kids[2]'s, now dead
    folded_copy.write_bytes(dead.read_bytes())
    before = procstats.read_plane(d, "public").total
    assert before.statuses == {"200": 450, "404": 150}
    dead.write_bytes(folded_copy.read_bytes())  # the folded file is back
    assert procstats.read_plane(d, "public").total.statuses == {"200": 450, "404": 150}
    assert list(mdir.glob("public-*.bin")) == []
    # a file under our own pid from an earlier process (pid reused: another start time) holds that
    # process's counts (kids[2]'s: 60 + 20): they are folded into the retired total, not taken as ours
    raw = bytearray(folded_copy.read_bytes())
    raw[16:32] = struct.pack("<QQ", os.getpid(), 1)
    (mdir / f"public-{os.getpid()}.bin").write_bytes(bytes(raw))
    mine = procstats.PlaneStats.open(d, "public")
    try:
        assert procstats.opened("public") is mine
        mine.record(500, 10, 0.5)  # what a layer without a handle on it does
        snap = procstats.read_plane(d, "public")
        assert snap.processes[os.getpid()].statuses == {"500": 1}
        assert snap.total.statuses == {"200": 510, "404": 170, "500": 1}
        # junk in the directory (a truncated file, a stranger's name) neither counts nor breaks a scrape
        (mdir / "public-999999999.bin").write_bytes(b"junk")
        (mdir / "public-notapid.bin").write_bytes(b"junk")
        assert procstats.read_plane(d, "public").total.statuses == {"200": 510, "404": 170, "500": 1}
        assert not (mdir / "public-999999999.bin").exists()
    finally:
        mine.close()
    assert procstats.read_plane(d, "public").processes == {} and procstats.opened("public") is not mine
    with pytest.raises(ValueError):
        procstats.PlaneStats.open(d, "../x")


def test_counters_that_cannot_have_a_file_stay_in_the_process_and_still_report(tmp_path, monkeypatch):
    d = tmp_path / "data"
    d.mkdir()
    (tmp_path / "no-tmpfs").write_text("a file where the tmpfs root should be")
    monkeypatch.setenv("WB_METRICS_ROOT", str(tmp_path / "no-tmpfs"))
    (d / "run").write_text("a file where the run directory should be")  # e.g. a read-only or odd data dir
    stats = procstats.PlaneStats.open(d, "control")
    try:
        assert not stats.shared
        stats.record(200, 5, 0.01)
        stats.record(503, 7, 0.02)
        snap = procstats.read_plane(d, "control")
        assert snap.processes == {os.getpid(): stats.counts()}
        assert snap.total.statuses == {"200": 1, "503": 1} and snap.total.bytes == 12
    finally:
        stats.close()


# -- a real `wbx serve` -------------------------------------------------------------------------

def _req(port: int, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    """One request on a new connection (so SO_REUSEPORT spreads them over a plane's processes)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    s = ServeProc(tmp_path_factory.mktemp("mload") / "data", "--workers", "2", "--spares", "0",
                  env={"WB_CONTROL_PROCS": "2", "WB_PUBLIC_PROCS": "2", "WB_POOL_QUEUE": "2", "WB_ACCESS_LOG": "0",
                       # a control process killed -9 below leaves its shared-memory reply slots: swept
                       # at once (by default 30 s after its death, later than this module's end)
                       "WB_POOL_BULK_SWEEP_S": "0.5", "WB_POOL_BULK_ORPHAN_AGE_S": "0.2"})
    try:
        deadline = time.monotonic() + 120
        while True:
            assert s.proc.poll() is None, s.stderr_text()[-3000:]
            try:
                if _req(s.pport, "GET", "/", {"Host": "demo.localhost"})[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, s.stderr_text()[-3000:]
            time.sleep(0.2)
        s.key = (s.data / "admin.key").read_text().strip()
        s.auth = {"Authorization": f"Bearer {s.key}"}
        while True:  # every plane process up (the demo answers once public-1 is)
            kids = _children(s)
            if kids and all(c["state"] == ("stopped" if c["id"] == "first-run" else "running") for c in kids):
                break
            assert time.monotonic() < deadline, kids
            time.sleep(0.1)
        yield s
    finally:
        s.stop()


def _children(s) -> list:
    import json

    st, _, body = _req(s.cport, "GET", "/api/ops/workers", s.auth)
    return json.loads(body).get("children", []) if st == 200 else []


def _scrape(s, port: int) -> dict:
    st, _, body = _req(port, "GET", "/metrics", s.auth)
    assert st == 200, body[:300]
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    return {"fams": fams, "samples": [x for f in fams.values() for x in f.samples]}


def _vals(m: dict, name: str, **match) -> list:
    return [x for x in m["samples"] if x.name == name and all(x.labels.get(k) == v for k, v in match.items())]


def _sum(m: dict, name: str, **match) -> float:
    return sum(x.value for x in _vals(m, name, **match))


def _answering_pid(m: dict, plane: str) -> str:
    return _vals(m, f"wb_{plane}_uptime_seconds")[0].labels["pid"]


def _check_consistent(m: dict, plane: str) -> None:
    """Per-process series (retired included) add up to the plane's totals; the duration
    histogram counts every response."""
    p = f"wb_{plane}"
    for st in {x.labels["status"] for x in _vals(m, f"{p}_plane_requests_total")}:
        assert _sum(m, f"{p}_requests_total", status=st) == _sum(m, f"{p}_plane_requests_total", status=st)
    assert _sum(m, f"{p}_bytes_sent_total") == _sum(m, f"{p}_plane_bytes_sent_total")
    assert _sum(m, f"{p}_plane_request_duration_seconds_count") == _sum(m, f"{p}_plane_requests_total")
    inf = _vals(m, f"{p}_plane_request_duration_seconds_bucket", le="+Inf")
    assert inf and inf[0].value == _sum(m, f"{p}_plane_requests_total")


def _scrape_until_both_answered(s, port, plane, check, rounds=40) -> set:
    pids = set()
    for i in range(rounds):
        m = _scrape(s, port)
        check(m)
        _check_consistent(m, plane)
        pids.add(_answering_pid(m, plane))
        if len(pids) == 2 and i >= 5:
            break
    return pids


def _kill_and_wait_replaced(s, port, plane, victim: int, check) -> None:
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:  # scraping all the while: the totals never move (nothing else is counted under them)
        try:
            m = _scrape(s, port)
        except OSError:
            continue  # the dying process's connection
        check(m)
        _check_consistent(m, plane)
        live = {x.labels["pid"] for x in _vals(m, f"wb_{plane}_bytes_sent_total") if x.labels["pid"] != "retired"}
        if str(victim) not in live and len(live) == 2:
            break
        assert time.monotonic() < deadline, live
        time.sleep(0.1)
    assert not (procstats.metrics_dir(s.data) / f"{plane}-{victim}.bin").exists()


async def _load(s, seconds: float, sc: Scraper, samples: list, counts: dict) -> None:
    """Renders over HTTP in bursts of 8 (more than 2 workers + 2 queued: some are 503 overloaded),
    If-None-Match page GETs (304), and a scrape every 0.5 s, together."""
    import httpx

    end = trio.current_time() + seconds
    etag = _req(s.pport, "GET", "/", {"Host": "demo.localhost", "Accept-Encoding": "identity"})[1]["etag"]
    hdr = {**s.auth, "X-Workbooks-Tenant": "dev", "Content-Type": "text/org"}
    async with httpx.AsyncClient(timeout=30) as http:
        async def renders():
            while trio.current_time() < end:
                async def one():
                    r = await http.post(f"{s.control}/api/oql/render", content=DOC.encode(), headers=hdr)
                    counts[r.status_code] = counts.get(r.status_code, 0) + 1
                async with trio.open_nursery() as n:
                    for _ in range(8):
                        n.start_soon(one)

        async def pages():
            while trio.current_time() < end:
                r = await http.get(f"{s.public}/", headers={"Host": "demo.localhost", "Accept-Encoding": "identity",
                                                            "If-None-Match": etag})
                counts["page", r.status_code] = counts.get(("page", r.status_code), 0) + 1
                await trio.sleep(0.01)

        async def scrapes():
            while trio.current_time() < end:
                await trio.sleep(0.5)
                samples.append(await sc.sample())

        async with trio.open_nursery() as n:
            n.start_soon(renders)
            n.start_soon(pages)
            n.start_soon(scrapes)
    samples.append(await sc.sample())


def test_scraper_figures_match_what_the_client_did(serve):
    s = serve
    sc = Scraper(s.control, s.key, s.public)
    samples: list = []
    counts: dict = {}

    async def main():
        first = await sc.sample()
        assert first["up"] and first["busy_workers"] is None and first["renders_s"] is None  # the baseline
        assert first["workers"] == 2 and first["queue_depth"] == 0 and first["http"] == {}
        await _load(s, 3.0, sc, samples, counts)

    trio.run(main)
    assert counts.get(200, 0) > 0 and counts.get(503, 0) > 0, counts  # the burst was refused in part
    assert set(counts) <= {200, 503, ("page", 304)}, counts
    t = sc.totals()
    assert t["scraped"] is True and t["note"] is None
    assert t["http_5xx"] == counts[503] and t["overloaded"] == counts[503], (t, counts)
    assert t["deadline"] == 0 and t["restarts"] == 0
    # every 304 the client got is in exactly one sample, under the public process that answered it
    got304 = sum(v.get("304", 0) for e in samples for k, v in e["http"].items() if k.startswith("public-"))
    assert got304 == counts["page", 304]
    got503 = sum(v.get("503", 0) for e in samples for k, v in e["http"].items() if k.startswith("control-"))
    assert got503 == counts[503]
    procs = {k for e in samples for k in e["http"]}
    assert all(k.split("-", 1)[0] in ("control", "public") and k.split("-", 1)[1].isdigit() for k in procs), procs
    for e in samples:
        assert e["up"] and e["workers"] == 2 and 0 <= e["queue_depth"] <= 2
        assert 0 <= e["busy_workers"] <= 2.02 and e["renders_s"] >= 0
    assert max(e["busy_workers"] for e in samples) > 0.3 and max(e["renders_s"] for e in samples) > 1


def test_scraper_counts_restarts(serve):
    """The first restart of this service (the tests above killed nothing): its counter has no
    sample at the baseline, and still counts from zero."""
    s = serve
    sc = Scraper(s.control, s.key)

    async def main():
        await sc.sample()
        victim = next(c for c in _children(s) if c["id"] == "public-1")
        os.kill(victim["pid"], signal.SIGKILL)
        with trio.fail_after(60):
            while not any(c["id"] == "public-1" and c["state"] == "running" and c["pid"] != victim["pid"]
                          for c in await trio.to_thread.run_sync(_children, s)):
                await trio.sleep(0.1)
        return await sc.sample()

    last = trio.run(main)
    assert last["restarts"] == 1 and sc.totals()["restarts"] == 1


def test_public_plane_totals_are_the_same_on_every_process_and_survive_kill9(serve):
    s = serve
    base = _scrape(s, s.pport)
    b304, b404 = (_sum(base, "wb_public_plane_requests_total", status=c) for c in ("304", "404"))
    st, h, _ = _req(s.pport, "GET", "/", {"Host": "demo.localhost", "Accept-Encoding": "identity"})
    etag = h["etag"]
    n304, n404 = 60, 25
    for _ in range(n304):
        assert _req(s.pport, "GET", "/", {"Host": "demo.localhost", "Accept-Encoding": "identity",
                                          "If-None-Match": etag})[0] == 304
    for _ in range(n404):
        assert _req(s.pport, "GET", "/", {"Host": "nothing.localhost"})[0] == 404

    def check(m):
        assert _sum(m, "wb_public_plane_requests_total", status="304") - b304 == n304
        assert _sum(m, "wb_public_plane_requests_total", status="404") - b404 == n404

    assert len(_scrape_until_both_answered(s, s.pport, "public", check)) == 2  # both processes answered alike
    m = _scrape(s, s.pport)
    per = {x.labels["pid"]: x.value for x in _vals(m, "wb_public_requests_total", status="304")}
    victim = max((p for p in per if p != "retired"), key=lambda p: per[p])
    assert per[victim] > 0
    retired_before = per.get("retired", 0)
    _kill_and_wait_replaced(s, s.pport, "public", int(victim), check)
    m = _scrape(s, s.pport)
    assert _sum(m, "wb_public_requests_total", pid="retired", status="304") == retired_before + per[victim]


def test_control_plane_totals_are_the_same_on_every_process_and_survive_kill9(serve):
    s = serve
    base = _scrape(s, s.cport)
    b401 = _sum(base, "wb_control_plane_requests_total", status="401")
    n401 = 40
    for _ in range(n401):
        assert _req(s.cport, "GET", "/api/workbooks")[0] == 401

    def check(m):
        assert _sum(m, "wb_control_plane_requests_total", status="401") - b401 == n401

    assert len(_scrape_until_both_answered(s, s.cport, "control", check)) == 2
    m = _scrape(s, s.cport)
    per = {x.labels["pid"]: x.value for x in _vals(m, "wb_control_requests_total", status="401")}
    victim = max((p for p in per if p != "retired"), key=lambda p: per[p])
    _kill_and_wait_replaced(s, s.cport, "control", int(victim), check)


async def _pool_burst(ep: str, rounds: int, conc: int) -> None:
    from workbooks.pool.client import AsyncPoolClient

    c = AsyncPoolClient(ep)
    try:
        for _ in range(rounds):
            async with trio.open_nursery() as n:
                for _ in range(conc):
                    n.start_soon(c.call, "render", [DOC * 2])  # 112 KB: under the shared-memory size
    finally:
        await c.aclose()


def test_broker_busy_seconds_queue_wait_and_service_add_up(serve):
    s = serve
    before = _scrape(s, s.cport)
    t0 = time.monotonic()
    rounds, conc = 12, 4  # 2 workers + a queue of 2: every burst queues, none is refused
    trio.run(_pool_burst, E.client_endpoint(s.data), rounds, conc)
    elapsed = time.monotonic() - t0
    after = _scrape(s, s.cport)

    def d(name, **kw):
        return _sum(after, name, **kw) - _sum(before, name, **kw)

    n = rounds * conc
    assert d("wb_pool_requests_total", op="render", outcome="ok") == n
    assert d("wb_pool_service_seconds_count", op="render") == n
    assert d("wb_pool_queue_wait_seconds_count", op="render") == n
    wait, service = d("wb_pool_queue_wait_seconds_sum", op="render"), d("wb_pool_service_seconds_sum", op="render")
    total = d("wb_pool_request_duration_seconds_sum", op="render")
    assert wait > 0 and service > 0
    assert abs(total - (wait + service)) < 0.005 * n, (total, wait, service)  # request time = wait + service
    # busy seconds: the service time of every op (a readiness probe may have run a lint meanwhile)
    all_service = sum(d("wb_pool_service_seconds_sum", op=op) for op in
                      {x.labels["op"] for x in _vals(after, "wb_pool_service_seconds_sum")})
    busy = d("wb_pool_busy_seconds_total")
    assert abs(busy - all_service) < 0.05, (busy, all_service)
    per_worker = d("wb_pool_worker_busy_seconds_total")
    assert abs(per_worker - busy) < 0.05, (per_worker, busy)
    assert 0 < busy <= 2 * elapsed + 0.05  # two workers cannot be busy more than 2 s a second
    # the bursts queued: renders waited for a worker (a render takes ~15 ms here; in each burst of 4
    # on 2 workers two wait, unless the box kept the client from sending them together)
    waited = n - d("wb_pool_queue_wait_seconds_bucket", op="render", le="0.001")
    assert waited >= 1, waited


def test_scraper_records_a_down_hung_or_refusing_server_and_never_raises(serve):
    s = serve
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)  # accepts in the kernel, never answers
    try:
        down = Scraper(f"http://127.0.0.1:{free_port()}", "wbk_whatever")
        slow = Scraper(f"http://127.0.0.1:{hung.getsockname()[1]}", "wbk_whatever", timeout=0.5)
        wrong = Scraper(s.control, "wbk_not_a_key_0123456789", s.public)
        nokey = Scraper(s.control, None)

        async def main():
            out = {}
            for name, sc in (("down", down), ("slow", slow), ("wrong", wrong), ("nokey", nokey)):
                t0 = trio.current_time()
                out[name] = (await sc.sample(), await sc.sample(), trio.current_time() - t0)
            return out

        out = trio.run(main)
    finally:
        hung.close()
    for name, (a, b, took) in out.items():
        assert not a["up"] and not b["up"] and a["busy_workers"] is None and a["http"] == {}, name
        assert took < 3, (name, took)
    td, ts, tw, tn = down.totals(), slow.totals(), wrong.totals(), nokey.totals()
    assert td["scraped"] is False and "down (" in td["note"] and "2 of 2 scrapes" in td["note"]
    assert ts["scraped"] is False and "no answer within 0.5s" in ts["note"]
    assert tw["scraped"] is False and "HTTP 401" in tw["note"] and "public plane" in tw["note"]
    assert "wbk_not_a_key" not in tw["note"]  # the key never appears in what is recorded
    assert "HTTP 401" in tn["note"] and "operator or admin key" in tn["note"]
    assert {k: td[k] for k in ("overloaded", "deadline", "restarts", "http_5xx")} == dict.fromkeys(
        ("overloaded", "deadline", "restarts", "http_5xx"), 0)
    for bad in ("ftp://example.org", "http://", "http://127.0.0.1:99999999"):
        with pytest.raises(UsageError, match="not an http"):
            Scraper(bad, "k")


def test_a_stopped_serve_leaves_no_counters_on_the_tmpfs(tmp_path):
    """The planes keep their counters on a tmpfs while `wbx serve` runs (the scrape reads them);
    once it is stopped, nothing of it is left there (nor in $WB_DATA/run/metrics)."""
    shm = tmp_path / "shm"
    shm.mkdir()
    data = tmp_path / "data"
    s = ServeProc(data, "--workers", "1", "--spares", "0", env={"WB_METRICS_ROOT": str(shm)})
    try:
        deadline = time.time() + 120
        while True:  # both planes up, serving
            assert s.proc.poll() is None and time.time() < deadline, s.stdout_text()[-3000:]
            try:
                for port in (s.cport, s.pport):
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    conn.request("GET", "/healthz")
                    assert conn.getresponse().status == 200
                    conn.close()
                break
            except OSError:
                time.sleep(0.2)
        dirs = [p for p in shm.iterdir() if p.name.endswith("-metrics")]
        assert len(dirs) == 1 and any(dirs[0].iterdir())  # the planes' counter files
    finally:
        assert s.stop() == 0
    assert list(shm.iterdir()) == []
    assert not (data / "run" / "metrics").exists()
