"""Mirror a tenant's history to a forge: a plain `git push`, or provisioning through a forge CLI.

Credentials written into a URL (`https://user:token@host/…`) are taken out of it before git sees
it: the clean URL is what git is given and what may be stored as `origin`; the secret reaches
git only through a credential helper that reads it from this process's environment for the
duration of the push (never argv, never `.git/config`, never an error message).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from urllib.parse import unquote, urlsplit, urlunsplit

from workbooks.errors import BadRequest, NotFound, UsageError, WorkbooksError
from workbooks.gitstore import GitError, GitStore, redact
from workbooks.gitstore.events import emit

FORGE_CLIS = {"github": "gh", "gitlab": "glab", "gitea": "tea"}
NO_FORGE_CLI = "no forge CLI (gh/glab/tea) on PATH — create the remote yourself and use `wbx mirror URL`"
NO_RAD = "rad (the Radicle CLI) is not on PATH — install Radicle to federate; nothing was changed"
PUSH_TIMEOUT = 300.0
FORGE_TIMEOUT = 300.0
REMOTE_PROTOCOLS = ("https", "http", "ssh", "git")
CRED_HELPER = (
    "!f() { test \"$1\" = get || exit 0; "
    "printf 'username=%s\\npassword=%s\\n' \"$WB_MIRROR_USERNAME\" \"$WB_MIRROR_PASSWORD\"; }; f"
)


class ForgeUnavailable(WorkbooksError):
    code = "no_forge_cli"
    exit_code = 4
    http_status = 424


class PushFailed(WorkbooksError):
    code = "push_failed"
    retryable = True
    http_status = 502


def is_url(target: str) -> bool:
    """What `wbx mirror` treats as a URL: anything with `://` or starting `git@`."""
    return "://" in target or target.startswith("git@")


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(url without userinfo secrets, username, password). scp-like `git@host:path` is returned as is."""
    if "://" not in url:
        return url, None, None
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, sep, password = userinfo.partition(":")
    clean = urlunsplit((parts.scheme, hostport, parts.path, parts.query, parts.fragment))
    if not sep:
        # `ssh://git@host/…` names an SSH user, not a secret: keep it in the URL
        if parts.scheme.lower() in ("ssh", "git+ssh", "ssh+git"):
            return url, None, None
        return clean, unquote(user), None
    return clean, unquote(user), unquote(password)


def check_url(url: object, *, allow_local: bool) -> str:
    if not isinstance(url, str) or not is_url(url):
        raise UsageError(f"not a remote URL: {str(url)[:120]!r}", hint="a URL contains :// or starts with git@")
    if url.startswith("-") or any(c.isspace() or ord(c) < 32 for c in url) or len(url) > 2048:
        raise BadRequest("remote URL contains spaces, control characters or a leading '-'")
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        allowed = REMOTE_PROTOCOLS + (("file",) if allow_local else ())
        if scheme not in allowed:
            raise BadRequest(f"unsupported remote protocol {scheme!r}; use one of {', '.join(allowed)}")
    return url


def _protocol_opts(allow_local: bool) -> list[str]:
    opts = ["-c", "protocol.allow=never"]
    for proto in ("https", "http", "ssh", "git") + (("file",) if allow_local else ()):
        opts += ["-c", f"protocol.{proto}.allow=always"]
    return opts


def push_to(store: GitStore, url: str, refspecs: list[str], *, allow_local: bool = True) -> subprocess.CompletedProcess:
    """`git push` to `url` (credentials via the env-backed helper); raises PushFailed with a redacted reason."""
    check_url(url, allow_local=allow_local)
    clean, user, password = split_credentials(url)
    extra_env: dict = {}
    opts = _protocol_opts(allow_local)
    if user is not None or password is not None:
        extra_env = {"WB_MIRROR_USERNAME": user or "", "WB_MIRROR_PASSWORD": password or ""}
        opts += ["-c", f"credential.helper={CRED_HELPER}"]
    p = store.git(*opts, "push", "--porcelain", clean, *refspecs, check=False, timeout=PUSH_TIMEOUT, env_extra=extra_env)
    if p.returncode != 0:
        reason = push_reason(p, secrets=[password])
        emit("mirror_push_failed", "warning", tenant=store.tenant, url=redact(clean), reason=reason[:300])
        raise PushFailed(f"push to {redact(clean)} failed: {reason}")
    emit("mirror_pushed", tenant=store.tenant, url=redact(clean), head=store.head())
    return p


def push_reason(p: subprocess.CompletedProcess, secrets: list[str | None] = ()) -> str:
    text = (p.stderr or b"").decode("utf-8", "replace") + "\n" + (p.stdout or b"").decode("utf-8", "replace")
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.startswith(("To ", "Done"))]
    reason = redact(" ".join(lines)) or f"git exited {p.returncode}"
    for s in secrets:
        if s:
            reason = reason.replace(s, "***")
    return re.sub(r"\s+", " ", reason)


def mirror_url(store: GitStore, url: str, *, set_origin: bool = True, allow_local: bool = True) -> dict:
    """Push every branch and tag of the tenant repo to `url`; remember it as `origin` (without secrets) if none."""
    check_url(url, allow_local=allow_local)
    store.ensure()
    head = store.head()
    if head is None:
        raise NotFound(f"nothing to mirror: the {store.tenant} repo has no commits yet")
    push_to(store, url, ["refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*"], allow_local=allow_local)
    clean, _, _ = split_credentials(url)
    remote = None
    if set_origin:
        with store.locked():
            if store.remote_url("origin") is None:
                store.git("remote", "add", "origin", clean)
                store.flush_config()
                remote = "origin"
    return {"ok": True, "url": redact(clean), "head": head, "remote": remote}


