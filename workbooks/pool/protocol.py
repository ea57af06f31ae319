"""The pool's wire protocol: msgpack envelopes with a version, kernel output passed through.

Frontend (a client's DEALER <-> the broker's ROUTER):
  request  = one frame, msgpack map {v, id, op, args, deadline_ms}
  reply    = [header] or [header, body]; header is msgpack {v, id, ok} and, when ok is false,
             error {code, message}; body is the kernel's output bytes exactly as the kernel wrote
             them (never decoded or re-encoded by the broker or the worker).
  Local (ipc) clients only, for large bodies (workbooks.pool.bulk): an argument may be
             {bulk: name, len: n} naming a shared-memory file, and `reply_bulk: name` (a file of the client's) lets a local
             worker answer with header {..., bulk: {name, len}} and an empty body.

Backend (a worker's DEALER <-> the broker's ROUTER), first frame is the message kind:
  worker -> broker  READY info | OK header body | ERR header | BYE
  heartbeat socket  HB info    (a second DEALER so a worker busy in a long kernel call still
                                heartbeats; `info` names the worker's main routing id)
  broker -> worker  REQ budget_ms request | HB | BYE (goodbye acknowledged) | RESET (re-register)

Envelope errors (not msgpack, not a map, a missing or mistyped field, another version) are
`protocol`; a well-formed request the kernel cannot take (unknown op, wrong argument count,
non-UTF-8 text) is `bad_request`.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import msgpack
import zmq

from workbooks.oql.kernel import OPS
from workbooks.pool.bulk import NAME_RE as BULK_NAME_RE

VERSION = 1

ERROR_CODES = ("bad_request", "kernel_trap", "deadline", "memory", "overloaded", "no_workers", "protocol", "worker_lost")
# `worker_lost`: the worker died with the request and the broker does not re-send it (a broker made
# with max_resends=0, as the workflow runners' is: whether a step may run again is the caller's call).

DEFAULT_DEADLINE_MS = 10_000
# Largest message the broker accepts (a bigger one closes the sender's connection); clients
# refuse to send one with a clear bad_request instead.
MAX_MESSAGE_BYTES = int(os.environ.get("WB_POOL_MAX_MESSAGE_MB", "256")) << 20
MAX_DEADLINE_MS = 600_000

# What a workflow runner answers (workbooks.workflow.worker): `step [meta, input]`, meta a msgpack
# map (component, context, limits), input the step's bytes; the reply body is a msgpack StepResult.
RUNNER_OPS = {"step": 2}
RUNNER_MAX_DEADLINE_MS = 86_400_000  # a step's wall clock is WB_STEP_TIMEOUT_S: allow long ones

# Backend message kinds.
READY = b"READY"
OK = b"OK"
ERR = b"ERR"
BYE = b"BYE"
HB = b"HB"
REQ = b"REQ"
RESET = b"RESET"

_budget = struct.Struct("!I")


# Plain ints: pyzmq's IntFlag arithmetic costs a microsecond a frame on the hot path.
NOBLOCK = int(zmq.NOBLOCK)
SNDMORE = int(zmq.SNDMORE)


def recv_frames(sock: "zmq.Socket") -> list:
    """One multipart message as zero-copy frames, without blocking (raises zmq.Again)."""
    recv = sock.recv
    f = recv(NOBLOCK, copy=False)
    frames = [f]
    while f.more:
        f = recv(0, copy=False)
        frames.append(f)
    return frames


def send_frames(sock: "zmq.Socket", frames, flags: int = NOBLOCK) -> None:
    """Send frames (bytes or zmq.Frame) as one message; large ones are not copied."""
    send = sock.send
    last = len(frames) - 1
    for i, f in enumerate(frames):
        send(f, flags | SNDMORE if i < last else flags, copy=False)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def pack_budget(ms: int) -> bytes:
    return _budget.pack(max(0, min(int(ms), 0xFFFFFFFF)))


def unpack_budget(data) -> int:
    return _budget.unpack(data)[0]


class ProtocolViolation(Exception):
    """A frame that does not follow the envelope; `code` says which typed error to answer with."""

    def __init__(self, code: str, message: str, req_id: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.req_id = req_id


def encode_request(req_id: int, op: str, args: list, deadline_ms: int = DEFAULT_DEADLINE_MS) -> bytes:
    return msgpack.packb(
        {"v": VERSION, "id": req_id, "op": op, "args": args, "deadline_ms": deadline_ms}, use_bin_type=True
    )


def decode_request(frame, allow_bulk: bool = False, ops: dict | None = None,
                   max_deadline_ms: int = MAX_DEADLINE_MS) -> dict:
    """Parse and check a request envelope; raises ProtocolViolation with the typed code.
    `allow_bulk`: the request came from a local client, which may use shared-memory bodies.
    `ops`: the operations served and their argument counts (default: the kernel's)."""
    ops = OPS if ops is None else ops
    try:
        req = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception:
        raise ProtocolViolation("protocol", "request is not a msgpack message") from None
    if not isinstance(req, dict):
        raise ProtocolViolation("protocol", "request must be a msgpack map {v, id, op, args, deadline_ms}")
    req_id = req.get("id")
    if isinstance(req_id, (dict, list)):
        req_id = None
    v = req.get("v")
    if v != VERSION:
        raise ProtocolViolation("protocol", f"unsupported protocol version {v!r}; this pool speaks v{VERSION}", req_id)
    if "id" not in req or not isinstance(req_id, (int, str, bytes)) or isinstance(req_id, bool):
        raise ProtocolViolation("protocol", "request needs an id (integer or string)", None)
    op = req.get("op")
    if not isinstance(op, str):
        raise ProtocolViolation("protocol", "request needs an op (string)", req_id)
    args = req.get("args")
    if not isinstance(args, list):
        raise ProtocolViolation("protocol", "request args must be a list", req_id)
    deadline = req.get("deadline_ms", DEFAULT_DEADLINE_MS)
    if not isinstance(deadline, int) or isinstance(deadline, bool):
        raise ProtocolViolation("protocol", "deadline_ms must be an integer", req_id)
    nargs = ops.get(op)
    if nargs is None:
        raise ProtocolViolation("bad_request", f"unknown operation {op!r}; one of {', '.join(ops)}", req_id)
    if len(args) != nargs:
        raise ProtocolViolation("bad_request", f"{op} takes {nargs} argument(s), got {len(args)}", req_id)
    for i, a in enumerate(args):
        if isinstance(a, dict) and "bulk" in a:
            if not allow_bulk:
                raise ProtocolViolation("protocol", "shared-memory bodies are only for clients on this host (ipc)", req_id)
            name, length = a.get("bulk"), a.get("len")
            if (len(a) != 2 or not isinstance(name, str) or not BULK_NAME_RE.match(name) or not isinstance(length, int)
                    or isinstance(length, bool) or not 0 <= length <= MAX_MESSAGE_BYTES):
                raise ProtocolViolation("protocol", f"argument {i} of {op} is not a valid shared-memory body "
                                        "reference {bulk: name, len: bytes}", req_id)
        elif not isinstance(a, (str, bytes)):
            raise ProtocolViolation("bad_request", f"argument {i} of {op} must be a string or bytes", req_id)
    if "reply_bulk" in req:
        rb = req["reply_bulk"]
        if not allow_bulk:
            raise ProtocolViolation("protocol", "shared-memory replies are only for clients on this host (ipc)", req_id)
        if not isinstance(rb, str) or not BULK_NAME_RE.match(rb) or not rb.startswith("r-"):
            raise ProtocolViolation("protocol", "reply_bulk must name the client's reply file (r-PID-HEX)", req_id)
    if deadline <= 0 or deadline > max_deadline_ms:
        raise ProtocolViolation("bad_request", f"deadline_ms must be within 1..{max_deadline_ms}", req_id)
    req["deadline_ms"] = deadline
    return req


def ok_header(req_id: Any, bulk: dict | None = None) -> bytes:
    if bulk is not None:
        return msgpack.packb({"v": VERSION, "id": req_id, "ok": True, "bulk": bulk}, use_bin_type=True)
    return msgpack.packb({"v": VERSION, "id": req_id, "ok": True}, use_bin_type=True)


def uses_bulk(req: dict) -> bool:
    """Does this (checked) request refer to shared memory, for its arguments or its reply?"""
    return "reply_bulk" in req or any(isinstance(a, dict) for a in req["args"])


def inline_request(req: dict, read) -> bytes:
    """The request re-encoded with every shared-memory argument replaced by its bytes (`read(name,
    len)`) and no shared-memory reply: what a worker on another host can serve."""
    args = [read(a["bulk"], a["len"]) if isinstance(a, dict) else a for a in req["args"]]
    return encode_request(req["id"], req["op"], args, req["deadline_ms"])


def error_header(req_id: Any, code: str, message: str) -> bytes:
    assert code in ERROR_CODES, code
    return msgpack.packb(
        {"v": VERSION, "id": req_id, "ok": False, "error": {"code": code, "message": message}}, use_bin_type=True
    )


def decode_reply_header(frame) -> dict:
    try:
        h = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception:
        raise ProtocolViolation("protocol", "reply header is not msgpack") from None
    if not isinstance(h, dict) or h.get("v") != VERSION or "ok" not in h:
        raise ProtocolViolation("protocol", f"reply header is not a v{VERSION} reply")
    return h
