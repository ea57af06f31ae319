"""The supervisor as the only writer of stdout: children's log lines re-emitted whole.

Why: children that share one stdout interleave their writes. A write of more than PIPE_BUF
bytes to a pipe is not atomic, and a buffered stream flushes at arbitrary byte counts, so two
processes logging at once produce lines like `...}{"role":...`. Instead each child gets a pipe
of its own as stdout; the supervisor reads it, cuts it into lines and queues the complete lines
for one writer thread that owns the real stdout. A line is never split, whatever its length.

Under load a plane logs a line per request (~2,500 lines/s from one public process). Woken per
line, the relay cost ~90 us of the supervisor's CPU per line, as much as a tenth of what serving
the request costs (batched: ~25 us per line at 1,100 lines/s, load/render_api_probe.py). So after each read the pump waits COALESCE_S before reading again, and what
one read brought is queued as one batch: at a high rate one wake-up carries tens of lines; a lone
line is still out within ~10 ms.

Each line leaving here is one JSON object with `role` and `id`: a child's JSON record missing
them gets them added (the child's group and id); anything else a child prints (a library's
warning, a stray `print`) is wrapped as `{"event": "child_output", "text": ...}`. A line longer
than MAX_LINE is cut and marked `truncated`. When stdout's reader is slow the queue fills, the
relay stops reading the children's pipes and they block on their own writes, as they would on a
full stdout; the supervisor itself never blocks on stdout.

On a terminal (`human=True`) each record is shown as one short line instead (time, id, event,
fields) - the same records, for a person watching `wbx serve`; pipes and files get the JSON.
"""

from __future__ import annotations

import json
import os
import queue
import threading

from workbooks.log import write_all

MAX_LINE = 1 << 20        # a longer line is cut (and marked) rather than held in memory
QUEUE_LINES = 50_000      # lines waiting for stdout before children are slowed down
BATCH_BYTES = 256 << 10   # lines joined into one write when many are waiting
READ_BYTES = 1 << 16      # one read of a child's pipe
COALESCE_S = 0.010        # after a read, lines gather this long before the next one


