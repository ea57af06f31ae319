"""A step's capabilities (`:uses http kv log`): exactly the declared ones exist, all host-side.

Why host-side: a step is untrusted wasm with no network and one directory. What it may do beyond
that is a short list of host functions, each checked here against the component's `:uses`, so a
capability the component did not declare is absent (its call fails with "capability <name> not
declared (:uses)"; a wasm module that imports it does not start, code `capability`).

- `http`: GET/POST through the agent's SSRF guard (`workbooks.agent.tools.netguard`: the URL is
  checked, the host resolved once, every address checked, private ones refused unless the host is
  in `ctx.allow_hosts`; the connection goes to exactly those addresses). `{{secret:KEY}}` in the URL,
  a header value or a POST body is resolved only when the request is built; the body the step gets
  back is redacted. At most 8 MiB of body, redirects followed by hand (at most 5, each re-checked),
  20 s per request or less when the step's deadline is nearer. A non-2xx answer is an error.
- `kv`: `workbooks.workflow.kv` (per tenant, per workflow; survives runs).
- `log`: a line (redacted, at most 4 KiB) into `ctx.log` and the step's logs (at most 1000 lines).

Wasm modules reach them through imports from module `wb` (the step's ABI). Pointers and lengths are
i32 into the module's exported `memory`; a call that produces bytes returns their length (>= 0) and
keeps them as the *result*, which `wb.result(ptr, cap)` copies out; a negative return is a failure
whose message is the result:

    wb.log(ptr, len)                                       (log)
    wb.http_get(url_ptr, url_len) -> i32                   (http)  body length, or -1
    wb.http_post(url_ptr, url_len, body_ptr, body_len) -> i32   (http)
    wb.kv_get(key_ptr, key_len) -> i32                     (kv)    value length, -1 absent, -2 error
    wb.kv_set(key_ptr, key_len, val_ptr, val_len) -> i32   (kv)    0, or -2 error
    wb.kv_del(key_ptr, key_len) -> i32                     (kv)    1 deleted, 0 absent, -2 error
    wb.result(ptr, cap) -> i32                             (always) bytes copied (at most cap)
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any, Callable
from urllib.parse import urljoin

import trio
import wasmtime

from workbooks.agent.tools.fetch import HOP_HEADERS, REDIRECTS, exchange
from workbooks.agent.tools.netguard import Refused, Target, parse
from workbooks.workflow.kv import KvError, KvStore
from workbooks.workflow.types import CAPABILITIES, StepContext

HTTP_TIMEOUT_S = 20.0
HTTP_MAX_BODY = 8 << 20
HTTP_MAX_REDIRECTS = 5
HTTP_USER_AGENT = "WorkbooksWorkflow/1"
LOG_LINE_MAX = 4096
LOG_LINES_MAX = 1000

WASM_MODULE = "wb"  # the import module of the step ABI
WASM_FUNCS: dict[str, tuple[str | None, list[str], list[str]]] = {
    # name: (capability, params, results)
    "log": ("log", ["i32", "i32"], []),
    "http_get": ("http", ["i32", "i32"], ["i32"]),
    "http_post": ("http", ["i32", "i32", "i32", "i32"], ["i32"]),
    "kv_get": ("kv", ["i32", "i32"], ["i32"]),
    "kv_set": ("kv", ["i32", "i32", "i32", "i32"], ["i32"]),
    "kv_del": ("kv", ["i32", "i32"], ["i32"]),
    "result": (None, ["i32", "i32"], ["i32"]),
}


class CapError(Exception):
    """A capability call that failed; the message goes back to the step (redacted)."""


def not_declared(name: str) -> str:
    return f"capability {name} not declared (:uses)"


def check_uses(uses) -> str | None:
    """The message for an unknown capability name in `:uses`, or None."""
    unknown = sorted(set(uses) - CAPABILITIES)
    if unknown:
        return f"unknown capability {', '.join(unknown)} in :uses (known: {', '.join(sorted(CAPABILITIES))})"
    return None


def check_imports(module: wasmtime.Module, uses) -> str | None:
    """Why `module` may not be instantiated for a step declaring `uses`, or None.

    Only WASI preview 1 and the `wb` functions of declared capabilities can be imported."""
    for imp in module.imports:
        mod, name = imp.module, imp.name or ""
        if mod == "wasi_snapshot_preview1":
            continue
        if mod == WASM_MODULE and name in WASM_FUNCS:
            cap = WASM_FUNCS[name][0]
            if cap is not None and cap not in uses:
                return f"{not_declared(cap)}: the module imports {mod}.{name}"
            continue
        return (f"the module imports {mod}.{name}, which no step provides (only WASI and the "
                f"`wb` capability functions: {', '.join(sorted(WASM_FUNCS))})")
    return None


class CapHost:
    """The capabilities of one step run: declared set, context, deadline, collected logs."""

    def __init__(self, ctx: StepContext, uses, deadline: float):
        self.ctx = ctx
        self.uses = frozenset(uses)
        self.deadline = deadline
        self.logs: list[str] = []
        self.logs_dropped = 0
        self.result = b""  # the wasm ABI's last result
        self.fuel_used: int | None = None

    # -- dispatch (the JS prelude's frames) ------------------------------------------------------

    def call(self, cap: str, op: str, args: list) -> Any:
        """Run `cap.op(*args)` for the step; raises CapError with the step's message."""
        if cap not in CAPABILITIES:
            raise CapError(f"no capability named {str(cap)[:40]!r}")
        if cap not in self.uses:
            raise CapError(not_declared(cap))
        if not isinstance(args, list):
            raise CapError(f"{cap}.{op}: bad arguments")
        if cap == "log" and op == "log":
            self.log(_as_str(args[0] if args else "", "log"))
            return None
        if cap == "http" and op in ("get", "post"):
            url = _as_str(args[0] if args else None, f"http.{op}: the url")
            body = _as_str(args[1], f"http.{op}: the body") if op == "post" and len(args) > 1 and args[1] is not None else ""
            hraw = args[2 if op == "post" else 1] if len(args) > (2 if op == "post" else 1) else None
            return self.http(op.upper(), url, body.encode("utf-8", "surrogatepass"), _headers(hraw)).decode("utf-8", "replace")
        if cap == "kv" and op in ("get", "set", "del"):
            key = _as_str(args[0] if args else None, f"kv.{op}: the key")
            if op == "get":
                v = self.kv_get(key)
                return None if v is None else v.decode("utf-8", "replace")
            if op == "set":
                if len(args) < 2 or not isinstance(args[1], str):
                    raise CapError("kv.set: the value must be a string (JSON.stringify it first)")
                self.kv_set(key, args[1].encode("utf-8", "surrogatepass"))
                return None
            return self.kv_del(key)
        raise CapError(f"{cap} has no operation {str(op)[:40]!r}")

    # -- log -------------------------------------------------------------------------------------

    def console(self, line: str) -> None:
        """`console.*` of a JS step: a log line whether or not `log` is declared (it is the step's
        diagnostic output, like stderr; `host.log` is the capability)."""
        self.log(line)

    def log(self, line: str) -> None:
        line = self.ctx.secrets.redact(well_formed(line[:LOG_LINE_MAX]))
        if len(self.logs) >= LOG_LINES_MAX:
            self.logs_dropped += 1
            return
        self.logs.append(line)
        if self.ctx.log is not None:
            try:
                self.ctx.log(line)
            except Exception:
                pass  # a broken sink never fails the step

    # -- kv --------------------------------------------------------------------------------------

    def _kv(self) -> KvStore:
        return KvStore.for_data(self.ctx.data_dir)

    def kv_get(self, key: str) -> bytes | None:
        try:
            return self._kv().get(self.ctx.tenant, self.ctx.workflow, key)
        except KvError as e:
            raise CapError(str(e)) from None

    def kv_set(self, key: str, value: bytes) -> None:
        try:
            self._kv().set(self.ctx.tenant, self.ctx.workflow, key, value)
        except KvError as e:
            raise CapError(str(e)) from None

    def kv_del(self, key: str) -> bool:
        try:
            return self._kv().delete(self.ctx.tenant, self.ctx.workflow, key)
        except KvError as e:
            raise CapError(str(e)) from None

    # -- http ------------------------------------------------------------------------------------

    def http(self, method: str, url: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> bytes:
        """The response body of `method url` (2xx only), redacted; CapError otherwise."""
        left = min(HTTP_TIMEOUT_S, self.deadline - time.monotonic())
        shown = self.ctx.secrets.redact(url[:300])
        if left <= 0:
            raise CapError(f"http {method} {shown}: the step's time ran out")
        try:
            out = trio.run(self._http, method, url, body, headers or [], left)
        except Refused as e:
            raise CapError(self.ctx.secrets.redact(f"http {method} {shown}: {e.text}")) from None
        except trio.TooSlowError:
            raise CapError(f"http {method} {shown}: timed out after {left:.1f}s") from None
        return self.ctx.secrets.redact(out.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")

    async def _http(self, method: str, url: str, body: bytes, headers: list[tuple[str, str]], left: float) -> bytes:
        secrets = self.ctx.secrets
        body = secrets.resolve(body.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
        custom = [(k, secrets.resolve(v)) for k, v in headers]
        with trio.fail_after(left):
            t = parse(secrets.resolve(url))
            first = t.origin
            for _hop in range(HTTP_MAX_REDIRECTS + 1):
                status, rh, data = await _request(t, method, custom if t.origin == first else [], body,
                                                  self.ctx.allow_hosts)
                if status in REDIRECTS:
                    loc = rh.get("location", "").strip()
                    if not loc:
                        raise Refused(f"HTTP {status} without a Location")
                    nxt = parse(urljoin(t.url, loc))
                    if nxt.userinfo is None and nxt.origin == t.origin:
                        nxt.userinfo = t.userinfo
                    if status in (301, 302, 303) and method == "POST":
                        method, body = "GET", b""
                    t = nxt
                    continue
                if not 200 <= status < 300:
                    raise Refused(f"HTTP {status}")
                return data
            raise Refused(f"too many redirects (more than {HTTP_MAX_REDIRECTS})")


def well_formed(text: str) -> str:
    """`text` without lone surrogates (a JS string may hold them; they cannot be UTF-8 encoded)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _as_str(v, what: str) -> str:
    if not isinstance(v, str):
        raise CapError(f"{what} must be a string")
    return v


def _headers(raw) -> list[tuple[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise CapError("http: headers must be an object of string values")
    return [(k.strip(), v) for k, v in raw.items() if k.strip().lower() not in HOP_HEADERS]


async def _request(t: Target, method: str, headers: list[tuple[str, str]], body: bytes,
                   allow_hosts) -> tuple[int, dict[str, str], bytes]:
    r = await exchange(t, headers, allow_hosts, method=method, body=body, accept="*/*", user_agent=HTTP_USER_AGENT,
                       max_body=HTTP_MAX_BODY, over_cap="refuse", prefix="", coded=False)
    return r.status, r.headers, r.body


# -- the wasm ABI ----------------------------------------------------------------------------------

_current = threading.local()  # the CapHost of the step running on this thread


class bound:
    """`with bound(host):` makes `host` the one the `wb` imports of this thread's wasm calls use."""

    def __init__(self, host: CapHost):
        self.host = host

    def __enter__(self):
        self.prev = getattr(_current, "host", None)
        _current.host = self.host
        return self.host

    def __exit__(self, *exc):
        _current.host = self.prev


def _mem(caller) -> wasmtime.Memory:
    mem = caller.get("memory")
    if not isinstance(mem, wasmtime.Memory):
        raise CapError("the module exports no `memory`")
    return mem


def _read(caller, ptr: int, n: int) -> bytes:
    mem = _mem(caller)
    ptr &= 0xFFFFFFFF
    n &= 0xFFFFFFFF
    if ptr + n > mem.data_len(caller):
        raise CapError("pointer out of bounds")
    return mem.read(caller, ptr, ptr + n)


def _text(caller, ptr: int, n: int) -> str:
    return _read(caller, ptr, n).decode("utf-8", "replace")


def _guarded(cap: str | None, fn: Callable[..., int], fail: int = -1) -> Callable[..., int]:
    def call(caller, *args):
        host: CapHost | None = getattr(_current, "host", None)
        if host is None:
            raise wasmtime.Trap("wb: no step is running")
        if cap is not None and cap not in host.uses:  # cannot happen: instantiation checks it
            raise wasmtime.Trap(not_declared(cap))
        try:
            return fn(host, caller, *args)
        except CapError as e:
            host.result = host.ctx.secrets.redact(str(e)).encode()
            return fail
        except wasmtime.Trap:
            raise
        except Exception as e:  # a host-side failure is a failed call, never a crash of the host
            host.result = f"{fn.__name__[3:]}: internal error ({type(e).__name__})".encode()
            return fail
    return call


def _w_log(host, caller, p, n):
    host.log(_text(caller, p, n))


def _w_http_get(host, caller, p, n):
    host.result = host.http("GET", _text(caller, p, n))
    return len(host.result)


def _w_http_post(host, caller, p, n, bp, bn):
    host.result = host.http("POST", _text(caller, p, n), _read(caller, bp, bn))
    return len(host.result)


def _w_kv_get(host, caller, p, n):
    v = host.kv_get(_text(caller, p, n))
    if v is None:
        host.result = b""
        return -1
    host.result = v
    return len(v)


def _w_kv_set(host, caller, p, n, vp, vn):
    host.kv_set(_text(caller, p, n), _read(caller, vp, vn))
    return 0


def _w_kv_del(host, caller, p, n):
    return 1 if host.kv_del(_text(caller, p, n)) else 0


def _w_result(host, caller, p, cap):
    data = host.result[: max(0, cap & 0xFFFFFFFF)]
    mem = _mem(caller)
    p &= 0xFFFFFFFF
    if p + len(data) > mem.data_len(caller):
        raise CapError("pointer out of bounds")
    mem.write(caller, data, p)
    return len(data)


_IMPLS = {"log": (_w_log, -1), "http_get": (_w_http_get, -1), "http_post": (_w_http_post, -1),
          "kv_get": (_w_kv_get, -2), "kv_set": (_w_kv_set, -2), "kv_del": (_w_kv_del, -2),
          "result": (_w_result, -1)}


def define_wasm_imports(linker: wasmtime.Linker) -> None:
    """Define the `wb` functions in `linker` (they act for the CapHost `bound` on the calling thread)."""
    vt = {"i32": wasmtime.ValType.i32()}
    for name, (cap, params, results) in WASM_FUNCS.items():
        impl, fail = _IMPLS[name]
        ty = wasmtime.FuncType([vt[p] for p in params], [vt[r] for r in results])
        fn = _guarded(cap, impl, fail)
        if not results:
            fn = _no_result(fn)
        linker.define_func(WASM_MODULE, name, ty, fn, access_caller=True)


def _no_result(fn):
    def call(caller, *args):
        fn(caller, *args)
        return None
    return call


# -- the JS prelude's channel ----------------------------------------------------------------------

FRAME_MAGIC = b"\x00WBH"


class FrameReader:
    """Reads a JS step's stderr: host-call frames (MAGIC json \\n) go to `on_frame`, the rest is kept
    as the step's own stderr (capped). Frames may arrive split over several writes."""

    def __init__(self, on_frame: Callable[[dict], None], cap: int = 64 << 10, frame_max: int = 80 << 20):
        self.on_frame = on_frame
        self.buf = bytearray()
        self.stderr = bytearray()
        self.cap = cap
        self.frame_max = frame_max
        self.broken: str | None = None
        self._scan = 0

    def __call__(self, data: bytes) -> int:
        if self.broken:
            return len(data)  # the channel is closed for this step; nothing more is kept
        try:
            self.buf += data
            self._drain()
        except Exception as e:  # never let an exception escape into wasmtime's callback
            self.broken = f"host channel: {type(e).__name__}: {str(e)[:200]}"
            self.buf = bytearray()
        return len(data)

    def _drain(self) -> None:
        while self.buf:
            if self.buf.startswith(FRAME_MAGIC):
                nl = self.buf.find(b"\n", self._scan)  # only what arrived since the last look
                if nl < 0:
                    self._scan = len(self.buf)
                    if len(self.buf) > self.frame_max:
                        raise ValueError("a host call over the size limit")
                    return
                self._scan = 0
                raw = bytes(self.buf[len(FRAME_MAGIC):nl])
                del self.buf[: nl + 1]
                self.on_frame(json.loads(raw.decode("utf-8", "surrogatepass")))
                continue
            if FRAME_MAGIC.startswith(bytes(self.buf[: len(FRAME_MAGIC)])) and len(self.buf) < len(FRAME_MAGIC):
                return  # maybe the start of a frame
            at = self.buf.find(FRAME_MAGIC[:1], 1)
            at = len(self.buf) if at < 0 else at
            room = self.cap - len(self.stderr)
            if room > 0:
                self.stderr += self.buf[: min(at, room)]
            del self.buf[:at]


def ticks(seconds: float, tick: float) -> int:
    return max(1, math.ceil(seconds / tick))
