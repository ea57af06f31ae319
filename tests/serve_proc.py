"""A real `wbx serve` with its stdout on a pipe, read line by line as it comes (tests of the
stream itself, of start-up refusals and of readiness). Stops what it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from workbooks.web_control.launch import free_port

ROOT = Path(__file__).resolve().parent.parent


class ServeProc:
    def __init__(self, data: Path, *args: str, web: bool = True, control_port: int | None = None,
                 public_port: int | None = None, env: dict | None = None, prefix: tuple = ()):
        self.data = data
        self.cport = control_port or free_port()
        self.pport = public_port or free_port()
        self.lines: list[bytes] = []
        self.err: list[bytes] = []
        e = dict(os.environ, WB_DATA=str(data))
        e.pop("WBX_AGENT", None)
        e.pop("WB_KERNEL_WASM", None)
        e.update(env or {})
        argv = [*prefix, sys.executable, "-m", "workbooks", "serve", "--data", str(data), *args]
        if web:
            argv += ["--control", f"127.0.0.1:{self.cport}", "--public", f"127.0.0.1:{self.pport}"]
        else:
            argv += ["--no-web"]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, env=e, cwd=ROOT, start_new_session=True)
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True)]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream, into: list) -> None:
        for line in iter(stream.readline, b""):
            into.append(line)

    @property
    def control(self) -> str:
        return f"http://127.0.0.1:{self.cport}"

    @property
    def public(self) -> str:
        return f"http://127.0.0.1:{self.pport}"

    def stderr_text(self) -> str:
        return b"".join(self.err).decode(errors="replace")

    def stdout_text(self) -> str:
        return b"".join(self.lines).decode(errors="replace")

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        for t in self._readers:
            t.join(5)
        return rc

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM the supervisor, wait for it, and check that no process of its group is left."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self._readers:
            t.join(5)
        left = _session_members(self.proc.pid)
        if left:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            raise AssertionError(f"processes {left} outlived `wbx serve`")
        return self.proc.returncode


def _session_members(sid: int) -> list[int]:
    """Live processes of the session `wbx serve` was started in (children have groups of their own)."""
    from conftest import proc_stats

    return [p for p, state, _, session in proc_stats() if state != "Z" and session == sid]
