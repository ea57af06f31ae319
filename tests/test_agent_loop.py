"""The agent loop's rules (the original's agent.ex / agent_loop_test.exs), driven by a scripted model.

The model here is a small in-test ChatModel that replays scripted replies and keeps a copy of every
request; the tools are real Tool objects. End-to-end runs over the real wires against the fake
model server are in test_agent_loop_wire.py.
"""

from __future__ import annotations

import copy
import json
import time

import pytest
import trio

from workbooks.agent.llm import LlmError, Reply, ToolCall, Usage
from workbooks.agent.loop import (
    CONDENSED,
    LoopConfig,
    compaction_split,
    nudge_text,
    run_loop,
    transcript_bytes,
    truncate_output,
)
from workbooks.agent.records import Recorder, read_status, read_steps
from workbooks.agent.secrets import Secrets
from workbooks.agent.tools.base import ToolContext, ToolResult

SECRET = "tok-9fK2mQ7vXw"


class ScriptedModel:
    """Replays `turns` (a Reply, an exception to raise, or a callable(messages) -> Reply) in order;
    summarising calls (no tools offered) are answered by `summary` the same way."""

    def __init__(self, turns, summary=None):
        self.turns = list(turns)
        self.summary = summary
        self.requests: list[dict] = []

    async def complete(self, messages, tools, *, stream=True, on_delta=None):
        self.requests.append({"messages": copy.deepcopy(messages), "tools": copy.deepcopy(tools), "stream": stream})
        if not tools:
            turn = self.summary
        elif self.turns:
            turn = self.turns.pop(0)
        else:
            raise AssertionError("the model was called more often than scripted")
        if callable(turn) and not isinstance(turn, Reply):
            turn = turn(messages)
        if isinstance(turn, BaseException):
            raise turn
        if on_delta is not None and turn.text:
            for i in range(0, len(turn.text), 4):
                r = on_delta(turn.text[i:i + 4])
                if r is not None:
                    await r
        return turn

    async def aclose(self):
        pass

    @property
    def loop_requests(self):
        return [r for r in self.requests if r["tools"]]


def say(text, usage=(1, 1)):
    return Reply(text=text, tool_calls=[], usage=Usage(*usage), stop_reason="stop")


def calls(*cs, text="", usage=(1, 1)):
    tcs = []
    for i, c in enumerate(cs):
        name, args = c[0], c[1]
        tcs.append(ToolCall(id=f"c{i}-{name}", name=name, arguments=args, arguments_error=c[2] if len(c) > 2 else None))
    return Reply(text=text, tool_calls=tcs, usage=Usage(*usage), stop_reason="tool_calls")


class FnTool:
    def __init__(self, name, fn, needs_exec=False, parameters=None):
        self.name = name
        self.description = f"the {name} tool"
        self.parameters = parameters or {"type": "object", "properties": {}}
        self.needs_exec = needs_exec
        self.fn = fn
        self.calls: list[dict] = []

    async def __call__(self, ctx, args):
        self.calls.append(args)
        return await self.fn(ctx, args)


async def _echo(ctx, args):
    return ToolResult(output=f"echo: {args.get('text', '')}")


async def _leak(ctx, args):
    return ToolResult(output=f"the server said: Authorization: Bearer {SECRET}\n" + args.get("text", ""),
                      exit_code=0)


async def _slow(ctx, args):
    await trio.sleep(30)
    return ToolResult(output="never")


async def _boom(ctx, args):
    raise RuntimeError("kaput")


def make_tools(**extra):
    tools = {
        "echo": FnTool("echo", _echo),
        "leak": FnTool("leak", _leak),
        "slow": FnTool("slow", _slow),
        "boom": FnTool("boom", _boom),
        "git": FnTool("git", _echo, needs_exec=True),
        "done": FnTool("done", _echo),  # schema only: the loop ends the run itself
    }
    tools.update(extra)
    return tools


