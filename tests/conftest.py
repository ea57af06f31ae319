"""Shared fixtures. Engineers append fixtures here; keep each one self-contained."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# zig (the c and zig workflow lanes) builds its C library once into its global cache, ~50 s: one
# cache per machine for every test and every service a test starts (content-addressed, safe to share)
os.environ.setdefault("WB_ZIG_CACHE_DIR", os.path.join("/tmp", f"wb-zig-cache-{os.getuid()}"))

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"

# The pool's shared-memory bodies (workbooks.pool.bulk) go to a directory of this session's own
# on the same tmpfs, so the run can check it leaves no body behind and removes it afterwards.
# Set before anything imports workbooks; every process the tests start inherits it.
_SHM_SESSION = Path("/dev/shm" if os.path.isdir("/dev/shm") else "/tmp") / f"wb-tests-{os.getpid()}"
_SHM_SESSION.mkdir(mode=0o700, exist_ok=True)


def _sweep_dead_sessions() -> None:
    """Remove the directories of earlier sessions that were killed before their finish hook ran."""
    import shutil

    for d in _SHM_SESSION.parent.glob("wb-tests-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if pid.isdigit() and d != _SHM_SESSION and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(d, ignore_errors=True)


_sweep_dead_sessions()
os.environ["WB_POOL_BULK_ROOT"] = str(_SHM_SESSION)
# the planes' shared counters (workbooks.procstats) likewise, removed with the session's directory
os.environ["WB_METRICS_ROOT"] = str(_SHM_SESSION / "metrics")


def proc_stats():
    """(pid, state, ppid, session) of every process, from /proc/*/stat (gone ones skipped)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode("latin-1")
            fields = stat[stat.rindex(")") + 2 :].split()
            yield int(entry), fields[0], int(fields[1]), int(fields[3])
        except (OSError, ValueError):
            continue


def read_pty_to_end(master: int) -> bytes:
    """Everything a pty's other side writes until it is closed (EIO on Linux once the writer is gone)."""
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


def index_intents(data) -> list:
    """(tenant, workbook) of every deploy intent left in a data dir's index (none once a unit completes)."""
    import sqlite3

    c = sqlite3.connect(os.path.join(data, ".workbooks", "index.db"))
    try:
        return c.execute("SELECT tenant, workbook FROM intents").fetchall()
    finally:
        c.close()


def child_pids(pid: int | None = None) -> list[int]:
    """Live descendants of `pid` (default: this process), from /proc."""
    pid = pid or os.getpid()
    parents = {p: pp for p, state, pp, _ in proc_stats() if state != "Z"}
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        for c, pp in parents.items():
            if pp == p:
                out.append(c)
                frontier.append(c)
    return out


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's shared-memory directory (even when no test ran)."""
    import shutil

    shutil.rmtree(_SHM_SESSION, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """Fail the run if any test left a child process alive."""
    yield
    import time

    deadline = time.time() + 5
    left = child_pids()
    while left and time.time() < deadline:
        time.sleep(0.1)
        left = child_pids()
    if left:
        details = []
        for p in left:
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                details.append(f"{p}: {cmd}")
            except OSError:
                pass
        pytest.fail("processes left behind after the test session:\n" + "\n".join(details))
    bodies = sorted(str(p.relative_to(_SHM_SESSION)) for p in _SHM_SESSION.rglob("*")
                    if p.is_file() and p.relative_to(_SHM_SESSION).parts[0] != "metrics")
    if bodies:
        pytest.fail("shared-memory bodies left behind after the test session: " + ", ".join(bodies[:20]))


@pytest.fixture(scope="session")
def hostile_wasm(tmp_path_factory) -> Path:
    """The test-only kernel (hangs, memory bombs, traps on demand), compiled from WAT."""
    import wasmtime

    out = tmp_path_factory.mktemp("hostile") / "hostile.wasm"
    out.write_bytes(wasmtime.wat2wasm((FIXTURES / "hostile_kernel.wat").read_text()))
    return out


def run_wbx(*args: str, input: bytes | None = None, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the real `wbx` entry point in a subprocess (stdout is a pipe: agent mode unless flagged)."""
    e = dict(os.environ)
    e.pop("WBX_AGENT", None)
    if env:
        e.update(env)
    return subprocess.run(
        [sys.executable, "-m", "workbooks", *args], input=input, capture_output=True, env=e, timeout=timeout
    )


def run_wbx_on_tty(args: list[str], stdin: bytes = b"", timeout: float = 30) -> tuple[int, str]:
    """Run the real `wbx` with stdout and stderr on a terminal (a pty: human mode), `stdin` piped
    in; its exit status and everything it wrote there."""
    import pty

    master, slave = pty.openpty()
    env = dict(os.environ, NO_COLOR="1")
    env.pop("WBX_AGENT", None)
    p = subprocess.Popen([sys.executable, "-m", "workbooks", *args], stdin=subprocess.PIPE, stdout=slave,
                         stderr=slave, env=env)
    os.close(slave)
    p.stdin.write(stdin)
    p.stdin.close()
    out = read_pty_to_end(master)
    rc = p.wait(timeout=timeout)
    os.close(master)
    return rc, out.decode()


# -- web planes (W) ------------------------------------------------------------------------------
class WebEnv:
    """Running control + public planes on loopback with a temp data dir, and helpers to drive them."""

    def __init__(self, planes):
        import httpx

        self.planes = planes
        self.data_dir = planes.data_dir
        self.control = planes.control_url
        self.public = planes.public_url
        self.admin_key = planes.admin_key()
        self.http = httpx.Client(timeout=30)
        self._n = 0

    def auth(self, key: str, tenant: str | None = None) -> dict:
        h = {"Authorization": f"Bearer {key}"}
        if tenant:
            h["X-Workbooks-Tenant"] = tenant
        return h

    def admin(self) -> dict:
        return self.auth(self.admin_key)

    def new_tenant(self, prefix: str = "t") -> tuple[str, str]:
        """A fresh tenant and a tenant key for it."""
        self._n += 1
        name = f"{prefix}{os.getpid()}x{self._n}"
        r = self.http.post(self.control + "/api/tenants", json={"name": name}, headers=self.admin())
        assert r.status_code == 201, r.text
        r = self.http.post(self.control + f"/api/tenants/{name}/keys", json={"scope": "tenant"}, headers=self.admin())
        assert r.status_code == 201, r.text
        return name, r.json()["key"]

    def deploy(self, key: str, wid: str, org: str | bytes, **headers):
        body = org.encode() if isinstance(org, str) else org
        return self.http.put(self.control + f"/api/workbooks/{wid}", content=body, headers={**self.auth(key), **headers})

    def public_get(self, host: str, path: str = "/", **headers):
        return self.http.get(self.public + path, headers={"Host": host, **headers})


@pytest.fixture(scope="session")
def web(tmp_path_factory):
    """One control and one public process for the web tests (tenants keep tests apart)."""
    from workbooks.web_control.launch import Planes

    data = tmp_path_factory.mktemp("webdata")
    with Planes(data, env={"WB_LOG_LEVEL": "INFO"}) as planes:
        env = WebEnv(planes)
        yield env
        env.http.close()
