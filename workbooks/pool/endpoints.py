"""Where the pool listens and who may talk to it.

Local endpoints are ipc sockets under `$WB_DATA/run/` (directory 0700, socket files 0600): the
file system is the access control. If the data dir's path is too long for a unix socket
(sun_path is 108 bytes), the sockets live in a private per-user directory under /tmp named by a
hash of the data dir, so every process that agrees on the data dir agrees on the endpoints.

Remote endpoints are tcp with CURVE: `wbx ops keys` writes a server keypair and a client keypair
(0600) under `$WB_DATA/keys/`; public keys of clients and workers allowed in live in
`keys/authorized/`. The broker runs a ZAP handler that checks every CURVE key against that
directory and records each rejection (logged and shown by `wbx ops status`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import threading
import time
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

SUN_PATH_MAX = 107


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The data directory: explicit, else `$WB_DATA`, else `./wb-data`; absolute."""
    raw = explicit or os.environ.get("WB_DATA") or "wb-data"
    return Path(raw).expanduser().resolve()


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def run_dir(data: str | os.PathLike | None = None) -> Path:
    """The directory holding this data dir's ipc sockets (created 0700)."""
    d = data_dir(data)
    candidate = d / "run"
    if len(str(candidate / "supervisor-control.sock")) <= SUN_PATH_MAX - 6:
        return _private_dir(candidate)
    digest = hashlib.sha256(str(d).encode()).hexdigest()[:16]
    base = Path("/tmp") / f"wb-{os.getuid()}"
    _private_dir(base)
    if base.stat().st_uid != os.getuid():  # pragma: no cover - someone squatting on /tmp
        raise PermissionError(f"{base} is not owned by this user")
    return _private_dir(base / digest)


def _ipc(data, name: str) -> str:
    return f"ipc://{run_dir(data) / name}"


def client_endpoint(data=None) -> str:
    """The broker's frontend: where clients (web planes, CLI, agents) send requests."""
    return _ipc(data, "pool.sock")


def worker_endpoint(data=None) -> str:
    """The broker's backend for local workers."""
    return _ipc(data, "pool-workers.sock")


def broker_control_endpoint(data=None) -> str:
    """The broker's own control socket (stats, drain); only the supervisor and `wbx ops` use it."""
    return _ipc(data, "broker-control.sock")


# The workflow runners' broker (a second Broker instance, see workbooks.workflow.worker) has its
# own sockets in a subdirectory, so it also has its own shared-memory directory (pool.bulk names
# that after the socket directory) and sweeps it by its own, longer deadlines.
RUNNER_SUBDIR = "runner"


def _runner_ipc(data, name: str) -> str:
    return f"ipc://{_private_dir(run_dir(data) / RUNNER_SUBDIR) / name}"


def runner_client_endpoint(data=None) -> str:
    """The runner broker's frontend: where the workflow engine sends steps."""
    return _runner_ipc(data, "clients.sock")


def runner_worker_endpoint(data=None) -> str:
    """The runner broker's backend for local runner workers."""
    return _runner_ipc(data, "workers.sock")


def runner_control_endpoint(data=None) -> str:
    """The runner broker's control socket (stats, drain)."""
    return _runner_ipc(data, "control.sock")


def supervisor_endpoint(data=None) -> str:
    """The supervisor's control endpoint."""
    return _ipc(data, "supervisor-control.sock")


def ipc_path(endpoint: str) -> Path | None:
    return Path(endpoint[len("ipc://"):]) if endpoint.startswith("ipc://") else None


_umask_lock = threading.Lock()


def bind_private(sock: zmq.Socket, endpoint: str) -> None:
    """Bind; an ipc socket file is created 0600 (umask while binding, chmod after)."""
    path = ipc_path(endpoint)
    if path is None:
        sock.bind(endpoint)
        return
    _private_dir(path.parent)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()  # a stale socket from a killed process
    with _umask_lock:
        old = os.umask(0o177)
        try:
            sock.bind(endpoint)
        finally:
            os.umask(old)
    os.chmod(path, 0o600)


# -- CURVE keys -------------------------------------------------------------------------------


def keys_dir(data=None) -> Path:
    return data_dir(data) / "keys"


def authorized_dir(data=None) -> Path:
    return keys_dir(data) / "authorized"


