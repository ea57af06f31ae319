"""Actors across processes: a ROUTER serving an `ActorSystem`, DEALER/REQ clients calling it.

Wire format in `workbooks.actors.wire`. The server answers plain REQ sockets too (same envelope),
which is what the synchronous `request_sync` and the supervisor's `ControlClient` use.
"""

from __future__ import annotations

import itertools

import trio
import zmq

from workbooks.actors.errors import (ActorError, ActorTimeout, ProtocolError, UnknownActor,
                                     UnreachableError, error_from_wire, error_to_wire)
from workbooks.actors.wire import (MAX_MESSAGE_BYTES, error_reply, make_request, ok_reply, pack,
                                   parse_request, split_envelope, unpack)
from workbooks.actors.zsock import TrioSocket, bind_private, context
from workbooks.log import get_logger

SERVER_CALL_TIMEOUT = 120.0
MAX_IN_FLIGHT = 1024


def bind_router(endpoint: str) -> zmq.Socket:
    """A ROUTER bound to `endpoint` (ipc: file mode 0600); raises zmq.ZMQError if it cannot bind."""
    sock = context().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        bind_private(sock, endpoint)
    except Exception:
        sock.close(linger=0)
        raise
    return sock


async def serve_router(system, endpoint: str, default: str | None, sock: zmq.Socket | None = None,
                       *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve `system`'s actors on `endpoint` (or an already bound ROUTER `sock`);
    requests without `to` go to `default`."""
    if sock is None:
        sock = bind_router(endpoint)
    ts = TrioSocket(sock)
    log = get_logger(endpoint=endpoint)
    try:
        async with trio.open_nursery() as n:
            await n.start(ts.run)
            task_status.started(ts)
            state = {"in_flight": 0}
            while True:
                try:
                    frames = await ts.recv()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    n.cancel_scope.cancel()
                    return
                if state["in_flight"] >= MAX_IN_FLIGHT:  # a flood gets answers, not unbounded tasks
                    envelope, _ = split_envelope(frames)
                    await ts.send(envelope + [pack(error_reply(
                        {"code": "overloaded", "message": "too many requests in flight"}))])
                    continue
                state["in_flight"] += 1
                n.start_soon(_serve_counted, state, system, default, ts, frames, log)
    finally:
        ts.close()


async def _serve_counted(state, *args) -> None:
    try:
        await _serve_one(*args)
    finally:
        state["in_flight"] -= 1


async def _serve_one(system, default, ts: TrioSocket, frames, log) -> None:
    envelope, body = split_envelope(frames)
    req_id = None
    is_cast = False
    try:
        if len(body) != 1:
            raise ProtocolError(f"expected one body frame, got {len(body)}")
        raw = unpack(body[0])
        if isinstance(raw, dict):
            req_id = raw.get("id")
        req = parse_request(raw)
        name = req["to"] or default
        if name is None:
            raise UnknownActor("request has no `to` and this endpoint has no default actor")
        ref = system.whereis(name)
        if ref is None:
            raise UnknownActor(f"no actor named {name!r}")
        if req["cast"]:
            is_cast = True
            await ref.cast(req["op"], req["args"])
            return
        data = await ref.call(req["op"], req["args"], timeout=SERVER_CALL_TIMEOUT)
        reply = ok_reply(data, req_id)
    except ActorError as e:
        reply = error_reply(error_to_wire(e), req_id)
    except Exception as e:  # never let one bad request take the endpoint down
        log.warning("actor_request_failed", error=f"{type(e).__name__}: {e}"[:300])
        reply = error_reply(error_to_wire(e), req_id)
    if is_cast:
        log.info("actor_cast_failed", error=reply["error"].get("code"))
        return
    try:
        payload = pack(reply)
    except Exception as e:
        payload = pack(error_reply({"code": "handler_failed",
                                    "message": f"reply not encodable: {type(e).__name__}"}, req_id))
    try:
        await ts.send(envelope + [payload])
    except trio.ClosedResourceError:
        pass


class RemoteRef:
    """A named actor in another process, reached through a `RemoteNode`."""

    def __init__(self, node: "RemoteNode", name: str | None):
        self.node = node
        self.name = name

    async def call(self, op: str, args: dict | None = None, *, timeout: float = 5.0):
        return await self.node.call(self.name, op, args, timeout=timeout)

    async def cast(self, op: str, args: dict | None = None) -> None:
        await self.node.cast(self.name, op, args)


class RemoteNode:
    """One DEALER connection; many concurrent calls, matched to replies by id."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        sock = context().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        sock.connect(endpoint)
        self.ts = TrioSocket(sock)
        self._ids = itertools.count(1)
        self._pending: dict[int, trio.MemorySendChannel] = {}

    def ref(self, name: str | None = None) -> RemoteRef:
        return RemoteRef(self, name)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as n:
                await n.start(self.ts.run)
                task_status.started(self)
                while True:
                    try:
                        frames = await self.ts.recv()
                    except (trio.EndOfChannel, trio.ClosedResourceError):
                        n.cancel_scope.cancel()  # closed: the pump has ended
                        return
                    _, body = split_envelope(frames)
                    if len(body) != 1:
                        continue
                    try:
                        reply = unpack(body[0])
                    except ProtocolError:
                        continue
                    if not isinstance(reply, dict):
                        continue
                    waiter = self._pending.pop(reply.get("id"), None)
                    if waiter is not None:
                        waiter.send_nowait(reply)
        finally:
            self.ts.close()
            for waiter in self._pending.values():
                waiter.close()  # their calls fail now instead of at their timeout
            self._pending.clear()

    async def call(self, name: str | None, op: str, args: dict | None = None, *,
                   timeout: float = 5.0):
        req_id = next(self._ids)
        send, recv = trio.open_memory_channel(1)
        self._pending[req_id] = send
        try:
            with trio.move_on_after(timeout) as scope:
                await self.ts.send([b"", pack(make_request(op, args, id=req_id, to=name))])
                reply = await recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise UnreachableError(f"connection to {self.endpoint} is closed") from None
        finally:
            self._pending.pop(req_id, None)
        if scope.cancelled_caught:
            raise ActorTimeout(f"{name or 'endpoint'} at {self.endpoint} did not reply to {op!r} "
                               f"within {timeout:g}s")
        if reply.get("ok") is True:
            return reply.get("data")
        raise error_from_wire(reply.get("error"))

    async def cast(self, name: str | None, op: str, args: dict | None = None) -> None:
        try:
            await self.ts.send([b"", pack(make_request(op, args, to=name, cast=True))])
        except trio.ClosedResourceError:
            raise UnreachableError(f"connection to {self.endpoint} is closed") from None

    def close(self) -> None:
        self.ts.close()


def request_sync(endpoint: str, op: str, args: dict | None = None, *, to: str | None = None,
                 timeout: float = 5.0):
    """One blocking round trip over a fresh REQ socket (safe after a timeout: no stuck REQ state)."""
    sock = context().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    try:
        sock.connect(endpoint)
        sock.send(pack(make_request(op, args, to=to)))
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise UnreachableError(f"no reply from {endpoint} to {op!r} within {timeout:g}s",
                              hint="is the service running? (`wbx serve`)")
        reply = unpack(sock.recv())
    finally:
        sock.close(linger=0)
    if not isinstance(reply, dict):
        raise ProtocolError("reply is not a map")
    if reply.get("ok") is True:
        return reply.get("data")
    raise error_from_wire(reply.get("error"))
