"""How wbx speaks: human on a TTY, agent (raw JSON) in pipes, json (envelope) on request.

Kernel output is JSON already; it is spliced into the envelope as structure, never
re-encoded and never embedded as an escaped string, and it is written to stdout as the
bytes the kernel returned (no decode/encode round trip: on a 7 MB document that is most of
what the host would otherwise spend).

Errors: in json mode the envelope `{"ok": false, "verb", "error": {...}}` goes to stdout;
in agent mode the same envelope goes to stderr (stdout carries data only); on a terminal a
line of prose and a hint. The error object is `WorkbooksError.cli_dict()`: numeric `code`
(the exit code), symbolic `kind`, `message`, `retryable`, and `hint` only when there is one.
"""

from __future__ import annotations

import json
import os
import sys

from workbooks.errors import WorkbooksError

HUMAN, AGENT, JSON = "human", "agent", "json"


class Output:
    """What a verb returns: data (a Python value) or raw JSON text, and an optional human view.

    (A plain class, not a dataclass: `dataclasses` costs every wbx start-up ~6 ms of import.)"""

    __slots__ = ("data", "raw_json", "human", "exit_code", "extra")

    def __init__(self, data=None, raw_json=None, human=None, exit_code: int = 0, extra: dict | None = None):
        self.data = data
        self.raw_json: str | bytes | None = raw_json
        self.human = human  # (value, Style) -> str
        self.exit_code = exit_code
        self.extra = extra if extra is not None else {}

    def value(self):
        if self.raw_json is not None:
            return json.loads(self.raw_json)
        return self.data

    def json_bytes(self) -> bytes:
        if self.raw_json is not None:
            return self.raw_json if isinstance(self.raw_json, bytes) else self.raw_json.encode("utf-8")
        return json.dumps(self.data, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def json_text(self) -> str:
        return self.json_bytes().decode("utf-8")


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


def _write(stream, data: bytes) -> None:
    """Write bytes to a text stream's binary buffer when it has one (sys.stdout), else as text."""
    buf = getattr(stream, "buffer", None)
    if buf is not None:
        stream.flush()
        buf.write(data)
        buf.flush()
    else:
        stream.write(data.decode("utf-8"))
        stream.flush()


def emit(mode: str, verb: str, out: Output, stream=None) -> None:
    stream = stream or sys.stdout
    if mode == JSON:
        ok = b"true" if out.exit_code == 0 else b"false"  # a verdict that fails (exit 5) is not ok
        _write(stream, b'{"data":' + out.json_bytes() + b',"ok":' + ok + b',"verb":' + json.dumps(verb).encode() + b"}\n")
    elif mode == AGENT:
        data = out.json_bytes()
        _write(stream, data if data.endswith(b"\n") else data + b"\n")
    else:
        if out.human is not None:
            text = out.human(out.value(), Style(True))
        else:
            text = json.dumps(out.value(), indent=2, sort_keys=True, ensure_ascii=False)
        stream.write(text if text.endswith("\n") else text + "\n")
        stream.flush()


def error_envelope(verb: str, err: WorkbooksError) -> str:
    """The failure envelope, one JSON line (the same object in json and agent modes)."""
    body = {"ok": False, "verb": verb, "error": err.cli_dict()}
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n"


def emit_error(mode: str, verb: str, err: WorkbooksError, stream_out=None, stream_err=None) -> None:
    stream_out = stream_out or sys.stdout
    stream_err = stream_err or sys.stderr
    if mode == JSON:
        stream_out.write(error_envelope(verb, err))
        stream_out.flush()
    elif mode == AGENT:
        stream_err.write(error_envelope(verb, err))
        stream_err.flush()
    else:
        st = Style(getattr(stream_err, "isatty", lambda: False)())
        stream_err.write(f"{st.red('wbx:')} {err.message}\n")
        if err.hint:
            stream_err.write(f"  {st.dim('hint: ' + err.hint)}\n")
