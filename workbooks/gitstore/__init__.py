"""Per-tenant git repos: every deploy a commit, authored by the tenant (see store.py)."""

from workbooks.gitstore.store import GitError, GitStore, InvalidPath, git_env, redact, validate_relpath
from workbooks.gitstore.tenant import InvalidTenant, validate_tenant

__all__ = [
    "GitError",
    "GitStore",
    "InvalidPath",
    "InvalidTenant",
    "git_env",
    "redact",
    "validate_relpath",
    "validate_tenant",
]
