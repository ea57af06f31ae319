"""The in-process StepExecutor: build (W1's content-addressed cache) then run the step, in threads.

Why threads: a build runs a compiler and a step runs wasm, both blocking; the wasm step's own
limits (epoch deadline, fuel, memory cap) stop it, so a thread is never left running past the
step's time limit. At most `max_parallel` steps run at once (the engine's waves are <= 8).
Works under trio (the CLI, the runner worker) and asyncio. Never raises for a failing step:
a build error is a StepResult with the build's code and message (first 4 KiB).
"""

from __future__ import annotations

import time
from pathlib import Path

import sniffio

from workbooks.workflow.types import MAX_PARALLEL, Component, StepContext, StepResult


async def _in_thread(fn, *args):
    if sniffio.current_async_library() == "trio":
        import trio

        return await trio.to_thread.run_sync(fn, *args)
    import asyncio

    return await asyncio.to_thread(fn, *args)


def _token():
    lib = sniffio.current_async_library()
    if lib == "trio":
        import trio

        return lib, trio.lowlevel.current_trio_token()
    import asyncio

    return lib, asyncio.get_running_loop()


def _semaphore(lib: str, n: int):
    if lib == "trio":
        import trio

        return trio.Semaphore(n)
    import asyncio

    return asyncio.Semaphore(n)


def build_and_run(component: Component, input: bytes, ctx: StepContext) -> StepResult:
    """Blocking: build `component` (or take it from the cache), then run it once on `input`."""
    t0 = time.perf_counter()
    try:
        from workbooks.workflow.build import BuildError, build
    except ImportError as e:
        return StepResult(ok=False, code="lane_unavailable", error=f"the build module is missing: {e}",
                          lane=component.lang)
    from workbooks.workflow.step import run_step

    cache = Path(ctx.cache_dir) if ctx.cache_dir else Path(ctx.data_dir) / "build" / "cache"
    try:
        built = build(component, cache_dir=cache, tree=ctx.tree)
    except BuildError as e:
        msg = getattr(e, "message", None) or str(e)
        return StepResult(ok=False, code=getattr(e, "code", "build_failed") or "build_failed",
                          error=ctx.secrets.redact(str(msg))[:4096], lane=component.lang,
                          ms=(time.perf_counter() - t0) * 1000)
    except Exception as e:  # a broken build host is this step's error, not the run's crash
        return StepResult(ok=False, code="build_failed", error=ctx.secrets.redact(f"{type(e).__name__}: {e}")[:4096],
                          lane=component.lang, ms=(time.perf_counter() - t0) * 1000)
    res = run_step(built, input, ctx, tuple(component.uses))
    res.lane = component.lang
    res.cached = bool(built.cached)
    res.ms = (time.perf_counter() - t0) * 1000
    return res


class LocalExecutor:
    """Runs steps in this process (`wbx workflow run`, the pool's runner workers)."""

    def __init__(self, *, max_parallel: int = MAX_PARALLEL):
        if max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        self.max_parallel = max_parallel
        self._sems: dict = {}

    async def run(self, component: Component, input: bytes, ctx: StepContext) -> StepResult:
        key = _token()
        sem = self._sems.get(key)
        if sem is None:
            sem = self._sems[key] = _semaphore(key[0], self.max_parallel)
        async with sem:
            try:
                return await _in_thread(build_and_run, component, input, ctx)
            except Exception as e:  # never raises for a failing step
                return StepResult(ok=False, code="error", error=f"{type(e).__name__}: {e}"[:4096], lane=component.lang)

    async def aclose(self) -> None:
        self._sems.clear()
