"""Mirror, federate, reconcile, the agent's git hand and jj: real repos, a local bare remote, a real
smart-HTTP git server (git http-backend) behind Basic auth, and stand-in forge CLIs on PATH."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import run_wbx
from workbooks.errors import Conflict, NotFound
from workbooks.gitstore import GitStore, jj
from workbooks.mirror import (
    NO_FORGE_CLI,
    SNAPSHOT_MESSAGE,
    ForgeUnavailable,
    PushFailed,
    commit_and_push,
    federate,
    mirror,
    reconcile,
    site_dir,
)
from workbooks.mirror.api import mirror_request


def plain_git(cwd, *args, check=True) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_AUTHOR_NAME="up", GIT_AUTHOR_EMAIL="up@x",
        GIT_COMMITTER_NAME="up", GIT_COMMITTER_EMAIL="up@x",
    )
    p = subprocess.run(["git", "-c", "safe.directory=*", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(p.stderr)
    return p.stdout


def bare(tmp_path, name="remote.git") -> Path:
    path = tmp_path / name
    plain_git(tmp_path, "init", "-q", "--bare", "-b", "main", str(path))
    return path


@pytest.fixture
def store(tmp_path):
    gs = GitStore(tmp_path / "data", "dev")
    gs.commit_file("demo.org", b"* Demo\nline one\n", "deploy demo")
    return gs


@pytest.fixture
def isolated_path(tmp_path, monkeypatch):
    """PATH holding only git (and sh) plus a folder for stand-in CLIs."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("git", "sh", "mkdir", "cat", "printf", "dirname"):
        real = shutil.which(tool)
        if real:
            os.symlink(real, bindir / tool)
    monkeypatch.setenv("PATH", str(bindir))
    return bindir


def fake_cli(bindir: Path, name: str, body: str) -> Path:
    log = bindir.parent / f"{name}.argv"
    script = bindir / name
    script.write_text(
        "#!/bin/sh\n"
        f"for a in \"$@\"; do printf '%s\\n' \"$a\"; done > {log}\n"
        f"printf 'cwd=%s\\nsafe=%s\\n' \"$PWD\" \"$GIT_CONFIG_KEY_0=$GIT_CONFIG_VALUE_0\" > {log}.env\n"
        + body
    )
    script.chmod(0o755)
    return log


# -- mirror by URL --------------------------------------------------------------------------------
def test_mirror_url_pushes_history_and_remembers_origin(tmp_path, store):
    remote = bare(tmp_path)
    res = mirror(store, f"file://{remote}")
    assert res["ok"] and res["head"] == store.head() and res["remote"] == "origin"
    assert plain_git(remote, "rev-parse", "refs/heads/main").strip() == store.head()
    store.commit_file("second.org", b"2\n", "deploy second")
    plain_git(store.path, "tag", "v1")
    mirror(store, f"file://{remote}")
    assert plain_git(remote, "rev-parse", "refs/heads/main").strip() == store.head()
    assert plain_git(remote, "tag").split() == ["v1"]
    assert store.remote_url("origin") == f"file://{remote}"


def test_mirror_refuses_non_urls_and_dangerous_transports(tmp_path, store):
    for bad in ("-uhttps://x", "https://exa mple/x", "ext::sh -c touch% /tmp/pwned"):
        with pytest.raises(Exception):
            mirror(store, bad)
    with pytest.raises(Exception):
        mirror_request(tmp_path / "data", "dev", {"url": f"file://{bare(tmp_path)}"})  # no local pushes over HTTP
    with pytest.raises(Exception):
        mirror_request(tmp_path / "data", "dev", {"url": "x", "forge": "github"})
    with pytest.raises(NotFound):
        mirror(GitStore(tmp_path / "data", "empty"), f"file://{bare(tmp_path, 'e.git')}")


