"""A workflow runner: a pool worker process that runs workflow steps instead of kernel calls.

Why a pool worker: steps must never run in a web process, and they should scale out and survive
crashes the way renders do. So a runner is the pool's own `Worker` (workbooks.pool.worker:
heartbeats from a second thread, so a 30 s step still proves the process alive; reconnects and
re-announces after a broker restart; BYE on SIGTERM; CURVE over tcp for a runner on another
machine) with its kernel swapped for `StepRunner`, connected to the runner broker (`wbx serve`'s
`runner-broker` child, a second Broker instance: see workbooks.pool.broker, "Runners").

One request is one step: `step [meta, input]` where meta is msgpack {v, component, ctx} (the
component's plan entry, and what the step needs of its context: tenant, workflow, run id, the
step/data/tree/cache directories, limits, allowed hosts, secret values for egress and redaction)
and input the step's bytes. The reply body is a msgpack map: StepResult's fields with the output
bytes, plus `runner` {child_id, pid, host}. A failing step is an ordinary reply (ok false, a
StepResult code); only a malformed request is a pool error (`bad_request`).

Directories: the runner trusts only paths inside its own data dir (`--data`/`$WB_DATA`, which on
the pool's host is the server's). A step dir given there (an existing directory, no symlink
anywhere on the way) is used as it is; otherwise, e.g. on another machine, the step gets a fresh
private scratch dir under `$WB_DATA/tmp/runner-steps/`, removed after the step. Likewise `tree` and
`cache_dir` (default `$WB_DATA/build/cache`). The kv capability's store lives in the runner's
data dir, so a runner on another machine has its own kv store (README, "Workflow runners").

What runs a step: `WB_RUNNER_STEP_FN=module:function` when set (a blocking
`fn(component, input, ctx) -> StepResult`; tests use it), else `run_local`: what W2's
LocalExecutor runs in its thread (`local_exec.build_and_run`: W1's build, then step.run_step).
Module caches (compiled lanes, QuickJS) live as long as the runner, so warm steps are cheap.
"""

from __future__ import annotations

import time

_T_MAIN = time.time()

import importlib  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import msgpack  # noqa: E402

from workbooks.pool import protocol as P  # noqa: E402
from workbooks.pool import worker as pool_worker  # noqa: E402

META_VERSION = 1
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ERROR_MAX = 4096

StepFn = Callable[..., object]


class BadStep(ValueError):
    """A step request the runner cannot take (the pool answers `bad_request` with this message)."""

    code = "bad_request"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def run_local(component, input: bytes, ctx):
    """Build and run one step in this process, as W2's LocalExecutor does (blocking)."""
    from workbooks.workflow.local_exec import build_and_run

    return build_and_run(component, input, ctx)


def load_step_fn(spec: str | None = None) -> StepFn:
    """The function that runs a step: `module:function` from WB_RUNNER_STEP_FN, else run_local."""
    spec = (spec if spec is not None else os.environ.get("WB_RUNNER_STEP_FN", "")).strip()
    if not spec:
        return run_local
    mod, _, name = spec.partition(":")
    if not mod or not name:
        raise ValueError(f"WB_RUNNER_STEP_FN={spec!r} must be module:function")
    return getattr(importlib.import_module(mod), name)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _confined_dir(raw, root: Path) -> Path | None:
    """`raw` if it names an existing directory inside `root`, reached without symlinks; else None."""
    if not isinstance(raw, str) or not raw or "\x00" in raw:
        return None
    p = Path(raw)
    if not p.is_absolute():
        return None
    try:
        real = Path(os.path.realpath(p))
    except (OSError, ValueError):
        return None
    if real != Path(os.path.normpath(p)) or not _inside(real, root) or not real.is_dir():
        return None
    return real


def _str(d: dict, key: str, *, optional: bool = False) -> str | None:
    v = d.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise BadStep(f"step context field {key!r} must be a string")
    return v


