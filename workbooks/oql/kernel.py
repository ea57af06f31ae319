"""The host side of oql.wasm: one compiled module per process, one wasm call per operation.

Why this shape:
- Compiling the module costs far more than instantiating it, so the compiled artifact is
  cached on disk (keyed by wasmtime's version, the engine settings and the wasm's hash) and
  a restarted worker deserializes it in milliseconds.
- `Func.__call__` in wasmtime-py re-reads the function type and boxes every value; we call
  `wasmtime_func_call_unchecked` with a preallocated raw-value array instead (see
  load/kernel_bench.py for the measured difference).
- Input is written straight into a buffer the kernel owns (`wb_reserve` is called only when
  it must grow), and the output is read straight out of linear memory.
- Every call has a wall-time budget (epoch interruption, ticked by one daemon thread per
  engine) and every store a memory cap. A trap, deadline or memory cap becomes a typed error
  and the instance is replaced, so the next call works.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

from workbooks.oql.errors import InvalidUtf8, KernelDeadline, KernelError, KernelMemory, KernelTrap

WASM_PATH = Path(__file__).with_name("oql.wasm")

# Operations and how many string arguments each takes.
OPS: dict[str, int] = {
    "parse_headlines": 1,
    "tangle_plan": 1,
    "validate": 1,
    "lint": 1,
    "check_upgrade": 2,
    "render": 1,
    "render_with": 2,
    "parse": 1,
}

EPOCH_TICK_S = 0.005
DEFAULT_DEADLINE_MS = int(os.environ.get("WB_KERNEL_DEADLINE_MS", "10000"))
DEFAULT_MEMORY_MB = int(os.environ.get("WB_KERNEL_MEMORY_MB", "512"))
MAX_INPUT = 1 << 30  # the ABI carries 32-bit lengths; refuse long before that


def kernel_wasm_path() -> Path:
    """The wasm to load: `WB_KERNEL_WASM` (tests load a hostile module this way) or the shipped one."""
    override = os.environ.get("WB_KERNEL_WASM")
    return Path(override) if override else WASM_PATH


def cache_dir() -> Path:
    base = os.environ.get("WB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "workbooks"
    )
    return Path(base)


def _wasmtime_version() -> str:
    # The dist-info directory beside the package names the version; reading it is a listdir,
    # while importing importlib.metadata costs a worker ~20 ms of start-up (its recovery time).
    try:
        site = Path(wasmtime.__file__).resolve().parent.parent
        found = [n[len("wasmtime-"):-len(".dist-info")] for n in os.listdir(site)
                 if n.startswith("wasmtime-") and n.endswith(".dist-info")]
        if len(found) == 1:
            return found[0]
    except OSError:
        pass
    try:
        from importlib.metadata import version

        return version("wasmtime")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        return "unknown"


ENGINE_SETTINGS = "epoch_interruption=1;opt=speed"


class _EpochTicker:
    """Advances the engine's epoch every EPOCH_TICK_S, but only while a kernel call runs.

    Why not always: an idle process would wake 200 times a second for nothing (measured: 12.5 ms
    of CPU per second per idle worker, and on a VM whose idle vCPUs halt each wake-up is dear).
    Deadlines are counted in ticks from the start of each call, so pausing between calls changes
    nothing. After a fork the thread is gone; the child starts its own on its first call."""

    def __init__(self, engine: wasmtime.Engine):
        self.engine = engine
        self.active = 0
        self.cond = threading.Condition(threading.Lock())
        self.started = False  # reset in a forked child, whose copy has no thread

    def _run(self) -> None:
        cond = self.cond
        while True:
            with cond:
                while not self.active:
                    cond.wait()
            time.sleep(EPOCH_TICK_S)
            self.engine.increment_epoch()

    def enter(self) -> None:
        with self.cond:
            if not self.started:
                self.started = True
                threading.Thread(target=self._run, name="wasm-epoch", daemon=True).start()
            self.active += 1
            if self.active == 1:
                self.cond.notify()

    def leave(self) -> None:
        with self.cond:
            self.active -= 1


class _EngineHolder:
    """One engine per process, with its epoch ticker."""

    _lock = threading.Lock()
    _engine: wasmtime.Engine | None = None
    ticker: _EpochTicker | None = None

    @classmethod
    def get(cls) -> wasmtime.Engine:
        with cls._lock:
            if cls._engine is None:
                cfg = wasmtime.Config()
                cfg.epoch_interruption = True
                cfg.cranelift_opt_level = "speed"
                cls._engine = wasmtime.Engine(cfg)
                cls.ticker = _EpochTicker(cls._engine)
            return cls._engine


def _after_fork_in_child() -> None:
    t = _EngineHolder.ticker
    if t is not None:  # the parent's lock may have been held by its ticker thread at fork time
        t.cond = threading.Condition(threading.Lock())
        t.active = 0
        t.started = False


os.register_at_fork(after_in_child=_after_fork_in_child)


_module_cache: dict[str, tuple[wasmtime.Module, dict]] = {}
_module_lock = threading.Lock()


def disk_cached_module(engine: wasmtime.Engine, wasm: bytes, settings: str, label: str) -> tuple[wasmtime.Module, str]:
    """`wasm` compiled for `engine`: deserialized from the disk cache (keyed by wasmtime's version,
    the engine's `settings` and the bytes) or compiled now and written there atomically.
    Returns (module, "disk-cache" | "compiled"). Shared by the kernel, the agent shell and
    workflow steps; a module that does not validate raises WasmtimeError."""
    digest = hashlib.sha256(wasm).hexdigest()
    key = hashlib.sha256(f"{_wasmtime_version()}|{settings}|{digest}".encode()).hexdigest()[:32]
    cached = cache_dir() / f"{label}-{key}.cwasm"
    if cached.exists():
        try:
            return wasmtime.Module.deserialize_file(engine, str(cached)), "disk-cache"
        except Exception:
            pass
    module = wasmtime.Module(engine, wasm)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        import tempfile  # only when compiling: not on a worker's start-up path

        fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=f".{label}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(module.serialize())
            os.replace(tmp, cached)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError:
        pass  # a read-only cache dir only costs compile time
    return module, "compiled"


def load_module(engine: wasmtime.Engine, wasm_path: Path) -> tuple[wasmtime.Module, dict]:
    """Compile (or deserialize from the disk cache) the module; returns it with load facts."""
    wasm = wasm_path.read_bytes()
    digest = hashlib.sha256(wasm).hexdigest()
    key = hashlib.sha256(f"{_wasmtime_version()}|{ENGINE_SETTINGS}|{digest}".encode()).hexdigest()[:32]
    with _module_lock:
        if key in _module_cache:
            return _module_cache[key]
        t0 = time.perf_counter()
        module, source = disk_cached_module(engine, wasm, ENGINE_SETTINGS, "oql")
        info = {
            "wasm_sha256": digest,
            "source": source,
            "load_ms": round((time.perf_counter() - t0) * 1000, 3),
            "path": str(wasm_path),
            "imports": [i.name for i in module.imports],
        }
        if info["imports"]:
            raise KernelError(f"{wasm_path} imports {info['imports']}; the kernel must have zero imports")
        _module_cache[key] = (module, info)
        return module, info


_UTF8_CHUNK = 1 << 14


def utf8_error_offset(data: bytes) -> int | None:
    """The offset of the first byte that makes `data` invalid UTF-8, or None when it is valid.

    Why not `data.decode()`: that builds a whole str (on 7 MB of mostly-ASCII text with some
    non-Latin-1 characters, ~10 ms and 14 MB). Chunks that are pure ASCII (found at memory
    speed) are skipped and only the others are decoded, each cut before a lead byte where
    possible; when a chunk fails, the whole is decoded once for Python's exact offset."""
    if data.isascii():
        return None
    n = len(data)
    i = 0
    while i < n:
        j = min(n, i + _UTF8_CHUNK)
        if j < n:
            k = j
            while k > i and k > j - 4 and 0x80 <= data[k] < 0xC0:  # do not cut a sequence
                k -= 1
            if k > i:
                j = k
        part = data[i:j]
        if not part.isascii():
            try:
                part.decode("utf-8")
            except UnicodeDecodeError:
                try:  # the whole once: Python's own offset (and never a false alarm from a cut)
                    data.decode("utf-8")
                except UnicodeDecodeError as e:
                    return e.start
                return None
        i = j
    return None


def _check_utf8(arg: Any, index: int) -> bytes:
    if isinstance(arg, str):
        try:
            return arg.encode("utf-8")
        except UnicodeEncodeError as e:  # lone surrogates
            raise InvalidUtf8(len(arg[: e.start].encode("utf-8", "surrogatepass")), index) from None
    if isinstance(arg, (bytes, bytearray, memoryview)):
        data = bytes(arg)  # the same object when it is bytes already
        bad = utf8_error_offset(data)
        if bad is not None:
            raise InvalidUtf8(bad, index)
        return data
    raise TypeError(f"kernel arguments are str or bytes, not {type(arg).__name__}")


class Kernel:
    """A wasmtime instance of oql.wasm with typed errors and a per-call wall-time budget."""

    def __init__(
        self,
        wasm_path: str | os.PathLike | None = None,
        *,
        memory_mb: int = DEFAULT_MEMORY_MB,
        deadline_ms: int = DEFAULT_DEADLINE_MS,
    ):
        self.engine = _EngineHolder.get()
        self._ticker = _EngineHolder.ticker
        self.wasm_path = Path(wasm_path) if wasm_path else kernel_wasm_path()
        self.module, self.load_info = load_module(self.engine, self.wasm_path)
        self.memory_limit = memory_mb * 1024 * 1024
        self.deadline_ms = deadline_ms
        self.calls = 0
        self.resets = 0
        self._lock = threading.Lock()
        self._instantiate()

    @property
    def wasm_sha256(self) -> str:
        return self.load_info["wasm_sha256"]

    def _instantiate(self) -> None:
        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=self.memory_limit)
        store.set_epoch_deadline(1 << 40)
        instance = wasmtime.Instance(store, self.module, [])
        exports = instance.exports(store)
        self.store = store
        self.memory = exports["memory"]
        self._reserve = exports["wb_reserve"]
        self._oom = exports.get("wb_oom") if hasattr(exports, "get") else None
        self._funcs = {}
        for op in OPS:
            f = exports.get(op) if hasattr(exports, "get") else exports[op]
            if f is not None:
                self._funcs[op] = f
        self._capacity = 0
        self._in_ptr = 0
        self._raw = (ffi.wasmtime_val_raw_t * 2)()
        self._trap = ctypes.POINTER(ffi.wasm_trap_t)()

    def reset(self) -> None:
        """Throw the instance away and make a fresh one (after a trap, or on request)."""
        self.resets += 1
        self._instantiate()

    def memory_bytes(self) -> int:
        return self.memory.data_len(self.store)

    # -- the fast path -------------------------------------------------------------------
    def _raw_call(self, func: wasmtime.Func, params: tuple[int, ...]) -> int:
        raw = self._raw
        for i, p in enumerate(params):
            raw[i].i64 = 0
            raw[i].i32 = p
        trap = self._trap
        err = ffi.wasmtime_func_call_unchecked(
            self.store._context(), ctypes.byref(func._func), raw, 2, ctypes.byref(trap)
        )
        if err:
            raise wasmtime.WasmtimeError._from_ptr(err)
        if trap:
            t = wasmtime.Trap._from_ptr(trap)
            self._trap = ctypes.POINTER(ffi.wasm_trap_t)()
            raise t
        return raw[0].i64 & 0xFFFFFFFFFFFFFFFF

    def _base(self) -> int:
        return ctypes.addressof(self.memory.data_ptr(self.store).contents)

    def call_raw(self, op: str, *args: str | bytes, deadline_ms: int | None = None, consume=None):
        """Run one operation; returns the kernel's UTF-8 output bytes untouched.

        `consume`, if given, is called with a memoryview of the output inside the instance's
        memory (valid only during the call) and its result is returned instead: a worker writes
        a large output straight to shared memory without another copy."""
        nargs = OPS.get(op)
        if nargs is None:
            raise KernelError(f"unknown kernel operation {op!r}", hint=f"one of {', '.join(OPS)}")
        if len(args) != nargs:
            raise KernelError(f"{op} takes {nargs} argument(s), got {len(args)}")
        blobs = [_check_utf8(a, i) for i, a in enumerate(args)]
        total = sum(len(b) for b in blobs)
        if total > MAX_INPUT:
            raise KernelMemory(f"input of {total} bytes is over the kernel's {MAX_INPUT}-byte limit")
        func = self._funcs.get(op)
        if func is None:
            raise KernelError(f"this kernel build has no {op} export")
        budget = self.deadline_ms if deadline_ms is None else deadline_ms
        with self._lock:
            self.calls += 1
            try:
                if total > self._capacity or self._capacity == 0:
                    self.store.set_epoch_deadline(1 << 40)
                    self._in_ptr = self._raw_call(self._reserve, (max(total, 4096),)) & 0xFFFFFFFF
                    self._capacity = max(total, 4096)
                base = self._base()
                off = 0
                for b in blobs:
                    ctypes.memmove(base + self._in_ptr + off, b, len(b))
                    off += len(b)
                self.store.set_epoch_deadline(max(1, int(budget / 1000 / EPOCH_TICK_S) + 1))
                ticker = self._ticker
                ticker.enter()
                try:
                    packed = self._raw_call(func, tuple(len(b) for b in blobs))
                finally:
                    ticker.leave()
                ptr, length = packed >> 32, packed & 0xFFFFFFFF
                if consume is not None:
                    return consume(memoryview((ctypes.c_char * length).from_address(self._base() + ptr)).cast("B"))
                return ctypes.string_at(self._base() + ptr, length)
            except wasmtime.Trap as trap:
                raise self._classify(op, trap, budget) from None
            except wasmtime.WasmtimeError as e:
                self.reset()
                raise KernelTrap(f"{op}: wasmtime error: {e}") from None

    def _classify(self, op: str, trap: wasmtime.Trap, budget: int) -> KernelError:
        code = trap.trap_code
        oom = False
        if code != wasmtime.TrapCode.INTERRUPT:
            try:
                if self._oom is not None:
                    self.store.set_epoch_deadline(1 << 40)
                    oom = bool(self._oom(self.store))
            except Exception:
                oom = False
            if not oom and self.memory_bytes() + (1 << 20) >= self.memory_limit:
                oom = True
        self.reset()
        if code == wasmtime.TrapCode.INTERRUPT:
            return KernelDeadline(f"{op} ran past its {budget} ms deadline and was stopped")
        if oom:
            return KernelMemory(f"{op} needed more than the {self.memory_limit >> 20} MB memory cap")
        name = code.name.lower() if code is not None else "unknown"
        return KernelTrap(f"{op} trapped ({name}); the kernel instance was replaced")

    # -- convenience ------------------------------------------------------------------
    def call(self, op: str, *args: str | bytes, deadline_ms: int | None = None) -> str:
        return self.call_raw(op, *args, deadline_ms=deadline_ms).decode("utf-8")

    def call_json(self, op: str, *args: str | bytes, deadline_ms: int | None = None) -> Any:
        return json.loads(self.call_raw(op, *args, deadline_ms=deadline_ms))

    def parse_headlines(self, org: str | bytes) -> list:
        return self.call_json("parse_headlines", org)

    def tangle_plan(self, org: str | bytes) -> dict:
        return self.call_json("tangle_plan", org)

    def validate(self, org: str | bytes) -> list:
        return self.call_json("validate", org)

    def lint(self, org: str | bytes) -> list:
        return self.call_json("lint", org)

    def check_upgrade(self, old: str | bytes, new: str | bytes) -> list:
        return self.call_json("check_upgrade", old, new)

    def parse(self, org: str | bytes) -> dict:
        """The element tree (`{"type": "org-data", "children": [...]}`; offsets are UTF-8 bytes)."""
        return self.call_json("parse", org)

    def render(self, org: str | bytes, options: dict | None = None) -> str:
        if options:
            return self.call("render_with", org, json.dumps(options))
        return self.call("render", org)


_default: Kernel | None = None
_default_lock = threading.Lock()


def default_kernel() -> Kernel:
    """A per-process shared kernel (CLI, tests); the pool's workers own their own."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Kernel()
        return _default
