"""Compilers run in a bubblewrap sandbox: they see the system's /usr, their own toolchain and the
build's work dir, nothing else.

Why: a compiler reads whatever its source names. `#include "/srv/wb-data/…"`, Rust's
`include_str!` or Zig's `@embedFile` would otherwise put another tenant's files (or the server's
keys) into a module or an error message. Inside the sandbox those paths do not exist; there is no
network either, and the process tree dies with the build (`--die-with-parent`, its own pid
namespace). `bwrap` is Debian's `bubblewrap` (`ops/setup.sh` installs it); `WB_BWRAP` names another.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from pathlib import Path

HOW = "install Debian's bubblewrap: `apt-get install -y bubblewrap` (ops/setup.sh does)"

_ok: dict[tuple, str | None] = {}
_ok_lock = threading.Lock()


def bwrap() -> str:
    return (os.environ.get("WB_BWRAP") or "").strip() or "/usr/bin/bwrap"


def argv(work: Path, *, ro: list[str] = (), rw: list[str] = (), chdir: Path | None = None) -> list[str]:
    """The bwrap prefix: /usr read-only (with the merged-/usr links), `ro` read-only, `work` and `rw`
    writable, a private /tmp, /proc and /dev, no network, a clean environment (set by the caller)."""
    a = [bwrap(), "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
         "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "lib", "lib64", "sbin"):
        p = f"/{name}"
        if os.path.islink(p):
            a += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            a += ["--ro-bind", p, p]
    if os.path.exists("/etc/ld.so.cache"):
        a += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    a += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for p in ro:
        a += ["--ro-bind", p, p]
    for p in [str(work), *rw]:
        a += ["--bind", p, p]
    a += ["--chdir", str(chdir or work)]
    return a


def problem() -> str | None:
    """None when the sandbox works here; else what is wrong and how to fix it (checked once per
    bwrap binary: a warm build starts no process)."""
    exe = bwrap()
    try:
        st = os.stat(exe)
    except OSError:
        return f"the build sandbox (bubblewrap, {exe}) is missing: {HOW}"
    memo = (exe, st.st_ino, st.st_size, st.st_mtime_ns)
    with _ok_lock:
        if memo in _ok:
            return _ok[memo]
    try:
        with tempfile.TemporaryDirectory(prefix="wb-sandbox-check-") as d:
            p = subprocess.run([*argv(Path(d)), "--", "/usr/bin/true"], capture_output=True, timeout=30,
                               stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"})
        why = None if p.returncode == 0 else (
            f"the build sandbox ({exe}) does not work here: {p.stderr.decode('utf-8', 'replace').strip()[:300]} "
            "(it needs user namespaces, or root)")
    except (OSError, subprocess.TimeoutExpired) as e:
        why = f"the build sandbox ({exe}) does not start: {e}"
    with _ok_lock:
        _ok[memo] = why
    return why
