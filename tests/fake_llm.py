"""A scripted model server on 127.0.0.1 that speaks both wires the agent uses, over real HTTP.

Run it as a process (what the agent tests and the benchmarks do):

    .venv/bin/python -m tests.fake_llm --port 0 [--default-turn JSON] [--require-key KEY]

It prints one line `{"port": N}` on stdout once it listens, then serves until SIGTERM/SIGINT.
From a test, `FakeLlm()` (a context manager) starts and stops that subprocess and offers the
scripting calls below as methods; `FakeLlm(in_process=True)` runs the same server in a thread
(only for unit tests of the wires).

Wires (bodies and SSE byte shapes as the providers send them):
- `POST /v1/chat/completions` (OpenAI Chat Completions): JSON `chat.completion`, or with
  `"stream": true` SSE `data: {chat.completion.chunk}` lines, tool-call argument fragments carrying
  their `index`, a usage chunk (`"choices": []`) when `stream_options.include_usage`, then
  `data: [DONE]`. Errors: `{"error": {"message", "type", "param", "code"}}`.
- `POST /v1/messages` (Anthropic Messages): JSON `message`, or with `"stream": true` the events
  `message_start`, `content_block_start`, `ping`, `content_block_delta` (`text_delta`,
  `input_json_delta`), `content_block_stop`, `message_delta` (stop_reason, usage), `message_stop`.
  Errors: `{"type": "error", "error": {"type", "message"}}`.
  Both check the request the way the real services do (roles, tool-call/tool-result pairing,
  required fields) and answer 400 `invalid_request_error` naming the fault, so a wire that builds a
  bad transcript fails its test.
- `GET /v1/models`: one model, `fake-model`.
With `--require-key KEY`, a request without that key (`Authorization: Bearer KEY` or `x-api-key`)
gets 401 in the provider's shape.

Scripting (JSON bodies; every answer is JSON):
- `POST /_script {"key": str, "turns": [turn, ...]}` appends turns to the queue of `key`. A model
  request belongs to key K when its messages (system included) contain the marker `[script:K]`
  (the first marker found, in message order), else to the default key `""`. Each request takes the
  next turn of its key's queue; an empty queue answers with the default turn.
- `POST /_default {"turn": turn}` sets the default turn (initially `{"text": "ok"}`).
- `POST /_rule {"key": str, "if": {"no_tools": true} | {"contains": str}, "turn": turn}` adds a rule
  checked before the queue: a request of that key matching `if` (no tools declared / a message
  containing the text) is answered with the rule's turn without consuming the queue (e.g. the
  loop's condensing calls: `{"if": {"no_tools": true}, "turn": {"respond": "summary"}}`).
- `GET /_received` -> `[{"path", "headers" (lower-cased names), "body" (raw text), "key", "ts"}]`,
  every request (model and scripting calls excluded: only `/v1/...`) in arrival order.
- `POST /_reset` empties queues, rules and the record, and restores the default turn.
- `GET /_health` -> `{"ok": true}`.

A turn (every field optional):
  `text`: the assistant text; `tool_calls`: `[{"name", "arguments": <raw JSON string, sent as is,
  even if malformed> | <object>, "id"?}]`; `delay_s`: wait before answering (before the status
  line); `status` (+ `retry_after`, + `message`): answer this HTTP error in the provider's shape;
  `usage`: `{"prompt_tokens", "completion_tokens"}` (default: derived from the sizes);
  `split`: stream tool-call arguments in fragments of N chars (default 7); `text_split`: text
  deltas of N chars (default 5); `chunk_delay_s`: wait between stream events; `stop_reason`;
  `drop`: `"before"` (close the connection without answering) or `"mid"` (stream half, then close);
  `error_event`: an error type (`"overloaded_error"`, `"server_error"`, `"invalid_request_error"`…)
  sent as the provider's in-stream error after half the events (streaming only; + `message`);
  `raw`: `{"status", "content_type", "body"}` sent as is (a broken upstream or proxy);
  `respond`: `"summary"` (text `Summary of N messages: <first words of the last user message>`) or
  `"echo"` (text = the last user or tool message).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"\[script:([^\]\s]{0,200})\]")
DEFAULT_TURN = {"text": "ok"}
MODEL_NAME = "fake-model"


class Script:
    """The queues, rules, default turn and request record, shared by all handler threads."""

    def __init__(self, default_turn: dict | None = None):
        self.lock = threading.Lock()
        self.initial_default = dict(default_turn or DEFAULT_TURN)
        self.reset()
        self.counter = 0

    def reset(self) -> None:
        self.queues: dict[str, list[dict]] = {}
        self.rules: list[dict] = []
        self.received: list[dict] = []
        self.default_turn = dict(self.initial_default)

    def next_id(self) -> int:
        with self.lock:
            self.counter += 1
            return self.counter

    def take(self, key: str, req: dict, texts: list[str]) -> dict:
        with self.lock:
            for rule in self.rules:
                if rule["key"] != key:
                    continue
                cond = rule["if"]
                if cond.get("no_tools") and not req.get("tools"):
                    return rule["turn"]
                if "contains" in cond and any(cond["contains"] in t for t in texts):
                    return rule["turn"]
            queue = self.queues.get(key)
            if queue:
                return queue.pop(0)
            return self.default_turn


def _texts(wire: str, req: dict) -> list[str]:
    """Every text of the request's messages, in order (system first), for markers and rules."""
    out: list[str] = []

    def add(content) -> None:
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            for block in content:
                if isinstance(block, dict):
                    if isinstance(block.get("text"), str):
                        out.append(block["text"])
                    if "content" in block:
                        add(block["content"])

    if wire == "anthropic":
        add(req.get("system"))
    for m in req.get("messages") or []:
        if isinstance(m, dict):
            add(m.get("content"))
    return out