def forge_env() -> dict:
    """The forge CLI keeps the user's own environment (its auth lives under HOME); the git it runs
    gets safe.directory=* and no hooks through GIT_CONFIG_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_CONFIG_")}
    pairs = [("safe.directory", "*"), ("core.hooksPath", "/dev/null")]
    env["GIT_CONFIG_COUNT"] = str(len(pairs))
    for i, (k, v) in enumerate(pairs):
        env[f"GIT_CONFIG_KEY_{i}"] = k
        env[f"GIT_CONFIG_VALUE_{i}"] = v
    return env


def forge_argv(forge: str, cli: str, name: str, store: GitStore) -> list[str]:
    if forge == "github":
        return [cli, "repo", "create", name, "--source", str(store.path), "--private", "--push", "--remote", "origin"]
    if forge == "gitlab":
        return [cli, "repo", "create", name, "--private", "--defaultBranch", "main"]
    return [cli, "repos", "create", "--name", name, "--private"]


_URL_IN_TEXT = re.compile(r"((?:https?|ssh|git|file)://[^\s'\"<>]+|git@[^\s'\"<>]+:[^\s'\"<>]+)")


def mirror_forge(store: GitStore, forge: str, *, name: str | None = None, allow_local: bool = True) -> dict:
    """Provision a remote through the forge's CLI (gh/glab/tea) the first time, then push to it."""
    if forge not in FORGE_CLIS:
        raise UsageError(f"unknown forge {forge!r}; use github, gitlab, gitea or a URL")
    cli = FORGE_CLIS[forge]
    exe = shutil.which(cli)
    if exe is None:
        raise ForgeUnavailable(NO_FORGE_CLI)
    store.ensure()
    if store.head() is None:
        raise NotFound(f"nothing to mirror: the {store.tenant} repo has no commits yet")
    repo_name = name or f"wb-{store.tenant}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", repo_name):
        raise BadRequest(f"invalid repository name {repo_name!r}")
    provisioned = None
    if store.remote_url("origin") is None:
        argv = forge_argv(forge, exe, repo_name, store)
        try:
            p = subprocess.run(argv, cwd=store.path, env=forge_env(), stdin=subprocess.DEVNULL, capture_output=True, timeout=FORGE_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise PushFailed(f"{cli} timed out after {FORGE_TIMEOUT:.0f}s") from None
        out = p.stdout.decode("utf-8", "replace")
        if p.returncode != 0:
            raise PushFailed(f"{cli} failed: {redact((p.stderr.decode('utf-8', 'replace') or out).strip())[:500]}")
        provisioned = [cli, *argv[1:]]
        emit("forge_provisioned", tenant=store.tenant, forge=forge, cli=cli)
        if store.remote_url("origin") is None:
            m = _URL_IN_TEXT.search(out) or _URL_IN_TEXT.search(p.stderr.decode("utf-8", "replace"))
            if not m:
                raise PushFailed(f"{cli} created the repository but printed no URL; add it with `wbx mirror URL`")
            url = m.group(1).rstrip(".,)")
            clean, _, _ = split_credentials(url)
            check_url(clean, allow_local=allow_local)
            with store.locked():
                if store.remote_url("origin") is None:
                    store.git("remote", "add", "origin", clean)
                    store.flush_config()
    origin = store.remote_url("origin")
    try:
        push_to(store, origin, ["refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*"], allow_local=allow_local)
    except GitError as e:
        raise PushFailed(e.message) from None
    return {"ok": True, "forge": forge, "url": redact(origin), "head": store.head(), "provisioned": provisioned}


def mirror(store: GitStore, target: str, *, allow_local: bool = True) -> dict:
    """`wbx mirror TARGET`: a URL is a plain push; github|gitlab|gitea provisions through its CLI."""
    if is_url(target):
        return mirror_url(store, target, allow_local=allow_local)
    return mirror_forge(store, target, allow_local=allow_local)


def federate(store: GitStore) -> dict:
    """`rad init` the tenant repo when Radicle is installed; say so plainly when it is not."""
    exe = shutil.which("rad")
    if exe is None:
        raise ForgeUnavailable(NO_RAD)
    store.ensure()
    if store.head() is None:
        raise NotFound(f"nothing to federate: the {store.tenant} repo has no commits yet")
    argv = [exe, "init", "--public", "--name", f"wb-{store.tenant}", "--default-branch", "main", "--no-confirm"]
    try:
        p = subprocess.run(argv, cwd=store.path, env=forge_env(), stdin=subprocess.DEVNULL, capture_output=True, timeout=FORGE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise PushFailed(f"rad init timed out after {FORGE_TIMEOUT:.0f}s") from None
    out = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
    if p.returncode != 0:
        raise PushFailed(f"rad init failed: {redact(out.strip())[:500]}")
    m = re.search(r"rad:[1-9A-HJ-NP-Za-km-z]+", out)
    return {"ok": True, "rid": m.group(0) if m else None, "output": out.strip()[-2000:]}
