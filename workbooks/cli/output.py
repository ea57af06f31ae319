"""How wbx speaks: human on a TTY, agent (raw JSON) in pipes, json (envelope) on request.

Kernel output is JSON already; it is spliced into the envelope as structure, never
re-encoded and never embedded as an escaped string.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from workbooks.errors import WorkbooksError

HUMAN, AGENT, JSON = "human", "agent", "json"


@dataclass
class Output:
    """What a verb returns: data (a Python value) or raw JSON text, and an optional human view."""

    data: Any = None
    raw_json: str | bytes | None = None
    human: Callable[[Any, "Style"], str] | None = None
    exit_code: int = 0
    extra: dict = field(default_factory=dict)

    def value(self) -> Any:
        if self.raw_json is not None:
            raw = self.raw_json.decode() if isinstance(self.raw_json, bytes) else self.raw_json
            return json.loads(raw)
        return self.data

    def json_text(self) -> str:
        if self.raw_json is not None:
            return self.raw_json.decode() if isinstance(self.raw_json, bytes) else self.raw_json
        return json.dumps(self.data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


class Style:
    """ANSI colours, only when the terminal wants them."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and not os.environ.get("NO_COLOR")

    def _c(self, code: str, s: str) -> str:
        return f"\x1b[{code}m{s}\x1b[0m" if self.enabled else s

    def red(self, s: str) -> str:
        return self._c("31", s)

    def yellow(self, s: str) -> str:
        return self._c("33", s)

    def green(self, s: str) -> str:
        return self._c("32", s)

    def dim(self, s: str) -> str:
        return self._c("2", s)

    def bold(self, s: str) -> str:
        return self._c("1", s)

    def cyan(self, s: str) -> str:
        return self._c("36", s)


def detect_mode(json_flag: bool, agent_flag: bool, stream=None) -> str:
    stream = stream or sys.stdout
    if json_flag:
        return JSON
    if agent_flag or os.environ.get("WBX_AGENT") in ("1", "true", "yes"):
        return AGENT
    try:
        tty = stream.isatty()
    except Exception:
        tty = False
    return HUMAN if tty else AGENT


def emit(mode: str, verb: str, out: Output, stream=None) -> None:
    stream = stream or sys.stdout
    if mode == JSON:
        ok = "true" if out.exit_code == 0 else "false"  # a verdict that fails (exit 5) is not ok
        stream.write('{"data":' + out.json_text() + ',"ok":' + ok + ',"verb":' + json.dumps(verb) + "}\n")
    elif mode == AGENT:
        text = out.json_text()
        stream.write(text if text.endswith("\n") else text + "\n")
    else:
        if out.human is not None:
            text = out.human(out.value(), Style(True))
        else:
            text = json.dumps(out.value(), indent=2, sort_keys=True, ensure_ascii=False)
        stream.write(text if text.endswith("\n") else text + "\n")
    stream.flush()


def emit_error(mode: str, verb: str, err: WorkbooksError, stream_out=None, stream_err=None) -> None:
    stream_out = stream_out or sys.stdout
    stream_err = stream_err or sys.stderr
    if mode == JSON:
        body = {"ok": False, "verb": verb, "error": err.to_dict()}
        stream_out.write(json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n")
        stream_out.flush()
    elif mode == AGENT:
        stream_err.write(json.dumps({"error": err.to_dict()}, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n")
    else:
        st = Style(getattr(stream_err, "isatty", lambda: False)())
        stream_err.write(f"{st.red('wbx:')} {err.message}\n")
        if err.hint:
            stream_err.write(f"  {st.dim('hint: ' + err.hint)}\n")
