"""`wbx serve` as the durability tests run it: a real supervisor, pool and both planes over a data
dir on the power-cut file system, with the HTTP calls those tests make."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fusefs.rig import descendants, freeze_and_kill


def _free_port() -> int:
    from workbooks.web_control.launch import free_port

    return free_port()


class Serve:
    """One `wbx serve` run. `start()` waits for the demo page; `power_cut()` kills the whole tree
    at once; `stop()` is the orderly SIGTERM (and a kill if that hangs)."""

    def __init__(self, data: Path, logs: Path, env: dict | None = None, *, workers: int = 1):
        self.data, self.logs = Path(data), Path(logs)
        self.env = dict(os.environ, WB_DATA=str(self.data), **(env or {}))
        self.env.pop("WB_KERNEL_WASM", None)
        self.workers = workers
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        self.http = httpx.Client(timeout=60)

    @property
    def log_name(self) -> Path:
        return self.logs / f"serve-{self.runs}"

    def start(self, timeout: float = 90, *, demo: bool = True) -> "Serve":
        """Start and wait until /readyz answers 200 (and, with `demo`, the first run's demo page)."""
        self.runs += 1
        self.cport, self.pport = _free_port(), _free_port()
        self.control, self.public = f"http://127.0.0.1:{self.cport}", f"http://127.0.0.1:{self.pport}"
        out = open(f"{self.log_name}.log", "wb")
        err = open(f"{self.log_name}.err", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workbooks", "serve", "--data", str(self.data), "--workers", str(self.workers),
             "--spares", "0", "--control", f"127.0.0.1:{self.cport}", "--public", f"127.0.0.1:{self.pport}"],
            stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=self.env, start_new_session=True,
        )
        out.close()
        err.close()
        deadline = time.time() + timeout
        while True:
            try:
                r = self.http.get(self.public + "/", headers=self.host("demo"), timeout=5) if demo else None
                if r is None or r.status_code == 200:
                    r = self.http.get(self.control + "/readyz", timeout=5)
                    if r.status_code == 200 and self.http.get(self.public + "/healthz", timeout=5).status_code == 200:
                        return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                tail = self.tail()
                self.stop()
                raise RuntimeError(f"wbx serve did not come up (exit {self.proc and self.proc.returncode}):\n{tail}")
            time.sleep(0.2)

    def tail(self, n: int = 3000) -> str:
        out = []
        for ext in ("err", "log"):
            p = Path(f"{self.log_name}.{ext}")
            if p.exists():
                out.append(p.read_text(errors="replace")[-n:])
        return "\n".join(out)

    def host(self, wid: str, tenant: str | None = None) -> dict:
        """The Host header of a workbook's public page (the primary tenant's have the short name)."""
        return {"Host": f"{wid}.{tenant + '.' if tenant else ''}localhost:{self.pport}"}

    def admin(self) -> dict:
        return {"Authorization": f"Bearer {(self.data / 'admin.key').read_text().strip()}"}

    def power_cut(self) -> list[int]:
        """Every process of the service stops at once and dies (SIGSTOP the tree, then SIGKILL)."""
        pids = freeze_and_kill(self.proc)
        self.proc = None
        return pids

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            kids = descendants(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                freeze_and_kill(self.proc)
            for pid in kids:  # a child that outlived its parent's orderly stop would hold the mount
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc = None

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.http.close()


def tenant_with_key(s: Serve, name: str) -> dict:
    """A new tenant and a tenant key for it: the Authorization header."""
    r = s.http.post(s.control + "/api/tenants", json={"name": name}, headers=s.admin())
    assert r.status_code == 201, r.text
    r = s.http.post(s.control + f"/api/tenants/{name}/keys", json={"scope": "tenant"}, headers=s.admin())
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-c", "safe.directory=*", "-C", str(repo), *args], capture_output=True,
                          check=check, timeout=60)
