"""In-process actors: a named object that owns its state and is reached only by messages.

Define an actor by subclassing `Actor` and writing `on_<op>(self, **args)` handlers (plain or
async). Messages are processed one at a time, in order, so handlers never race on `self`;
ops listed in `concurrent_ops` (read-only ones like `status`) run without holding the mailbox.
A handler that raises gets the caller a typed error and the actor keeps serving.
"""

from __future__ import annotations

import inspect
import itertools
import math
from contextlib import asynccontextmanager

import trio

from workbooks.actors.errors import (ActorStopped, ActorTimeout, BadRequest, MailboxFull,
                                     UnknownActor, UnknownOp, error_from_wire, error_to_wire)
from workbooks.log import get_logger

DEFAULT_TIMEOUT = 5.0


class Actor:
    """Subclass me. State lives on `self`; reach me through an `ActorRef` only."""

    mailbox_size: int = 1000
    concurrent_ops: frozenset[str] = frozenset()

    async def setup(self) -> None:
        """Runs once before the first message (load state, open files); messages wait for it."""

    async def teardown(self) -> None:
        """Runs once when the actor stops (also on cancellation; keep it short and non-blocking)."""

    async def handle(self, op: str, args: dict):
        """Dispatch `op` to `on_<op>`; override for a different scheme."""
        if not isinstance(op, str) or not op.isidentifier():
            raise UnknownOp(f"no such op {op!r}")
        fn = getattr(self, "on_" + op, None)
        if fn is None or not callable(fn):
            raise UnknownOp(f"no such op {op!r}")
        try:
            inspect.signature(fn).bind(**args)
        except TypeError as e:
            raise BadRequest(f"bad arguments for {op}: {e}") from None
        result = fn(**args)
        if inspect.isawaitable(result):
            result = await result
        return result


class ActorRef:
    """The address of a local actor: `await ref.call(op, args)`, `ref.cast(op, args)`."""

    def __init__(self, name: str, send: trio.MemorySendChannel):
        self.name = name
        self._send = send

    async def call(self, op: str, args: dict | None = None, *, timeout: float | None = DEFAULT_TIMEOUT):
        reply_send, reply_recv = trio.open_memory_channel(1)
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            try:
                await self._send.send((op, args or {}, reply_send))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ActorStopped(f"actor {self.name!r} has stopped") from None
            try:
                ok, value = await reply_recv.receive()
            except trio.EndOfChannel:
                raise ActorStopped(f"actor {self.name!r} stopped before replying") from None
        if scope.cancelled_caught:
            reply_recv.close()
            raise ActorTimeout(f"actor {self.name!r} did not reply to {op!r} within {timeout:g}s")
        if ok:
            return value
        raise error_from_wire(value)

    async def cast(self, op: str, args: dict | None = None) -> None:
        self.cast_nowait(op, args)
        await trio.lowlevel.checkpoint()

    def cast_nowait(self, op: str, args: dict | None = None) -> None:
        try:
            self._send.send_nowait((op, args or {}, None))
        except trio.WouldBlock:
            raise MailboxFull(f"actor {self.name!r} mailbox is full") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorStopped(f"actor {self.name!r} has stopped") from None


async def _handle_one(name: str, actor: Actor, op: str, args: dict, reply) -> None:
    log = get_logger(actor=name)
    try:
        try:
            data = await actor.handle(op, args)
            outcome = (True, data)
        except Exception as e:  # the actor survives its handlers
            if not getattr(e, "code", None) or type(e).__module__ == "builtins":
                log.warning("actor_handler_failed", op=op, error=f"{type(e).__name__}: {e}"[:300])
            outcome = (False, error_to_wire(e))
        if reply is not None:
            try:
                reply.send_nowait(outcome)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
                pass  # the caller gave up (timeout); nothing to tell
    finally:
        if reply is not None:
            reply.close()  # also when the actor is stopped mid-handler: the caller sees ActorStopped


def _refuse_pending(channel: trio.MemoryReceiveChannel) -> None:
    """Close the reply channels of messages left in a stopped actor's queue (callers: ActorStopped)."""
    while True:
        try:
            _, _, reply = channel.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return
        if reply is not None:
            reply.close()


