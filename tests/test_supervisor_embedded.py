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
