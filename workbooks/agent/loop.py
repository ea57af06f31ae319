"""The agent loop: ask the model, run the tools it calls, feed the results back, until it is done.

The original's rules (runtime/host/agent.ex), kept as facts:
- messages start `[system, user(task)]`; every tool call of a turn runs, in order, and its result
  goes back as a `tool` message; `done {result}` ends the run with that result (calls after it in
  the same turn are not run);
- a turn with text and no tool call ends the run with that text; an empty turn gets ONE nudge
  (`NUDGE`), then the run ends with "(no result)";
- a step is one model turn (all the calls of a turn share its number, counted from 0; the nudge
  takes a step too); before each turn, `step >= max_steps` ends the run with
  "stopped: reached max_steps (<n>)";
- "unknown tool: <name>" and the loop goes on; a tool runs at most `tool_timeout_s`
  ("tool error: <name> timed out after 150s (killed)"); a raising tool gives
  "tool error: <name> raised — <msg>"; a tool that needs exec is not offered to a non-exec run and,
  if called anyway, answers "<name> not permitted (no exec capability)";
- context economy: an output over `tool_output_cap` bytes keeps its first and last cap/2 bytes
  around "...[N bytes truncated]..."; past `compact_threshold` bytes of transcript the turns
  between the task and the last `compact_keep_recent` messages are condensed by one summarising
  model call (a tool call is never separated from its results), or, when that call fails, by a
  plain listing headed "(auto-condensed earlier turns)".

Secrets: arguments go to tools as the model wrote them (placeholders stay; tools resolve them at
egress) and every output is redacted before it is recorded, emitted or shown to the model.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

import structlog
import trio

from workbooks.agent.llm import ChatModel, LlmError, Reply, ToolCall, Usage
from workbooks.agent.records import Recorder, clean_text
from workbooks.agent.tools.base import Tool, ToolContext, ToolResult, spec

log = structlog.get_logger()

DONE = "done"
EXEC_TOOL_NAMES = frozenset({"git", "publish"})  # the host-brokered tools of exec runs
NO_RESULT = "(no result)"
CONDENSED = "(auto-condensed earlier turns)"
SUMMARY_HEADER = "[Earlier turns of this run, condensed to save context; take them as settled and carry on with the task]\n"
EVENT_OUTPUT_CHARS = 200
DONE_SPEC = {
    "name": DONE,
    "description": "Finish the task. Provide the final result/answer.",
    "parameters": {"type": "object", "properties": {"result": {"type": "string"}}, "required": ["result"]},
}
SUMMARY_SYSTEM = (
    "You condense the working transcript of an AI agent so it can keep working with less context. "
    "Write a short brief (at most 300 words) of what it still needs: facts and data it found, files "
    "it wrote (paths and what is in them), decisions taken, and where it stands now. Leave out chatter "
    "and raw dumps. Be concrete; no preamble."
)
SUMMARY_BLOCK_CHARS = 1200  # each condensed message shows the summariser at most this much
FALLBACK_BLOCK_CHARS = 240


def nudge_text(after_tools: bool) -> str:
    """The one nudge an empty turn gets (the original's words)."""
    return ("Please give your answer to my request now, in plain language"
            + (" using what your tools returned" if after_tools else "")
            + ". Don't call any more tools.")


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    """A positive integer from the environment; anything else keeps the default (as the original)."""
    raw = (env.get(name) or "").strip()
    try:
        n = int(raw)
    except ValueError:
        return default
    return n if n > 0 else default


@dataclass
class LoopConfig:
    max_steps: int = 12
    tool_timeout_s: float = 150.0
    tool_output_cap: int = 8000  # WB_AGENT_TOOL_OUTPUT_CAP
    compact_threshold: int = 24000  # WB_AGENT_COMPACT_THRESHOLD
    compact_keep_recent: int = 6  # WB_AGENT_COMPACT_KEEP_RECENT

    def __post_init__(self):
        if not isinstance(self.max_steps, int) or isinstance(self.max_steps, bool) or self.max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer, not {self.max_steps!r}")
        if not isinstance(self.tool_timeout_s, (int, float)) or not math.isfinite(self.tool_timeout_s) \
                or self.tool_timeout_s <= 0:
            raise ValueError(f"tool_timeout_s must be a positive number of seconds, not {self.tool_timeout_s!r}")
        if self.tool_output_cap < 1 or self.compact_threshold < 1 or self.compact_keep_recent < 0:
            raise ValueError("tool_output_cap >= 1, compact_threshold >= 1, compact_keep_recent >= 0")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "LoopConfig":
        """Settings from the environment; keyword overrides win (None means "not given")."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {
            "tool_output_cap": _env_int(env, "WB_AGENT_TOOL_OUTPUT_CAP", 8000),
            "compact_threshold": _env_int(env, "WB_AGENT_COMPACT_THRESHOLD", 24000),
            "compact_keep_recent": _env_int(env, "WB_AGENT_COMPACT_KEEP_RECENT", 6),
        }
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown LoopConfig settings: {sorted(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class LoopOutcome:
    status: str  # "done" | "error" | "cancelled"
    result: str
    steps: int  # model turns taken (the nudge included)
    usage: Usage
    tools: list[str] = field(default_factory=list)  # distinct tool names called, first use first
    error: str | None = None
    compactions: int = 0  # how many times older turns were condensed


@dataclass
class _Step:
    output: str
    exit_code: int | None
    error: str | None


# ── context economy ───────────────────────────────────────────────────────────────────────────────

def truncate_output(text: str, cap: int) -> str:
    """Over `cap` UTF-8 bytes: the first and last cap/2 bytes (whole characters) around a marker
    that says how many bytes were left out."""
    raw = text.encode("utf-8")
    if len(raw) <= cap:
        return text
    half = cap // 2
    head = raw[:half].decode("utf-8", "ignore")  # a character cut in two is dropped whole
    tail = raw[len(raw) - half:].decode("utf-8", "ignore")
    dropped = len(raw) - len(head.encode("utf-8")) - len(tail.encode("utf-8"))
    return f"{head}\n\n...[{dropped} bytes truncated]...\n\n{tail}"


def transcript_bytes(messages: list[dict]) -> int:
    """What the transcript weighs: every message's text plus the arguments of its tool calls."""
    n = 0
    for m in messages:
        n += len(clean_text(m.get("content") or "").encode("utf-8"))
        for c in m.get("tool_calls") or ():
            n += len(json.dumps(c.get("arguments"), ensure_ascii=False, default=str).encode("utf-8", "replace"))
    return n


def compaction_split(messages: list[dict], keep_recent: int) -> int:
    """Index where the verbatim tail starts: the last `keep_recent` messages, moved back so that
    the tail never opens with a tool result whose call would be condensed away."""
    n = len(messages)
    i = n - min(keep_recent, max(n - 2, 0))
    while 2 < i < n and messages[i].get("role") == "tool":
        i -= 1
    return i


def _calls_note(m: dict, arg_chars: int) -> str:
    """` name(args…), …` for an assistant turn's tool calls (what it did, for a condensation)."""
    calls = m.get("tool_calls") or ()
    if not calls:
        return ""
    parts = []
    for c in calls:
        args = json.dumps(c.get("arguments"), ensure_ascii=False, default=str)
        parts.append(f"{c.get('name', 'tool')}({args[:arg_chars]}{'…' if len(args) > arg_chars else ''})")
    return " " + ", ".join(parts)


def _render_block(m: dict, limit: int) -> str:
    return f"[{m.get('role', '?')}{_calls_note(m, 200)}] {clean_text(m.get('content') or '')[:limit]}"


def condensed_fallback(middle: list[dict], earlier: list[str], cap: int) -> str:
    """The no-model condensation: an earlier condensation carried over whole, then the start of
    every other message, one line each; at most `cap` bytes (head and tail kept)."""
    lines = []
    for text in earlier:
        if text.startswith(CONDENSED + "\n"):
            text = text[len(CONDENSED) + 1:]
        lines.append(text)
    for m in middle:
        if _is_summary(m):
            continue
        text = " ".join(clean_text(m.get("content") or "").split())
        lines.append(f"- {m.get('role', '?')}{_calls_note(m, 80)}: {text[:FALLBACK_BLOCK_CHARS]}")
    return truncate_output(CONDENSED + "\n" + "\n".join(lines), cap)


def _is_summary(m: dict) -> bool:
    content = m.get("content")
    return m.get("role") == "user" and isinstance(content, str) and content.startswith(SUMMARY_HEADER)


# ── the loop ──────────────────────────────────────────────────────────────────────────────────────

class _Run:
    def __init__(self, model: ChatModel, tools: dict[str, Tool], ctx: ToolContext, task: str, system: str,
                 config: LoopConfig, recorder: Recorder, on_event):
        self.model, self.tools, self.ctx, self.config, self.recorder = model, tools, ctx, config, recorder
        self.on_event = on_event
        self.task = task
        self.messages: list[dict] = [{"role": "system", "content": system}, {"role": "user", "content": task}]
        self.step = 0
        self.usage = Usage()
        self.tools_used: list[str] = []
        self.compactions = 0
        self.log = log.bind(tenant=ctx.tenant, run=ctx.run_id)
        self.offered = [spec(t) for t in tools.values() if ctx.exec or not getattr(t, "needs_exec", False)]
        if not any(s["name"] == DONE for s in self.offered):
            self.offered.append(DONE_SPEC)

    # events and records ----------------------------------------------------------------------
    async def emit(self, event: dict) -> None:
        if self.on_event is None:
            return
        try:
            await self.on_event(event)
        except Exception as e:  # noqa: BLE001 - a listener that fails never fails the run
            self.log.warning("agent_event_failed", type=event.get("type"), error=self.ctx.secrets.redact(str(e))[:200])

    async def on_delta(self, text: str) -> None:
        if text:
            text = self.ctx.secrets.redact(clean_text(text))
            await self.emit({"type": "delta", "content": text, "text": text})

    def add_usage(self, reply: Reply) -> None:
        u = getattr(reply, "usage", None)
        if u is not None:
            self.usage = self.usage + u

    async def note_running(self) -> None:
        await trio.to_thread.run_sync(lambda: self.recorder.status(
            "running", self.step, usage=self.usage, tools=list(self.tools_used)))

    # compaction ------------------------------------------------------------------------------
    async def maybe_compact(self) -> None:
        if transcript_bytes(self.messages) <= self.config.compact_threshold:
            return
        split = compaction_split(self.messages, self.config.compact_keep_recent)
        if split <= 2:
            return  # nothing between the task and the tail to condense
        middle, recent = self.messages[2:split], self.messages[split:]
        if all(_is_summary(m) for m in middle):
            return  # only an earlier condensation lies there: condensing it again gains nothing
        before = transcript_bytes(self.messages)
        summary = await self.summarise(middle)
        self.messages = self.messages[:2] + [{"role": "user", "content": SUMMARY_HEADER + summary}] + recent
        self.compactions += 1
        self.log.info("agent_compacted", step=self.step, condensed=len(middle), bytes_before=before,
                      bytes_after=transcript_bytes(self.messages), fallback=summary.startswith(CONDENSED))

    async def summarise(self, middle: list[dict]) -> str:
        earlier, blocks = [], []
        for m in middle:
            if _is_summary(m):
                earlier.append(m["content"][len(SUMMARY_HEADER):])
            else:
                blocks.append(_render_block(m, SUMMARY_BLOCK_CHARS))
        cap = max(2, self.config.compact_threshold // 2)
        prompt = f"TASK: {self.task}\n\n"
        if earlier:
            prompt += "EARLIER SUMMARY:\n" + "\n".join(earlier) + "\n\n"
        prompt += "TRANSCRIPT TO CONDENSE:\n" + "\n".join(blocks)
        try:
            reply = await self.model.complete(
                [{"role": "system", "content": SUMMARY_SYSTEM}, {"role": "user", "content": prompt}], [], stream=False)
        except Exception as e:  # noqa: BLE001 - condensing never loses the run
            self.log.warning("agent_condense_failed", error=self.ctx.secrets.redact(str(e))[:300])
            return condensed_fallback(middle, earlier, cap)
        self.add_usage(reply)
        text = (reply.text or "").strip()
        return text if text else condensed_fallback(middle, earlier, cap)

    # tools -----------------------------------------------------------------------------------
    async def call_tool(self, call: ToolCall) -> _Step:
        name = call.name
        tool = self.tools.get(name)
        needs_exec = name in EXEC_TOOL_NAMES or bool(tool is not None and getattr(tool, "needs_exec", False))
        if needs_exec and not self.ctx.exec:
            return _Step(f"{name} not permitted (no exec capability)", None, "no exec capability")
        if tool is None:
            return _Step(f"unknown tool: {name}", None, "unknown tool")
        if call.arguments_error or not isinstance(call.arguments, dict):
            why = call.arguments_error or "invalid JSON arguments: not an object"
            return _Step(f"tool error: {name} — {why}", None, "invalid arguments")
        timeout = self.config.tool_timeout_s
        ctx = dataclasses.replace(self.ctx, deadline=trio.current_time() + timeout)
        res: Any = None
        with trio.move_on_after(timeout) as scope:
            try:
                res = await tool(ctx, copy.deepcopy(call.arguments))  # the record keeps what the model sent
            except Exception as e:  # noqa: BLE001 - a raising tool is an answer the model can react to
                msg = str(e) or type(e).__name__
                self.log.warning("agent_tool_raised", tool=name, error=self.ctx.secrets.redact(msg)[:300],
                                 exc_type=type(e).__name__)
                return _Step(f"tool error: {name} raised — {msg}", None, msg)
        if scope.cancelled_caught:
            return _Step(f"tool error: {name} timed out after {timeout:g}s (killed)", None, "tool timeout")
        if isinstance(res, ToolResult):
            return _Step(clean_text(res.output if res.output is not None else ""), res.exit_code, res.error)
        return _Step(clean_text("" if res is None else res), 0, None)

    async def run_call(self, call: ToolCall) -> tuple[str, str | None]:
        """Run one call: record it, emit it, and return (what the model sees, done's result or None)."""
        self.log.info("agent_step_start", step=self.step, tool=call.name)
        t0 = time.monotonic()
        done_result = None
        if call.name == DONE:  # the loop's own tool: it ends the run (a registry entry is schema only)
            if call.arguments_error or not isinstance(call.arguments, dict):
                why = call.arguments_error or "invalid JSON arguments: not an object"
                st = _Step(f"tool error: {DONE} — {why}", None, "invalid arguments")
            else:
                r = call.arguments.get("result")
                done_result = "" if r is None else (r if isinstance(r, str) else json.dumps(r, ensure_ascii=False))
                st = _Step("ok", 0, None)
        else:
            st = await self.call_tool(call)
        redact = self.ctx.secrets.redact
        output = truncate_output(redact(clean_text(st.output)), self.config.tool_output_cap)
        error = redact(clean_text(st.error)) if st.error is not None else None
        dur_ms = int((time.monotonic() - t0) * 1000)
        if call.name not in self.tools_used:
            self.tools_used.append(call.name)
        args = self.ctx.secrets.redact_obj(call.arguments if isinstance(call.arguments, dict) else {})
        record = {"step": self.step, "tool": call.name, "args": args, "output": output,
                  "exit_code": st.exit_code, "error": error, "dur_ms": dur_ms}
        line = await trio.to_thread.run_sync(self.recorder.step, record)
        if isinstance(line, dict) and isinstance(line.get("args"), dict):
            args = line["args"]  # as recorded (long strings cut)
        await self.emit({"type": "step", "step": self.step, "tool": call.name, "args": args,
                         "output": output[:EVENT_OUTPUT_CHARS], "exit_code": st.exit_code, "error": error,
                         "dur_ms": dur_ms})
        return output, (None if done_result is None else redact(done_result))

    # turns -----------------------------------------------------------------------------------
    async def run(self) -> LoopOutcome:
        nudged = False
        while True:
            if self.step >= self.config.max_steps:
                return self.finish("done", f"stopped: reached max_steps ({self.config.max_steps})")
            await self.maybe_compact()
            try:
                reply = await self.model.complete(self.messages, self.offered, stream=True, on_delta=self.on_delta)
            except LlmError as e:
                return self.finish("error", None, error=getattr(e, "message", None) or str(e))
            except Exception as e:  # noqa: BLE001 - a broken wire ends the run with a clear error
                self.log.error("agent_model_failed", exc_type=type(e).__name__,
                               error=self.ctx.secrets.redact(str(e))[:300])
                return self.finish("error", None, error=f"{type(e).__name__}: {e}")
            self.add_usage(reply)
            calls = list(reply.tool_calls or [])
            text = reply.text or ""
            if not calls:
                if text.strip():
                    self.step += 1
                    return self.finish("done", text)
                if nudged:
                    self.step += 1
                    return self.finish("done", NO_RESULT)
                nudged = True
                self.messages.append({"role": "user", "content": nudge_text(self.step > 0)})
                self.step += 1
                await self.note_running()
                continue
            calls = _unique_ids(calls, self.step)
            self.messages.append({"role": "assistant", "content": text, "tool_calls": [
                {"id": c.id, "name": c.name, "arguments": c.arguments if isinstance(c.arguments, dict) else {}}
                for c in calls]})
            for call in calls:
                output, done_result = await self.run_call(call)
                self.messages.append({"role": "tool", "tool_call_id": call.id, "name": call.name, "content": output})
                if done_result is not None:
                    self.step += 1
                    return self.finish("done", done_result)
            self.step += 1
            await self.note_running()

    def finish(self, status: str, result: str | None, *, error: str | None = None) -> LoopOutcome:
        redact = self.ctx.secrets.redact
        if error is not None:
            error = redact(clean_text(error))
            result = f"error: {error}"
        return LoopOutcome(status=status, result=redact(clean_text(result or "")), steps=self.step,
                           usage=self.usage, tools=list(self.tools_used), error=error,
                           compactions=self.compactions)


def _unique_ids(calls: list[ToolCall], step: int) -> list[ToolCall]:
    """Every call of a turn gets a distinct, non-empty id (its result is paired with it)."""
    seen: set[str] = set()
    out = []
    for i, c in enumerate(calls):
        cid = c.id if isinstance(c.id, str) and c.id else f"call_{step}_{i}"
        while cid in seen:
            cid = f"{cid}_{i}"
        seen.add(cid)
        out.append(c if cid == c.id else dataclasses.replace(c, id=cid))
    return out


def _is_cancellation(exc: BaseException) -> bool:
    """trio.Cancelled, alone or as the only thing inside an exception group (a tool's nursery)."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        rest = exc.split(trio.Cancelled)[1]
        return rest is None
    return False


async def run_loop(*, model: ChatModel, tools: dict[str, Tool], ctx: ToolContext, task: str, system: str,
                   config: LoopConfig, recorder: Recorder,
                   on_event: Callable[[dict], Awaitable[None]] | None = None) -> LoopOutcome:
    """Run one agent to the end and return how it ended. The records (`_steps.jsonl` per call,
    `_status.json` per turn and at the end, `events.org` at the end) are written as it goes. A
    trio cancellation is noted as `cancelled` in `_status.json` and then propagates."""
    run = _Run(model, tools, ctx, task, system, config, recorder, on_event)
    try:
        await run.note_running()
        outcome = await run.run()
    except BaseException as exc:
        if not _is_cancellation(exc):
            raise
        try:
            recorder.status("cancelled", run.step, result="cancelled", usage=run.usage, tools=list(run.tools_used))
        except Exception as e:  # noqa: BLE001 - the cancellation still propagates
            run.log.warning("agent_cancel_note_failed", error=ctx.secrets.redact(str(e))[:200])
        run.log.info("agent_run_cancelled", steps=run.step)
        raise
    extra = {"tools": outcome.tools, "compactions": outcome.compactions}
    if outcome.error is not None:
        extra["error"] = outcome.error
    await trio.to_thread.run_sync(lambda: recorder.status(outcome.status, outcome.steps, outcome.result,
                                                          outcome.usage, **extra))
    await trio.to_thread.run_sync(recorder.events_org, task, outcome)
    if outcome.status == "error":
        await run.emit({"type": "error", "error": outcome.error})
    else:
        await run.emit({"type": "done", "result": outcome.result, "status": outcome.status})
    return outcome
