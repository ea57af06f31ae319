"""tcp endpoints with CURVE: the right key works (client and remote worker), a wrong key is refused and reported."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time

import msgpack
import pytest
import zmq
import zmq.auth

from pool_harness import ROOT, Serve, alive, wait_for
from workbooks.oql import default_kernel
from workbooks.pool import endpoints as E
from workbooks.pool.bulk import THRESHOLD
from workbooks.pool.client import AsyncPoolClient, PoolClient, PoolError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def curve_serve(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curve")
    data = tmp / "data"
    env = dict(os.environ, WB_DATA=str(data))
    r = subprocess.run([sys.executable, "-m", "workbooks", "ops", "keys"], capture_output=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    cport, wport = free_port(), free_port()
    s = Serve(tmp, workers=1, args=("--client-tcp", f"tcp://127.0.0.1:{cport}", "--worker-tcp", f"tcp://127.0.0.1:{wport}"))
    s.client_tcp = f"tcp://127.0.0.1:{cport}"
    s.worker_tcp = f"tcp://127.0.0.1:{wport}"
    s.keys = json.loads(r.stdout)
    yield s
    s.stop()


def test_keys_are_private_files(curve_serve):
    kd = E.keys_dir(curve_serve.data)
    assert stat.S_IMODE(kd.stat().st_mode) == 0o700
    files = list(kd.rglob("*.key*"))
    assert {p.name for p in files} >= {"server.key", "server.key_secret", "client.key", "client.key_secret"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    # running it again keeps the keys (a pool's key must not change under its clients)
    r = curve_serve.wbx("ops", "keys")
    assert json.loads(r.stdout)["server_public"] == curve_serve.keys["server_public"]
    assert json.loads(r.stdout)["created"] == []


def right_curve(data):
    kd = E.keys_dir(data)
    server_public, _ = zmq.auth.load_certificate(str(kd / "server.key"))
    public, secret = zmq.auth.load_certificate(str(kd / "client.key_secret"))
    return server_public, public, secret


def test_a_client_with_an_authorized_key_works(curve_serve):
    c = PoolClient(curve_serve.client_tcp, curve=right_curve(curve_serve.data))
    assert c.call("lint", ["* over tcp"]) == PoolClient(E.client_endpoint(curve_serve.data)).call("lint", ["* over tcp"])
    c.close()

    import trio

    async def main():
        a = AsyncPoolClient(curve_serve.client_tcp, curve=right_curve(curve_serve.data))
        return await a.call("parse_headlines", ["* async over tcp"])

    assert trio.run(main).startswith(b"[")


def test_a_tcp_client_cannot_name_shared_memory(curve_serve):
    c = PoolClient(curve_serve.client_tcp, curve=right_curve(curve_serve.data))
    assert c.bulk_stats()["dir"] is None  # never offered over tcp
    sock = c._get_link().sock
    for req in ({"args": [{"bulk": "q-1-0123456789abcdef", "len": 3}]}, {"args": ["* x"], "reply_bulk": "r-1-0123456789abcdef"}):
        sock.send(msgpack.packb({"v": 1, "id": 99, "op": "render", "deadline_ms": 5000, **req}, use_bin_type=True))
        assert sock.poll(5000)
        h = msgpack.unpackb(sock.recv_multipart()[0], raw=False)
        assert h["ok"] is False and h["error"]["code"] == "protocol" and "this host" in h["error"]["message"]
    c.close()


def test_a_wrong_key_is_rejected_logged_and_shown_in_status(curve_serve):
    server_public, _, _ = right_curve(curve_serve.data)
    rogue_public, rogue_secret = zmq.curve_keypair()
    c = PoolClient(curve_serve.client_tcp, curve=(server_public, rogue_public, rogue_secret))
    t0 = time.monotonic()
    with pytest.raises(PoolError) as ei:
        c.call("lint", ["* let me in"], deadline_ms=5000)
    assert ei.value.code == "protocol" and "refused" in ei.value.message  # said at once, not a timeout
    assert time.monotonic() - t0 < 4  # said at once, not after the 5 s deadline
    c.close()

    import trio

    async def rogue_async():
        a = AsyncPoolClient(curve_serve.client_tcp, curve=(server_public, rogue_public, rogue_secret))
        with pytest.raises(PoolError) as ei:
            await a.call("lint", ["* let me in"], deadline_ms=5000)
        a.close()
        return ei.value

    err = trio.run(rogue_async)
    assert err.code == "protocol" and "refused" in err.message
    st = wait_for(lambda: (d := json.loads(curve_serve.wbx("ops", "status").stdout))["pool"]["auth"]["rejected_total"] and d,
                  what="the rejection in ops status")
    keys = [r["key"] for r in st["pool"]["auth"]["recent"]]
    assert rogue_public.decode() in keys
    assert "auth_rejected" in curve_serve.log() and rogue_public.decode() in curve_serve.log()
    metrics = curve_serve.ctl("metrics")["text"]
    assert "wb_pool_auth_rejected_total" in metrics and "wb_pool_auth_rejected_total 0" not in metrics


def test_a_remote_worker_joins_over_tcp_and_serves(curve_serve, tmp_path):
    # The remote side only has copies of the server's public key and its own secret key.
    kd = E.keys_dir(curve_serve.data)
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "server.key").write_bytes((kd / "server.key").read_bytes())
    (remote / "me.key_secret").write_bytes((kd / "client.key_secret").read_bytes())
    env = dict(os.environ)
    env.pop("WB_DATA", None)
    p = subprocess.Popen([sys.executable, "-m", "workbooks", "worker", "--connect", curve_serve.worker_tcp,
                          "--server-key", str(remote / "server.key"), "--client-key", str(remote / "me.key_secret"),
                          "--id", "faraway"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        wait_for(lambda: any(w["child_id"] == "faraway" and w["remote"] for w in curve_serve.pool()["workers"]),
                 what="remote worker registered")
        assert curve_serve.wbx("ops", "drain", "worker-1").returncode == 0
        c = curve_serve.client()
        for i in range(10):
            c.call("lint", [f"* {i}"])
        far = next(w for w in curve_serve.pool()["workers"] if w["child_id"] == "faraway")
        assert far["served"] >= 10
        # A local client puts a big document in shared memory; the worker on "another host"
        # cannot open it, so the broker sends it the bytes and the answer comes back inline.
        demo = (ROOT / "workbooks" / "samples" / "demo.org").read_text()
        big = demo * (2 * THRESHOLD // len(demo))
        inlined = curve_serve.pool()["bulk"]["inlined_for_remote"]
        assert c.call("render", [big]) == default_kernel().call_raw("render", big)
        assert c.bulk_stats()["sent"] >= 1 and c.bulk_stats()["received"] == 0
        assert curve_serve.pool()["bulk"]["inlined_for_remote"] == inlined + 1
        st = json.loads(curve_serve.wbx("ops", "status").stdout)
        assert any(w["child_id"] == "faraway" for w in st["pool"]["remote_workers"])
    finally:
        curve_serve.wbx("ops", "drain", "worker-1", "--undo")
        p.terminate()
        try:
            out, _ = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
    assert p.returncode == 0, out[-2000:]
    assert b"worker_stopped" in out
    assert not alive(p.pid)


def test_a_worker_with_a_wrong_key_never_joins(curve_serve, tmp_path):
    kd = E.keys_dir(curve_serve.data)
    zmq.auth.create_certificates(str(tmp_path), "rogue")
    p = subprocess.Popen([sys.executable, "-m", "workbooks", "worker", "--connect", curve_serve.worker_tcp,
                          "--server-key", str(kd / "server.key"), "--client-key", str(tmp_path / "rogue.key_secret"),
                          "--id", "rogue"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        rogue_public, _ = zmq.auth.load_certificate(str(tmp_path / "rogue.key"))
        wait_for(lambda: rogue_public.decode() in [r["key"] for r in curve_serve.pool()["auth"]["recent"]],
                 what="the rogue worker's key rejected")
        assert not any(w["child_id"] == "rogue" for w in curve_serve.pool()["workers"])
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise AssertionError("a worker that never joined did not stop on SIGTERM")


def test_authorized_keys_are_reread_added_and_revoked_without_restart(curve_serve, tmp_path):
    """A key made with `wbx ops keys --client NAME` works at once; removing its file revokes it."""
    r = curve_serve.wbx("ops", "keys", "--client", "laptop")
    assert r.returncode == 0, r.stderr
    kd = E.keys_dir(curve_serve.data)
    server_public, _ = zmq.auth.load_certificate(str(kd / "server.key"))
    public, secret = zmq.auth.load_certificate(str(kd / "laptop.key_secret"))
    c = PoolClient(curve_serve.client_tcp, curve=(server_public, public, secret))
    assert c.call("lint", ["* from the laptop"]).startswith(b"[")
    c.close()
    (E.authorized_dir(curve_serve.data) / "laptop.key").unlink()
    c = PoolClient(curve_serve.client_tcp, curve=(server_public, public, secret))
    with pytest.raises(PoolError) as ei:
        c.call("lint", ["* revoked"], deadline_ms=5000)
    assert ei.value.code == "protocol"
    c.close()
