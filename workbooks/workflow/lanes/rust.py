"""The rust lane: Debian's rustc with its wasm32-wasi standard library, linked by lld-14.

Debian's packages (`rustc`, `libstd-rust-dev-wasm32`, `lld-14`) are what `ops/setup.sh --test`
installs; without them the lane is unavailable (nothing is downloaded). `WB_RUSTC` and `WB_WASM_LD`
name other binaries. A component is one crate: `src/main.rs` (or the block's text), no Cargo deps.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import sandbox
from .base import LaneStatus, run_compiler, tool_version, unavailable

HOW = "run `ops/setup.sh --test`, or `apt-get install -y rustc libstd-rust-dev-wasm32 lld-14`"
RUSTLIB = Path("/usr/lib/rustlib")


def _rustc() -> str:
    return (os.environ.get("WB_RUSTC") or "").strip() or "/usr/bin/rustc"


def _linker() -> str:
    return (os.environ.get("WB_WASM_LD") or "").strip() or "/usr/bin/lld-14"


def _target() -> str | None:
    """The WASI target this rustc's std exists for (Debian's 1.63 calls it wasm32-wasi; newer
    releases renamed it wasm32-wasip1)."""
    for t in ("wasm32-wasi", "wasm32-wasip1"):
        if (RUSTLIB / t / "lib").is_dir():
            return t
    return None


class RustLane:
    lang = "rust"
    entry = "src/main.rs"
    compiles = True

    def status(self) -> LaneStatus:
        rustc, ld, target = _rustc(), _linker(), _target()
        missing = []
        if not os.access(rustc, os.X_OK):
            missing.append(f"rustc ({rustc})")
        if target is None:
            missing.append(f"the wasm32-wasi standard library ({RUSTLIB}/wasm32-wasi)")
        if not os.access(ld, os.X_OK):
            missing.append(f"the wasm linker lld-14 ({ld})")
        if missing:
            return LaneStatus(False, None, f"lang=rust needs Debian's rust toolchain; missing: {', '.join(missing)}: {HOW}")
        why = sandbox.problem()
        if why:
            return LaneStatus(False, None, f"lang=rust: {why}")
        v = tool_version(rustc, ["--version"])
        if v is None:
            return LaneStatus(False, None, f"lang=rust: `{rustc} --version` failed: {HOW}")
        return LaneStatus(True, f"{v} ({target}, {os.path.basename(ld)})", None)

    def compile(self, src: Path, out: Path, cache_dir: Path) -> None:
        st = self.status()
        if not st.available:
            raise unavailable(st.why or "lang=rust is unavailable")
        ro = sorted({d for d in (os.path.dirname(os.path.realpath(p)) for p in (_rustc(), _linker()))
                     if not d.startswith("/usr/")})  # an overriding WB_RUSTC / WB_WASM_LD's folder
        run_compiler("rustc", [
            _rustc(), "--edition", "2021", "--crate-name", "component", "--crate-type", "bin",
            "--target", _target() or "wasm32-wasi", "-C", "opt-level=2", "-C", "strip=symbols",
            "-C", f"linker={_linker()}", f"--remap-path-prefix={src}=/component",
            "--error-format", "human", "--color", "never", self.entry, "-o", str(out),
        ], src, out.parent, ro=ro)