class StepRunner:
    """The runner's stand-in for the kernel in `workbooks.pool.worker.Worker.handle`."""

    def __init__(self, data: Path, step_fn: StepFn, *, child_id: str = ""):
        self.data = Path(os.path.realpath(data))
        self.step_fn = step_fn
        self.child_id = child_id
        self.load_info = {"source": "runner", "ready_ms": 0.0, "wasm_sha256": None}
        self.steps = 0

    def memory_bytes(self) -> int:
        return 0

    # -- request -> (component, ctx) ----------------------------------------------------------
    def _context(self, meta: dict, scratch: list):
        from workbooks.agent.secrets import Secrets
        from workbooks.gitstore.tenant import validate_tenant
        from workbooks.workflow.types import Component, Limits, StepContext

        comp = meta.get("component")
        c = meta.get("ctx")
        if not isinstance(comp, dict) or not isinstance(c, dict):
            raise BadStep("a step request needs meta {v, component, ctx}")
        try:
            component = Component.from_plan(comp)
        except (KeyError, TypeError, ValueError) as e:
            raise BadStep(f"the step's component is not a plan entry: {e}") from None
        try:
            tenant = validate_tenant(c.get("tenant"))
        except Exception as e:
            raise BadStep(f"bad tenant: {getattr(e, 'message', None) or e}") from None
        run_id = _str(c, "run_id")
        if not RUN_ID_RE.fullmatch(run_id):
            raise BadStep("bad run id")
        workflow = _str(c, "workflow")
        lim = c.get("limits") or {}
        if not isinstance(lim, dict):
            raise BadStep("step limits must be a map")
        fields = {}
        for key, kind in (("timeout_s", (int, float)), ("fuel", int), ("memory_mb", int), ("input_max", int),
                          ("output_max", int)):
            if key in lim:
                v = lim[key]
                if not isinstance(v, kind) or isinstance(v, bool) or v <= 0:
                    raise BadStep(f"step limit {key} must be a positive number")
                fields[key] = float(v) if key == "timeout_s" else v
        limits = Limits(**fields)
        sec = c.get("secrets") or {}
        if not isinstance(sec, dict):
            raise BadStep("step secrets must be {values: {key: text}, redact_only: [key]}")
        values = sec.get("values") or {}
        redact_only = sec.get("redact_only") or []
        if (not isinstance(values, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in values.items())
                or not isinstance(redact_only, list) or not all(isinstance(k, str) for k in redact_only)):
            raise BadStep("step secrets must be {values: {key: text}, redact_only: [key]}")
        hosts = c.get("allow_hosts") or []
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            raise BadStep("allow_hosts must be a list of host names")
        step_dir = _confined_dir(c.get("step_dir"), self.data)
        if step_dir is None:  # not on this host (a remote runner), or not ours to open: a scratch dir
            base = self.data / "tmp" / "runner-steps"  # `tmp` is a reserved tenant name: no repo there
            base.mkdir(parents=True, exist_ok=True, mode=0o700)
            step_dir = Path(tempfile.mkdtemp(prefix=f"{tenant}.{run_id}.", dir=base))
            scratch.append(step_dir)
        tree = _confined_dir(c.get("tree"), self.data)
        cache_dir = _confined_dir(c.get("cache_dir"), self.data) or self.data / "build" / "cache"
        logs: list[str] = []
        ctx = StepContext(tenant=tenant, workflow=workflow, run_id=run_id, step_dir=step_dir, data_dir=self.data,
                          tree=tree, secrets=Secrets(values=dict(values), redact_only=frozenset(redact_only)),
                          allow_hosts=frozenset(hosts), log=logs.append, limits=limits, cache_dir=cache_dir)
        return component, ctx, logs

    # -- the kernel interface Worker.handle calls ---------------------------------------------
    def call_raw(self, op: str, meta_raw, input, *, deadline_ms: int = 0, consume=None):
        from workbooks.workflow.types import StepResult

        if op != "step":
            raise BadStep(f"a runner only runs steps, not {op!r}")
        if not isinstance(meta_raw, (bytes, bytearray, memoryview)) or not isinstance(input, (bytes, bytearray, memoryview)):
            raise BadStep("step arguments are [meta bytes, input bytes]")
        try:
            meta = msgpack.unpackb(meta_raw, raw=False, strict_map_key=False)
        except Exception:
            raise BadStep("step meta is not msgpack") from None
        if not isinstance(meta, dict) or meta.get("v") != META_VERSION:
            raise BadStep(f"step meta must be a v{META_VERSION} map")
        scratch: list[Path] = []
        try:
            component, ctx, logs = self._context(meta, scratch)
            t0 = time.perf_counter()
            try:
                result = self.step_fn(component, bytes(input), ctx)
                if not isinstance(result, StepResult):
                    raise TypeError(f"the step function returned {type(result).__name__}, not a StepResult")
            except Exception as e:  # never a pool error: the step failed, the runner lives on
                msg = ctx.secrets.redact(f"{type(e).__name__}: {e}")[:ERROR_MAX]
                result = StepResult(ok=False, code="error", error=msg, ms=(time.perf_counter() - t0) * 1000,
                                    lane=component.lang)
            if not result.logs and logs:
                result.logs = list(logs)
        finally:
            for d in scratch:
                shutil.rmtree(d, ignore_errors=True)
        self.steps += 1
        body = msgpack.packb({**result.to_dict(), "output": bytes(result.output), "logs": list(result.logs),
                              "runner": {"child_id": self.child_id, "pid": os.getpid(), "host": os.uname().nodename}},
                             use_bin_type=True)
        if consume is not None:
            return consume(memoryview(body))
        return body


