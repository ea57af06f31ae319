"""Full disk: writes are refused with 507 `insufficient_storage` + Retry-After before anything is
half-written, reads go on, /readyz and /metrics say so, and writes work again once space is back.

The first test raises the free-space floor (`WB_MIN_FREE_MB`) above the real free space; the
second runs the planes on a small tmpfs and really fills it (the ENOSPC path past the floor)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from conftest import index_intents
from workbooks.web_control.launch import Planes

V1 = "#+TITLE: Ledger\n* version one\n"
V2 = "#+TITLE: Ledger\n* version two\n"


def git_show(repo: Path, spec: str) -> str:
    return subprocess.run(["git", "-c", "safe.directory=*", "show", spec], cwd=repo, capture_output=True, text=True,
                          check=True).stdout


def setup_tenant(http: httpx.Client, planes: Planes, tenant: str) -> tuple[dict, dict]:
    admin = {"Authorization": f"Bearer {planes.admin_key()}"}
    assert http.post(planes.control_url + "/api/tenants", json={"name": tenant}, headers=admin).status_code == 201
    key = http.post(planes.control_url + f"/api/tenants/{tenant}/keys", json={"scope": "tenant"}, headers=admin)
    op = http.post(planes.control_url + f"/api/tenants/{tenant}/keys", json={"scope": "operator"}, headers=admin)
    return {"Authorization": f"Bearer {key.json()['key']}"}, {"Authorization": f"Bearer {op.json()['key']}"}


def head_files(repo: Path) -> list[str]:
    return subprocess.run(["git", "-c", "safe.directory=*", "ls-tree", "--name-only", "HEAD"], cwd=repo,
                          capture_output=True, text=True, check=True).stdout.split()


def assert_507(r: httpx.Response) -> None:
    assert r.status_code == 507, r.text
    assert r.json()["error"]["code"] == "insufficient_storage"
    assert int(r.headers["Retry-After"]) > 0


def free_gauge(http: httpx.Client, planes: Planes, op: dict) -> int:
    text = http.get(planes.control_url + "/metrics", headers=op).text
    line = next(x for x in text.splitlines() if x.startswith("workbooks_data_free_bytes "))
    return int(line.split()[1])


def test_floor_refuses_every_write_with_507_and_reads_go_on(tmp_path):
    data = tmp_path / "data"
    http = httpx.Client(timeout=30)
    with Planes(data) as planes:
        auth, op = setup_tenant(http, planes, "disk")
        assert http.put(planes.control_url + "/api/workbooks/ledger", content=V1.encode(), headers=auth).status_code == 200
        admin = {"Authorization": f"Bearer {planes.admin_key()}"}
    free_mb = shutil.disk_usage(data).free // (1024 * 1024)
    low = {"WB_MIN_FREE_MB": str(free_mb + 100_000)}  # the floor sits above what the volume has
    with Planes(data, env=low) as planes:
        c, p = planes.control_url, planes.public_url
        # every kind of write is refused, before anything is written
        assert_507(http.put(c + "/api/workbooks/ledger", content=V2.encode(), headers=auth))
        assert_507(http.put(c + "/api/workbooks/fresh", content=V2.encode(), headers=auth))
        assert_507(http.delete(c + "/api/workbooks/ledger", headers=auth))
        assert_507(http.post(c + "/api/tenants", json={"name": "another"}, headers=admin))
        assert_507(http.put(c + "/api/vars/colour", json={"value": "blue"}, headers=auth))
        # nothing moved: git and the index hold version one, and no half-written second workbook exists
        assert git_show(data / "disk", "HEAD:ledger.org") == V1
        assert http.get(c + "/api/workbooks/ledger", headers=auth).json()["source"] == V1
        assert [w["id"] for w in http.get(c + "/api/workbooks", headers=auth).json()["workbooks"]] == ["ledger"]
        assert "fresh.org" not in git_show(data / "disk", "HEAD:")
        assert http.get(c + "/api/tenants", headers=admin).json()["tenants"] == [
            t for t in http.get(c + "/api/tenants", headers=admin).json()["tenants"] if t["name"] != "another"]
        # reads go on: the public page still serves version one
        page = http.get(p + "/", headers={"Host": "ledger.disk.localhost"})
        if page.status_code == 404:  # the primary-tenant naming: <workbook>.<base>
            page = http.get(p + "/", headers={"Host": "ledger.localhost"})
        assert page.status_code == 200 and "version one" in page.text
        # readiness says writes cannot succeed (and stays 200: reads are served); the gauge is there
        for base in (c, p):
            r = http.get(base + "/readyz")
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["writable"] is False and body["checks"]["disk"] == "low"
        assert free_gauge(http, planes, op) > 0
    with Planes(data) as planes:  # space is back (the floor is normal again): writes succeed
        r = http.put(planes.control_url + "/api/workbooks/ledger", content=V2.encode(), headers=auth)
        assert r.status_code == 200 and "sha" in r.json()
        assert git_show(data / "disk", "HEAD:ledger.org") == V2
        assert http.get(planes.control_url + "/readyz").json()["checks"]["disk"] == "ok"
    http.close()


@pytest.fixture
def small_volume(tmp_path):
    """A 24 MB tmpfs of our own (the suite runs as root, see README)."""
    mnt = tmp_path / "vol"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(volume: Path, leave: int) -> Path:
    """A ballast file that leaves about `leave` bytes free."""
    ballast = volume / "ballast"
    free = shutil.disk_usage(volume).free
    with open(ballast, "ab") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return ballast


def test_a_really_full_volume_answers_507_keeps_git_and_index_in_step_and_recovers(small_volume, tmp_path):
    data = small_volume / "data"
    http = httpx.Client(timeout=30)
    env = {"WB_MIN_FREE_MB": "1"}
    with Planes(data, env=env, log_dir=tmp_path / "logs") as planes:
        c = planes.control_url
        auth, op = setup_tenant(http, planes, "vol")
        assert http.put(c + "/api/workbooks/ledger", content=V1.encode(), headers=auth).status_code == 200

        # 1. below the floor: refused up front, readiness and the gauge say so
        ballast = fill(small_volume, 512 * 1024)
        assert_507(http.put(c + "/api/workbooks/ledger", content=V2.encode(), headers=auth))
        assert http.get(c + "/readyz").json()["checks"]["disk"] == "low"
        assert free_gauge(http, planes, op) < 1024 * 1024

    # 2. no floor at all (WB_MIN_FREE_MB=0): the write itself runs out of space (ENOSPC / SQLITE_FULL).
    #    A big source whose page is tiny (a comment block): git takes its blob, the index row cannot fit.
    ballast.unlink()
    with Planes(data, env={"WB_MIN_FREE_MB": "0"}, log_dir=tmp_path / "logs") as planes:
        c = planes.control_url
        big = "#+TITLE: Big\n* tiny page\n" + "".join(
            "# " + base64.b64encode(os.urandom(600)).decode() + "\n" for _ in range(1200))
        fill(small_volume, len(big) + 256 * 1024)
        r = http.put(c + "/api/workbooks/big", content=big.encode(), headers=auth)
        assert_507(r)
        assert "WB_MIN_FREE_MB" not in r.json()["error"]["message"]  # the real out-of-space path, not the floor
        rows = {w["id"] for w in http.get(c + "/api/workbooks", headers=auth).json()["workbooks"]}
        assert "big" not in rows
        # git took the blob and the commit before the index row failed: the unit was rolled back at
        # once, or (when even the rollback found no space) its intent is still recorded for the next write
        pending = index_intents(data)
        assert "big.org" not in head_files(data / "vol") or pending == [("vol", "big")]
        assert git_show(data / "vol", "HEAD:ledger.org") == V1
        assert http.get(c + "/healthz").status_code == 200  # nothing crashed
        (small_volume / "ballast").unlink()

        # 3. space is back: the very next write succeeds, no restart needed
        r = http.put(c + "/api/workbooks/ledger", content=V2.encode(), headers=auth)
        assert r.status_code == 200, r.text
        assert git_show(data / "vol", "HEAD:ledger.org") == V2
        assert "big.org" not in head_files(data / "vol") and index_intents(data) == []
        assert http.get(c + "/readyz").json()["checks"]["disk"] == "ok"
        fsck = subprocess.run([os.sys.executable, "-m", "workbooks", "repo", "fsck", "--tenant", "vol", "--data",
                               str(data), "--json"], capture_output=True, text=True, timeout=60)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    http.close()
