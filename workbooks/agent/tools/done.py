"""done {result}: the model says it has finished; the loop ends the run with `result`.

Only the declaration matters (the loop reads `result` from the call itself); calling the tool
directly just acknowledges, as the original's did ("ok").
"""

from __future__ import annotations

from workbooks.agent.tools.base import ToolContext, ToolResult
from workbooks.agent.tools.common import answer


class Done:
    name = "done"
    description = "Finish the task. Provide the final result/answer."
    parameters = {"type": "object", "properties": {"result": {"type": "string"}}, "required": ["result"]}
    needs_exec = False

    async def __call__(self, ctx: ToolContext, args: dict) -> ToolResult:
        return answer(ctx, "ok")


DONE = Done()
