"""Large bodies through shared memory (workbooks.pool.bulk), against a real broker and workers.

What a user would notice: big renders come back byte-identical to the kernel's, the broker no
longer carries the bytes, nothing piles up in /dev/shm, a forged or stale reference is a typed
error that touches no file outside the pool's directory, and the path heals when the directory
is removed under it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import msgpack
import pytest
import trio
import zmq

from pool_harness import BarePool, wait_for
from workbooks.oql import default_kernel
from workbooks.pool import bulk as B
from workbooks.pool import protocol as P
from workbooks.pool.client import AsyncPoolClient, PoolClient, PoolError

ROOT = Path(__file__).resolve().parent.parent
DEMO = (ROOT / "workbooks" / "samples" / "demo.org").read_text()
BIG = DEMO * (3 * B.THRESHOLD // len(DEMO) + 1)  # a document well over the threshold, HTML too


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    p = BarePool(tmp_path_factory.mktemp("bulk"), workers=2)
    yield p
    p.stop()


def bulk_dir(pool) -> Path:
    return B.dir_for(pool.client_endpoint)


def my_files(pool) -> list[str]:
    d = bulk_dir(pool)
    return sorted(n for n in os.listdir(d) if n.split("-")[1] == str(os.getpid())) if d.exists() else []


def raw_request(pool, req: dict, timeout_ms: int = 10000) -> tuple[dict, list[bytes]]:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(pool.client_endpoint)
    try:
        s.send(msgpack.packb({"v": 1, "id": 7, "deadline_ms": 5000, **req}, use_bin_type=True))
        assert s.poll(timeout_ms), "the broker did not answer"
        frames = s.recv_multipart()
        return msgpack.unpackb(frames[0], raw=False), frames
    finally:
        s.close(0)


def test_big_renders_go_through_shared_memory_and_match_the_kernel(pool):
    want = default_kernel().call_raw("render", BIG)
    assert len(want) >= B.THRESHOLD
    before = pool.stats()["bulk"]
    c = PoolClient(pool.client_endpoint)
    try:
        for _ in range(3):
            assert c.call("render", [BIG]) == want
        st = c.bulk_stats()
        assert st["dir"] == str(bulk_dir(pool)) and st["sent"] == 3 and st["received"] == 3
        # small calls stay inline both ways
        assert c.call("render", ["* small\n"]) == default_kernel().call_raw("render", "* small\n")
        assert c.bulk_stats()["sent"] == 3 and c.bulk_stats()["received"] == 3
        # one request file and one reply file, reused call after call, all 0600
        files = my_files(pool)
        assert len(files) == 2 and {f[0] for f in files} == {"q", "r"}
        for f in files:
            assert os.stat(bulk_dir(pool) / f).st_mode & 0o777 == 0o600
        assert os.stat(bulk_dir(pool)).st_mode & 0o777 == 0o700
    finally:
        c.close()
    assert my_files(pool) == []  # close removes what the client kept
    after = pool.stats()["bulk"]
    assert after["requests"] - before["requests"] == 3  # the small call stayed inline both ways

    async def run():
        a = AsyncPoolClient(pool.client_endpoint)
        try:
            outs = []
            async with trio.open_nursery() as n:
                async def one(i):
                    outs.append(await a.call("render", [BIG + f"\n* tail {i}\n"]))
                for i in range(4):
                    n.start_soon(one, i)
            return outs, a.bulk_stats()
        finally:
            a.close()

    outs, st = trio.run(run)
    assert sorted(outs) == sorted(default_kernel().call_raw("render", BIG + f"\n* tail {i}\n") for i in range(4))
    assert st["sent"] == 4 and st["received"] == 4
    assert my_files(pool) == []


def test_a_client_keeps_at_most_16_mb_of_files_for_reuse(pool):
    huge = DEMO * (5_000_000 // len(DEMO))  # 5 MB in, ~13 MB of HTML out
    c = PoolClient(pool.client_endpoint)
    try:
        assert c.call("render", [huge], deadline_ms=30000) == default_kernel().call_raw("render", huge)
        kept = sum(os.stat(bulk_dir(pool) / f).st_size for f in my_files(pool))
        assert 0 < kept <= 16 << 20
        assert c.call("render", [BIG]) == default_kernel().call_raw("render", BIG)  # and reuse still works
        assert c.bulk_stats()["received"] == 2
    finally:
        c.close()
    assert my_files(pool) == []


def test_a_client_can_turn_shared_memory_off(pool, monkeypatch):
    monkeypatch.setenv("WB_POOL_BULK", "0")
    c = PoolClient(pool.client_endpoint)
    try:
        assert c.call("render", [BIG]) == default_kernel().call_raw("render", BIG)
        assert c.bulk_stats() == {"dir": None, "sent": 0, "received": 0}
    finally:
        c.close()


def test_forged_references_are_typed_errors_and_touch_nothing_outside(pool, tmp_path):
    d = bulk_dir(pool)
    d.mkdir(mode=0o700, exist_ok=True)
    # a name with a path in it never reaches a worker
    h, _ = raw_request(pool, {"op": "render", "args": [{"bulk": "../../../etc/passwd", "len": 10}]})
    assert h["ok"] is False and h["error"]["code"] == "protocol"
    h, _ = raw_request(pool, {"op": "render", "args": ["x"], "reply_bulk": "/tmp/owned"})
    assert h["ok"] is False and h["error"]["code"] == "protocol"
    # a well-formed name that does not exist
    h, _ = raw_request(pool, {"op": "render", "args": [{"bulk": "q-1-0123456789abcdef", "len": 10}]})
    assert h["ok"] is False and h["error"]["code"] == "bad_request" and "gone" in h["error"]["message"]
    # a symlink planted in the directory is not followed, for reading or for writing
    secret = tmp_path / "secret.org"
    secret.write_text("* the secret\n")
    os.symlink(secret, d / "q-1-00000000000000aa")
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    os.symlink(victim, d / "r-1-00000000000000bb")
    try:
        h, _ = raw_request(pool, {"op": "render", "args": [{"bulk": "q-1-00000000000000aa", "len": 13}]})
        assert h["ok"] is False and h["error"]["code"] == "bad_request"
        h, frames = raw_request(pool, {"op": "render", "args": [BIG], "reply_bulk": "r-1-00000000000000bb"})
        assert h["ok"] is True and "bulk" not in h  # answered inline instead
        assert frames[1] == default_kernel().call_raw("render", BIG)
        assert victim.read_text() == "untouched"
    finally:
        os.unlink(d / "q-1-00000000000000aa")
        os.unlink(d / "r-1-00000000000000bb")
    # a length the file does not have
    name = B.BulkDir.open(pool.client_endpoint).write(None, b"* short\n", kind="q", owner_pid=os.getpid())
    try:
        h, _ = raw_request(pool, {"op": "render", "args": [{"bulk": name, "len": 4096}]})
        assert h["ok"] is False and h["error"]["code"] == "bad_request" and "expected 4096" in h["error"]["message"]
        h, frames = raw_request(pool, {"op": "render", "args": [{"bulk": name, "len": 8}]})
        assert h["ok"] is True and frames[1] == default_kernel().call_raw("render", "* short\n")
    finally:
        os.unlink(d / name)
    # invalid UTF-8 in a shared-memory body is the same typed error as inline
    bad = b"* ok\n" + b"\xff" * B.THRESHOLD
    c = PoolClient(pool.client_endpoint)
    try:
        with pytest.raises(PoolError) as ei:
            c.call("render", [bad])
        assert ei.value.code == "bad_request" and "UTF-8" in ei.value.message
        assert c.bulk_stats()["sent"] == 1
    finally:
        c.close()
    assert my_files(pool) == []


def test_the_directory_removed_under_a_running_pool_heals(pool):
    c = PoolClient(pool.client_endpoint)
    want = default_kernel().call_raw("render", BIG)
    try:
        assert c.call("render", [BIG]) == want
        d = bulk_dir(pool)
        for n in os.listdir(d):
            os.unlink(d / n)
        os.rmdir(d)  # an operator cleaning /dev/shm, or systemd's RemoveIPC
        assert c.call("render", [BIG]) == want
        assert c.call("render", [BIG]) == want
        assert c.bulk_stats()["sent"] == 3 and c.bulk_stats()["received"] == 3
        assert d.is_dir()
    finally:
        c.close()


def test_a_worker_killed_mid_render_of_a_big_body_costs_nothing(tmp_path):
    huge = DEMO * (4_000_000 // len(DEMO))  # a render long enough to be caught in the middle
    want = default_kernel().call_raw("render", huge)
    p = BarePool(tmp_path, workers=2)
    try:
        c = PoolClient(p.client_endpoint)
        result: dict = {}
        t = threading.Thread(target=lambda: result.setdefault("out", c.call("render", [huge], deadline_ms=30000)))
        t.start()
        busy = wait_for(lambda: [w for w in p.stats()["workers"] if w["in_flight"]], timeout=10, interval=0.005,
                        what="a worker busy with the big render")
        os.kill(busy[0]["pid"], signal.SIGKILL)
        t.join(60)
        assert result.get("out") == want
        st = p.stats()
        assert st["retries"] >= 1 and st["bulk"]["requests"] >= 1
        c.close()
        assert my_files(p) == []
    finally:
        p.stop()


def test_sweep_removes_bodies_nobody_will_read(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "SHM_ROOT", tmp_path)
    d = B.BulkDir.open("ipc://" + str(tmp_path / "run" / "pool.sock"), serve=True)
    try:
        dead = 2 ** 22 + 12345  # above pid_max's default: never a live process here
        while B._alive(dead):
            dead += 1
        now = time.time()
        names = {
            "dead_old": d.write(None, b"x", kind="q", owner_pid=dead),
            "dead_new": d.write(None, b"x", kind="r", owner_pid=dead),
            "live_old": d.write(None, b"x", kind="q", owner_pid=os.getpid()),
            "live_ancient": d.write(None, b"x", kind="q", owner_pid=os.getpid()),
        }
        os.utime(d.path / names["dead_old"], (now - 40, now - 40))
        os.utime(d.path / names["live_old"], (now - 40, now - 40))
        os.utime(d.path / names["live_ancient"], (now - 700, now - 700))
        (d.path / "not-ours.txt").write_text("left alone")
        assert d.sweep(now=now, max_deadline_s=600) == 2
        left = set(os.listdir(d.path))
        assert left == {names["dead_new"], names["live_old"], "not-ours.txt"}
    finally:
        d.close()


def test_cancelled_and_timed_out_callers_leave_no_bodies_and_others_get_theirs(pool):
    docs = [BIG + f"\n* caller {i}\n" for i in range(6)]
    want = {i: default_kernel().call_raw("render", d) for i, d in enumerate(docs)}

    async def run():
        a = AsyncPoolClient(pool.client_endpoint)
        got, cancelled = {}, []
        try:
            async def one(i):
                if i % 2:
                    with trio.move_on_after(0.0005) as scope:  # gives up before its reply
                        await a.call("render", [docs[i]])
                    if scope.cancelled_caught:
                        cancelled.append(i)
                        return
                got[i] = await a.call("render", [docs[i]])

            async with trio.open_nursery() as n:
                for i in range(len(docs)):
                    n.start_soon(one, i)
            # the callers that stayed each got their own document's HTML
            assert got and all(got[i] == want[i] for i in got)
            await trio.sleep(0.5)  # late replies to the cancelled calls arrive and are dropped
            assert await a.call("render", [docs[0]]) == want[0]
            # only files kept for reuse are left, at most KEEP_FILES of each kind
            left = my_files(pool)
            assert len([f for f in left if f[0] == "q"]) <= 4 and len([f for f in left if f[0] == "r"]) <= 4
            return cancelled
        finally:
            a.close()

    cancelled = trio.run(run)
    assert cancelled  # the test did exercise cancellation
    assert my_files(pool) == []


def test_a_killed_clients_bodies_are_swept_by_the_broker(tmp_path):
    p = BarePool(tmp_path, workers=1, env={"WB_POOL_BULK_SWEEP_S": "0.2", "WB_POOL_BULK_ORPHAN_AGE_S": "0.5"})
    try:
        # A client process killed in the middle of a big call never removes its files.
        code = ("import sys; from workbooks.pool.client import PoolClient; "
                "c = PoolClient(sys.argv[1]); doc = open(sys.argv[2]).read(); print('go', flush=True); "
                "[c.call('render', [doc], deadline_ms=30000) for _ in range(1000)]")
        src = tmp_path / "big.org"
        src.write_text(DEMO * (4_000_000 // len(DEMO)))
        import subprocess
        import sys

        child = subprocess.Popen([sys.executable, "-c", code, p.client_endpoint, str(src)], stdout=subprocess.PIPE,
                                 env=p.env, cwd=ROOT)
        assert child.stdout.readline().strip() == b"go"
        d = bulk_dir(p)
        theirs = wait_for(lambda: [n for n in os.listdir(d) if n.split("-")[1] == str(child.pid)], timeout=10,
                          what="the child's files")
        child.kill()
        child.wait()
        child.stdout.close()
        assert theirs
        wait_for(lambda: not [n for n in os.listdir(d) if n.split("-")[1] == str(child.pid)], timeout=10,
                 what="the broker to sweep a dead client's files")
        assert p.stats()["bulk"]["swept"] >= 1
    finally:
        p.stop()
