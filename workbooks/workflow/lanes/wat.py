"""The wat lane: WebAssembly text compiled by wasmtime itself (no toolchain to install)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import wasmtime

from .base import LaneStatus, failed


class WatLane:
    lang = "wat"
    entry = "main.wat"
    compiles = True

    def status(self) -> LaneStatus:
        try:
            v = metadata.version("wasmtime")
        except metadata.PackageNotFoundError:
            v = "unknown"
        return LaneStatus(True, f"wasmtime {v} (wat2wasm)", None)

    def compile(self, src: Path, out: Path, cache_dir: Path) -> None:
        text = (src / self.entry).read_bytes()
        try:
            wasm = bytes(wasmtime.wat2wasm(text))
        except wasmtime.WasmtimeError as e:
            raise failed(str(e).strip()) from None
        out.write_bytes(wasm)
