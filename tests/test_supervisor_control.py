"""The supervisor's control endpoint, driven over its real ipc socket like `wbx ops` does."""

from __future__ import annotations

import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from supervisor_harness import alive, fake, procs_matching, supervisors_for, wait_for  # noqa: E402

from workbooks.actors import ActorError  # noqa: E402
from workbooks.errors import EXIT_CONFLICT, EXIT_NOT_FOUND, EXIT_USAGE  # noqa: E402


@pytest.fixture
def sup(tmp_path):
    """Start supervisors for this test; afterwards stop them and check no process is left."""
    yield from supervisors_for(tmp_path)


def worker_template(tmp_path, ready_after="0.05"):
    return {"argv": fake("--record", str(tmp_path / "record.jsonl"), "--ready", "--ready-after", ready_after),
            "shutdown": 1000, "ready_timeout_ms": 5000}


def plain(tmp_path, id, *args, **kw):
    return {"id": id, "argv": fake("--record", str(tmp_path / "record.jsonl"), *args), "shutdown": 1000, **kw}


def error_of(fn, *a, **kw) -> ActorError:
    with pytest.raises(ActorError) as ei:
        fn(*a, **kw)
    return ei.value


def test_socket_is_0600_and_status_has_the_contract_fields(sup, tmp_path):
    s = sup({"children": [plain(tmp_path, "a", group="web", env={"FAKE_CHILD_MARK": "m1"})]})
    st = s.wait_ready()
    [start] = wait_for(lambda: s.records("start", "a"), 5, what="start")
    assert start["env"] == {"WB_CHILD_GROUP": "web", "WB_SUPERVISOR_PID": str(s.proc.pid),
                            "WB_SUPERVISOR_ENDPOINT": s.endpoint, "FAKE_CHILD_MARK": "m1"}
    mode = stat.S_IMODE(os.stat(s.endpoint[6:]).st_mode)
    assert mode == 0o600
    assert stat.S_ISSOCK(os.stat(s.endpoint[6:]).st_mode)
    [c] = wait_for(lambda: [c for c in s.request("status")["children"] if c["pid"]], 5, what="pid")
    assert set(c) >= {"id", "pid", "state", "started_at", "uptime_s", "restarts", "last_exit", "group"}
    assert c["id"] == "a" and c["group"] == "web" and c["state"] == "running" and alive(c["pid"])
    assert c["restarts"] == 0 and c["last_exit"] is None and c["uptime_s"] >= 0
    assert abs(c["started_at"] - time.time()) < 30
    assert st["supervisor"]["pid"] == s.proc.pid
    assert st["groups"]["web"] == {"current": 1, "target": 1}


def test_kill9_a_child_restart_shows_in_status_and_metrics(sup, tmp_path):
    s = sup({"children": [plain(tmp_path, "a"), plain(tmp_path, "b")]})
    s.wait_ready()
    old = wait_for(lambda: s.child("b")["pid"], 5, what="pid")
    os.kill(old, signal.SIGKILL)
    c = wait_for(lambda: (lambda c: c if c["state"] == "running" and c["pid"] not in (None, old) else None)(
        s.child("b")), 5, what="restart")
    assert c["restarts"] == 1
    assert c["last_exit"]["reason"] == "killed by SIGKILL" and c["last_exit"]["signal"] == 9
    assert c["last_exit"]["requested"] is False
    m = s.request("metrics")
    assert m["restarts_total"] == 1 and m["restarts_by_reason"] == {"killed by SIGKILL": 1}
    assert s.child("a")["restarts"] == 0  # one-for-one: the sibling is untouched


def test_restart_of_a_worker_starts_the_replacement_first(sup, tmp_path):
    s = sup({"children": [], "templates": {"worker": worker_template(tmp_path, ready_after="0.6")}})
    s.wait_ready()
    s.request("scale", group="worker", n=2)
    before = s.child("worker-1")
    result = {}
    t = threading.Thread(target=lambda: result.update(s.request("restart", id="worker-1")))
    t.start()
    try:
        # the control endpoint keeps answering while the (slow) replacement gets ready
        time.sleep(0.2)
        during = s.child("worker-1")
        assert t.is_alive(), "status must answer while the restart is still under way"
        assert during["pid"] == before["pid"] and during["state"] == "running"
    finally:
        t.join(10)
    assert result["pid"] != before["pid"] and result["state"] == "running" and result["restarts"] == 1
    assert result["last_exit"]["reason"] == "normal" and result["last_exit"]["requested"] is True
    events = [(r["event"], r["pid"]) for r in s.records(id="worker-1")]
    new, old = result["pid"], before["pid"]
    assert events.index(("ready", new)) < events.index(("term", old)), events
    assert not alive(old)
    assert s.request("status")["groups"]["worker"] == {"current": 2, "target": 2}


