"""The two model wires against the fake model server (a subprocess speaking both wires over HTTP),
every call made under `trio.run`: streaming and not, tool calls, usage, retries, time-outs, the
message conversion each wire requires, and 50+ concurrent slow streams."""

from __future__ import annotations

import json
import time

import pytest
import trio

from tests.fake_llm import FakeLlm
from workbooks.agent.llm import LlmError, ModelSettings, Reply, ToolCall, Usage, make_model

WIRES = ["openai", "anthropic"]
KEY = "sk-test-4f1c9a0e7b"
TOOLS = [
    {"name": "shell", "description": "run a sandboxed pipeline",
     "parameters": {"type": "object", "properties": {"pipeline": {"type": "string"}}, "required": ["pipeline"]}},
    {"name": "done", "description": "finish", "parameters": {"type": "object", "properties": {"result": {"type": "string"}}}},
]
TASK = [{"role": "system", "content": "You are a careful agent."}, {"role": "user", "content": "list the files"}]


@pytest.fixture(scope="module")
def fake():
    with FakeLlm(require_key=KEY) as f:
        yield f


@pytest.fixture(autouse=True)
def _clean(fake):
    fake.reset()
    yield


def settings(fake, wire, **kw) -> ModelSettings:
    base = fake.openai_base_url if wire == "openai" else fake.anthropic_base_url
    kw.setdefault("api_key", KEY)
    return ModelSettings(provider=wire, base_url=base, model="fake-model", **kw)


def call(fake, wire, messages=TASK, tools=TOOLS, *, stream=True, on_delta=None, **kw) -> Reply:
    async def main():
        model = make_model(settings(fake, wire, **kw))
        try:
            return await model.complete(messages, tools, stream=stream, on_delta=on_delta)
        finally:
            await model.aclose()

    return trio.run(main)


def call_error(fake, wire, *a, **kw) -> tuple[LlmError, float]:
    t0 = time.monotonic()
    with pytest.raises(LlmError) as ei:
        call(fake, wire, *a, **kw)
    return ei.value, time.monotonic() - t0


def bodies(fake) -> list[dict]:
    return [json.loads(r["body"]) for r in fake.received()]


# ---- text ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("wire", WIRES)
def test_streamed_text_arrives_as_deltas_and_as_the_reply(fake, wire):
    text = "Three files: a.org, b.org and notes.txt — ünïcode too."
    fake.script([{"text": text, "text_split": 4, "usage": {"prompt_tokens": 321, "completion_tokens": 17}}])
    deltas: list[str] = []

    async def on_delta(d):  # an async listener is awaited
        await trio.sleep(0)
        deltas.append(d)

    r = call(fake, wire, on_delta=on_delta)
    assert r.text == text and r.tool_calls == []
    assert len(deltas) == len(range(0, len(text), 4)) and "".join(deltas) == text
    assert r.usage == Usage(321, 17)
    assert r.stop_reason == ("stop" if wire == "openai" else "end_turn")
    (rec,) = fake.received()
    body = json.loads(rec["body"])
    assert body["stream"] is True and body["model"] == "fake-model"
    assert rec["headers"]["x-stainless-async"] == "async:trio"  # the SDK ran on trio (through anyio)
    if wire == "openai":
        assert rec["path"] == "/v1/chat/completions"
        assert rec["headers"]["authorization"] == f"Bearer {KEY}"
        assert body["stream_options"] == {"include_usage": True}
    else:
        assert rec["path"] == "/v1/messages"
        # this SDK sends the key as a bearer token (older ones used x-api-key; the server takes both)
        assert rec["headers"].get("x-api-key") == KEY or rec["headers"].get("authorization") == f"Bearer {KEY}"
        assert rec["headers"]["anthropic-version"]
        assert isinstance(body["max_tokens"], int) and body["max_tokens"] > 0


@pytest.mark.parametrize("wire", WIRES)
def test_non_streamed_text_and_usage(fake, wire):
    fake.script([{"text": "plain answer", "usage": {"prompt_tokens": 9, "completion_tokens": 2}}])
    deltas: list[str] = []
    r = call(fake, wire, stream=False, on_delta=deltas.append)
    assert (r.text, r.tool_calls, r.usage) == ("plain answer", [], Usage(9, 2))
    assert deltas == []
    assert "stream" not in bodies(fake)[0] or bodies(fake)[0]["stream"] is False


