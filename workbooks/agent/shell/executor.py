"""Runs parsed shell steps: `; && ||`, variables, pipes between wasm stages, redirections.

The rules are the original's (workbooks.sh `Workbooks.Shell`): steps joined by `;` always run,
`&&` runs only after status 0 and `||` only after a failure; a pipeline's status is its last
stage's; every pipeline starts from the call's `input`; outputs concatenate and only the FINAL
output is trimmed (between stages bytes pass untouched, so `wc -l` counts right). An unknown
command stops the whole line with the original's `error: {:unknown_command, "NAME"}`.

Stage stderr is shown after the pipeline's output (`2>&1` sends it down the pipe or into the
`>` file instead, `2>/dev/null` drops it). Redirections are done here, by the host, through the
same confinement as the vfs tools (`tools/confine.py`): a refused path reads
`write blocked: <why> (<path>)` / `read blocked: <why> (<path>)`, the command does not run and the
status is 1. Parent directories are not created (as in sh).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from workbooks.agent.shell import grammar, jq, sandbox
from workbooks.agent.tools import confine
from workbooks.agent.tools.common import shown

SHELLBOX_COMMANDS = frozenset(
    "cat echo seq head tail wc nl rev sort uniq tr basename dirname true false grep upper".split()
)
COMMANDS = SHELLBOX_COMMANDS | {"jq"}
TOTAL_OUTPUT_CAP = int(os.environ.get("WB_SHELL_OUTPUT_BYTES", str(4 << 20)))
DEV_NULL = "/dev/null"


class ShellAbort(Exception):
    """Stops the whole line: the message is the tool output, `kind` the machine-readable error."""

    def __init__(self, message: str, kind: str, status: int):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.status = status


@dataclass
class Outcome:
    output: str
    status: int
    error: str | None


class _Blocked(Exception):
    pass


def _why(e: OSError) -> str:
    return os.strerror(e.errno) if e.errno else str(e)


class Executor:
    def __init__(self, workdir: Path, read_only: frozenset[str], deadline: float, stdin: bytes,
                 cancelled: threading.Event | None = None):
        self.workdir = Path(os.path.realpath(workdir))
        self.read_only = read_only
        self.deadline = deadline
        self.stdin = stdin
        self.cancelled = cancelled or threading.Event()
        self.vars: dict[str, str] = {}
        self.out: list[bytes] = []
        self.size = 0

    # -- the line ---------------------------------------------------------------------------
    def run(self, steps: list[grammar.Step]) -> Outcome:
        status = 0
        try:
            for st in steps:
                if self.cancelled.is_set():
                    raise ShellAbort("error: cancelled", "cancelled", 130)
                if time.monotonic() > self.deadline:
                    raise sandbox.ShellLimit("deadline", "stopped: the shell's time limit ran out")
                if (st.op == "&&" and status != 0) or (st.op == "||" and status == 0):
                    continue
                self.vars["?"] = str(status)
                if len(st.commands) == 1 and st.commands[0].is_assignment():
                    for w in st.commands[0].words:
                        self.vars[w.assign] = grammar.expand(w, self.vars)
                    status = 0
                    continue
                status = self.pipeline(st.commands)
        except ShellAbort as a:
            return Outcome(a.message, a.status, a.kind)
        except sandbox.ShellLimit as lim:
            code = 124 if lim.kind == "deadline" else 125
            return Outcome(f"error: {lim.message}", code, lim.kind)
        text = b"".join(self.out).decode("utf-8", "replace").strip()
        return Outcome(text, status, None if status == 0 else "exit_status")

    def emit(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self.size > TOTAL_OUTPUT_CAP:
            raise ShellAbort(f"error: the shell's output is over {TOTAL_OUTPUT_CAP} bytes (stopped)", "output", 125)
        self.out.append(data)

    # -- one pipeline ----------------------------------------------------------------------------
    def pipeline(self, commands: list[grammar.Command]) -> int:
        data = self.stdin
        errs: list[bytes] = []
        status = 0
        variables = self.vars
        for cmd in commands:
            if self.cancelled.is_set():
                raise ShellAbort("error: cancelled", "cancelled", 130)
            argv = [grammar.expand(w, variables) for w in cmd.words]
            try:
                stdin, outs, err_to, merge = self.redirections(cmd, variables, data)
            except _Blocked as b:
                errs.append(f"{b}\n".encode())
                data, status = b"", 1
                continue
            if argv:
                res = self.stage(argv, stdin)
            else:
                res = sandbox.StageResult(b"", b"", 0)
            stdout, stderr = res.stdout, res.stderr
            if merge:
                stdout, stderr = stdout + stderr, b""
            try:
                if outs:
                    for k, (target, append) in enumerate(outs):
                        self.write(target, stdout if k == len(outs) - 1 else b"", append)
                    stdout = b""
                if err_to is not None:
                    self.write(err_to[0], stderr, err_to[1])
                    stderr = b""
            except _Blocked as b:
                errs.append(f"{b}\n".encode())
                data, status = b"", 1
                continue
            errs.append(stderr)
            data, status = stdout, res.code
        self.emit(data)
        self.emit(b"".join(errs))
        return status

    def stage(self, argv: list[str], stdin: bytes) -> sandbox.StageResult:
        name = argv[0]
        if name not in COMMANDS:
            raise ShellAbort(f'error: {{:unknown_command, "{_elixir_escape(name)}"}}', "unknown_command", 127)
        if name == "jq":
            try:
                return jq.run(argv[1:], stdin, self.deadline)
            except jq.JqUnavailable as e:
                raise ShellAbort(f"error: jq unavailable: {e}", "jq_unavailable", 127) from None
        return sandbox.run_shellbox(argv, stdin, self.workdir, self.deadline)

    # -- redirections ---------------------------------------------------------------------------
    def redirections(self, cmd: grammar.Command, variables: dict[str, str], data: bytes):
        """(stdin, [(stdout target, append)], (stderr target, append) | None, 2>&1?) or _Blocked."""
        stdin = data
        outs: list[tuple[Path | None, bool]] = []
        err_to = None
        merge = False
        for r in cmd.redirects:
            if r.op == ">&1":
                merge, err_to = True, None  # the last stderr redirection wins
                continue
            name = grammar.expand(r.target, variables)
            if r.op == "<":
                stdin = self.read(name)
                continue
            target = None if name == DEV_NULL else self.resolve_write(name)
            if r.fd == 1:
                if target is not None and not r.op == ">>":
                    self.write(target, b"", False)  # created/truncated now, as sh does
                outs.append((target, r.op == ">>"))
            else:
                if target is not None and r.op != ">>":
                    self.write(target, b"", False)
                err_to, merge = (target, r.op == ">>"), False
        return stdin, outs, err_to, merge

    def read(self, name: str) -> bytes:
        if name == DEV_NULL:
            return b""
        try:
            path = confine.resolve_in(self.workdir, name, for_write=False)
            return confine.read_regular(path)
        except confine.ConfinementError as e:
            raise _Blocked(f"read blocked: {e.reason} ({shown(name)})") from None
        except FileNotFoundError:
            raise _Blocked(f"{name}: No such file or directory") from None
        except IsADirectoryError:
            raise _Blocked(f"{name}: Is a directory") from None
        except ValueError as e:
            raise _Blocked(f"{name}: {e}") from None
        except OSError as e:
            raise _Blocked(f"{name}: {_why(e)}") from None

    def resolve_write(self, name: str) -> Path:
        try:
            return confine.resolve_in(self.workdir, name, for_write=True, read_only=self.read_only)
        except confine.ConfinementError as e:
            if e.code == "escape":  # the vfs tools' words
                raise _Blocked(f"write blocked: path escapes your working dir ({shown(name)}) — you can only write inside it") from None
            raise _Blocked(f"write blocked: {e.reason} ({shown(name)})") from None

    def write(self, target: Path | None, data: bytes, append: bool) -> None:
        if target is None:
            return
        name = os.path.relpath(target, self.workdir)
        try:
            fd = confine.open_for_write(target, append=append)
        except FileNotFoundError:
            raise _Blocked(f"{name}: No such file or directory (the folder does not exist)") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise _Blocked(f"write blocked: path is a symlink (writes never follow one) ({name})") from None
            raise _Blocked(f"{name}: {_why(e)}") from None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


def _elixir_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("#{", "\\#{")
