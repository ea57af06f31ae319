"""The pool's wire protocol against a real broker and real workers: typed errors, never a hang."""

from __future__ import annotations

import stat
import time

import msgpack
import pytest
import trio
import zmq

from pool_harness import BarePool
from workbooks.oql import default_kernel
from workbooks.pool import endpoints as E
from workbooks.pool import protocol as P
from workbooks.pool.client import AsyncPoolClient, PoolClient, PoolError


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    p = BarePool(tmp_path_factory.mktemp("pool"), workers=2, broker_args=("--max-queue", "4"))
    yield p
    p.stop()


def raw_socket(endpoint: str) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def exchange(endpoint: str, frames: list[bytes], timeout_ms: int = 5000) -> list[bytes]:
    s = raw_socket(endpoint)
    try:
        s.send_multipart(frames)
        assert s.poll(timeout_ms), "the broker did not answer"
        return s.recv_multipart()
    finally:
        s.close(0)


def error_of(reply: list[bytes]) -> dict:
    h = msgpack.unpackb(reply[0])
    assert h["v"] == P.VERSION and h["ok"] is False, h
    return h


ORG = "* TODO Ship it :work:\n** Details\nbody text\n"


def test_results_are_the_kernel_bytes_untouched(pool):
    c = PoolClient(pool.client_endpoint)
    k = default_kernel()
    for op, args in [("parse_headlines", [ORG]), ("tangle_plan", [ORG]), ("lint", [ORG]), ("render", [ORG]),
                     ("check_upgrade", [ORG, ORG + "* more\n"])]:
        assert c.call(op, args) == k.call_raw(op, *args), op
    # bytes arguments are fine too
    assert c.call("parse_headlines", [ORG.encode()]) == k.call_raw("parse_headlines", ORG)


def test_wrong_protocol_version_is_a_protocol_error(pool):
    req = msgpack.packb({"v": 99, "id": 7, "op": "lint", "args": ["* a"], "deadline_ms": 1000})
    h = error_of(exchange(pool.client_endpoint, [req]))
    assert h["id"] == 7 and h["error"]["code"] == "protocol" and "version" in h["error"]["message"]


@pytest.mark.parametrize("frames", [
    [b"\xc1\xff garbage"],                                    # not msgpack
    [msgpack.packb([1, 2, 3])],                               # not a map
    [msgpack.packb({"v": 1, "op": "lint", "args": ["x"]})],   # no id
    [msgpack.packb({"v": 1, "id": 1, "op": "lint", "args": "x", "deadline_ms": 10})],  # args not a list
    [P.encode_request(1, "lint", ["* a"]), b"extra frame"],   # two frames
    [b""],                                                    # empty
])
def test_garbage_frames_get_a_protocol_error(pool, frames):
    h = error_of(exchange(pool.client_endpoint, frames))
    assert h["error"]["code"] == "protocol"


@pytest.mark.parametrize("op,args,needle", [
    ("drop_tables", ["x"], "unknown operation"),
    ("lint", ["a", "b"], "takes 1 argument"),
    ("lint", [42], "string or bytes"),
])
def test_bad_requests_are_typed(pool, op, args, needle):
    with pytest.raises(PoolError) as ei:
        PoolClient(pool.client_endpoint).call(op, args)
    assert ei.value.code == "bad_request" and needle in ei.value.message


def test_invalid_utf8_is_bad_request_and_the_worker_lives_on(pool):
    c = PoolClient(pool.client_endpoint)
    before = {w["pid"] for w in pool.stats()["workers"]}
    with pytest.raises(PoolError) as ei:
        c.call("parse_headlines", [b"* caf\xe9\n"])
    assert ei.value.code == "bad_request" and "UTF-8" in ei.value.message
    assert c.call("parse_headlines", ["* ok"]).startswith(b"[")
    assert {w["pid"] for w in pool.stats()["workers"]} == before


def test_the_broker_survives_garbage_and_keeps_serving(pool):
    for junk in ([b"\x00" * 10], [b"x"] * 5, [msgpack.packb({"v": 1, "id": {"nested": 1}})]):
        exchange(pool.client_endpoint, junk)
    # garbage on the worker side is logged and dropped, never crashes the broker
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(E.worker_endpoint(pool.data))
    s.send_multipart([b"OK", b"not for anyone", b"x"])
    s.send_multipart([b"READY", b"\xc1"])
    s.send_multipart([b"NONSENSE"])
    s.close(0)
    assert PoolClient(pool.client_endpoint).call("lint", ["* a"]).startswith(b"[")
    assert pool.broker.poll() is None


