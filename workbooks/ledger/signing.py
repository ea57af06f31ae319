"""Detached file signatures: `FILE.sig` is JSON {v, alg, did, file, sha256, sig, ts}.

The signature is Ed25519 over `workbooks-file-v1:<sha256 hex of the file>`, so a file can be
renamed without breaking it but not changed by one byte, and the domain prefix keeps a file
signature from ever being mistaken for a ledger or manifest signature.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

from workbooks.errors import NotFound, VerificationFailed, WorkbooksError
from workbooks.ledger.identity import ALG, Identity, InvalidDid, public_key_from_did, verify_signature

SIG_SUFFIX = ".sig"
DOMAIN = b"workbooks-file-v1:"
MAX_SIG_FILE = 64 * 1024


def file_message(sha256_hex: str) -> bytes:
    return DOMAIN + sha256_hex.encode("ascii")


def hash_file(path: str | os.PathLike) -> str:
    p = str(path)
    if p == "-":
        raise NotFound("sign/verify want a real file path, not stdin (-)", hint="write the document to a file first")
    try:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except FileNotFoundError:
        raise NotFound(f"read {p}: No such file or directory") from None
    except IsADirectoryError:
        raise NotFound(f"read {p}: Is a directory") from None
    except PermissionError:
        raise WorkbooksError(f"read {p}: Permission denied") from None


def sig_path_for(path: str | os.PathLike) -> Path:
    return Path(str(path) + SIG_SUFFIX)


def sign_file(path: str | os.PathLike, ident: Identity, out: str | os.PathLike | None = None) -> dict:
    sha = hash_file(path)
    doc = {
        "v": 1,
        "alg": ALG,
        "did": ident.did,
        "file": os.path.basename(str(path)),
        "sha256": sha,
        "sig": ident.sign(file_message(sha)).hex(),
        "ts": int(time.time()),
    }
    dest = Path(out) if out else sig_path_for(path)
    if dest.is_symlink():
        raise WorkbooksError(f"{dest} is a symlink; refusing to write a signature through it")
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(doc, sort_keys=True, indent=2) + "\n")
    os.replace(tmp, dest)
    return {**doc, "sig_file": str(dest)}


def verify_file(path: str | os.PathLike, sig: str | os.PathLike | None = None, expected_did: str | None = None) -> dict:
    """Check `path` against its detached signature; VerificationFailed (exit 5) on any mismatch."""
    sha = hash_file(path)
    sp = Path(sig) if sig else sig_path_for(path)
    try:
        with open(sp, "rb") as fh:
            raw = fh.read(MAX_SIG_FILE + 1)
    except FileNotFoundError:
        raise VerificationFailed(f"no signature: {sp} does not exist", hint=f"sign it first with `wbx sign {path}`") from None
    if len(raw) > MAX_SIG_FILE:
        raise VerificationFailed(f"{sp} is not a signature file (too large)")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise VerificationFailed(f"{sp} is not a signature file (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("alg") != ALG or not isinstance(doc.get("did"), str) or not isinstance(doc.get("sig"), str):
        raise VerificationFailed(f"{sp} is not an {ALG} workbooks signature")
    did = doc["did"]
    try:
        public_key_from_did(did)
    except InvalidDid as e:
        raise VerificationFailed(f"signature names an invalid DID: {e.message}") from None
    result = {"valid": False, "file": str(path), "sig_file": str(sp), "did": did, "sha256": sha}
    if doc.get("sha256") != sha:
        raise VerificationFailed(f"{path} has changed since it was signed (sha256 {sha[:16]}… ≠ signed {str(doc.get('sha256'))[:16]}…)", data=result)
    if not re.fullmatch(r"[0-9a-f]{128}", doc["sig"]) or not verify_signature(did, file_message(sha), bytes.fromhex(doc["sig"])):
        raise VerificationFailed(f"signature in {sp} does not verify for {did} (forged or altered)", data=result)
    if expected_did is not None and did != expected_did:
        raise VerificationFailed(f"signed by {did}, not by the expected {expected_did}", data=result)
    result["valid"] = True
    return result
