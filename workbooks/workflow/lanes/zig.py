"""The c and zig lanes: PyPI `ziglang` (zig's own clang for C, zig for Zig), targeting wasm32-wasi.

Zig compiles wasi-libc and compiler-rt once into its global cache; that cache lives beside the
build cache (`<cache_dir>/zig`, or `WB_ZIG_CACHE_DIR`) so only the first C build on a machine pays
for it (tens of seconds), never a download. `WB_ZIG` names another zig binary.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from . import sandbox
from .base import LaneStatus, run_compiler, tool_version, unavailable

HOW = "the PyPI package `ziglang` is part of the project's dependencies: run `ops/setup.sh` (or `.venv/bin/pip install ziglang`)"


def zig_binary() -> str | None:
    override = (os.environ.get("WB_ZIG") or "").strip()
    if override:
        return override
    spec = importlib.util.find_spec("ziglang")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "zig")


def _ro_paths(exe: str) -> list[str]:
    """What the sandbox must show of the toolchain: the ziglang package (binary + its lib/), and the
    folder of an overriding WB_ZIG."""
    paths = []
    spec = importlib.util.find_spec("ziglang")
    if spec is not None and spec.submodule_search_locations:
        paths.append(os.path.realpath(list(spec.submodule_search_locations)[0]))
    d = os.path.dirname(os.path.realpath(exe))
    if d not in paths and not d.startswith("/usr/"):
        paths.append(d)
    return paths


def zig_cache(cache_dir: Path) -> Path:
    override = (os.environ.get("WB_ZIG_CACHE_DIR") or "").strip()
    return Path(override) if override else cache_dir / "zig"


class _ZigBase:
    compiles = True

    def status(self) -> LaneStatus:
        exe = zig_binary()
        if exe is None:
            return LaneStatus(False, None, f"lang={self.lang} needs zig, which is missing: {HOW}")
        if not os.access(exe, os.X_OK):
            return LaneStatus(False, None, f"lang={self.lang} needs zig, but {exe} is not an executable: {HOW}")
        why = sandbox.problem()
        if why:
            return LaneStatus(False, None, f"lang={self.lang}: {why}")
        v = tool_version(exe, ["version"])
        if v is None:
            return LaneStatus(False, None, f"lang={self.lang} needs zig, but `{exe} version` failed: {HOW}")
        return LaneStatus(True, f"zig {v} (wasm32-wasi)", None)

    def _run(self, argv: list[str], src: Path, out: Path, cache_dir: Path) -> None:
        exe = zig_binary()
        if exe is None:
            raise unavailable(f"lang={self.lang} needs zig, which is missing: {HOW}")
        cache = zig_cache(cache_dir).resolve()
        cache.mkdir(parents=True, exist_ok=True)
        run_compiler("zig", [exe, *argv], src, out.parent, ro=_ro_paths(exe), rw=[str(cache)],
                     env={"ZIG_GLOBAL_CACHE_DIR": str(cache), "ZIG_LOCAL_CACHE_DIR": str(out.parent / ".zig-cache")})


class CLane(_ZigBase):
    lang = "c"
    entry = "main.c"

    def compile(self, src: Path, out: Path, cache_dir: Path) -> None:
        self._run(["cc", "-target", "wasm32-wasi", "-O2", "-s", "-I.", self.entry, "-o", str(out)], src, out, cache_dir)


class ZigLane(_ZigBase):
    lang = "zig"
    entry = "main.zig"

    def compile(self, src: Path, out: Path, cache_dir: Path) -> None:
        self._run(["build-exe", "-target", "wasm32-wasi", "-O", "ReleaseSafe", "-fstrip", self.entry,
                   f"-femit-bin={out}"], src, out, cache_dir)
