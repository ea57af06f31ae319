"""A pyzmq socket driven from trio: pyzmq has no trio support, so we wait on the socket's FD.

ZeroMQ's FD is edge-triggered: it becomes readable when the socket's event state *may* have
changed, and any operation on the socket (including a send from another task, or reading
`EVENTS`) can consume that edge. So the one pump task per socket always re-reads
`getsockopt(zmq.EVENTS)` in a loop before sleeping, and every send "kicks" the pump so it
re-checks instead of sleeping on an edge that was already consumed.
"""

from __future__ import annotations

import math
import os
import stat

import trio
import zmq

from workbooks.actors.wire import MAX_MESSAGE_BYTES


class TrioSocket:
    """Owns one zmq socket: the `run` task receives into a bounded queue; any task may `send`.

    While the receive queue is full the pump waits for room, so a task that consumes `recv()`
    should not itself block on `send()` of a socket whose sends can block (DEALER/REQ at HWM;
    ROUTER drops instead of blocking, which is why servers may reply from their receive loop).
    """

    def __init__(self, sock: zmq.Socket, *, queue: int = 1024):
        self.sock = sock
        self.fd = sock.getsockopt(zmq.FD)
        self._in_send, self._in_recv = trio.open_memory_channel(queue)
        self._wait_scope: trio.CancelScope | None = None
        self._kicked = False
        self._writable: list[trio.Event] = []
        self.closed = False

    def _kick(self) -> None:
        self._kicked = True
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    async def _wait(self) -> None:
        if self._kicked:
            self._kicked = False
            await trio.lowlevel.checkpoint()
            return
        with trio.CancelScope() as scope:
            self._wait_scope = scope
            try:
                await trio.lowlevel.wait_readable(self.fd)
            finally:
                self._wait_scope = None
        self._kicked = False

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The pump: receive whole messages while EVENTS says so, then sleep on the FD."""
        task_status.started()
        try:
            while True:
                events = self.sock.getsockopt(zmq.EVENTS)
                if events & zmq.POLLOUT and self._writable:
                    waiters, self._writable = self._writable, []
                    for ev in waiters:
                        ev.set()
                if events & zmq.POLLIN:
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        continue
                    await self._in_send.send(frames)
                    continue
                await self._wait()
        except trio.ClosedResourceError:
            pass  # close() while we waited: the pump ends quietly
        finally:
            self._in_send.close()

    async def send(self, frames: list[bytes]) -> None:
        """Send a multipart message, waiting (without polling) while the socket cannot take it."""
        while True:
            if self.closed:
                raise trio.ClosedResourceError("socket closed")
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                ev = trio.Event()
                self._writable.append(ev)
                self._kick()
                await ev.wait()
                continue
            self._kick()
            await trio.lowlevel.checkpoint()
            return

    async def recv(self) -> list[bytes]:
        return await self._in_recv.receive()

    def close(self) -> None:
        """Close the socket; a pump still waiting on its FD is woken (trio requires it)."""
        if not self.closed:
            self.closed = True
            try:
                trio.lowlevel.notify_closing(self.fd)
            except RuntimeError:
                pass  # not inside trio: nobody can be waiting
            self.sock.close(linger=0)


def context() -> zmq.Context:
    return zmq.Context.instance()


def bind_private(sock: zmq.Socket, endpoint: str) -> None:
    """Bind `endpoint`; an ipc socket file is created with mode 0600 (umask during bind, then chmod)."""
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    if not endpoint.startswith("ipc://"):
        sock.bind(endpoint)
        return
    path = endpoint[len("ipc://"):]
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    old = os.umask(0o177)
    try:
        sock.bind(endpoint)
    finally:
        os.umask(old)
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)


INF = math.inf