def test_restart_of_a_plain_child_stops_then_starts(sup, tmp_path):
    s = sup({"children": [plain(tmp_path, "a")]})
    s.wait_ready()
    old = wait_for(lambda: s.records("start", "a"), 5, what="start")[0]["pid"]
    c = s.request("restart", id="a")
    assert c["pid"] != old and c["restarts"] == 1
    wait_for(lambda: [r for r in s.records("start", "a") if r["pid"] == c["pid"]], 5, what="new start")
    events = [(r["event"], r["pid"]) for r in s.records(id="a")]
    assert events.index(("term", old)) < events.index(("start", c["pid"]))


def test_scale_up_and_down(sup, tmp_path):
    s = sup({"children": [plain(tmp_path, "other")], "templates": {"worker": worker_template(tmp_path)}})
    s.wait_ready()
    up = s.request("scale", group="worker", n=3)
    assert up["started"] == ["worker-1", "worker-2", "worker-3"] and up["current"] == 3
    st = s.request("status")
    assert [c["id"] for c in st["children"]] == ["other", "worker-1", "worker-2", "worker-3"]
    assert all(c["state"] == "running" for c in st["children"])
    pids = {c["id"]: c["pid"] for c in st["children"]}
    down = s.request("scale", group="worker", n=1)
    assert down["stopped"] == ["worker-3", "worker-2"] and down["current"] == 1 and down["target"] == 1
    assert [r["id"] for r in s.records("term")] == ["worker-3", "worker-2"]
    assert not alive(pids["worker-3"]) and not alive(pids["worker-2"]) and alive(pids["worker-1"])
    assert s.request("metrics")["groups"]["worker"] == {"current": 1, "target": 1}
    again = s.request("scale", group="worker", n=2)
    assert again["started"] == ["worker-2"]
    assert error_of(s.request, "scale", group="nope", n=1).code == "not_found"
    e = error_of(s.request, "scale", group="worker", n=-1)
    assert e.code == "bad_request" and e.exit_code == EXIT_USAGE
    assert error_of(s.request, "scale", group="worker", n="2").code == "bad_request"
    assert error_of(s.request, "scale", group="worker").code == "bad_request"


def test_start_child_and_terminate_child(sup, tmp_path):
    s = sup({"children": [plain(tmp_path, "a")]})
    s.wait_ready()
    c = s.request("start_child", spec=plain(tmp_path, "dyn", restart="transient"))
    assert c["id"] == "dyn" and c["state"] == "running" and alive(c["pid"])
    e = error_of(s.request, "start_child", spec=plain(tmp_path, "dyn"))
    assert e.code == "conflict" and e.exit_code == EXIT_CONFLICT
    assert error_of(s.request, "start_child", spec={"id": "x", "argv": "ls"}).code == "bad_request"
    assert error_of(s.request, "start_child", spec={"id": "../x", "argv": ["ls"]}).code == "bad_request"
    assert error_of(s.request, "start_child", spec={"id": "x", "argv": ["ls"], "evil": 1}).code == "bad_request"
    e = error_of(s.request, "start_child", spec={"id": "ghost", "argv": [str(tmp_path / "missing")]})
    assert e.code == "start_failed" and "No such file" in str(e)
    assert [x["id"] for x in s.request("status")["children"]] == ["a", "dyn"]
    wait_for(lambda: s.records("start", "dyn"), 5, what="dyn start")
    gone = s.request("terminate_child", id="dyn")
    assert gone["state"] == "stopped" and gone["last_exit"]["requested"] is True
    assert not alive(c["pid"])
    assert [x["id"] for x in s.request("status")["children"]] == ["a"]
    e = error_of(s.request, "terminate_child", id="dyn")
    assert e.code == "not_found" and e.exit_code == EXIT_NOT_FOUND
    assert error_of(s.request, "restart", id="nope").code == "not_found"
    assert error_of(s.request, "no_such_op").code == "unknown_op"


