"""What every agent tool is: a name, a JSON schema, and `async __call__(ctx, args) -> ToolResult`.

Tools never raise for expected failures: they answer with the original's result strings
("read blocked: …", "fetch failed: HTTP 404", …) and an exit code. An exception escaping a tool is
a bug or an unexpected failure; the loop turns it into "tool error: <name> raised — <msg>".
Tools are cancellable (the loop enforces a 150 s cap): blocking work runs in
`trio.to_thread.run_sync(..., abandon_on_cancel=True)` and honours `ctx.deadline` itself (wasm
epochs, socket timeouts), so an abandoned thread does not run on for long.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

from workbooks.agent.secrets import Secrets


@dataclass
class ToolResult:
    output: str
    exit_code: int = 0
    error: str | None = None  # a short machine-readable reason when exit_code != 0


class OqlCaller(Protocol):
    async def call(self, op: str, args: list, deadline_ms: int = 10000) -> bytes: ...


@dataclass
class ToolContext:
    tenant: str
    run_id: str
    data_dir: Path
    workdir: Path  # the confined working directory (resolved, absolute)
    exec: bool = False  # may write to the tenant's site (git, publish, writing wb verbs)
    secrets: Secrets = field(default_factory=Secrets)
    oql: OqlCaller | None = None  # the OQL pool (or the in-process kernel) for the `wb` tool
    var_get: Callable[[str], Awaitable[tuple[str, bool] | None]] | None = None  # key -> (value, is_secret)
    fetch_allow_hosts: frozenset[str] = frozenset()  # WB_FETCH_ALLOW_HOSTS (tests: 127.0.0.1)
    read_only: frozenset[str] = frozenset()  # workdir-relative names no tool may write (run records)
    deadline: float | None = None  # trio.current_time() value by which the tool must give up
    extra: dict[str, Any] = field(default_factory=dict)


class Tool(Protocol):
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    needs_exec: bool

    async def __call__(self, ctx: ToolContext, args: dict) -> ToolResult: ...


def spec(tool: Tool) -> dict:
    """The provider-neutral tool declaration the llm wires translate: {name, description, parameters}."""
    return {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
