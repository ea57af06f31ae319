"""What the workflow parts share: a component, a step's limits and context, a step's result.

A component comes from the kernel's `tangle_plan` (one entry of a world's `components`). A step is
a component run once on one input: a stdin→stdout WASI filter (or a JS `run(input)`), with exactly
the capabilities its component declares (`:uses`), within its limits. Executors (in-process for
`wbx workflow run`, the pool's runner workers on the server) all answer with a StepResult; they
never raise for a failing step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

from workbooks.agent.secrets import Secrets
from workbooks.errors import WorkbooksError

INPUT_MAX = 64 * 1024 * 1024  # bytes a step may read (the original's cap)
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_FUEL = 5_000_000_000
DEFAULT_MEMORY_MB = 512
MAX_PARALLEL = 8  # ready steps run at once in a wave
CAPABILITIES = frozenset({"http", "kv", "log"})
LANES = ("js", "wat", "c", "zig", "rust", "agent")

# StepResult.code values (stable; telemetry and the API show them)
CODES = ("ok", "lane_unavailable", "build_failed", "timeout", "fuel", "memory", "trap", "capability",
         "input_too_large", "bad_output", "runner_lost", "error",
         "no_runner", "overloaded")  # pool: no runner registered; the runner queue full (pool_exec)


class StepError(WorkbooksError):
    code = "step_error"


@dataclass(frozen=True)
class Component:
    name: str
    lang: str
    src: str
    uses: tuple[str, ...] = ()
    inp: str | None = None  # `:in` (the producer's `:out` it reads)
    out: str | None = None  # `:out`
    persist: bool = False
    dir: str | None = None  # `:dir path` inside the workbook's tree
    deps: tuple[str, ...] = ()

    @classmethod
    def from_plan(cls, d: dict) -> "Component":
        return cls(name=str(d["name"]), lang=str(d.get("lang") or ""), src=str(d.get("src") or ""),
                   uses=tuple(d.get("uses") or ()), inp=d.get("in"), out=d.get("out"),
                   persist=bool(d.get("persist")), dir=d.get("dir"), deps=tuple(d.get("deps") or ()))

    def to_dict(self) -> dict:
        return {"name": self.name, "lang": self.lang, "src": self.src, "uses": list(self.uses), "in": self.inp,
                "out": self.out, "persist": self.persist, "dir": self.dir, "deps": list(self.deps)}


def _env_num(env, name: str, default, kind):
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        v = kind(raw)
    except ValueError:
        raise StepError(f"{name}={raw[:40]!r} is not a number") from None
    if v <= 0:
        raise StepError(f"{name} must be positive")
    return v


@dataclass(frozen=True)
class Limits:
    timeout_s: float = DEFAULT_TIMEOUT_S  # wall clock per step (WB_STEP_TIMEOUT_S)
    fuel: int = DEFAULT_FUEL  # wasmtime fuel per step (WB_STEP_FUEL)
    memory_mb: int = DEFAULT_MEMORY_MB  # linear memory cap (WB_STEP_MEMORY_MB)
    input_max: int = INPUT_MAX
    output_max: int = INPUT_MAX

    @classmethod
    def from_env(cls, env=None) -> "Limits":
        env = os.environ if env is None else env
        return cls(timeout_s=_env_num(env, "WB_STEP_TIMEOUT_S", DEFAULT_TIMEOUT_S, float),
                   fuel=_env_num(env, "WB_STEP_FUEL", DEFAULT_FUEL, int),
                   memory_mb=_env_num(env, "WB_STEP_MEMORY_MB", DEFAULT_MEMORY_MB, int))

    def to_dict(self) -> dict:
        return {"timeout_s": self.timeout_s, "fuel": self.fuel, "memory_mb": self.memory_mb,
                "input_max": self.input_max, "output_max": self.output_max}


@dataclass
class StepContext:
    """Where and for whom a step runs (everything a capability needs; nothing else reaches the step)."""

    tenant: str
    workflow: str  # the world's name
    run_id: str
    step_dir: Path  # the only directory preopened for the step (created empty per step)
    data_dir: Path
    tree: Path | None = None  # the workbook's tree (for `:dir` builds), confined
    secrets: Secrets = field(default_factory=Secrets)  # `{{secret:KEY}}` at egress (http), redaction
    allow_hosts: frozenset[str] = frozenset()  # WB_FETCH_ALLOW_HOSTS, as the agent's fetch
    log: Callable[[str], None] | None = None  # the `log` capability's sink (the run's telemetry)
    limits: Limits = field(default_factory=Limits)
    cache_dir: Path | None = None  # build cache (default $WB_DATA/build/cache)


@dataclass
class StepResult:
    ok: bool
    output: bytes = b""
    code: str = "ok"  # one of CODES
    error: str | None = None  # human message (compiler output: first 4 KB)
    ms: float = 0.0
    lane: str = ""
    cached: bool = False  # the build came from the cache
    fuel_used: int | None = None
    logs: list[str] = field(default_factory=list)
    attempts: int = 1

    def to_dict(self) -> dict:
        return {"ok": self.ok, "code": self.code, "error": self.error, "ms": round(self.ms, 3), "lane": self.lane,
                "cached": self.cached, "fuel_used": self.fuel_used, "attempts": self.attempts,
                "output_bytes": len(self.output)}


class StepExecutor(Protocol):
    """Runs one step: in this process (`workbooks.workflow.local_exec`) or in a pool runner worker."""

    async def run(self, component: Component, input: bytes, ctx: StepContext) -> StepResult: ...

    async def aclose(self) -> None: ...


RunEvent = Callable[[dict], Awaitable[None]]
Json = Any
