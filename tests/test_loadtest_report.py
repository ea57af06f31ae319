"""wbx loadtest's report (report.html / report.png), live view and compare.

The run directories are built by `make_run`, a generator of realistic runs: real HDR histograms per
second, per op and size class (a 3:1 render/query mix over S/M/L documents), a 64-connection open
model, a 1 s server stall at t=240 (the first 64 arrivals hold the connections, the rest wait for
one), a burst of 503s, a few timeouts, drops, scraped server series, stage boundaries, a latency.hlog
in HdrHistogram's interval log format and run.json in the shape the runner writes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import html5lib
import pytest

from workbooks.errors import NotFound, UsageError
from workbooks.loadtest import compare, hist, report

ROOT = Path(__file__).resolve().parents[1]
WBX = [sys.executable, "-m", "workbooks"]
STAGES = [(30.0, 0.0, 400.0), (510.0, 400.0, 400.0), (60.0, 400.0, 0.0)]


# ---------------------------------------------------------------------------------------------
# the fixture generator


def _rate_at(t: float, stages=STAGES) -> float:
    at = 0.0
    for dur, a, b in stages:
        if t < at + dur:
            return a + (b - a) * (t - at) / dur
        at += dur
    return 0.0


def make_run(run_dir: Path, *, seed: int = 7, stages=STAGES, stall_at: int = 240, name: str = "nightly page",
             model: str = "open", generator_bound: bool = False, aborted: dict | None = None,
             thresholds: list | None = None, scraped: bool = True) -> dict:
    """Write run.json + latency.hlog of a realistic run into run_dir; returns the run dict.

    Requests go through a generator's own recording path (`hist.Recorder`), the coordinator's
    `hist.Merger` merges its snapshots and writes the .hlog, and run.json is put together the way
    the runner does (two generator processes in the plan; one recorder keeps the fixture fast)."""
    rng = random.Random(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    duration = sum(s[0] for s in stages)
    sizes = ("S", "M", "L")
    base_ms = {"S": 1.6, "M": 4.0, "L": 12.0}
    rec = hist.Recorder(0.0)
    start_wall = 1_796_000_000.0
    for t in range(int(duration)):
        n = int(round(_rate_at(t + 0.5, stages)))
        for i in range(n):
            intended = t + i / n
            op = "render" if rng.random() < 0.75 else "query"
            size = rng.choices(sizes, weights=(6, 3, 1))[0]
            service = base_ms[size] * rng.lognormvariate(0, 0.35)
            wait = 0.0
            if stall_at <= intended < stall_at + 1.0:
                if i < 64:  # holds one of the 64 connections through the freeze
                    service += (stall_at + 1.0 - intended) * 1000
                else:  # waits for a connection, then is served normally
                    wait = (stall_at + 1.0 - intended) * 1000 + rng.uniform(0, 40)
            rec.lag(intended, intended + rng.uniform(20e-6, 600e-6))
            if t == stall_at + 1 and i < 30:
                rec.dropped(op, size, intended)
                continue
            sent = intended + wait / 1000
            if 300 <= t < 310 and rng.random() < 0.05:
                rec.fail(op, size, intended, sent, sent + rng.uniform(0.2, 0.6) / 1000, "http_503", 503)
            elif t in (450, 451) and i < 3:
                rec.fail(op, size, intended, sent, sent + 30.0, "timeout")
            else:
                done = sent + service / 1000
                rec.ok(op, size, intended, sent, sent + service * 0.9 / 1000, done, 200,
                       {"S": 2100, "M": 9000, "L": 60000}[size])
    hlog = hist.HlogWriter(run_dir / "latency.hlog", start_wall)
    merger = hist.Merger(hlog=hlog)
    for snap in sorted(rec.take_all(), key=lambda snap: snap["t"]):
        merger.add(snap, "0")
    merger.seal_all()
    hlog.close()

    series = []
    for t in range(int(duration)):
        sec = merger.second(t)
        c, pc = sec["counts"], sec["percentiles"]
        target = _rate_at(t + 0.5, stages)
        stalled = stall_at <= t <= stall_at + 1
        server = {"busy_workers": 2 if stalled else round(min(2.0, target * 0.0031 * rng.uniform(0.8, 1.2)), 3),
                  "workers": 2, "queue_depth": (48 if t == stall_at else 12) if stalled else int(rng.random() < 0.1),
                  "renders_s": 0.0 if t == stall_at else round(target * 0.75 * rng.uniform(0.97, 1.03), 1),
                  "overloaded": 0, "deadline": 0, "restarts": 0,
                  "http": {"public-4242": {"200": c["status"].get("200", 0), "503": c["status"].get("503", 0)}}}
        series.append({"t": t, "target_rate": round(target, 3),
                       **{k: c[k] for k in ("intended", "sent", "ok", "errors", "dropped")},
                       **{m: {k: (pc.get(m) or {}).get(k) for k in ("p50", "p90", "p99", "p99.9", "max")}
                          for m in ("latency", "service")},
                       "lag_p99_ms": (pc.get("lag") or {}).get("p99"),
                       "gen_cpu": {m: round(0.09 + target / 400 * 0.13 * rng.uniform(0.9, 1.1), 3) for m in ("0", "1")},
                       "server": server if scraped else None})

    req = merger.counts_total()
    totals = {m: hist.percentiles(merger.total(m)) for m in hist.METRICS}
    done = req["ok"] + req["errors"]
    target_rate = sum(s[0] * (s[1] + s[2]) / 2 for s in stages) / duration
    thresholds = thresholds if thresholds is not None else [
        {"expr": "latency.p99.9<50ms", "metric": "latency.p99.9", "op": "<", "limit": 50.0,
         "value": totals["latency"]["p99.9"], "unit": "ms", "ok": totals["latency"]["p99.9"] < 50},
        {"expr": "errors.rate<1%", "metric": "errors.rate", "op": "<", "limit": 0.01,
         "value": round(req["errors"] / done, 6), "unit": "", "ok": req["errors"] / done < 0.01},
    ]
    failed = [t for t in thresholds if not t["ok"]]
    code, reason = (1, "generator_saturated") if generator_bound else ((5, "threshold_failed") if failed else (0, "held"))
    run = {
        "version": 1, "tool": "wbx loadtest", "name": name,
        "plan": {"target": "page", "url": "http://127.0.0.1:4001", "host": "demo.localhost", "paths": ["/", "/about"],
                 "accept_encoding": "gzip", "stages": [{"duration": d, "start": a, "end": b} for d, a, b in stages],
                 "arrival": "uniform", "seed": seed, "model": model, "connections": 64, "max_inflight": 4096,
                 "timeout": 30.0, "procs": 2, "thresholds": [t["expr"] for t in thresholds], "name": name},
        "env": {"host": "bench-1", "cpus": 2, "python": "3.11.2", "wbx": "0.1.0", "platform": "Linux-6.1-x86_64",
                "started_at": "2026-12-01T02:13:20+00:00", "start_wall": start_wall},
        "model": model, "omits_queueing": model == "closed", "duration_s": duration,
        **totals,
        "by_op": {op: {"latency": hist.percentiles(merger.total("latency", op=op)), **req["by_op"][op]}
                  for op in merger.ops()},
        "by_size": {sz: {"latency": hist.percentiles(merger.total("latency", size=sz)),
                         "count": merger.total("latency", size=sz).get_total_count()} for sz in merger.sizes()},
        "requests": {**{k: req[k] for k in ("intended", "sent", "ok", "errors", "dropped", "bytes")},
                     "by_status": req["status"], "by_error": req["error"]},
        "errors": {"rate": round(req["errors"] / done, 6), "count": req["errors"]},
        "dropped": {"rate": round(req["dropped"] / req["intended"], 6), "count": req["dropped"]},
        "rate": {"target": round(target_rate, 3), "achieved": round(done / duration, 3),
                 "achieved_ratio": round(done / duration / target_rate, 4)},
        "generator_bound": generator_bound,
        "generator": {"members": [{"name": m, "pid": 4242 + int(m), "cpu_max": 0.25} for m in ("0", "1")],
                      "verdict": {"generator_bound": generator_bound,
                                  "reason": "cpu above 85% for 5 s" if generator_bound else None,
                                  "since": 412 if generator_bound else None, "member": "1" if generator_bound else None,
                                  "worst_lag_p99_ms": 0.61, "worst_cpu": 0.97 if generator_bound else 0.25}},
        "server": {"overloaded": 0, "deadline": 0, "restarts": 0, "http_5xx": req["status"].get("503", 0),
                   "scraped": scraped, "note": None if scraped else "metrics_url http://127.0.0.1:4000 refused"},
        "thresholds": thresholds, "aborted": aborted,
        "stages": [{"at_s": sum(s[0] for s in stages[:i]), "duration": d, "start": a, "end": b}
                   for i, (d, a, b) in enumerate(stages)],
        "series": series,
        "spectrum": {m: hist.spectrum(merger.total(m)) for m in ("latency", "service")},
        "files": {"hlog": "latency.hlog", "html": None, "png": None},
        "exit": {"code": code, "reason": reason},
    }
    (run_dir / "run.json").write_text(json.dumps(run, indent=1))
    return run


@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("lt") / "run"
    return d, make_run(d)


@pytest.fixture(scope="module")
def built(ten_minutes) -> tuple[Path, dict, dict, str]:
    d, run = ten_minutes
    made = report.build(d)
    return d, run, made, made["html"].read_text("utf-8")


def _doc(text: str):
    return html5lib.parse(text, treebuilder="etree", namespaceHTMLElements=False)


SVG_NS = "{http://www.w3.org/2000/svg}"


def _iter(el, name: str):
    """Elements named `name`, HTML or SVG (html5lib puts SVG elements in their namespace)."""
    return [e for e in el.iter() if e.tag in (name, SVG_NS + name)]


def _chart(doc, kind: str):
    found = [e for e in _iter(doc, "svg") if e.get("data-chart") == kind]
    assert len(found) == 1, f"expected one {kind} chart, found {len(found)}"
    return found[0]


def _series(svg) -> dict[str, str]:
    return {e.get("data-series"): e.get("d") for e in _iter(svg, "path") if e.get("data-series")}


def _coords(d: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r"[ML](-?[\d.]+),(-?[\d.]+)", d)]


# ---------------------------------------------------------------------------------------------
# report.html


def test_ten_minute_report_is_one_small_self_contained_file(built):
    d, run, made, text = built
    assert made["html"] == d / "report.html"
    size = len(text.encode())
    assert 20_000 < size <= 1_000_000, size
    doc = _doc(text)
    # nothing that could fetch: no script, no link, no frame, no external src/href, no url(...)
    for tag in ("script", "link", "iframe", "object", "embed", "img", "audio", "video", "base"):
        assert _iter(doc, tag) == [], tag
    for el in doc.iter():
        for attr in ("src", "href", "xlink:href", "{http://www.w3.org/1999/xlink}href", "action", "poster"):
            v = (el.get(attr) or "").strip().lower()
            assert not v or v.startswith(("#", "data:")), (el.tag, attr, v)
    assert "url(" not in text.lower() and "@import" not in text.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    csp = [m.get("content") for m in doc.iter("meta") if (m.get("http-equiv") or "").lower() == "content-security-policy"]
    assert csp and "default-src 'none'" in csp[0]
    # the verdict is the threshold table's: p99 breaks 50 ms because of the stall
    assert "FAIL — threshold_failed (exit 5)" in text
    tables = {tuple(th.text for th in t.iter("th"))[:1]: t for t in doc.iter("table")}
    th_rows = [[("".join(td.itertext())) for td in tr.iter("td")] for tr in tables[("threshold",)].iter("tr")][1:]
    assert [r[0] for r in th_rows] == ["latency.p99.9<50ms", "errors.rate<1%"]
    assert th_rows[0][3] == "FAIL" and th_rows[1][3] == "pass"
    assert th_rows[0][1] == report.fmt_ms(run["latency"]["p99.9"]) and th_rows[0][2] == "< 50.0 ms"
    assert th_rows[1][1] == f"{run['errors']['rate'] * 100:.4g} %" and th_rows[1][2] == "< 1 %"
    assert "2026-12-01 02:13:20 UTC" in text


def test_charts_show_the_series_stage_boundaries_and_the_stall(built):
    _, run, _, text = built
    doc = _doc(text)
    lat = _chart(doc, "latency")
    s = _series(lat)
    assert set(s) == {"p50", "p90", "p99", "p99.9", "max"}
    # one point per second that had completions (none end during the stall second itself)
    with_data = [it for it in run["series"] if it["latency"]["p99"] is not None]
    assert 590 <= len(with_data) < len(run["series"]) == 600
    assert all(len(_coords(d)) == len(with_data) for d in s.values())
    stage_at = sorted(float(e.get("data-stage-at")) for e in _iter(lat, "line") if e.get("data-stage-at"))
    assert stage_at == [30.0, 540.0]
    # the stall is the highest point of p99 (smallest y): the second after the freeze, when its requests end
    pts = _coords(s["p99"])
    x_peak = min(pts, key=lambda p: p[1])[0]
    t_peak = (x_peak - report.ML) / (report.W - report.MR - report.ML) * 600 - 0.5
    assert abs(t_peak - 241) <= 1, t_peak
    # rate chart: the plan's target, what was sent, and how arrivals ended
    rate = _series(_chart(doc, "rate"))
    assert {"target", "achieved", "ok", "errors", "dropped", "server renders/s"} <= set(rate)
    tgt = _coords(rate["target"])
    assert tgt[0][1] > tgt[len(tgt) // 2][1]  # ramp from 0 up to the hold (y grows downwards)
    # server chart (scraped): busy workers, workers, queue depth
    assert {"busy_workers", "workers", "queue_depth"} <= set(_series(_chart(doc, "server")))
    # the spectrum: latency and service overlaid, latency's tail far above service's
    sp = _chart(doc, "spectrum")
    ss = _series(sp)
    assert set(ss) == {"latency", "service"}
    labels = ["".join(t.itertext()) for t in _iter(sp, "text")]
    x999 = float(next(t.get("x") for t in _iter(sp, "text") if "".join(t.itertext()) == "1 in 1,000"))

    def y_at(d):
        return min(_coords(d), key=lambda p: abs(p[0] - x999))[1]

    # at p99.9 latency (481 ms, queued behind the stall) sits well above service (~29 ms)
    assert y_at(ss["service"]) - y_at(ss["latency"]) > 30
    assert "1 in 100" in labels and "p99" in labels and "p99.9" in labels
    gen = _series(_chart(doc, "generator"))
    assert {"cpu:0", "lag_p99"} <= set(gen)
    # tables per op and per size class carry run.json's figures
    cells = [["".join(td.itertext()) for td in tr.iter("td")] for tr in doc.iter("tr")]
    render_row = next(c for c in cells if c and c[0] == "render")
    assert render_row[1] == f"{run['by_op']['render']['ok']:,}"
    xl = [c for c in cells if c and c[0] in ("S", "M", "L")]
    assert [c[0] for c in xl] == ["S", "M", "L"]
    assert "Server figures not scraped" not in text and "Generator-bound" not in text


class _ProxyCounter:
    """A TCP listener standing in for a proxy: counts every connection a browser opens."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[str] = []
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            try:
                self.requests.append(c.recv(4096).split(b"\r\n", 1)[0].decode("latin-1"))
                c.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            c.close()

    def close(self):
        self._stop = True
        self.thread.join(2)
        self.sock.close()


