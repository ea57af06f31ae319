"""A load generator process: joins a coordinator, drives its share of the load, reports every second.

`python -m workbooks.loadtest.generator --connect ENDPOINT [--server-key KEY --client-key FILE]`
(what `wbx loadtest run` spawns for each local process, over ipc, and what `wbx loadtest generator`
runs on another machine, over tcp with CURVE, keys as for remote pool workers: `--server-key` is
the coordinator's public key, a `server.key` file or its Z85 text, `--client-key` this machine's
`.key_secret` file, whose public half must be in the coordinator's `keys/authorized/`).

The conversation (msgpack maps over a DEALER socket; the coordinator is a ROUTER):

    -> hello {v, pid, host, cpus}            (repeated each second until assigned)
    <- assign {plan, member, members, key?}  (key: the API key at run time, never logged)
    -> ready {} | failed {error}             (after the target's setup, e.g. reading a sitemap)
    <- start {start_wall}                    (the common start, time.time() seconds)
    -> tick {t, member, snapshots, cpu, lag_p99_ms, inflight}   (once per closed second)
    -> done {member, totals, aborted}        (the schedule ran out, or after an abort)
    <- ping {} (every second) · abort {} (stop within 1 s) · bye {}

The generator obeys `abort` within a second, stops on SIGTERM/SIGINT, and stops by itself when
the coordinator has been silent for COORDINATOR_GONE_S (no orphans). A remote generator, after its
run, says hello again for COORDINATOR_GONE_S, so the next run of the same command (a --find-max
step) finds it; a local process serves exactly one run. Logs are structlog JSON
lines on stderr (stdout belongs to the CLI).

Exit codes: 0 done, 1 failed, 2 usage, 3 no coordinator (never came, or gone), 7 the coordinator
refused our CURVE key.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import sys
import time

PROTOCOL = 1
HELLO_EVERY_S = 1.0
COORDINATOR_GONE_S = 5.0
DEFAULT_WAIT_S = 60.0
ABORT_DRAIN_S = 0.5  # after an abort, in-flight requests get this long before they are cancelled
TAKE_SLACK_S = 0.05  # a second is taken this long after it closed (samples recorded at its edge)
POLL_S = 0.05
PARENT_ENV = "WB_LOADTEST_PARENT"  # set by the coordinator for local processes: die with it

EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_NO_COORDINATOR, EXIT_AUTH = 0, 1, 2, 3, 7
_NO_MORE_RUNS = -1


def pack(obj) -> bytes:
    import msgpack

    return msgpack.packb(obj, use_bin_type=True)


def unpack(raw: bytes):
    import msgpack

    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


def server_public_key(value: str) -> bytes:
    """The coordinator's public key from a key file (`server.key`) or its 40-character Z85 text."""
    from workbooks.pool.endpoints import load_keypair

    if os.path.exists(value):
        public, _ = load_keypair(value)
        return public
    v = value.strip()
    if len(v) == 40:
        import zmq

        try:
            zmq.utils.z85.decode(v.encode())
        except Exception:
            pass
        else:
            return v.encode()
    raise ValueError(f"--server-key {value!r} is neither a key file nor a 40-character Z85 public key")


def curve_keys(server_key: str, client_key: str) -> tuple[bytes, bytes, bytes]:
    """(server public, client public, client secret), as remote pool workers load them."""
    from workbooks.pool.endpoints import load_keypair

    server_public = server_public_key(server_key)
    client_public, client_secret = load_keypair(client_key)
    if not client_secret:
        raise ValueError(f"{client_key} holds no secret key (use the .key_secret file)")
    return server_public, client_public, client_secret


def _die_with_parent() -> None:
    """Local processes: SIGTERM when the coordinator's process dies, even by SIGKILL."""
    raw = os.environ.get(PARENT_ENV)
    if not raw:
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - not Linux: the coordinator's silence still stops us
        pass
    if str(os.getppid()) != raw:  # it died before the prctl took effect
        sys.exit(EXIT_NO_COORDINATOR)


