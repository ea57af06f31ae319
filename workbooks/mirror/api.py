"""Plain functions for the control plane's `POST /api/mirror/:tenant`.

Body `{"url": "https://…"}` (a plain push) or `{"forge": "github"|"gitlab"|"gitea"}`. Over HTTP
local transports are refused (`file://`, paths): a tenant must not push into another tenant's
repo on this box. Errors are WorkbooksError subclasses carrying http_status.
"""

from __future__ import annotations

import os

from workbooks.errors import BadRequest
from workbooks.gitstore import GitStore
from workbooks.mirror.push import mirror_forge, mirror_url


def mirror_request(data_dir: str | os.PathLike, tenant: str, body: object) -> dict:
    """→ {"ok": true, "url": <remote without secrets>, "head": sha, ...}"""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object with \"url\" or \"forge\"")
    store = GitStore(data_dir, tenant)
    url, forge = body.get("url"), body.get("forge")
    if (url is None) == (forge is None):
        raise BadRequest("give exactly one of \"url\" or \"forge\"")
    if url is not None:
        if not isinstance(url, str):
            raise BadRequest("\"url\" must be a string")
        return mirror_url(store, url, allow_local=False)
    if not isinstance(forge, str):
        raise BadRequest("\"forge\" must be a string")
    return mirror_forge(store, forge, allow_local=False)
