"""Run a real supervisor process from a config and inspect it (logs, records, /proc)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAKE = str(ROOT / "tests" / "helpers" / "fake_child.py")


def fake(*args: str) -> list[str]:
    return [sys.executable, FAKE, *args]


def procs_matching(marker: str) -> list[tuple[int, str]]:
    """Live (non-zombie) processes whose command line contains `marker`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if marker in cmd and stat[stat.rindex(")") + 2] != "Z":
            out.append((int(entry), cmd))
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_for(pred, timeout: float = 5.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class SupervisorProcess:
    """`python -m workbooks.supervisor cfg.json`, stdout (JSON logs) captured to a file."""

    def __init__(self, tmp: Path, cfg: dict, endpoint: bool = True, env: dict | None = None):
        self.tmp = tmp
        self.record = tmp / "record.jsonl"
        self.endpoint = f"ipc://{tmp}/sup.sock" if endpoint else None
        if endpoint:
            cfg = {"control_endpoint": self.endpoint, **cfg}
        self.cfg_path = tmp / "sup.json"
        self.cfg_path.write_text(json.dumps(cfg))
        self.log_path = tmp / "sup.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "workbooks.supervisor", str(self.cfg_path)],
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=str(ROOT),
                                     env={**os.environ, **(env or {})})

    def client(self):
        from workbooks.supervisor import ControlClient

        return ControlClient(self.endpoint, timeout=10)

    def request(self, op, **args):
        return self.client().request(op, **args)

    def wait_ready(self, timeout=10.0):
        """Until the control endpoint answers and every child has been started once."""
        def ok():
            if self.proc.poll() is not None:
                raise AssertionError(f"supervisor exited early ({self.proc.returncode}):\n{self.log_text()}")
            return os.path.exists(self.endpoint[6:]) and any(
                e.get("event") == "supervisor_started" for e in self.logs())
        wait_for(ok, timeout, what="supervisor to start")
        return self.request("status")

    def wait(self, timeout=15.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.flush()

    def signal(self, sig):
        self.proc.send_signal(sig)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logs(self) -> list[dict]:
        out = []
        for line in self.log_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def events(self, name: str, **match) -> list[dict]:
        return [e for e in self.logs() if e.get("event") == name
                and all(e.get(k) == v for k, v in match.items())]

    def records(self, event: str | None = None, id: str | None = None) -> list[dict]:
        if not self.record.exists():
            return []
        out = []
        for line in self.record.read_text().splitlines():
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if (event is None or d["event"] == event) and (id is None or d["id"] == id):
                out.append(d)
        return out

    def child(self, child_id: str) -> dict:
        for c in self.request("status")["children"]:
            if c["id"] == child_id:
                return c
        raise KeyError(child_id)

    def close(self):
        """Test teardown: stop it whatever happened (SIGTERM, then SIGKILL)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def supervisors_for(tmp_path):
    """Generator behind the tests' `sup` fixture: yields `start(cfg, **kw)`; afterwards stops every
    supervisor it started and fails the test if any process under `tmp_path` is left."""
    import pytest

    started = []

    def start(cfg, **kw):
        s = SupervisorProcess(tmp_path, cfg, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()
    marker = str(tmp_path)
    try:
        wait_for(lambda: not procs_matching(marker), 3.0, what="test processes to exit")
    except AssertionError:
        left = procs_matching(marker)
        for pid, _ in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pytest.fail(f"processes left behind: {left}")
