"""What every compiled lane shares: its status, a toolchain's version, and running a compiler safely.

A compiler reads source we did not write. So it runs in the build sandbox (`sandbox.py`: it sees
/usr, its toolchain and the build's fresh temp dir, which is its cwd), with a clean environment
(PATH, HOME and TMPDIR pointing into that dir, nothing inherited: no secrets reach it), in its own
process group (a timeout kills the group; the sandbox's pid namespace takes zig's and rustc's
children along), with file sizes capped (`prlimit`), and its output goes to a file of which only
the first 4 KB are kept for the error message.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from workbooks.errors import WorkbooksError

from . import sandbox

MESSAGE_MAX = 4096  # the compiler's output a build error carries
FILE_SIZE_MAX = 512 << 20  # any one file a compiler writes (RLIMIT_FSIZE)
DEFAULT_TIMEOUT_S = 120.0


class BuildError(WorkbooksError):
    """A component that does not build: `code` is lane_unavailable (no toolchain for its lang) or
    build_failed (the compiler said no; `message` is its output, first 4 KB)."""

    code = "build_failed"
    http_status = 422

    def __init__(self, code: str, message: str, *, hint: str | None = None):
        super().__init__(_cap(message), hint=hint)
        self.code = code


def _cap(text: str) -> str:
    """At most 4 KB of UTF-8, cut at a character boundary; lone surrogates (a file name that is
    not UTF-8) become '?', so the message always serializes."""
    return text.encode("utf-8", "replace")[:MESSAGE_MAX].decode("utf-8", "ignore")


def unavailable(message: str) -> BuildError:
    return BuildError("lane_unavailable", message,
                      hint="ops/setup.sh installs the js, wat, c and zig lanes, `ops/setup.sh --test` adds rust")


def failed(message: str) -> BuildError:
    return BuildError("build_failed", message)


@dataclass(frozen=True)
class LaneStatus:
    available: bool
    toolchain: str | None  # e.g. "rustc 1.63.0 (wasm32-wasi, lld-14)"; part of the cache key
    why: str | None  # when unavailable: which toolchain is missing and how to get it

    def to_dict(self) -> dict:
        return {"available": self.available, "toolchain": self.toolchain, "why": self.why}


def build_timeout() -> float:
    raw = (os.environ.get("WB_BUILD_TIMEOUT_S") or "").strip()
    try:
        v = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        v = DEFAULT_TIMEOUT_S
    return v if v > 0 else DEFAULT_TIMEOUT_S


_versions: dict[tuple, str | None] = {}
_versions_lock = threading.Lock()


def tool_version(exe: str, args: list[str]) -> str | None:
    """`exe args` first output line, remembered per binary (path, inode, size, mtime): a warm build
    starts no process, and an upgraded toolchain is noticed (and changes the cache key)."""
    try:
        st = os.stat(exe)
    except OSError:
        return None
    memo = (exe, tuple(args), st.st_ino, st.st_size, st.st_mtime_ns)
    with _versions_lock:
        if memo in _versions:
            return _versions[memo]
    try:
        p = subprocess.run([exe, *args], capture_output=True, timeout=30, env=_clean_env(Path("/tmp")),
                           stdin=subprocess.DEVNULL, cwd="/")
        line = (p.stdout or p.stderr).decode("utf-8", "replace").strip().splitlines()
        v = line[0].strip() if p.returncode == 0 and line else None
    except (OSError, subprocess.TimeoutExpired):
        v = None
    with _versions_lock:
        _versions[memo] = v
    return v


def _clean_env(work: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work / ".tmp"), "LANG": "C.UTF-8",
           "SOURCE_DATE_EPOCH": "0"}
    env.update(extra or {})
    return env


def run_compiler(tool: str, argv: list[str], src: Path, out_dir: Path, *, env: dict[str, str] | None = None,
                 ro: list[str] = (), rw: list[str] = (), timeout: float | None = None) -> None:
    """Run `argv` in the sandbox, cwd `src` (the sources), `out_dir` writable (the build's own temp
    dir, which holds `src`); `ro`/`rw`: the toolchain's own paths. BuildError(build_failed) with the
    compiler's output when it fails or times out; lane_unavailable when the sandbox cannot run."""
    why = sandbox.problem()
    if why:
        raise unavailable(why)
    timeout = build_timeout() if timeout is None else timeout
    tmp = out_dir / ".tmp"
    tmp.mkdir(exist_ok=True)
    log_path = out_dir / ".compiler-output"
    cmd = sandbox.argv(out_dir, ro=list(ro), rw=list(rw), chdir=src)
    for k, v in _clean_env(out_dir, env).items():
        cmd += ["--setenv", k, v]
    cmd += ["--", *argv]
    prlimit = shutil.which("prlimit", path="/usr/bin:/bin")
    if prlimit:
        cmd = [prlimit, f"--fsize={FILE_SIZE_MAX}", "--core=0", "--", *cmd]
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(cmd, cwd=out_dir, env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        except OSError as e:
            raise unavailable(f"cannot start the {tool} compiler: {e}") from None
        try:
            rc = proc.wait(timeout=timeout)
        except BaseException as e:  # timeout (or the caller interrupted): stop the whole group; the
            try:  # sandbox's own pid namespace and --die-with-parent take the compiler's children along
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
            if not isinstance(e, subprocess.TimeoutExpired):
                raise
            rc = None
    if rc == 0:
        return
    with open(log_path, "rb") as f:
        out = f.read(MESSAGE_MAX).decode("utf-8", "replace")
    for prefix in (str(src) + "/", str(src), str(out_dir) + "/", str(out_dir)):
        out = out.replace(prefix, "" if prefix.endswith("/") else ".")
    if rc is None:
        raise failed(f"the {tool} compiler did not finish within {timeout:g} s (WB_BUILD_TIMEOUT_S)\n{out}".rstrip())
    raise failed(out.strip() or f"the {tool} compiler exited with status {rc} and said nothing")
