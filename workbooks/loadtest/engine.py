"""The generator's engine: arrivals in, requests out, every outcome recorded against its intended start.

Open model (the default): arrival k is due at `t0 + t_k` whether or not earlier requests have
finished. A scheduler task sleeps to each due time (trio's clock, no spinning), records its own
lateness (`lag`), and hands the arrival to the connection tasks through a queue; the arrival keeps
its intended start however long it waits there for a free connection, so a stalled server shows
up in `latency` (done - intended) the way its users would feel it. At most `connections` tasks
each own one keep-alive connection (so at most that many sockets are open) and pull due arrivals
off the queue; idle ones wait on a LIFO stack, so a light load keeps few connections warm. When
`max_inflight` arrivals are queued or in flight, the next one is recorded as `dropped` — counted,
never skipped silently.

Why one task per connection rather than one per request: a trio task spawn plus its nursery
bookkeeping costs tens of µs of CPU per request, which is what an open-model generator spends its
budget on; the queue keeps the same intended-start semantics for a fraction of that.

Closed model (only on request): `closed_concurrency` loops each send, wait, send again;
intended == sent, so queueing at the server is omitted (the report says so).

`cancel` (a trio.Event) stops everything within a scheduler pass: arrivals in flight then are
counted as `abandoned`, not recorded. An arrival that waited its whole `timeout` for a connection
fails as `timeout` without being sent (so a run against a hung server ends one timeout after its
last arrival, not after the whole queue has timed out connection by connection).

Clocks: every time handed to the recorder is in the clock of `t0`. The interface's clock is
`time.perf_counter()` (CLOCK_MONOTONIC); note that `trio.current_time()` is NOT that clock (trio
adds a random offset of 10^4..2*10^5 s per run), so a `t0` taken from trio's clock is recognised
(it is far from perf_counter's now) and honoured: the engine then reports in trio's clock. Targets
report the first byte in perf_counter seconds.

Sleeping to a due time: trio's own sleep rounds its wait up to whole milliseconds and raises and
catches a Cancelled per wake (~30 µs of CPU); the scheduler instead arms a Linux timerfd at the
absolute due time and waits for it to be readable (`DeadlineTimer`), which wakes within tens of
µs. Elsewhere (or if timerfd is unavailable) it falls back to `trio.sleep_until`.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import time
from collections import deque

import trio

from workbooks.loadtest.httpclient import TransportError

_Abort = trio.lowlevel.Abort
_perf = time.perf_counter


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class DeadlineTimer:
    """`await timer.sleep_until(t)` with t in perf_counter (CLOCK_MONOTONIC) seconds, on a timerfd."""

    _CLOCK_MONOTONIC = 1
    _TFD_NONBLOCK = os.O_NONBLOCK
    _TFD_CLOEXEC = os.O_CLOEXEC
    _TFD_TIMER_ABSTIME = 1

    def __init__(self):
        self.fd = -1
        self._settime = None
        self._spec = _Itimerspec()
        self._ref = None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            create = libc.timerfd_create
            self._settime = libc.timerfd_settime
        except (OSError, AttributeError):
            return
        fd = create(self._CLOCK_MONOTONIC, self._TFD_NONBLOCK | self._TFD_CLOEXEC)
        if fd >= 0:
            self.fd = fd
            self._ref = ctypes.byref(self._spec)
        # perf_counter must be CLOCK_MONOTONIC for absolute deadlines to mean the same instant
        if self.fd >= 0 and abs(time.clock_gettime(time.CLOCK_MONOTONIC) - _perf()) > 0.01:
            self.close()

    @property
    def usable(self) -> bool:
        return self.fd >= 0

    async def sleep_until(self, t: float) -> None:
        v = self._spec.it_value
        sec = int(t)
        v.tv_sec = sec
        v.tv_nsec = int((t - sec) * 1e9)
        if self._settime(self.fd, self._TFD_TIMER_ABSTIME, self._ref, None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime")
        await trio.lowlevel.wait_readable(self.fd)
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _State:
    __slots__ = ("inflight", "intended", "sent", "ok", "errors", "dropped", "max_seen", "done_dispatching",
                 "drained", "queue", "idle", "progress", "now", "first_off")

    def __init__(self, progress: dict | None, now, first_off: float):
        self.inflight = 0
        self.intended = 0
        self.sent = 0
        self.ok = 0
        self.errors = 0
        self.dropped = 0
        self.max_seen = 0
        self.done_dispatching = False
        self.drained = trio.Event()
        self.queue: deque = deque()
        self.idle: list = []  # parked connection tasks, most recently idle last
        self.progress = progress
        self.now = now  # the clock of t0 (what the recorder gets)
        self.first_off = first_off  # added to a target's perf_counter first-byte time


async def drive(plan, target, recorder, arrivals, t0: float, *, cancel: trio.Event,
                progress: dict | None = None) -> dict:
    """Run the plan's load against `target`, recording into `recorder`; return the totals.

    `arrivals` yields (k, t) with t in seconds after `t0` (perf_counter seconds; see the module
    docstring for a trio-clock t0). `progress`, when given, is a dict kept current with
    `inflight`, `sent` and `dropped` (for a per-second report)."""
    cpu0 = time.process_time()
    perf_now, trio_now = _perf(), trio.current_time()
    off = trio_now - perf_now  # trio clock = perf_counter + off
    trio_clock = abs(t0 - trio_now) < abs(t0 - perf_now)
    now = trio.current_time if trio_clock else _perf
    st = _State(progress, now, off if trio_clock else 0.0)
    started = now()
    timer = DeadlineTimer()
    try:
        if timer.usable:
            to_perf = -off if trio_clock else 0.0

            async def sleep_until(t: float, _s=timer.sleep_until) -> None:
                await _s(t + to_perf)
        else:
            to_trio = 0.0 if trio_clock else off

            async def sleep_until(t: float) -> None:
                await trio.sleep_until(t + to_trio)

        if getattr(plan, "model", "open") == "closed":
            totals = await _closed(plan, target, recorder, t0, cancel, st, sleep_until)
        else:
            totals = await _open(plan, target, recorder, arrivals, t0, cancel, st, sleep_until)
    finally:
        timer.close()
    totals["elapsed_s"] = round(now() - started, 6)
    totals["cpu_s"] = round(time.process_time() - cpu0, 6)
    totals["connections"] = getattr(target, "connects", None)
    return totals


async def _watch(cancel: trio.Event, scope: trio.CancelScope, flag: list) -> None:
    await cancel.wait()
    flag.append(True)
    scope.cancel()


async def _open(plan, target, recorder, arrivals, t0, cancel, st: _State, sleep_until) -> dict:
    connections = max(1, int(getattr(plan, "connections", 64) or 64))
    max_inflight = max(1, int(getattr(plan, "max_inflight", 4096) or 4096))
    timeout = float(getattr(plan, "timeout", 30.0) or 30.0)
    cancelled: list = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch, cancel, nursery.cancel_scope, cancelled)
        for _ in range(connections):
            nursery.start_soon(_conn_task, target, recorder, st, timeout)
        await _schedule(target, recorder, arrivals, t0, st, max_inflight, sleep_until)
        st.done_dispatching = True
        if st.inflight == 0:
            st.drained.set()
        await st.drained.wait()
        nursery.cancel_scope.cancel()
    return {"model": "open", "intended": st.intended, "sent": st.sent, "ok": st.ok, "errors": st.errors,
            "dropped": st.dropped, "abandoned": st.inflight, "max_inflight_seen": st.max_seen,
            "cancelled": bool(cancelled)}


async def _schedule(target, recorder, arrivals, t0, st: _State, max_inflight: int, sleep_until) -> None:
    lag = recorder.lag
    dropped = recorder.dropped
    queue = st.queue
    idle = st.idle
    reschedule = trio.lowlevel.reschedule
    checkpoint = trio.lowlevel.checkpoint
    progress = st.progress
    now_f = st.now
    late_run = 0
    for k, t in arrivals:
        intended = t0 + t
        now = now_f()
        if now < intended:
            await sleep_until(intended)
            now = now_f()
            late_run = 0
        else:
            late_run += 1
            if late_run >= 64:  # far behind: still let the connection tasks run (and cancel reach us)
                late_run = 0
                await checkpoint()
                now = now_f()
        lag(intended, now)
        st.intended += 1
        if st.inflight >= max_inflight:
            req = target.next(k)
            dropped(req.op, req.size, intended)
            st.dropped += 1
            if progress is not None:
                progress["dropped"] = st.dropped
            continue
        st.inflight += 1
        if st.inflight > st.max_seen:
            st.max_seen = st.inflight
        queue.append((k, intended))
        if idle:
            reschedule(idle.pop())
        if progress is not None:
            progress["inflight"] = st.inflight


async def _conn_task(target, recorder, st: _State, timeout: float) -> None:
    conn = await target.connect()
    queue = st.queue
    idle = st.idle
    ok = recorder.ok
    fail = recorder.fail
    send = target.send
    nxt = target.next
    now = st.now
    first_off = st.first_off
    task = trio.lowlevel.current_task()
    wait = trio.lowlevel.wait_task_rescheduled
    progress = st.progress

    def abort(_raise_cancel):
        try:
            idle.remove(task)
        except ValueError:
            pass
        return _Abort.SUCCEEDED

    try:
        while True:
            if not queue:
                idle.append(task)
                await wait(abort)
                continue
            k, intended = queue.popleft()
            req = nxt(k)
            sent = now()
            if sent - intended > timeout:  # waited out its whole timeout for a connection: not sent
                fail(req.op, req.size, intended, None, sent, "timeout", None)
                st.errors += 1
                st.inflight -= 1
                if st.done_dispatching and st.inflight == 0:
                    st.drained.set()
                continue
            st.sent += 1
            try:
                status, first, nbytes = await send(conn, req)
            except TransportError as e:
                if e.kind == "connect":  # never left: not sent
                    fail(req.op, req.size, intended, None, now(), e.kind, None)
                    st.sent -= 1
                else:
                    fail(req.op, req.size, intended, sent, now(), e.kind, None)
                st.errors += 1
            else:
                done = now()
                if status >= 400:
                    fail(req.op, req.size, intended, sent, done, f"http_{status}", status)
                    st.errors += 1
                else:
                    ok(req.op, req.size, intended, sent, first + first_off, done, status, nbytes)
                    st.ok += 1
            st.inflight -= 1
            if progress is not None:
                progress["inflight"] = st.inflight
                progress["sent"] = st.sent
            if st.done_dispatching and st.inflight == 0:
                st.drained.set()
    finally:
        conn.close()


async def _closed(plan, target, recorder, t0, cancel, st: _State, sleep_until) -> dict:
    """`closed_concurrency` loops from t0 to t0 + plan.duration; intended == sent."""
    n = int(getattr(plan, "closed_concurrency", 0) or 0) or max(1, int(getattr(plan, "connections", 64) or 64))
    end = t0 + float(plan.duration)
    counter = itertools.count()
    cancelled: list = []
    now_f = st.now
    first_off = st.first_off
    progress = st.progress

    async def loop():
        conn = await target.connect()
        try:
            while True:
                now = now_f()
                if now >= end:
                    return
                k = next(counter)
                req = target.next(k)
                st.intended += 1
                st.sent += 1
                st.inflight += 1
                recorder.lag(now, now)
                try:
                    status, first, nbytes = await target.send(conn, req)
                except TransportError as e:
                    if e.kind == "connect":
                        st.sent -= 1
                    recorder.fail(req.op, req.size, now, None if e.kind == "connect" else now, now_f(), e.kind, None)
                    st.errors += 1
                else:
                    done = now_f()
                    if status >= 400:
                        recorder.fail(req.op, req.size, now, now, done, f"http_{status}", status)
                        st.errors += 1
                    else:
                        recorder.ok(req.op, req.size, now, now, first + first_off, done, status, nbytes)
                        st.ok += 1
                st.inflight -= 1
                if progress is not None:
                    progress["inflight"] = st.inflight
                    progress["sent"] = st.sent
        finally:
            conn.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch, cancel, nursery.cancel_scope, cancelled)
        if now_f() < t0:
            await sleep_until(t0)
        async with trio.open_nursery() as loops:
            for _ in range(n):
                loops.start_soon(loop)
        nursery.cancel_scope.cancel()
    return {"model": "closed", "intended": st.intended, "sent": st.sent, "ok": st.ok, "errors": st.errors,
            "dropped": 0, "abandoned": st.inflight, "max_inflight_seen": n, "cancelled": bool(cancelled)}
