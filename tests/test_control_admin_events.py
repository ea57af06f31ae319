"""The admin key is shown once, when it is created, and later starts name only its path; ops
actions through a real supervisor are logged with the acting key's id."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx

from workbooks.web_control.launch import Planes

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from supervisor_harness import fake, supervisors_for, wait_for  # noqa: E402


def test_admin_key_is_shown_once_and_later_starts_name_only_its_path(tmp_path):
    d = tmp_path / "data"
    with Planes(d, control_procs=2) as planes:  # two processes race to create it: one key, shown once
        key = planes.admin_key()
    path = d / "admin.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    errs = lambda: "".join(p.read_text() for p in planes.log_dir.glob("web_control-*.err"))  # noqa: E731
    first = errs()
    assert first.count(key) == 1 and str(path) in first
    # a second start of the same data dir: the same key, not printed again
    with Planes(d, control_procs=1) as planes2:
        assert planes2.admin_key() == key
        assert httpx.get(planes2.control_url + "/api/tenants",
                         headers={"Authorization": f"Bearer {key}"}).status_code == 200
        # `wbx serve`'s first-run step names the key's file, never the key
        r = subprocess.run([sys.executable, "-m", "workbooks.web_control.first_run", "--data-dir", str(d),
                            "--control", planes2.control_url, "--public-port", str(planes2.public_port)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"admin key:  {path}" in r.stderr
        assert key not in r.stderr and key not in r.stdout
    assert errs().count(key) == 1  # the later start added nothing with the key in it
    logs = "".join(p.read_text() for p in planes.log_dir.glob("*.log"))
    assert key not in logs


def test_ops_actions_are_logged_with_the_acting_key_id(tmp_path):
    gen = supervisors_for(tmp_path)
    start = next(gen)
    try:
        s = start({"children": [], "templates": {"worker": {
            "argv": fake("--record", str(tmp_path / "record.jsonl"), "--ready", "--ready-after", "0.05"),
            "shutdown": 1000, "ready_timeout_ms": 5000}}})
        s.wait_ready()
        with Planes(tmp_path / "d", supervisor_endpoint=s.endpoint) as planes:
            with httpx.Client(timeout=30) as c:
                admin = {"Authorization": f"Bearer {planes.admin_key()}"}
                assert c.post(planes.control_url + "/api/tenants", json={"name": "ops"}, headers=admin).status_code == 201
                r = c.post(planes.control_url + "/api/tenants/ops/keys", json={"scope": "operator"}, headers=admin)
                op_key, op_id = r.json()["key"], r.json()["id"]
                oh = {"Authorization": f"Bearer {op_key}"}
                r = c.post(planes.control_url + "/api/ops/scale", json={"group": "worker", "n": 1}, headers=oh)
                assert r.status_code == 200, r.text
                wait_for(lambda: any(ch["id"].startswith("worker") and ch["state"] == "running"
                                     for ch in s.request("status")["children"]), 10, what="a worker")
                child = next(ch["id"] for ch in s.request("status")["children"] if ch["id"].startswith("worker"))
                r = c.post(planes.control_url + f"/api/ops/workers/{child}/restart", headers=oh)
                assert r.status_code == 200, r.text
                r = c.post(planes.control_url + "/api/ops/workers/no-such-child/restart", headers=oh)
                assert r.status_code == 404
    finally:
        for _ in gen:
            pass
    lines = [json.loads(ln) for f in sorted(planes.log_dir.glob("*.log")) for ln in f.read_text().splitlines() if ln]
    scale = [r for r in lines if r.get("event") == "ops_scale"]
    assert [(r["group"], r["n"], r["actor_key_id"]) for r in scale] == [("worker", 1, op_id)]
    restart = [r for r in lines if r.get("event") == "ops_restart"]
    assert [(r["child"], r["actor_key_id"]) for r in restart] == [(child, op_id)]  # the refused one is not an action
    acc = [r for r in lines if r.get("event") == "access" and r["path"].startswith("/api/ops/")]
    assert sorted(r["status"] for r in acc) == [200, 200, 404] and {r["key_id"] for r in acc} == {op_id}
    assert op_key not in "".join(f.read_text() for f in planes.log_dir.glob("*"))
    assert os.path.exists(tmp_path / "record.jsonl")
