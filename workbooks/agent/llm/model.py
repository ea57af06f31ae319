"""`ChatModel`: one model call with the run's retry and timeout policy around a wire's single attempt.

A wire (OpenAI Chat Completions, Anthropic Messages) implements `_attempt`; this class owns what
both share: the 120 s budget per request, the retries (`retry.py`), the live text deltas, logging.
A streamed attempt that already handed text to `on_delta` is not retried when it breaks (the
listener would see the text twice): it fails with a retryable LlmError instead.
"""

from __future__ import annotations

import inspect
from typing import Awaitable, Callable

import anyio

from workbooks.agent.llm import retry
from workbooks.agent.llm.settings import ModelSettings
from workbooks.agent.llm.types import LlmError, Reply
from workbooks.log import get_logger

OnDelta = Callable[[str], Awaitable[None] | None]
CLOSE_GRACE_S = 2.0
# What reading a response that is not of the wire's shape raises (the SDKs build objects leniently)
MALFORMED = (AttributeError, TypeError, KeyError, IndexError, ValueError)


class DeltaCallbackError(Exception):
    """Carries an exception of the caller's `on_delta` through the wire, so it is re-raised as is
    (never retried, never mistaken for a malformed answer)."""

    def __init__(self, error: Exception):
        super().__init__(repr(error))
        self.error = error


def malformed_answer(wire: str, exc: BaseException) -> LlmError:
    return LlmError(f"the model server's answer is not a {wire} response ({type(exc).__name__}: "
                    f"{str(exc)[:200]})", hint="check WB_LLM_BASE_URL and WB_LLM_PROVIDER")


def check_event_stream(response, wire: str) -> None:
    """A streaming request must be answered with an event stream (not a proxy's HTML page)."""
    ctype = (response.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype != "text/event-stream":
        raise LlmError(f"the model server answered a {wire} streaming request with {ctype or 'no content type'}, "
                       f"not an event stream",
                       hint="check WB_LLM_BASE_URL and WB_LLM_PROVIDER")


class ChatModel:
    provider = ""
    sdk = None  # the SDK module whose exception classes `retry.classify` reads

    def __init__(self, settings: ModelSettings):
        self.settings = settings

    async def complete(self, messages: list[dict], tools: list[dict], *, stream: bool = True,
                       on_delta: OnDelta | None = None) -> Reply:
        s = self.settings
        log = get_logger(component="llm", provider=self.provider, model=s.model)
        attempts = s.max_retries + 1
        for attempt in range(attempts):
            emitted = False

            async def emit(text: str) -> None:
                nonlocal emitted
                if not text or on_delta is None:
                    return
                emitted = True
                try:
                    r = on_delta(text)
                    if inspect.isawaitable(r):
                        await r
                except Exception as e:
                    raise DeltaCallbackError(e) from e

            try:
                with anyio.fail_after(s.timeout_s):
                    return await self._attempt(messages, tools, stream, emit)
            except DeltaCallbackError as e:
                raise e.error
            except TimeoutError:
                err, wait = LlmError(f"the model server did not answer within {s.timeout_s:g}s",
                                     retryable=True), None
            except Exception as e:  # noqa: BLE001 - classify() re-raises what is not a model failure
                got = retry.classify(e, self.sdk)
                if got is None:
                    raise
                err, wait = got
            err = self._redacted(err)
            last = attempt == attempts - 1
            if not err.retryable:
                raise self._final(err, attempt + 1) from None
            if emitted:
                raise self._final(err, attempt + 1, "the stream broke after part of the answer was shown") from None
            if last:
                raise self._final(err, attempt + 1) from None
            if wait is not None and wait > retry.MAX_RETRY_AFTER_S:
                raise self._final(err, attempt + 1, f"the server asked to retry after {wait:g}s") from None
            pause = wait if wait is not None else retry.backoff_s(attempt)
            log.warning("llm_retry", attempt=attempt + 1, status=err.status, wait_s=round(pause, 3),
                        reason=err.message[:300])
            await anyio.sleep(pause)
        raise AssertionError("unreachable")

    def _redacted(self, err: LlmError) -> LlmError:
        key = self.settings.api_key
        if key and len(key) >= 4 and key in err.message:
            err.message = err.message.replace(key, "[secret:LLM_API_KEY]")
            err.args = (err.message,)
        return err

    def _final(self, err: LlmError, tries: int, why: str | None = None) -> LlmError:
        tail = f" ({why})" if why else ""
        if tries > 1 or why:
            tail += f" — gave up after {tries} attempt{'s' if tries > 1 else ''}"
        msg = f"{self.provider} model call failed: {err.message}{tail}"
        return LlmError(msg, status=err.status, retryable=err.retryable)

    async def _attempt(self, messages: list[dict], tools: list[dict], stream: bool, emit) -> Reply:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


async def close_quietly(closeable) -> None:
    """Close a stream/response even while being cancelled, without waiting long."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_GRACE_S):
        try:
            await closeable.close()
        except Exception:  # noqa: BLE001 - closing a broken stream may fail; nothing to do about it
            pass
