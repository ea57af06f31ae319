"""The loop end to end over each real wire: the `workbooks.agent.llm` client talking HTTP to the fake
model server (a subprocess, tests/fake_llm.py) with streaming, tool calls, condensing and errors."""

from __future__ import annotations

import json

import pytest
import trio

from tests.fake_llm import FakeLlm
from workbooks.agent.llm import ModelSettings, make_model
from workbooks.agent.loop import CONDENSED, LoopConfig, run_loop
from workbooks.agent.records import Recorder, read_status, read_steps
from workbooks.agent.secrets import Secrets
from workbooks.agent.tools.base import ToolContext, ToolResult

SECRET = "pw-Zt81kQvN3s"
WIRES = ["openai", "anthropic"]


@pytest.fixture(scope="module")
def fake():
    with FakeLlm() as f:
        yield f


class NoteTool:
    """Writes a note into the run folder and says what it wrote (echoing a secret it was handed)."""

    name = "note"
    description = "write a note"
    parameters = {"type": "object", "properties": {"path": {"type": "string"}, "text": {"type": "string"}},
                  "required": ["path", "text"]}
    needs_exec = False

    async def __call__(self, ctx, args):
        (ctx.workdir / args["path"]).write_text(args["text"])
        return ToolResult(output=f"wrote {len(args['text'])} bytes to {args['path']}; token {SECRET}")


def _run(fake, wire, tmp_path, task, *, config=None, events=None):
    base = fake.openai_base_url if wire == "openai" else fake.anthropic_base_url
    settings = ModelSettings(provider=wire, base_url=base, model="fake-model", api_key="k-test", timeout_s=20.0,
                             max_retries=0)
    secrets = Secrets({"DB_PASSWORD": SECRET})
    ctx = ToolContext(tenant="acme", run_id="run-7", data_dir=tmp_path, workdir=tmp_path, secrets=secrets)
    recorder = Recorder(tmp_path, agent="wire-test", secrets=secrets)
    events = events if events is not None else []

    async def on_event(ev):
        events.append(ev)

    async def main():
        model = make_model(settings)
        try:
            return await run_loop(model=model, tools={"note": NoteTool()}, ctx=ctx, task=task, system="be brief",
                                  config=config or LoopConfig(), recorder=recorder, on_event=on_event)
        finally:
            await model.aclose()

    return trio.run(main)


def _bodies(fake, key):
    return [json.loads(r["body"]) for r in fake.received() if f"[script:{key}]" in r["body"]]


@pytest.mark.parametrize("wire", WIRES)
def test_a_streamed_run_with_tool_calls_over_the_wire(fake, wire, tmp_path):
    key = f"e2e-{wire}"
    fake.script([
        {"text": "Writing it.", "split": 3, "usage": {"prompt_tokens": 30, "completion_tokens": 9},
         "tool_calls": [{"name": "note", "arguments": {"path": "a.txt", "text": "alpha {{secret:DB_PASSWORD}}"}},
                        {"name": "nope", "arguments": "{}"}]},
        {"text": "", "usage": {"prompt_tokens": 50, "completion_tokens": 1}},  # an empty turn: nudged
        {"tool_calls": [{"name": "done", "arguments": {"result": "noted in a.txt"}}],
         "usage": {"prompt_tokens": 70, "completion_tokens": 5}},
    ], key=key)
    events = []
    out = _run(fake, wire, tmp_path, f"take a note [script:{key}]", events=events)
    assert (out.status, out.result, out.steps, out.tools) == ("done", "noted in a.txt", 3, ["note", "nope", "done"])
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (150, 15)
    assert (tmp_path / "a.txt").read_text() == "alpha {{secret:DB_PASSWORD}}"  # arguments are never resolved

    bodies = _bodies(fake, key)
    assert len(bodies) == 3 and all(b.get("stream") is True for b in bodies)
    second = json.dumps(bodies[1])
    assert "wrote 28 bytes to a.txt; token [secret:DB_PASSWORD]" in second
    assert "unknown tool: nope" in second
    third = bodies[2]["messages"]
    assert "using what your tools returned. Don't call any more tools." in json.dumps(third[-1])
    raw = json.dumps(fake.received())
    assert SECRET not in raw

    assert [(s["step"], s["tool"]) for s in read_steps(tmp_path)] == [(0, "note"), (0, "nope"), (2, "done")]
    st = read_status(tmp_path)
    assert (st["status"], st["steps"], st["result"]) == ("done", 3, "noted in a.txt")
    assert st["usage"] == {"prompt_tokens": 150, "completion_tokens": 15, "total_tokens": 165}
    for p in tmp_path.iterdir():
        assert SECRET.encode() not in p.read_bytes(), p.name
    assert "".join(e["content"] for e in events if e["type"] == "delta") == "Writing it."
    assert events[-1] == {"type": "done", "result": "noted in a.txt", "status": "done"}


