"""A git-backed store per tenant: every deploy is a commit with a real author.

Thin wrapper over the git CLI. Each call is a short-lived `git` subprocess that is waited for
(no GitPython object-database helpers, whose persistent `cat-file --batch` children leak in
long-lived servers). Every call passes `-c safe.directory=*` (data volumes owned by another uid
must not silently block commits), disables hooks, ignores system/global config, and takes the
author from the tenant: git's attribution is auth's WHO.

Durable before acknowledged: every call runs with `core.fsync=committed,index` and
`core.fsyncMethod=fsync` (git >= 2.36), so objects, refs and the index a commit wrote are on
stable storage when the call returns (`WB_FSYNC=0`, test-only, turns that off). A commit made by
`commit_files` names its paths (`git commit --only`), so whatever else sits staged — a deploy
killed during `git add` — never rides along in it.
"""

from __future__ import annotations

import os
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterator

from workbooks import private
from workbooks.errors import BadRequest, NotFound, WorkbooksError
from workbooks.fsutil import (InsufficientStorage, atomic_write, fsync_dir, fsync_enabled, fsync_file, fsync_tree,
                               stderr_says_no_space)
from workbooks.gitstore.lock import tenant_lock
from workbooks.gitstore.tenant import validate_tenant

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
LOCK_NAME = "workbooks.lock"
DEFAULT_TIMEOUT = 60.0

# Options on every git invocation. gc/maintenance are off because automatic gc may detach a
# background child that outlives the call.
GIT_OPTS = (
    "-c", "safe.directory=*",
    "-c", "core.hooksPath=/dev/null",
    "-c", "commit.gpgsign=false",
    "-c", "tag.gpgsign=false",
    "-c", "gc.auto=0",
    "-c", "maintenance.auto=false",
    "-c", "core.autocrlf=false",
    "-c", "core.quotepath=false",
    "-c", "init.defaultBranch=main",
    "-c", "credential.helper=",
)

DURABLE_OPTS = ("-c", "core.fsync=committed,index", "-c", "core.fsyncMethod=fsync")
NO_FSYNC_OPTS = ("-c", "core.fsync=none")


def durability_opts() -> tuple[str, ...]:
    """git's flush settings for this process (WB_FSYNC=0, test-only, turns them off)."""
    return DURABLE_OPTS if fsync_enabled() else NO_FSYNC_OPTS


def blob_id(data: bytes) -> str:
    """The git blob id of `data` (what `git hash-object` prints), without a process."""
    import hashlib

    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


GIT_META_FILES = frozenset({".gitignore", ".gitattributes", ".gitmodules"})
_REV_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/~^@{}-]{0,200}$")
_URL_CRED_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


class GitError(WorkbooksError):
    code = "git_failed"
    http_status = 500


class InvalidPath(BadRequest):
    code = "invalid_path"


def redact(text: str) -> str:
    """Strip `user:pass@` from any URL in text (git echoes URLs in its errors)."""
    return _URL_CRED_RE.sub(lambda m: m.group("scheme") + "***@", text)


def validate_relpath(path: object) -> str:
    """A repo-relative POSIX path that stays inside the work tree and is not private."""
    if not isinstance(path, str) or not path or "\0" in path or "\\" in path:
        raise InvalidPath(f"invalid path {str(path)[:120]!r}")
    if path.startswith("/"):
        raise InvalidPath(f"absolute path not allowed: {path[:120]!r}")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidPath(f"path must be plain segments without '.', '..' or '//': {path[:120]!r}")
    if any(p.lower() in private.CONTROL_DIRS for p in parts):
        raise InvalidPath(f"path inside a control directory: {path[:120]!r}")
    if parts[-1] in GIT_META_FILES:
        raise InvalidPath(f"{path[:120]!r}: git's own control files are written by workbooks, not deployed")
    if private.is_private(path):
        raise InvalidPath(
            f"{path[:120]!r} is private and never enters the repo",
            hint="private patterns: " + " ".join(private.PRIVATE_PATTERNS),
        )
    if len(path.encode()) > 1024:
        raise InvalidPath("path too long")
    return str(PurePosixPath(path))


