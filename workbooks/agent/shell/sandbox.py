"""One shell stage as WebAssembly under WASI: fresh store, capped time, memory and output.

Why this shape:
- The compiled modules (shellbox.wasm, QuickJS-NG for `jq`) are compiled once per process and
  cached on disk beside the kernel's (`WB_CACHE`), so a stage costs an instantiation (~1 ms),
  not a compilation. Each stage gets a fresh Store: nothing a stage did survives it.
- The engine is the kernel's (one per process, epoch interruption, its ticker runs only while wasm
  runs), so a stage's wall-time budget is an epoch deadline: a runaway stage traps instead of
  running on in an abandoned thread.
- WASI gets exactly what the stage needs: argv, stdin (an anonymous memfd: no file left behind),
  stdout/stderr into host callbacks that stop taking bytes at the cap, and at most the working dir
  preopened READ-ONLY (redirections are written by the host, never by a stage). No environment,
  no network (wasmtime's WASI preview 1 has no sockets), no other directory.
"""

from __future__ import annotations

import errno
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from workbooks.oql.kernel import EPOCH_TICK_S, ENGINE_SETTINGS, _EngineHolder, disk_cached_module

SHELLBOX_WASM = Path(__file__).with_name("shellbox.wasm")
STAGE_MEMORY = int(os.environ.get("WB_SHELL_STAGE_MEMORY_MB", "256")) << 20
STAGE_OUTPUT_CAP = int(os.environ.get("WB_SHELL_STAGE_OUTPUT_BYTES", str(1 << 20)))


class ShellLimit(Exception):
    """A stage hit a limit (`kind`: deadline | memory | output | trap); the whole line stops."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class StageResult:
    stdout: bytes
    stderr: bytes
    code: int


_modules: dict[str, wasmtime.Module] = {}
_modules_lock = threading.Lock()
_linker: wasmtime.Linker | None = None


def engine() -> wasmtime.Engine:
    return _EngineHolder.get()


def load(path: Path, label: str) -> wasmtime.Module:
    """The compiled module for `path`: from this process's cache, the disk cache, or compiled."""
    key_src = str(path)
    with _modules_lock:
        mod = _modules.get(key_src)
        if mod is not None:
            return mod
        mod, _ = disk_cached_module(engine(), path.read_bytes(), ENGINE_SETTINGS, label)
        _modules[key_src] = mod
        return mod


def _get_linker() -> wasmtime.Linker:
    global _linker
    with _modules_lock:
        if _linker is None:
            linker = wasmtime.Linker(engine())
            linker.define_wasi()
            _linker = linker
        return _linker


class _Capped:
    """A stdout/stderr sink that refuses bytes past `cap` (the guest's write then fails)."""

    def __init__(self, cap: int):
        self.cap = cap
        self.parts: list[bytes] = []
        self.size = 0
        self.over = False

    def __call__(self, data: bytes):
        if self.size + len(data) > self.cap:
            self.over = True
            return -errno.EFBIG
        self.parts.append(data)
        self.size += len(data)
        return len(data)

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def _ticks(deadline: float, name: str) -> int:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ShellLimit("deadline", f"{name}: stopped: the shell's time limit ran out")
    return max(1, math.ceil(left / EPOCH_TICK_S))


class Stage:
    """A prepared store + WASI for one run of `module`; call `run_command` or use `instance`."""

    def __init__(self, name: str, argv: list[str], stdin: bytes, workdir: Path | None,
                 deadline: float, memory: int = STAGE_MEMORY, output_cap: int = STAGE_OUTPUT_CAP):
        self.name = name
        self.deadline = deadline
        self.store = wasmtime.Store(engine())
        self.store.set_limits(memory_size=memory)
        self.stdout = _Capped(output_cap)
        self.stderr = _Capped(64 << 10)
        wasi = wasmtime.WasiConfig()
        wasi.argv = argv
        wasi.env = []  # nothing of the host's environment
        self._stdin_fd = os.memfd_create("wb-shell-stdin", os.MFD_CLOEXEC)
        try:
            view = memoryview(stdin)
            while view:
                view = view[os.write(self._stdin_fd, view):]
            wasi.stdin_file = f"/proc/self/fd/{self._stdin_fd}"
            wasi.stdout_custom = self.stdout
            wasi.stderr_custom = self.stderr
            if workdir is not None:
                # twice: as `/` (relative names resolve there) and under its own absolute path
                # (agents pass absolute paths inside their working dir); both read-only
                wasi.preopen_dir(str(workdir), "/", False)
                wasi.preopen_dir(str(workdir), str(workdir), False)
            self.store.set_wasi(wasi)
        except BaseException:
            os.close(self._stdin_fd)
            raise

    def close(self) -> None:
        """Free the store (and its WASI context) now, not whenever the GC gets to it: a WASI
        context that survives to interpreter exit can abort wasmtime's I/O threads."""
        if self._stdin_fd >= 0:
            os.close(self._stdin_fd)
            self._stdin_fd = -1
        self.store.close()
        from workbooks.wasi_release import wait_released

        wait_released((self.stdout, self.stderr), 2.0)  # wasmtime's I/O threads drop them (see that module)

    def call(self, func, *args):
        """Call a guest function under the deadline; returns (value, exit code or None)."""
        ticker = _EngineHolder.ticker
        self.store.set_epoch_deadline(_ticks(self.deadline, self.name))
        ticker.enter()
        try:
            return func(self.store, *args), None
        except wasmtime.ExitTrap as e:
            return None, e.code
        except wasmtime.Trap as t:
            raise self._classify(t) from None
        except wasmtime.WasmtimeError as e:  # a trap wrapped as an error by some entry points
            raise self._classify(e) from None
        finally:
            ticker.leave()

    def _classify(self, err: Exception) -> ShellLimit:
        code = getattr(err, "trap_code", None)
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        if code == wasmtime.TrapCode.INTERRUPT or "interrupt" in msg:
            return ShellLimit("deadline", f"{self.name}: stopped: the shell's time limit ran out")
        if self.stdout.over:
            return ShellLimit("output", self.output_message())
        err_text = self.stderr.bytes().decode("utf-8", "replace")
        if "memory allocation" in err_text or "out of memory" in err_text.lower() or "memory" in msg.lower():
            return ShellLimit("memory", f"{self.name}: stopped: over the {STAGE_MEMORY >> 20} MiB memory limit")
        return ShellLimit("trap", f"{self.name}: crashed ({msg})")

    def output_message(self) -> str:
        return f"{self.name}: stopped: output over the {self.stdout.cap} byte limit per stage"

    def instance(self, module: wasmtime.Module) -> wasmtime.Instance:
        self.store.set_epoch_deadline(_ticks(self.deadline, self.name))
        return _get_linker().instantiate(self.store, module)

    def result(self, code: int) -> StageResult:
        if self.stdout.over:
            raise ShellLimit("output", self.output_message())
        return StageResult(self.stdout.bytes(), self.stderr.bytes(), code)


def run_shellbox(argv: list[str], stdin: bytes, workdir: Path, deadline: float) -> StageResult:
    """Run one shellbox command (argv[0] is the command) over `stdin` with `workdir` visible."""
    module = load(SHELLBOX_WASM, "shellbox")
    stage = Stage(argv[0], argv, stdin, workdir, deadline)
    try:
        inst = stage.instance(module)
        _, code = stage.call(inst.exports(stage.store)["_start"])
        return stage.result(0 if code is None else code)
    finally:
        stage.close()