class _GitHTTP(BaseHTTPRequestHandler):
    """git smart HTTP through `git http-backend`, behind Basic auth (records what it was sent)."""

    root: Path
    user, password = "alice", "s3cret/p@ss"
    seen_auth: list

    def log_message(self, *a):  # quiet
        pass

    def _handle(self):
        auth = self.headers.get("Authorization", "")
        self.seen_auth.append(auth)
        want = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if auth != want:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": self.command, "REMOTE_USER": self.user,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""), "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull, "HOME": str(self.root),
            "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*",
        }
        p = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, timeout=60)
        head, _, payload = p.stdout.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.split(b"\r\n"):
            k, _, v = line.decode().partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _handle
    do_POST = _handle


@pytest.fixture
def http_git(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    plain_git(root, "init", "-q", "--bare", "-b", "main", "site.git")
    handler = type("H", (_GitHTTP,), {"root": root, "seen_auth": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server, root / "site.git", handler
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


def test_credentials_in_the_url_are_used_but_never_stored(store, http_git):
    server, remote, handler = http_git
    port = server.server_address[1]
    url = f"http://alice:s3cret%2Fp%40ss@127.0.0.1:{port}/site.git"
    res = mirror(store, url)
    assert plain_git(remote, "rev-parse", "refs/heads/main").strip() == store.head()
    assert any(a.startswith("Basic ") for a in handler.seen_auth)  # the secret did reach the server
    config = (store.git_dir / "config").read_text()
    assert "s3cret" not in config and "alice" not in config
    assert store.remote_url("origin") == f"http://127.0.0.1:{port}/site.git"
    assert "s3cret" not in json.dumps(res)
    with pytest.raises(PushFailed) as ei:
        mirror(store, f"http://alice:wrong-secret@127.0.0.1:{port}/site.git")
    assert "wrong-secret" not in ei.value.message and "wrong-secret" not in (store.git_dir / "config").read_text()


# -- forge CLIs -------------------------------------------------------------------------------------
def test_no_forge_cli_says_exactly_so(store, isolated_path):
    for forge in ("github", "gitlab", "gitea"):
        with pytest.raises(ForgeUnavailable) as ei:
            mirror(store, forge)
        assert ei.value.message == "no forge CLI (gh/glab/tea) on PATH — create the remote yourself and use `wbx mirror URL`"
    assert store.remote_url("origin") is None


def test_github_is_provisioned_through_gh(tmp_path, store, isolated_path):
    remote = tmp_path / "gh-remote.git"
    log = fake_cli(
        isolated_path, "gh",
        f"git init -q --bare -b main {remote}\nprintf 'Created repository you/wb-dev on GitHub\\n  file://{remote}\\n'\n",
    )
    res = mirror(store, "github")
    argv = log.read_text().splitlines()
    assert argv == ["repo", "create", "wb-dev", "--source", str(store.path), "--private", "--push", "--remote", "origin"]
    env_seen = Path(str(log) + ".env").read_text()
    assert f"cwd={store.path}" in env_seen and "safe=safe.directory=*" in env_seen
    assert res["ok"] and res["url"] == f"file://{remote}" and res["forge"] == "github"
    assert plain_git(remote, "rev-parse", "refs/heads/main").strip() == store.head()
    log.unlink()
    store.commit_file("more.org", b"m\n", "more")
    mirror(store, "github")  # origin exists now: a plain push, no provisioning
    assert not log.exists()
    assert plain_git(remote, "rev-parse", "refs/heads/main").strip() == store.head()


def test_gitlab_through_glab(tmp_path, store, isolated_path):
    remote = tmp_path / "gl.git"
    log = fake_cli(isolated_path, "glab", f"git init -q --bare -b main {remote}\nprintf '✓ Created repository you/wb-dev\\nfile://{remote}\\n'\n")
    mirror(store, "gitlab")
    assert log.read_text().splitlines()[:3] == ["repo", "create", "wb-dev"]
    assert plain_git(remote, "rev-parse", "refs/heads/main").strip() == store.head()


def test_federate_with_and_without_rad(tmp_path, store, isolated_path):
    with pytest.raises(ForgeUnavailable, match="rad .* not on PATH"):
        federate(store)
    log = fake_cli(isolated_path, "rad", "printf '✓ Repository initialized\\nrad:z3gqcJUoA1n9HaHKufZs5FCSGazv5\\n'\n")
    res = federate(store)
    assert res["rid"] == "rad:z3gqcJUoA1n9HaHKufZs5FCSGazv5"
    assert log.read_text().splitlines()[:2] == ["init", "--public"]


# -- reconcile --------------------------------------------------------------------------------------
def upstream_commit(tmp_path, remote, rel, data, msg):
    work = tmp_path / "upstream-work"
    if not work.exists():
        plain_git(tmp_path, "clone", "-q", str(remote), str(work))
    else:
        plain_git(work, "pull", "-q", "--no-rebase", "origin", "main")
    (work / rel).parent.mkdir(parents=True, exist_ok=True)
    (work / rel).write_text(data)
    plain_git(work, "add", rel)
    plain_git(work, "commit", "-q", "-m", msg)
    plain_git(work, "push", "-q", "origin", "HEAD:main")


def test_reconcile_snapshots_a_dirty_tree_then_merges(tmp_path, store):
    remote = bare(tmp_path)
    mirror(store, f"file://{remote}")
    upstream_commit(tmp_path, remote, "upstream.org", "* from the forge\n", "edit on the forge")
    (store.path / "demo.org").write_text("* Demo\nline one\nlocal edit\n")
    (store.path / "new-local.org").write_text("* new\n")
    (store.path / "memory").mkdir()
    (store.path / "memory" / "m.md").write_text("private")
    res = reconcile(store)
    assert res["ok"] and res["snapshot"] and res["merged"]
    msgs = [r["msg"] for r in store.log()]
    assert SNAPSHOT_MESSAGE in msgs and "edit on the forge" in msgs
    assert (store.path / "upstream.org").read_text() == "* from the forge\n"
    assert (store.path / "demo.org").read_text().endswith("local edit\n")
    assert "memory/m.md" not in store.ls_files() and (store.path / "memory" / "m.md").exists()
    assert not store.is_dirty()
    again = reconcile(store)
    assert again["snapshot"] is None and not again["merged"]


def test_reconcile_conflict_aborts_and_leaves_the_tree_as_it_was(tmp_path, store):
    remote = bare(tmp_path)
    mirror(store, f"file://{remote}")
    upstream_commit(tmp_path, remote, "demo.org", "* Demo\nline one CHANGED UPSTREAM\n", "upstream edit")
    before_head = store.head()
    (store.path / "demo.org").write_text("* Demo\nline one changed locally\n")
    (store.path / "untracked.org").write_text("* mine\n")
    status_before = plain_git(store.path, "status", "--porcelain", "-uall")
    with pytest.raises(Conflict) as ei:
        reconcile(store)
    assert ei.value.exit_code == 6 and ei.value.data["files"] == ["demo.org"]
    assert store.head() == before_head
    assert (store.path / "demo.org").read_text() == "* Demo\nline one changed locally\n"
    assert (store.path / "untracked.org").read_text() == "* mine\n"
    assert plain_git(store.path, "status", "--porcelain", "-uall") == status_before
    assert not (store.git_dir / "MERGE_HEAD").exists() and not (store.git_dir / "index.lock").exists()
    assert SNAPSHOT_MESSAGE not in [r["msg"] for r in store.log()]


def test_reconcile_without_origin(store):
    with pytest.raises(NotFound):
        reconcile(store)


# -- the agent's git hand ---------------------------------------------------------------------------
RECEIPT = re.compile(r"^[0-9a-f]{7} \((pushed|committed; no origin remote to push|push failed: (?P<reason>.{1,120}))\) \(published (?P<n>\d+)\)$")


def populate(root: Path):
    for rel, text in {
        "content/index.org": "* home\n", "content/posts/a.org": "* a\n", "blog/tuesday.org": "* tuesday\n",
        "notes.org": "* not published\n", "memory/m.md": "private", ".beads/b.jsonl": "{}", "run/_steps.jsonl": "{}",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_commit_and_push_without_origin_commits_and_publishes(tmp_path, store):
    populate(store.path)
    receipt = commit_and_push("dev", "add tuesday post", data_dir=tmp_path / "data")
    m = RECEIPT.match(receipt)
    assert m and "(committed; no origin remote to push)" in receipt and m.group("n") == "3", receipt
    assert receipt.startswith(store.head()[:7])
    assert store.log()[0]["msg"] == "add tuesday post"
    files = set(store.ls_files())
    assert {"content/index.org", "blog/tuesday.org", "notes.org"} <= files
    assert not any(f.startswith(("memory/", ".beads/")) or f.endswith("_steps.jsonl") for f in files)
    site = site_dir(tmp_path / "data", "dev")
    published = sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.is_file())
    assert published == ["blog/tuesday.org", "content/index.org", "content/posts/a.org"]
    assert commit_and_push("dev", "again", data_dir=tmp_path / "data") == "nothing to commit (published 3)"
    (store.path / "content" / "posts" / "a.org").unlink()
    os.symlink("/etc/passwd", store.path / "content" / "leak")
    receipt = commit_and_push("dev", "remove a", data_dir=tmp_path / "data")
    assert receipt.endswith("(published 2)")
    assert not (site / "content" / "posts" / "a.org").exists() and not (site / "content" / "leak").exists()


def test_commit_and_push_pushes_to_origin(tmp_path, store):
    remote = bare(tmp_path)
    mirror(store, f"file://{remote}")
    populate(store.path)
    receipt = commit_and_push("dev", "publish", data_dir=tmp_path / "data")
    assert RECEIPT.match(receipt) and receipt.startswith(f"{store.head()[:7]} (pushed) (published 3)")
    assert plain_git(remote, "rev-parse", "refs/heads/main").strip() == store.head()


def test_commit_and_push_reports_a_refused_push(tmp_path, store):
    remote = bare(tmp_path)
    mirror(store, f"file://{remote}")
    upstream_commit(tmp_path, remote, "other.org", "* diverged\n", "someone else pushed")
    (store.path / "content").mkdir()
    (store.path / "content" / "x.org").write_text("* x\n")
    receipt = commit_and_push("dev", "local work", data_dir=tmp_path / "data")
    m = RECEIPT.match(receipt)
    assert m and m.group("reason") and "(push failed: " in receipt, receipt
    assert receipt.endswith("(published 1)")  # committed implies live, even when the push fails
    assert len(m.group("reason")) <= 120
    # an unreachable origin is a failed push too, not an exception
    plain_git(store.path, "remote", "set-url", "origin", f"file://{tmp_path}/gone.git")
    (store.path / "content" / "y.org").write_text("* y\n")
    assert "(push failed: " in commit_and_push("dev", "more", data_dir=tmp_path / "data")


# -- jj ---------------------------------------------------------------------------------------------
def test_jj_colocates_and_exposes_its_op_log(tmp_path, isolated_path):
    calls = tmp_path / "jj.calls"
    script = isolated_path / "jj"
    script.write_text(
        "#!/bin/sh\n"
        f"printf '%s|%s\\n' \"$PWD\" \"$*\" >> {calls}\n"
        'case "$*" in\n'
        '  *"git init --colocate"*) mkdir .jj ;;\n'
        '  *"op log"*) printf "@  abc123 workbooks-agent  snapshot working copy\\n○  000000 root()\\n" ;;\n'
        "esac\n"
    )
    script.chmod(0o755)
    gs = GitStore(tmp_path / "data", "dev")
    gs.commit_file("a.org", b"a\n", "first")
    assert (gs.path / ".jj").is_dir()
    assert calls.read_text().splitlines() == [f"{gs.path}|--no-pager --color=never git init --colocate"]
    text = jj.op_log(gs, limit=5)
    assert text.startswith("@  abc123 workbooks-agent")
    assert calls.read_text().splitlines()[-1] == f"{gs.path}|--no-pager --color=never --ignore-working-copy op log --limit 5"
    assert gs.commit_file("b.org", b"b\n", "second")  # git keeps working on its branch
    assert plain_git(gs.path, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    assert [r["msg"] for r in gs.log()] == ["second", "first"]
    assert len(calls.read_text().splitlines()) == 2  # colocated once, not on every use


def test_without_jj_nothing_changes(tmp_path, isolated_path):
    gs = GitStore(tmp_path / "data", "dev")
    gs.commit_file("a.org", b"a\n", "first")
    assert jj.op_log(gs) is None and not (gs.path / ".jj").exists()


# -- CLI ----------------------------------------------------------------------------------------------
def test_cli_mirror_repo_and_forge_message(tmp_path):
    data = tmp_path / "data"
    env = {"WB_DATA": str(data)}
    gs = GitStore(data, "dev")
    gs.commit_file("demo.org", b"* d\n", "deploy demo")
    remote = bare(tmp_path)
    p = run_wbx("mirror", f"file://{remote}", env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["head"] == gs.head()
    bindir = tmp_path / "only-git"
    bindir.mkdir()
    os.symlink(shutil.which("git"), bindir / "git")
    p = run_wbx("mirror", "github", env=dict(env, PATH=f"{bindir}:{os.path.dirname(os.path.realpath(__import__('sys').executable))}"))
    assert p.returncode == 4
    assert json.loads(p.stderr)["error"]["message"] == NO_FORGE_CLI
    (gs.path / "content").mkdir()
    (gs.path / "content" / "p.org").write_text("* p\n")
    p = run_wbx("repo", "commit", "from the cli", env=env)
    assert p.returncode == 0, p.stderr
    assert re.match(r"^[0-9a-f]{7} \(pushed\) \(published 1\)$", json.loads(p.stdout)["receipt"])
    p = run_wbx("repo", "log", env=env)
    assert [r["msg"] for r in json.loads(p.stdout)][:2] == ["from the cli", "deploy demo"]


def test_reconcile_with_unreachable_upstream_changes_nothing(tmp_path, store):
    plain_git(store.path, "remote", "add", "origin", f"file://{tmp_path}/nowhere.git")
    before = store.head()
    (store.path / "demo.org").write_text("* Demo\ndirty\n")
    status = plain_git(store.path, "status", "--porcelain", "-uall")
    with pytest.raises(Exception, match="fetch"):
        reconcile(store)
    assert store.head() == before and plain_git(store.path, "status", "--porcelain", "-uall") == status
    assert (store.path / "demo.org").read_text() == "* Demo\ndirty\n"


def test_http_entry_points_take_data_dir_tenant_and_body(tmp_path, store, monkeypatch):
    from workbooks.errors import BadRequest
    from workbooks.mirror import mirror_http

    with pytest.raises(BadRequest):
        mirror_http(tmp_path / "data", "dev", {"url": f"file://{bare(tmp_path)}"})  # a tenant cannot push into local paths
    with pytest.raises(BadRequest):
        mirror_http(tmp_path / "data", "dev", ["not", "an", "object"])
    monkeypatch.setenv("PATH", str(tmp_path))  # no forge CLI here
    with pytest.raises(ForgeUnavailable):
        mirror_http(tmp_path / "data", "dev", {"forge": "gitea"})


def test_events_are_logged_for_servers_without_secrets(store, http_git):
    import io

    import structlog

    from workbooks import log

    saved_cfg, saved_flag = structlog.get_config(), log._configured
    buf = io.StringIO()
    log.configure("control", stream=buf)
    try:
        server, remote, handler = http_git
        port = server.server_address[1]
        mirror(store, f"http://alice:s3cret%2Fp%40ss@127.0.0.1:{port}/site.git")
        with pytest.raises(PushFailed):
            mirror(store, f"http://alice:wrong-secret@127.0.0.1:{port}/site.git")
    finally:
        structlog.configure(**saved_cfg)
        log._configured = saved_flag
        structlog.contextvars.clear_contextvars()
    events = [json.loads(l) for l in buf.getvalue().splitlines()]
    names = [e["event"] for e in events]
    assert "mirror_pushed" in names and "mirror_push_failed" in names
    assert all(e["role"] == "control" and e["tenant"] == "dev" for e in events)
    assert "s3cret" not in buf.getvalue() and "wrong-secret" not in buf.getvalue() and "alice" not in buf.getvalue()
