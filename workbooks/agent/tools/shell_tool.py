"""shell {pipeline, input?}: the agent's sandboxed shell (workbooks.agent.shell) as a tool.

Every command runs as WebAssembly under WASI with only the working dir visible (read-only) and
no network or environment; the line itself is parsed by the host. A malformed call gets the
original's "shell error: required arg `pipeline` missing or not a string".
"""

from __future__ import annotations

from workbooks.agent.shell import run_pipeline
from workbooks.agent.tools.base import ToolContext, ToolResult
from workbooks.agent.tools.common import answer

DESCRIPTION = (
    "Your PRIMARY shell — runs entirely in WebAssembly (no OS process). Commands: cat echo seq head "
    "tail wc nl rev sort uniq tr basename dirname true false grep jq upper. Supports pipes (|), "
    "control flow (; && ||), variables (X=val then $X / ${X}; an unknown $NAME stays as written), "
    "redirection (< > >> and 2>&1) and reading files in your working dir. grep and jq read stdin and "
    "take every word after their flags as the pattern/filter (grep -i -v -c -n -F -x -w; jq -r -c -n "
    "-s). e.g. pipeline=\"cat data.json | jq -r '.users[].name' | sort -u > names.txt\". `input` is "
    "optional stdin for the pipeline."
)


class Shell:
    name = "shell"
    description = DESCRIPTION
    parameters = {
        "type": "object",
        "properties": {
            "pipeline": {"type": "string", "description": "a shell line, e.g. \"cat f.json | jq .x | sort -u > out.txt\""},
            "input": {"type": "string", "description": "optional stdin for the pipeline"},
        },
        "required": ["pipeline"],
    }
    needs_exec = False

    async def __call__(self, ctx: ToolContext, args: dict) -> ToolResult:
        pipeline = args.get("pipeline") if isinstance(args, dict) else None
        if not isinstance(pipeline, str):
            return answer(ctx, "shell error: required arg `pipeline` missing or not a string", 2, "missing pipeline")
        stdin = args.get("input")
        if stdin is not None and not isinstance(stdin, str):
            return answer(ctx, "shell error: `input` must be a string", 2, "bad input")
        res = await run_pipeline(ctx, pipeline, stdin)
        return answer(ctx, res.output, res.exit_code, res.error)


SHELL = Shell()
