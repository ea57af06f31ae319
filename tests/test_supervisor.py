"""The supervisor with real processes, in the spirit of OTP's supervisor_SUITE.

Each test runs `python -m workbooks.supervisor` on a config of fake children
(`tests/helpers/fake_child.py`) and checks what a user would see: exit status, the children's
own records of starts and SIGTERMs, the JSON log, and the process table.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from supervisor_harness import (SupervisorProcess, alive, fake, procs_matching,  # noqa: E402
                                supervisors_for, wait_for)

from workbooks.supervisor import EXIT_CONFIG, EXIT_INTENSITY  # noqa: E402


@pytest.fixture
def sup(tmp_path):
    """Start supervisors for this test; afterwards stop them and check no process is left."""
    yield from supervisors_for(tmp_path)


def child(tmp_path, id, *args, **kw):
    return {"id": id, "argv": fake("--record", str(tmp_path / "record.jsonl"), *args),
            "shutdown": 1000, **kw}


# --------------------------------------------------------------------------- restart types
EXITS = {
    "normal": (("--mode", "exit", "--times", "1"), "normal", 0, None),
    "nonzero": (("--mode", "crash", "--code", "3", "--times", "1"), "exit 3", 3, None),
    "signal": (("--mode", "kill", "--times", "1"), "killed by SIGKILL", None, 9),
}
RESTARTED = {
    "permanent": {"normal": True, "nonzero": True, "signal": True},
    "transient": {"normal": False, "nonzero": True, "signal": True},
    "temporary": {"normal": False, "nonzero": False, "signal": False},
}


@pytest.mark.parametrize("restart", ["permanent", "transient", "temporary"])
def test_restart_type_by_exit_reason_matrix(sup, tmp_path, restart):
    s = sup({"children": [child(tmp_path, kind, *EXITS[kind][0], restart=restart) for kind in EXITS],
             "max_restarts": 10, "max_seconds": 5})
    s.wait_ready()

    def settled():
        st = {c["id"]: c for c in s.request("status")["children"]}
        for kind, want in RESTARTED[restart].items():
            c = st[kind]
            if c["last_exit"] is None:
                return None
            if want and not (c["state"] == "running" and len(s.records("start", kind)) == 2):
                return None
            if not want and c["state"] not in ("stopped", "failed"):
                return None
        return st

    st = wait_for(settled, 8, what="every child to exit once and be handled")
    time.sleep(0.3)  # nothing else happens afterwards
    for kind, (_, reason, code, sig) in EXITS.items():
        c = st[kind]
        want = RESTARTED[restart][kind]
        assert c["last_exit"]["reason"] == reason
        assert c["last_exit"]["code"] == code and c["last_exit"]["signal"] == sig
        assert len(s.records("start", kind)) == (2 if want else 1), (restart, kind)
        assert c["restarts"] == (1 if want else 0)
        if want:
            assert alive(c["pid"])
        else:
            assert c["pid"] is None
            assert c["state"] == ("stopped" if kind == "normal" else "failed")
    assert s.proc.poll() is None
    s.signal(signal.SIGTERM)
    assert s.wait() == 0


# --------------------------------------------------------------------------- intensity
def test_three_restarts_within_the_window_survive(sup, tmp_path):
    s = sup({"children": [child(tmp_path, "first"),
                          child(tmp_path, "crasher", "--mode", "crash", "--times", "3"),
                          child(tmp_path, "last")],
             "max_restarts": 3, "max_seconds": 5})
    s.wait_ready()
    wait_for(lambda: len(s.records("start", "crasher")) == 4 and s.child("crasher")["state"] == "running",
             8, what="the crasher's 4th start")
    st = s.request("status")
    assert st["supervisor"]["restarts_in_window"] == 3
    assert s.child("crasher")["restarts"] == 3
    time.sleep(0.3)
    assert s.proc.poll() is None, "3 restarts within the window must not give up"
    assert s.request("stop") == {"stopping": True}
    assert s.wait() == 0
    assert not os.path.exists(s.endpoint[6:]), "the control socket file is removed on exit"


def test_fourth_restart_gives_up_and_stops_all_in_reverse_order(sup, tmp_path):
    s = sup({"children": [child(tmp_path, "first"),
                          child(tmp_path, "crasher", "--mode", "crash", "--after", "0.05"),
                          child(tmp_path, "last")],
             "max_restarts": 3, "max_seconds": 5})
    assert s.wait(20) == EXIT_INTENSITY == 70
    assert len(s.records("start", "crasher")) == 4  # the first start + 3 restarts
    assert [r["id"] for r in s.records("term")] == ["last", "first"]
    give_up = s.events("supervisor_give_up")
    assert len(give_up) == 1 and give_up[0]["id"] == "crasher" and give_up[0]["reason"] == "exit 3"
    assert [e["id"] for e in s.events("child_stop")] == ["last", "first"]
    # every step is a structlog JSON line with the supervisor's role and pid bound
    lines = s.log_text().splitlines()
    assert lines and len(s.logs()) == len(lines)
    assert all(e["role"] == "supervisor" and e["pid"] == s.proc.pid for e in s.logs())
    steps = {e["event"] for e in s.logs()}
    assert {"supervisor_started", "child_started", "child_exited", "child_restarting",
            "supervisor_give_up", "supervisor_shutdown", "child_stop", "child_stopped",
            "supervisor_shutdown_complete", "supervisor_exit"} <= steps


def test_window_slides_restarts_spaced_wider_never_give_up(sup, tmp_path):
    # one restart allowed per 0.3 s; the child lives 0.5 s, so each restart finds the window empty
    s = sup({"children": [child(tmp_path, "slow", "--mode", "crash", "--after", "0.5")],
             "max_restarts": 1, "max_seconds": 0.3})
    s.wait_ready()
    wait_for(lambda: len(s.records("start", "slow")) >= 3, 10, what="three starts")
    assert s.proc.poll() is None
    restarting = s.events("child_restarting", id="slow")
    assert len(restarting) >= 2 and all(e["in_window"] == 1 for e in restarting)
    s.signal(signal.SIGTERM)
    assert s.wait() == 0


def test_same_child_crashing_inside_the_window_gives_up(sup, tmp_path):
    s = sup({"children": [child(tmp_path, "fast", "--mode", "crash", "--after", "0.05")],
             "max_restarts": 1, "max_seconds": 5})
    assert s.wait(20) == EXIT_INTENSITY
    assert len(s.records("start", "fast")) == 2


def test_max_restarts_zero_gives_up_on_first_restart(sup, tmp_path):
    s = sup({"children": [child(tmp_path, "a"), child(tmp_path, "crasher", "--mode", "crash")],
             "max_restarts": 0, "max_seconds": 5})
    assert s.wait(20) == EXIT_INTENSITY
    assert len(s.records("start", "crasher")) == 1
    assert [e["id"] for e in s.events("child_stop")] == ["a"]


def test_temporary_and_normal_transient_exits_do_not_count(sup, tmp_path):
    s = sup({"children": [child(tmp_path, "t", "--mode", "crash", restart="temporary"),
                          child(tmp_path, "n", "--mode", "exit", restart="transient"),
                          child(tmp_path, "keep")],
             "max_restarts": 0, "max_seconds": 5})
    s.wait_ready()
    wait_for(lambda: {c["id"]: c["state"] for c in s.request("status")["children"]}
             == {"t": "failed", "n": "stopped", "keep": "running"}, 5, what="exits handled")
    time.sleep(0.2)
    assert s.proc.poll() is None
    s.signal(signal.SIGTERM)
    assert s.wait() == 0


def test_failed_starts_count_and_back_off(sup, tmp_path):
    s = sup({"children": [child(tmp_path, "ok"),
                          {"id": "ghost", "argv": [str(tmp_path / "no-such-binary")], "shutdown": 100}],
             "max_restarts": 2, "max_seconds": 5})
    assert s.wait(20) == EXIT_INTENSITY
    failed = s.events("child_start_failed", id="ghost")
    assert len(failed) == 3 and "No such file" in failed[0]["error"]
    assert [e["delay_ms"] for e in s.events("child_restarting", id="ghost")] == [0.0, 10.0]
    assert [e["id"] for e in s.events("child_stop")] == ["ok"]


def test_back_off_grows_instead_of_a_hot_loop(sup, tmp_path):
    # a crasher that dies within milliseconds (a shell, not Python, so a loaded machine cannot
    # stretch its life past the back-off reset and hide the growth)
    starts_file = tmp_path / "starts"
    s = sup({"children": [{"id": "loop", "shutdown": 100,
                           "argv": ["sh", "-c", f"date +%s.%N >> {starts_file}; exit 3"]}],
             "max_restarts": 6, "max_seconds": 10})
    assert s.wait(30) == EXIT_INTENSITY
    delays = [e["delay_ms"] for e in s.events("child_restarting", id="loop")]
    assert delays == [0.0, 10.0, 20.0, 40.0, 80.0, 160.0]
    starts = [float(x) for x in starts_file.read_text().split()]
    assert len(starts) == 7
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(g >= d / 1000 for g, d in zip(gaps, delays)), (gaps, delays)


@pytest.mark.parametrize("behaviour,timeout_ms,reason", [
    (("--ready", "--no-ready"), 300, "not ready within 300 ms"),
    (("--ready", "--no-ready", "--mode", "crash", "--after", "0.05"), 5000, "exit 3"),
])
def test_child_that_never_becomes_ready_is_a_failed_start(sup, tmp_path, behaviour, timeout_ms, reason):
    s = sup({"children": [child(tmp_path, "ok"),
                          child(tmp_path, "late", *behaviour, ready_timeout_ms=timeout_ms)],
             "max_restarts": 1, "max_seconds": 10})
    assert s.wait(20) == EXIT_INTENSITY
    exits = s.events("child_exited", id="late")
    assert len(exits) == 2 and all(e["reason"] == reason for e in exits)
    assert len(s.events("child_started", id="late")) == 2


def test_exit_before_ready_is_seen_even_if_an_escaped_grandchild_holds_the_fd(sup, tmp_path):
    marker = str(tmp_path / "escaped-grandchild")
    s = sup({"children": [{"id": "c", "shutdown": 100, "ready_timeout_ms": 30000, "argv": [
        "sh", "-c", f'setsid {sys.executable} -c "import time; time.sleep(30)" {marker} & exit 3']}],
        "max_restarts": 0})
    try:
        t0 = time.monotonic()
        assert s.wait(20) == EXIT_INTENSITY
        assert time.monotonic() - t0 < 10, "the exit must not wait for the readiness timeout"
        [e] = s.events("child_exited", id="c")
        assert e["reason"] == "exit 3"
    finally:
        for pid, _ in procs_matching(marker):  # it left the child's group on purpose: clean it here
            os.kill(pid, signal.SIGKILL)


def test_ready_child_is_starting_until_it_signals(sup, tmp_path):
    s = sup({"children": [child(tmp_path, "w", "--ready", "--ready-via-lib", "--ready-after", "0.4",
                                ready_timeout_ms=5000)]})
    wait_for(lambda: os.path.exists(s.endpoint[6:]) and s.records("start", "w"), 10, what="start")
    assert s.child("w")["state"] == "starting"
    wait_for(lambda: s.child("w")["state"] == "running", 5, what="readiness")
    assert s.records("ready", "w")
    assert s.events("child_ready", id="w")


# --------------------------------------------------------------------------- shutdown
def test_shutdown_reverse_order_sigkill_after_timeout_and_brutal_kill(sup, tmp_path):
    s = sup({"children": [child(tmp_path, "a"),
                          child(tmp_path, "stubborn", "--ignore-term", shutdown=300),
                          child(tmp_path, "c"),
                          child(tmp_path, "brutal", shutdown="brutal_kill")]})
    s.wait_ready()
    wait_for(lambda: len(s.records("start")) == 4, 5, what="all started")
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    assert [r["id"] for r in s.records("term")] == ["c", "a"]
    steps = [(e["event"], e["id"]) for e in s.logs() if e.get("event") in ("child_stop", "child_kill")]
    assert steps == [("child_kill", "brutal"), ("child_stop", "c"), ("child_stop", "stubborn"),
                     ("child_kill", "stubborn"), ("child_stop", "a")]
    exits = {e["id"]: e for e in s.events("child_exited")}
    assert exits["brutal"]["reason"] == "killed by SIGKILL"
    assert exits["stubborn"]["reason"] == "killed by SIGKILL"
    assert exits["c"]["reason"] == "normal" and exits["a"]["reason"] == "normal"
    stop = s.events("child_stop", id="stubborn")[0]["timestamp"]
    kill = s.events("child_kill", id="stubborn")[0]["timestamp"]
    from datetime import datetime
    waited = (datetime.fromisoformat(kill.rstrip("Z")) - datetime.fromisoformat(stop.rstrip("Z"))).total_seconds()
    assert 0.28 <= waited < 5.0  # the shutdown time, then SIGKILL (upper bound: a loaded machine)


def test_a_restarted_child_keeps_its_place_in_the_stop_order(sup, tmp_path):
    s = sup({"children": [child(tmp_path, "a"), child(tmp_path, "b", "--mode", "crash", "--times", "1"),
                          child(tmp_path, "c")]})
    s.wait_ready()
    wait_for(lambda: len(s.records("start", "b")) == 2 and len(s.records("start")) == 4, 5, what="restart")
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    assert [r["id"] for r in s.records("term")] == ["c", "b", "a"]


def test_an_idle_supervisor_does_not_poll(sup, tmp_path):
    s = sup({"children": [child(tmp_path, "a"), child(tmp_path, "b")]})
    s.wait_ready()
    wait_for(lambda: len(s.records("start")) == 2, 5, what="starts")

    def cpu_ticks():
        stat = Path(f"/proc/{s.proc.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    before = cpu_ticks()
    time.sleep(1.0)
    assert cpu_ticks() - before <= 3, "an idle supervisor should sleep (pidfds), not spin"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_supervisor_stops_children_and_their_groups(sup, tmp_path, sig):
    s = sup({"children": [child(tmp_path, "a", "--grandchild"), child(tmp_path, "b", "--grandchild")]})
    s.wait_ready()
    starts = wait_for(lambda: len(s.records("start")) == 2 and s.records("start"), 5, what="starts")
    pids = [r["pid"] for r in starts] + [r["grandchild"] for r in starts]
    assert all(alive(p) for p in pids)
    s.signal(sig)
    assert s.wait() == 0
    assert [r["id"] for r in s.records("term")] == ["b", "a"]
    wait_for(lambda: not any(alive(p) for p in pids), 3, what="children and grandchildren to die")
    assert not procs_matching(str(tmp_path))


@pytest.mark.parametrize("spawn", ["setpriv", "preexec"])
def test_sigkilled_supervisor_leaves_no_orphan(sup, tmp_path, spawn):
    env = {"WB_SUPERVISOR_NO_SETPRIV": "1"} if spawn == "preexec" else {}
    s = sup({"children": [child(tmp_path, "a"), child(tmp_path, "b", "--ignore-term")]}, env=env)
    s.wait_ready()
    starts = wait_for(lambda: len(s.records("start")) == 2 and s.records("start"), 5, what="starts")
    s.signal(signal.SIGKILL)
    s.wait()
    wait_for(lambda: not any(alive(r["pid"]) for r in starts), 3,
             what="children to die with their supervisor (PR_SET_PDEATHSIG)")
    # its stale socket file does not stop the next supervisor from taking the endpoint
    assert os.path.exists(s.endpoint[6:])
    again = sup({"children": [child(tmp_path, "a")]})
    assert again.wait_ready()["supervisor"]["pid"] == again.proc.pid


def test_child_leaving_grandchildren_gets_its_group_cleaned(sup, tmp_path):
    s = sup({"children": [child(tmp_path, "g", "--grandchild", "--mode", "crash", "--after", "0.2",
                                "--times", "1")]})
    s.wait_ready()
    wait_for(lambda: len(s.records("start", "g")) == 2, 5, what="restart")
    first = s.records("start", "g")[0]
    wait_for(lambda: not alive(first["grandchild"]), 2, what="the dead child's grandchild to be killed")


def test_sigterm_while_booting_a_slow_child_stops_promptly(sup, tmp_path):
    s = sup({"children": [child(tmp_path, "slow", "--ready", "--ready-after", "30", ready_timeout_ms=60000),
                          child(tmp_path, "never")]})
    wait_for(lambda: s.records("start", "slow"), 10, what="the slow child to start")
    assert s.events("child_started", id="never") == []
    t0 = time.monotonic()
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    assert time.monotonic() - t0 < 5
    assert s.events("child_started", id="never") == []  # boot was cut short, nothing else spawned
    assert [r["id"] for r in s.records("term")] == ["slow"]


# --------------------------------------------------------------------------- configuration
def test_bad_config_exits_with_config_status(sup, tmp_path):
    s = sup({"children": [{"id": "x", "argv": "not a list"}]}, endpoint=False)
    assert s.wait() == EXIT_CONFIG
    assert "argv" in s.log_text()


@pytest.mark.parametrize("first_frozen", [False, True])
def test_second_supervisor_on_the_same_endpoint_refuses(sup, tmp_path, first_frozen):
    first = sup({"children": [child(tmp_path, "a")]})
    first.wait_ready()
    (tmp_path / "second").mkdir()
    if first_frozen:  # too busy to answer anything: it must still keep its endpoint
        first.signal(signal.SIGSTOP)
    second = SupervisorProcess(tmp_path / "second", {"children": [], "control_endpoint": first.endpoint},
                               endpoint=False)
    try:
        assert second.wait() == EXIT_CONFIG
        assert "another supervisor" in second.log_text()
    finally:
        second.close()
        if first_frozen:
            first.signal(signal.SIGCONT)
    assert first.request("status")["children"][0]["state"] == "running"