def test_async_client_concurrent_calls_get_their_own_replies(pool):
    client = AsyncPoolClient(pool.client_endpoint)
    k = default_kernel()
    ops = ["parse_headlines", "tangle_plan", "render", "lint"]
    results = {}

    async def one(i):
        op = ops[i % len(ops)]
        results[i] = (op, f"* heading {i}\n", await client.call(op, [f"* heading {i}\n"]))

    async def main():
        for _ in range(3):
            async with trio.open_nursery() as n:
                for i in range(4):  # the queue holds 4 and two workers serve: no `overloaded` here
                    n.start_soon(one, i)
        for i in range(4, 60):
            await one(i)

    trio.run(main)
    assert len(results) == 60
    for i, (op, org, raw) in results.items():
        assert raw == k.call_raw(op, org), (i, op)
    client.close()


def test_deadline_is_never_a_hang_when_the_broker_is_gone(tmp_path):
    # Nothing listens: the client fails fast with no_workers instead of waiting forever.
    ep = f"ipc://{tmp_path}/nobody.sock"
    t0 = time.monotonic()
    with pytest.raises(PoolError) as ei:
        PoolClient(ep).call("lint", ["* a"], deadline_ms=300)
    assert ei.value.code == "no_workers"
    assert time.monotonic() - t0 < 3

    async def main():
        with pytest.raises(PoolError) as ei:
            await AsyncPoolClient(ep).call("lint", ["* a"], deadline_ms=300)
        assert ei.value.code == "no_workers"

    trio.run(main)


def test_ipc_sockets_are_private(pool):
    run = E.run_dir(pool.data)
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    socks = [p for p in run.iterdir() if stat.S_ISSOCK(p.stat().st_mode)]
    assert {p.name for p in socks} >= {"pool.sock", "pool-workers.sock", "broker-control.sock"}
    for p in socks:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_long_data_dir_still_gets_private_sockets(tmp_path):
    deep = tmp_path / ("d" * 90) / "data"
    run = E.run_dir(deep)
    assert len(str(run / "supervisor-control.sock")) <= E.SUN_PATH_MAX
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    assert E.run_dir(deep) == run  # every process agrees


def test_no_workers(tmp_path):
    p = BarePool(tmp_path, workers=0, broker_args=("--no-workers-ms", "300"))
    try:
        t0 = time.monotonic()
        with pytest.raises(PoolError) as ei:
            PoolClient(p.client_endpoint).call("lint", ["* a"], deadline_ms=5000)
        assert ei.value.code == "no_workers"
        assert time.monotonic() - t0 < 4.5
        # a worker that shows up later serves queued and new requests
        p.add_worker("late")
        p.wait_workers(1)
        assert PoolClient(p.client_endpoint).call("lint", ["* a"]).startswith(b"[")
        # every worker drained by the operator is the same as none
        from pool_harness import broker_request

        broker_request(p.data, "drain", id="late")
        with pytest.raises(PoolError) as ei:
            PoolClient(p.client_endpoint).call("lint", ["* a"], deadline_ms=5000)
        assert ei.value.code == "no_workers"
        broker_request(p.data, "undrain", id="late")
        assert PoolClient(p.client_endpoint).call("lint", ["* a"]).startswith(b"[")
    finally:
        p.stop()


def test_oversized_requests_are_refused_and_the_broker_lives(tmp_path, monkeypatch):
    p = BarePool(tmp_path, workers=1, env={"WB_POOL_MAX_MESSAGE_MB": "1"})
    try:
        # the broker drops a sender whose message is over its cap, and keeps serving the rest
        s = raw_socket(p.client_endpoint)
        s.send(P.encode_request(1, "lint", ["x" * (2 << 20)]))
        assert not s.poll(500)
        s.close(0)
        assert PoolClient(p.client_endpoint).call("lint", ["* fine"]).startswith(b"[")
        # the client refuses up front with a typed error instead of waiting for nothing
        monkeypatch.setattr(P, "MAX_MESSAGE_BYTES", 1 << 20)
        with pytest.raises(PoolError) as ei:
            PoolClient(p.client_endpoint).call("lint", ["x" * (2 << 20)])
        assert ei.value.code == "bad_request" and "limit" in ei.value.message
        assert p.broker.poll() is None
    finally:
        p.stop()