class RunnerWorker(pool_worker.Worker):
    """A pool Worker whose kernel is a StepRunner."""

    def __init__(self, endpoint: str, *, data: Path, step_fn: StepFn | None = None, **kw):
        kw["child_id"] = kw.get("child_id") or os.environ.get("WB_CHILD_ID") or f"runner-{os.getpid()}"
        kw.setdefault("log", pool_worker._DeferredLog(kw["child_id"], role="runner"))
        super().__init__(endpoint, **kw)
        self.data = data
        self.step_fn = step_fn or load_step_fn()
        self.phases["main"] = _T_MAIN

    def load_kernel(self) -> None:
        t0 = time.perf_counter()
        self.kernel = StepRunner(self.data, self.step_fn, child_id=self.child_id)
        self.phases["instance"] = time.time()
        self.load_info = dict(self.kernel.load_info)
        self.load_info["ready_ms"] = round((time.perf_counter() - t0) * 1000, 3)

    def _info(self) -> dict:
        return {**super()._info(), "kind": "runner"}


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="workbooks.workflow.worker",
                                 description="a workflow runner: runs steps sent by the runner broker")
    ap.add_argument("--connect", help="runner broker backend (ipc://... or tcp://HOST:PORT); default: the local "
                                      "runner pool of --data")
    ap.add_argument("--data", help="data dir (default $WB_DATA or ./wb-data)")
    ap.add_argument("--id", help="runner id (default $WB_CHILD_ID or runner-PID)")
    ap.add_argument("--server-key", help="broker's public key file (tcp)")
    ap.add_argument("--client-key", help="this runner's secret key file (tcp)")
    ap.add_argument("--heartbeat-ms", type=int, default=pool_worker.HEARTBEAT_MS)
    ns = ap.parse_args(argv)
    from workbooks.pool import endpoints as E

    data = E.data_dir(ns.data)
    endpoint = ns.connect or E.runner_worker_endpoint(data)
    curve = None
    if endpoint.startswith("tcp://"):
        if not (ns.server_key and ns.client_key):
            ap.error("tcp endpoints need --server-key and --client-key (made by `wbx ops keys`)")
        curve = pool_worker.curve_from_files(ns.server_key, ns.client_key)
    child_id = ns.id or os.environ.get("WB_CHILD_ID") or f"runner-{os.getpid()}"
    try:
        step_fn = load_step_fn()
    except (ImportError, AttributeError, ValueError) as e:
        print(f"workbooks.workflow.worker: cannot load the step function: {e}", file=sys.stderr)
        return 78
    return RunnerWorker(endpoint, data=data, step_fn=step_fn, child_id=child_id, heartbeat_ms=ns.heartbeat_ms,
                        curve=curve).run()


if __name__ == "__main__":
    sys.exit(main())
