"""Steps in the pool: `PoolStepExecutor` sends each step to a runner worker and waits for its result.

Why: the server must never run a step in a web process, and a 30 s step must never delay a render.
Runners are processes of their own (workbooks.workflow.worker) behind a broker of their own (the
`runner-broker` child of `wbx serve`, a second workbooks.pool.broker instance), so they are
supervised, restarted, drained and scaled like OQL workers, and reachable from other machines
over the same CURVE tcp endpoints (`wbx serve --runner-tcp`, `wbx worker --role runner`).

What crosses: msgpack meta {v, component, ctx} and the input bytes (a big input goes through
shared memory on this host, see workbooks.pool.bulk); back comes the StepResult with its output.
The context's `log` callable cannot cross processes: the step's log lines come back in
StepResult.logs and are handed to `ctx.log` when the result arrives.

Failures, each a StepResult (run() never raises for a failing step):
- the runner dies mid-step (kill -9, OOM): the broker answers `worker_lost` at once (it saw the
  connection close) and the step is sent again ONCE, to whichever runner is free (`attempts=2`),
  unless the component is `:persist` (it may have written state: code `runner_lost`). Lost twice:
  `runner_lost`. The runner broker itself killed mid-step counts the same (the client does not
  re-send what the dead broker held, as it does for pure kernel calls): the step may still finish
  on its runner, unseen, so only a step that may run twice is sent again.
- no runner registered: code `no_runner` after the broker's short wait (WB_POOL_NO_WORKERS_MS,
  default 3 s); the queue full (`wbx serve`'s runner broker holds WB_RUNNER_QUEUE, default 64,
  waiting steps): code `overloaded` at once.
- the run never hangs: the call's deadline is the time a step may wait for a free runner
  (WB_STEP_QUEUE_S, default 300) + limits.timeout_s + a margin for the build (WB_STEP_MARGIN_S,
  default 130: a cold compile may take W1's 120 s). The step's own wall clock is enforced inside
  the runner; this deadline is the backstop (code `timeout`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgpack

from workbooks.pool import endpoints as E
from workbooks.pool import protocol as P
from workbooks.pool.client import AsyncPoolClient, PoolError
from workbooks.workflow.types import Component, StepContext, StepResult
from workbooks.workflow.worker import META_VERSION

MAX_ATTEMPTS = 2  # a step whose runner died is sent once more (not a :persist one)


def _env_s(name: str, default: float) -> float:
    raw = (os.environ.get(name) or "").strip()
    try:
        v = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}={raw[:40]!r} is not a number of seconds") from None
    if v < 0:
        raise ValueError(f"{name} must not be negative")
    return v


def client_curve(data_dir) -> tuple[bytes, bytes, bytes]:
    """CURVE keys for a tcp runner endpoint: the pool's server key and the client key (`wbx ops keys`)."""
    kd = E.keys_dir(data_dir)
    server_public, _ = E.load_keypair(kd / "server.key")
    client_public, client_secret = E.load_keypair(kd / "client.key_secret")
    return server_public, client_public, client_secret


def step_meta(component: Component, ctx: StepContext) -> bytes:
    """What a runner needs of the step (workbooks.workflow.worker reads it back)."""
    return msgpack.packb({
        "v": META_VERSION,
        "component": component.to_dict(),
        "ctx": {
            "tenant": ctx.tenant, "workflow": ctx.workflow, "run_id": ctx.run_id,
            "step_dir": str(ctx.step_dir), "data_dir": str(ctx.data_dir),
            "tree": str(ctx.tree) if ctx.tree is not None else None,
            "cache_dir": str(ctx.cache_dir) if ctx.cache_dir is not None else None,
            "limits": ctx.limits.to_dict(),
            "allow_hosts": sorted(ctx.allow_hosts),
            "secrets": {"values": dict(ctx.secrets.values), "redact_only": sorted(ctx.secrets.redact_only)},
        },
    }, use_bin_type=True)


