"""structlog JSON lines on stdout, one per event, with the process's role and id bound.

Every record is written with ONE `write(2)` of a complete line (under a lock, so threads of a
process never interleave), never through Python's buffered `print`: a buffered stream flushes
at arbitrary byte counts, and processes sharing one stdout then glue halves of records together.
Under `wbx serve` the supervisor goes further (see `workbooks.log_relay`): each child writes to
a pipe of its own, and the supervisor re-emits whole lines as the only writer of the real stdout,
so even records longer than PIPE_BUF stay whole.

`role` (broker, worker, control, public, supervisor, ...) and `id` (the supervised child's id,
e.g. `worker-2`, from `WB_CHILD_ID`; the role when the process is not supervised) are added to
every record, from any thread (they are process-wide, not contextvars, which new threads do not
inherit). A record may name another `id` (the supervisor's child events name the child).
"""

from __future__ import annotations

import logging
import os
import sys
import threading

import structlog

_configured = False
_identity: dict = {}


def write_all(fd: int, data: bytes) -> bool:
    """Write all of `data` to `fd` (short writes, EINTR, a non-blocking fd); False when it is closed."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        except BlockingIOError:
            import select

            select.select([], [fd], [], 1.0)
            continue
        except OSError:
            return False
        view = view[n:]
    return True


class LineWriter:
    """A structlog logger that writes each rendered record as one complete line.

    `fd` is written with os.write (looping on short writes); `sink`, when given, receives the
    line as bytes instead (the supervisor's relay queue).
    """

    def __init__(self, fd: int | None = None, sink=None, stream=None):
        self.fd = fd
        self.sink = sink
        self.stream = stream
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        line = (message + "\n").encode("utf-8", "backslashreplace")
        if self.sink is not None:
            self.sink(line)
            return
        if self.fd is None:  # a stream without a file descriptor (tests' StringIO)
            self.stream.write(line.decode("utf-8"))
            self.stream.flush()
            return
        with self._lock:
            write_all(self.fd, line)  # False: stdout closed (EPIPE); logging never takes the process down

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _Factory:
    def __init__(self, writer: LineWriter):
        self.writer = writer

    def __call__(self, *args) -> LineWriter:
        return self.writer


def _writer_for(stream, sink) -> LineWriter:
    if sink is not None:
        return LineWriter(sink=sink)
    stream = stream or sys.stdout
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return LineWriter(stream=stream)
    try:
        stream.flush()  # whatever was printed before goes first
    except (OSError, ValueError):
        pass
    return LineWriter(fd=fd)


def _add_identity(logger, method_name: str, event_dict: dict) -> dict:
    for k, v in _identity.items():
        event_dict.setdefault(k, v)
    return event_dict


def configure(role: str, stream=None, level: str | None = None, sink=None, **bind) -> structlog.stdlib.BoundLogger:
    """Configure this process's logging and return a logger with role, id, pid and `bind` bound.

    `sink(line: bytes)`, when given, receives each complete line instead of a file descriptor.
    """
    global _configured
    lvl = getattr(logging, (level or os.environ.get("WB_LOG_LEVEL", "INFO")).upper(), logging.INFO)
    _identity.clear()
    _identity.update(role=role, id=str(bind.pop("id", None) or os.environ.get("WB_CHILD_ID") or role),
                     pid=os.getpid())
    _identity.update(bind)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_identity,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=_Factory(_writer_for(stream, sink)),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    _configured = True
    return structlog.get_logger()


def get_logger(**bind) -> structlog.stdlib.BoundLogger:
    if not _configured:
        configure(os.environ.get("WB_ROLE", "cli"), stream=sys.stderr)
    return structlog.get_logger().bind(**bind)
