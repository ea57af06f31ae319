"""Actors: call/cast, timeouts, unknown names and ops, crashing handlers; in-process and over ZeroMQ."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest
import trio

from workbooks.actors import (Actor, ActorTimeout, BadRequest, HandlerFailed, MailboxFull,
                              UnknownActor, UnknownOp, open_actor_system, request_sync)
from workbooks.errors import EXIT_NOT_FOUND, EXIT_UNREACHABLE, NotFound


class Counter(Actor):
    """Test actor: state is a number and a log of casts."""

    concurrent_ops = frozenset({"peek"})

    def __init__(self):
        self.n = 0

    def on_add(self, by=1):
        self.n += by
        return self.n

    def on_get(self):
        return self.n

    def on_peek(self):
        return self.n

    async def on_slow(self, seconds):
        await trio.sleep(seconds)
        return "done"

    def on_crash(self):
        return 1 / 0

    def on_missing(self, name):
        raise NotFound(f"no {name}")

    def _private(self):  # not an op: no on_ prefix
        return "secret"


def run(fn):
    return trio.run(fn)


def test_call_and_cast_in_process():
    async def main():
        async with open_actor_system() as system:
            ref = system.spawn(Counter(), "counter")
            assert await ref.call("add", {"by": 2}) == 2
            await system.cast("counter", "add", {"by": 5})
            await ref.cast("add")
            # casts are processed in order before a later call
            assert await system.call("counter", "get") == 8
            assert system.whereis("counter") is ref and system.names() == ["counter"]
            with pytest.raises(ValueError):
                system.spawn(Counter(), "counter")
    run(main)


def test_timeout_unknown_actor_unknown_op_and_bad_args():
    async def main():
        async with open_actor_system() as system:
            ref = system.spawn(Counter(), "counter")
            t0 = time.monotonic()
            with pytest.raises(ActorTimeout) as ei:
                await ref.call("slow", {"seconds": 1.0}, timeout=0.05)
            assert time.monotonic() - t0 < 0.9  # did not wait for the handler
            assert ei.value.code == "timeout" and ei.value.exit_code == EXIT_UNREACHABLE
            with pytest.raises(UnknownActor) as ei:
                await system.call("nobody", "get")
            assert ei.value.code == "unknown_actor" and ei.value.exit_code == EXIT_NOT_FOUND
            for op in ("nope", "_private", "__init__", "private", "../x", ""):
                with pytest.raises(UnknownOp):
                    await ref.call(op)
            with pytest.raises(BadRequest):
                await ref.call("add", {"by": 1, "extra": 2})
            with pytest.raises(BadRequest):
                await ref.call("slow")
            # the actor still serves afterwards (after the slow op finishes)
            assert await ref.call("add", {"by": 1}, timeout=2) == 1
    run(main)


def test_crashing_handler_returns_typed_error_and_actor_keeps_state():
    async def main():
        async with open_actor_system() as system:
            ref = system.spawn(Counter(), "counter")
            await ref.call("add", {"by": 3})
            with pytest.raises(HandlerFailed) as ei:
                await ref.call("crash")
            assert ei.value.code == "handler_failed" and "ZeroDivisionError" in str(ei.value)
            with pytest.raises(Exception) as ei:
                await ref.call("missing", {"name": "thing"})
            assert ei.value.code == "not_found" and "no thing" in str(ei.value)
            await ref.cast("crash")  # a crashing cast is logged, not fatal
            assert await ref.call("get") == 3
    run(main)


def test_concurrent_op_answers_while_a_serial_op_is_slow():
    async def main():
        async with open_actor_system() as system:
            ref = system.spawn(Counter(), "counter")
            async with trio.open_nursery() as n:
                n.start_soon(lambda: ref.call("slow", {"seconds": 30}, timeout=60))
                await trio.sleep(0.05)
                with trio.fail_after(5):
                    assert await ref.call("peek") == 0
                n.cancel_scope.cancel()
    run(main)


def test_full_mailbox_rejects_casts():
    class Tiny(Counter):
        mailbox_size = 1

    async def main():
        async with open_actor_system() as system:
            ref = system.spawn(Tiny(), "tiny")
            async with trio.open_nursery() as n:
                n.start_soon(ref.call, "slow", {"seconds": 0.3})
                await trio.sleep(0.02)
                ref.cast_nowait("add")  # fills the mailbox while the slow call runs
                ref.cast_nowait("add")  # the serial queue holds one more
                with pytest.raises(MailboxFull):
                    for _ in range(3):
                        ref.cast_nowait("add")
            assert await ref.call("get") >= 2
    run(main)


SERVER = textwrap.dedent("""
    import sys, trio
    sys.path.insert(0, {tests!r})
    from test_actors import Counter
    from workbooks.actors import open_actor_system

    async def main():
        async with open_actor_system() as system:
            system.spawn(Counter(), "counter")
            await system.serve_zmq({endpoint!r}, default="counter")
            print("READY", flush=True)
            await trio.sleep_forever()

    trio.run(main)
