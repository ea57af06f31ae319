"""Which model a run talks to: provider, base URL, model, key, and the request policy.

Read from the environment (`WB_LLM_*`); the tenant's secret `LLM_API_KEY`, when the caller passes it,
wins over the operator's `WB_LLM_API_KEY` (a tenant pays for its own runs), and a run's `model`
overrides `WB_LLM_MODEL`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping

from workbooks.agent.llm.types import LlmError

PROVIDERS = ("openai", "anthropic")
DEFAULT_BASE_URLS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_RETRIES = 2
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires a cap; OpenAI-compatible servers get none


@dataclass
class ModelSettings:
    provider: str
    base_url: str
    model: str
    api_key: str | None
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    max_tokens: int = DEFAULT_MAX_TOKENS  # added field: Anthropic's required max_tokens

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise LlmError(f"unknown model provider {self.provider!r} (WB_LLM_PROVIDER is openai or anthropic)")
        if not self.model:
            raise LlmError("no model named: set WB_LLM_MODEL or give the run a model")
        if not self.base_url.startswith(("http://", "https://")):
            raise LlmError(f"WB_LLM_BASE_URL must be an http(s) URL, got {self.base_url!r}")
        if not (isinstance(self.timeout_s, (int, float)) and math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise LlmError(f"the model request timeout must be a positive number of seconds, got {self.timeout_s!r}")
        if not (isinstance(self.max_retries, int) and 0 <= self.max_retries <= 10):
            raise LlmError(f"max_retries must be 0..10, got {self.max_retries!r}")
        if not self.api_key and self.base_url.rstrip("/") == DEFAULT_BASE_URLS[self.provider]:
            raise LlmError(f"no API key for {self.provider}: set WB_LLM_API_KEY or the tenant secret LLM_API_KEY")

    def __repr__(self) -> str:  # the key never reaches a log or a traceback
        key = "set" if self.api_key else None
        return (f"ModelSettings(provider={self.provider!r}, base_url={self.base_url!r}, model={self.model!r}, "
                f"api_key={key!r}, timeout_s={self.timeout_s!r}, max_retries={self.max_retries!r})")

    __str__ = __repr__

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, *, tenant_api_key: str | None = None,
                 model: str | None = None) -> "ModelSettings":
        provider = (env.get("WB_LLM_PROVIDER") or "openai").strip().lower()
        if provider not in PROVIDERS:
            raise LlmError(f"unknown WB_LLM_PROVIDER {provider!r} (openai or anthropic)")
        base_url = (env.get("WB_LLM_BASE_URL") or "").strip() or DEFAULT_BASE_URLS[provider]
        return cls(
            provider=provider,
            base_url=base_url.rstrip("/"),
            model=(model or env.get("WB_LLM_MODEL") or "").strip(),
            api_key=tenant_api_key or env.get("WB_LLM_API_KEY") or None,
            timeout_s=_number(env, "WB_LLM_TIMEOUT_S", DEFAULT_TIMEOUT_S, float),
            max_retries=_number(env, "WB_LLM_MAX_RETRIES", DEFAULT_MAX_RETRIES, int),
            max_tokens=_number(env, "WB_LLM_MAX_TOKENS", DEFAULT_MAX_TOKENS, int),
        )


def _number(env: Mapping[str, str], name: str, default, kind):
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise LlmError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0 and name != "WB_LLM_MAX_RETRIES" or value < 0:
        raise LlmError(f"{name} must be positive, got {raw!r}")
    return value
