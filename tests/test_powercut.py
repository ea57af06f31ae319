"""Power cuts: the FUSE file system that models one (tests/fusefs), and `wbx serve` surviving one.

The file system keeps every write visible but, at a cut, keeps only what was made durable:
a file's bytes at its last fsync, a directory's entries at its last directory fsync.
"""

from __future__ import annotations

import errno
import os

import pytest

from fusefs import PowerCutMount


@pytest.fixture
def disk(tmp_path):
    with PowerCutMount(tmp_path) as m:
        yield m
    assert not os.path.ismount(m.mountpoint)


def _write(path, data: bytes, *, sync: bool, flags: int = os.O_CREAT | os.O_WRONLY | os.O_TRUNC) -> None:
    fd = os.open(path, flags, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _sync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_a_write_without_fsync_is_gone_after_a_cut(disk):
    root = disk.mountpoint
    _write(root / "kept", b"v1", sync=False)
    disk.sync()
    _write(root / "kept", b"v2 longer", sync=False)
    _write(root / "new", b"never synced", sync=False)
    assert (root / "kept").read_bytes() == b"v2 longer"  # readers see it before the cut
    disk.cut()
    assert (root / "kept").read_bytes() == b"v1"
    assert not (root / "new").exists()


def test_an_fsynced_new_file_needs_its_directory_synced_too(disk):
    root = disk.mountpoint
    (root / "d").mkdir()
    disk.sync()
    _write(root / "d" / "file-only", b"data", sync=True)
    assert sorted(os.listdir(root / "d")) == ["file-only"]
    disk.cut()
    assert sorted(os.listdir(root / "d")) == []
    _write(root / "d" / "both", b"data and name", sync=True)
    _sync_dir(root / "d")
    _write(root / "d" / "after", b"created after the dir sync", sync=True)
    disk.cut()
    assert sorted(os.listdir(root / "d")) == ["both"]
    assert (root / "d" / "both").read_bytes() == b"data and name"


def test_a_synced_name_without_synced_data_comes_back_empty(disk):
    root = disk.mountpoint
    _write(root / "empty", b"data never fsynced", sync=False)
    _sync_dir(root)
    disk.cut()
    assert (root / "empty").read_bytes() == b""


def test_appends_after_the_last_fsync_are_cut_off(disk):
    root = disk.mountpoint
    _write(root / "log", b"line 1\n", sync=True)
    _sync_dir(root)
    _write(root / "log", b"line 2\n", sync=True, flags=os.O_WRONLY | os.O_APPEND)
    _write(root / "log", b"line 3\n", sync=False, flags=os.O_WRONLY | os.O_APPEND)
    assert (root / "log").read_bytes() == b"line 1\nline 2\nline 3\n"
    disk.cut()
    assert (root / "log").read_bytes() == b"line 1\nline 2\n"


def test_truncation_and_overwrites_count_only_once_fsynced(disk):
    root = disk.mountpoint
    _write(root / "db", b"A" * 10000, sync=True)
    _sync_dir(root)
    fd = os.open(root / "db", os.O_RDWR)
    try:
        os.pwrite(fd, b"B" * 100, 5000)
        os.fsync(fd)  # this page is durable...
        os.pwrite(fd, b"C" * 100, 0)  # ...this one is not
        os.ftruncate(fd, 20)  # nor the truncation, nor the regrowth
        os.ftruncate(fd, 8000)
    finally:
        os.close(fd)
    assert (root / "db").read_bytes() == b"C" * 20 + bytes(7980)
    disk.cut()
    assert (root / "db").read_bytes() == b"A" * 5000 + b"B" * 100 + b"A" * 4900
    _write(root / "db", b"short", sync=True)  # O_TRUNC then fsync: the shorter file is what stays
    disk.cut()
    assert (root / "db").read_bytes() == b"short"


def test_a_rename_over_an_old_file_without_a_directory_fsync_brings_the_old_file_back(disk):
    root = disk.mountpoint
    _write(root / "page", b"old content", sync=True)
    _sync_dir(root)
    _write(root / "page.tmp", b"new content", sync=True)  # the new file's data is durable...
    os.rename(root / "page.tmp", root / "page")  # ...but not the rename
    assert (root / "page").read_bytes() == b"new content"
    disk.cut()
    assert (root / "page").read_bytes() == b"old content"
    assert not (root / "page.tmp").exists()
    # the same with the directory synced after the rename keeps the new file
    _write(root / "page.tmp", b"new content", sync=True)
    os.rename(root / "page.tmp", root / "page")
    _sync_dir(root)
    disk.cut()
    assert (root / "page").read_bytes() == b"new content"
    assert sorted(os.listdir(root)) == ["page"]


def test_an_unlink_without_a_directory_fsync_is_undone(disk):
    root = disk.mountpoint
    _write(root / "a", b"A", sync=True)
    _write(root / "b", b"B", sync=True)
    _sync_dir(root)
    os.unlink(root / "a")
    os.unlink(root / "b")
    _sync_dir(root)
    _write(root / "b", b"B again", sync=True)  # a new inode under the old name, name not synced
    disk.cut()
    assert sorted(os.listdir(root)) == []


def test_git_style_link_then_unlink_and_a_new_directory(disk):
    """Git writes an object to a temp file, links it to its final name and unlinks the temp."""
    root = disk.mountpoint
    (root / "objects").mkdir()
    _sync_dir(root)
    (root / "objects" / "ab").mkdir()  # a new fan-out dir: durable in objects/ only after its sync
    _write(root / "objects" / "ab" / "tmp_obj", b"blob", sync=True)
    os.link(root / "objects" / "ab" / "tmp_obj", root / "objects" / "ab" / "cdef")
    os.unlink(root / "objects" / "ab" / "tmp_obj")
    _sync_dir(root / "objects" / "ab")
    disk.cut()
    assert os.listdir(root / "objects") == []  # objects/ itself was never synced after the mkdir
    (root / "objects" / "ab").mkdir()
    _write(root / "objects" / "ab" / "tmp_obj", b"blob", sync=True)
    os.link(root / "objects" / "ab" / "tmp_obj", root / "objects" / "ab" / "cdef")
    os.unlink(root / "objects" / "ab" / "tmp_obj")
    _sync_dir(root / "objects" / "ab")
    _sync_dir(root / "objects")
    disk.cut()
    assert os.listdir(root / "objects" / "ab") == ["cdef"]
    assert (root / "objects" / "ab" / "cdef").read_bytes() == b"blob"


def test_a_full_disk_refuses_new_bytes_and_names_then_takes_them_again(disk):
    root = disk.mountpoint
    _write(root / "f", b"x" * 1000, sync=True)
    disk.full_after(4096)
    fd = os.open(root / "g", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        assert os.write(fd, b"y" * 3000) == 3000
        assert os.write(fd, b"y" * 3000) == 1096  # a short write as the space runs out
        with pytest.raises(OSError) as e:
            os.write(fd, b"y")
        assert e.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    sv = os.statvfs(root)
    assert sv.f_bavail * sv.f_frsize == 0
    with pytest.raises(OSError) as e:
        (root / "h").write_bytes(b"")
    assert e.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as e:
        (root / "dir").mkdir()
    assert e.value.errno == errno.ENOSPC
    # overwriting in place needs no new space; reads go on
    fd = os.open(root / "f", os.O_WRONLY)
    try:
        assert os.pwrite(fd, b"z" * 10, 0) == 10
    finally:
        os.close(fd)
    assert (root / "f").read_bytes() == b"z" * 10 + b"x" * 990
    assert disk.stats()["enospc"] >= 3
    disk.space_back()
    (root / "h").write_bytes(b"room again")
    assert (root / "h").read_bytes() == b"room again"
    assert os.statvfs(root).f_bavail > 0


# -- `wbx serve` through a power cut --------------------------------------------------------------
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from fusefs.service import Serve, git, tenant_with_key  # noqa: E402

N_NEW, N_AGAIN, WRITERS = 12, 4, 3


def _source(wid: str, version: int) -> str:
    return f"#+TITLE: Power cut {wid} v{version}\n* Kept\nAcknowledged means durable: {wid} v{version}.\n"


def _wbx(s: Serve, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbooks", *args], capture_output=True, env=s.env, timeout=60)


def _deploy_all(s: Serve, h: dict, tenant: str) -> dict[str, dict]:
    """N_NEW new workbooks from WRITERS threads, then N_AGAIN of them again with new content;
    returns what was acknowledged last for each id: {wid: {sha, source}}."""
    acked: dict[str, dict] = {}
    plan = [(f"{tenant}-w{i}", 1) for i in range(N_NEW)] + [(f"{tenant}-w{i}", 2) for i in range(N_AGAIN)]
    lock = threading.Lock()
    errors: list = []

    def writer(part: list) -> None:
        import httpx

        with httpx.Client(timeout=60) as c:
            for wid, version in part:
                src = _source(wid, version)
                r = c.put(s.control + f"/api/workbooks/{wid}", content=src.encode(), headers=h)
                with lock:
                    if r.status_code == 200:
                        acked[wid] = {"sha": r.json()["sha"], "source": src}
                    else:
                        errors.append((wid, r.status_code, r.text[:300]))

    first, again = plan[:N_NEW], plan[N_NEW:]
    for batch in (first, again):  # the second round re-deploys ids the first one acknowledged
        threads = [threading.Thread(target=writer, args=(batch[k::WRITERS],)) for k in range(WRITERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors  # before the cut every deploy is answered 200
    return acked


def _seal_a_run(s: Serve, tenant: str) -> str:
    run = s.data / tenant / "runs" / "before-the-cut"
    run.mkdir(parents=True)
    for d in (run.parent.parent, run.parent):  # the run's folders are the test's own: it makes them durable
        _sync_dir(d)
    steps = "from workbooks.ledger import append_step\nimport sys\nfor i in range(5):\n" \
            "    append_step(sys.argv[1], {'step': i, 'what': 'a step acknowledged before the power cut'})\n"
    r = subprocess.run([sys.executable, "-c", steps, str(run)], capture_output=True, env=s.env, timeout=60)
    assert r.returncode == 0, r.stderr.decode()[-2000:]  # (a process of its own: WB_FSYNC applies to it)
    r = _wbx(s, "--json", "ledger", "seal", str(run), "--data", str(s.data), "--tenant", tenant)
    assert r.returncode == 0, r.stderr.decode()[-2000:] + r.stdout.decode()[-2000:]
    return run.name


def _audit(s: Serve, h: dict, tenant: str, acked: dict, admin_before: str, run: str) -> list[str]:
    """Everything a user could notice lost or inconsistent after the restart (empty: all kept)."""
    problems: list[str] = []
    if (s.data / "admin.key").read_text().strip() != admin_before:
        problems.append("admin.key changed: the acknowledged first-run key was lost")
    demo = s.http.get(s.public + "/", headers=s.host("demo"))
    if demo.status_code != 200:
        problems.append(f"the first run's demo page answers {demo.status_code}: {demo.text[:200]}")
    for wid, want in sorted(acked.items()):
        r = s.http.get(s.control + f"/api/workbooks/{wid}", headers=h)
        if r.status_code != 200:
            problems.append(f"{wid}: GET /api/workbooks answered {r.status_code} {r.text[:200]}")
            continue
        got = r.json()
        if got["sha"] != want["sha"] or got["source"] != want["source"]:
            problems.append(f"{wid}: acknowledged sha {want['sha'][:12]}, index holds {got['sha'][:12]}")
        # the commit the client was told about is in git's history, holding what was deployed
        shown = git(s.data / tenant, "show", f"{want['sha']}:{wid}.org", check=False)
        in_history = git(s.data / tenant, "merge-base", "--is-ancestor", want["sha"], "HEAD", check=False)
        if shown.returncode != 0 or shown.stdout.decode() != want["source"] or in_history.returncode != 0:
            problems.append(f"{wid}: the acknowledged commit {want['sha'][:12]} is not in git's history "
                            f"({(shown.stderr + in_history.stderr).decode()[:200].strip()})")
        page = s.http.get(s.public + "/", headers=s.host(wid, tenant))
        if page.status_code != 200 or f"{wid} v" not in page.text or want["source"].split("\n")[0][9:] not in page.text:
            problems.append(f"{wid}: public page {page.status_code} does not show the acknowledged version")
    repo = s.data / tenant
    fsck = git(repo, "fsck", "--full", "--strict", check=False)
    if fsck.returncode != 0 or b"error" in fsck.stderr or b"missing" in fsck.stdout + fsck.stderr:
        problems.append(f"git fsck --full: exit {fsck.returncode}: {(fsck.stdout + fsck.stderr).decode()[-1500:]}")
    # git and the index agree on every workbook the index lists (acknowledged or not)
    listed = s.http.get(s.control + "/api/workbooks", headers=h)
    if listed.status_code == 200:
        for row in listed.json()["workbooks"]:
            wid = row["id"]
            src = s.http.get(s.control + f"/api/workbooks/{wid}", headers=h).json().get("source")
            shown = git(repo, "show", f"HEAD:{wid}.org", check=False)
            if shown.returncode != 0 or shown.stdout.decode() != src:
                problems.append(f"{wid}: git HEAD:{wid}.org differs from the index ({shown.stderr.decode()[:200]})")
            # the work tree too: the next `wbx repo commit` (the agent's hand) commits whatever is there
            tree_file = repo / f"{wid}.org"
            if not tree_file.is_file() or tree_file.read_text() != src:
                problems.append(f"{wid}: the work-tree file differs from the index after the restart")
    else:
        problems.append(f"GET /api/workbooks answered {listed.status_code}")
    r = _wbx(s, "--json", "repo", "fsck", "--data", str(s.data), "--tenant", tenant)
    if r.returncode != 0:
        problems.append(f"wbx repo fsck: exit {r.returncode}: {(r.stdout + r.stderr).decode()[-3000:]}")
    r = _wbx(s, "--json", "ledger", "verify", run, "--data", str(s.data), "--tenant", tenant)
    if r.returncode != 0:
        problems.append(f"wbx ledger verify {run}: exit {r.returncode}: {(r.stdout + r.stderr).decode()[-800:]}")
    return problems


def _deploy_cut_restart(tmp_path, env: dict, *, sync_before_deploys: bool = False) -> tuple[list[str], dict, list[str]]:
    """Start, set a tenant up, deploy, cut power, start again: (problems, flush counts, what the cut
    dropped). `sync_before_deploys` makes the setup (tenant, key) durable by fiat, so what the negative
    control loses can only be the deploys (and the run sealed after them)."""
    tenant = "cut"
    with PowerCutMount(tmp_path / "fs") as disk:
        data = disk.mountpoint / "data"
        data.mkdir()
        disk.sync()  # the operator made the data dir long ago
        s = Serve(data, tmp_path, env)
        try:
            s.start()
            admin = (data / "admin.key").read_text().strip()
            h = tenant_with_key(s, tenant)
            if sync_before_deploys:
                disk.sync()
            acked = _deploy_all(s, h, tenant)
            run = _seal_a_run(s, tenant)  # its checkpoint commit lands on top of the deploys'
            before = _audit(s, h, tenant, acked, admin, run)
            assert before == [], "before the cut:\n" + "\n".join(before)  # the audit is right on a sound service
            flushed = {**disk.stats(), "paths": disk.synced()}
            s.power_cut()
            lost = disk.cut()
            try:
                s.start(timeout=45, demo=False)
            except RuntimeError as e:  # a service that cannot start again has lost everything
                return [f"wbx serve does not start after the cut: {e}"], flushed, lost
            return _audit(s, h, tenant, acked, admin, run), flushed, lost
        finally:
            s.close()


def test_every_acknowledged_write_survives_a_power_cut(tmp_path):
    problems, flushed, lost = _deploy_cut_restart(tmp_path, {})
    lost = [p for p in lost if not p.startswith("/data/run/") and "-shm:" not in p]  # sockets, SQLite's shm may go
    assert problems == [], "\n".join(problems) + "\n\nwhat the cut dropped:\n" + "\n".join(lost[:80])
    assert flushed["fsync"] > 0 and flushed["fsyncdir"] > 0


def test_negative_control_without_fsync_the_same_cut_loses_acknowledged_deploys(tmp_path):
    """WB_FSYNC=0 (test-only) turns every flush off: the rig must catch the deploys that loses.
    The setup (tenant, key) is made durable by the file system itself here, so what is lost
    can only be deploys the service acknowledged."""
    problems, flushed, lost = _deploy_cut_restart(tmp_path, {"WB_FSYNC": "0"}, sync_before_deploys=True)
    deploys_lost = [p for p in problems if p.startswith("cut-w") or p.startswith("git fsck")]
    assert deploys_lost, "with every flush off, the power cut lost no deploy: the rig cannot see one:\n" + "\n".join(problems)
    deploy_flushes = {p: n for p, n in flushed["paths"].items() if "/.git/" in p or "/index.db" in p}
    assert deploy_flushes == {}  # WB_FSYNC=0 really flushed nothing of git or the index


def test_a_cut_in_the_middle_of_deploys_keeps_every_acknowledged_one(tmp_path):
    """The power goes while writers are deploying: whatever was answered 200 (even if the answer was
    still on its way) is there after the restart; what was in flight is either whole or absent, and
    git agrees with the index either way."""
    import httpx

    tenant = "mid"
    with PowerCutMount(tmp_path / "fs") as disk:
        data = disk.mountpoint / "data"
        data.mkdir()
        disk.sync()
        s = Serve(data, tmp_path, {})
        try:
            s.start()
            admin = (data / "admin.key").read_text().strip()
            h = tenant_with_key(s, tenant)
            run = _seal_a_run(s, tenant)
            acked: dict[str, dict] = {}
            sent: list[str] = []
            lock, stop = threading.Lock(), threading.Event()

            def writer(k: int) -> None:
                with httpx.Client(timeout=30) as c:
                    for i in range(10_000):
                        if stop.is_set():
                            return
                        wid = f"{tenant}-{k}-{i}"
                        src = _source(wid, 1)
                        with lock:
                            sent.append(wid)
                        try:
                            r = c.put(s.control + f"/api/workbooks/{wid}", content=src.encode(), headers=h)
                        except httpx.HTTPError:
                            return  # the service is gone
                        if r.status_code == 200:
                            with lock:
                                acked[wid] = {"sha": r.json()["sha"], "source": src}

            threads = [threading.Thread(target=writer, args=(k,)) for k in range(WRITERS)]
            for t in threads:
                t.start()
            deadline = time.time() + 30
            while len(acked) < 8 and time.time() < deadline:
                time.sleep(0.05)
            s.power_cut()  # mid-flight: the writers are still sending
            stop.set()
            for t in threads:
                t.join(30)
            assert len(acked) >= 8 and len(sent) > len(acked), (len(acked), len(sent))
            lost = disk.cut()
            try:
                s.start(timeout=45, demo=False)
                problems = _audit(s, h, tenant, dict(acked), admin, run)
            except RuntimeError as e:
                problems = [f"wbx serve does not start after the cut: {e}"]
        finally:
            s.close()
    lost = [p for p in lost if not p.startswith("/data/run/") and "-shm:" not in p]
    assert problems == [], "\n".join(problems) + "\n\nwhat the cut dropped:\n" + "\n".join(lost[:80])
