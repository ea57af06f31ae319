"""The per-tenant git store: real repos, real git, real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from workbooks import private
from workbooks.errors import BadRequest, NotFound
from workbooks.gitstore import GitStore, InvalidPath, InvalidTenant, redact


def git_plain(repo: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull)
    return subprocess.run(
        ["git", "-c", "safe.directory=*", *args], cwd=repo, env=env, capture_output=True, check=True, text=True
    ).stdout


def test_repo_created_on_first_use_with_tenant_author_and_private_gitignore(tmp_path):
    gs = GitStore(tmp_path, "acme")
    assert not (tmp_path / "acme").exists()
    assert gs.head() is None and gs.log() == [] and gs.diff_last() == "" and gs.read_file("x.org") is None
    assert not (tmp_path / "acme").exists() and not gs.exists()  # reading never creates a tenant repo
    sha = gs.commit_file("demo.org", b"* Demo\n", "deploy demo")
    assert sha and len(sha) == 40 and gs.head() == sha
    assert (tmp_path / "acme" / ".git").is_dir()
    who = git_plain(tmp_path / "acme", "log", "-1", "--format=%an <%ae>|%cn <%ce>")
    assert who.strip() == "acme <acme@workbooks.local>|acme <acme@workbooks.local>"
    assert (tmp_path / "acme" / ".gitignore").read_text() == private.gitignore_text()
    assert set(gs.ls_files()) == {".gitignore", "demo.org"}
    for pat in (".workbooks/", "memory/", ".beads/", ".claude/", "scratch/", "tmp/", "_*.jsonl", "_*.json", "_*.db"):
        assert pat in private.gitignore_text().splitlines()


def test_unchanged_content_is_no_commit_and_history_reads_back(tmp_path):
    gs = GitStore(tmp_path, "dev")
    first = gs.commit_file("demo.org", b"* One\n", "deploy demo")
    assert gs.commit_file("demo.org", b"* One\n", "deploy demo again") is None
    second = gs.commit_file("demo.org", b"* Two\n", "deploy demo v2")
    assert second != first
    log = gs.log()
    assert [r["msg"] for r in log] == ["deploy demo v2", "deploy demo"]
    assert [r["sha"] for r in log] == [second, first]
    assert all(r["author"] == "dev" and isinstance(r["ts"], int) and r["ts"] > 1_600_000_000 for r in log)
    assert gs.log(limit=1) == log[:1]
    diff = gs.diff_last()
    assert "-* One" in diff and "+* Two" in diff and diff.startswith("diff --git a/demo.org b/demo.org")
    assert gs.read_file("demo.org") == b"* Two\n"
    assert gs.read_file("demo.org", rev="HEAD~1") == b"* One\n"
    assert gs.read_file("demo.org", rev=first) == b"* One\n"
    assert gs.read_file("missing.org") is None
    assert gs.read_file("demo.org", rev="nosuchbranch") is None


def test_first_commit_diff_is_against_empty_tree(tmp_path):
    gs = GitStore(tmp_path, "dev")
    gs.commit_file("notes/a.org", b"* A\n", "deploy a")
    diff = gs.diff_last()
    assert "+++ b/notes/a.org" in diff and "+* A" in diff


def test_delete_file_commits_and_unknown_file_is_not_found(tmp_path):
    gs = GitStore(tmp_path, "dev")
    gs.commit_file("demo.org", b"x\n", "deploy demo")
    sha = gs.delete_file("demo.org", "delete demo")
    assert gs.head() == sha and gs.read_file("demo.org") is None
    assert not (tmp_path / "dev" / "demo.org").exists()
    assert gs.log()[0]["msg"] == "delete demo"
    with pytest.raises(NotFound):
        gs.delete_file("demo.org", "again")
    with pytest.raises(NotFound):
        gs.delete_file("never.org", "nope")


@pytest.mark.parametrize("bad", ["", "../x", "..", ".", "A", "Dev", "a/b", ".workbooks", "-x", "x" * 64, "dev\n", "dev ", "é", None, 3])
def test_tenant_names_are_strict_slugs(tmp_path, bad):
    with pytest.raises(InvalidTenant) as ei:
        GitStore(tmp_path / "data", bad)
    assert ei.value.http_status == 400
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "bad",
    [
        "/etc/passwd", "../escape.org", "a/../../x", "a//b", "./a", ".git/config", "sub/.git/hooks/x", ".GIT/x",
        "_steps.jsonl", "run/_ledger.json", "memory/notes.org", ".workbooks/dev.ed25519", "k.ed25519", ".beads/x",
        "tmp/a", "scratch/a", ".claude/s", "_t.db", "a\\b", "nul\0byte", "",
    ],
)
def test_paths_are_confined_and_private_paths_refused(tmp_path, bad):
    gs = GitStore(tmp_path, "dev")
    with pytest.raises(InvalidPath):
        gs.commit_file(bad, b"secret", "sneak")
    assert gs.head() is None


def test_symlinked_directory_cannot_be_written_through(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    gs = GitStore(tmp_path / "data", "dev")
    gs.commit_file("ok.org", b"ok\n", "init")
    os.symlink(outside, tmp_path / "data" / "dev" / "link")
    with pytest.raises(InvalidPath):
        gs.commit_file("link/evil.org", b"x", "escape")
    assert list(outside.iterdir()) == []


def test_bad_messages_and_revisions_are_rejected(tmp_path):
    gs = GitStore(tmp_path, "dev")
    with pytest.raises(BadRequest):
        gs.commit_file("a.org", b"x", "   ")
    gs.commit_file("a.org", b"x", "--amend looks like a flag but is a message")
    assert gs.log()[0]["msg"] == "--amend looks like a flag but is a message"
    for rev in ("--output=/tmp/x", "HEAD..HEAD", "a b", ""):
        with pytest.raises(BadRequest):
            gs.read_file("a.org", rev=rev)


def test_hooks_global_config_and_git_env_do_not_leak_in(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    marker = tmp_path / "hook-ran"
    (home / ".gitconfig").write_text(f"[user]\n\tname = Mallory\n\temail = m@evil\n[core]\n\thooksPath = {home}\n")
    hook = home / "pre-commit"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    hook.chmod(0o755)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Mallory")
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))
    gs = GitStore(tmp_path / "data", "dev")
    gs.commit_file("a.org", b"1\n", "one")
    repo_hook = tmp_path / "data" / "dev" / ".git" / "hooks" / "pre-commit"
    repo_hook.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    repo_hook.chmod(0o755)
    gs.commit_file("a.org", b"2\n", "two")
    assert not marker.exists()
    assert not (tmp_path / "elsewhere").exists()
    who = git_plain(tmp_path / "data" / "dev", "log", "--format=%an <%ae>")
    assert set(who.split("\n")) - {""} == {"dev <dev@workbooks.local>"}


def test_safe_directory_lets_a_foreign_owned_repo_work(tmp_path):
    gs = GitStore(tmp_path, "dev")
    gs.commit_file("a.org", b"1\n", "one")
    # git's own test switch makes it believe the repo belongs to another uid
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_TEST_ASSUME_DIFFERENT_OWNER="1", GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull)
    plain = subprocess.run(["git", "status"], cwd=tmp_path / "dev", env=env, capture_output=True, text=True)
    assert plain.returncode != 0 and "dubious ownership" in plain.stderr
    p = gs.git("log", "--format=%s", env_extra={"GIT_TEST_ASSUME_DIFFERENT_OWNER": "1"})
    assert p.stdout.decode().strip() == "one"


def test_commit_all_respects_private_boundary(tmp_path):
    gs = GitStore(tmp_path, "dev")
    root = tmp_path / "dev"
    gs.ensure()
    for rel in ("content/post.org", "memory/m.md", ".beads/issues.jsonl", "run1/_steps.jsonl", ".workbooks/dev.ed25519", "blog/b.org", "tmp/t"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    (root / ".gitignore").write_text("")  # a tampered ignore file is rewritten before the add
    sha = gs.commit_all("agent commit")
    assert sha
    assert set(gs.ls_files()) == {".gitignore", "content/post.org", "blog/b.org"}
    assert gs.commit_all("nothing new") is None


def _children() -> list[tuple[int, str]]:
    pid = os.getpid()
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue
        for c in text.split():
            try:
                comm = Path(f"/proc/{c}/comm").read_text().strip()
            except OSError:
                comm = "?"
            kids.append((int(c), comm))
    return kids


def test_many_operations_leave_no_git_child_process(tmp_path):
    gs = GitStore(tmp_path, "dev")
    before = {pid for pid, _ in _children()}
    for i in range(500):
        gs.commit_file(f"f{i % 7}.org", f"* v{i}\n".encode(), f"deploy {i}")
        if i % 50 == 0:
            gs.log(limit=5)
            gs.diff_last()
            gs.read_file(f"f{i % 7}.org")
    assert len(gs.log(limit=1000)) == 500
    leftover = [(pid, comm) for pid, comm in _children() if pid not in before]
    assert leftover == [], f"child processes left behind: {leftover}"


WRITER = textwrap.dedent(
    """
    import sys
    from workbooks.gitstore import GitStore
    data, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    gs = GitStore(data, "dev")
    for i in range(n):
        assert gs.commit_file(f"{who}.org", f"{who} {i}\\n".encode(), f"{who} {i}")
    """
)


def test_concurrent_threads_and_processes_never_lose_a_commit(tmp_path):
    n = 15
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), f"proc{k}", str(n)], stderr=subprocess.PIPE)
        for k in range(2)
    ]
    errors: list[BaseException] = []

    def thread_writer(k: int) -> None:
        gs = GitStore(tmp_path, "dev")  # a store per thread, as a server would have
        try:
            for i in range(n):
                assert gs.commit_file(f"thread{k}.org", f"t{k} {i}\n".encode(), f"thread{k} {i}")
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=thread_writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    assert errors == []
    gs = GitStore(tmp_path, "dev")
    msgs = [r["msg"] for r in gs.log(limit=1000)]
    assert len(msgs) == 5 * n
    for who in ("proc0", "proc1", "thread0", "thread1", "thread2"):
        assert sorted(m for m in msgs if m.startswith(who + " ")) == sorted(f"{who} {i}" for i in range(n))
    assert not (tmp_path / "dev" / ".git" / "index.lock").exists()


HOLDER = textwrap.dedent(
    """
    import sys, time
    from workbooks.gitstore import GitStore
    gs = GitStore(sys.argv[1], "dev")
    gs.ensure()
    with gs.locked():
        print("held", flush=True)
        time.sleep(60)
    """
)


def test_lock_holder_blocks_writers_and_its_death_frees_the_tenant(tmp_path):
    gs = GitStore(tmp_path, "dev")
    gs.ensure()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        done = threading.Event()

        def write() -> None:
            gs.commit_file("a.org", b"a\n", "after the holder")
            done.set()

        t = threading.Thread(target=write)
        t.start()
        assert not done.wait(0.5), "a writer got in while another process held the tenant lock"
        holder.send_signal(signal.SIGKILL)
        assert done.wait(30)
        t.join()
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
    assert gs.log()[0]["msg"] == "after the holder"


def test_redact_strips_credentials_from_urls():
    assert redact("fatal: unable to access 'https://bob:s3cret@host/x.git/'") == "fatal: unable to access 'https://***@host/x.git/'"
    assert "s3cret" not in redact("ssh://git:s3cret@example.com/r and http://tok@h/p")


def test_nested_ignore_files_cannot_smuggle_private_paths_in(tmp_path):
    gs = GitStore(tmp_path, "dev")
    gs.ensure()
    root = tmp_path / "dev"
    (root / "content" / "memory").mkdir(parents=True)
    (root / "content" / ".gitignore").write_text("!memory/\n!_*.jsonl\n")
    (root / "content" / "memory" / "notes.md").write_text("session")
    (root / "content" / "_steps.jsonl").write_text("{}")
    (root / "content" / "post.org").write_text("* post\n")
    assert gs.commit_all("agent commit")
    assert set(gs.ls_files()) == {".gitignore", "content/.gitignore", "content/post.org"}
    for meta in (".gitignore", "sub/.gitattributes", ".gitmodules"):
        with pytest.raises(InvalidPath):
            gs.commit_file(meta, b"!memory/\n", "unignore")