def _last_user_text(wire: str, req: dict) -> str:
    for m in reversed(req.get("messages") or []):
        if isinstance(m, dict) and m.get("role") in ("user", "tool"):
            texts: list[str] = []
            c = m.get("content")
            if isinstance(c, str):
                texts.append(c)
            elif isinstance(c, list):
                for b in c:
                    if isinstance(b, dict):
                        if isinstance(b.get("text"), str):
                            texts.append(b["text"])
                        elif isinstance(b.get("content"), str):
                            texts.append(b["content"])
            if texts:
                return "\n".join(texts)
    return ""


class BadRequest(Exception):
    pass


def _check_openai(req: dict) -> None:
    """What Chat Completions refuses: missing model/messages, bad roles, unpaired tool messages."""
    if not isinstance(req.get("model"), str) or not req["model"]:
        raise BadRequest("you must provide a model parameter")
    msgs = req.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("'messages' must be a non-empty array")
    pending: list[str] = []  # tool_call ids awaiting their tool message
    for i, m in enumerate(msgs):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise BadRequest(f"messages[{i}].role: invalid value {role!r}")
        if role != "tool" and pending:
            raise BadRequest(f"An assistant message with 'tool_calls' must be followed by tool messages "
                             f"responding to each 'tool_call_id'. The following tool_call_ids did not have "
                             f"response messages: {', '.join(pending)}")
        if role == "assistant":
            for j, tc in enumerate(m.get("tool_calls") or []):
                fn = tc.get("function") or {}
                if tc.get("type") != "function" or not isinstance(fn.get("name"), str):
                    raise BadRequest(f"messages[{i}].tool_calls[{j}]: expected a function call")
                if not isinstance(fn.get("arguments"), str):
                    raise BadRequest(f"messages[{i}].tool_calls[{j}].function.arguments: expected a string")
                if not isinstance(tc.get("id"), str) or not tc["id"]:
                    raise BadRequest(f"messages[{i}].tool_calls[{j}].id: missing")
                pending.append(tc["id"])
            if m.get("content") is None and not m.get("tool_calls"):
                raise BadRequest(f"messages[{i}]: an assistant message needs content or tool_calls")
        elif role == "tool":
            tid = m.get("tool_call_id")
            if tid not in pending:
                raise BadRequest(f"messages[{i}]: messages with role 'tool' must be a response to a "
                                 f"preceeding message with 'tool_calls' (tool_call_id {tid!r})")
            pending.remove(tid)
            if not isinstance(m.get("content"), (str, list)):
                raise BadRequest(f"messages[{i}].content: expected a string")
        elif not isinstance(m.get("content"), (str, list)):
            raise BadRequest(f"messages[{i}].content: expected a string")
    for j, t in enumerate(req.get("tools") or []):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str):
            raise BadRequest(f"tools[{j}]: expected {{type: function, function: {{name, ...}}}}")


