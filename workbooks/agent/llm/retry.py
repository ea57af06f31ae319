"""The retry policy of a model call, exactly: 408/429/5xx and transport failures are retried twice,
waiting what `Retry-After` asks (capped) or a short exponential back-off; anything else fails at once.

Both SDKs' own retries are off (`max_retries=0`), so this is the only policy in force.
"""

from __future__ import annotations

import email.utils
import random
import time

import anyio
import httpx2

from workbooks.agent.llm.types import LlmError

BACKOFF_BASE_S = 0.5       # first wait without Retry-After; doubles per attempt, +0–25 % jitter
MAX_RETRY_AFTER_S = 60.0   # a server asking for a longer pause is not waited for: the call fails
RETRYABLE_STATUS = frozenset({408, 429})  # and every 5xx
_STREAM_ERROR_STATUS = {"overloaded_error": 529, "rate_limit_error": 429, "api_error": 500, "server_error": 500,
                        "timeout_error": 408, "request_too_large": 413, "invalid_request_error": 400}


class StreamIncomplete(LlmError):
    """The stream ended before the model said it was done (a cut connection that closed cleanly)."""

    def __init__(self, message: str):
        super().__init__(message, retryable=True)


def is_retryable_status(status: int | None) -> bool:
    return status is not None and (status in RETRYABLE_STATUS or 500 <= status <= 599)


def retry_after_s(headers) -> float | None:
    """Seconds a response asks us to wait: `retry-after-ms`, else `Retry-After` (seconds or HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            v = float(ms) / 1000.0
            if v >= 0 and v == v:
                return v
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    ra = ra.strip()
    try:
        v = float(ra)
        return v if v >= 0 and v == v and v != float("inf") else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_s(attempt: int) -> float:
    return BACKOFF_BASE_S * (2 ** attempt) * (1 + random.random() * 0.25)


def classify(exc: BaseException, sdk) -> tuple[LlmError, float | None] | None:
    """(LlmError, Retry-After seconds) for a failure of a model call, or None if it is not one
    (a bug or a callback's own exception, which must propagate unchanged). `sdk` is the module
    (`openai` or `anthropic`) whose exception classes apply."""
    if isinstance(exc, LlmError):
        return exc, None
    if isinstance(exc, sdk.APIStatusError):
        status = exc.status_code
        etype, message = _error_fields(exc.body)
        if status == 200:  # an `error` event inside a stream that had started fine
            status = _STREAM_ERROR_STATUS.get(etype or "", 500)
        text = f"HTTP {status}" + (f" {etype}" if etype else "") + f": {message or exc.message}"
        return LlmError(text, status=status, retryable=is_retryable_status(status)), \
            retry_after_s(getattr(exc.response, "headers", None))
    if isinstance(exc, sdk.APITimeoutError):
        return LlmError("the model server did not answer in time", retryable=True), None
    if isinstance(exc, sdk.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        return LlmError(f"connection to the model server failed: {_describe(cause) if cause else exc}",
                        retryable=True), None
    if isinstance(exc, (httpx2.TransportError, anyio.EndOfStream, anyio.BrokenResourceError,
                        anyio.ClosedResourceError, ConnectionError)):
        return LlmError(f"connection to the model server failed: {_describe(exc)}", retryable=True), None
    if isinstance(exc, sdk.APIResponseValidationError):
        return LlmError(f"the model server sent an unexpected answer: {exc}", status=exc.status_code), None
    if isinstance(exc, sdk.APIError):  # an error object inside a stream (OpenAI-compatible servers)
        etype, message = _error_fields(exc.body)
        code = exc.body.get("code") if isinstance(exc.body, dict) else None
        status = code if isinstance(code, int) and 100 <= code <= 599 else _STREAM_ERROR_STATUS.get(etype or "", 500)
        text = f"error in the stream ({etype or status}): {message or exc.message}"
        return LlmError(text, status=status, retryable=is_retryable_status(status)), None
    base = getattr(sdk, "OpenAIError", None) or getattr(sdk, "AnthropicError", None)
    if base is not None and isinstance(exc, base):
        return LlmError(f"the model client failed: {_describe(exc)}"), None
    return None


def _error_fields(body) -> tuple[str | None, str | None]:
    """(type, message) from either provider's error body (or the `error` object the SDK kept)."""
    if not isinstance(body, dict):
        return None, (body if isinstance(body, str) and body else None)
    err = body.get("error") if isinstance(body.get("error"), dict) else body
    etype = err.get("type") if isinstance(err.get("type"), str) else None
    message = err.get("message") if isinstance(err.get("message"), str) else None
    return etype, message


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
