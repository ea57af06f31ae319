"""ASGI layer between hypercorn and a quart-trio app: keep HTTP/1.1 connections honest.

Hostile Host headers are answered here with a JSON 400 (werkzeug would raise BadHost while
building the request context, outside any error handler, and hypercorn would answer 500).

Two things go wrong with hypercorn 0.18 (h11) under quart-trio without it:
- quart-trio cancels its own request nursery as soon as hypercorn reports the stream closed,
  which happens *inside* the app's last `send`; that cancels hypercorn's socket close half way,
  so a `Connection: close` (or an unread body) leaves the connection open and silent until the
  idle timeout. The last send is therefore shielded (with a deadline).
- a response that completes before the client has finished sending the request body (an early
  401/403/404/405 on a POST) makes hypercorn drop the keep-alive connection under the client's
  next request. So the body is read in full before the app runs (and replayed to it); a body
  over the limit gets a 413 and `Connection: close` without being read.
"""

from __future__ import annotations

import trio

from workbooks.store.names import acceptable_host

WAIT_S = 10.0
DRAIN_MAX = 32 * 1024 * 1024
LAST_SEND_S = 10.0


def _expects_body(scope) -> tuple[bool, int]:
    length = 0
    chunked = False
    for k, v in scope.get("headers", ()):
        if k == b"content-length":
            try:
                length = int(v)
            except ValueError:
                length = 0
        elif k == b"transfer-encoding":
            chunked = True
    return (length > 0 or chunked), length


class BodyBeforeResponse:
    """Read the whole request body before the app runs (replayed to it), so a response never starts
    while the client is still sending; an over-limit body is refused here with 413 and the
    connection closed, without reading it."""

    def __init__(self, inner, max_body: int = DRAIN_MAX):
        self.inner = inner
        self.max_body = max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        for k, v in scope["headers"]:
            if k == b"host":
                if not acceptable_host(v.decode("latin-1")):
                    return await _error(send, 400, "bad_host", "the Host header is not a valid host name")
                break
        expects, length = _expects_body(scope)
        if expects:
            if length > self.max_body:
                return await _error(send, 413, "payload_too_large", "request body too large")
            chunks: list[bytes] = []
            size = 0
            with trio.move_on_after(WAIT_S) as timer:
                while True:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        return
                    body = msg.get("body", b"")
                    size += len(body)
                    if size > self.max_body:
                        return await _error(send, 413, "payload_too_large", "request body too large")
                    chunks.append(body)
                    if not msg.get("more_body", False):
                        break
            if timer.cancelled_caught:
                return await _error(send, 408, "request_timeout", "the request body did not arrive in time")
            replay = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

            async def rcv():
                nonlocal replay
                if replay is not None:
                    msg, replay = replay, None
                    return msg
                return await receive()
        else:
            rcv = receive

        async def snd(msg):
            if msg["type"] == "http.response.body" and not msg.get("more_body", False):
                with trio.CancelScope(shield=True, deadline=trio.current_time() + LAST_SEND_S):
                    await send(msg)
                return
            await send(msg)

        await self.inner(scope, rcv, snd)


async def _error(send, status: int, code: str, message: str) -> None:
    """A JSON error answered here (then the connection closes): hostile Host headers, which the
    framework would turn into a 500, and bodies over the limit, which are not read."""
    import json

    body = (json.dumps({"error": {"code": code, "message": message}}) + "\n").encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"cache-control", b"no-store"),
        (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    with trio.CancelScope(shield=True, deadline=trio.current_time() + LAST_SEND_S):
        await send({"type": "http.response.body", "body": body})