def _check_anthropic(req: dict) -> None:
    """What Messages refuses: no max_tokens, system inside messages, non-alternating roles,
    empty text, tool_use without a tool_result right after it (or the other way round)."""
    if not isinstance(req.get("model"), str) or not req["model"]:
        raise BadRequest("model: Field required")
    if not isinstance(req.get("max_tokens"), int):
        raise BadRequest("max_tokens: Field required")
    msgs = req.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages: at least one message is required")
    prev_role = None
    prev_tool_uses: list[str] = []
    for i, m in enumerate(msgs):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("user", "assistant"):
            raise BadRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'"
                             + (" (use the top-level system parameter)" if role == "system" else ""))
        if i == 0 and role != "user":
            raise BadRequest("messages: first message must use the \"user\" role")
        if role == prev_role:
            raise BadRequest(f"messages: roles must alternate between \"user\" and \"assistant\" (messages.{i})")
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list) or not blocks:
            raise BadRequest(f"messages.{i}: content must be a non-empty string or list")
        results: list[str] = []
        uses: list[str] = []
        for j, b in enumerate(blocks):
            t = b.get("type") if isinstance(b, dict) else None
            if t == "text":
                if not isinstance(b.get("text"), str) or not b["text"]:
                    raise BadRequest(f"messages.{i}.content.{j}: text content blocks must be non-empty")
            elif t == "tool_use" and role == "assistant":
                if not isinstance(b.get("input"), dict) or not b.get("id") or not b.get("name"):
                    raise BadRequest(f"messages.{i}.content.{j}: tool_use needs id, name and an input object")
                uses.append(b["id"])
            elif t == "tool_result" and role == "user":
                results.append(b.get("tool_use_id"))
            else:
                raise BadRequest(f"messages.{i}.content.{j}: unexpected block type {t!r} in a {role} message")
        if role == "user":
            missing = [u for u in prev_tool_uses if u not in results]
            if missing:
                raise BadRequest(f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                                 f"immediately after: {', '.join(missing)}")
            stray = [r for r in results if r not in prev_tool_uses]
            if stray:
                raise BadRequest(f"messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks: "
                                 f"{', '.join(map(str, stray))}")
        prev_tool_uses = uses
        prev_role = role
    if prev_tool_uses:
        raise BadRequest("the last assistant message has `tool_use` blocks without `tool_result`s")
    system = req.get("system")
    if system is not None and not isinstance(system, (str, list)):
        raise BadRequest("system: expected a string or a list of text blocks")
    for j, t in enumerate(req.get("tools") or []):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not isinstance(t.get("input_schema"), dict):
            raise BadRequest(f"tools.{j}: expected {{name, description, input_schema}}")


_OPENAI_ERR = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               429: "rate_limit_error"}
_ANTHROPIC_ERR = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                  404: "not_found_error", 408: "timeout_error", 413: "request_too_large",
                  429: "rate_limit_error", 529: "overloaded_error"}


def _error_body(wire: str, status: int, message: str) -> dict:
    if wire == "anthropic":
        etype = _ANTHROPIC_ERR.get(status, "api_error")
        return {"type": "error", "error": {"type": etype, "message": message}}
    etype = _OPENAI_ERR.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": etype, "param": None, "code": None}}


def _norm_calls(turn: dict, n: int) -> list[dict]:
    """The turn's tool calls as (id, name, raw argument text)."""
    out = []
    for i, tc in enumerate(turn.get("tool_calls") or []):
        args = tc.get("arguments", {})
        raw = args if isinstance(args, str) else json.dumps(args)
        out.append({"id": tc.get("id") or f"call_{n}_{i}", "name": tc.get("name", ""), "raw": raw})
    return out