def run(tmp_path, model, *, tools=None, exec_=False, config=None, task="do the thing", events=None, secrets=None):
    secrets = secrets or Secrets({"API_TOKEN": SECRET})
    ctx = ToolContext(tenant="acme", run_id="run-1", data_dir=tmp_path, workdir=tmp_path, exec=exec_, secrets=secrets)
    recorder = Recorder(tmp_path, agent="tester", secrets=secrets)
    events = events if events is not None else []

    async def on_event(ev):
        events.append(ev)

    async def main():
        return await run_loop(model=model, tools=tools if tools is not None else make_tools(), ctx=ctx, task=task,
                              system="you are a test agent", config=config or LoopConfig(), recorder=recorder,
                              on_event=on_event)

    return trio.run(main)


# ── the conversation ────────────────────────────────────────────────────────────────────────────

def test_messages_tools_in_order_results_paired_and_text_ends_the_run(tmp_path):
    tools = make_tools()
    model = ScriptedModel([
        calls(("echo", {"text": "one"}), ("echo", {"text": "two"}), text="let me look"),
        say("Both echoed."),
    ])
    out = run(tmp_path, model, tools=tools)
    assert (out.status, out.result, out.steps, out.tools, out.error) == ("done", "Both echoed.", 2, ["echo"], None)
    first, second = model.loop_requests
    assert first["messages"] == [{"role": "system", "content": "you are a test agent"},
                                 {"role": "user", "content": "do the thing"}]
    assert first["stream"] is True
    assert tools["echo"].calls == [{"text": "one"}, {"text": "two"}]
    assert second["messages"][2:] == [
        {"role": "assistant", "content": "let me look", "tool_calls": [
            {"id": "c0-echo", "name": "echo", "arguments": {"text": "one"}},
            {"id": "c1-echo", "name": "echo", "arguments": {"text": "two"}}]},
        {"role": "tool", "tool_call_id": "c0-echo", "name": "echo", "content": "echo: one"},
        {"role": "tool", "tool_call_id": "c1-echo", "name": "echo", "content": "echo: two"},
    ]
    # both calls of the turn share its step number; the records say so
    assert [(s["step"], s["tool"], s["output"]) for s in read_steps(tmp_path)] == [(0, "echo", "echo: one"),
                                                                                  (0, "echo", "echo: two")]
    st = read_status(tmp_path)
    assert (st["status"], st["steps"], st["result"], st["tools"]) == ("done", 2, "Both echoed.", ["echo"])
    assert st["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


def test_done_ends_the_run_and_later_calls_of_the_turn_do_not_run(tmp_path):
    tools = make_tools()
    model = ScriptedModel([calls(("echo", {"text": "a"}), ("done", {"result": "all set"}), ("echo", {"text": "b"}))])
    out = run(tmp_path, model, tools=tools)
    assert (out.status, out.result, out.tools) == ("done", "all set", ["echo", "done"])
    assert tools["echo"].calls == [{"text": "a"}]
    assert tools["done"].calls == []  # the loop ends the run itself
    assert [s["tool"] for s in read_steps(tmp_path)] == ["echo", "done"]
    assert "* Result\n  all set\n" in (tmp_path / "events.org").read_text()


def test_the_tools_offered_are_the_given_ones_plus_done_and_exec_tools_only_in_exec_runs(tmp_path):
    tools = make_tools()
    del tools["done"]
    model = ScriptedModel([say("hi")])
    run(tmp_path, model, tools=tools)
    names = [t["name"] for t in model.loop_requests[0]["tools"]]
    assert names == ["echo", "leak", "slow", "boom", "done"]  # git needs exec: not offered
    assert all(set(t) == {"name", "description", "parameters"} for t in model.loop_requests[0]["tools"])
    model = ScriptedModel([say("hi")])
    (tmp_path / "exec").mkdir()
    run(tmp_path / "exec", model, tools=tools, exec_=True)
    assert "git" in [t["name"] for t in model.loop_requests[0]["tools"]]


def test_a_non_exec_run_calling_an_exec_tool_gets_the_refusal(tmp_path):
    tools = make_tools()
    del tools["git"]  # a non-exec run is not even given the git tool; the name still refuses
    model = ScriptedModel([calls(("git", {"message": "x"}), ("publish", {})), say("ok")])
    run(tmp_path, model, tools=tools)
    results = [m["content"] for m in model.loop_requests[1]["messages"] if m["role"] == "tool"]
    assert results == ["git not permitted (no exec capability)", "publish not permitted (no exec capability)"]


# ── empty turns, max_steps, unknown tools ───────────────────────────────────────────────────────

def test_an_empty_first_turn_gets_one_nudge_and_recovers(tmp_path):
    model = ScriptedModel([say(""), say("Recovered on the nudge.")])
    out = run(tmp_path, model)
    assert out.result == "Recovered on the nudge." and out.steps == 2
    last = model.loop_requests[1]["messages"]
    assert last[-1] == {"role": "user", "content": "Please give your answer to my request now, in plain language. "
                                                   "Don't call any more tools."}
    assert nudge_text(False) == last[-1]["content"]


def test_an_empty_turn_after_tools_is_nudged_with_the_tools_wording_then_no_result(tmp_path):
    model = ScriptedModel([calls(("echo", {"text": "x"})), say(""), say("   ")])
    out = run(tmp_path, model)
    assert (out.status, out.result, out.steps) == ("done", "(no result)", 3)
    nudges = [m for m in model.loop_requests[2]["messages"] if m["role"] == "user"][1:]
    assert [m["content"] for m in nudges] == [
        "Please give your answer to my request now, in plain language using what your tools returned. "
        "Don't call any more tools."]
    assert len(model.loop_requests) == 3  # one nudge only, never a second


def test_max_steps_counts_model_turns(tmp_path):
    model = ScriptedModel([calls(("echo", {"text": str(i)}), ("echo", {"text": "again"})) for i in range(5)])
    out = run(tmp_path, model, config=LoopConfig(max_steps=3))
    assert (out.status, out.result, out.steps) == ("done", "stopped: reached max_steps (3)", 3)
    assert len(model.loop_requests) == 3
    assert [s["step"] for s in read_steps(tmp_path)] == [0, 0, 1, 1, 2, 2]
    assert read_status(tmp_path)["result"] == "stopped: reached max_steps (3)"


def test_an_unknown_tool_is_reported_and_the_loop_goes_on(tmp_path):
    model = ScriptedModel([calls(("bogus_tool_xyz", {"a": 1})), say("recovered after the bad tool")])
    out = run(tmp_path, model)
    assert out.result == "recovered after the bad tool"
    assert model.loop_requests[1]["messages"][-1]["content"] == "unknown tool: bogus_tool_xyz"
    step = read_steps(tmp_path)[0]
    assert (step["tool"], step["output"], step["error"]) == ("bogus_tool_xyz", "unknown tool: bogus_tool_xyz",
                                                             "unknown tool")


def test_malformed_arguments_are_reported_to_the_model_not_run(tmp_path):
    tools = make_tools()
    bad = "invalid JSON arguments: Expecting value: line 1 column 9 in '{\"text\": }'"
    model = ScriptedModel([calls(("echo", {}, bad)), say("fine")])
    run(tmp_path, model, tools=tools)
    assert tools["echo"].calls == []
    assert model.loop_requests[1]["messages"][-1]["content"] == f"tool error: echo — {bad}"


# ── failing tools ───────────────────────────────────────────────────────────────────────────────

def test_a_slow_tool_is_killed_at_the_timeout_and_the_run_goes_on(tmp_path):
    model = ScriptedModel([calls(("slow", {}), ("echo", {"text": "after"})), say("carried on")])
    t0 = time.monotonic()
    out = run(tmp_path, model, config=LoopConfig(tool_timeout_s=0.3))
    assert time.monotonic() - t0 < 10
    assert out.result == "carried on"
    results = [m["content"] for m in model.loop_requests[1]["messages"] if m["role"] == "tool"]
    assert results == ["tool error: slow timed out after 0.3s (killed)", "echo: after"]
    step = read_steps(tmp_path)[0]
    assert step["error"] == "tool timeout" and 250 <= step["dur_ms"] < 5000


def test_the_default_timeout_message_says_150s(tmp_path):
    assert LoopConfig().tool_timeout_s == 150.0
    # the message uses the configured number as the original prints it
    model = ScriptedModel([calls(("slow", {})), say("ok")])
    run(tmp_path, model, config=LoopConfig(tool_timeout_s=0.05))
    assert model.loop_requests[1]["messages"][-1]["content"] == "tool error: slow timed out after 0.05s (killed)"


def test_a_raising_tool_becomes_a_tool_error_and_the_run_survives(tmp_path):
    model = ScriptedModel([calls(("boom", {})), say("handled the broken command")])
    out = run(tmp_path, model)
    assert out.result == "handled the broken command" and out.status == "done"
    assert model.loop_requests[1]["messages"][-1]["content"] == "tool error: boom raised — kaput"
    assert read_steps(tmp_path)[0]["error"] == "kaput"


def test_a_model_error_ends_the_run_with_status_error(tmp_path):
    events = []
    model = ScriptedModel([calls(("echo", {"text": "x"})),
                           LlmError("HTTP 503 from the model after 2 retries", status=503, retryable=True)])
    out = run(tmp_path, model, events=events)
    assert out.status == "error" and out.error == "HTTP 503 from the model after 2 retries"
    assert out.result == "error: HTTP 503 from the model after 2 retries"
    st = read_status(tmp_path)
    assert (st["status"], st["error"]) == ("error", "HTTP 503 from the model after 2 retries")
    assert events[-1] == {"type": "error", "error": "HTTP 503 from the model after 2 retries"}
    assert len(read_steps(tmp_path)) == 1  # the step before the failure is kept


# ── secrets ─────────────────────────────────────────────────────────────────────────────────────

def test_secrets_in_outputs_are_redacted_everywhere_and_arguments_are_not_resolved(tmp_path):
    tools = make_tools()
    events = []
    model = ScriptedModel([
        calls(("leak", {"text": "key={{secret:API_TOKEN}}"})),
        say("The token was " + SECRET),  # even a model that somehow learnt it cannot put it in a record
    ])
    out = run(tmp_path, model, tools=tools, events=events)
    assert tools["leak"].calls == [{"text": "key={{secret:API_TOKEN}}"}]  # the placeholder reached the tool as is
    sent = json.dumps(model.requests)
    assert SECRET not in sent and "Bearer [secret:API_TOKEN]" in sent
    assert SECRET not in out.result and out.result == "The token was [secret:API_TOKEN]"
    assert SECRET not in json.dumps(events)
    for p in tmp_path.iterdir():
        assert SECRET.encode() not in p.read_bytes(), p.name
    assert "{{secret:API_TOKEN}}" in (tmp_path / "_steps.jsonl").read_text()


def test_a_secret_cut_by_truncation_is_redacted_first(tmp_path):
    async def big(ctx, args):
        return ToolResult(output="x" * 497 + SECRET + "y" * 3000)

    model = ScriptedModel([calls(("big", {})), say("ok")])
    run(tmp_path, model, tools=make_tools(big=FnTool("big", big)), config=LoopConfig(tool_output_cap=1000))
    seen = model.loop_requests[1]["messages"][-1]["content"]
    assert SECRET[:5] not in seen and "...[" in seen


# ── context economy ─────────────────────────────────────────────────────────────────────────────

def test_truncate_output_keeps_head_and_tail_bytes_around_the_marker():
    assert truncate_output("hello", 1000) == "hello"
    big = "A" * 500 + "Z" * 5000
    out = truncate_output(big, 1000)
    assert out == "A" * 500 + "\n\n...[4500 bytes truncated]...\n\n" + "Z" * 500
    # multi-byte characters are never cut in half; the count stays exact
    text = "é" * 3001  # 6002 bytes
    out = truncate_output(text, 1001)
    head, tail = out.split("\n\n...[")[0], out.split("]...\n\n")[1]
    n = int(out.split("...[")[1].split(" bytes")[0])
    assert set(head) == {"é"} and set(tail) == {"é"}
    assert len(head.encode()) + len(tail.encode()) + n == 6002 and len(head.encode()) <= 500
    assert truncate_output("x" * 1000, 1000) == "x" * 1000


def test_a_large_tool_output_is_cut_before_the_model_sees_it(tmp_path):
    async def big(ctx, args):
        return ToolResult(output="H" * 100 + "m" * 20000 + "T" * 100)

    model = ScriptedModel([calls(("big", {})), say("ok")])
    run(tmp_path, model, tools=make_tools(big=FnTool("big", big)), config=LoopConfig.from_env(
        {"WB_AGENT_TOOL_OUTPUT_CAP": "2000"}))
    seen = model.loop_requests[1]["messages"][-1]["content"]
    assert seen.startswith("H" * 100) and seen.endswith("T" * 100)
    assert "...[18200 bytes truncated]..." in seen
    assert len(read_steps(tmp_path)[0]["output"]) == 200


def _long_run(n_turns, size):
    async def dump(ctx, args):
        return ToolResult(output=f"<{args['i']}>" + "d" * size)

    turns = [calls(("dump", {"i": i}), ("echo", {"text": str(i)}), text=f"turn {i}") for i in range(n_turns)]
    return FnTool("dump", dump), turns


def test_condensing_keeps_system_task_and_recent_turns_and_sums_usage(tmp_path):
    dump, turns = _long_run(6, 3000)
    model = ScriptedModel(turns + [say("finished")], summary=say("SUMMARY: dumped 0..3", usage=(50, 7)))
    cfg = LoopConfig(compact_threshold=8000, compact_keep_recent=4)
    out = run(tmp_path, model, tools=make_tools(dump=dump), config=cfg)
    assert out.result == "finished" and out.compactions >= 1
    summaries = [r for r in model.requests if not r["tools"]]
    assert summaries and summaries[0]["stream"] is False
    prompt = summaries[0]["messages"][1]["content"]
    assert prompt.startswith("TASK: do the thing") and "<0>" in prompt
    # usage: every loop call (1, 1) plus every summarising call (50, 7)
    k = len(summaries)
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (7 + 50 * k, 7 + 7 * k)
    for r in model.loop_requests:
        msgs = r["messages"]
        assert msgs[0]["role"] == "system" and msgs[1] == {"role": "user", "content": "do the thing"}
        assert transcript_bytes(msgs) < 8000 + 2 * 3100  # never far past the threshold
        # every tool result still follows the assistant turn that asked for it
        pending = set()
        for m in msgs[2:]:
            if m["role"] == "assistant":
                pending = {c["id"] for c in m.get("tool_calls", [])}
            elif m["role"] == "tool":
                assert m["tool_call_id"] in pending
    last = model.loop_requests[-1]["messages"]
    assert "SUMMARY: dumped 0..3" in last[2]["content"] and last[2]["role"] == "user"
    assert last[-1]["content"] == "echo: 5"  # the most recent turn is there verbatim
    assert any(m.get("content") == "turn 5" for m in last)


def test_condensing_falls_back_when_the_summary_call_fails(tmp_path):
    dump, turns = _long_run(4, 4000)
    model = ScriptedModel(turns + [say("finished")], summary=LlmError("HTTP 500", status=500))
    out = run(tmp_path, model, tools=make_tools(dump=dump),
              config=LoopConfig(compact_threshold=6000, compact_keep_recent=2))
    assert out.status == "done" and out.result == "finished" and out.compactions >= 1
    last = model.loop_requests[-1]["messages"]
    assert CONDENSED in last[2]["content"]
    assert "- tool: <0>ddd" in last[2]["content"]  # the first condensation is carried into the later ones
    assert "- assistant dump({\"i\": 0}), echo({\"text\": \"0\"}): turn 0" in last[2]["content"]
    assert len(last[2]["content"].encode()) < 3000 + 200  # and the condensation stays within half the threshold


def test_compaction_split_never_separates_a_call_from_its_results():
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "t"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]},
            {"role": "tool", "content": "r1"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "2"}, {"id": "3"}, {"id": "4"}]},
            {"role": "tool", "content": "a"}, {"role": "tool", "content": "b"}, {"role": "tool", "content": "c"}]
    assert compaction_split(msgs, 2) == 4  # moved back to the assistant of the last turn
    assert compaction_split(msgs, 4) == 4
    assert compaction_split(msgs, 5) == 2  # the tail reaches the task: nothing to condense
    assert compaction_split(msgs, 0) == len(msgs)


