"""A full disk under `wbx serve`, on the FUSE file system of tests/fusefs: writes are refused with
507 `insufficient_storage` and Retry-After, nothing half-written stays behind (git and the index
agree, `git fsck` is clean), reads go on, /readyz and /metrics say so, and writes work again as
soon as there is space."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from fusefs import PowerCutMount
from fusefs.service import Serve, git, tenant_with_key

TENANT = "full"
FLOOR_MB = 1


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fulldisk")
    with PowerCutMount(tmp / "fs") as disk:
        data = disk.mountpoint / "data"
        data.mkdir()
        s = Serve(data, tmp, {"WB_MIN_FREE_MB": str(FLOOR_MB)})
        try:
            s.start()
            h = tenant_with_key(s, TENANT)
            yield {"disk": disk, "serve": s, "h": h, "acked": {}}
        finally:
            if disk.proc is not None:
                disk.space_back()  # an orderly stop may write
            s.close()


def _source(wid: str, version: int) -> str:
    return f"#+TITLE: Full disk {wid} v{version}\n* Text\n{wid} version {version}: " + "words " * 200 + "\n"


def _put(rig, wid: str, version: int):
    s = rig["serve"]
    src = _source(wid, version)
    r = s.http.put(s.control + f"/api/workbooks/{wid}", content=src.encode(), headers=rig["h"])
    if r.status_code == 200:
        rig["acked"][wid] = {"sha": r.json()["sha"], "source": src}
    return r


def _assert_refused(r) -> None:
    assert r.status_code == 507, r.text
    err = r.json()["error"]
    assert err["code"] == "insufficient_storage" and err["message"], err
    assert int(r.headers["Retry-After"]) >= 1


def _assert_consistent(rig, *, git_agrees: bool = True) -> None:
    """Every acknowledged deploy reads back (API, public page); git's object store is sound; with
    `git_agrees`, git HEAD and the index hold the same workbooks. Only reads: it runs while the
    disk is full too."""
    s, h = rig["serve"], rig["h"]
    for wid, want in rig["acked"].items():
        r = s.http.get(s.control + f"/api/workbooks/{wid}", headers=h)
        assert r.status_code == 200, (wid, r.text)
        assert (r.json()["sha"], r.json()["source"]) == (want["sha"], want["source"]), wid
        page = s.http.get(s.public + "/", headers=s.host(wid, TENANT))
        assert page.status_code == 200 and want["source"].split("\n")[0][9:] in page.text, (wid, page.status_code)
    repo = s.data / TENANT
    listed = s.http.get(s.control + "/api/workbooks", headers=h).json()["workbooks"]
    assert {w["id"] for w in listed} == set(rig["acked"])  # nothing refused shows up in the index
    fsck = git(repo, "fsck", "--full", "--strict", check=False)
    assert fsck.returncode == 0 and b"error" not in fsck.stderr, fsck.stderr.decode()
    if not git_agrees:
        return
    for wid, want in rig["acked"].items():
        assert git(repo, "show", f"HEAD:{wid}.org").stdout.decode() == want["source"], wid
    tracked = {p for p in git(repo, "ls-files").stdout.decode().split() if p.endswith(".org")}
    assert tracked == {f"{w}.org" for w in rig["acked"]}  # nor in git
    r = subprocess.run([sys.executable, "-m", "workbooks", "--json", "repo", "fsck", "--data", str(s.data),
                        "--tenant", TENANT], capture_output=True, env=s.env, timeout=60)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()[-2000:]


def _metric(s: Serve, name: str) -> float:
    text = s.http.get(s.control + "/metrics", headers=s.admin()).text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_below_the_floor_writes_are_refused_before_anything_is_written(rig):
    s, disk = rig["serve"], rig["disk"]
    assert _put(rig, "fa", 1).status_code == 200
    assert s.http.get(s.control + "/readyz").json()["checks"]["disk"] == "ok"
    left = 256 * 1024  # below the 1 MB floor
    disk.full_after(left)
    before = disk.stats()
    _assert_refused(_put(rig, "fa", 2))
    _assert_refused(_put(rig, "fb", 1))
    after = disk.stats()
    assert disk.command("stats")["budget"] == left  # not one byte was allocated for the refused deploys
    assert after["enospc"] == before["enospc"]  # refused by the check, not by a failing write
    ready = s.http.get(s.control + "/readyz")
    assert ready.status_code == 200  # still ready: reads go on
    body = ready.json()
    assert body["disk"]["writable"] is False and body["disk"]["free_bytes"] <= left, body
    assert body["checks"]["disk"] != "ok", body
    assert _metric(s, "workbooks_data_free_bytes") <= left
    assert _metric(s, "workbooks_data_writable") == 0
    _assert_consistent(rig)
    disk.space_back()
    assert _put(rig, "fa", 2).status_code == 200
    assert _put(rig, "fb", 1).status_code == 200
    assert s.http.get(s.control + "/readyz").json()["checks"]["disk"] == "ok"
    assert _metric(s, "workbooks_data_writable") == 1
    _assert_consistent(rig)


@pytest.mark.parametrize("budget", [0, 1500, 5000, 12000, 25000, 40000])
def test_enospc_midway_through_a_deploy_leaves_nothing_half_written(rig, budget):
    """The free-space check sees room (statfs does not show the shortage); the disk fills up
    somewhere inside the deploy - git objects, refs, git's index, SQLite's WAL."""
    s, disk = rig["serve"], rig["disk"]
    if "fc" not in rig["acked"]:
        assert _put(rig, "fc", 0).status_code == 200
    before = disk.stats()["enospc"]
    disk.full_after(budget, visible=False)
    try:
        answers = [_put(rig, "fc", budget + 1), _put(rig, f"fd{budget}", 1)]
        for r in answers:
            if r.status_code != 200:
                _assert_refused(r)
        if budget == 0:
            assert [r.status_code for r in answers] == [507, 507]
        # reads go on while the disk is still full, and show what was acknowledged (git HEAD may
        # still hold a refused commit: undoing it needs a write, done before the next one)
        try:
            _assert_consistent(rig, git_agrees=False)
        except AssertionError as e:
            raise AssertionError(f"{e}\nthe deploys were answered: {[(r.status_code, r.text[:300]) for r in answers]}") from None
    finally:
        disk.space_back()
    if any(r.status_code == 507 for r in answers):
        assert disk.stats()["enospc"] > before  # the write really failed (the check saw free space)
    # space is back: the same deploys go through, and git and the index agree again
    assert _put(rig, "fc", budget + 2).status_code == 200
    assert _put(rig, f"fd{budget}", 2).status_code == 200
    _assert_consistent(rig)
