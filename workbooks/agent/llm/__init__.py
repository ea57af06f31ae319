"""The model wires: one `ChatModel.complete()` over OpenAI-compatible Chat Completions or Anthropic
Messages, with streaming, tool calls, retries and usage. Messages and tools are provider-neutral:

    {"role": "system"|"user", "content": str}
    {"role": "assistant", "content": str, "tool_calls": [{"id", "name", "arguments": dict}]}
    {"role": "tool", "tool_call_id": str, "name": str, "content": str}
    tools: [{"name", "description", "parameters": <JSON schema>}]

    model = make_model(ModelSettings.from_env(tenant_api_key=..., model=...))
    reply = await model.complete(messages, tools, on_delta=print)   # Reply(text, tool_calls, usage, stop_reason)
    await model.aclose()

Details (settings, retry policy, the fake server the tests use): README.md in this folder.
"""

from __future__ import annotations

from workbooks.agent.llm.model import ChatModel
from workbooks.agent.llm.settings import ModelSettings
from workbooks.agent.llm.types import LlmError, Reply, ToolCall, Usage

__all__ = ["ChatModel", "LlmError", "ModelSettings", "Reply", "ToolCall", "Usage", "make_model"]


def make_model(settings: ModelSettings) -> ChatModel:
    """The wire for `settings.provider` (its SDK is imported only when used)."""
    if settings.provider == "anthropic":
        from workbooks.agent.llm.anthropic_wire import AnthropicModel

        return AnthropicModel(settings)
    if settings.provider == "openai":
        from workbooks.agent.llm.openai_wire import OpenAiModel

        return OpenAiModel(settings)
    raise LlmError(f"unknown model provider {settings.provider!r} (openai or anthropic)")