# ── events, records, cancellation ───────────────────────────────────────────────────────────────

def test_events_step_delta_done(tmp_path):
    events = []
    model = ScriptedModel([calls(("echo", {"text": "hi"}), text="checking"), say("all good here")])
    run(tmp_path, model, events=events)
    steps = [e for e in events if e["type"] == "step"]
    assert len(steps) == 1
    s = steps[0]
    assert set(s) == {"type", "step", "tool", "args", "output", "exit_code", "error", "dur_ms"}
    assert (s["step"], s["tool"], s["args"], s["output"], s["exit_code"]) == (0, "echo", {"text": "hi"}, "echo: hi", 0)
    deltas = "".join(e["content"] for e in events if e["type"] == "delta")
    assert deltas == "checkingall good here"
    assert all(e["text"] == e["content"] for e in events if e["type"] == "delta")
    assert events[-1] == {"type": "done", "result": "all good here", "status": "done"}


def test_records_are_durable_and_well_formed_after_every_step(tmp_path):
    seen = []

    async def probe(ctx, args):
        # what a reader (or a runner restarted after kill -9) finds while the run is going
        steps = read_steps(tmp_path)
        raw = (tmp_path / "_steps.jsonl").read_bytes() if (tmp_path / "_steps.jsonl").exists() else b""
        seen.append((len(steps), raw.count(b"\n"), read_status(tmp_path)))
        return ToolResult(output="probed")

    model = ScriptedModel([calls(("probe", {})), calls(("probe", {}), ("probe", {})), say("end")])
    run(tmp_path, model, tools=make_tools(probe=FnTool("probe", probe)))
    assert [(n, nl) for n, nl, _ in seen] == [(0, 0), (1, 1), (2, 2)]
    assert [st["status"] for _, _, st in seen] == ["running"] * 3
    assert [st["steps"] for _, _, st in seen] == [0, 1, 1]
    for line in (tmp_path / "_steps.jsonl").read_bytes().splitlines():
        assert list(json.loads(line)) == ["step", "agent", "tool", "args", "output", "exit_code", "error",
                                          "dur_ms", "ts"]