def lag_p99_ms(snapshots: list[dict], hist) -> float:
    """The p99 of the `lag` histograms among these snapshots, in ms (0 when none recorded)."""
    total = None
    for snap in snapshots:
        for key, enc in (snap.get("hists") or {}).items():
            if key.split("|", 1)[0] != "lag":
                continue
            h = hist.decode(enc)
            if total is None:
                total = h
            else:
                total.add(h)
    if total is None or total.get_total_count() == 0:
        return 0.0
    return float(hist.percentiles(total)["p99"])


class Generator:
    """One generator process's life: join, prepare, drive, report, finish."""

    def __init__(self, endpoint: str, curve: tuple[bytes, bytes, bytes] | None = None, *,
                 wait_s: float = DEFAULT_WAIT_S, log=None):
        self.endpoint = endpoint
        self.curve = curve
        self.wait_s = wait_s
        self.log = log
        self.sock = None
        self.monitor = None
        self.ctx = None
        self.last_heard = None  # perf_counter of the coordinator's last message
        self.member = None
        self.members = None
        self.aborted = False
        self.stop_signal = None
        self.auth_refused = False

    # -- sockets -------------------------------------------------------------------------------
    def _open(self) -> None:
        import zmq

        self.ctx = zmq.Context(1)
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IMMEDIATE, 1)  # hello goes only to a completed (authenticated) connection
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        s.setsockopt(zmq.SNDHWM, 100000)
        if self.curve:
            from workbooks.pool.endpoints import setup_curve_client

            setup_curve_client(s, *self.curve)
            self.monitor = s.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        s.connect(self.endpoint)
        self.sock = s

    def _close(self, linger_ms: int = 0) -> None:
        import zmq

        if self.sock is not None:
            if self.monitor is not None:
                try:
                    self.sock.disable_monitor()
                except zmq.ZMQError:
                    pass
                self.monitor.close(0)
                self.monitor = None
            self.sock.close(linger_ms)
            self.sock = None
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None

    def send(self, kind: str, **body) -> bool:
        import zmq

        body["type"] = kind
        try:
            self.sock.send(pack(body), zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def _recv_now(self):
        import zmq

        if self.monitor is not None:
            from zmq.utils.monitor import recv_monitor_message

            while True:
                try:
                    ev = recv_monitor_message(self.monitor, zmq.NOBLOCK)
                except zmq.Again:
                    break
                if ev["event"] & zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    self.auth_refused = True
        try:
            raw = self.sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return None
        try:
            msg = unpack(raw)
        except Exception:
            return None
        if not isinstance(msg, dict):
            return None
        self.last_heard = time.perf_counter()
        return msg

    async def recv(self, timeout: float):
        """The coordinator's next message within `timeout` s, else None (pings are returned too)."""
        import trio

        deadline = trio.current_time() + timeout
        while True:
            msg = self._recv_now()
            if msg is not None or self.auth_refused:
                return msg
            now = trio.current_time()
            if now >= deadline:
                return None
            with trio.move_on_after(min(POLL_S, deadline - now)):
                await trio.lowlevel.wait_readable(self.sock.FD)

    def coordinator_gone(self) -> bool:
        return self.last_heard is not None and time.perf_counter() - self.last_heard > COORDINATOR_GONE_S

    # -- the life ------------------------------------------------------------------------------
    def run(self) -> int:
        import trio

        self._open()
        try:
            return trio.run(self._main)
        finally:
            # we are leaving: a further SIGTERM (PR_SET_PDEATHSIG fires again as the dying
            # coordinator's last threads go) must not cut the clean-up short
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            # our last messages (the done) get 2 s to leave; nothing to wait for after a signal
            self._close(linger_ms=0 if self.stop_signal is not None else 2000)

    async def _main(self) -> int:
        import trio

        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                stop = trio.CancelScope()

                async def watch_signals():
                    async for sig in signals:
                        self.stop_signal = sig
                        self.log.info("signal", signal=signal.Signals(sig).name)
                        stop.cancel()
                        return

                nursery.start_soon(watch_signals)
                rc = EXIT_FAILED
                with stop:
                    try:
                        rc = await self._life()
                        # a remote generator serves the runs that follow within COORDINATOR_GONE_S
                        # (--find-max runs step after step); a local one belongs to one run
                        while rc == EXIT_DONE and not os.environ.get(PARENT_ENV):
                            nxt = await self._life(rejoin=True)
                            if nxt == _NO_MORE_RUNS:
                                break
                            rc = nxt
                    except Exception as e:  # a bug or a broken target: the coordinator reports it
                        err = e
                        while isinstance(err, BaseExceptionGroup) and len(err.exceptions) == 1:
                            err = err.exceptions[0]
                        self.log.exception("generator_failed", error=f"{type(err).__name__}: {err}")
                        if self.sock is not None:
                            self.send("failed", error=_error_dict(err))
                        rc = EXIT_FAILED
                if self.stop_signal is not None:
                    rc = 128 + self.stop_signal
                nursery.cancel_scope.cancel()
        return rc

    async def _life(self, rejoin: bool = False) -> int:
        import trio

        # 1. join: hello until assigned
        hello = {"v": PROTOCOL, "pid": os.getpid(), "host": socket.gethostname(), "cpus": os.cpu_count()}
        first = time.perf_counter()
        wait_s = COORDINATOR_GONE_S if rejoin else self.wait_s
        if rejoin:
            self.last_heard, self.aborted, self.member, self.members = None, False, None, None
        assign = None
        while assign is None:
            self.send("hello", **hello)
            next_hello = trio.current_time() + HELLO_EVERY_S
            while trio.current_time() < next_hello:
                msg = await self.recv(next_hello - trio.current_time())
                if self.auth_refused:
                    self.log.error("auth_refused", endpoint=self.endpoint,
                                   why="the coordinator does not know this client key (not in its keys/authorized/)")
                    return EXIT_AUTH
                if msg is None:
                    continue
                if msg.get("type") == "assign":
                    assign = msg
                    break
                if msg.get("type") == "refuse":
                    self.log.error("refused", endpoint=self.endpoint, why=msg.get("why"))
                    return EXIT_FAILED
                # bye / abort before an assignment: that coordinator gave up (its silence ends us)
            if assign is None:
                if self.last_heard is None and time.perf_counter() - first > wait_s:
                    if rejoin:
                        self.log.info("no_further_run", endpoint=self.endpoint, waited_s=wait_s)
                        return _NO_MORE_RUNS
                    self.log.error("no_coordinator", endpoint=self.endpoint, waited_s=wait_s)
                    return EXIT_NO_COORDINATOR
                if self.coordinator_gone():
                    self.log.error("coordinator_gone", endpoint=self.endpoint)
                    return EXIT_NO_COORDINATOR
        self.member, self.members = int(assign["member"]), int(assign["members"])
        self.log.info("assigned", member=self.member, members=self.members)

        # 2. prepare the target
        try:
            from workbooks.loadtest import plan as P
            from workbooks.loadtest import targets

            plan = P.Plan.from_dict(assign["plan"])
            if assign.get("key"):
                plan.runtime_key = assign["key"]
            target = targets.build(plan)
            await target.setup()
        except Exception as e:  # sent to the coordinator, which reports it as the run's error
            self.send("failed", error=_error_dict(e))
            self.log.error("setup_failed", error=str(e), kind=type(e).__name__)
            return EXIT_FAILED
        self.send("ready", describe=_describe(target))

        # 3. wait for the common start
        start = None
        while start is None:
            msg = await self.recv(1.0)
            if msg is None:
                if self.coordinator_gone():
                    self.log.error("coordinator_gone", endpoint=self.endpoint)
                    return EXIT_NO_COORDINATOR
                continue
            kind = msg.get("type")
            if kind == "start":
                start = float(msg["start_wall"])
            elif kind in ("abort", "bye"):
                self.send("done", member=self.member, totals={}, aborted=True)
                return EXIT_DONE
        return await self._drive(plan, target, start)

    async def _drive(self, plan, target, start_wall: float) -> int:
        import trio

        from workbooks.loadtest import engine, hist, schedule

        # the engine and the recorder read trio's clock (which has an offset of its own)
        t0 = trio.current_time() + (start_wall - time.time())
        recorder = hist.Recorder(t0)
        pulled = [None]  # t of the last arrival the engine's scheduler took (how far it has got)

        def tracked(it):
            for k, t in it:
                pulled[0] = t
                yield k, t
            pulled[0] = None  # the schedule is over: draining the last requests is not lateness

        arrivals = tracked(schedule.arrivals(plan.stages, plan.arrival, plan.seed, self.member, self.members))
        cancel = trio.Event()
        state = {"totals": None, "gone": False}
        self.progress = {}

        async with trio.open_nursery() as nursery:
            drive_scope = trio.CancelScope()

            async def drive():
                with drive_scope:
                    state["totals"] = await engine.drive(plan, target, recorder, arrivals, t0, cancel=cancel,
                                                           progress=self.progress)
                nursery.cancel_scope.cancel()  # reporter and listener end with the drive

            async def stop_drive():
                cancel.set()
                await trio.sleep(ABORT_DRAIN_S)
                drive_scope.cancel()

            async def listen():
                while True:
                    msg = await self.recv(1.0)
                    if msg is None:
                        if self.coordinator_gone():
                            self.log.error("coordinator_gone", endpoint=self.endpoint)
                            state["gone"] = True
                            cancel.set()
                            drive_scope.cancel()
                            return
                        continue
                    if msg.get("type") in ("abort", "bye") and not self.aborted:
                        self.aborted = True
                        self.log.info("abort", why=msg.get("why"))
                        nursery.start_soon(stop_drive)

            ticker = {"cpu": time.process_time(), "wall": trio.current_time(), "taken": 0}

            def tick(upto: int, final: bool = False) -> None:
                """Send seconds [taken, upto) with this process's CPU share and lateness since the last tick."""
                now = trio.current_time()
                cpu_now = time.process_time()
                cpu = max(0.0, (cpu_now - ticker["cpu"]) / max(now - ticker["wall"], 1e-3))
                ticker["cpu"], ticker["wall"] = cpu_now, now
                # how far behind its schedule the scheduler is right now: the last arrival it took is
                # due in the past (an idle scheduler has already taken the next, future one)
                behind_ms = 0.0
                if pulled[0] is not None and not final:
                    behind_ms = max(0.0, (now - (t0 + pulled[0])) * 1000.0)
                snaps = recorder.take(upto)
                self._send_seconds(snaps, ticker["taken"], max(upto, ticker["taken"] + 1) if not final else upto,
                                   cpu, max(lag_p99_ms(snaps, hist), round(behind_ms, 3)), final)
                ticker["taken"] = max(ticker["taken"], upto)

            async def report():
                while True:
                    await trio.sleep_until(t0 + ticker["taken"] + 1 + TAKE_SLACK_S)
                    now = trio.current_time()
                    tick(max(ticker["taken"] + 1, int(now - t0 - TAKE_SLACK_S)))

            nursery.start_soon(drive)
            nursery.start_soon(listen)
            nursery.start_soon(report)

        if state["gone"]:
            return EXIT_NO_COORDINATOR
        # everything not yet sent, then done
        rest_upto = max(recorder.open_seconds() or [ticker["taken"] - 1]) + 1
        tick(max(rest_upto, ticker["taken"]), final=True)
        totals = state["totals"] if isinstance(state["totals"], dict) else {}
        self.send("done", member=self.member, totals=_plain(totals), aborted=self.aborted)
        self.log.info("done", member=self.member, aborted=self.aborted, totals=_plain(totals))
        return EXIT_DONE

    def _send_seconds(self, snaps: list[dict], first: int, upto: int, cpu: float, lag_ms: float, final: bool) -> None:
        """One tick per second in [first, upto); snapshots of earlier seconds (requests that ended
        after their second was taken) ride on the first. `cpu` and `lag_ms` describe the wall time
        since the previous tick, so every second of a late batch carries them."""
        by_t: dict[int, list] = {}
        late = []
        for s in snaps:
            t = int(s["t"])
            if t < first:
                late.append(s)
            else:
                by_t.setdefault(t, []).append(s)
        inflight = (getattr(self, "progress", None) or {}).get("inflight")
        seconds = list(range(first, upto))
        if not seconds and late:
            seconds = [first - 1]
        for i, t in enumerate(seconds):
            body = {"t": t, "member": self.member, "snapshots": (late if i == 0 else []) + by_t.get(t, []),
                    "cpu": round(cpu, 4), "lag_p99_ms": lag_ms,
                    "inflight": inflight if isinstance(inflight, int) else None, "final": final}
            self.send("tick", **body)


def _describe(target) -> dict:
    try:
        return _plain(target.describe())
    except Exception:
        return {}


def _plain(obj):
    """Something msgpack can carry (totals may hold Counters or tuples)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    return str(obj)


def _error_dict(e: BaseException) -> dict:
    from workbooks.errors import WorkbooksError

    if isinstance(e, WorkbooksError):
        return {"code": e.code, "exit": e.exit_code, "message": e.message, "hint": e.hint or ""}
    return {"code": "generator_failed", "exit": 1, "message": f"{type(e).__name__}: {e}", "hint": ""}


def main(argv: list[str] | None = None) -> int:
    import argparse

    from workbooks import log as wblog

    _die_with_parent()
    ap = argparse.ArgumentParser(prog="workbooks.loadtest.generator",
                                 description="A wbx loadtest generator: joins a coordinator and drives its share of the load.")
    ap.add_argument("--connect", required=True, help="the coordinator's endpoint (ipc://… locally, tcp://HOST:PORT remotely)")
    ap.add_argument("--server-key", help="the coordinator's CURVE public key: its server.key file or the Z85 text (tcp)")
    ap.add_argument("--client-key", help="this generator's .key_secret file (tcp; its public key must be authorized)")
    ap.add_argument("--wait", type=float, default=DEFAULT_WAIT_S, help="seconds to wait for a coordinator (default 60)")
    ns = ap.parse_args(argv)
    log = wblog.configure("loadgen", stream=sys.stderr)
    curve = None
    if ns.connect.startswith("tcp://"):
        if not (ns.server_key and ns.client_key):
            log.error("usage", error="tcp endpoints need --server-key and --client-key (made by `wbx ops keys`)")
            print("wbx loadtest generator: tcp endpoints need --server-key and --client-key (made by `wbx ops keys`)",
                  file=sys.stderr)
            return EXIT_USAGE
        try:
            curve = curve_keys(ns.server_key, ns.client_key)
        except (OSError, ValueError) as e:
            log.error("usage", error=str(e))
            print(f"wbx loadtest generator: {e}", file=sys.stderr)
            return EXIT_USAGE
    elif not ns.connect.startswith("ipc://"):
        print(f"wbx loadtest generator: --connect {ns.connect!r}: expected ipc://… or tcp://HOST:PORT", file=sys.stderr)
        return EXIT_USAGE
    log.info("start", endpoint=ns.connect, curve=bool(curve))
    gen = Generator(ns.connect, curve, wait_s=ns.wait, log=log)
    try:
        return gen.run()
    finally:
        _remove_orphaned_socket(ns.connect, signalled=gen.stop_signal is not None, log=log)


def _parent_gone(parent: str) -> bool:
    if str(os.getppid()) != parent:
        return True
    try:
        with open(f"/proc/{parent}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in (b"Z", b"X")


def _remove_orphaned_socket(endpoint: str, *, signalled: bool = False, log=None) -> None:
    """A local process whose coordinator was killed outright (no chance to clean up) removes the
    coordinator's private socket directory, so even `kill -9` leaves nothing behind.

    PR_SET_PDEATHSIG fires when the coordinator's spawning thread has died; the dying process may
    still have other threads (ZeroMQ's) for a while, and is then our parent with a zombie leader."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not endpoint.startswith("ipc://"):
        return
    deadline = time.monotonic() + (0.5 if signalled else 0.0)
    while not _parent_gone(parent):
        if time.monotonic() >= deadline:
            if signalled and log is not None:
                log.info("coordinator_alive", parent=parent)
            return  # the coordinator lives: the directory is its to remove
        time.sleep(0.02)
    import shutil
    from pathlib import Path

    sock = Path(endpoint[len("ipc://"):])
    d = sock.parent
    try:
        if d.name.startswith("wb-loadtest-") and not d.is_symlink() and d.stat().st_uid == os.getuid():
            shutil.rmtree(d, ignore_errors=True)
            if log is not None:
                log.info("orphaned_socket_removed", dir=str(d))
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
