"""The trio client re-sends waiting requests to a new broker even when a new call, not the
parked reader, is the one that reads the socket monitor's news of the new connection.

A call starts with `_Link.check()`, which reads the monitor. If the reconnection events are read
there, the monitor's FD is quiet afterwards and the task parked reading the socket is not woken
for them: the requests it and others wait on (lost with the old broker) were re-sent only when
some reply happened to arrive. The fake broker here does not answer until it has seen the lost
request again, so that wait would be forever.
"""

from __future__ import annotations

import threading
import time

import trio
import zmq

from workbooks.pool import protocol as P
from workbooks.pool.client import AsyncPoolClient


def _router(ctx, endpoint):
    r = ctx.socket(zmq.ROUTER)
    r.setsockopt(zmq.LINGER, 0)
    r.bind(endpoint)
    return r


def test_a_new_call_that_sees_the_new_broker_resends_the_waiting_ones(tmp_path):
    endpoint = f"ipc://{tmp_path}/front.sock"
    ctx = zmq.Context()
    first = _router(ctx, endpoint)
    got_first = threading.Event()
    restarted = threading.Event()
    stop = threading.Event()
    seen: list = []  # (time, request id) at the new broker, before it answers anything

    def broker():
        nonlocal first
        assert first.poll(10_000), "request A never came"
        first.recv_multipart()  # A's request: lost with this broker
        got_first.set()
        first.close(0)
        r = _router(ctx, endpoint)
        restarted.set()
        answered = set()
        window_end = None
        pending = []
        try:
            while not stop.is_set():
                if r.poll(20):
                    cid, frame = r.recv_multipart()
                    req = P.decode_request(frame)
                    seen.append((time.monotonic(), req["id"]))
                    pending.append((cid, req["id"]))
                    if window_end is None:
                        window_end = time.monotonic() + 1.0
                if window_end is not None and (time.monotonic() > window_end or {i for _, i in seen} >= {1, 2}):
                    for cid, rid in pending:  # answer everything once, from now on at once
                        if rid not in answered:
                            answered.add(rid)
                            r.send_multipart([cid, P.ok_header(rid), f"out{rid}".encode()])
                    pending.clear()
        finally:
            r.close(0)

    t = threading.Thread(target=broker, daemon=True)
    t.start()
    results = {}

    async def main():
        c = AsyncPoolClient(endpoint)

        async def a():
            results["a"] = await c.call("render", ["a"], deadline_ms=10_000)

        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                n.start_soon(a)
                await trio.to_thread.run_sync(got_first.wait, 10)
                await trio.to_thread.run_sync(restarted.wait, 10)
                # Hold the event loop while the client reconnects, so the next call (not the
                # parked reader) is the first to read the monitor's events.
                time.sleep(1.0)
                results["b"] = await c.call("render", ["b"], deadline_ms=10_000)
        c.close()

    try:
        trio.run(main)
    finally:
        stop.set()
        t.join(5)
        ctx.term()
    assert results == {"a": b"out1", "b": b"out2"}, results
    t_b = min(ts for ts, i in seen if i == 2)
    t_a = min(ts for ts, i in seen if i == 1)
    # A's request reached the new broker with B's, not only after B's answer came back
    assert abs(t_a - t_b) < 0.5, seen
