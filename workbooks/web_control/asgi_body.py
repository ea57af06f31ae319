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
  next request. So before the response starts, the rest of the body is read and dropped (the
  route has decided already); a body too large to drain cheaply gets `Connection: close`.
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
    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        for k, v in scope["headers"]:
            if k == b"host":
                if not acceptable_host(v.decode("latin-1")):
                    return await _bad_host(send)
                break
        expects, length = _expects_body(scope)
        state = {"done": not expects}

        async def rcv():
            msg = await receive()
            t = msg["type"]
            if (t == "http.request" and not msg.get("more_body", False)) or t == "http.disconnect":
                state["done"] = True
            return msg

        async def snd(msg):
            t = msg["type"]
            if t == "http.response.start" and not state["done"]:
                if length <= DRAIN_MAX:
                    with trio.move_on_after(WAIT_S):
                        while not state["done"]:
                            await rcv()
                if not state["done"]:
                    msg = dict(msg)
                    msg["headers"] = [*msg.get("headers", []), (b"connection", b"close")]
            if t == "http.response.body" and not msg.get("more_body", False):
                with trio.CancelScope(shield=True, deadline=trio.current_time() + LAST_SEND_S):
                    await send(msg)
                return
            await send(msg)

        await self.inner(scope, rcv, snd)


async def _bad_host(send) -> None:
    """Hostile Host headers stop here: the framework would turn some of them into a 500."""
    body = b'{"error": {"code": "bad_host", "message": "the Host header is not a valid host name"}}\n'
    await send({"type": "http.response.start", "status": 400, "headers": [
        (b"content-type", b"application/json"), (b"cache-control", b"no-store"),
        (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    with trio.CancelScope(shield=True, deadline=trio.current_time() + LAST_SEND_S):
        await send({"type": "http.response.body", "body": body})