""")


@pytest.fixture
def remote_counter(tmp_path):
    endpoint = f"ipc://{tmp_path}/actors.sock"
    code = SERVER.format(tests=os.path.dirname(__file__), endpoint=endpoint)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "READY"
        yield endpoint
    finally:
        p.terminate()
        p.wait(10)


def test_remote_actor_over_zeromq(remote_counter):
    endpoint = remote_counter
    assert stat.S_IMODE(os.stat(endpoint[6:]).st_mode) == 0o600

    async def main():
        async with open_actor_system() as system:
            node = await system.connect(endpoint)
            counter = node.ref("counter")
            system.register("counter", counter)
            assert await system.call("counter", "add", {"by": 4}) == 4
            await counter.cast("add", {"by": 1})
            assert await counter.call("get") == 5
            assert await node.ref().call("get") == 5  # the endpoint's default actor
            with pytest.raises(HandlerFailed):
                await counter.call("crash")
            with pytest.raises(UnknownActor):
                await node.ref("ghost").call("get")
            with pytest.raises(UnknownOp):
                await counter.call("nope")
            with pytest.raises(ActorTimeout):
                await counter.call("slow", {"seconds": 1.0}, timeout=0.1)
            # many concurrent calls over one DEALER: every reply is matched to its caller
            results = {}

            async def one(i):
                results[i] = await counter.call("add", {"by": 1}, timeout=10)

            async with trio.open_nursery() as n:
                for i in range(300):
                    n.start_soon(one, i)
            assert sorted(results.values()) == list(range(6, 306))
    run(main)
    assert request_sync(endpoint, "get", to="counter") == 305
    with pytest.raises(UnknownOp):
        request_sync(endpoint, "nope")


def test_unreachable_endpoint_times_out_with_a_typed_error(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(Exception) as ei:
        request_sync(f"ipc://{tmp_path}/nobody.sock", "status", timeout=0.2)
    assert ei.value.exit_code == EXIT_UNREACHABLE and time.monotonic() - t0 < 2


def test_a_flood_of_requests_gets_overloaded_replies_not_unbounded_work(remote_counter):
    import msgpack
    import zmq

    from workbooks.actors.remote import MAX_IN_FLIGHT

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(remote_counter)
    try:
        extra = 5
        for i in range(MAX_IN_FLIGHT + extra):
            sock.send_multipart([b"", msgpack.packb({"v": 1, "id": i, "op": "slow", "args": {"seconds": 30}})])
        codes = []
        while len(codes) < extra and sock.poll(5000):
            reply = msgpack.unpackb(sock.recv_multipart()[-1])
            codes.append(reply["error"]["code"])
        assert codes == ["overloaded"] * extra
    finally:
        sock.close()


def test_stopping_an_actor_answers_its_waiting_callers_at_once():
    async def main():
        async with open_actor_system() as system:
            ref = system.spawn(Counter(), "counter")
            outcomes = []

            async def caller(op, args):
                try:
                    outcomes.append(await ref.call(op, args, timeout=10))
                except Exception as e:
                    outcomes.append(e.code)

            async with trio.open_nursery() as n:
                n.start_soon(caller, "slow", {"seconds": 30})   # in the handler
                await trio.sleep(0.05)
                n.start_soon(caller, "get", {})                  # queued behind it
                await trio.sleep(0.05)
                t0 = trio.current_time()
                system.stop("counter")
            assert outcomes == ["actor_stopped", "actor_stopped"]
            assert trio.current_time() - t0 < 1
            with pytest.raises(UnknownActor):
                await system.call("counter", "get")
    run(main)


def test_register_remote_names_an_actor_in_another_process(remote_counter):
    async def main():
        async with open_actor_system() as system:
            await system.register_remote("count", remote_counter, remote_name="counter")
            await system.register_remote("counter", remote_counter)
            assert await system.call("count", "add", {"by": 2}) == 2
            assert await system.call("counter", "get") == 2
            assert len(system._nodes) == 1  # one connection per endpoint
    run(main)


def test_closing_a_remote_node_ends_its_pump_and_fails_calls_cleanly(remote_counter):
    async def main():
        async with open_actor_system() as system:
            node = await system.connect(remote_counter)
            assert await node.ref("counter").call("get") == 0
            node.close()
            with pytest.raises(Exception) as ei:
                await node.ref("counter").call("get", timeout=1)
            assert ei.value.code == "unreachable"
            again = await system.connect(remote_counter)  # a closed node is replaced
            assert again is not node and await again.ref("counter").call("get") == 0
    run(main)


def test_setup_runs_before_the_first_message_and_teardown_on_stop():
    events = []

    class Store(Actor):
        async def setup(self):
            await trio.sleep(0.05)
            self.data = {"loaded": True}
            events.append("setup")

        async def teardown(self):
            events.append("teardown")

        def on_get(self):
            return dict(self.data)

    async def main():
        async with open_actor_system() as system:
            ref = system.spawn(Store(), "store")
            assert await ref.call("get") == {"loaded": True}  # waited for setup
            with pytest.raises(UnknownOp):
                await ref.call("setup")  # hooks are not ops
            system.stop("store")
            await trio.sleep(0.01)
    run(main)
    assert events == ["setup", "teardown"]
