"""The provider-neutral results of one model call (what the loop reads), and the one error it raises."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from workbooks.errors import WorkbooksError


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: dict
    arguments_error: str | None = None  # "invalid JSON arguments: …" when the model's JSON did not parse


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)


@dataclass
class Reply:
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    stop_reason: str | None = None  # the provider's own word ("stop", "tool_calls", "end_turn", "tool_use", …)


class LlmError(WorkbooksError):
    """The model could not be reached or refused the request (after the retries it deserved)."""

    code = "llm_error"
    http_status = 502
    hint = "check WB_LLM_PROVIDER, WB_LLM_BASE_URL, WB_LLM_MODEL and the API key"

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False,
                 hint: str | None = None, data: object = None):
        super().__init__(message, hint=hint, data=data)
        self.status = status
        self.retryable = retryable

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["status"] = self.status
        return d


def parse_arguments(raw) -> tuple[dict, str | None]:
    """A tool call's argument text as an object; malformed JSON gives ({}, "invalid JSON arguments: …").

    Empty text means no arguments. A JSON string that itself holds an object (some models encode
    twice) is unwrapped once. Anything that is not an object is an error the loop reports.
    """
    if isinstance(raw, dict):
        return raw, None
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}, None
    if not isinstance(raw, str):
        return {}, f"invalid JSON arguments: expected an object, got {_json_kind(raw)}"
    try:
        value = json.loads(raw)
    except ValueError as e:
        return {}, f"invalid JSON arguments: {e.args[0] if e.args else e} in {_clip(raw)}"
    if isinstance(value, str):
        try:
            inner = json.loads(value)
        except ValueError:
            inner = None
        if isinstance(inner, dict):
            return inner, None
    if not isinstance(value, dict):
        return {}, f"invalid JSON arguments: expected an object, got {_json_kind(value)}"
    return value, None


def _clip(s: str, n: int = 120) -> str:
    return repr(s if len(s) <= n else s[:n] + "…")


def _json_kind(v) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(v), type(v).__name__)


def unique_ids(calls: list[ToolCall]) -> list[ToolCall]:
    """Calls of one reply with distinct ids (some servers number every call `call_0`): the results
    are paired with their calls by id, so a repeated id gets a suffix."""
    seen: set[str] = set()
    for c in calls:
        base, n = c.id, 1
        while c.id in seen:
            n += 1
            c.id = f"{base}_{n}"
        seen.add(c.id)
    return calls
