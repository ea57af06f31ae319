"""The whole service as `wbx serve` runs it: supervisor, pool, both planes (two processes each
sharing a port), first-run demo deploy, ops through the supervisor, and crashes that lose nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from workbooks.web_control.launch import free_port


def _git(repo, *args) -> str:
    return subprocess.run(["git", "-c", "safe.directory=*", "-C", str(repo), *args], capture_output=True,
                          check=True).stdout.decode()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    data = tmp_path_factory.mktemp("serve") / "data"
    logs = data.parent
    cport, pport = free_port(), free_port()
    out = open(logs / "serve.log", "wb")
    err = open(logs / "serve.err", "wb")
    env = dict(os.environ, WB_DATA=str(data))
    env.pop("WB_KERNEL_WASM", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbooks", "serve", "--data", str(data), "--workers", "2",
         "--control", f"127.0.0.1:{cport}", "--public", f"127.0.0.1:{pport}", "--public-procs", "2",
         "--control-procs", "2"],
        stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    client = httpx.Client(timeout=30)
    ctrl, pub = f"http://127.0.0.1:{cport}", f"http://127.0.0.1:{pport}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                r = client.get(pub + "/", headers={"Host": f"demo.localhost:{pport}"})
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                out.flush()
                err.flush()
                pytest.fail("wbx serve did not come up:\n" + (logs / "serve.err").read_text()[-3000:]
                            + (logs / "serve.log").read_text()[-3000:])
            time.sleep(0.2)
        key = (data / "admin.key").read_text().strip()
        # the demo is served as soon as public-1 is ready; wait for the other plane processes too
        # (and for first-run, which says where to look once the public plane answers)
        while True:
            r = client.get(ctrl + "/api/ops/workers", headers={"Authorization": f"Bearer {key}"})
            kids = r.json().get("children", []) if r.status_code == 200 else []
            if kids and all(c["state"] == ("stopped" if c["id"] == "first-run" else "running") for c in kids):
                break
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"children not running: {kids}")
            time.sleep(0.1)
        yield {"proc": proc, "data": data, "logs": logs, "control": ctrl, "public": pub, "pport": pport,
               "http": client, "admin": {"Authorization": f"Bearer {key}"}}
    finally:
        client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.close()
        err.close()


def _children(stack) -> dict:
    r = stack["http"].get(stack["control"] + "/api/ops/workers", headers=stack["admin"])
    assert r.status_code == 200, r.text
    return {c["id"]: c for c in r.json()["children"]}


def test_first_run_deploys_the_demo_and_says_where(stack):
    err = (stack["logs"] / "serve.err").read_text()
    assert f"http://demo.localhost:{stack['pport']}/" in err
    assert str(stack["data"] / "admin.key") in err
    assert oct((stack["data"] / "admin.key").stat().st_mode & 0o777) == "0o600"
    key = (stack["data"] / "admin.key").read_text().strip()
    assert key not in (stack["logs"] / "serve.log").read_text()  # JSON logs never carry the key
    page = stack["http"].get(stack["public"] + "/", headers={"Host": f"demo.localhost:{stack['pport']}"})
    assert page.status_code == 200 and "<title>Workbooks demo</title>" in page.text
    assert _git(stack["data"] / "dev", "log", "--format=%an %s").strip() == "dev deploy demo"


def test_ops_routes_reach_the_supervisor(stack):
    kids = _children(stack)
    for cid in ("broker", "worker-1", "worker-2", "control-1", "control-2", "public-1", "public-2"):
        assert kids[cid]["state"] == "running", (cid, kids.get(cid))
    r = stack["http"].get(stack["control"] + "/metrics", headers=stack["admin"])
    assert r.status_code == 200 and "wb_control_requests_total" in r.text
    r = stack["http"].post(stack["control"] + "/api/ops/workers/no-such/restart", headers=stack["admin"])
    assert r.status_code == 404
    # an operator key restarts a worker (replacement first) and scales the group
    op = stack["http"].post(stack["control"] + "/api/tenants/dev/keys", json={"scope": "operator"},
                            headers=stack["admin"]).json()["key"]
    oh = {"Authorization": f"Bearer {op}"}
    before = _children(stack)["worker-2"]
    r = stack["http"].post(stack["control"] + "/api/ops/workers/worker-2/restart", headers=oh)
    assert r.status_code == 200, r.text
    after = _children(stack)["worker-2"]
    assert after["pid"] != before["pid"] and after["state"] == "running"
    r = stack["http"].post(stack["control"] + "/api/ops/scale", json={"group": "worker", "n": 3}, headers=oh)
    assert r.status_code == 200, r.text
    assert _children(stack)["worker-3"]["state"] in ("running", "starting")
    r = stack["http"].post(stack["control"] + "/api/ops/scale", json={"group": "worker", "n": 2}, headers=oh)
    assert r.status_code == 200
    assert "worker-3" not in _children(stack)
    r = stack["http"].post(stack["control"] + "/api/ops/scale", json={"group": "worker", "n": 999}, headers=oh)
    assert r.status_code == 409 and r.json()["error"]["code"] == "over_capacity", r.text  # more than the box holds
    r = stack["http"].post(stack["control"] + "/api/ops/scale", json={"group": "worker", "n": -1}, headers=oh)
    assert r.status_code == 400
    assert len([c for c in _children(stack).values() if c["group"] == "worker"]) == 2


def test_worker_crash_during_deploys_loses_nothing(stack):
    c, admin = stack["http"], stack["admin"]
    assert c.post(stack["control"] + "/api/tenants", json={"name": "crash"}, headers=admin).status_code == 201
    key = c.post(stack["control"] + "/api/tenants/crash/keys", json={"scope": "tenant"}, headers=admin).json()["key"]
    h = {"Authorization": f"Bearer {key}"}
    body = "#+TITLE: crash {i}\n" + "".join(f"* Section {j}\nSome *text* with /emphasis/ and =code= {j}.\n" for j in range(600))
    results: dict = {}

    def deploy(i: int) -> None:
        with httpx.Client(timeout=60) as cc:
            r = cc.put(stack["control"] + f"/api/workbooks/w{i}", content=body.replace("{i}", str(i)).encode(), headers=h)
            results[i] = (r.status_code, r.json())

    threads = [threading.Thread(target=deploy, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    killed = []
    for cid in ("worker-1", "worker-2"):
        time.sleep(0.15)
        pid = _children(stack)[cid]["pid"]
        if pid:
            os.kill(pid, signal.SIGKILL)
            killed.append(cid)
    for t in threads:
        t.join()
    assert killed
    statuses = {code for code, _ in results.values()}
    assert statuses <= {200, 503, 504, 502}, results
    repo = stack["data"] / "crash"
    # what succeeded is in the index and in git, byte for byte; what failed is in neither
    for i, (code, data) in results.items():
        got = c.get(stack["control"] + f"/api/workbooks/w{i}", headers=h)
        if code == 200:
            assert got.status_code == 200 and got.json()["sha"] == data["sha"]
            assert _git(repo, "show", f"HEAD:w{i}.org") == got.json()["source"]
        else:
            assert got.status_code == 404
            assert f"w{i}.org" not in _git(repo, "ls-files")
    # failed deploys go through once the supervisor has replaced the workers
    deadline = time.time() + 60
    for i, (code, _) in results.items():
        while code != 200:
            r = c.put(stack["control"] + f"/api/workbooks/w{i}", content=body.replace("{i}", str(i)).encode(), headers=h)
            code = r.status_code
            if code != 200:
                assert time.time() < deadline, r.text
                time.sleep(0.5)
    assert len(_git(repo, "ls-files").split()) == 25  # 24 workbooks + .gitignore
    assert int(_git(repo, "rev-list", "--count", "HEAD")) == 24
    kids = _children(stack)
    assert all(kids[k]["restarts"] >= 1 for k in killed)


def test_a_public_process_crash_is_restarted_while_the_other_serves(stack):
    c = stack["http"]
    host = {"Host": f"demo.localhost:{stack['pport']}"}
    before = _children(stack)["public-1"]
    os.kill(before["pid"], signal.SIGKILL)
    ok = 0
    for _ in range(40):
        try:
            with httpx.Client(timeout=5) as fresh:  # a new connection each time
                if fresh.get(stack["public"] + "/", headers=host).status_code == 200:
                    ok += 1
        except httpx.HTTPError:
            pass
    assert ok >= 30  # the other process answers while public-1 is down
    deadline = time.time() + 30
    while True:
        now = _children(stack)["public-1"]
        if now["state"] == "running" and now["pid"] != before["pid"]:
            break
        assert time.time() < deadline, now
        time.sleep(0.2)
    assert now["restarts"] == before["restarts"] + 1
    assert c.get(stack["public"] + "/", headers=host).status_code == 200


def test_another_instance_cannot_join_a_port(stack, tmp_path):
    """SO_REUSEPORT would let a second instance split the port's traffic silently; it is refused."""
    port = stack["public"].rsplit(":", 1)[1]
    r = subprocess.run([sys.executable, "-m", "workbooks.web_public", "--port", port, "--data-dir", str(tmp_path / "other")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3
    assert "another workbooks instance" in r.stdout


def test_planes_scale_and_restart_replacement_first(stack):
    c, admin = stack["http"], stack["admin"]
    host = {"Host": f"demo.localhost:{stack['pport']}"}
    r = c.post(stack["control"] + "/api/ops/scale", json={"group": "public", "n": 3}, headers=admin)
    assert r.status_code == 200, r.text
    assert _children(stack)["public-3"]["state"] == "running"
    # a requested restart starts the replacement first (it joins the port), then stops the old one:
    # requests on fresh connections keep succeeding throughout
    before = _children(stack)["public-1"]["pid"]
    failures = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                with httpx.Client(timeout=5) as fresh:
                    if fresh.get(stack["public"] + "/", headers=host).status_code != 200:
                        failures.append("status")
            except httpx.HTTPError as e:
                failures.append(type(e).__name__)

    t = threading.Thread(target=hammer)
    t.start()
    try:
        r = c.post(stack["control"] + "/api/ops/workers/public-1/restart", headers=admin)
        assert r.status_code == 200, r.text
        time.sleep(0.5)
    finally:
        stop.set()
        t.join()
    assert _children(stack)["public-1"]["pid"] != before
    assert len(failures) <= 1, failures  # at most a connection caught in the old process's close
    r = c.post(stack["control"] + "/api/ops/scale", json={"group": "public", "n": 2}, headers=admin)
    assert r.status_code == 200 and "public-3" not in _children(stack)
