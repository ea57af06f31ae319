"""The agent's sandboxed shell: a shell line parsed here, every command run as WebAssembly.

`run_pipeline(ctx, pipeline, input)` is the whole API (the `shell` tool calls it). The line is
parsed host-side (`grammar.py`); each stage runs under WASI with only the working dir visible,
read-only (`sandbox.py`: the multicall `shellbox.wasm` built from `shellbox/`, and `jq.py`:
jqjs in QuickJS-NG); `executor.py` sequences them. See README.md beside this file.
"""

from __future__ import annotations

import functools
import os
import threading
import time

from workbooks.agent.tools.base import ToolContext, ToolResult

SHELL_TIMEOUT_S = float(os.environ.get("WB_SHELL_TIMEOUT_S", "60"))
MAX_INPUT = 8 << 20


def run_sync(ctx: ToolContext, pipeline: str, input: str | None, deadline: float,
             cancelled: threading.Event | None = None) -> ToolResult:
    """Parse and run one shell line (blocking: call it from a worker thread)."""
    from workbooks.agent.shell import executor, grammar

    try:
        steps = grammar.parse(pipeline)
    except grammar.ShellSyntaxError as e:
        return ToolResult(f"error: {e}", 2, "syntax_error")
    stdin = (input or "").encode("utf-8", "surrogatepass")
    if len(stdin) > MAX_INPUT:
        return ToolResult(f"error: `input` is over {MAX_INPUT} bytes (write it to a file with vfs_write)", 2, "input_too_large")
    ex = executor.Executor(ctx.workdir, ctx.read_only, deadline, stdin, cancelled)
    out = ex.run(steps)
    return ToolResult(out.output, out.status, out.error)


async def run_pipeline(ctx: ToolContext, pipeline: str, input: str | None) -> ToolResult:
    """Run `pipeline` over `input` in the sandbox; never raises for a failing line."""
    import trio

    from workbooks.agent.tools.common import time_left

    # the line's deadline on time.monotonic() (what the stages count against): the shell's own
    # cap, or sooner when ctx.deadline (the loop's 150 s per tool) is nearer
    deadline = time.monotonic() + time_left(ctx, SHELL_TIMEOUT_S)
    cancelled = threading.Event()
    try:
        return await trio.to_thread.run_sync(
            functools.partial(run_sync, ctx, pipeline, input, deadline, cancelled),
            abandon_on_cancel=True,
        )
    finally:
        cancelled.set()  # an abandoned thread stops at its next stage (the epoch deadline bounds the current one)
