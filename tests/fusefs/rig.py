"""The test side of the power-cut file system: mount it, command it, cut power, always unmount."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


class PowerCutMount:
    """A PowerCutFS process mounted at `<workdir>/mnt` over `<workdir>/disk`.

    Use as a context manager: leaving it unmounts (lazily if something still holds the mount) and
    ends the file system process, whatever happened inside.
    """

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = Path(workdir)
        self.backing = self.workdir / "disk"
        self.mountpoint = self.workdir / "mnt"
        self.control = self.workdir / "fs.sock"
        self.log = self.workdir / "fs.log"
        self.proc: subprocess.Popen | None = None
        self.mounts = 0
        self.last_losses: list[str] = []

    # -- life cycle -----------------------------------------------------------------------------
    def start(self, timeout: float = 20) -> "PowerCutMount":
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fusefs", str(self.backing), str(self.mountpoint), "--control", str(self.control)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
            )
        deadline = time.time() + timeout
        while not (os.path.ismount(self.mountpoint) and self.control.exists()):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError("the power-cut file system did not mount:\n" + self.log.read_text()[-3000:])
            time.sleep(0.05)
        self.mounts += 1
        return self

    def stop(self) -> None:
        """Unmount and end the file system process (lazily and by force if it must)."""
        if os.path.ismount(self.mountpoint):
            r = subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True, timeout=30)
            if r.returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True, timeout=30)
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None
        if os.path.ismount(self.mountpoint):  # the process died without unmounting
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True, timeout=30)

    def __enter__(self) -> "PowerCutMount":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- commands -------------------------------------------------------------------------------
    def command(self, *words: str) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(60)
            s.connect(str(self.control))
            s.sendall(" ".join(words).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        reply = json.loads(buf)
        if not reply.get("ok"):
            raise RuntimeError(f"power-cut fs refused {words}: {reply.get('error')}")
        return reply

    def sync(self) -> dict:
        """Make everything written so far durable (as `sync` would)."""
        return self.command("sync")

    def full_after(self, n_bytes: int, *, visible: bool = True) -> dict:
        """Let n more bytes be allocated, then answer ENOSPC (0: the disk is full now). Not visible:
        statfs goes on reporting free space, so only the failing writes tell."""
        return self.command("budget", str(int(n_bytes)), *([] if visible else ["hidden"]))

    def space_back(self) -> dict:
        return self.command("budget", "none")

    def losses(self) -> list[str]:
        """What a cut now would lose or bring back, path by path."""
        return self.command("losses")["lost"]

    def stats(self) -> dict:
        """{fsync, fsyncdir, write, enospc} counts since mount."""
        return self.command("stats")["counts"]

    def synced(self) -> dict[str, int]:
        """{path: fsyncs} since mount (a directory's path ends in /)."""
        return self.command("stats")["synced"]

    def cut(self) -> list[str]:
        """Power cut: drop everything not durable, then 'reboot' (unmount, mount afresh over the
        same disk). Stop every process using the mount first (see `freeze_and_kill`). Returns what
        was lost or brought back, path by path."""
        self.last_losses = self.command("cut")["lost"]
        self.stop()
        self.start()
        return self.last_losses


# -- process trees ------------------------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    """Live (non-zombie) descendants of pid, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_bytes().decode("latin-1")
            fields = raw[raw.rindex(")") + 2:].split()
        except (OSError, ValueError):
            continue
        if fields[0] != "Z":
            parents[int(entry)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out.extend(kids)
        frontier.extend(kids)
    return out


def freeze_and_kill(proc: subprocess.Popen) -> list[int]:
    """What a power cut does to processes: all stop at once (SIGSTOP the whole tree until no new
    child appears), then SIGKILL every one; no process runs a single instruction in between."""
    frozen: set[int] = set()
    while True:
        tree = {proc.pid, *descendants(proc.pid)} - frozen
        if not tree:
            break
        for p in tree:
            try:
                os.kill(p, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        frozen |= tree
    for p in frozen:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(30)
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in frozen):
        time.sleep(0.05)
    return sorted(frozen)


def _alive(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes().decode("latin-1")
    except OSError:
        return False
    return raw[raw.rindex(")") + 2] != "Z"
