"""git {message} and publish {}: the host-brokered tools of exec runs (the agent never runs git).

`git` hands the message to `workbooks.mirror.hand.commit_and_push` — `.gitignore` from the one
Private boundary, hooks off, the tenant as author, a push to `origin` when there is one — and, since
committed implies live, the hand then publishes HEAD's `content/**` and `blog/**`. Its receipt is
the answer, exactly: "<sha7> (pushed) (published N)", "<sha7> (committed; no origin remote to push)
(published N)", "<sha7> (push failed: <≤120 chars>) (published N)", or "nothing to commit
(published N)". `publish` runs the publish step alone: "published <n> file(s) to the live site".
Without exec both answer the original's refusal ("git not permitted (no exec capability)").
The git work is blocking and runs in a worker thread.
"""

from __future__ import annotations

from workbooks.agent.tools.base import ToolContext, ToolResult
from workbooks.agent.tools.common import answer, off_loop, str_arg

MAX_MESSAGE = 4000
DEFAULT_MESSAGE = "agent update"


def _failure(e: BaseException) -> str:
    return getattr(e, "message", None) or str(e) or type(e).__name__


class Git:
    name = "git"
    description = (
        "Commit all changes in your working dir and push (host-brokered: you do NOT run git yourself; "
        "the host commits and pushes the repo, then publishes content/** and blog/** to the live site). "
        'Use after writing your changes, e.g. message="add: how-it-works section".'
    )
    parameters = {
        "type": "object",
        "properties": {"message": {"type": "string", "description": "the commit message"}},
        "required": ["message"],
    }
    needs_exec = True

    async def __call__(self, ctx: ToolContext, args: dict) -> ToolResult:
        if not ctx.exec:
            return answer(ctx, "git not permitted (no exec capability)", 1, "no_exec")
        from workbooks.mirror.hand import commit_and_push

        message = (str_arg(args, "message") or "").replace("\x00", "").strip()[:MAX_MESSAGE] or DEFAULT_MESSAGE
        try:
            receipt = await off_loop(lambda: commit_and_push(ctx.tenant, message, data_dir=ctx.data_dir))
        except Exception as e:  # noqa: BLE001 - GitError, a full disk, a locked repo: an answer for the model
            return answer(ctx, f"git error: {_failure(e)}", 1, "git")
        return answer(ctx, receipt)


class Publish:
    name = "publish"
    description = (
        "Publish the committed content/** and blog/** of your working dir to the LIVE public site "
        "(host-brokered copy, no shell). The git tool already publishes after each commit. No args."
    )
    parameters = {"type": "object", "properties": {}, "required": []}
    needs_exec = True

    async def __call__(self, ctx: ToolContext, args: dict) -> ToolResult:
        if not ctx.exec:
            return answer(ctx, "publish not permitted (no exec capability)", 1, "no_exec")
        from workbooks.gitstore import GitStore
        from workbooks.mirror.hand import publish_site

        try:
            n = await off_loop(lambda: publish_site(GitStore(ctx.data_dir, ctx.tenant)))
        except Exception as e:  # noqa: BLE001
            return answer(ctx, f"publish error: {_failure(e)}", 1, "publish")
        return answer(ctx, f"published {n} file(s) to the live site")


GIT = Git()
PUBLISH = Publish()
