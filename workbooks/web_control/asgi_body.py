"""ASGI layer: a response starts only after the request body has fully arrived.

hypercorn (0.18, h11) leaves a keep-alive connection hanging when a response completes before
the client has finished sending the request body (an early 401/403/404 on a POST): the next
request on that connection is never answered. Waiting for the body (Quart's own receiver task
keeps reading it) before sending the response start avoids that; a body still incomplete after
a short wait, or one too large to wait for, gets `Connection: close` instead.
"""

from __future__ import annotations

import trio

WAIT_S = 5.0


class BodyBeforeResponse:
    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        done = trio.Event()

        async def rcv():
            msg = await receive()
            t = msg["type"]
            if (t == "http.request" and not msg.get("more_body", False)) or t == "http.disconnect":
                done.set()
            return msg

        async def snd(msg):
            if msg["type"] == "http.response.start" and not done.is_set():
                with trio.move_on_after(WAIT_S):
                    await done.wait()
                if not done.is_set():
                    msg = dict(msg)
                    msg["headers"] = [*msg.get("headers", []), (b"connection", b"close")]
            await send(msg)

        await self.inner(scope, rcv, snd)
