"""The Anthropic Messages wire.

Conversion as the wire requires: system messages go to `system`; assistant tool calls become
`tool_use` blocks; the results of one turn (consecutive `role: tool` messages) become ONE user
message of `tool_result` blocks, first in that message; roles alternate (same-role neighbours are
merged); empty text blocks, which the API refuses, are left out. Tool ids are reduced to the
characters the API accepts, the same way on both sides of a pair. A stream's `input_json_delta`
fragments are merged per content block `index`.
"""

from __future__ import annotations

import json
import re

import anthropic

from workbooks.agent.llm.model import MALFORMED, ChatModel, check_event_stream, close_quietly, malformed_answer
from workbooks.agent.llm.retry import StreamIncomplete
from workbooks.agent.llm.transcript import pair_tool_results, text_of
from workbooks.agent.llm.types import LlmError, Reply, ToolCall, Usage, parse_arguments, unique_ids

NO_KEY = "no-key"  # a local server without auth; also keeps the SDK from looking for credential files
_ID_BAD = re.compile(r"[^A-Za-z0-9_-]")


def _tool_id(cid: str, i: int = 0) -> str:
    return _ID_BAD.sub("_", cid or "")[:64] or f"toolu_{i}"


def to_anthropic(messages: list[dict]) -> tuple[str | None, list[dict]]:
    """(system, messages) in the Messages API's shape."""
    system: list[str] = []
    out: list[dict] = []

    def push(role: str, blocks: list[dict]) -> None:
        if not blocks:
            return
        if out and out[-1]["role"] == role:
            prev = out[-1]["content"]
            if role == "user" and blocks[0]["type"] == "tool_result":
                # tool_result blocks must come first in their user message
                n = sum(1 for b in prev if b["type"] == "tool_result")
                prev[n:n] = blocks
            else:
                prev.extend(blocks)
        else:
            out.append({"role": role, "content": list(blocks)})

    for m in pair_tool_results(messages):
        role = m.get("role")
        text = text_of(m.get("content"))
        if role == "system":
            if text.strip():
                system.append(text)
        elif role == "user":
            if text.strip():
                push("user", [{"type": "text", "text": text}])
        elif role == "assistant":
            blocks = [{"type": "text", "text": text}] if text.strip() else []
            for i, c in enumerate(m.get("tool_calls") or []):
                args = c.get("arguments")
                blocks.append({"type": "tool_use", "id": _tool_id(c.get("id", ""), i), "name": c.get("name", ""),
                               "input": args if isinstance(args, dict) else {}})
            push("assistant", blocks)
        elif role == "tool":
            block = {"type": "tool_result", "tool_use_id": _tool_id(m.get("tool_call_id", ""))}
            if text:
                block["content"] = text
            push("user", [block])
        else:
            raise LlmError(f"unknown message role {role!r} in the transcript")
    return ("\n\n".join(system) or None), out


def to_anthropic_tools(tools: list[dict]) -> list[dict]:
    return [{"name": t["name"], "description": t.get("description", ""),
             "input_schema": t.get("parameters") or {"type": "object", "properties": {}}} for t in tools]


class AnthropicModel(ChatModel):
    provider = "anthropic"
    sdk = anthropic

    def __init__(self, settings):
        super().__init__(settings)
        self.client = anthropic.AsyncAnthropic(api_key=settings.api_key or NO_KEY, base_url=settings.base_url,
                                               max_retries=0, timeout=settings.timeout_s)

    async def aclose(self) -> None:
        await self.client.close()

    async def _attempt(self, messages, tools, stream, emit) -> Reply:
        system, msgs = to_anthropic(messages)
        if not msgs:
            raise LlmError("nothing to send: the transcript has no user message")
        kwargs = {"model": self.settings.model, "max_tokens": self.settings.max_tokens, "messages": msgs}
        if system:
            kwargs["system"] = system
        if tools:
            kwargs["tools"] = to_anthropic_tools(tools)
        if not stream:
            try:
                resp = await self.client.messages.create(**kwargs)
            except json.JSONDecodeError as e:
                raise malformed_answer("Messages", e) from e
            try:
                return _reply_of(resp)
            except MALFORMED as e:
                raise malformed_answer("Messages", e) from e
        s = await self.client.messages.create(**kwargs, stream=True)
        try:
            check_event_stream(s.response, "Messages")
            return await _read_stream(s, emit)
        except MALFORMED as e:
            raise malformed_answer("Messages", e) from e
        finally:
            await close_quietly(s)


