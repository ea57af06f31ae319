"""The host-brokered git and publish tools on a real tenant repo and a local bare remote: the
original's refusal without exec, the hand's receipts exactly, commit implies publish."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import trio

from workbooks.agent.secrets import Secrets
from workbooks.agent.tools.base import ToolContext
from workbooks.agent.tools.git_hand import GIT, PUBLISH
from workbooks.gitstore import GitStore
from workbooks.mirror import mirror, site_dir

RECEIPT = re.compile(r"^[0-9a-f]{7} \((pushed|committed; no origin remote to push|push failed: (?P<reason>.{1,120}))\) \(published (?P<n>\d+)\)$")


def plain_git(cwd, *args) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull)
    return subprocess.run(["git", "-c", "safe.directory=*", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def store(tmp_path) -> GitStore:
    gs = GitStore(tmp_path / "data", "dev")
    gs.commit_file("demo.org", b"* Demo\n", "deploy demo")
    return gs


def ctx_for(store: GitStore, exec_: bool, **kw) -> ToolContext:
    return ToolContext(tenant="dev", run_id="run-1", data_dir=store.data_dir, workdir=store.path, exec=exec_, **kw)


def write(root: Path, files: dict):
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_without_exec_the_original_refusals(store):
    ctx = ctx_for(store, False)
    write(store.path, {"content/x.org": "* x\n"})
    head = store.head()
    assert trio.run(GIT, ctx, {"message": "sneaky"}).output == "git not permitted (no exec capability)"
    assert trio.run(PUBLISH, ctx, {}).output == "publish not permitted (no exec capability)"
    assert store.head() == head and not site_dir(ctx.data_dir, "dev").exists()


def test_commit_implies_publish_without_an_origin(store):
    ctx = ctx_for(store, True, secrets=Secrets({"K": "s3cr3t-value"}))
    write(store.path, {"content/index.org": "* home\n", "content/posts/a.org": "* a\n", "blog/tue.org": "* tue\n",
                       "notes.org": "* not published\n"})
    r = trio.run(GIT, ctx, {"message": "add: tuesday post"})
    m = RECEIPT.match(r.output)
    assert m and "(committed; no origin remote to push)" in r.output and m.group("n") == "3", r.output
    assert r.output.startswith(store.head()[:7]) and r.exit_code == 0
    assert store.log()[0]["msg"] == "add: tuesday post"
    site = site_dir(ctx.data_dir, "dev")
    assert sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.is_file()) == [
        "blog/tue.org", "content/index.org", "content/posts/a.org"]
    assert trio.run(GIT, ctx, {"message": "again"}).output == "nothing to commit (published 3)"
    assert trio.run(PUBLISH, ctx, {}).output == "published 3 file(s) to the live site"
    # a missing or empty message is the hand's default, never an error
    write(store.path, {"content/more.org": "* more\n"})
    assert RECEIPT.match(trio.run(GIT, ctx, {}).output)
    assert store.log()[0]["msg"] == "agent update"


def test_pushes_to_origin_and_reports_a_refused_push(store, tmp_path):
    remote = tmp_path / "remote.git"
    plain_git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    mirror(store, f"file://{remote}")
    ctx = ctx_for(store, True)
    write(store.path, {"content/x.org": "* x\n"})
    r = trio.run(GIT, ctx, {"message": "publish x"})
    assert r.output == f"{store.head()[:7]} (pushed) (published 1)"
    assert plain_git(remote, "rev-parse", "refs/heads/main").strip() == store.head()
    # someone else pushed: the push is refused, the commit still goes live
    other = tmp_path / "other"
    plain_git(tmp_path, "clone", "-q", str(remote), str(other))
    (other / "other.org").write_text("* theirs\n")
    plain_git(other, "add", "other.org")
    plain_git(other, "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q", "-m", "theirs")
    plain_git(other, "push", "-q", "origin", "HEAD:main")
    write(store.path, {"content/y.org": "* y\n"})
    r = trio.run(GIT, ctx, {"message": "local work"})
    m = RECEIPT.match(r.output)
    assert m and m.group("reason") and r.output.endswith("(published 2)"), r.output


def test_a_git_failure_is_an_answer(store):
    ctx = ctx_for(store, True)
    ctx.tenant = "../escape"  # not a tenant name: the hand refuses, the tool answers
    r = trio.run(GIT, ctx, {"message": "x"})
    assert r.output.startswith("git error: ") and r.exit_code == 1
    r = trio.run(PUBLISH, ctx, {})
    assert r.output.startswith("publish error: ") and r.exit_code == 1