def test_a_worker_sending_a_malformed_reply_gives_the_caller_a_typed_error(tmp_path):
    """A broken (or hostile, but authenticated) worker cannot make a caller hang or see junk codes."""
    import threading

    p = BarePool(tmp_path, workers=0)
    fake = zmq.Context.instance().socket(zmq.DEALER)
    fake.setsockopt(zmq.LINGER, 0)
    fake.setsockopt(zmq.IDENTITY, b"fake.1.1")
    fake.connect(E.worker_endpoint(p.data))
    try:
        fake.send_multipart([P.READY, P.pack({"v": P.VERSION, "id": "fake.1.1", "child_id": "fake", "pid": 1})])
        p.wait_workers(1)
        answers = [
            lambda rid: [P.ERR, msgpack.packb({"v": 1, "id": rid, "ok": False, "error": {"code": "made_up", "message": "x"}})],
            lambda rid: [P.ERR, b"\xc1 not msgpack"],
            lambda rid: [P.OK, P.ok_header(rid)],  # no body frame
        ]

        def serve_fake():
            for answer in answers:
                while True:
                    frames = fake.recv_multipart()
                    if frames[0] == P.REQ:
                        break
                rid = msgpack.unpackb(frames[2])["id"]
                fake.send_multipart(answer(rid))

        t = threading.Thread(target=serve_fake, daemon=True)
        t.start()
        c = PoolClient(p.client_endpoint)
        for _ in answers:
            with pytest.raises(PoolError) as ei:
                c.call("lint", ["* a"], deadline_ms=3000)
            assert ei.value.code == "protocol", ei.value.message
        t.join(5)
        assert p.stats()["errors"]["protocol"] == 3
    finally:
        fake.close(0)
        p.stop()


def test_clients_work_after_fork(pool):
    """A client made before fork() gets its own socket in the child (zmq contexts cannot cross fork)."""
    import os

    c = PoolClient(pool.client_endpoint)
    assert c.call("lint", ["* parent"]).startswith(b"[")
    a = AsyncPoolClient(pool.client_endpoint)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: use both inherited client objects, report through the pipe
        try:
            ok = c.call("lint", ["* child"]).startswith(b"[")
            ok = ok and trio.run(a.call, "lint", ["* child async"]).startswith(b"[")
            os.write(w, b"1" if ok else b"0")
        except BaseException:
            os.write(w, b"0")
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    assert got == b"1"
    assert c.call("lint", ["* parent again"]).startswith(b"[")


def test_async_callers_cancelled_midway_do_not_strand_the_others(pool):
    """The task reading the socket may be cancelled (an HTTP client went away): another takes over."""
    k = default_kernel()
    client = AsyncPoolClient(pool.client_endpoint)
    done = {}

    async def call(name, org, cancel_after=None):
        if cancel_after is None:
            done[name] = await client.call("parse_headlines", [org])
            return
        with trio.move_on_after(cancel_after):
            done[name] = await client.call("parse_headlines", [org])

    async def main():
        for round_ in range(20):
            async with trio.open_nursery() as n:
                n.start_soon(call, f"leader{round_}", "* a", 0)  # first in: reads, then is cancelled
                n.start_soon(call, f"b{round_}", f"* b {round_}")
                n.start_soon(call, f"c{round_}", f"* c {round_}")
        with trio.fail_after(5):
            await call("after", "* after")

    trio.run(main)
    for round_ in range(20):
        assert done[f"b{round_}"] == k.call_raw("parse_headlines", f"* b {round_}")
        assert done[f"c{round_}"] == k.call_raw("parse_headlines", f"* c {round_}")
    assert done["after"] == k.call_raw("parse_headlines", "* after")
    client.close()


def test_the_broker_control_socket_is_an_actor_endpoint(pool):
    from workbooks.actors.errors import ActorError
    from workbooks.actors.remote import request_sync

    ep = E.broker_control_endpoint(pool.data)
    stats = request_sync(ep, "stats")
    assert {w["child_id"] for w in stats["workers"]} == {"w1", "w2"}
    with pytest.raises(ActorError) as ei:
        request_sync(ep, "format_disk")
    assert ei.value.code == "unknown_op"
    s = zmq.Context.instance().socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(ep)
    s.send(b"\xc1junk")
    assert s.poll(3000)
    reply = msgpack.unpackb(s.recv())
    s.close(0)
    assert reply["ok"] is False and reply["error"]["code"] == "protocol"


def test_a_worker_without_a_broker_keeps_retrying_and_stops_on_sigterm(tmp_path):
    import signal
    import subprocess
    import sys

    from pool_harness import ROOT, alive

    p = subprocess.Popen([sys.executable, "-m", "workbooks.pool.worker", "--connect", f"ipc://{tmp_path}/nobody.sock",
                          "--id", "lonely", "--heartbeat-ms", "200"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        time.sleep(2.5)  # long enough to be in its reconnect back-off
        assert p.poll() is None
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=10)
        assert time.monotonic() - t0 < 4
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0
    assert b"broker_silent_reconnecting" in out and b"worker_stopped" in out
    assert not alive(p.pid)