def _cdp_class():
    from test_web_chromium import Cdp

    class KeepingCdp(Cdp):
        """Cdp whose `call` keeps the events that arrive in the same read as its answer."""

        def call(self, method, params=None, session=None, timeout=30):
            from wsproto.events import TextMessage

            self._next += 1
            msg = {"id": self._next, "method": method, "params": params or {}}
            if session:
                msg["sessionId"] = session
            self.sock.sendall(self.ws.send(TextMessage(data=json.dumps(msg))))
            deadline = time.time() + timeout
            while time.time() < deadline:
                answer = None
                for m in self._pump():
                    if m.get("id") == self._next:
                        answer = m
                    else:
                        self.events.append(m)
                if answer is not None:
                    if "error" in answer:
                        raise RuntimeError(f"{method}: {answer['error']}")
                    return answer.get("result", {})
            raise TimeoutError(method)

    return KeepingCdp


@contextlib.contextmanager
def _browser(profile: Path, proxy_port: int):
    """Headless Chromium over DevTools, every connection it opens sent to our counting proxy."""
    Cdp = _cdp_class()

    exe = report.chromium()
    if exe is None:
        pytest.fail("chromium is not installed (ops/setup.sh --test installs it)")
    proc = subprocess.Popen(
        [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--disable-sync", "--disable-background-networking",
         "--disable-component-update", f"--proxy-server=http://127.0.0.1:{proxy_port}",
         "--proxy-bypass-list=<-loopback>", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
         f"--user-data-dir={profile}", "--window-size=1280,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 30
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail("chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        cdp = Cdp(f"ws://127.0.0.1:{port}{path}")
        try:
            yield cdp
        finally:
            try:
                cdp.call("Browser.close", timeout=5)
            except Exception:  # noqa: BLE001 - it is going anyway
                pass
            cdp.close()
    finally:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()


def _load(cdp, url: str) -> tuple[list[str], object]:
    """Open url in a new tab; the URLs the page requested, and a JS evaluator on the page."""
    target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Network", "Runtime"):
        cdp.call(f"{domain}.enable", session=session)

    def js(expr: str):
        return cdp.call("Runtime.evaluate", {"expression": expr, "returnByValue": True},
                        session=session)["result"].get("value")

    cdp.call("Page.navigate", {"url": url}, session=session)
    deadline = time.time() + 60
    while True:
        try:
            if js("location.href + ' ' + document.readyState") == url + " complete":
                break
        except RuntimeError:  # no execution context while the navigation commits
            pass
        if time.time() > deadline:
            pytest.fail(f"{url} did not load")
        time.sleep(0.1)
    cdp.drain(1.0)
    reqs = [e["params"]["request"]["url"] for e in cdp.events
            if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") == session]
    return reqs, js


def test_report_opens_in_chromium_without_a_single_network_request(built, tmp_path):
    d, _, made, _ = built
    proxy = _ProxyCounter()  # nothing leaves the box: every connection the browser opens lands here
    try:
        with _browser(tmp_path / "profile", proxy.port) as cdp:
            # the detector works: a page with one external image asks for it, and the proxy sees it
            control = tmp_path / "control.html"
            control.write_text('<!doctype html><title>c</title><img src="http://example.com/x.png">')
            reqs, _ = _load(cdp, control.as_uri())
            assert "http://example.com/x.png" in reqs
            deadline = time.time() + 5
            while not any("example.com" in r for r in proxy.requests) and time.time() < deadline:
                time.sleep(0.05)
            assert any("example.com/x.png" in r for r in proxy.requests), proxy.requests
            seen = len(proxy.requests)
            page = made["html"].as_uri()
            reqs, js = _load(cdp, page)
            assert reqs == [page], reqs  # the document itself, nothing else
            # what reached the proxy meanwhile: Chromium's own pings (network time, updates) only
            own = ("google.com", "gstatic.com", "googleapis.com", "gvt1.com", "gvt2.com")
            later = [r for r in proxy.requests[seen:] if not any(h in r for h in own)]
            assert later == [], later
            charts = js("[...document.querySelectorAll('svg.chart')].map(e => e.dataset.chart)")
            assert sorted(charts) == ["generator", "latency", "rate", "server", "spectrum"]
            width = js("document.querySelector('svg.chart[data-chart=latency]').getBoundingClientRect().width")
            assert width > 800  # laid out at page width, not collapsed
            assert js("document.querySelector('.verdict').textContent") == "FAIL — threshold_failed (exit 5)"
    finally:
        proxy.close()
    # and build() left a screenshot of the page
    png = made["png"]
    assert png == d / "report.png" and made["note"] is None, made
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 1280 and height >= 900
    assert len(data) > 30_000  # charts and tables, not a blank page


def test_the_screenshot_browser_is_reaped_with_its_helpers(built, tmp_path, monkeypatch):
    _, _, made, _ = built
    private = tmp_path / "tmpdir"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))  # where its profile (and HOME) go
    png, note = report.screenshot(made["html"], tmp_path / "again.png", 1000)
    assert note is None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    left = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(private).encode() in (proc / "cmdline").read_bytes():
                left.append(proc.name)
        except OSError:
            pass
    assert left == []  # browser, zygotes, renderer, crash handler: all gone
    assert list(private.iterdir()) == []  # and the private profile with them


def test_rebuild_from_a_copied_run_dir_gives_the_same_page(built, tmp_path):
    d, _, made, text = built
    copy_dir = tmp_path / "elsewhere" / "copied-run"
    shutil.copytree(d, copy_dir)
    (copy_dir / "report.html").unlink()
    (copy_dir / "report.png").unlink()
    again = report.build(copy_dir, png=False)
    assert again["html"] == copy_dir / "report.html" and again["png"] is None and again["note"]
    assert again["html"].read_text("utf-8") == text
    # the runner names report.html/png in run.json after building them: still the same page
    rj = json.loads((copy_dir / "run.json").read_text())
    rj["files"].update({"html": "report.html", "png": "report.png"})
    (copy_dir / "run.json").write_text(json.dumps(rj))
    assert report.build(copy_dir, png=False)["html"].read_text("utf-8") == text
    # and through the CLI verb, with the original directory gone from view
    moved = tmp_path / "moved"
    shutil.move(str(copy_dir), moved)
    (moved / "report.html").unlink()
    r = subprocess.run([*WBX, "loadtest", "report", str(moved), "--json"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is True and out["data"]["html"] == str(moved / "report.html")
    assert (moved / "report.html").read_text("utf-8") == text
    assert out["data"]["png"] == str(moved / "report.png") and (moved / "report.png").read_bytes()[:4] == b"\x89PNG"


HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)><svg onload=alert(3)>'


def test_hostile_strings_in_run_json_are_escaped(tmp_path):
    d = tmp_path / "run"
    run = make_run(d, stages=[(20.0, 50.0, 50.0)], stall_at=8, name="night " + HOSTILE)
    run["plan"]["url"] = "javascript:alert(4)//" + HOSTILE
    run["plan"]["host"] = "</title><style>body{background:url(http://evil.example/x)}</style>"
    run["env"]["host"] = "<link rel=stylesheet href=http://evil.example/s.css>"
    run["requests"]["by_error"][HOSTILE] = 3
    run["requests"]["by_status"]["<b>999</b>"] = 1
    run["by_op"][HOSTILE] = run["by_op"]["render"]
    run["by_size"]["</table><iframe src=http://evil.example>"] = run["by_size"]["S"]
    run["thresholds"].append({"expr": HOSTILE, "metric": "latency.p99", "op": "<", "limit": 10, "value": None,
                              "unit": "ms", "ok": False, "why": "<i>no data</i>"})
    run["aborted"] = {"at_s": 12, "expr": HOSTILE}
    run["generator"]["members"][0]["host"] = HOSTILE
    run["generator"]["verdict"] = {"generator_bound": True, "reason": HOSTILE, "since": 3, "member": HOSTILE}
    run["generator_bound"] = True
    run["series"][3]["gen_cpu"] = {HOSTILE: 0.5}
    run["server"]["note"] = HOSTILE
    run["files"]["hlog"] = "../../" + HOSTILE
    run["exit"] = {"code": 1, "reason": HOSTILE}
    # and values of the wrong type where numbers belong: still a page, never a crash
    run["series"][5]["latency"] = {"p99": "12", "max": float("nan")}
    run["series"][6]["target_rate"] = None
    run["series"][7] = {"t": "x"}
    run["latency"]["p99"] = [1, 2]
    run["duration_s"] = float("inf")
    (d / "run.json").write_text(json.dumps(run))
    text = report.build(d, png=False)["html"].read_text("utf-8")
    doc = _doc(text)
    for tag in ("script", "img", "iframe", "style", "link", "i"):
        n = len(_iter(doc, tag))
        assert n == (1 if tag == "style" else 0), (tag, n)  # our own <style> only
    assert not [b for b in _iter(doc, "b") if "999" in "".join(b.itertext())]
    assert "<b>999</b>" in "".join(doc.find("body").itertext())
    assert {e.get("data-chart") for e in _iter(doc, "svg")} == {"latency", "rate", "server", "spectrum", "generator"}
    for el in doc.iter():
        assert not [a for a in el.keys() if str(a).lower().startswith("on")], (el.tag, el.attrib)
    assert "evil.example" not in "".join(e.get("href") or e.get("src") or "" for e in doc.iter())
    body_text = "".join(doc.find("body").itertext())
    assert "<script>alert(1)</script>" in body_text  # shown as text, where the user can read it
    assert HOSTILE in "".join(doc.find("head").find("title").itertext())
    assert "Generator-bound" in body_text and "Aborted at 12 s" in body_text


def test_banners_for_generator_bound_closed_model_aborted_and_unscraped(tmp_path):
    d = tmp_path / "run"
    make_run(d, stages=[(15.0, 0.0, 100.0), (25.0, 100.0, 100.0)], stall_at=20, model="closed",
             generator_bound=True, aborted={"at_s": 31, "expr": "latency.p99<50ms"}, scraped=False)
    text = report.build(d, png=False)["html"].read_text("utf-8")
    doc = _doc(text)
    banners = {e.get("data-banner"): "".join(e.itertext()) for e in doc.iter("div") if e.get("data-banner")}
    assert set(banners) == {"generator-bound", "closed-model", "aborted", "not-scraped"}
    assert "the numbers are the generator's, not the server's" in banners["generator-bound"]
    assert "cpu above 85% for 5 s" in banners["generator-bound"]
    assert "omits queueing" in banners["closed-model"]
    assert "Aborted at 31 s" in banners["aborted"] and "latency.p99<50ms" in banners["aborted"]
    assert "refused" in banners["not-scraped"]
    assert "FAIL — generator_saturated (exit 1)" in text
    # no server chart without server figures; the abort is marked on the time charts
    charts = {e.get("data-chart") for e in _iter(doc, "svg")}
    assert "server" not in charts and {"latency", "rate", "spectrum", "generator"} <= charts
    aborts = [e for e in _iter(doc, "line") if e.get("data-abort-at")]
    assert len(aborts) == 2 and all(e.get("data-abort-at") == "31" for e in aborts)


def test_a_held_run_says_pass(tmp_path):
    d = tmp_path / "run"
    make_run(d, stages=[(20.0, 80.0, 80.0)], stall_at=999, thresholds=[
        {"expr": "latency.p99<500ms", "metric": "latency.p99", "op": "<", "limit": 500.0, "value": 9.1, "unit": "ms",
         "ok": True}])
    text = report.build(d, png=False)["html"].read_text("utf-8")
    assert "PASS — every threshold held" in text and "FAIL" not in text
    # the threshold is drawn as a limit line on the latency chart
    lat = _chart(_doc(text), "latency")
    assert any(e.get("class") == "limit" for e in _iter(lat, "line"))


def test_a_find_max_run_says_the_highest_rate_that_held(tmp_path):
    d = tmp_path / "run"
    run = make_run(d, stages=[(8.0, 400.0, 400.0)], stall_at=99)
    steps = [(1, 100.0, "held"), (2, 200.0, "held"), (3, 400.0, "held"), (4, 800.0, "broke"), (5, 600.0, "held"),
             (6, 700.0, "broke")]
    run["find_max"] = {"max_rate": 600.0, "first_failing_rate": 700.0, "generator_bound_at": None,
                       "lower_bound_only": False, "precision": 0.05, "step_s": 8.0, "elapsed_s": 61.2,
                       "steps": [{"step": n, "rate": r, "outcome": o, "failed": ["latency.p99<50ms"] if o == "broke" else [],
                                  "achieved": r * 0.998, "latency_p99_ms": 80.0 if o == "broke" else 9.5,
                                  "aborted": o == "broke", "dir": f"/somewhere/steps/{n:02d}-{r:g}"}
                                 for n, r, o in steps]}
    (d / "run.json").write_text(json.dumps(run))
    doc = _doc(report.build(d, png=False)["html"].read_text("utf-8"))
    p = next(e for e in doc.iter("p") if e.get("data-find-max"))
    assert p.get("data-find-max") == "600.0"
    assert "Highest rate with every threshold held: 600.0/s (broke at 700.0/s)" in "".join(p.itertext())
    rows = [["".join(td.itertext()) for td in tr.iter("td")] for tr in doc.iter("tr")]
    step_rows = [r for r in rows if len(r) == 7 and r[0].isdigit()]
    assert [(r[1], r[2]) for r in step_rows] == [(f"{r:,.1f}/s", o) for _, r, o in steps]
    assert step_rows[3][5] == "latency.p99<50ms" and step_rows[3][6] == "04-800"


def test_three_hour_series_is_bucketed_and_keeps_its_spikes(tmp_path):
    d = tmp_path / "run"
    run = make_run(d, stages=[(10.0, 20.0, 20.0)], stall_at=4)
    n = 3 * 3600
    run["series"] = [{"t": t, "target_rate": 500.0, "sent": 500, "ok": 500, "errors": 0, "dropped": 0,
                      "latency": {"p50": 2.0, "p90": 3.0, "p99": 900.0 if t == 7777 else 5.0, "p99.9": 9.0,
                                  "max": 950.0 if t == 7777 else 12.0},
                      "lag_p99_ms": 0.4, "gen_cpu": {"0": 0.4, "1": 0.41},
                      "server": {"busy_workers": 1.0, "workers": 4, "queue_depth": 0}} for t in range(n)]
    run["duration_s"] = n
    run["stages"] = [{"at_s": 0, "duration": n, "start": 500, "end": 500}]
    (d / "run.json").write_text(json.dumps(run))
    text = report.build(d, png=False)["html"].read_text("utf-8")
    assert len(text.encode()) <= 1_000_000
    doc = _doc(text)
    p99 = _coords(_series(_chart(doc, "latency"))["p99"])
    assert len(p99) <= report.MAX_POINTS
    ys = sorted({round(y, 1) for _, y in p99})
    assert len(ys) == 2  # every bucket at 5 ms except the one holding the 900 ms second
    assert "Each point covers 15 s" in text


def test_missing_or_broken_run_json_is_a_clear_error(tmp_path):
    with pytest.raises(NotFound, match="no run.json"):
        report.build(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(UsageError, match="not JSON"):
        report.build(tmp_path)
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match="not a JSON object"):
        report.build(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_report_html_replaces_a_symlink_instead_of_writing_through_it(tmp_path):
    d = tmp_path / "run"
    make_run(d, stages=[(8.0, 10.0, 10.0)], stall_at=99)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (d / "report.html").symlink_to(victim)
    report.build(d, png=False)
    assert victim.read_text() == "keep me"
    assert not (d / "report.html").is_symlink() and "<svg" in (d / "report.html").read_text()


def test_without_chromium_there_is_no_png_and_a_note(tmp_path, monkeypatch):
    d = tmp_path / "run"
    make_run(d, stages=[(8.0, 10.0, 10.0)], stall_at=99)
    monkeypatch.setenv("WB_CHROMIUM", str(tmp_path / "no-such-chromium"))
    made = report.build(d)
    assert made["png"] is None and "chromium" in made["note"] and not (d / "report.png").exists()
    assert (d / "report.html").stat().st_size > 10_000


def test_spectrum_comes_from_latency_hlog_when_run_json_has_none(tmp_path):
    d = tmp_path / "run"
    run = make_run(d, stages=[(20.0, 100.0, 100.0)], stall_at=10)
    with_spectrum = report.render_html(run, d)
    run.pop("spectrum")
    (d / "run.json").write_text(json.dumps(run))
    text = report.build(d, png=False)["html"].read_text("utf-8")
    ss = _series(_chart(_doc(text), "spectrum"))
    assert set(ss) == {"latency", "service"}
    assert _series(_chart(_doc(with_spectrum), "spectrum")) == ss


# ---------------------------------------------------------------------------------------------
# compare


def _scaled(run: dict, **factors) -> dict:
    r = copy.deepcopy(run)
    for path, f in factors.items():
        node = r
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = node[keys[-1]] * f
    return r


def test_compare_flags_a_20_percent_p99_regression_at_10_not_at_30(ten_minutes):
    _, base = ten_minutes
    run = copy.deepcopy(base)
    run["latency"]["p99"] = round(base["latency"]["p99"] * 1.2, 3)
    at10 = compare.compare(base, run, 0.10)
    assert at10["ok"] is False
    rows = {r["metric"]: r for r in at10["rows"]}
    assert set(rows) == {"latency.p50", "latency.p90", "latency.p99", "latency.p99.9", "latency.max",
                         "service.p99", "rate.achieved", "errors.rate"}
    assert rows["latency.p99"]["regression"] is True and abs(rows["latency.p99"]["change"] - 0.2) < 1e-3
    assert [m for m, r in rows.items() if r["regression"]] == ["latency.p99"]
    at30 = compare.compare(base, run, 0.30)
    assert at30["ok"] is True and not any(r["regression"] for r in at30["rows"])
    table = compare.format_table(at10)
    line = next(x for x in table.splitlines() if x.startswith("latency.p99 "))
    assert "REGRESSION" in line and "+20.0%" in line
    assert "1 regression" in table
    json.dumps(at10, allow_nan=False)  # the CLI prints it as JSON


def test_compare_directions_rate_down_errors_up_and_improvements(ten_minutes):
    _, base = ten_minutes
    slower = _scaled(base, rate__achieved=0.8)
    res = compare.compare(base, slower, 0.1)
    assert not res["ok"] and [r["metric"] for r in res["rows"] if r["regression"]] == ["rate.achieved"]
    faster = _scaled(base, rate__achieved=1.5, latency__p99=0.5, latency__max=0.1, errors__rate=0.0)
    res = compare.compare(base, faster, 0.1)
    assert res["ok"] and not any(r["regression"] for r in res["rows"])
    more_err = _scaled(base, errors__rate=1.5)
    assert [r["metric"] for r in compare.compare(base, more_err, 0.1)["rows"] if r["regression"]] == ["errors.rate"]
    # from no errors at all: a real error rate is a regression, a trace below the noise floor is not
    clean = copy.deepcopy(base)
    clean["errors"] = {"rate": 0.0, "count": 0}
    dirty = copy.deepcopy(clean)
    dirty["errors"] = {"rate": 0.004, "count": 960}
    assert not compare.compare(clean, dirty, 0.1)["ok"]
    trace = copy.deepcopy(clean)
    trace["errors"] = {"rate": 0.000004, "count": 1}
    assert compare.compare(clean, trace, 0.1)["ok"]


def test_compare_notes_runs_that_cannot_be_compared_fairly(ten_minutes):
    _, base = ten_minutes
    other = copy.deepcopy(base)
    other["generator_bound"] = True
    other["model"] = "closed"
    other["rate"]["target"] = 900.0
    res = compare.compare(base, other, 0.1)
    notes = " ".join(res["notes"])
    assert "generator-bound" in notes and "closed" in notes and "target rate" in notes
    assert "generator-bound" in compare.format_table(res)
    with pytest.raises(UsageError):
        compare.compare(base, other, -0.1)
    with pytest.raises(UsageError):
        compare.compare(base, ["not", "a", "run"], 0.1)


def test_wbx_loadtest_compare_exits_5_on_a_regression(ten_minutes, tmp_path):
    _, base = ten_minutes
    run = copy.deepcopy(base)
    run["latency"]["p99"] = round(base["latency"]["p99"] * 1.2, 3)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "run.json").write_text(json.dumps(base))
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "run.json").write_text(json.dumps(run))
    for limit, code in (("10%", 5), ("30%", 0)):
        r = subprocess.run([*WBX, "loadtest", "compare", str(tmp_path / "base"), str(tmp_path / "new"),
                            "--max-regression", limit, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == code, (limit, r.stdout, r.stderr)
        data = json.loads(r.stdout)["data"]
        assert data["ok"] is (code == 0)


# ---------------------------------------------------------------------------------------------
# live view

LIVE_SCRIPT = r"""
import sys, time
from workbooks.loadtest.live import LiveView
plan = {"stages": [{"duration": 10.0, "start": 400.0, "end": 400.0}], "target": "page"}
item = {"t": 3, "target_rate": 400.0, "intended": 400, "sent": 398, "ok": 390, "errors": 8, "dropped": 2,
        "latency": {"p50": 2.5, "p90": 4.0, "p99": 987.0, "p99.9": 1001.0, "max": 1203.0},
        "lag_p99_ms": 7.25, "gen_cpu": {"0": 0.93}, "inflight": 57,
        "server": {"busy_workers": 1.5, "workers": 2, "queue_depth": 17}}
verdict = {"generator_bound": sys.argv[1] == "bound", "reason": "lag p99 above 5 ms for 5 s"}
if sys.argv[2:] == ["lazy"]:  # as --find-max uses it: never entered, started by the first update
    lv = LiveView(plan)
    lv.update(item, verdict)
    time.sleep(1.3)
    lv.update(dict(item, t=4, errors=1, dropped=0), verdict)
    sys.exit(0)
with LiveView(plan) as lv:
    lv.update(item, verdict)
    time.sleep(1.3)
    lv.update(dict(item, t=4, errors=1, dropped=0), verdict)
    time.sleep(1.3)
print("END", flush=True)
"""


def _run_in_pty(args: list[str]) -> str:
    import pty

    master, slave = pty.openpty()
    os.set_blocking(master, True)
    env = {**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        proc.wait(30)
    return b"".join(chunks).decode("utf-8", "replace")


def _plain(s: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", s)


def test_live_view_on_a_terminal_shows_the_second_and_goes_red_when_generator_bound():
    out = _run_in_pty([sys.executable, "-c", LIVE_SCRIPT, "bound"])
    plain = _plain(out)
    assert "END" in plain
    for needle in ("4s / 10s", "400.0/s", "398.0/s", "987 ms", "1.20 s", "2.50 ms", "errors", "dropped",
                   "inflight", "57", "93 %", "7.25 ms", "busy 1.5/2", "queue 17", "GENERATOR-BOUND"):
        assert needle in plain, (needle, plain[-3000:])
    # cumulative: 8 + 1 errors, 2 + 0 dropped after the second update
    assert re.search(r"errors\s+9\b", plain) and re.search(r"dropped\s+2\b", plain)
    # red: the generator line carries a red SGR code
    gb = out.index("GENERATOR-BOUND")
    assert re.search(r"\x1b\[[0-9;]*31m|\x1b\[[0-9;]*38;5;(1|9|160|196)m|\x1b\[[0-9;]*91m", out[max(0, gb - 80):gb])
    assert out.rfind("\x1b[?25h") > out.rfind("\x1b[?25l")  # the cursor is given back at the end
    calm = _plain(_run_in_pty([sys.executable, "-c", LIVE_SCRIPT, "ok"]))
    assert "GENERATOR-BOUND" not in calm and "987 ms" in calm


def test_live_view_started_by_its_first_update_is_stopped_at_exit():
    out = _run_in_pty([sys.executable, "-c", LIVE_SCRIPT, "ok", "lazy"])
    plain = _plain(out)
    assert "5s / 10s" in plain and re.search(r"errors\s+9\b", plain)
    assert out.rfind("\x1b[?25h") > out.rfind("\x1b[?25l") >= 0


def test_live_view_writes_nothing_when_not_a_terminal():
    r = subprocess.run([sys.executable, "-c", LIVE_SCRIPT, "bound"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "END\n" and r.stderr == ""
