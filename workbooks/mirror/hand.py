"""The agent's git hand: the agent supplies a message, the host decides every word of the command.

`commit_and_push(tenant, message)` writes `.gitignore` from workbooks.private, `git add -A`,
commits with hooks off, pushes to `origin` when there is one, then publishes the committed
`content/**` and `blog/**` to the live site, so committed always implies live. The receipt is
one of exactly:

    "<sha> (pushed) (published N)"
    "<sha> (committed; no origin remote to push) (published N)"
    "<sha> (push failed: <reason, at most 120 chars>) (published N)"
    "nothing to commit (published N)"          (clean tree: nothing committed, site re-synced)

The published site is the tenant's `.workbooks/site/` (private, never committed): a copy of
exactly what HEAD holds under content/ and blog/, read by the public plane.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from workbooks import private
from workbooks.gitstore import GitStore
from workbooks.gitstore.events import emit
from workbooks.mirror.push import PUSH_TIMEOUT, _protocol_opts, push_reason

PUBLISHED_DIRS = ("content", "blog")
REASON_MAX = 120


def default_data_dir() -> str:
    return os.environ.get("WB_DATA") or os.path.abspath("wb-data")


def site_dir(data_dir: str | os.PathLike, tenant: str) -> Path:
    """Where a tenant's published content/** and blog/** live for the public plane."""
    return GitStore(data_dir, tenant).path / ".workbooks" / "site"


def publish_site(store: GitStore) -> int:
    """Mirror HEAD's content/** and blog/** into the site folder; the number of files published."""
    site = store.path / ".workbooks" / "site"
    site.parent.mkdir(parents=True, exist_ok=True)
    with store.locked():
        present = []
        if store.head_unlocked() is not None:
            listing = store.git("ls-tree", "-z", "--name-only", "HEAD", "--", *PUBLISHED_DIRS).stdout
            present = [n.decode() for n in listing.split(b"\0") if n]
        staging = Path(tempfile.mkdtemp(prefix=".site-", dir=str(site.parent)))
        count = 0
        try:
            if present:
                tar_bytes = store.git("archive", "--format=tar", "HEAD", "--", *present, timeout=PUSH_TIMEOUT).stdout
                with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tf:
                    for member in tf:
                        if not member.isfile():
                            continue  # directories are implied; symlinks are never published
                        name = member.name
                        parts = name.split("/")
                        if name.startswith("/") or any(p in ("", ".", "..") for p in parts) or private.is_private(name):
                            continue
                        if parts[0] not in PUBLISHED_DIRS:
                            continue
                        target = staging / name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        src = tf.extractfile(member)
                        with open(target, "wb") as out:
                            shutil.copyfileobj(src, out)
                        count += 1
            old = None
            if site.exists():
                old = site.with_name(f".site-old-{os.getpid()}")
                os.rename(site, old)
            os.rename(staging, site)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return count


def commit_and_push(tenant: str, message: str, *, data_dir: str | os.PathLike | None = None) -> str:
    store = GitStore(data_dir or default_data_dir(), tenant)
    sha = store.commit_all(message)
    if sha is None:
        return f"nothing to commit (published {publish_site(store)})"
    short = sha[:7]
    if store.remote_url("origin") is None:
        status = "(committed; no origin remote to push)"
    else:
        branch = store.git("symbolic-ref", "-q", "--short", "HEAD", check=False).stdout.decode().strip() or "main"
        p = store.git(
            *_protocol_opts(True), "push", "--porcelain", "origin", f"HEAD:refs/heads/{branch}", check=False, timeout=PUSH_TIMEOUT
        )
        if p.returncode == 0:
            status = "(pushed)"
        else:
            status = f"(push failed: {push_reason(p)[:REASON_MAX]})"
    published = publish_site(store)
    receipt = f"{short} {status} (published {published})"
    emit("agent_commit", tenant=tenant, receipt=receipt)
    return receipt
