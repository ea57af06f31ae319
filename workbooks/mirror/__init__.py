"""Leaving and coming back: mirror/federate pushes, reconcile pulls, the agent's git hand."""

from workbooks.mirror.api import mirror_request
from workbooks.mirror.hand import commit_and_push, publish_site, site_dir
from workbooks.mirror.push import NO_FORGE_CLI, ForgeUnavailable, PushFailed, federate, mirror, mirror_forge, mirror_url
from workbooks.mirror.reconcile import SNAPSHOT_MESSAGE, reconcile

# POST /api/mirror/:tenant — mirror_http(data_dir, tenant, body) -> {"ok", "url", "head", ...}
mirror_http = mirror_request

__all__ = [
    "mirror_http",
    "mirror_request",
    "NO_FORGE_CLI",
    "SNAPSHOT_MESSAGE",
    "ForgeUnavailable",
    "PushFailed",
    "commit_and_push",
    "federate",
    "mirror",
    "mirror_forge",
    "mirror_url",
    "publish_site",
    "reconcile",
    "site_dir",
]
