"""A worker re-announcing itself to a restarted broker must then hear that broker at once.

The race this pins down (it cost ~3 s in tests/test_pool_broker_kill.py under load): after the
broker restarts, the worker's heartbeat socket reaches the new broker first, which answers RESET
on the worker's main socket. If that RESET is in when the worker reads its socket monitor and
sends READY, the send processes the socket's pending commands, so the socket's FD shows nothing
although a message waits; what the broker sends next (HB, the queued requests) lands in the same
active pipe and signals nothing either. A worker that then slept without looking at the socket
(ZMQ_EVENTS) heard nothing until its 3-heartbeat silence made it reconnect.

Here a fake broker (a ROUTER) plays the restart, and the worker's monitor read is delayed so
the RESET is always in first: the request sent after READY must be answered well inside one
heartbeat interval, by the same connection.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import zmq

from workbooks.pool import protocol as P
from workbooks.pool.bulk import BulkDir

ROOT = Path(__file__).resolve().parent.parent
HEARTBEAT_MS = 1000

WORKER = r"""
import sys, time
from workbooks.pool import worker as W

class Kernel:  # no wasm: echoes, so the test is about the sockets only
    load_info = {}
    def call_raw(self, op, *args, deadline_ms, consume=None):
        return ("echo:" + str(args[0])).encode()
    def memory_bytes(self):
        return 0

class SlowMonitor(W.Worker):
    def _check_monitor(self):
        # Connection events waiting: read them late, so the new broker's RESET is in first.
        if self.monitor is not None and self.monitor.poll(0):
            time.sleep(0.5)
        return super()._check_monitor()

w = SlowMonitor(sys.argv[1], child_id="w-reannounce", heartbeat_ms=int(sys.argv[2]))
w.kernel = Kernel()
sys.exit(w.run())
"""


def _router(ctx, endpoint: str) -> zmq.Socket:
    r = ctx.socket(zmq.ROUTER)
    r.setsockopt(zmq.LINGER, 0)
    r.setsockopt(zmq.ROUTER_MANDATORY, 1)
    r.bind(endpoint)
    return r


def _recv_from(r: zmq.Socket, ident: bytes | None, kinds: tuple, timeout: float):
    """The next message of one of `kinds` (from `ident`, if given); heartbeats are skipped."""
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0 or not r.poll(int(left * 1000) + 1):
            return None
        frames = r.recv_multipart()
        if frames[1] in kinds and (ident is None or frames[0] == ident):
            return frames


def _request(r: zmq.Socket, ident: bytes, req_id: int) -> None:
    r.send_multipart([ident, P.REQ, P.pack_budget(5000), P.encode_request(req_id, "render", [f"doc{req_id}"], 5000)])


def test_worker_hears_the_new_broker_right_after_reannouncing(tmp_path):
    endpoint = f"ipc://{tmp_path}/backend.sock"
    ctx = zmq.Context()
    r = _router(ctx, endpoint)
    log = open(tmp_path / "worker.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", WORKER, endpoint, str(HEARTBEAT_MS)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        ready = _recv_from(r, None, (P.READY,), 30)
        assert ready is not None, (tmp_path / "worker.log").read_text()
        ident = ready[0]
        r.send_multipart([ident, P.HB])
        _request(r, ident, 1)
        ok = _recv_from(r, ident, (P.OK,), 5)
        assert ok is not None and ok[3] == b"echo:doc1"

        # The broker restarts: a new ROUTER on the same endpoint, knowing nobody.
        r.close(0)
        r = _router(ctx, endpoint)
        # It answers the first sign of the worker with RESET (as the broker does to a heartbeat
        # from a worker it does not know): sent the moment the worker's main socket is routable.
        end = time.monotonic() + 5
        while True:
            try:
                r.send_multipart([ident, P.RESET])
                break
            except zmq.ZMQError as e:
                assert e.errno == zmq.EHOSTUNREACH and time.monotonic() < end, e
                time.sleep(0.002)
        ready = _recv_from(r, ident, (P.READY,), 5)
        assert ready is not None, "the worker did not re-announce itself"
        t_ready = time.monotonic()
        r.send_multipart([ident, P.HB])  # what the broker does on a READY, then the queued request
        _request(r, ident, 2)
        # (a READY again on the same connection is fine: the worker answering the RESET)
        end = time.monotonic() + 3 * HEARTBEAT_MS / 1000 + 2
        while True:
            ok = _recv_from(r, None, (P.OK, P.READY), end - time.monotonic())
            if ok is None or ok[1] == P.OK or ok[0] != ident:
                break
        took = time.monotonic() - t_ready
        assert ok is not None and ok[1] == P.OK, (
            f"no answer after READY but {ok and ok[:2]} after {took:.2f} s (the worker slept through the "
            "new broker's messages until its silence timeout)")
        assert ok[0] == ident and P.unpack(ok[2])["id"] == 2 and ok[3] == b"echo:doc2"
        assert took < HEARTBEAT_MS / 1000 / 2, took

        # Stop it the normal way: BYE, acknowledged.
        proc.send_signal(signal.SIGTERM)
        if _recv_from(r, ident, (P.BYE,), 5) is not None:
            r.send_multipart([ident, P.BYE])
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
        r.close(0)
        ctx.term()
        bulk = BulkDir.open(endpoint, serve=True)
        if bulk is not None:
            bulk.remove_if_empty()
            bulk.close()