def generate_keys(data=None, *, client_name: str = "client", force: bool = False) -> dict:
    """Create the server keypair (once) and a named client keypair, authorized; files 0600."""
    kd = _private_dir(keys_dir(data))
    ad = _private_dir(authorized_dir(data))
    made = []
    for name in ("server", client_name):
        pub = kd / f"{name}.key"
        sec = kd / f"{name}.key_secret"
        if force or not sec.exists():
            for p in (pub, sec):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            old = os.umask(0o177)
            try:
                zmq.auth.create_certificates(str(kd), name)
            finally:
                os.umask(old)
            made.append(name)
        os.chmod(pub, 0o600)
        os.chmod(sec, 0o600)
    client_pub = kd / f"{client_name}.key"
    shutil.copyfile(client_pub, ad / f"{client_name}.key")
    os.chmod(ad / f"{client_name}.key", 0o600)
    server_public, _ = zmq.auth.load_certificate(str(kd / "server.key"))
    client_public, _ = zmq.auth.load_certificate(str(client_pub))
    return {
        "dir": str(kd),
        "created": made,
        "server_public": server_public.decode(),
        "server_public_file": str(kd / "server.key"),
        "client_secret_file": str(kd / f"{client_name}.key_secret"),
        "client_public": client_public.decode(),
        "authorized": sorted(p.name for p in ad.glob("*.key")),
    }


def load_keypair(path: str | os.PathLike) -> tuple[bytes, bytes | None]:
    """(public, secret) z85 keys from a zmq certificate file (secret is None for a public file)."""
    return zmq.auth.load_certificate(str(path))


def setup_curve_server(sock: zmq.Socket, data=None) -> None:
    kd = keys_dir(data)
    secret_file = kd / "server.key_secret"
    if not secret_file.exists():
        raise FileNotFoundError(f"no server key at {secret_file}; run `wbx ops keys` first")
    public, secret = load_keypair(secret_file)
    sock.curve_server = True
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.zap_domain = b"workbooks"


def setup_curve_client(sock: zmq.Socket, server_public: bytes, client_public: bytes, client_secret: bytes) -> None:
    sock.curve_serverkey = server_public
    sock.curve_publickey = client_public
    sock.curve_secretkey = client_secret


class KeyAuthenticator(ThreadAuthenticator):
    """ZAP handler: CURVE keys must be in keys/authorized; every rejection is recorded and logged.

    The authorized directory is re-read whenever it changed (its mtime), so a key added with
    `wbx ops keys --client NAME` works, and a key file removed from it stops working, without
    restarting the broker.
    """

    def __init__(self, context: zmq.Context, data=None, on_reject=None):
        super().__init__(context)
        self.data = data
        self.on_reject = on_reject
        self.rejections: list[dict] = []
        self.rejected_total = 0
        self._address = ""
        self._known: set[bytes] = set()
        self._stamp = None
        self._lock = threading.Lock()

    def _dir_stamp(self):
        """What changes when a key is added, removed or replaced (handshakes are rare: stat is fine)."""
        ad = authorized_dir(self.data)
        try:
            st = ad.stat()
            files = tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in ad.glob("*.key")))
            return (st.st_mtime_ns, st.st_ino, files)
        except OSError:
            return None

    def reload(self) -> None:
        known = set()
        self._stamp = self._dir_stamp()
        ad = authorized_dir(self.data)
        if ad.is_dir():
            for p in ad.glob("*.key"):
                try:
                    public, _ = load_keypair(p)
                    known.add(public)
                except Exception:
                    continue
        self._known = known

    def start(self) -> None:
        super().start()
        self.reload()
        self.configure_curve_callback(domain="*", credentials_provider=self)
        self.configure_curve_callback(domain="workbooks", credentials_provider=self)

    async def handle_zap_message(self, msg):  # remember the peer address for the record
        if len(msg) >= 4:
            self._address = msg[3].decode("utf-8", "replace")
        return await super().handle_zap_message(msg)

    def callback(self, domain: str, key: bytes) -> bool:
        if self._dir_stamp() != self._stamp:
            self.reload()
        if key in self._known:
            return True
        event = {"at": time.time(), "key": key.decode(), "address": self._address, "reason": "unknown key"}
        with self._lock:
            self.rejected_total += 1
            self.rejections.append(event)
            del self.rejections[:-20]
        if self.on_reject:
            self.on_reject(event)
        return False

    def snapshot(self) -> dict:
        with self._lock:
            return {"rejected_total": self.rejected_total, "recent": list(self.rejections)}
