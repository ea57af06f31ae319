"""The agent's tool surface: eight base tools, and two host-brokered ones for exec runs.

Base: `shell` (WebAssembly, workbooks.agent.shell), `search`, `wb`, `fetch`, `vfs_read`,
`vfs_write`, `vfs_edit`, `done`. Exec runs add `git` and `publish`, which the HOST performs (the
agent supplies a message, never a command line). There is no tool that runs a native command line
(no `run`, `bash`, `exec`, `sh`): a test asserts it.
"""

from __future__ import annotations

from workbooks.agent.tools.base import Tool, ToolContext, ToolResult, spec

__all__ = ["Tool", "ToolContext", "ToolResult", "base_tools", "exec_tools", "spec", "tools_for"]


def _shell() -> list[Tool]:
    try:
        from workbooks.agent.tools.shell_tool import SHELL
    except ModuleNotFoundError as e:  # the shell lands separately; until then the surface lacks it
        if e.name != "workbooks.agent.tools.shell_tool":
            raise
        return []
    return [SHELL]


def base_tools() -> dict[str, Tool]:
    """The eight tools every run has, by name (in the order the model sees them)."""
    from workbooks.agent.tools.done import DONE
    from workbooks.agent.tools.fetch import FETCH
    from workbooks.agent.tools.search import SEARCH
    from workbooks.agent.tools.vfs import VFS_EDIT, VFS_READ, VFS_WRITE
    from workbooks.agent.tools.wb import WB

    return {t.name: t for t in [*_shell(), SEARCH, WB, FETCH, VFS_WRITE, VFS_READ, VFS_EDIT, DONE]}


def exec_tools() -> dict[str, Tool]:
    """The host-brokered tools of exec runs: git (commit implies publish) and publish."""
    from workbooks.agent.tools.git_hand import GIT, PUBLISH

    return {GIT.name: GIT, PUBLISH.name: PUBLISH}


def tools_for(exec: bool) -> dict[str, Tool]:
    """The tool surface of a run: exec runs get git and publish first, as in the original."""
    return {**exec_tools(), **base_tools()} if exec else base_tools()