def git_env(tenant: str, home: str | os.PathLike, extra: dict | None = None) -> dict:
    """The environment of every git call: tenant identity, no user/system config, no prompts."""
    keep = ("GIT_SSH", "GIT_SSH_COMMAND")  # how to reach a remote is the operator's choice, not config
    env = {k: v for k, v in os.environ.items() if (not k.startswith("GIT_") or k in keep) and k != "XDG_CONFIG_HOME"}
    email = f"{tenant}@workbooks.local"
    env.update(
        {
            "HOME": str(home),
            "XDG_CONFIG_HOME": os.path.join(str(home), ".config"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_AUTHOR_NAME": tenant,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": tenant,
            "GIT_COMMITTER_EMAIL": email,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_OPTIONAL_LOCKS": "0",
            "LC_ALL": "C",
            "LANG": "C",
        }
    )
    if extra:
        env.update(extra)
    return env


class GitStore:
    """The tenant's repo at `data_dir/<tenant>`, created on first use."""

    def __init__(self, data_dir: str | os.PathLike, tenant: str):
        self.tenant = validate_tenant(tenant)
        self.data_dir = Path(os.path.abspath(data_dir))
        self.path = self.data_dir / self.tenant
        self.git_dir = self.path / ".git"
        self.home = self.data_dir / ".workbooks" / "git-home"
        self._ready = False
        self._fanouts: set[str] = set()

    # -- plumbing -------------------------------------------------------------------------
    def env(self, extra: dict | None = None) -> dict:
        return git_env(self.tenant, self.home, extra)

    def git(
        self,
        *args: str,
        input: bytes | None = None,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        env_extra: dict | None = None,
    ) -> subprocess.CompletedProcess:
        """Run one git command in the work tree and wait for it (never leaves a child behind)."""
        cmd = ["git", *GIT_OPTS, *durability_opts(), *args]
        try:
            proc = subprocess.run(
                cmd,
                cwd=self.path,
                env=self.env(env_extra),
                input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise GitError(f"git {args[0] if args else ''} timed out after {timeout:.0f}s") from None
        if check and proc.returncode != 0:
            err = redact(proc.stderr.decode("utf-8", "replace").strip() or proc.stdout.decode("utf-8", "replace").strip())
            if stderr_says_no_space(err):
                raise InsufficientStorage(f"git {args[0]} failed: the data volume is full; nothing was written")
            raise GitError(f"git {args[0]} failed: {err[:500]}", data={"returncode": proc.returncode})
        return proc

    def out(self, *args: str, **kw) -> str:
        return self.git(*args, **kw).stdout.decode("utf-8", "replace")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive hold on this tenant's repo (threads and processes); re-entrant per thread."""
        self.git_dir.mkdir(parents=True, exist_ok=True)
        with tenant_lock(str(self.git_dir / LOCK_NAME)):
            yield

    def ensure(self) -> "GitStore":
        """Create the repo (and its private .gitignore) if missing. Idempotent, concurrency-safe."""
        if self._ready and (self.git_dir / "HEAD").exists():
            return self
        if self.path.is_symlink() or self.git_dir.is_symlink():
            raise GitError(f"tenant repo {self.path} is a symlink; refusing to use it")
        self.home.mkdir(parents=True, exist_ok=True)
        with self.locked():
            if not (self.git_dir / "HEAD").exists():
                self.git("init", "-q", "-b", "main", ".")
                fsync_tree(self.path)  # the new repo's files, directories and name in the data dir are durable
            self.write_gitignore()
        self._ready = True
        from workbooks.gitstore import jj  # optional second ledger; a no-op without jj on PATH

        jj.colocate(self)
        return self

    def write_gitignore(self) -> bool:
        """Write `.gitignore` from workbooks.private; True when it changed."""
        p = self.path / ".gitignore"
        text = private.gitignore_text().encode()
        try:
            if p.is_symlink():
                p.unlink()
            elif p.read_bytes() == text:
                return False
        except FileNotFoundError:
            pass
        self._atomic_write(p, text)
        return True

    def _atomic_write(self, dest: Path, data: bytes) -> None:
        # Work-tree files are not flushed: what is durable is git's blob (core.fsync) and the index
        # row; fsck puts a work-tree file that a power cut left behind back from the index.
        atomic_write(dest, data, tmp_dir=self.git_dir, mode=0o644, durable=False)

    def _safe_target(self, rel: str) -> Path:
        """The work-tree path for `rel`, refusing symlinked components (no writes outside)."""
        cur = self.path
        parts = rel.split("/")
        for comp in parts[:-1]:
            cur = cur / comp
            if cur.is_symlink():
                raise InvalidPath(f"{rel!r} passes through a symlink")
            if cur.exists() and not cur.is_dir():
                raise InvalidPath(f"{rel!r}: {comp!r} is a file, not a directory")
        target = cur / parts[-1]
        if target.is_symlink():
            raise InvalidPath(f"{rel!r} is a symlink")
        if target.is_dir():
            raise InvalidPath(f"{rel!r} is a directory")
        return target

    # -- the API W uses ---------------------------------------------------------------------
    def commit_file(self, path: str, data: bytes, message: str) -> str | None:
        """Write `path` and commit it; the new sha, or None when nothing changed."""
        return self.commit_files({path: data}, message)

    def commit_files(self, files: dict[str, bytes | None], message: str, *, assume_tracked: bool = False) -> str | None:
        """Write (bytes) or delete (None) several paths in one commit; None when nothing changed.

        `assume_tracked` (the caller's index says git has these paths): skip `git add` and let
        `git commit --only` take them from the work tree - one process and two index flushes less;
        when git does not know a path after all, it falls back to add + commit."""
        msg = _check_message(message)
        rels = [validate_relpath(p) for p in files]
        if not rels:
            raise BadRequest("no files to commit")
        self.ensure()
        with self.locked():
            self._note_fanouts()
            gitignore_changed = self.write_gitignore()
            written, deleted = [".gitignore"], []
            for rel, data in zip(rels, files.values()):
                target = self._safe_target(rel)
                if data is None:
                    if target.exists():
                        target.unlink()
                    deleted.append(rel)
                    continue
                if not isinstance(data, (bytes, bytearray)):
                    raise BadRequest(f"content of {rel!r} must be bytes")
                target.parent.mkdir(parents=True, exist_ok=True)
                self._atomic_write(target, bytes(data))
                written.append(rel)
            if assume_tracked and not gitignore_changed:  # .gitignore is tracked and unchanged: no new blob
                sha, known = self._commit_only_tracked(msg, written + deleted)
                if known:
                    return self._flushed(sha, [p for p in written + deleted if p != ".gitignore"])
            self.git("add", "--", *written)
            if deleted:
                self.git("rm", "-q", "-r", "--cached", "--ignore-unmatch", "--", *deleted)
            return self._flushed(self._commit_staged(msg, only=written + deleted), written + deleted)

    def delete_file(self, path: str, message: str) -> str:
        """Remove a tracked file and commit; NotFound when it is not in the repo."""
        msg = _check_message(message)
        rel = validate_relpath(path)
        self.ensure()
        with self.locked():
            tracked = self.git("ls-files", "--error-unmatch", "--", rel, check=False).returncode == 0
            if not tracked:
                raise NotFound(f"{rel} is not in the {self.tenant} repo")
            self._note_fanouts()
            self.git("rm", "-q", "-r", "--ignore-unmatch", "--", rel)
            sha = self._flushed(self._commit_staged(msg, only=[rel]), [rel])
            if sha is None:  # cannot happen for a tracked file, but never lie about it
                raise GitError(f"deleting {rel} produced no commit")
            return sha

    def _commit_only_tracked(self, message: str, paths: list[str]) -> tuple[str | None, bool]:
        """`git commit --only` straight from the work tree; (sha or None, False when git did not
        know a path - nothing was committed then)."""
        p = self.git("commit", "-q", "--no-verify", "-F", "-", "--only", "--", *paths, input=message.encode(),
                     check=False)
        if p.returncode == 0:
            return self._read_head_ref() or self.head_unlocked(), True
        err = p.stderr.decode("utf-8", "replace")
        if "did not match any file" in err:
            return None, False
        if self.git("diff", "--quiet", "HEAD", "--", *paths, check=False).returncode == 0:
            return None, True  # nothing to commit: the work tree already matches HEAD
        raise _commit_failed(p)

    def _commit_staged(self, message: str, only: list[str] | None = None) -> str | None:
        """Commit the index (only ever filled under the lock), or with `only` just those paths (and
        nothing else that may sit staged); None when there is nothing to commit."""
        spec = ["--only", "--", *only] if only else []
        p = self.git("commit", "-q", "--no-verify", "-F", "-", *spec, input=message.encode(), check=False)
        if p.returncode != 0:
            quiet = ["diff", "--cached", "--quiet"] + (["HEAD", "--", *only] if only and self.head_unlocked() else [])
            if self.git(*quiet, check=False).returncode == 0:
                return None  # "nothing to commit": an unchanged deploy is not an error
            raise _commit_failed(p)
        return self._read_head_ref() or self.head_unlocked()

    def _read_head_ref(self) -> str | None:
        """HEAD's sha from the loose ref file (saves a process per commit); None to fall back."""
        try:
            head = (self.git_dir / "HEAD").read_text().strip()
            if head.startswith("ref: "):
                ref = head[5:]
                if not ref.startswith("refs/") or ".." in ref:
                    return None
                head = (self.git_dir / ref).read_text().strip()
            return head if re.fullmatch(r"[0-9a-f]{40}", head) else None
        except OSError:
            return None

    def commit_all(self, message: str) -> str | None:
        """The agent's hand: .gitignore from Private, `git add -A`, commit; None when clean."""
        msg = _check_message(message)
        self.ensure()
        with self.locked():
            self._note_fanouts()
            self.write_gitignore()
            self.git("add", "-A")
            self._unstage_private()
            return self._flushed(self._commit_staged(msg), None)

    def _unstage_private(self) -> list[str]:
        """Belt and braces: whatever a nested ignore file un-ignored, Private never gets committed."""
        staged = self.git("diff", "--cached", "--name-only", "--no-renames", "-z", "--diff-filter=ACMRT").stdout
        names = [n.decode("utf-8", "surrogateescape") for n in staged.split(b"\0") if n]
        leaks = [n for n in names if private.is_private(n)]
        if leaks:
            self.git("rm", "-q", "--cached", "--", *leaks)
            from workbooks.gitstore.events import emit

            emit("private_paths_unstaged", "warning", tenant=self.tenant, paths=leaks[:20])
        return leaks

    def exists(self) -> bool:
        """True once the repo has been created (reads never create it; the first write does)."""
        return (self.git_dir / "HEAD").is_file()

    def head(self) -> str | None:
        if not self.exists():
            return None
        return self.head_unlocked()

    def head_unlocked(self) -> str | None:
        p = self.git("rev-parse", "-q", "--verify", "HEAD^{commit}", check=False)
        return p.stdout.decode().strip() if p.returncode == 0 else None

    def log(self, limit: int = 30, path: str | None = None) -> list[dict]:
        """Newest first: [{"sha", "ts", "author", "msg"}] (msg = the subject line)."""
        limit = max(1, min(int(limit), 10_000))
        if self.head() is None:
            return []
        spec = ["--", validate_relpath(path)] if path else []
        raw = self.git("log", f"-n{limit}", "--format=%H%x1f%ct%x1f%an%x1f%s%x1e", *spec).stdout
        rows = []
        for rec in raw.split(b"\x1e"):
            rec = rec.strip(b"\n")
            if not rec:
                continue
            sha, ts, author, msg = rec.decode("utf-8", "replace").split("\x1f", 3)
            rows.append({"sha": sha, "ts": int(ts), "author": author, "msg": msg})
        return rows

    def diff_last(self) -> str:
        """`git diff HEAD~1 HEAD` (against the empty tree for the first commit); "" when empty."""
        if self.head() is None:
            return ""
        parent = self.git("rev-parse", "-q", "--verify", "HEAD~1^{commit}", check=False)
        base = parent.stdout.decode().strip() if parent.returncode == 0 else EMPTY_TREE
        return self.out("diff", "--no-color", "--no-ext-diff", base, "HEAD")

    def blob_at(self, path: str, rev: str = "HEAD") -> str | None:
        """The blob id of `path` at `rev` (None when it is not there), without reading the bytes."""
        rel = validate_relpath(path)
        if not _REV_RE.fullmatch(rev) or ".." in rev or not self.exists():
            return None
        # one git call: with no commit yet, `rev:path` simply does not verify
        p = self.git("rev-parse", "-q", "--verify", f"{rev}:{rel}", check=False)
        return p.stdout.decode().strip() if p.returncode == 0 else None

    def read_file(self, path: str, rev: str = "HEAD") -> bytes | None:
        """The bytes of `path` at `rev`, or None when it does not exist there."""
        if not isinstance(rev, str) or not _REV_RE.fullmatch(rev) or ".." in rev:
            raise BadRequest(f"invalid revision {str(rev)[:80]!r}")
        rel = validate_relpath(path)
        if self.head() is None:
            return None
        p = self.git("cat-file", "blob", f"{rev}:{rel}", check=False)
        return p.stdout if p.returncode == 0 else None

    # -- more for the trust work ---------------------------------------------------------------
    def ls_files(self) -> list[str]:
        if not self.exists():
            return []
        raw = self.git("ls-files", "-z").stdout
        return [p.decode("utf-8", "surrogateescape") for p in raw.split(b"\0") if p]

    def remote_url(self, name: str = "origin") -> str | None:
        if not self.exists():
            return None
        p = self.git("remote", "get-url", name, check=False)
        return p.stdout.decode().strip() if p.returncode == 0 else None

    def is_dirty(self) -> bool:
        if not self.exists():
            return False
        return bool(self.git("status", "--porcelain", "-uall").stdout.strip())

    # -- crash safety: stale locks, the staging index (used by gitstore.fsck) -------------------
    # -- directory entries: git fsyncs the files it writes, never the directories naming them --
    def _flushed(self, sha: str | None, paths: list[str] | None) -> str | None:
        """After a commit: make the names of its new objects and of the moved ref durable (fsync of
        the object fan-out directories, `objects/`, the ref's directory and `.git`)."""
        if sha is None or not fsync_enabled():
            return sha
        dirs = self._commit_object_dirs(sha, paths)
        for d in sorted(dirs):
            fsync_dir(d)
        if any(d.name not in self._fanouts for d in dirs):  # a fan-out directory is new: its name too
            fsync_dir(self.git_dir / "objects")
        self.flush_ref_dirs()
        return sha

    def flush_all_dirs(self) -> None:
        """After git wrote objects and refs we cannot enumerate (a fetch and merge): every object and
        ref directory, so their names survive a power cut."""
        if not fsync_enabled():
            return
        objects = self.git_dir / "objects"
        for d in [*sorted(p for p in objects.glob("??") if p.is_dir()), objects / "pack", objects]:
            if d.is_dir():
                fsync_dir(d)
        for dirpath, _dirs, _files in os.walk(self.git_dir / "refs"):
            fsync_dir(dirpath)
        fsync_dir(self.git_dir)

    def _note_fanouts(self) -> None:
        """Before a commit: which object fan-out directories exist (a new one's name needs a flush)."""
        try:
            self._fanouts = set(os.listdir(self.git_dir / "objects"))
        except OSError:
            self._fanouts = set()

    def branch_ref(self) -> str:
        """The branch HEAD points at (`refs/heads/...`, read from `.git/HEAD`; `refs/heads/main` when
        HEAD is detached or unreadable)."""
        try:
            head = (self.git_dir / "HEAD").read_text().strip()
        except OSError:
            head = ""
        if head.startswith("ref: refs/heads/") and ".." not in head:
            return head[5:]
        return "refs/heads/main"

    def flush_ref_dirs(self) -> None:
        """The branch ref's directory, after the ref moved (git renamed `<ref>.lock` over it). The
        staging index needs no such flush: it is derived, and rebuilt from HEAD on reconcile."""
        if not fsync_enabled():
            return
        ref_dir = (self.git_dir / self.branch_ref()).parent
        if ref_dir.is_dir():
            fsync_dir(ref_dir)

    def _loose(self, sha: str) -> bytes | None:
        import zlib

        try:
            raw = zlib.decompress((self.git_dir / "objects" / sha[:2] / sha[2:]).read_bytes())
        except (OSError, zlib.error):
            return None
        return raw.split(b"\0", 1)[1] if b"\0" in raw else None

    def _tree(self, sha: str) -> dict[str, str]:
        body = self._loose(sha) or b""
        out, i = {}, 0
        while i < len(body):
            sp = body.index(b" ", i)
            nul = body.index(b"\0", sp)
            out[body[sp + 1:nul].decode("utf-8", "surrogateescape")] = body[nul + 1:nul + 21].hex()
            i = nul + 21
        return out

    def _commit_object_dirs(self, sha: str, paths: list[str] | None) -> set[Path]:
        """The fan-out directories holding the commit's loose objects on the way to `paths` (all
        fan-out directories when the paths are not known)."""
        objects = self.git_dir / "objects"
        if paths is None:
            return {p for p in objects.glob("??") if p.is_dir()}
        commit = self._loose(sha)
        if commit is None or not commit.startswith(b"tree "):
            return {p for p in objects.glob("??") if p.is_dir()}
        root = commit[5:45].decode()
        shas = {sha, root}
        for rel in paths:
            tree = root
            parts = rel.split("/")
            for comp in parts[:-1]:
                tree = self._tree(tree).get(comp)
                if tree is None:
                    break
                shas.add(tree)
            else:
                leaf = self._tree(tree).get(parts[-1])
                if leaf:
                    shas.add(leaf)
        return {objects / s[:2] for s in shas if (objects / s[:2] / s[2:]).exists()}

    def git_lock_files(self) -> list[Path]:
        """git's own lock files in this repo (index.lock, HEAD.lock, refs/**/*.lock)."""
        found = [p for p in (self.git_dir / "index.lock", self.git_dir / "HEAD.lock") if p.exists()]
        refs = self.git_dir / "refs"
        if refs.is_dir():
            found += [p for p in refs.rglob("*.lock") if p.is_file()]
        return found

    def clear_stale_locks(self, wait_s: float = 3.0) -> list[str]:
        """Under our lock, a git lock file belongs to a git child of a writer that died: wait for it
        to finish (it holds the lock while it runs), then remove what is left (its git was killed too)."""
        import time

        deadline = time.monotonic() + wait_s
        while self.git_lock_files() and time.monotonic() < deadline and self._git_running_here() is not False:
            time.sleep(0.02)
        removed = []
        for p in self.git_lock_files():
            try:
                p.unlink()
                removed.append(str(p.relative_to(self.git_dir)))
            except FileNotFoundError:
                pass
        return removed

    def _git_running_here(self) -> bool | None:
        """Whether a git process works in this repo (its cwd); None when /proc cannot tell."""
        here = str(self.path)
        try:
            pids = [d for d in os.listdir("/proc") if d.isdigit()]
        except OSError:
            return None
        for pid in pids:
            try:
                if os.readlink(f"/proc/{pid}/cwd") != here:
                    continue
                with open(f"/proc/{pid}/comm", "rb") as fh:
                    if fh.read().strip().startswith(b"git"):
                        return True
            except OSError:
                continue
        return False

    def flush_config(self) -> None:
        """Flush `.git/config` (mirror state: the remote) - git's core.fsync does not cover config."""
        fsync_file(self.git_dir / "config")
        fsync_dir(self.git_dir)

    def reset_index(self) -> None:
        """Make git's staging index exactly HEAD's tree (the work tree is left alone)."""
        args = ("read-tree", "--empty") if self.head_unlocked() is None else ("read-tree", "HEAD")
        try:
            self.git(*args)
        except GitError:  # an index torn by a power cut (it is derived: HEAD rebuilds it)
            (self.git_dir / "index").unlink(missing_ok=True)
            self.git(*args)

    def tree_blobs(self, rev: str = "HEAD", suffix: str = "") -> dict[str, str]:
        """{path: blob id} of the files at `rev` (top level and below), optionally only `*suffix`."""
        if self.head_unlocked() is None:
            return {}
        raw = self.git("ls-tree", "-r", "-z", "--full-tree", rev).stdout
        out = {}
        for rec in raw.split(b"\0"):
            if not rec:
                continue
            meta, _, name = rec.partition(b"\t")
            parts = meta.split()
            if len(parts) == 3 and parts[1] == b"blob":
                path = name.decode("utf-8", "surrogateescape")
                if path.endswith(suffix):
                    out[path] = parts[2].decode()
        return out


def _commit_failed(p: subprocess.CompletedProcess) -> WorkbooksError:
    """The error of a failed `git commit`: 507 when the volume is full, else a GitError with its output."""
    err = redact(p.stderr.decode("utf-8", "replace").strip() or p.stdout.decode("utf-8", "replace").strip())
    if stderr_says_no_space(err):
        return InsufficientStorage("git commit failed: the data volume is full; nothing was committed")
    return GitError(f"git commit failed: {err[:500]}")


def _check_message(message: object) -> str:
    if not isinstance(message, str) or not message.strip():
        raise BadRequest("a commit message is required")
    msg = message.replace("\0", "")
    if len(msg) > 10_000:
        raise BadRequest("commit message too long (max 10000 chars)")
    return msg if msg.endswith("\n") else msg + "\n"