def _pieces(s: str, n: int) -> list[str]:
    n = max(1, int(n))
    return [s[i:i + n] for i in range(0, len(s), n)] or [""]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-llm/1"
    script: Script  # set on the server class
    require_key: str | None

    def log_message(self, fmt, *args):  # quiet: the tests read /_received instead
        pass

    # ---- plumbing -------------------------------------------------------------------------
    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send_json(self, status: int, obj, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ---- routes ---------------------------------------------------------------------------
    def do_GET(self):
        s = self.server.script
        if self.path == "/_received":
            with s.lock:
                return self._send_json(200, list(s.received))
        if self.path == "/_health":
            return self._send_json(200, {"ok": True})
        if self.path == "/v1/models":
            return self._send_json(200, {"object": "list", "data": [
                {"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": "fake"}]})
        return self._send_json(404, _error_body("openai", 404, f"no route GET {self.path}"))

    def do_POST(self):
        s = self.server.script
        raw = self._body()
        if self.path.startswith("/_"):
            return self._control(s, raw)
        wire = {"/v1/chat/completions": "openai", "/v1/messages": "anthropic"}.get(self.path.split("?")[0])
        text = raw.decode("utf-8", "replace")
        try:
            req = json.loads(raw)
        except ValueError:
            req = None
        texts = _texts(wire, req) if wire and isinstance(req, dict) else []
        key = next((m.group(1) for t in texts for m in [MARKER.search(t)] if m), "")
        with s.lock:
            s.received.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                               "body": text, "key": key, "ts": time.time()})
        if wire is None:
            return self._send_json(404, _error_body("openai", 404, f"no route POST {self.path}"))
        if self.server.require_key:
            got = self.headers.get("x-api-key") if wire == "anthropic" else None
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                got = got or auth[7:]
            if got != self.server.require_key:
                msg = "invalid x-api-key" if wire == "anthropic" else "Incorrect API key provided."
                return self._send_json(401, _error_body(wire, 401, msg))
        if not isinstance(req, dict):
            return self._send_json(400, _error_body(wire, 400, "the request body is not valid JSON"))
        try:
            (_check_anthropic if wire == "anthropic" else _check_openai)(req)
        except BadRequest as e:
            return self._send_json(400, _error_body(wire, 400, str(e)))
        turn = s.take(key, req, texts)
        self._answer(wire, req, turn, len(text))

    def _control(self, s: Script, raw: bytes):
        try:
            body = json.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
        except ValueError as e:
            return self._send_json(400, {"error": {"code": "bad_request", "message": str(e)}})
        with s.lock:
            if self.path == "/_script":
                turns = body.get("turns")
                if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
                    return self._send_json(400, {"error": {"code": "bad_request", "message": "turns: a list of objects"}})
                q = s.queues.setdefault(str(body.get("key", "")), [])
                q.extend(turns)
                return self._send_json(200, {"queued": len(q)})
            if self.path == "/_default":
                if not isinstance(body.get("turn"), dict):
                    return self._send_json(400, {"error": {"code": "bad_request", "message": "turn: an object"}})
                s.default_turn = body["turn"]
                return self._send_json(200, {"ok": True})
            if self.path == "/_rule":
                if not isinstance(body.get("turn"), dict) or not isinstance(body.get("if"), dict):
                    return self._send_json(400, {"error": {"code": "bad_request", "message": "if and turn: objects"}})
                s.rules.append({"key": str(body.get("key", "")), "if": body["if"], "turn": body["turn"]})
                return self._send_json(200, {"rules": len(s.rules)})
            if self.path == "/_reset":
                s.reset()
                return self._send_json(200, {"ok": True})
        return self._send_json(404, {"error": {"code": "not_found", "message": self.path}})

    # ---- answers --------------------------------------------------------------------------
    def _answer(self, wire: str, req: dict, turn: dict, req_len: int) -> None:
        if turn.get("delay_s"):
            time.sleep(float(turn["delay_s"]))
        if turn.get("drop") == "before":
            return self._drop()
        if isinstance(turn.get("raw"), dict):
            return self._send_raw(turn["raw"])
        status = turn.get("status")
        if status:
            headers = {"Retry-After": str(turn["retry_after"])} if turn.get("retry_after") is not None else {}
            msg = turn.get("message") or f"scripted error {status}"
            return self._send_json(int(status), _error_body(wire, int(status), msg), headers)
        n = self.server.script.next_id()
        text = turn.get("text", "")
        if turn.get("respond") == "summary":
            words = _last_user_text(wire, req).split()[:12]
            text = f"Summary of {len(req.get('messages') or [])} messages: {' '.join(words)}"
        elif turn.get("respond") == "echo":
            text = _last_user_text(wire, req)
        calls = _norm_calls(turn, n)
        usage = turn.get("usage") or {
            "prompt_tokens": max(1, req_len // 4),
            "completion_tokens": max(1, (len(text) + sum(len(c["raw"]) for c in calls)) // 4)}
        pt, ct = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        model = req.get("model") or MODEL_NAME
        stream = bool(req.get("stream"))
        if wire == "openai":
            stop = turn.get("stop_reason") or ("tool_calls" if calls else "stop")
            if stream:
                return self._stream_openai(req, turn, n, model, text, calls, stop, pt, ct)
            msg = {"role": "assistant", "content": text if (text or not calls) else None, "refusal": None}
            if calls:
                msg["tool_calls"] = [{"id": c["id"], "type": "function",
                                      "function": {"name": c["name"], "arguments": c["raw"]}} for c in calls]
            return self._send_json(200, {
                "id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": stop}],
                "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
                "system_fingerprint": None})
        stop = turn.get("stop_reason") or ("tool_use" if calls else "end_turn")
        if stream:
            return self._stream_anthropic(turn, n, model, text, calls, stop, pt, ct)
        content = [{"type": "text", "text": text}] if text else []
        for c in calls:
            try:
                inp = json.loads(c["raw"]) if c["raw"] else {}
            except ValueError:
                inp = c["raw"]  # what a broken upstream would send; real Messages never does
            content.append({"type": "tool_use", "id": c["id"].replace("call_", "toolu_"), "name": c["name"], "input": inp})
        return self._send_json(200, {
            "id": f"msg_{n}", "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": pt, "output_tokens": ct}})

    def _send_raw(self, raw: dict) -> None:
        data = str(raw.get("body", "")).encode()
        self.send_response(int(raw.get("status", 200)))
        self.send_header("Content-Type", str(raw.get("content_type", "application/json")))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _events(self, turn: dict, events: list[bytes]) -> None:
        """Send the SSE events; `drop: mid` closes the connection after half of them."""
        gap = float(turn.get("chunk_delay_s") or 0)
        cut = len(events) // 2 if turn.get("drop") == "mid" or turn.get("error_event") else None
        try:
            for i, ev in enumerate(events):
                if cut is not None and i == cut:
                    if turn.get("error_event"):
                        self._chunk(self._error_event(turn))
                        self._chunk(b"")
                        return
                    return self._drop()
                if gap and i:
                    time.sleep(gap)
                self._chunk(ev)
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _error_event(self, turn: dict) -> bytes:
        """The error a provider sends inside a stream that had started fine."""
        etype = str(turn["error_event"])
        msg = turn.get("message") or f"scripted {etype}"
        if self.path.startswith("/v1/messages"):
            body = {"type": "error", "error": {"type": etype, "message": msg}}
            return b"event: error\ndata: " + json.dumps(body).encode() + b"\n\n"
        return b"data: " + json.dumps({"error": {"message": msg, "type": etype, "param": None, "code": None}}).encode() + b"\n\n"

    def _stream_openai(self, req, turn, n, model, text, calls, stop, pt, ct) -> None:
        created = int(time.time())

        def chunk(delta: dict, finish=None, **extra) -> bytes:
            obj = {"id": f"chatcmpl-{n}", "object": "chat.completion.chunk", "created": created, "model": model,
                   "system_fingerprint": None,
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            obj.update(extra)
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        events = [chunk({"role": "assistant", "content": "", "refusal": None})]
        if text:
            events += [chunk({"content": p}) for p in _pieces(text, turn.get("text_split", 5))]
        for i, c in enumerate(calls):
            events.append(chunk({"tool_calls": [{"index": i, "id": c["id"], "type": "function",
                                                 "function": {"name": c["name"], "arguments": ""}}]}))
            if c["raw"]:
                events += [chunk({"tool_calls": [{"index": i, "function": {"arguments": p}}]})
                           for p in _pieces(c["raw"], turn.get("split", 7))]
        events.append(chunk({}, stop))
        if (req.get("stream_options") or {}).get("include_usage"):
            events.append(b"data: " + json.dumps({
                "id": f"chatcmpl-{n}", "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": None, "choices": [],
                "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}}).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        self._start_stream()
        self._events(turn, events)

    def _stream_anthropic(self, turn, n, model, text, calls, stop, pt, ct) -> None:
        def ev(name: str, obj: dict) -> bytes:
            return f"event: {name}\ndata: ".encode() + json.dumps(obj).encode() + b"\n\n"

        events = [ev("message_start", {"type": "message_start", "message": {
            "id": f"msg_{n}", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": pt, "output_tokens": 1}}})]
        idx = 0
        if text:
            events.append(ev("content_block_start", {"type": "content_block_start", "index": idx,
                                                     "content_block": {"type": "text", "text": ""}}))
            events.append(ev("ping", {"type": "ping"}))
            events += [ev("content_block_delta", {"type": "content_block_delta", "index": idx,
                                                  "delta": {"type": "text_delta", "text": p}})
                       for p in _pieces(text, turn.get("text_split", 5))]
            events.append(ev("content_block_stop", {"type": "content_block_stop", "index": idx}))
            idx += 1
        for c in calls:
            events.append(ev("content_block_start", {"type": "content_block_start", "index": idx, "content_block": {
                "type": "tool_use", "id": c["id"].replace("call_", "toolu_"), "name": c["name"], "input": {}}}))
            events.append(ev("content_block_delta", {"type": "content_block_delta", "index": idx,
                                                     "delta": {"type": "input_json_delta", "partial_json": ""}}))
            if c["raw"]:
                events += [ev("content_block_delta", {"type": "content_block_delta", "index": idx,
                                                      "delta": {"type": "input_json_delta", "partial_json": p}})
                           for p in _pieces(c["raw"], turn.get("split", 7))]
            events.append(ev("content_block_stop", {"type": "content_block_stop", "index": idx}))
            idx += 1
        events.append(ev("message_delta", {"type": "message_delta",
                                           "delta": {"stop_reason": stop, "stop_sequence": None},
                                           "usage": {"output_tokens": ct}}))
        events.append(ev("message_stop", {"type": "message_stop"}))
        self._start_stream()
        self._events(turn, events)


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, port: int = 0, default_turn: dict | None = None, require_key: str | None = None):
        super().__init__(("127.0.0.1", port), Handler)
        self.script = Script(default_turn)
        self.require_key = require_key

    def handle_error(self, request, client_address):
        """A client that gave up (a time-out or cancel test) is expected; anything else is printed."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class FakeLlm:
    """Start/stop the fake model server (a subprocess by default) and script it over HTTP."""

    def __init__(self, *, in_process: bool = False, default_turn: dict | None = None,
                 require_key: str | None = None, timeout: float = 20.0):
        self.in_process = in_process
        self.default_turn = default_turn
        self.require_key = require_key
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.server: FakeServer | None = None
        self.thread: threading.Thread | None = None
        self.port = 0

    # lifecycle
    def start(self) -> "FakeLlm":
        if self.in_process:
            self.server = FakeServer(0, self.default_turn, self.require_key)
            self.port = self.server.server_address[1]
            self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
            self.thread.start()
            return self
        cmd = [sys.executable, "-m", "tests.fake_llm", "--port", "0"]
        if self.default_turn is not None:
            cmd += ["--default-turn", json.dumps(self.default_turn)]
        if self.require_key:
            cmd += ["--require-key", self.require_key]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError("fake_llm did not start")
        self.port = json.loads(line)["port"]
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc.stdout.close()
            self.proc = None

    def __enter__(self) -> "FakeLlm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # addresses
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url  # the Anthropic SDK appends /v1/messages itself

    # scripting
    def _call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=self.timeout) as resp:
            return json.loads(resp.read())

    def script(self, turns: list[dict], key: str = "") -> dict:
        return self._call("POST", "/_script", {"key": key, "turns": turns})

    def set_default(self, turn: dict) -> dict:
        return self._call("POST", "/_default", {"turn": turn})

    def rule(self, cond: dict, turn: dict, key: str = "") -> dict:
        return self._call("POST", "/_rule", {"key": key, "if": cond, "turn": turn})

    def received(self) -> list[dict]:
        return self._call("GET", "/_received")

    def reset(self) -> dict:
        return self._call("POST", "/_reset", {})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fake_llm", description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--default-turn", default=None, help="the turn answered when a queue is empty (JSON)")
    ap.add_argument("--require-key", default=os.environ.get("FAKE_LLM_REQUIRE_KEY"))
    a = ap.parse_args(argv)
    server = FakeServer(a.port, json.loads(a.default_turn) if a.default_turn else None, a.require_key)

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