@pytest.mark.parametrize("wire", WIRES)
def test_empty_turn_is_a_valid_reply(fake, wire):
    fake.script([{"text": ""}, {"text": ""}])
    for stream in (True, False):
        r = call(fake, wire, stream=stream)
        assert r.text == "" and r.tool_calls == []


# ---- tool calls ---------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("wire", WIRES)
def test_several_tool_calls_in_one_turn_fragments_merged_by_index(fake, wire, stream):
    calls = [
        {"name": "shell", "arguments": {"pipeline": "ls | wc -l", "input": "naïve \"quoted\"\nline"}},
        {"name": "shell", "arguments": {"pipeline": "echo {not json} ; seq 3", "nested": {"a": [1, 2, {"b": None}]}}},
        {"name": "done", "arguments": {"result": "ok ✓"}},
    ]
    fake.script([{"text": "Let me look.", "tool_calls": calls, "split": 2}])
    r = call(fake, wire, stream=stream)
    assert r.text == "Let me look."
    assert [(c.name, c.arguments, c.arguments_error) for c in r.tool_calls] == \
        [(c["name"], c["arguments"], None) for c in calls]
    ids = [c.id for c in r.tool_calls]
    assert len(set(ids)) == 3 and all(ids)
    assert r.stop_reason == ("tool_calls" if wire == "openai" else "tool_use")


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("wire", WIRES)
def test_malformed_arguments_are_reported_not_raised(fake, wire, stream):
    fake.script([{"tool_calls": [{"name": "shell", "arguments": '{"pipeline": "ls'},
                                 {"name": "shell", "arguments": '["not", "an", "object"]'},
                                 {"name": "done", "arguments": ""}], "split": 3}])
    r = call(fake, wire, stream=stream)
    a, b, c = r.tool_calls
    assert a.arguments == {} and a.arguments_error.startswith("invalid JSON arguments: ")
    assert b.arguments == {} and b.arguments_error == "invalid JSON arguments: expected an object, got an array"
    assert (c.name, c.arguments, c.arguments_error) == ("done", {}, None)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("wire", WIRES)
def test_repeated_call_ids_are_made_distinct_and_pair_with_their_results(fake, wire, stream):
    fake.script([{"tool_calls": [{"id": "call_0", "name": "shell", "arguments": {"pipeline": "ls"}},
                                 {"id": "call_0", "name": "shell", "arguments": {"pipeline": "pwd"}}]},
                 {"text": "both seen"}])
    r = call(fake, wire, stream=stream)
    a, b = r.tool_calls
    assert a.id != b.id and (a.arguments, b.arguments) == ({"pipeline": "ls"}, {"pipeline": "pwd"})
    follow = TASK + [{"role": "assistant", "content": "", "tool_calls": [
        {"id": c.id, "name": c.name, "arguments": c.arguments} for c in r.tool_calls]}] + [
        {"role": "tool", "tool_call_id": c.id, "name": c.name, "content": f"out of {c.arguments['pipeline']}"}
        for c in r.tool_calls]
    assert call(fake, wire, follow, stream=stream).text == "both seen"  # the server checked the pairing
    raw = fake.received()[1]["body"]
    assert "out of ls" in raw and "out of pwd" in raw and "(no result)" not in raw


def test_openai_fragments_of_two_calls_interleaved_by_index(fake):
    """A server may interleave the fragments of parallel calls; `index` says whose they are."""
    frags = [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "shell", "arguments": ""}},
        {"index": 1, "id": "call_b", "type": "function", "function": {"name": "done", "arguments": "{\"res"}},
        {"index": 0, "function": {"arguments": "{\"pipeline\": "}},
        {"index": 1, "function": {"arguments": "ult\": \"x\"}"}},
        {"index": 0, "function": {"arguments": "\"ls\"}"}},
    ]
    chunks = [{"choices": [{"index": 0, "delta": {"tool_calls": [f]}, "finish_reason": None}]} for f in frags]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    body = "".join(f"data: {json.dumps({'id': 'c', 'object': 'chat.completion.chunk', 'created': 0, 'model': 'm', **c})}\n\n"
                   for c in chunks) + "data: [DONE]\n\n"
    fake.script([{"raw": {"content_type": "text/event-stream", "body": body}}])
    r = call(fake, "openai")
    assert [(c.id, c.name, c.arguments) for c in r.tool_calls] == [
        ("call_a", "shell", {"pipeline": "ls"}), ("call_b", "done", {"result": "x"})]


