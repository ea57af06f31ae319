"""git and the index agree: `wbx repo fsck` finds every disagreement (exit 5), `--repair` rolls git
back to the index (exit 0), an unfinished deploy's own commit leaves the history, and nothing a
dead writer staged rides along in the next commit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbooks.gitstore import GitStore, fsck, unit
from workbooks.gitstore.store import blob_id
from workbooks.store import Store


def wbx(data: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbooks", "repo", "fsck", "--tenant", "t1", "--data", str(data),
                           "--json", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "WB_DATA": str(data)})


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "safe.directory=*", *args], cwd=repo, capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture
def pair(tmp_path):
    data = tmp_path / "data"
    store = Store(data)
    store.create_tenant("t1")
    gs = GitStore(data, "t1").ensure()
    yield data, store, gs
    store.close()


def deploy(store: Store, gs: GitStore, wid: str, text: str) -> str:
    """The real write unit, as the control plane runs it (page build aside)."""
    with gs.locked():
        fsck.before_write(store, gs)
        cur = store.workbook_sha("t1", wid)
        old = cur[1].encode() if cur else None

        def index(sha: str, head: str | None) -> None:
            store.put_workbook("t1", wid, source=text, fragment="<p>x</p>", page=f"<html>{wid}:{text}</html>",
                               headlines=[], meta={}, sha=sha, head=head or sha)

        return unit.write(store, gs, wid, f"{wid}.org", text.encode(), old, f"deploy {wid}", index)


def test_fsck_reports_disagreements_with_exit_5_and_repair_rolls_git_back_to_the_index(pair):
    data, store, gs = pair
    deploy(store, gs, "a", "* a one\n")
    deploy(store, gs, "b", "* b one\n")
    r = wbx(data)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["data"]["ok"] is True
    # a crash after `git commit`, before the index row: git ahead of the index, a new file nobody indexed
    gs.commit_files({"a.org": b"* a FAILED\n", "zz.org": b"* stray\n"}, "deploy a")
    r = wbx(data)
    assert r.returncode == 5
    report = json.loads(r.stdout)["data"]
    assert [d["workbook"] for d in report["disagreements"]] == ["a"]
    assert report["git_only"] == ["zz.org"]  # reported, not a workbook of the index: left alone
    r = wbx(data, "--repair")
    assert r.returncode == 0, r.stdout
    repaired = json.loads(r.stdout)["data"]
    assert [x["workbook"] for x in repaired["repairs"]] == ["a"]
    assert git(gs.path, "show", "HEAD:a.org") == "* a one\n"
    assert (gs.path / "a.org").read_text() == "* a one\n"  # the work tree too
    assert wbx(data).returncode == 0
    # an index row git never got (a commit lost with a power cut): git gets it back
    store.put_workbook("t1", "c", source="* c\n", fragment="", page="<p>c</p>", headlines=[], meta={}, sha="0" * 40)
    assert wbx(data).returncode == 5
    assert wbx(data, "--repair").returncode == 0
    assert git(gs.path, "show", "HEAD:c.org") == "* c\n"


def test_an_unfinished_deploys_commit_leaves_the_history(pair):
    data, store, gs = pair
    deploy(store, gs, "a", "* one\n")
    before = gs.head()
    # what a deploy killed after `git commit` leaves: its intent and its commit, no index row
    store.put_intent("t1", "a", unit._intent(gs, "deploy", "a", "a.org", b"* one\n", b"* two\n"))
    gs.commit_file("a.org", b"* two\n", "deploy a")
    dead = gs.head()
    assert dead != before
    deploy(store, gs, "b", "* b\n")  # the next writer in any process repairs first
    log = git(gs.path, "log", "--format=%H %s").split("\n")
    assert not any(line.startswith(dead) for line in log)  # rolled back, not a compensating commit
    assert git(gs.path, "show", "HEAD:a.org") == "* one\n"
    assert git(gs.path, "rev-parse", "HEAD~1").strip() == before
    assert store.get_intent("t1") is None


def test_a_file_a_dead_writer_staged_never_rides_along(pair):
    data, store, gs = pair
    deploy(store, gs, "a", "* a\n")
    (gs.path / "other.org").write_text("* staged by a deploy that died in git add\n")
    git(gs.path, "add", "other.org")
    deploy(store, gs, "b", "* b\n")
    assert set(git(gs.path, "show", "--name-only", "--format=", "HEAD").split()) == {"b.org"}
    assert "other.org" not in git(gs.path, "ls-tree", "--name-only", "HEAD").split()


def test_nochange_is_decided_against_git_as_well(pair):
    data, store, gs = pair
    deploy(store, gs, "a", "* one\n")
    sha = store.workbook_sha("t1", "a")[0]
    assert unit.unchanged(gs, "a.org", b"* one\n", b"* one\n")
    # git moved on without the index (a failed deploy nobody repaired yet): the same source is a change
    subprocess.run(["git", "-c", "safe.directory=*", "-c", "user.name=x", "-c", "user.email=x@y", "commit", "-q",
                    "--allow-empty", "-m", "noise"], cwd=gs.path, check=True)
    gs.commit_file("a.org", b"* FAILED\n", "deploy a")
    assert not unit.unchanged(gs, "a.org", b"* FAILED\n", b"* one\n")
    assert not unit.unchanged(gs, "a.org", b"* one\n", b"* one\n")
    assert blob_id(b"* one\n") == git(gs.path, "rev-parse", f"{sha}:a.org").strip()


def test_fsck_of_a_missing_data_dir_or_tenant_is_exit_4_and_creates_nothing(tmp_path, pair):
    missing = tmp_path / "nowhere"
    r = wbx(missing)
    assert r.returncode == 4 and not missing.exists()
    data, _, _ = pair
    r = subprocess.run([sys.executable, "-m", "workbooks", "repo", "fsck", "--tenant", "ghost", "--data", str(data),
                        "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 4 and not (data / "ghost").exists()
