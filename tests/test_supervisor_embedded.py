"""The supervisor embedded in a trio program (how the pool adds its own ops and tasks)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from supervisor_harness import alive, fake, procs_matching, wait_for  # noqa: E402

from workbooks.actors import open_actor_system  # noqa: E402
from workbooks.supervisor import ChildSpec, ControlClient, Supervisor  # noqa: E402


def test_extra_ops_tasks_and_templates_from_python(tmp_path):
    rec = str(tmp_path / "record.jsonl")
    endpoint = f"ipc://{tmp_path}/sup.sock"
    seen = {}

    async def pool_task(sup):
        seen["task_started"] = True
        await trio.sleep_forever()

    async def pool_stats(args):
        await trio.sleep(0)
        return {"queue_depth": 7, "echo": args}

    sup = Supervisor(
        children=[ChildSpec(id="broker", argv=fake("--record", rec), shutdown=500)],
        templates={"worker": lambda cid: ChildSpec(id=cid, argv=fake("--record", rec), group="worker",
                                                   shutdown=500)},
        control_endpoint=endpoint, extra_ops={"pool_stats": pool_stats}, tasks=[pool_task],
        max_restarts=2, max_seconds=2)
    sup.register_op("drain", lambda args: {"draining": args.get("id")})

    async def main():
        async with trio.open_nursery() as n:
            await n.start(lambda task_status: sup.serve(handle_signals=False, task_status=task_status))
            with trio.fail_after(2):
                while not seen.get("task_started"):
                    await trio.sleep(0.01)
            async with open_actor_system() as system:
                node = await system.connect(endpoint)
                control = node.ref()
                assert (await control.call("pool_stats", {"x": 1}))["queue_depth"] == 7
                assert await control.call("drain", {"id": "worker-1"}) == {"draining": "worker-1"}
                scaled = await control.call("scale", {"group": "worker", "n": 2})
                assert scaled["started"] == ["worker-1", "worker-2"]
                sync = await trio.to_thread.run_sync(lambda: ControlClient(endpoint).request("status"))
                assert [c["id"] for c in sync["children"]] == ["broker", "worker-1", "worker-2"]
                seen["pids"] = [c["pid"] for c in sync["children"]]
                assert sup.metrics()["groups"]["worker"] == {"current": 2, "target": 2}
                assert await control.call("stop") == {"stopping": True}
    trio.run(main)
    assert all(not alive(p) for p in seen["pids"])
    assert not procs_matching(str(tmp_path))


def test_cancelling_an_embedded_supervisor_kills_its_children(tmp_path):
    rec = str(tmp_path / "record.jsonl")
    sup = Supervisor(children=[ChildSpec(id="a", argv=fake("--record", rec, "--ignore-term"))])

    async def main():
        with trio.move_on_after(1.0):
            await sup.serve(handle_signals=False)
    trio.run(main)
    wait_for(lambda: not procs_matching(str(tmp_path)), 2, what="children killed on cancel")


def test_constructor_rejects_bad_arguments():
    with pytest.raises(ValueError):
        Supervisor(max_restarts=-1)
    with pytest.raises(ValueError):
        Supervisor(max_seconds=0)
    spec = ChildSpec(id="a", argv=["true"])
    with pytest.raises(ValueError):
        Supervisor(children=[spec, spec])
    for bad in ({"id": "a b", "argv": ["x"]}, {"id": "a", "argv": []}, {"id": "a", "argv": ["x"], "restart": "sometimes"},
                {"id": "a", "argv": ["x"], "shutdown": -1}, {"id": "a", "argv": ["x"], "shutdown": "soft"},
                {"id": "a", "argv": ["x"], "env": {"A": 1}}, {"id": "a", "argv": ["x\0y"]}):
        with pytest.raises(Exception) as ei:
            ChildSpec.from_dict(bad)
        assert ei.value.code == "bad_request"


@pytest.mark.parametrize("times,max_restarts,max_seconds,expected", [
    # OTP: a restart is allowed while (restarts within the last max_seconds, inclusive) <= max_restarts
    ([0, 1, 2], 3, 5, [True, True, True]),
    ([0, 1, 2, 3], 3, 5, [True, True, True, False]),
    ([0, 1, 2, 5.0], 3, 5, [True, True, True, False]),     # t=0 is still inside [0, 5]
    ([0, 1, 2, 5.01], 3, 5, [True, True, True, True]),     # t=0 slid out
    ([0, 6, 12, 18, 24], 1, 5, [True] * 5),                # spaced wider than the window
    ([0, 0.1], 1, 5, [True, False]),
    ([0], 0, 5, [False]),                                  # max_restarts = 0: the first gives up
])
def test_intensity_window_matches_otp(times, max_restarts, max_seconds, expected):
    sup = Supervisor(max_restarts=max_restarts, max_seconds=max_seconds)
    clock = iter(times)
    sup._clock = lambda: next(clock)
    got = []
    for _ in times:
        ok = sup._add_restart()
        got.append(ok)
        if not ok:
            break
    assert got == expected[: len(got)] and len(got) == len(expected)


def test_back_off_is_capped_so_a_crash_loop_still_exceeds_the_intensity():
    sup = Supervisor(max_restarts=20, max_seconds=1)
    delays = [sup._backoff(k) for k in range(1, 22)]
    assert delays[:3] == [0.0, 0.01, 0.02]
    assert sum(delays) <= 1 / 2 + 1e-9  # 21 instant crashes give up inside one window
    assert Supervisor()._backoff(30) <= 1.0