def test_cancellation_is_recorded_and_propagates(tmp_path):
    secrets = Secrets({"API_TOKEN": SECRET})
    ctx = ToolContext(tenant="acme", run_id="run-1", data_dir=tmp_path, workdir=tmp_path, secrets=secrets)
    recorder = Recorder(tmp_path, agent="tester", secrets=secrets)
    model = ScriptedModel([calls(("echo", {"text": "1"})), calls(("slow", {}))])
    state = {}

    async def main():
        with trio.move_on_after(1.0) as scope:
            await run_loop(model=model, tools=make_tools(), ctx=ctx, task="t", system="s",
                           config=LoopConfig(), recorder=recorder)
            state["returned"] = True
        state["cancelled"] = scope.cancelled_caught

    trio.run(main)
    assert state == {"cancelled": True}
    st = read_status(tmp_path)
    assert (st["status"], st["steps"], st["result"]) == ("cancelled", 1, "cancelled")
    assert [s["tool"] for s in read_steps(tmp_path)] == ["echo"]


def test_loop_config_from_env():
    cfg = LoopConfig.from_env({"WB_AGENT_TOOL_OUTPUT_CAP": "4000", "WB_AGENT_COMPACT_THRESHOLD": "12000",
                               "WB_AGENT_COMPACT_KEEP_RECENT": "3"}, max_steps=40)
    assert (cfg.max_steps, cfg.tool_output_cap, cfg.compact_threshold, cfg.compact_keep_recent,
            cfg.tool_timeout_s) == (40, 4000, 12000, 3, 150.0)
    # nonsense in the environment keeps the defaults (as the original); None overrides are ignored
    cfg = LoopConfig.from_env({"WB_AGENT_TOOL_OUTPUT_CAP": "lots", "WB_AGENT_COMPACT_THRESHOLD": "-5"}, max_steps=None)
    assert (cfg.max_steps, cfg.tool_output_cap, cfg.compact_threshold, cfg.compact_keep_recent) == (12, 8000, 24000, 6)
    with pytest.raises(ValueError):
        LoopConfig(max_steps=0)
    with pytest.raises(TypeError):
        LoopConfig.from_env({}, max_stepz=3)


