"""Language lanes: how a component's source becomes something a step can run.

One module per toolchain: `wat.py` (wasmtime), `zig.py` (c and zig through PyPI `ziglang`),
`rust.py` (Debian's rustc + lld-14), `js.py` (no compile: QuickJS-NG evaluates the source).
`base.py` runs a compiler (in `sandbox.py`'s bubblewrap sandbox), `sources.py` gathers the files
a build reads (a confined `:dir`), `wasm_exports.py` tells a command from a reactor. README.md:
the lanes, the cache, the settings.
`lang=agent` has no lane here: it runs through the agent loop.
"""

from __future__ import annotations

from .base import BuildError, LaneStatus
from .js import JsLane
from .rust import RustLane
from .wat import WatLane
from .zig import CLane, ZigLane

LANES = {lane.lang: lane for lane in (JsLane(), WatLane(), CLane(), ZigLane(), RustLane())}
AGENT_WHY = "lang=agent runs through the agent loop, not as a wasm build"

__all__ = ["LANES", "AGENT_WHY", "BuildError", "LaneStatus"]