def decode_result(body) -> tuple[StepResult, dict]:
    """A runner's reply body -> (StepResult, the runner that ran it {child_id, pid, host})."""
    d = msgpack.unpackb(body, raw=False, strict_map_key=False)
    if not isinstance(d, dict) or not isinstance(d.get("ok"), bool):
        raise ValueError("a runner reply that is not a step result")
    logs = d.get("logs") or []
    res = StepResult(ok=d["ok"], output=bytes(d.get("output") or b""), code=str(d.get("code") or "error"),
                     error=d.get("error"), ms=float(d.get("ms") or 0.0), lane=str(d.get("lane") or ""),
                     cached=bool(d.get("cached")), fuel_used=d.get("fuel_used"),
                     logs=[str(x) for x in logs] if isinstance(logs, list) else [])
    runner = d.get("runner") if isinstance(d.get("runner"), dict) else {}
    return res, runner


class PoolStepExecutor:
    """StepExecutor that runs each step in a pool runner (see the module docstring)."""

    def __init__(self, endpoint: str | None = None, *, data_dir, curve: tuple[bytes, bytes, bytes] | None = None,
                 queue_s: float | None = None, margin_s: float | None = None):
        self.data_dir = Path(data_dir)
        self.endpoint = endpoint or E.runner_client_endpoint(self.data_dir)
        if curve is None and self.endpoint.startswith("tcp://"):
            curve = client_curve(self.data_dir)
        self.queue_s = _env_s("WB_STEP_QUEUE_S", 300.0) if queue_s is None else queue_s
        self.margin_s = _env_s("WB_STEP_MARGIN_S", 130.0) if margin_s is None else margin_s
        # resend=False: a step held by a runner broker that is killed is not silently re-sent
        # (it may still be running on its runner); it comes back `worker_lost`, handled below.
        self.client = AsyncPoolClient(self.endpoint, curve=curve, resend=False)
        self.last_runner: dict = {}  # who ran the last step (for logs and tests)

    def deadline_ms(self, ctx: StepContext) -> int:
        total = self.queue_s + ctx.limits.timeout_s + self.margin_s
        return max(1, min(int(total * 1000), P.RUNNER_MAX_DEADLINE_MS))

    async def run(self, component: Component, input: bytes, ctx: StepContext) -> StepResult:
        t0 = time.perf_counter()

        def fail(code: str, error: str, attempts: int) -> StepResult:
            return StepResult(ok=False, code=code, error=ctx.secrets.redact(error)[:4096],
                              ms=(time.perf_counter() - t0) * 1000, lane=component.lang, attempts=attempts)

        if len(input) > ctx.limits.input_max:
            return fail("input_too_large", f"the step's input is {len(input)} bytes, over its limit of "
                        f"{ctx.limits.input_max} bytes", 1)
        meta = step_meta(component, ctx)
        deadline = self.deadline_ms(ctx)
        lost: list[str] = []
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                body = await self.client.call("step", [meta, bytes(input)], deadline_ms=deadline)
            except PoolError as e:
                if e.code == "worker_lost":
                    lost.append(str(e))
                    if component.persist:
                        return fail("runner_lost", f"{e}; a :persist step is not run twice", attempt)
                    if attempt < MAX_ATTEMPTS:
                        continue
                    return fail("runner_lost", f"the step's runner died {attempt} times: " + "; ".join(lost), attempt)
                if e.code == "no_workers":
                    return fail("no_runner", f"no workflow runner is available ({e}); start `wbx serve` with "
                                "--runners N (or WB_RUNNERS), or connect one with `wbx worker --role runner`", attempt)
                if e.code == "overloaded":
                    return fail("overloaded", f"the runner queue is full ({e}); retry later", attempt)
                if e.code == "deadline":
                    return fail("timeout", f"no runner finished the step within {deadline / 1000:g} s (waiting for "
                                f"a runner {self.queue_s:g} s + timeout {ctx.limits.timeout_s:g} s + margin "
                                f"{self.margin_s:g} s): {e}", attempt)
                return fail("error", f"the runner pool refused the step ({e.code}): {e}", attempt)
            try:
                res, runner = decode_result(body)
            except Exception as e:
                return fail("error", f"a runner sent an unreadable result: {e}", attempt)
            res.attempts = attempt
            self.last_runner = runner
            if ctx.log is not None:
                for line in res.logs:
                    ctx.log(line)
            return res
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        self.client.close()