def test_done_with_malformed_arguments_does_not_end_the_run(tmp_path):
    tools = make_tools()
    del tools["done"]  # offered by the loop itself
    model = ScriptedModel([calls(("done", {}, "invalid JSON arguments: Unterminated string")),
                           calls(("done", {"result": {"n": 3}}))])
    out = run(tmp_path, model, tools=tools)
    assert model.loop_requests[1]["messages"][-1]["content"] == \
        "tool error: done — invalid JSON arguments: Unterminated string"
    assert (out.status, out.result, out.steps) == ("done", '{"n": 3}', 2)


def test_loop_config_refuses_nonsense():
    for bad in (float("nan"), float("inf"), 0, -1, "5"):
        with pytest.raises(ValueError):
            LoopConfig(tool_timeout_s=bad)
    with pytest.raises(ValueError):
        LoopConfig(compact_keep_recent=-1)
    assert truncate_output("abcdef", 1) == "\n\n...[6 bytes truncated]...\n\n"


def test_a_tail_too_big_to_condense_is_not_condensed_again_and_again(tmp_path):
    async def huge(ctx, args):
        return ToolResult(output="h" * 3000)

    three = calls(("huge", {}), ("huge", {}), ("huge", {}))
    # turn 3 condenses turn 1; after turn 3's empty reply (nudged) only that condensation lies
    # between the task and the kept tail: it is not summarised once more
    model = ScriptedModel([three, copy.deepcopy(three), say(""), say("end")], summary=say("S"))
    out = run(tmp_path, model, tools=make_tools(huge=FnTool("huge", huge)),
              config=LoopConfig(compact_threshold=5000, compact_keep_recent=2))
    assert out.result == "end"
    summaries = [r for r in model.requests if not r["tools"]]
    assert len(summaries) == out.compactions == 1
    last = model.loop_requests[-1]["messages"]
    assert [m["role"] for m in last] == ["system", "user", "user", "assistant", "tool", "tool", "tool", "user"]


