"""Component source → something a step runs, through a content-addressed build cache.

Why a cache keyed by content: a workflow runs again and again (schedules, every deploy), and a
compile costs seconds; the same source with the same toolchain gives the same module, so the key
is sha256(lang, toolchain version, the block's text, `:deps`, and every file of a `:dir` build by
path) and the module lives at `<cache_dir>/<key>.wasm`. A second build of an unchanged component
compiles nothing (not even `rustc --version`: versions are remembered per binary). A new module
is written to a temp file and renamed into place, so a reader never sees half a module; builders
of the same key take a lock file (`<cache_dir>/.locks/<key>.lock`), so concurrent builds (threads
or processes) compile once and the others get the cached result.

`build` is blocking (callers use a thread); lanes are in `workbooks/workflow/lanes/`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from workbooks.workflow.lanes import AGENT_WHY, LANES
from workbooks.workflow.lanes.base import BuildError, build_timeout, failed, unavailable
from workbooks.workflow.lanes.sources import collect, materialize, text_bytes
from workbooks.workflow.lanes.wasm_exports import NotWasm, func_exports, kind_of
from workbooks.workflow.types import LANES as ALL_LANGS, Component

__all__ = ["Built", "BuildError", "build", "lanes_status", "cache_key", "default_cache_dir"]

KEY_VERSION = b"wb-build-1"
WASM_MAX = 64 << 20  # a built module larger than this is refused


@dataclass
class Built:
    lang: str
    key: str  # hex sha256 (the cache key)
    wasm: Path | None  # the WASI module (command with _start, or reactor exporting `run`)
    js: str | None  # lang js: the component's source as written (the executor adds its prelude)
    kind: str  # "command" | "reactor" | "js"
    cached: bool  # no compiler ran (js never compiles, so it is always True)
    ms: float

    def to_dict(self) -> dict:
        return {"lang": self.lang, "key": self.key, "wasm": str(self.wasm) if self.wasm else None,
                "kind": self.kind, "cached": self.cached, "ms": round(self.ms, 3)}


def default_cache_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "build" / "cache"


def lanes_status() -> dict[str, dict]:
    """Per lang: {available, toolchain, why} (why says what is missing and how to get it)."""
    out: dict[str, dict] = {}
    for lang in ALL_LANGS:
        if lang == "agent":
            out[lang] = {"available": False, "toolchain": None, "why": AGENT_WHY}
        else:
            out[lang] = LANES[lang].status().to_dict()
    return out


def _lane(lang: str):
    if lang == "agent":
        raise unavailable(AGENT_WHY)
    lane = LANES.get(lang)
    if lane is None:
        if not lang:
            raise unavailable("the component has no source block with a language, so there is nothing to build")
        raise unavailable(f"no lane for lang={lang[:40]!r}: the lanes are {', '.join(sorted(LANES))} (and agent)")
    st = lane.status()
    if not st.available:
        raise unavailable(st.why or f"lang={lang} is unavailable")
    return lane, st.toolchain or ""


def _files(component: Component, lane, tree: Path | None) -> dict[str, bytes]:
    if component.dir:
        return collect(tree, component.dir, lane.entry, component.src)
    if not component.src.strip():
        raise failed(f"component {component.name!r} has an empty source block")
    return {lane.entry: text_bytes(component.src)}


def cache_key(lang: str, toolchain: str, src: str, deps: tuple[str, ...], files: dict[str, bytes]) -> str:
    """sha256 over every input of a build, each length-prefixed (no two inputs hash alike)."""
    h = hashlib.sha256(KEY_VERSION)

    def put(b: bytes) -> None:
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)

    put(text_bytes(lang))
    put(text_bytes(toolchain))
    put(text_bytes(src))
    put(str(len(deps)).encode())
    for d in deps:
        put(text_bytes(d))
    put(str(len(files)).encode())
    for rel in sorted(files):
        put(os.fsencode(rel))  # a file name that is not UTF-8 arrives surrogate-escaped
        put(files[rel])
    return h.hexdigest()


def _cached_kind(path: Path) -> str | None:
    """The kind of a module in the cache, or None when there is none (or it is unreadable)."""
    try:
        with open(path, "rb") as f:
            return kind_of(func_exports(f))
    except (OSError, NotWasm):
        return None


def _check_module(path: Path) -> str:
    """Validate a fresh module (wasmtime's validator, the same features the executor's engine
    has) and tell its kind; BuildError(build_failed) when it cannot run as a step."""
    size = path.stat().st_size
    if size > WASM_MAX:
        raise failed(f"the built module is {size >> 20} MiB, over the {WASM_MAX >> 20} MiB limit")
    data = path.read_bytes()
    from workbooks.oql.kernel import _EngineHolder  # the process's one engine (same features as the executor)

    try:
        wasmtime.Module.validate(_EngineHolder.get(), data)
    except wasmtime.WasmtimeError as e:
        raise failed(f"the module is not valid WebAssembly: {str(e).strip()}") from None
    try:
        with open(path, "rb") as f:
            kind = kind_of(func_exports(f))
    except NotWasm as e:
        raise failed(f"the module is not valid WebAssembly: {e}") from None
    if kind is None:
        raise failed("the module exports neither `_start` (a WASI command: stdin → stdout) nor `run` (a reactor)")
    return kind


def build(component: Component, *, cache_dir: Path, tree: Path | None = None) -> Built:
    """Build `component` (or find it in the cache). Raises BuildError: lane_unavailable when its
    lang has no installed toolchain, build_failed with the compiler's output (first 4 KB)."""
    t0 = time.perf_counter()
    lang = component.lang
    lane, toolchain = _lane(lang)
    files = _files(component, lane, tree)
    key = cache_key(lang, toolchain, component.src, component.deps, files)
    if not lane.compiles:  # js: the source as written is what runs
        return Built(lang=lang, key=key, wasm=None, js=files[lane.entry].decode("utf-8", "replace"), kind="js",
                     cached=True, ms=(time.perf_counter() - t0) * 1000)
    cache_dir = Path(cache_dir).resolve()  # absolute: the sandbox binds it by path
    final = cache_dir / f"{key}.wasm"
    kind = _cached_kind(final)
    if kind is not None:
        return Built(lang, key, final, None, kind, True, (time.perf_counter() - t0) * 1000)
    locks = cache_dir / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{key}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            kind = _cached_kind(final)  # built by someone else while we waited
            if kind is not None:
                return Built(lang, key, final, None, kind, True, (time.perf_counter() - t0) * 1000)
            kind = _compile(lane, files, cache_dir, final)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return Built(lang, key, final, None, kind, False, (time.perf_counter() - t0) * 1000)


