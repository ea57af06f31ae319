"""The bundle manifest: every file's sha256 and size, the signer's DID, an Ed25519 signature.

The signature covers `workbooks-bundle-v1:` + the canonical JSON of the manifest without `sig`.
"""

from __future__ import annotations

import json
import re

from workbooks.ledger.identity import Identity, InvalidDid, public_key_from_did, verify_signature

MANIFEST = "manifest.json"
ENTRY_ORG = "workbook.org"
ENTRY_HTML = "workbook.html"
RESERVED = frozenset({MANIFEST, ENTRY_ORG, ENTRY_HTML})
DOMAIN = b"workbooks-bundle-v1:"


def _canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def signed_bytes(manifest: dict) -> bytes:
    return DOMAIN + _canonical({k: v for k, v in manifest.items() if k != "sig"})


def sign_manifest(manifest: dict, ident: Identity) -> dict:
    m = {k: v for k, v in manifest.items() if k != "sig"}
    m["sig"] = ident.sign(signed_bytes(m)).hex()
    return m


def check_manifest(manifest: object) -> str | None:
    """None when the manifest is well formed and its signature verifies; else the reason."""
    if not isinstance(manifest, dict) or manifest.get("v") != 1 or manifest.get("format") != "wbundle":
        return "manifest.json is not a v1 wbundle manifest"
    files = manifest.get("files")
    if not isinstance(files, dict) or ENTRY_ORG not in files or ENTRY_HTML not in files:
        return "manifest.json must list workbook.org and workbook.html"
    for name, meta in files.items():
        if not (
            isinstance(name, str)
            and isinstance(meta, dict)
            and isinstance(meta.get("sha256"), str)
            and re.fullmatch(r"[0-9a-f]{64}", meta["sha256"])
            and isinstance(meta.get("size"), int)
            and meta["size"] >= 0
        ):
            return f"manifest.json entry {str(name)[:80]!r} is malformed"
    did, sig = manifest.get("did"), manifest.get("sig")
    try:
        public_key_from_did(did)
    except InvalidDid as e:
        return f"manifest names an invalid DID: {e.message}"
    if not isinstance(sig, str) or not re.fullmatch(r"[0-9a-f]{128}", sig):
        return "manifest signature is missing or malformed"
    if not verify_signature(did, signed_bytes(manifest), bytes.fromhex(sig)):
        return f"manifest signature does not verify for {did} (forged or altered)"
    return None
