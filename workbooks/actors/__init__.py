"""Actors: named owners of state, reached only by messages (call = request/reply, cast).

In one process they run over trio memory channels (`open_actor_system`, `Actor`, `ActorRef`);
across processes over ZeroMQ ROUTER/DEALER with msgpack (`ActorSystem.serve_zmq`,
`ActorSystem.connect`, `request_sync`). See `workbooks/actors/README.md` for how to add one.
"""

from workbooks.actors.errors import (ActorError, ActorStopped, ActorTimeout, BadRequest,
                                     HandlerFailed, MailboxFull, ProtocolError, UnknownActor,
                                     UnknownOp)
from workbooks.actors.local import Actor, ActorRef, ActorSystem, open_actor_system
from workbooks.actors.remote import RemoteNode, RemoteRef, request_sync
from workbooks.actors.wire import PROTOCOL_VERSION
from workbooks.actors.zsock import TrioSocket, bind_private

__all__ = [
    "Actor", "ActorRef", "ActorSystem", "open_actor_system", "RemoteNode", "RemoteRef",
    "request_sync", "TrioSocket", "bind_private", "PROTOCOL_VERSION",
    "ActorError", "ActorStopped", "ActorTimeout", "BadRequest", "HandlerFailed", "MailboxFull",
    "ProtocolError", "UnknownActor", "UnknownOp",
]