def test_anthropic_tool_input_given_whole_in_content_block_start(fake):
    """Some Messages proxies send a tool call's input in content_block_start and no input_json_delta."""
    events = [
        ("message_start", {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                                "model": "m", "content": [], "stop_reason": None,
                                                                "usage": {"input_tokens": 5, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "shell", "input": {"pipeline": "seq 3"}}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 7}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    body = "".join(f"event: {n}\ndata: {json.dumps(d)}\n\n" for n, d in events)
    fake.script([{"raw": {"content_type": "text/event-stream", "body": body}}])
    r = call(fake, "anthropic")
    assert [(c.id, c.name, c.arguments, c.arguments_error) for c in r.tool_calls] == \
        [("toolu_1", "shell", {"pipeline": "seq 3"}, None)]
    assert r.usage == Usage(5, 7)


# ---- message conversion -------------------------------------------------------------------------

TRANSCRIPT = [
    {"role": "system", "content": "You are a careful agent."},
    {"role": "user", "content": "count the files [script:conv]"},
    {"role": "assistant", "content": "Looking.", "tool_calls": [
        {"id": "call_1", "name": "shell", "arguments": {"pipeline": "ls"}},
        {"id": "call_2", "name": "shell", "arguments": {"pipeline": "ls | wc -l"}}]},
    {"role": "tool", "tool_call_id": "call_1", "name": "shell", "content": "a.org\nb.org"},
    {"role": "tool", "tool_call_id": "call_2", "name": "shell", "content": "2"},
    {"role": "assistant", "content": ""},  # an empty turn
    {"role": "user", "content": "Please give your answer. Don't call any more tools."},
]


def test_anthropic_conversion_system_and_tool_pairing(fake):
    fake.script([{"text": "There are 2 files."}], key="conv")
    r = call(fake, "anthropic", TRANSCRIPT)
    assert r.text == "There are 2 files."  # the fake server checks the shape as the real API does
    body = bodies(fake)[0]
    assert body["system"] == "You are a careful agent."
    msgs = body["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[0]["content"] == [{"type": "text", "text": "count the files [script:conv]"}]
    assert msgs[1]["content"] == [
        {"type": "text", "text": "Looking."},
        {"type": "tool_use", "id": "call_1", "name": "shell", "input": {"pipeline": "ls"}},
        {"type": "tool_use", "id": "call_2", "name": "shell", "input": {"pipeline": "ls | wc -l"}}]
    # both results in ONE user message, first, then the nudge (the empty assistant turn is dropped)
    assert msgs[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "a.org\nb.org"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": "2"},
        {"type": "text", "text": "Please give your answer. Don't call any more tools."}]
    assert body["tools"][0] == {"name": "shell", "description": TOOLS[0]["description"],
                                "input_schema": TOOLS[0]["parameters"]}


def test_openai_conversion_tool_calls_and_tool_messages(fake):
    fake.script([{"text": "There are 2 files."}], key="conv")
    r = call(fake, "openai", TRANSCRIPT)
    assert r.text == "There are 2 files."
    msgs = bodies(fake)[0]["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "tool", "assistant", "user"]
    tc = msgs[2]["tool_calls"]
    assert [(c["id"], c["type"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in tc] == [
        ("call_1", "function", "shell", {"pipeline": "ls"}), ("call_2", "function", "shell", {"pipeline": "ls | wc -l"})]
    assert all(isinstance(c["function"]["arguments"], str) for c in tc)
    assert msgs[3] == {"role": "tool", "tool_call_id": "call_1", "content": "a.org\nb.org"}
    assert bodies(fake)[0]["tools"][0] == {"type": "function", "function": TOOLS[0]}


@pytest.mark.parametrize("wire", WIRES)
def test_unpaired_calls_and_results_still_send(fake, wire):
    """A run cancelled between a call and its result, or condensed across a pair, still sends."""
    msgs = [TASK[0], TASK[1],
            {"role": "assistant", "content": "", "tool_calls": [{"id": "call_x", "name": "shell", "arguments": {}}]},
            {"role": "user", "content": "go on"},
            {"role": "tool", "tool_call_id": "call_gone", "name": "shell", "content": "orphan output"}]
    fake.script([{"text": "fine"}])
    assert call(fake, wire, msgs).text == "fine"
    raw = fake.received()[0]["body"]
    assert "(no result)" in raw and "orphan output" in raw


# ---- retries ------------------------------------------------------------------------------------

@pytest.mark.parametrize("wire", WIRES)
def test_429_waits_what_retry_after_asks(fake, wire):
    fake.script([{"status": 429, "retry_after": "1.5"}, {"text": "after the pause"}])
    t0 = time.monotonic()
    r = call(fake, wire)
    elapsed = time.monotonic() - t0
    assert r.text == "after the pause"
    rec = fake.received()
    assert len(rec) == 2
    gap = rec[1]["ts"] - rec[0]["ts"]
    assert 1.45 <= gap < 5, gap  # the back-off without the header would be 0.5–0.63 s
    assert elapsed >= 1.45


@pytest.mark.parametrize("wire", WIRES)
def test_500_503_408_and_dropped_connections_are_retried(fake, wire):
    fake.script([{"status": 500}, {"status": 503}, {"text": "third time"},
                 {"status": 408}, {"drop": "before"}, {"text": "after a drop"},
                 {"tool_calls": [{"name": "shell", "arguments": {"pipeline": "ls"}}], "drop": "mid"},
                 {"tool_calls": [{"name": "shell", "arguments": {"pipeline": "ls"}}]}])
    assert call(fake, wire).text == "third time"
    assert call(fake, wire).text == "after a drop"
    r = call(fake, wire)  # a stream cut before any text was shown: retried whole
    assert [(c.name, c.arguments) for c in r.tool_calls] == [("shell", {"pipeline": "ls"})]
    assert len(fake.received()) == 8


@pytest.mark.parametrize("wire", WIRES)
def test_gives_up_after_two_retries_with_a_clear_error(fake, wire):
    fake.script([{"status": 503, "message": "upstream overloaded"}] * 3 + [{"text": "too late"}])
    err, _ = call_error(fake, wire)
    assert err.status == 503 and err.retryable and err.code == "llm_error"
    assert "upstream overloaded" in err.message and "gave up after 3 attempts" in err.message
    assert len(fake.received()) == 3
    assert call(fake, wire).text == "too late"  # the fourth turn was not consumed


@pytest.mark.parametrize("wire", WIRES)
def test_client_errors_are_not_retried_and_keys_not_echoed(fake, wire):
    fake.script([{"status": 400, "message": f"bad request for key {KEY}"}])
    err, _ = call_error(fake, wire)
    assert err.status == 400 and not err.retryable
    assert KEY not in err.message and "[secret:LLM_API_KEY]" in err.message
    err, _ = call_error(fake, wire, api_key="sk-wrong-key")  # the server refuses it: 401, once
    assert err.status == 401 and not err.retryable
    assert len(fake.received()) == 2


@pytest.mark.parametrize("wire", WIRES)
def test_retry_after_beyond_the_cap_fails_at_once(fake, wire):
    fake.script([{"status": 429, "retry_after": "3600"}])
    err, elapsed = call_error(fake, wire)
    assert err.status == 429 and "retry after 3600s" in err.message
    assert elapsed < 5 and len(fake.received()) == 1


@pytest.mark.parametrize("wire", WIRES)
def test_stream_cut_after_shown_text_fails_without_duplicating_it(fake, wire):
    fake.script([{"text": "a long answer that gets cut", "text_split": 3, "drop": "mid"}, {"text": "unused"}])
    deltas: list[str] = []
    err, _ = call_error(fake, wire, on_delta=deltas.append)
    assert err.retryable and "after part of the answer was shown" in err.message
    assert deltas and "a long answer that gets cut".startswith("".join(deltas))
    assert len(fake.received()) == 1


@pytest.mark.parametrize("wire", WIRES)
def test_error_event_inside_a_stream(fake, wire):
    """An overload/server error sent inside a stream that had started: retried (nothing was shown
    yet); an invalid-request error there is not."""
    busy = "overloaded_error" if wire == "anthropic" else "server_error"
    fake.script([{"tool_calls": [{"name": "shell", "arguments": {"pipeline": "ls"}}], "error_event": busy},
                 {"tool_calls": [{"name": "shell", "arguments": {"pipeline": "ls"}}]},
                 {"text": "x", "error_event": "invalid_request_error", "message": "prompt is too long"}])
    r = call(fake, wire)
    assert [(c.name, c.arguments) for c in r.tool_calls] == [("shell", {"pipeline": "ls"})]
    err, _ = call_error(fake, wire)
    assert err.status == 400 and not err.retryable and "prompt is too long" in err.message
    assert len(fake.received()) == 3


@pytest.mark.parametrize("wire", WIRES)
def test_cancelling_a_call_returns_at_once(fake, wire):
    fake.script([{"text": "slow", "delay_s": 3}, {"text": "next"}])

    async def main():
        model = make_model(settings(fake, wire))
        t0 = trio.current_time()
        with trio.move_on_after(0.3) as scope:
            await model.complete(TASK, TOOLS)
        took = trio.current_time() - t0
        r = await model.complete(TASK, TOOLS)  # the client is still usable
        await model.aclose()
        return scope.cancelled_caught, took, r.text

    cancelled, took, text = trio.run(main)
    assert cancelled and took < 1.5 and text == "next"


def test_retry_after_header_forms():
    from email.utils import formatdate

    from workbooks.agent.llm.retry import retry_after_s

    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert 5 <= retry_after_s({"retry-after": formatdate(time.time() + 8, usegmt=True)}) <= 8.5
    assert retry_after_s({"retry-after": formatdate(time.time() - 60, usegmt=True)}) == 0.0
    for junk in ("soon", "-3", "nan", "inf", ""):
        assert retry_after_s({"retry-after": junk}) is None, junk


BROKEN_ANSWERS = [
    {"status": 200, "content_type": "text/html", "body": "<html>proxy login</html>"},
    {"status": 200, "content_type": "application/json", "body": "{not json"},
    {"status": 200, "content_type": "application/json", "body": "[]"},
    {"status": 200, "content_type": "application/json", "body": json.dumps({"choices": [{"index": 0, "message": None}]})},
    {"status": 200, "content_type": "text/event-stream", "body": "data: {garbage\n\n"},
    {"status": 200, "content_type": "text/event-stream", "body": "data: []\n\ndata: [DONE]\n\n"},
    {"status": 200, "content_type": "text/event-stream", "body": "event: message_start\ndata: {\"type\": \"message_start\"}\n\n"},
    {"status": 200, "content_type": "text/event-stream", "body": "data: " + json.dumps({"choices": [{"index": 0, "delta": {
        "tool_calls": [{"index": "x", "function": 5}]}, "finish_reason": "stop"}]}) + "\n\n"},
]


@pytest.mark.parametrize("wire", WIRES)
def test_a_broken_upstream_answer_is_a_clear_error(fake, wire):
    """Whatever a proxy or a wrong base URL sends back with 200, the caller gets an LlmError that
    says what is wrong (never an AttributeError from deep in a parser); none of them is retried
    except a stream that just stops."""
    n = 0
    for raw in BROKEN_ANSWERS:
        for stream in (True, False):
            fake.script([{"raw": raw}, {"raw": raw}, {"raw": raw}])
            before = len(fake.received())
            err, _ = call_error(fake, wire, stream=stream, max_retries=1)
            sent = len(fake.received()) - before
            n += 1
            assert err.code == "llm_error", (raw, stream)
            assert any(w in err.message for w in ("is not a", "not an event stream", "ended before")), err.message
            assert sent == (2 if "ended before" in err.message else 1), (raw, stream, err.message)
            fake.reset()
    assert n == 2 * len(BROKEN_ANSWERS)


@pytest.mark.parametrize("wire", WIRES)
def test_an_on_delta_exception_reaches_the_caller_unchanged(fake, wire):
    class Stop(Exception):
        pass

    def on_delta(d):
        raise Stop(d)

    fake.script([{"text": "abc", "text_split": 1}, {"text": "unused"}])
    with pytest.raises(Stop):
        call(fake, wire, on_delta=on_delta)
    assert len(fake.received()) == 1


@pytest.mark.parametrize("wire", WIRES)
def test_request_timeout(fake, wire):
    fake.script([{"text": "slow", "delay_s": 3}, {"text": "slow", "delay_s": 3}])
    err, elapsed = call_error(fake, wire, timeout_s=0.5, max_retries=1)
    assert err.retryable and "did not answer within 0.5s" in err.message
    assert "gave up after 2 attempts" in err.message
    assert 1.0 <= elapsed < 2.8, elapsed  # two 0.5 s attempts and one back-off, not the 3 s replies


# ---- settings -----------------------------------------------------------------------------------

def test_settings_from_env():
    env = {"WB_LLM_BASE_URL": "http://127.0.0.1:1/v1", "WB_LLM_MODEL": "m1", "WB_LLM_API_KEY": "op-key-1234"}
    s = ModelSettings.from_env(env)
    assert (s.provider, s.base_url, s.model, s.api_key, s.timeout_s, s.max_retries) == \
        ("openai", "http://127.0.0.1:1/v1", "m1", "op-key-1234", 120.0, 2)
    s = ModelSettings.from_env({**env, "WB_LLM_PROVIDER": "Anthropic"}, tenant_api_key="tenant-key-99", model="m2")
    assert (s.provider, s.model, s.api_key) == ("anthropic", "m2", "tenant-key-99")  # tenant key and run model win
    assert "tenant-key-99" not in repr(s) and "op-key" not in str(ModelSettings.from_env(env))
    assert ModelSettings.from_env({"WB_LLM_PROVIDER": "anthropic", "WB_LLM_MODEL": "c", "WB_LLM_API_KEY": "k123"}
                                  ).base_url == "https://api.anthropic.com"
    bad = [({**env, "WB_LLM_PROVIDER": "gemini"}, "WB_LLM_PROVIDER"),
           ({k: v for k, v in env.items() if k != "WB_LLM_MODEL"}, "WB_LLM_MODEL"),
           ({"WB_LLM_MODEL": "gpt"}, "no API key"),
           ({**env, "WB_LLM_BASE_URL": "file:///etc/passwd"}, "http(s) URL"),
           ({**env, "WB_LLM_TIMEOUT_S": "soon"}, "WB_LLM_TIMEOUT_S"),
           ({**env, "WB_LLM_TIMEOUT_S": "-1"}, "WB_LLM_TIMEOUT_S")]
    for e, word in bad:
        with pytest.raises(LlmError) as ei:
            ModelSettings.from_env(e)
        assert word in ei.value.message, (e, ei.value.message)


def test_usage_adds_up():
    assert Usage(3, 4) + Usage(10, 20) == Usage(13, 24)
    assert sum([Usage(1, 2), Usage(3, 4)], Usage()) == Usage(4, 6)
    assert ToolCall("i", "n", {}).arguments_error is None


# ---- the fake server itself: scripting keys, rules, concurrency ---------------------------------

@pytest.mark.parametrize("wire", WIRES)
def test_script_keys_rules_and_default_turn(fake, wire):
    fake.script([{"text": "for run A"}], key="run-a")
    fake.script([{"text": "for anyone"}])
    fake.rule({"no_tools": True}, {"respond": "summary"}, key="run-a")
    fake.set_default({"text": "default now"})
    a = [{"role": "user", "content": "task [script:run-a] do it"}]
    assert call(fake, wire, a, tools=[]).text.startswith("Summary of 1 messages: task [script:run-a]")
    assert call(fake, wire, a).text == "for run A"
    assert call(fake, wire, a).text == "default now"
    assert call(fake, wire).text == "for anyone"
    assert [r["key"] for r in fake.received()] == ["run-a", "run-a", "run-a", ""]


def test_fifty_concurrent_slow_streams(fake):
    """60 streaming calls, each answered after 1 s, all at once under one trio run (both wires)."""
    n = 60
    fake.set_default({"text": "slow but steady", "delay_s": 1.0})
    results: list[str] = []

    async def main():
        models = [make_model(settings(fake, w)) for w in WIRES]

        async def one(i):
            r = await models[i % 2].complete([{"role": "user", "content": f"q{i}"}], TOOLS)
            results.append(r.text)

        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)
        elapsed = trio.current_time() - t0
        for m in models:
            await m.aclose()
        return elapsed

    elapsed = trio.run(main)
    assert results == ["slow but steady"] * n
    assert elapsed < 4.0, elapsed  # serially it would take 60 s
    assert len(fake.received()) == n
