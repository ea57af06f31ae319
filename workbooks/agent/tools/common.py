"""What every tool module shares: the redacted answer, argument reading, blocking work off the loop.

Every tool output goes through `answer()`, which applies `ctx.secrets.redact`, so a secret value that
comes back from a file, a server or the kernel reaches neither the model nor the records.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import trio

from workbooks.agent.tools.base import ToolContext, ToolResult

T = TypeVar("T")


def answer(ctx: ToolContext, text: str, exit_code: int = 0, error: str | None = None) -> ToolResult:
    """The tool's result with every secret value replaced by `[secret:KEY]`."""
    return ToolResult(output=ctx.secrets.redact(text), exit_code=exit_code, error=error)


def str_arg(args: Any, key: str) -> str | None:
    """args[key] when it is a string; None when absent, null or another type."""
    if not isinstance(args, dict):
        return None
    v = args.get(key)
    return v if isinstance(v, str) else None


def shown(p: Any, limit: int = 300) -> str:
    """A path or URL as the model sent it, printable in a result (NULs visible, bounded)."""
    s = p if isinstance(p, str) else repr(p)
    s = s.replace("\x00", "\\0")
    return s if len(s) <= limit else s[:limit] + "…"


async def off_loop(fn: Callable[..., T], *args) -> T:
    """Blocking file, git or wasm work in a worker thread; abandoned (not waited for) on cancel."""
    return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


def time_left(ctx: ToolContext, limit: float) -> float:
    """Seconds this tool may still take: `limit`, or less when ctx.deadline (the loop's cap) is nearer."""
    if ctx.deadline is None:
        return limit
    return max(0.0, min(limit, ctx.deadline - trio.current_time()))