def _sweep(cache_dir: Path, scratch: Path) -> None:
    """Remove what a build killed mid-way (power cut, kill -9) left: work dirs and temp modules
    older than any live build can be (the build timeout, plus a margin)."""
    cutoff = time.time() - build_timeout() - 300
    for p in [*scratch.iterdir(), *cache_dir.glob(".*.tmp")]:
        try:
            if p.lstat().st_mtime < cutoff:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink()
        except OSError:
            pass


def _compile(lane, files: dict[str, bytes], cache_dir: Path, final: Path) -> str:
    scratch = cache_dir / ".work"
    scratch.mkdir(parents=True, exist_ok=True)
    _sweep(cache_dir, scratch)
    work = Path(tempfile.mkdtemp(prefix=f"{lane.lang}-", dir=scratch))
    try:
        src = work / "src-root"
        src.mkdir()
        materialize(files, src)
        out = work / "out.wasm"
        lane.compile(src, out, cache_dir)
        if not out.is_file():
            raise failed(f"the {lane.lang} compiler reported success but wrote no module")
        kind = _check_module(out)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.stem[:16]}-", suffix=".tmp", dir=cache_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                with open(out, "rb") as src_f:
                    shutil.copyfileobj(src_f, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return kind
    finally:
        shutil.rmtree(work, ignore_errors=True)