class StdoutRelay:
    """Owns `fd` (stdout): `put(line)` queues a complete line; `pump(...)` relays a child's pipe."""

    def __init__(self, fd: int = 1, max_lines: int = QUEUE_LINES, human: bool = False):
        self.fd = fd
        self.human = human
        # items are batches of whole lines of at most READ_BYTES (+ one long line): bound them so
        # that a stalled stdout holds about as many bytes as max_lines lines of a few hundred bytes
        self.q: queue.Queue = queue.Queue(max(16, max_lines // 64))
        self.lines = 0
        self.write_errors = 0
        self._thread = threading.Thread(target=self._run, name="stdout-relay", daemon=True)
        self._started = False

    def start(self) -> "StdoutRelay":
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def put(self, line: bytes) -> None:
        """Queue one complete line (ending in a newline); blocks while the queue is full."""
        if not self._started:
            self._write(human_line(line) if self.human else line)
            return
        self.q.put(line)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer thread."""
        if self._started:
            self.q.put(None)
            self._thread.join(timeout)
            self._started = False

    def _run(self) -> None:
        get, get_nowait = self.q.get, self.q.get_nowait
        while True:
            line = get()
            if line is None:
                return
            batch, size, stop = [line], len(line), False
            while size < BATCH_BYTES:
                try:
                    more = get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
                size += len(more)
            if self.human:
                batch = [human_line(ln + b"\n") for b in batch for ln in b.splitlines()]
            self._write(b"".join(batch) if len(batch) > 1 else batch[0])
            self.lines += sum(b.count(b"\n") for b in batch)
            if stop:
                return

    def _write(self, data: bytes) -> None:
        if not write_all(self.fd, data):
            self.write_errors += 1  # stdout closed: nothing to do but drop it

    # -- one child's pipe -------------------------------------------------------------------------
    async def pump(self, rfd: int, child_id: str, role: str | None, pid: int | None = None) -> None:
        """Relay the pipe `rfd` (non-blocking, closed here) until EOF or cancellation."""
        import trio

        role = role or child_id
        buf = bytearray()
        skipping = False  # inside a line longer than MAX_LINE, after its first MAX_LINE bytes
        out: list[bytes] = []  # whole lines from this read, queued as one batch

        def emit(line: bytes, truncated: bool = False) -> None:
            rec = whole_line(line, child_id, role, pid, truncated)
            if rec is not None:
                out.append(rec)

        try:
            while True:
                try:
                    chunk = os.read(rfd, READ_BYTES)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(rfd)
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    if buf and not skipping:
                        emit(bytes(buf))
                    await self._queue(out, trio)
                    return
                start = 0
                while True:
                    nl = chunk.find(b"\n", start)
                    if nl < 0:
                        if not skipping:
                            buf += chunk[start:]
                            if len(buf) > MAX_LINE:
                                emit(bytes(buf[:MAX_LINE]), truncated=True)
                                buf.clear()
                                skipping = True
                        break
                    if skipping:
                        skipping = False
                    else:
                        if buf:
                            buf += chunk[start:nl]
                            line = bytes(buf)
                            buf.clear()
                        else:
                            line = chunk[start:nl]
                        if len(line) > MAX_LINE:
                            emit(line[:MAX_LINE], truncated=True)
                        else:
                            emit(line)
                    start = nl + 1
                await self._queue(out, trio)
                if len(chunk) < READ_BYTES:
                    await trio.sleep(COALESCE_S)  # let the next lines gather: one wake-up for many
        finally:
            try:
                trio.lowlevel.notify_closing(rfd)
            except (RuntimeError, OSError):
                pass
            os.close(rfd)

    async def _queue(self, out: list[bytes], trio) -> None:
        """Queue the lines in `out` as one batch (and empty it)."""
        if not out:
            return
        batch = b"".join(out) if len(out) > 1 else out[0]
        out.clear()
        while True:
            try:
                self.q.put_nowait(batch)
                return
            except queue.Full:  # stdout is slow: stop reading this child for a moment
                await trio.sleep(0.01)


def whole_line(line: bytes, child_id: str, role: str, pid=None, truncated: bool = False) -> bytes | None:
    """`line` (without its newline) as one JSON object line with role and id, or None if blank."""
    line = line.rstrip(b"\r")
    if not line.strip():
        return None
    if (not truncated and line[:2] == b'{"' and line[-1:] == b"}" and b'"role": "' in line
            and b'"id": "' in line and b"\0" not in line):
        return line + b"\n"  # workbooks.log's JSON (the common case: no parse per access line)
    if not truncated and line[:1] == b"{" and line[-1:] == b"}":
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if isinstance(rec, dict):
            if "role" in rec and "id" in rec:
                return line + b"\n"
            rec.setdefault("role", role)
            rec.setdefault("id", child_id)
            return (json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8", "backslashreplace")
    rec = {"event": "child_output", "role": role, "id": child_id, "pid": pid,
           "text": line.decode("utf-8", "replace")}
    if truncated:
        rec["truncated"] = True
    return (json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8", "backslashreplace")


_HIDDEN = ("event", "id", "role", "pid", "level", "timestamp")


def human_line(line: bytes) -> bytes:
    """A JSON record as `HH:MM:SS id event key=value ...` (levels above info in capitals)."""
    try:
        rec = json.loads(line)
    except ValueError:
        return line
    if not isinstance(rec, dict):
        return line
    ts = str(rec.get("timestamp") or "")[11:19] or "--:--:--"
    level = str(rec.get("level") or "info")
    fields = " ".join(f"{k}={_short(v)}" for k, v in rec.items() if k not in _HIDDEN)
    head = f"{ts} {str(rec.get('id') or rec.get('role') or '?'):<11} "
    if level not in ("info", "debug"):
        head += level.upper() + " "
    return (head + str(rec.get("event") or "") + (" " + fields if fields else "")).encode("utf-8", "replace") + b"\n"


def _short(v) -> str:
    s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    s = s.replace("\n", "\\n")
    return s if len(s) <= 80 else s[:77] + "..."
