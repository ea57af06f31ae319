"""Start and stop the two planes as real processes (tests and benchmarks; `wbx serve` uses the supervisor).

`Planes(data_dir, ...)` picks free loopback ports, starts N control and M public processes
sharing each port, waits until they answer /healthz, and on exit stops every one it started
(SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0, procs: list | None = None) -> None:
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        for p in procs or []:
            if p.poll() is not None:
                raise RuntimeError(f"process {p.args} exited with {p.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception as e:  # noqa: BLE001
            last = e
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")


class Planes:
    def __init__(self, data_dir: str | os.PathLike, *, control_procs: int = 1, public_procs: int = 1,
                 pool_endpoint: str | None = None, supervisor_endpoint: str | None = None,
                 env: dict | None = None, log_dir: str | os.PathLike | None = None,
                 control_port: int | None = None, public_port: int | None = None):
        self.data_dir = Path(data_dir)
        self.control_procs = control_procs
        self.public_procs = public_procs
        self.pool_endpoint = pool_endpoint
        self.supervisor_endpoint = supervisor_endpoint
        self.env = env or {}
        self.log_dir = Path(log_dir) if log_dir else self.data_dir.parent / (self.data_dir.name + "-logs")
        self.control_port = control_port or free_port()
        self.public_port = public_port or free_port()
        self.procs: list[subprocess.Popen] = []
        self._files: list = []

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.public_port}"

    def admin_key(self) -> str:
        return (self.data_dir / "admin.key").read_text().strip()

    def _spawn(self, module: str, port: int, i: int, extra: list[str]) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        name = module.rsplit(".", 1)[-1]
        out = open(self.log_dir / f"{name}-{i}.log", "ab")
        err = open(self.log_dir / f"{name}-{i}.err", "ab")
        self._files += [out, err]
        env = dict(os.environ)
        env.update(self.env)
        env["WB_DATA"] = str(self.data_dir)
        argv = [sys.executable, "-m", module, "--port", str(port), "--data-dir", str(self.data_dir),
                "--proc", str(i), *extra]
        p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        self.procs.append(p)
        return p

    def start(self) -> "Planes":
        extra = []
        if self.pool_endpoint:
            extra += ["--pool", self.pool_endpoint]
        if self.supervisor_endpoint:
            extra += ["--supervisor", self.supervisor_endpoint]
        try:
            # The first control process creates the schema and the admin key before the rest start.
            first = self._spawn("workbooks.web_control", self.control_port, 1, extra)
            wait_http(self.control_url + "/healthz", procs=[first])
            for i in range(2, self.control_procs + 1):
                self._spawn("workbooks.web_control", self.control_port, i, extra)
            pubs = [self._spawn("workbooks.web_public", self.public_port, i, [])
                    for i in range(1, self.public_procs + 1)]
            wait_http(self.public_url + "/healthz", procs=pubs)
            time.sleep(0.2 if self.control_procs + self.public_procs > 2 else 0)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 5.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + grace
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
        for f in self._files:
            f.close()
        self._files.clear()

    def logs(self) -> str:
        out = []
        for f in sorted(self.log_dir.glob("*")):
            out.append(f.read_text(errors="replace"))
        return "\n".join(out)

    def __enter__(self) -> "Planes":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
