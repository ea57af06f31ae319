"""A step function for runner tests (WB_RUNNER_STEP_FN=workflow_stub_steps:run): the component's
`src` is a JSON script, so a test can make a step sleep, fail or raise in a real runner process
without the lanes. Output: JSON {pid, child_id, input, step_dir} of the process that ran it."""

from __future__ import annotations

import json
import os
import time

from workbooks.workflow.types import StepResult


def run(component, input: bytes, ctx) -> StepResult:
    t0 = time.perf_counter()
    script = json.loads(component.src or "{}")
    if script.get("sleep"):
        time.sleep(float(script["sleep"]))
    if script.get("raise"):
        raise RuntimeError(script["raise"])
    if script.get("log"):
        ctx.log(script["log"])
    out = json.dumps({"pid": os.getpid(), "child_id": os.environ.get("WB_CHILD_ID"), "input": input.decode(),
                      "step_dir": str(ctx.step_dir), "tenant": ctx.tenant,
                      "secret": ctx.secrets.resolve("{{secret:TOKEN}}"),
                      "timeout_s": ctx.limits.timeout_s}).encode()
    if script.get("fail"):
        return StepResult(ok=False, code="trap", error=script["fail"], output=out, lane=component.lang,
                          ms=(time.perf_counter() - t0) * 1000)
    return StepResult(ok=True, output=out, lane=component.lang, ms=(time.perf_counter() - t0) * 1000)