def test_a_secret_in_an_exception_and_a_failing_listener_stay_harmless(tmp_path, capfd):
    import sys

    from workbooks.log import configure

    configure("agents", stream=sys.stdout)  # as the agents process does (an earlier test may have set a sink)
    async def leaky_boom(ctx, args):
        raise ValueError(f"auth failed for token {SECRET}")

    async def bad_listener(ev):
        raise RuntimeError(f"listener gone ({SECRET})")

    model = ScriptedModel([calls(("lb", {})), say("went on")])
    secrets = Secrets({"API_TOKEN": SECRET})
    ctx = ToolContext(tenant="acme", run_id="run-1", data_dir=tmp_path, workdir=tmp_path, secrets=secrets)

    async def main():
        return await run_loop(model=model, tools=make_tools(lb=FnTool("lb", leaky_boom)), ctx=ctx, task="t",
                              system="s", config=LoopConfig(), recorder=Recorder(tmp_path, secrets=secrets),
                              on_event=bad_listener)

    out = trio.run(main)
    assert out.result == "went on"
    assert model.loop_requests[1]["messages"][-1]["content"] == \
        "tool error: lb raised — auth failed for token [secret:API_TOKEN]"
    logs = capfd.readouterr()
    both = logs.out + logs.err  # wherever this process's log was configured to go (stdout, or stderr in a CLI)
    assert "agent_tool_raised" in both and "agent_event_failed" in both
    assert SECRET not in logs.out + logs.err
    for p in tmp_path.iterdir():
        assert SECRET.encode() not in p.read_bytes(), p.name
