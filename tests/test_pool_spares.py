"""Standby spares: a worker that dies is covered at once by a spare, which hands back when the
dead worker's replacement registers. Real broker and worker processes, no supervisor, so
nothing but the spare can keep the pool serving after the kill."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from pool_harness import BarePool, wait_for
from workbooks.pool.client import PoolClient, PoolError


class Stream(threading.Thread):
    """One client sending small renders back to back, counting successes and failures."""

    def __init__(self, endpoint: str):
        super().__init__()
        self.endpoint = endpoint
        self.ok = 0
        self.failures: list = []
        self.stop_flag = threading.Event()
        self.start()

    def run(self) -> None:
        c = PoolClient(self.endpoint)
        n = 0
        while not self.stop_flag.is_set():
            n += 1
            try:
                c.call("render", [f"* request {n}\n"], deadline_ms=10000)
                self.ok += 1
            except PoolError as e:
                self.failures.append((e.code, e.message))
        c.close()

    def finish(self) -> None:
        self.stop_flag.set()
        self.join(30)


def by_child(pool) -> dict:
    return {w["child_id"]: w for w in pool.stats()["workers"]}


@pytest.fixture
def pool(tmp_path):
    p = BarePool(tmp_path, workers=1)
    try:
        p.add_worker("s1", spare=True)
        wait_for(lambda: by_child(p).get("s1", {}).get("state") == "standby", what="spare on standby")
        yield p
    finally:
        p.stop()


def test_a_standby_gets_no_work_and_covers_a_killed_worker_until_its_replacement_registers(pool):
    c = PoolClient(pool.client_endpoint)
    for i in range(30):
        c.call("render", [f"* steady {i}"])
    ws = by_child(pool)
    assert ws["s1"]["served"] == 0 and ws["s1"]["role"] == "spare" and ws["w1"]["served"] == 30

    stream = Stream(pool.client_endpoint)
    try:
        wait_for(lambda: stream.ok > 30, what="requests flowing")
        victim = ws["w1"]["pid"]
        os.kill(victim, signal.SIGKILL)
        # Nobody restarts w1 here: only the spare can serve the stream now.
        ok_at_kill = stream.ok
        wait_for(lambda: stream.ok > ok_at_kill + 50, what="requests served by the spare")
        st = pool.stats()
        s1 = next(w for w in st["workers"] if w["child_id"] == "s1")
        assert s1["covering"] == "w1" and s1["state"] in ("ready", "busy") and s1["served"] > 0
        assert st["spares"]["promotions_total"] == 1
        ev = st["spares"]["promotions_recent"][-1]
        assert (ev["spare"], ev["covering"]) == ("s1", "w1") and ev["reason"] in ("disconnected", "unreachable")
        lost = next(e for e in st["lost_recent"] if e["pid"] == victim)
        assert 0 <= ev["at"] - lost["at"] < 0.5  # promoted as the loss was noticed, not after a start-up

        # The replacement registers: the spare finishes and goes back to standby.
        pool.add_worker("w1")
        wait_for(lambda: (w := by_child(pool))["s1"]["state"] == "standby" and w["w1"]["served"] > 0,
                 what="spare back on standby, replacement serving")
        served_by_spare = by_child(pool)["s1"]["served"]
        ok_now = stream.ok
        wait_for(lambda: stream.ok > ok_now + 50, what="requests flowing after the hand-back")
        assert by_child(pool)["s1"]["served"] == served_by_spare  # no more work for the standby
    finally:
        stream.finish()
    assert stream.failures == []
    assert pool.stats()["spares"]["covering"] == {}


def test_a_loss_with_no_spare_free_is_covered_by_the_next_spare_to_register(pool):
    c = PoolClient(pool.client_endpoint)
    ws = by_child(pool)
    os.kill(ws["s1"]["pid"], signal.SIGKILL)  # a standby lost: no capacity lost, nothing to cover
    wait_for(lambda: "s1" not in by_child(pool), what="spare dropped")
    assert pool.stats()["spares"]["promotions_total"] == 0
    os.kill(ws["w1"]["pid"], signal.SIGKILL)
    wait_for(lambda: not pool.stats()["workers"], what="worker dropped")
    assert pool.stats()["spares"]["uncovered"] == ["w1"]

    result: dict = {}
    t = threading.Thread(target=lambda: result.setdefault("r", c.call("render", ["* waits"], deadline_ms=20000)))
    t.start()
    pool.add_worker("s2", spare=True)  # registers as a standby and is put in w1's place at once
    t.join(30)
    assert result.get("r", b"").startswith(b"<")
    st = pool.stats()
    s2 = next(w for w in st["workers"] if w["child_id"] == "s2")
    assert s2["covering"] == "w1" and s2["served"] == 1
    assert st["spares"]["promotions_recent"][-1]["reason"] == "lost earlier" and st["spares"]["uncovered"] == []


def test_a_drained_spare_is_not_promoted(pool):
    from pool_harness import broker_request

    broker_request(pool.data, "drain", id="s1")
    w1 = by_child(pool)["w1"]
    os.kill(w1["pid"], signal.SIGKILL)
    wait_for(lambda: "w1" not in by_child(pool), what="worker dropped")
    st = pool.stats()
    assert st["spares"]["promotions_total"] == 0 and st["spares"]["uncovered"] == ["w1"]
    with pytest.raises(PoolError) as ei:  # nobody serves: a typed error, not a hang
        PoolClient(pool.client_endpoint).call("render", ["* nobody"], deadline_ms=20000)
    assert ei.value.code == "no_workers"
    broker_request(pool.data, "undrain", id="s1")  # back on standby: it covers the loss now
    assert PoolClient(pool.client_endpoint).call("render", ["* covered"]).startswith(b"<")
    assert by_child(pool)["s1"]["covering"] == "w1"