async def run_actor(name: str, actor: Actor, recv: trio.MemoryReceiveChannel) -> None:
    """The actor's loop: messages are handled one at a time, in order, by a serial task;
    `concurrent_ops` are dispatched at once so they never wait behind a slow serial op."""
    serial_send, serial_recv = trio.open_memory_channel(max(1, actor.mailbox_size))

    async def serial():
        async for op, args, reply in serial_recv:
            await _handle_one(name, actor, op, args, reply)

    try:
        await actor.setup()
        async with trio.open_nursery() as side:
            side.start_soon(serial)
            async for op, args, reply in recv:
                if op in actor.concurrent_ops:
                    side.start_soon(_handle_one, name, actor, op, args, reply)
                else:
                    await serial_send.send((op, args, reply))
    finally:
        _refuse_pending(recv)
        _refuse_pending(serial_recv)
        recv.close()
        serial_send.close()
        serial_recv.close()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            try:
                await actor.teardown()
            except Exception as e:
                get_logger(actor=name).warning("actor_teardown_failed", error=f"{type(e).__name__}: {e}"[:300])


class ActorSystem:
    """A registry of names plus the nursery the actors run in. Names are unique."""

    def __init__(self, nursery: trio.Nursery):
        self.nursery = nursery
        self._names: dict[str, object] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._anon = itertools.count(1)
        self._nodes: dict[str, object] = {}

    def spawn(self, actor: Actor, name: str | None = None) -> ActorRef:
        """Start `actor` under `name` (registered) and return its ref."""
        if name is None:
            name = f"{type(actor).__name__.lower()}-{next(self._anon)}"
        if name in self._names:
            raise ValueError(f"actor name {name!r} is already registered")
        send, recv = trio.open_memory_channel(actor.mailbox_size)
        ref = ActorRef(name, send)
        scope = trio.CancelScope()
        self._names[name] = ref
        self._scopes[name] = scope

        async def _run():
            try:
                with scope:
                    await run_actor(name, actor, recv)
            finally:
                send.close()
                if self._names.get(name) is ref:
                    del self._names[name]
                    self._scopes.pop(name, None)

        self.nursery.start_soon(_run)
        return ref

    def register(self, name: str, ref) -> None:
        """Register any ref (e.g. a `RemoteRef`) under a name."""
        if name in self._names:
            raise ValueError(f"actor name {name!r} is already registered")
        self._names[name] = ref

    def unregister(self, name: str) -> None:
        self._names.pop(name, None)

    def stop(self, name: str) -> None:
        scope = self._scopes.get(name)
        if scope is not None:
            scope.cancel()
        self._names.pop(name, None)

    def whereis(self, name: str):
        return self._names.get(name)

    def names(self) -> list[str]:
        return sorted(self._names)

    def _ref(self, name: str):
        ref = self._names.get(name)
        if ref is None:
            raise UnknownActor(f"no actor named {name!r}")
        return ref

    async def call(self, name: str, op: str, args: dict | None = None, *,
                   timeout: float = DEFAULT_TIMEOUT):
        return await self._ref(name).call(op, args, timeout=timeout)

    async def cast(self, name: str, op: str, args: dict | None = None) -> None:
        await self._ref(name).cast(op, args)

    async def serve_zmq(self, endpoint: str, *, default: str | None = None, sock=None):
        """Expose this system's actors on a ROUTER at `endpoint`; returns once bound.

        Pass `sock` (from `remote.bind_router`) to bind before entering trio, so a taken
        endpoint is a plain exception rather than one inside an exception group."""
        from workbooks.actors.remote import serve_router

        return await self.nursery.start(serve_router, self, endpoint, default, sock)

    async def connect(self, endpoint: str):
        """A DEALER connection to another process's actors (one per endpoint, reused)."""
        from workbooks.actors.remote import RemoteNode

        node = self._nodes.get(endpoint)
        if node is None or node.ts.closed:
            node = RemoteNode(endpoint)
            await self.nursery.start(node.run)
            self._nodes[endpoint] = node
        return node

    async def register_remote(self, name: str, endpoint: str, remote_name: str | None = None):
        """Register `name` for the actor `remote_name` (default: the same name) at `endpoint`."""
        node = await self.connect(endpoint)
        ref = node.ref(remote_name if remote_name is not None else name)
        self.register(name, ref)
        return ref


@asynccontextmanager
async def open_actor_system():
    """`async with open_actor_system() as system:` — actors are cancelled when the block ends."""
    async with trio.open_nursery() as nursery:
        system = ActorSystem(nursery)
        try:
            yield system
        finally:
            nursery.cancel_scope.cancel()
