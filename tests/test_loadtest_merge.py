"""Merging across generators (issue 19, item 5): the same fixed synthetic latency stream through 1, 2
and 4 local generator processes, and through 1 local + 1 remote generator over tcp + CURVE, gives
identical merged counts; a remote generator whose CURVE key the coordinator does not know is refused.

Real processes and real ZeroMQ: `runner.run` spawns `python -m workbooks.loadtest.generator`
processes, the remote one is started here exactly as a user would start it on another machine.
The stream: arrival k sleeps LEVELS[perm(k % 1000)] ms, so every 1000 arrivals hold 550 of 1 ms,
380 of 300 ms, 60 of 600 ms, 9 of 900 ms and 1 of 1.2 s — p50, p90, p99, p99.9 and max each fall in
a different level, 300 ms apart. Compared exactly: request counts, the level of each percentile,
the count in each level of `service`, and the counts per second (arrivals, lag samples). `latency`
also holds the generator's own dispatch delay, which a crowded box can stretch past 300 ms for a
few requests: its level counts may only move up, and by a few.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq.auth

from workbooks.loadtest import hist
from workbooks.loadtest import plan as P
from workbooks.loadtest import runner
from workbooks.loadtest.coordinator import RemoteGeneratorsMissing
from workbooks.pool import endpoints as E

ROOT = Path(__file__).resolve().parents[1]
LEVELS_MS = [1, 300, 600, 900, 1200]
LEVEL_COUNTS = [550, 380, 60, 9, 1]
# A request never takes less than its level (it sleeps that long), so scheduling noise can only add:
# band i runs from level i to just under level i + 1 (a 1 ms request would need ~300 ms of noise).
BANDS_MS = [lv - 0.5 for lv in LEVELS_MS[1:]]
RATE, DURATION = 500, 2  # uniform arrivals at (k + 0.5) / 500 s: 1000 arrivals, none near a second's edge
PCTS = ("p50", "p90", "p99", "p99.9", "max")


def _stream() -> list[float]:
    order = sorted(range(1000), key=lambda i: (i * 7919) % 1000)  # spread the slow ones over the run
    lat = [0.0] * 1000
    at = 0
    for level, n in zip(LEVELS_MS, LEVEL_COUNTS):
        for i in order[at:at + n]:
            lat[i] = float(level)
        at += n
    return lat


def _plan(**kw):
    flags = {"rate": str(RATE), "duration": f"{DURATION}s", "scrape": False, "connections": 512, **kw}
    return P.build_plan({"target": "synthetic", "synthetic": {"latency_ms": _stream()}}, flags)


def _band(ms: float) -> int:
    return sum(ms >= b for b in BANDS_MS)


def _level_counts(h) -> list[int]:
    out = [0] * len(LEVELS_MS)
    for it in h.get_recorded_iterator():
        out[_band(it.value_iterated_to / 1000.0)] += it.count_at_value_iterated_to
    return out


def _figures(run_dir: Path, result: dict) -> dict:
    """What must be identical however many generators produced it."""
    lat_total, svc_total = hist.new(), hist.new()
    lag_per_second: dict[int, int] = {}
    for tag, start, _end, h in hist.read_hlog(run_dir / "latency.hlog"):
        metric = (tag or "").split("|")[0]
        if metric == "latency":
            lat_total.add(h)
        elif metric == "service":
            svc_total.add(h)
        elif metric == "lag":
            lag_per_second[int(start)] = lag_per_second.get(int(start), 0) + h.get_total_count()
    req = result["requests"]
    return {
        "requests": {k: req[k] for k in ("intended", "sent", "ok", "errors", "dropped")},
        "count": result["latency"]["count"],
        "hlog_count": lat_total.get_total_count(),
        "levels_at": {p: _band(result["latency"][p]) for p in PCTS},
        "latency_level_counts": _level_counts(lat_total),
        "service_level_counts": _level_counts(svc_total),
        "intended_per_second": [s["intended"] for s in result["series"] if s["intended"]],
        "lag_count_per_second": [lag_per_second[s] for s in sorted(lag_per_second)],
    }


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"workbooks.loadtest.generator" in f.read()
    except OSError:
        return False


def _socket_dirs(root: Path) -> set[Path]:
    """The coordinators' socket directories of every run under `root` (their generators log the endpoint)."""
    out = set()
    for log in root.rglob("generators.log"):
        for m in re.finditer(rb'"endpoint": "ipc://([^"]+)/coordinator.sock"', log.read_bytes()):
            out.add(Path(m.group(1).decode()))
    return out


@pytest.fixture(autouse=True)
def _fast_report(monkeypatch):
    # the report is D's (and tested there); here a png through Chromium would only cost seconds
    monkeypatch.setenv("WB_CHROMIUM", "/nonexistent-chromium")


@pytest.fixture
def keys(tmp_path):
    data = tmp_path / "data"
    made = E.generate_keys(data)
    return data, made


def _free_tcp() -> str:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"tcp://127.0.0.1:{port}"


