"""The message format shared by every actor endpoint (and the supervisor's control endpoint).

Request  `{"v": 1, "op": str, "args": {...}, "id": any?, "to": str?, "cast": bool?}`
Reply    `{"v": 1, "id": <echo>, "ok": true, "data": ...}` or
         `{"v": 1, "id": <echo>, "ok": false, "error": {"code": str, "message": str}}`
msgpack, one frame, after the usual ZeroMQ envelope (`[routing ids..., b"", body]`), so a plain REQ
socket and our DEALER clients both talk to the same ROUTER.
"""

from __future__ import annotations

import msgpack

from workbooks.actors.errors import ProtocolError

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(body: bytes):
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types on bad input
        raise ProtocolError(f"undecodable msgpack body: {type(e).__name__}") from None


def make_request(op: str, args: dict | None = None, *, id=None, to: str | None = None,
                 cast: bool = False) -> dict:
    req = {"v": PROTOCOL_VERSION, "op": op, "args": args or {}}
    if id is not None:
        req["id"] = id
    if to is not None:
        req["to"] = to
    if cast:
        req["cast"] = True
    return req


def parse_request(obj) -> dict:
    """Validate a decoded request; raise ProtocolError/BadRequest-worthy messages on bad shapes."""
    if not isinstance(obj, dict):
        raise ProtocolError("request must be a map")
    if obj.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {obj.get('v')!r} (expected {PROTOCOL_VERSION})")
    op = obj.get("op")
    if not isinstance(op, str) or not op:
        raise ProtocolError("request needs a string `op`")
    args = obj.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise ProtocolError("`args` must be a map with string keys")
    to = obj.get("to")
    if to is not None and not isinstance(to, str):
        raise ProtocolError("`to` must be a string")
    return {"op": op, "args": args, "id": obj.get("id"), "to": to, "cast": bool(obj.get("cast"))}


def ok_reply(data, id=None) -> dict:
    r = {"v": PROTOCOL_VERSION, "ok": True, "data": data}
    if id is not None:
        r["id"] = id
    return r


def error_reply(error: dict, id=None) -> dict:
    r = {"v": PROTOCOL_VERSION, "ok": False, "error": error}
    if id is not None:
        r["id"] = id
    return r


def split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Split ROUTER frames into (envelope incl. the empty delimiter, body frames)."""
    for i, f in enumerate(frames):
        if f == b"":
            return frames[: i + 1], frames[i + 1:]
    # A DEALER peer that sent no delimiter: route back on the identity frame alone.
    return frames[:1] + [b""], frames[1:]