@pytest.mark.parametrize("wire", WIRES)
def test_malformed_arguments_and_condensing_over_the_wire(fake, wire, tmp_path):
    key = f"cond-{wire}"
    big = "x" * 3000
    fake.rule({"no_tools": True}, {"respond": "summary", "usage": {"prompt_tokens": 100, "completion_tokens": 10}},
              key=key)
    turns = [{"tool_calls": [{"name": "note", "arguments": '{"path": "b.txt", "text": '}]}]  # malformed JSON
    turns += [{"text": f"turn {i}", "tool_calls": [{"name": "note", "arguments": {"path": f"n{i}.txt", "text": big}}]}
              for i in range(4)]
    turns += [{"text": "all notes written"}]
    fake.script(turns, key=key)
    out = _run(fake, wire, tmp_path, f"write notes [script:{key}]",
               config=LoopConfig(compact_threshold=7000, compact_keep_recent=2))
    assert (out.status, out.result) == ("done", "all notes written")
    assert out.compactions >= 1
    bodies = _bodies(fake, key)
    summaries = [b for b in bodies if not b.get("tools")]
    assert len(summaries) == out.compactions
    assert "invalid JSON arguments" in json.dumps(bodies[1])
    last = json.dumps(bodies[-1])
    assert "Summary of" in last  # the condensation replaced the older turns
    assert "n3.txt" in last and "n0.txt" not in last
    assert out.usage.prompt_tokens >= 100 * out.compactions


@pytest.mark.parametrize("wire", WIRES)
def test_a_failing_condensing_call_falls_back_over_the_wire(fake, wire, tmp_path):
    key = f"condfail-{wire}"
    fake.rule({"no_tools": True}, {"status": 400, "message": "summaries are off today"}, key=key)
    fake.script([{"tool_calls": [{"name": "note", "arguments": {"path": f"n{i}.txt", "text": "y" * 4000}}]}
                 for i in range(3)] + [{"text": "done anyway"}], key=key)
    out = _run(fake, wire, tmp_path, f"write [script:{key}]",
               config=LoopConfig(compact_threshold=6000, compact_keep_recent=2))
    assert (out.status, out.result) == ("done", "done anyway") and out.compactions >= 1
    assert CONDENSED in json.dumps(_bodies(fake, key)[-1])


@pytest.mark.parametrize("wire", WIRES)
def test_a_model_error_ends_the_run_with_a_clear_error(fake, wire, tmp_path):
    key = f"err-{wire}"
    fake.script([{"status": 400, "message": "context window exceeded"}], key=key)
    events = []
    out = _run(fake, wire, tmp_path, f"fail [script:{key}]", events=events)
    assert out.status == "error" and "context window exceeded" in out.error
    assert out.result == f"error: {out.error}"
    st = read_status(tmp_path)
    assert st["status"] == "error" and "context window exceeded" in st["error"]
    assert events[-1]["type"] == "error" and "context window exceeded" in events[-1]["error"]


@pytest.mark.parametrize("wire", WIRES)
def test_a_run_with_the_real_tool_surface(fake, wire, tmp_path):
    """The registry's tools through the loop: what is offered, confinement of the run's own records,
    a secret in a workdir file never reaching the model."""
    from workbooks.agent.tools import tools_for

    key = f"real-{wire}"
    (tmp_path / "secret.txt").write_text(f"password={SECRET}\n")
    fake.script([
        {"tool_calls": [{"name": "vfs_write", "arguments": {"path": "notes.org",
                                                            "content": "* Alpha\nbeta gamma\n* Delta\nepsilon zeta\n"}},
                        {"name": "vfs_read", "arguments": {"path": "secret.txt"}},
                        {"name": "vfs_write", "arguments": {"path": "_steps.jsonl", "content": "forged\n"}}]},
        {"tool_calls": [{"name": "search", "arguments": {"query": "epsilon"}},
                        {"name": "git", "arguments": {"message": "sneak"}}]},
        {"tool_calls": [{"name": "done", "arguments": {"result": "notes written"}}]},
    ], key=key)
    base = fake.openai_base_url if wire == "openai" else fake.anthropic_base_url
    settings = ModelSettings(provider=wire, base_url=base, model="fake-model", api_key="k", max_retries=0)
    secrets = Secrets({"DB_PASSWORD": SECRET})
    ctx = ToolContext(tenant="acme", run_id="run-8", data_dir=tmp_path, workdir=tmp_path.resolve(), secrets=secrets,
                      read_only=frozenset({"_steps.jsonl", "_status.json", "events.org", "_ledger.json"}))
    recorder = Recorder(tmp_path, agent="real", secrets=secrets)
    tools = tools_for(False)

    async def main():
        model = make_model(settings)
        try:
            return await run_loop(model=model, tools=tools, ctx=ctx, task=f"take notes [script:{key}]",
                                  system="be brief", config=LoopConfig(), recorder=recorder)
        finally:
            await model.aclose()

    out = trio.run(main)
    assert (out.status, out.result) == ("done", "notes written")
    bodies = _bodies(fake, key)
    offered = json.dumps(bodies[0]["tools"])
    for name in tools:
        assert f'"{name}"' in offered
    assert '"git"' not in offered and '"publish"' not in offered
    second, third = json.dumps(bodies[1]), json.dumps(bodies[2])
    assert "password=[secret:DB_PASSWORD]" in second and "write blocked" in second
    assert "notes.org" in third and "Delta" in third
    assert "git not permitted (no exec capability)" in third
    assert SECRET not in json.dumps(fake.received())
    # the records are the loop's, well-formed, and the forged write never landed
    steps = read_steps(tmp_path)
    assert [s["tool"] for s in steps] == ["vfs_write", "vfs_read", "vfs_write", "search", "git", "done"]
    assert b"forged" not in (tmp_path / "_steps.jsonl").read_bytes().replace(b'"content":"forged\\n"', b"")
    for p in tmp_path.iterdir():
        assert SECRET.encode() not in p.read_bytes() or p.name == "secret.txt", p.name