def test_stop_op_stops_everything_and_exits_zero(sup, tmp_path):
    s = sup({"children": [plain(tmp_path, "a"), plain(tmp_path, "b")]})
    s.wait_ready()
    wait_for(lambda: len(s.records("start")) == 2, 5, what="starts")
    assert s.request("stop") == {"stopping": True}
    assert s.wait() == 0
    assert [r["id"] for r in s.records("term")] == ["b", "a"]
    assert not os.path.exists(s.endpoint[6:])


def test_garbage_on_the_control_socket_gets_protocol_errors(sup, tmp_path):
    s = sup({"children": [plain(tmp_path, "a")]})
    s.wait_ready()
    ctx = zmq.Context.instance()

    def raw(body: bytes):
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(s.endpoint)
        try:
            sock.send(body)
            assert sock.poll(5000), "no reply"
            return msgpack.unpackb(sock.recv())
        finally:
            sock.close()

    assert raw(b"\xc1not msgpack")["error"]["code"] == "protocol"
    assert raw(msgpack.packb({"v": 99, "op": "status"}))["error"]["code"] == "protocol"
    assert raw(msgpack.packb([1, 2, 3]))["error"]["code"] == "protocol"
    assert raw(msgpack.packb({"v": 1, "op": "status", "args": [1]}))["error"]["code"] == "protocol"
    assert raw(msgpack.packb({"v": 1, "op": "restart", "args": {"id": 5}}))["error"]["code"] == "not_found"
    assert raw(msgpack.packb({"v": 1, "op": "restart", "args": {"idx": "a"}}))["error"]["code"] == "bad_request"
    assert raw(msgpack.packb({"v": 1, "op": "__init__"}))["error"]["code"] == "unknown_op"
    ok = raw(msgpack.packb({"v": 1, "op": "status", "args": {}}))
    assert ok["ok"] is True and ok["data"]["children"][0]["id"] == "a"


def test_kill_child_records_the_reason_and_restarts(tmp_path):
    """`Supervisor.kill_child` (used by the pool for silent workers), through an embedded op."""
    import trio

    from workbooks.supervisor import ChildSpec, Supervisor

    rec = str(tmp_path / "record.jsonl")
    holder = []
    sup = Supervisor(children=[ChildSpec(id="w", argv=fake("--record", rec))],
                     control_endpoint=f"ipc://{tmp_path}/sup.sock",
                     extra_ops={"kill": lambda a: holder[0].kill_child(a["id"], reason=a["reason"],
                                                                       pid=a.get("pid"))})
    holder.append(sup)

    async def main():
        async with trio.open_nursery() as n:
            await n.start(lambda task_status: sup.serve(handle_signals=False, task_status=task_status))
            pid = sup.status()["children"][0]["pid"]
            from workbooks.supervisor import ControlClient
            c = ControlClient(sup.control_endpoint)
            e = await trio.to_thread.run_sync(lambda: error_of(c.request, "kill", id="w", reason="x", pid=pid + 1))
            assert e.code == "conflict" and alive(pid)
            await trio.to_thread.run_sync(lambda: c.request("kill", id="w", reason="missed_heartbeats", pid=pid))
            with trio.fail_after(5):
                while not (sup.status()["children"][0]["pid"] not in (None, pid)):
                    await trio.sleep(0.02)
            st = sup.status()["children"][0]
            assert st["last_exit"]["reason"] == "missed heartbeats" and st["last_exit"]["signal"] == 9
            assert st["restarts"] == 1 and sup.metrics()["restarts_by_reason"] == {"missed heartbeats": 1}
            sup.request_stop()
    trio.run(main)
    assert not procs_matching(str(tmp_path))


def test_sigterm_during_a_replace_stops_old_and_replacement(sup, tmp_path):
    w = {**worker_template(tmp_path, ready_after="0"), "id": "w", "group": "worker"}
    w["argv"] = w["argv"] + ["--ready-after-restart", "30"]
    s = sup({"children": [w]})
    s.wait_ready()
    old = wait_for(lambda: s.child("w")["state"] == "running" and s.child("w")["pid"], 5, what="w ready")
    errors = []
    t = threading.Thread(target=lambda: errors.append(error_of(s.request, "restart", id="w")))
    t.start()
    new = wait_for(lambda: [r["pid"] for r in s.records("start", "w") if r["pid"] != old], 5,
                   what="the replacement to start")[0]
    assert s.child("w")["pid"] == old  # still serving while the replacement gets ready
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    t.join(10)
    assert errors and errors[0].code == "start_failed", errors
    assert not alive(old) and not alive(new)
