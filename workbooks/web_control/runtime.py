"""Run one plane process: hypercorn's trio worker on a socket shared with SO_REUSEPORT.

hypercorn stops the whole server when one of its own workers dies, so each plane runs as one
or more independent processes (each supervised) that bind the same port with SO_REUSEPORT;
the kernel spreads connections across them. SIGTERM/SIGINT trigger a graceful shutdown, and
the ASGI lifespan (the app's before/after_serving) runs on start and stop.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from functools import partial

import trio

from workbooks.log import configure


class PortTaken(OSError):
    pass


_port_lock_fds: list[int] = []


def claim_port(host: str, port: int, owner: str) -> None:
    """SO_REUSEPORT lets any process of this user join a port, so two independent instances could
    silently split one port's traffic. A lock file per (host, port) names the data dir that owns it:
    processes of the same instance share it, another instance is refused."""
    import fcntl
    import tempfile

    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = os.path.join(base, f"workbooks-port-{host.replace(':', '_')}-{port}.lock")
    import time

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    for attempt in range(50):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            if holder == owner:
                fcntl.flock(fd, fcntl.LOCK_SH)
                break
            if holder and attempt >= 2:
                os.close(fd)
                raise PortTaken(f"{host}:{port} is served by another workbooks instance ({holder})") from None
            time.sleep(0.05)  # a sibling is writing its claim right now
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, owner.encode() + b"\n", 0)
            fcntl.flock(fd, fcntl.LOCK_SH)
            break
    else:
        os.close(fd)
        raise PortTaken(f"{host}:{port}: could not claim its lock file {path}")
    _port_lock_fds.append(fd)


def listen_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class _StructlogHandler(logging.Handler):
    """hypercorn's error log as structlog JSON lines."""

    def __init__(self, log):
        super().__init__()
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001
            msg = str(record.msg)
        level = record.levelname.lower()
        extra = {}
        if record.exc_info and record.exc_info[0] is not None:
            import traceback

            extra["exception"] = "".join(traceback.format_exception(*record.exc_info))[-4000:]
        getattr(self._log, level if level in ("debug", "info", "warning", "error", "critical") else "info")(
            "hypercorn", message=msg[:2000], **extra
        )


def hypercorn_config(role: str, log):
    from hypercorn.config import Config

    config = Config()
    config.accesslog = None
    err = logging.getLogger(f"hypercorn.error.{role}")
    err.handlers[:] = [_StructlogHandler(log)]
    err.setLevel(logging.WARNING)
    err.propagate = False
    config.errorlog = err
    # Idle keep-alive connections are closed by workbooks.connlimit (WB_IDLE_TIMEOUT_S), which
    # replaces hypercorn's per-connection idle timer; keep_alive_timeout is not read.
    config.graceful_timeout = 5
    config.h11_max_incomplete_size = 64 * 1024
    config.include_server_header = False
    return config


async def serve_app(app, sock: socket.socket, role: str, log) -> None:
    from hypercorn.utils import wrap_app

    from workbooks import admission, connlimit

    config = hypercorn_config(role, log)
    before, soft, hard = connlimit.raise_nofile()
    try:
        gate = admission.install(admission.Gate(admission.max_inflight(), plane=role))
        guard = connlimit.ConnectionGuard(idle_timeout=connlimit.idle_timeout_s(),
                                          cap=connlimit.connection_cap(soft, gate.cap), log=log, gate=gate)
        send_timeout = connlimit.send_timeout_s()
    except ValueError as e:
        log.error("bad_setting", error=str(e))
        raise SystemExit(78) from None  # a bad configuration, as the supervisor's own
    connlimit.set_user_timeout(sock, send_timeout)
    log.info("connection_limits", nofile_soft_before=before, nofile_soft=soft, nofile_hard=hard,
             max_connections=guard.cap, idle_timeout_s=guard.idle_timeout, send_timeout_s=send_timeout,
             max_inflight=gate.cap)
    app = admission.AdmitASGI(app, gate)  # outermost: the refusal of a request parsed past the cap

    async def shutdown_trigger() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for sig in signals:
                log.info("shutdown", signal=signal.Signals(sig).name)
                return

    async with trio.open_nursery() as nursery:
        await nursery.start(partial(
            worker_serve,
            wrap_app(app, config.wsgi_max_body_size, "asgi"),
            config,
            sock=sock,
            guard=guard,
            shutdown_trigger=shutdown_trigger,
        ))
        # Startup objects (modules, the app, caches) never die: keep them out of the collector's
        # way so a full collection under load does not walk them.
        import gc

        gc.collect()
        gc.freeze()
        # Lifespan startup is done and the socket is served: tell the supervisor (when it asked).
        try:
            from workbooks.supervisor import notify_ready

            notify_ready()
        except ImportError:
            pass
        log.info("serving")


async def worker_serve(app, config, *, sock: socket.socket, guard, shutdown_trigger,
                       task_status=trio.TASK_STATUS_IGNORED) -> None:
    """hypercorn's trio `worker_serve` for one plain-HTTP socket, with connections accepted by
    `guard` (accept loop, idle deadline, cap, early refusal; see workbooks/connlimit.py) instead of
    trio's listener and hypercorn's idle timer."""
    from hypercorn.trio.lifespan import Lifespan
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.typing import ConnectionState
    from hypercorn.utils import ShutdownError, raise_shutdown

    from workbooks.connlimit import GuardedTCPServer

    lifespan_state: dict = {}
    lifespan = Lifespan(app, config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            make_server = partial(GuardedTCPServer, guard, app, config, context,
                                  ConnectionState(lifespan_state.copy()))
            server_nursery.start_soon(guard.sweeper)
            task_status.started()
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(guard.accept_loop, sock, make_server, server_nursery)
                    if guard.gate is not None and guard.log is not None:
                        from workbooks.admission import reporter

                        nursery.start_soon(reporter, guard.gate, guard.log)  # ends, with a last line, at shutdown
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, other_errors = error.split((ShutdownError, KeyboardInterrupt))
                if other_errors is not None:
                    raise other_errors
            finally:
                await context.terminated.set()
                guard.stop()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


def common_args(prog: str, default_port: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=default_port)
    p.add_argument("--data-dir", default=os.environ.get("WB_DATA") or os.path.expanduser("~/.workbooks"))
    p.add_argument("--proc", default="1", help="this process's index among the plane's processes (for logs)")
    return p


def run(role: str, make_app, ns) -> int:
    log = configure(role, proc=ns.proc, port=ns.port)
    try:
        if ns.port:
            claim_port(ns.host, ns.port, os.path.realpath(ns.data_dir))
        sock = listen_socket(ns.host, ns.port)
    except OSError as e:
        log.error("bind_failed", host=ns.host, port=ns.port, error=str(e))
        return 3
    app = make_app(ns)
    log.info("listening", host=ns.host, port=sock.getsockname()[1])
    try:
        trio.run(serve_app, app, sock, role, log)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run workbooks.web_control or workbooks.web_public")