def _remote_generator(endpoint: str, server_key: str, client_key: str, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("WB_LOADTEST_PARENT", None)
    return subprocess.Popen([sys.executable, "-m", "workbooks.loadtest.generator", "--connect", endpoint,
                             "--server-key", server_key, "--client-key", client_key, "--wait", "30"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                            env=env, cwd=str(log.parent))


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_one_two_and_four_local_processes_and_a_remote_one_merge_to_the_same_counts(tmp_path, keys):
    data, made = keys
    figures = {}
    pids = []
    for procs in (1, 2, 4):
        d = tmp_path / f"p{procs}"
        res = runner.run(_plan(procs=procs), d)
        assert res["exit"]["code"] == 0, res["exit"]
        assert len(res["generator"]["members"]) == procs
        pids += [m["pid"] for m in res["generator"]["members"]]
        figures[f"{procs} local"] = _figures(d, res)

    listen = _free_tcp()
    log = tmp_path / "remote.log"
    # the remote side is given the server's public key as Z85 text, the way `wbx loadtest generator` takes it
    remote = _remote_generator(listen, made["server_public"], made["client_secret_file"], log)
    try:
        d = tmp_path / "remote"
        res = runner.run(_plan(procs=1, remote=1, listen=listen), d, data=data, remote_wait_s=30)
        # the same remote generator serves the next run too (as --find-max runs step after step) ...
        again = runner.run(_plan(procs=1, remote=1, listen=listen, rate="50", duration="1s"), tmp_path / "again",
                           data=data, remote_wait_s=30)
        assert again["exit"]["code"] == 0 and again["requests"]["ok"] == 50
        assert [m["kind"] for m in again["generator"]["members"]] == ["local", "remote"]
        # ... and leaves by itself when no further run comes
        assert remote.wait(15) == 0, log.read_text()[-2000:]
    finally:
        _stop(remote)
    assert res["exit"]["code"] == 0, res["exit"]
    kinds = sorted(m["kind"] for m in res["generator"]["members"])
    assert kinds == ["local", "remote"]
    # both did work: the remote member sent its half of the arrivals
    by_kind = {m["kind"]: m["totals"] for m in res["generator"]["members"]}
    assert by_kind["remote"]["sent"] == by_kind["local"]["sent"] == 500
    figures["1 local + 1 remote"] = _figures(d, res)

    # `latency` (done - intended) also holds the generator's own dispatch delay, which a crowded
    # shared box has stretched past 300 ms for a handful of requests: that can only move a sample up
    # a level, and only a few; `service` (done - sent) goes through the same recording and merging
    # without it, and must come out exactly.
    for name, f in figures.items():
        lat = f.pop("latency_level_counts")
        assert sum(lat) == 1000, (name, lat)
        assert all(sum(lat[:i + 1]) <= sum(LEVEL_COUNTS[:i + 1]) for i in range(len(lat))), (name, lat)
        assert sum(abs(a - b) for a, b in zip(lat, LEVEL_COUNTS)) <= 20, (name, lat)
    one = figures["1 local"]
    assert one["requests"] == {"intended": 1000, "sent": 1000, "ok": 1000, "errors": 0, "dropped": 0}
    assert one["count"] == one["hlog_count"] == 1000
    assert one["levels_at"] == {"p50": 0, "p90": 1, "p99": 2, "p99.9": 3, "max": 4}
    assert one["service_level_counts"] == LEVEL_COUNTS
    assert one["intended_per_second"] == [500, 500] == one["lag_count_per_second"]
    for name, f in figures.items():
        assert f == one, (name, f, one)

    assert not [p for p in pids if _alive(p)], "generator processes left behind"
    dirs = _socket_dirs(tmp_path)
    assert len(dirs) == 5 and not [d for d in dirs if d.exists()], "socket directories left behind"


def test_a_remote_generator_with_an_unknown_key_is_refused(tmp_path, keys):
    data, made = keys
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    _pub, secret = zmq.auth.create_certificates(str(stranger), "stranger")  # not in keys/authorized/
    listen = _free_tcp()
    log = tmp_path / "stranger.log"
    gen = _remote_generator(listen, str(Path(made["server_public_file"])), secret, log)
    try:
        t0 = time.monotonic()
        with pytest.raises(RemoteGeneratorsMissing) as ei:
            runner.run(_plan(procs=1, remote=1, listen=listen), tmp_path / "run", data=data, remote_wait_s=4)
        took = time.monotonic() - t0
        rc = gen.wait(10)
    finally:
        _stop(gen)
    msg = str(ei.value)
    assert listen in msg and "0 of 1 remote generators" in msg and "unknown CURVE key" in msg, msg
    assert ei.value.exit_code == 3
    assert took < 20
    assert rc == 7, log.read_text()[-2000:]  # the generator learns it was refused and says so
    assert "auth_refused" in log.read_text()
    assert not (tmp_path / "run" / "run.json").exists()
    dirs = _socket_dirs(tmp_path)
    assert len(dirs) == 1 and not [d for d in dirs if d.exists()]
