"""The provider-neutral transcript made well-formed before a wire converts it.

Both wires refuse a tool call without its result and a result without its call (OpenAI and
Anthropic answer 400). A run that was cancelled between a call and its result, or a transcript
condensed across such a pair, must still be sendable: a missing result becomes "(no result)", a
result whose call is gone becomes a user message that keeps its text.
"""

from __future__ import annotations

NO_RESULT = "(no result)"


def pair_tool_results(messages: list[dict]) -> list[dict]:
    out: list[dict] = []
    pending: list[dict] = []  # tool calls of the last assistant message still awaiting a result

    def flush() -> None:
        for call in pending:
            out.append({"role": "tool", "tool_call_id": call.get("id", ""), "name": call.get("name", ""),
                        "content": NO_RESULT})
        pending.clear()

    for m in messages:
        role = m.get("role")
        if role == "tool":
            match = next((c for c in pending if c.get("id") == m.get("tool_call_id")), None)
            if match is not None:
                pending.remove(match)
                out.append(m)
            else:
                out.append({"role": "user", "content": f"[result of tool {m.get('name') or '?'}]\n{m.get('content') or ''}"})
            continue
        flush()
        out.append(m)
        if role == "assistant":
            pending = [c for c in (m.get("tool_calls") or []) if isinstance(c, dict)]
    flush()
    return out


def text_of(content) -> str:
    """A message's content as text (a list of text parts is joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)
