"""The OpenAI-compatible Chat Completions wire (OpenAI, OpenRouter, vLLM, Ollama, llama.cpp's server).

Neutral messages become `role: tool` results and assistant `tool_calls` with JSON-string arguments;
a stream's tool-call argument fragments are merged by their `index` (a fragment with a new id at
an index already used is a new call: some routers number every call 0).
"""

from __future__ import annotations

import json

import openai

from workbooks.agent.llm.model import MALFORMED, ChatModel, check_event_stream, close_quietly, malformed_answer
from workbooks.agent.llm.retry import StreamIncomplete
from workbooks.agent.llm.transcript import pair_tool_results, text_of
from workbooks.agent.llm.types import LlmError, Reply, ToolCall, Usage, parse_arguments, unique_ids

NO_KEY = "no-key"  # a local server without auth still gets a syntactically valid bearer header


def to_openai_messages(messages: list[dict]) -> list[dict]:
    out = []
    for m in pair_tool_results(messages):
        role = m.get("role")
        if role == "assistant":
            calls = [{"id": c.get("id") or f"call_{i}", "type": "function",
                      "function": {"name": c.get("name", ""), "arguments": json.dumps(c.get("arguments") or {})}}
                     for i, c in enumerate(m.get("tool_calls") or [])]
            text = text_of(m.get("content"))
            msg = {"role": "assistant", "content": text if (text or not calls) else None}
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
        elif role == "tool":
            out.append({"role": "tool", "tool_call_id": m.get("tool_call_id", ""), "content": text_of(m.get("content"))})
        elif role in ("system", "user"):
            out.append({"role": role, "content": text_of(m.get("content"))})
        else:
            raise LlmError(f"unknown message role {role!r} in the transcript")
    return out


def to_openai_tools(tools: list[dict]) -> list[dict]:
    return [{"type": "function", "function": {"name": t["name"], "description": t.get("description", ""),
                                              "parameters": t.get("parameters") or {"type": "object", "properties": {}}}}
            for t in tools]


class OpenAiModel(ChatModel):
    provider = "openai"
    sdk = openai

    def __init__(self, settings):
        super().__init__(settings)
        self.client = openai.AsyncOpenAI(api_key=settings.api_key or NO_KEY, base_url=settings.base_url,
                                         max_retries=0, timeout=settings.timeout_s)

    async def aclose(self) -> None:
        await self.client.close()

    async def _attempt(self, messages, tools, stream, emit) -> Reply:
        kwargs = {"model": self.settings.model, "messages": to_openai_messages(messages)}
        if tools:
            kwargs["tools"] = to_openai_tools(tools)
        if not stream:
            try:
                resp = await self.client.chat.completions.create(**kwargs)
            except json.JSONDecodeError as e:
                raise malformed_answer("Chat Completions", e) from e
            try:
                return _reply_of(resp)
            except MALFORMED as e:
                raise malformed_answer("Chat Completions", e) from e
        s = await self.client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
        try:
            check_event_stream(s.response, "Chat Completions")
            return await _read_stream(s, emit)
        except MALFORMED as e:
            raise malformed_answer("Chat Completions", e) from e
        finally:
            await close_quietly(s)


def _reply_of(resp) -> Reply:
    if not resp.choices:
        raise ValueError("no choice in the answer")
    choice = resp.choices[0]
    msg = choice.message
    if msg is None:
        raise ValueError("a choice without a message")
    calls = [_call(tc.id, tc.function.name if tc.function else "", tc.function.arguments if tc.function else "", i)
             for i, tc in enumerate(msg.tool_calls or [])]
    return Reply(text=text_of(msg.content), tool_calls=unique_ids(calls), usage=_usage(resp.usage), stop_reason=choice.finish_reason)


async def _read_stream(s, emit) -> Reply:
    text: list[str] = []
    slots: list[dict] = []      # in order of first appearance
    by_index: dict[int, dict] = {}
    usage = Usage()
    finish = None
    async for chunk in s:
        if chunk.usage is not None:
            usage = _usage(chunk.usage)
        for choice in chunk.choices or []:
            if choice.index not in (0, None):
                continue
            delta = choice.delta
            if delta is not None:
                if delta.content:
                    if not isinstance(delta.content, str):
                        raise TypeError(f"delta content is {type(delta.content).__name__}")
                    text.append(delta.content)
                    await emit(delta.content)
                for pos, frag in enumerate(delta.tool_calls or []):
                    idx = frag.index if frag.index is not None else pos
                    slot = by_index.get(idx)
                    if slot is None or (frag.id and slot["id"] and frag.id != slot["id"]):
                        slot = {"id": "", "name": "", "args": []}
                        by_index[idx] = slot
                        slots.append(slot)
                    if frag.id:
                        slot["id"] = frag.id
                    fn = frag.function
                    if fn is not None:
                        if fn.name:
                            slot["name"] += fn.name if slot["name"] != fn.name else ""
                        if fn.arguments:
                            slot["args"].append(fn.arguments)
            if choice.finish_reason:
                finish = choice.finish_reason
    if finish is None:
        raise StreamIncomplete("the stream ended before the model finished its answer")
    calls = [_call(sl["id"], sl["name"], "".join(sl["args"]), i) for i, sl in enumerate(slots)]
    return Reply(text="".join(text), tool_calls=unique_ids(calls), usage=usage, stop_reason=finish)


def _call(cid, name, raw, i) -> ToolCall:
    args, err = parse_arguments(raw)
    return ToolCall(id=cid or f"call_{i}", name=name or "", arguments=args, arguments_error=err)


def _usage(u) -> Usage:
    if u is None:
        return Usage()
    return Usage(prompt_tokens=int(getattr(u, "prompt_tokens", 0) or 0),
                 completion_tokens=int(getattr(u, "completion_tokens", 0) or 0))