def _reply_of(resp) -> Reply:
    text: list[str] = []
    calls: list[ToolCall] = []
    if not isinstance(resp.content, list):
        raise ValueError("no content list")
    for i, b in enumerate(resp.content):
        if b.type == "text":
            text.append(text_of(b.text))
        elif b.type == "tool_use":
            args, err = parse_arguments(b.input)
            calls.append(ToolCall(id=b.id or f"toolu_{i}", name=b.name or "", arguments=args, arguments_error=err))
    u = resp.usage
    usage = Usage(_input_tokens(u), int(getattr(u, "output_tokens", 0) or 0)) if u is not None else Usage()
    return Reply(text="".join(text), tool_calls=unique_ids(calls), usage=usage, stop_reason=resp.stop_reason)


async def _read_stream(s, emit) -> Reply:
    blocks: dict[int, dict] = {}
    order: list[int] = []
    prompt = completion = 0
    stop = None
    done = False
    async for ev in s:
        t = ev.type
        if t == "message_start":
            u = ev.message.usage
            if u is not None:
                prompt = _input_tokens(u)
                completion = int(getattr(u, "output_tokens", 0) or 0)
        elif t == "content_block_start":
            cb = ev.content_block
            block = {"type": cb.type, "text": [], "id": getattr(cb, "id", "") or "",
                     "name": getattr(cb, "name", "") or "", "args": [],
                     "input": getattr(cb, "input", None)}  # some proxies put the whole input here
            if cb.type == "text" and isinstance(getattr(cb, "text", None), str) and cb.text:
                block["text"].append(cb.text)
                await emit(cb.text)
            blocks[ev.index] = block
            order.append(ev.index)
        elif t == "content_block_delta":
            block = blocks.get(ev.index)
            if block is None:
                continue
            d = ev.delta
            if d.type == "text_delta":
                if not isinstance(d.text, str):
                    raise TypeError(f"text_delta text is {type(d.text).__name__}")
                block["text"].append(d.text)
                await emit(d.text)
            elif d.type == "input_json_delta":
                block["args"].append(d.partial_json)
        elif t == "message_delta":
            if ev.delta.stop_reason:
                stop = ev.delta.stop_reason
            u = ev.usage
            if u is not None:
                completion = int(getattr(u, "output_tokens", 0) or 0) or completion
                prompt = max(prompt, _input_tokens(u))
        elif t == "message_stop":
            done = True
    if not done:
        raise StreamIncomplete("the stream ended before message_stop")
    text: list[str] = []
    calls: list[ToolCall] = []
    for i, idx in enumerate(order):
        b = blocks[idx]
        if b["type"] == "text":
            text.append("".join(b["text"]))
        elif b["type"] == "tool_use":
            raw = "".join(b["args"])
            args, err = parse_arguments(raw if raw.strip() or not isinstance(b["input"], dict) else b["input"])
            calls.append(ToolCall(id=b["id"] or f"toolu_{i}", name=b["name"], arguments=args, arguments_error=err))
    return Reply(text="".join(text), tool_calls=unique_ids(calls), usage=Usage(prompt, completion), stop_reason=stop)


def _input_tokens(u) -> int:
    """Input tokens including the cached ones (they are input the model read)."""
    return sum(int(getattr(u, k, 0) or 0) for k in ("input_tokens", "cache_creation_input_tokens",
                                                     "cache_read_input_tokens"))
