"""Real-process harnesses for the pool tests: a bare broker + workers, or a whole `wbx serve`.

Both start real processes on real ipc sockets under a tmp data dir and, on stop, check through
/proc that every process they started is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from workbooks.pool import endpoints as E

ROOT = Path(__file__).resolve().parent.parent


def wait_for(pred, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except Exception as e:  # the thing may not be up yet
            last = e
            last_ok = False
        else:
            last_ok = bool(last)
        if last_ok:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("latin-1")
        return stat[stat.rindex(")") + 2:].split()[0] != "Z"
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    from conftest import child_pids

    return child_pids(pid)


def _env(data: Path, extra: dict | None) -> dict:
    env = dict(os.environ)
    env["WB_DATA"] = str(data)
    env.pop("WBX_AGENT", None)
    env.setdefault("WB_LOG_LEVEL", "INFO")
    if extra:
        env.update(extra)
    return env


def broker_request(data: Path, op: str, timeout: float = 3.0, **args):
    import zmq

    from workbooks.pool import protocol as P

    s = zmq.Context.instance().socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(E.broker_control_endpoint(data))
        s.send(P.pack({"v": 1, "op": op, "args": args}))
        if not s.poll(int(timeout * 1000)):
            raise TimeoutError("broker control did not answer")
        reply = P.unpack(s.recv())
    finally:
        s.close(0)
    assert reply["ok"], reply
    return reply["data"]


class BarePool:
    """A broker and N workers started directly (no supervisor)."""

    def __init__(self, tmp: Path, workers: int = 1, env: dict | None = None, broker_args=(), heartbeat_ms: int = 1000):
        self.data = tmp / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.env = _env(self.data, env)
        self.logs = tmp / "logs"
        self.logs.mkdir(exist_ok=True)
        self.heartbeat_ms = heartbeat_ms
        self.procs: list[subprocess.Popen] = []
        try:
            self.broker = self._spawn("broker", [sys.executable, "-m", "workbooks.pool.broker", "--data", str(self.data),
                                                 "--heartbeat-ms", str(heartbeat_ms), *broker_args])
            wait_for(lambda: broker_request(self.data, "ping", timeout=0.5), what="broker up")
            self.workers = [self.add_worker(f"w{i}") for i in range(1, workers + 1)]
            self.wait_workers(workers)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env or self.env, cwd=ROOT)
        out.close()
        self.procs.append(p)
        return p

    def add_worker(self, wid: str, env: dict | None = None, spare: bool = False) -> subprocess.Popen:
        e = dict(self.env)
        if env:
            e.update(env)
        return self._spawn(wid, [sys.executable, "-m", "workbooks.pool.worker", "--connect", E.worker_endpoint(self.data),
                                 "--id", wid, "--heartbeat-ms", str(self.heartbeat_ms), *(["--spare"] if spare else [])],
                           env=e)

    def stats(self) -> dict:
        return broker_request(self.data, "stats")

    def wait_workers(self, n: int, timeout: float = 20.0) -> dict:
        def enough():
            s = self.stats()
            return s if len(s["workers"]) >= n else None

        return wait_for(enough, timeout, what=f"{n} workers")

    @property
    def client_endpoint(self) -> str:
        return E.client_endpoint(self.data)

    def log_text(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        # workers first (they say goodbye to the broker), then the broker
        for group in ([p for p in self.procs if p is not getattr(self, "broker", None)], [getattr(self, "broker", None)]):
            group = [p for p in group if p is not None]
            for p in group:
                if p.poll() is None:
                    p.send_signal(signal.SIGCONT)
                    p.terminate()
            for p in group:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for p in self.procs:
            assert not alive(p.pid), f"process {p.pid} outlived the test"


class Serve:
    """A real `wbx serve` (supervisor + broker + workers) in its own data dir."""

    def __init__(self, tmp: Path, workers: int = 2, heartbeat_ms: int = 1000, env: dict | None = None, args=(),
                 spares: int = 1):
        self.tmp = tmp
        self.spares = spares
        self.data = tmp / "data"
        self.env = _env(self.data, env)
        self.log_path = tmp / "serve.log"
        self.n = workers
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workbooks", "serve", "--data", str(self.data), "--workers", str(workers),
             "--heartbeat-ms", str(heartbeat_ms), "--spares", str(spares), "--no-web", *args],
            stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
        )
        out.close()
        self.seen_pids: set[int] = {self.proc.pid}
        try:
            self.wait_ready(workers)
        except BaseException:
            self.stop()
            raise

    def ctl(self, op: str, **args):
        from workbooks.supervisor import ControlClient

        return ControlClient(E.supervisor_endpoint(self.data), timeout=30).request(op, **args)

    def status(self) -> dict:
        st = self.ctl("status")
        for c in st["children"]:
            if c.get("pid"):
                self.seen_pids.add(c["pid"])
        return st

    def pool(self) -> dict:
        return self.ctl("pool_stats")

    def child(self, cid: str) -> dict:
        return next(c for c in self.status()["children"] if c["id"] == cid)

    def wait_ready(self, n: int, timeout: float = 30.0) -> None:
        def ok():
            if self.proc.poll() is not None:
                raise AssertionError(f"wbx serve exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            st = self.status()
            running = [c for c in st["children"] if c["group"] == "worker" and c["state"] == "running"]
            pool = self.pool()
            ready = [w for w in pool["workers"] if w["state"] in ("ready", "busy") and not w.get("covering")]
            spares_up = [c for c in st["children"] if c["group"] == "spare" and c["state"] == "running"]
            standby = [w for w in pool["workers"] if w["state"] == "standby"]
            return len(running) == n and len(ready) == n and len(spares_up) == len(standby) == self.spares
        wait_for(ok, timeout, what=f"{n} workers running and registered")

    @property
    def client_endpoint(self) -> str:
        return E.client_endpoint(self.data)

    def client(self):
        from workbooks.pool.client import PoolClient

        return PoolClient(E.client_endpoint(self.data))

    def wbx(self, *args, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "workbooks", *args], capture_output=True, env=self.env,
                              timeout=timeout, cwd=ROOT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.seen_pids.update(descendants(self.proc.pid))
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.seen_pids:
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
                raise AssertionError(f"process {pid} outlived `wbx serve`")
