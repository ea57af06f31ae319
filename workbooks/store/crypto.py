"""Secrets at rest: AES-256-GCM with a key from WB_SECRET_KEY or a 0600 key file in the data dir.

Each ciphertext is bound (as associated data) to its tenant and variable name, so a row copied
to another tenant or key does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from workbooks.errors import WorkbooksError

NONCE = 12


class SecretKeyError(WorkbooksError):
    code = "secret_key"
    http_status = 500


def _decode_key(text: str) -> bytes:
    """Accept 32 raw bytes as hex or base64; any other string is stretched with SHA-256."""
    t = text.strip()
    for dec in (bytes.fromhex, lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))):
        try:
            raw = dec(t)
        except (ValueError, binascii.Error):
            continue
        if len(raw) == 32:
            return raw
    if not t:
        raise SecretKeyError("WB_SECRET_KEY is empty")
    return hashlib.sha256(t.encode("utf-8")).digest()


def load_key(data_dir: str | os.PathLike) -> bytes:
    """The data key: WB_SECRET_KEY, else `<data>/.workbooks/secret.key` (created 0600, race-free)."""
    env = os.environ.get("WB_SECRET_KEY")
    if env is not None:
        return _decode_key(env)
    path = Path(data_dir) / ".workbooks" / "secret.key"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.urlsafe_b64encode(os.urandom(32)).decode() + "\n")
            fh.flush()
            from workbooks.fsutil import fsync_dir, fsync_fd

            fsync_fd(fh.fileno())

        fsync_dir(path.parent)  # the key's name survives a power cut too, not only its bytes
    for _ in range(50):  # another process may be writing it right now
        text = path.read_text()
        if text.endswith("\n"):
            return _decode_key(text)
        import time

        time.sleep(0.02)
    raise SecretKeyError(f"{path} is incomplete")


class SecretBox:
    def __init__(self, key: bytes):
        self._aead = AESGCM(key)

    @staticmethod
    def _aad(tenant: str, name: str) -> bytes:
        return f"wb-secret\0{tenant}\0{name}".encode()

    def seal(self, tenant: str, name: str, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + self._aead.encrypt(nonce, plaintext, self._aad(tenant, name))

    def open(self, tenant: str, name: str, blob: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:NONCE], blob[NONCE:], self._aad(tenant, name))
        except (InvalidTag, ValueError):
            raise SecretKeyError(
                f"secret {name!r} does not decrypt with this data key",
                hint="WB_SECRET_KEY (or .workbooks/secret.key) changed since the secret was written",
            ) from None
