"""Per-tenant Ed25519 identities and their did:key names.

Each tenant's key lives at `$WB_DATA/.workbooks/<tenant>.ed25519` (a raw 32-byte seed, mode
0600; `.workbooks/` is private, so it is never committed nor bundled). The primary tenant's key
is derived from `WB_SIGNING_KEY` (a 32-byte seed in hex) so its DID survives a fresh box.
`did:key:z…` is multibase base58btc of the multicodec prefix 0xed01 followed by the public key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from workbooks.errors import BadRequest, WorkbooksError
from workbooks.gitstore.tenant import validate_tenant
from workbooks.ledger.base58 import Base58Error, b58decode, b58encode

ED25519_MULTICODEC = b"\xed\x01"
DID_KEY_PREFIX = "did:key:"
ALG = "Ed25519"
KEY_DIR = ".workbooks"


class InvalidDid(BadRequest):
    code = "invalid_did"


class KeyError_(WorkbooksError):
    code = "key_error"


def did_from_public_key(public: bytes) -> str:
    if len(public) != 32:
        raise InvalidDid("an Ed25519 public key is 32 bytes")
    return DID_KEY_PREFIX + "z" + b58encode(ED25519_MULTICODEC + public)


def public_key_from_did(did: object) -> bytes:
    """The 32-byte Ed25519 key named by `did`; InvalidDid for anything else."""
    if not isinstance(did, str) or not did.startswith(DID_KEY_PREFIX):
        raise InvalidDid(f"not a did:key: {str(did)[:80]!r}")
    mb = did[len(DID_KEY_PREFIX):]
    if not mb.startswith("z"):
        raise InvalidDid("did:key must use multibase base58btc ('z' prefix)")
    try:
        raw = b58decode(mb[1:], max_len=128)
    except Base58Error as e:
        raise InvalidDid(f"bad did:key encoding: {e}") from None
    if raw[:2] != ED25519_MULTICODEC:
        raise InvalidDid("did:key is not an Ed25519 key (multicodec prefix is not 0xed01)")
    if len(raw) != 34:
        raise InvalidDid(f"did:key carries {len(raw) - 2} key bytes, an Ed25519 key is 32")
    if b58encode(raw) != mb[1:]:  # e.g. superfluous leading '1's: one key, one spelling
        raise InvalidDid("did:key is not canonically encoded")
    return raw[2:]


def verify_signature(did: str, message: bytes, signature: bytes) -> bool:
    """True when `signature` is `did`'s Ed25519 signature over `message` (False on any malformation)."""
    try:
        pub = Ed25519PublicKey.from_public_bytes(public_key_from_did(did))
        if not isinstance(signature, (bytes, bytearray)) or len(signature) != 64:
            return False
        pub.verify(bytes(signature), message)
        return True
    except (InvalidDid, InvalidSignature, ValueError):
        return False


@dataclass(frozen=True)
class Identity:
    tenant: str
    private_key: Ed25519PrivateKey
    source: str  # "WB_SIGNING_KEY" or the key file path

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def did(self) -> str:
        return did_from_public_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def __repr__(self) -> str:  # never print key material
        return f"Identity(tenant={self.tenant!r}, did={self.did!r}, source={self.source!r})"


def identity_from_seed(tenant: str, seed: bytes, source: str = "seed") -> Identity:
    if len(seed) != 32:
        raise KeyError_("an Ed25519 seed is 32 bytes")
    return Identity(tenant, Ed25519PrivateKey.from_private_bytes(seed), source)


def primary_tenant() -> str:
    """The tenant whose key comes from WB_SIGNING_KEY (WB_PRIMARY_TENANT, default `dev`)."""
    return os.environ.get("WB_PRIMARY_TENANT") or "dev"


def key_path(data_dir: str | os.PathLike, tenant: str) -> Path:
    return Path(data_dir) / KEY_DIR / f"{validate_tenant(tenant)}.ed25519"


def load_identity(data_dir: str | os.PathLike, tenant: str) -> Identity:
    """The tenant's identity: from WB_SIGNING_KEY for the primary tenant, else its key file (created once)."""
    validate_tenant(tenant)
    env_seed = os.environ.get("WB_SIGNING_KEY", "").strip()
    if env_seed and tenant == primary_tenant():
        try:
            seed = bytes.fromhex(env_seed)
        except ValueError:
            seed = b""
        if len(seed) != 32:
            raise KeyError_(
                "WB_SIGNING_KEY must be 64 hex characters (a 32-byte Ed25519 seed)",
                hint="generate one with: python3 -c 'import secrets; print(secrets.token_hex(32))'",
            )
        return identity_from_seed(tenant, seed, "WB_SIGNING_KEY")
    path = key_path(data_dir, tenant)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.chmod(path.parent, 0o700)
    except OSError:
        pass
    seed = _read_or_create_seed(path)
    return identity_from_seed(tenant, seed, str(path))


def _read_or_create_seed(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return _read_seed(path)
    seed = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    try:
        os.write(fd, seed)
        from workbooks.fsutil import fsync_dir, fsync_fd

        fsync_fd(fd)
    finally:
        os.close(fd)

    fsync_dir(path.parent)  # the key's name survives a power cut too, not only its bytes
    return seed


def _read_seed(path: Path) -> bytes:
    for _ in range(50):  # another process may be between O_EXCL create and write
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise KeyError_(f"cannot read key {path}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o077:
                os.fchmod(fd, 0o600)  # repair: a key readable by others is tightened, never used loosely
            data = os.read(fd, 64)
        finally:
            os.close(fd)
        if len(data) == 32:
            return data
        if data:
            raise KeyError_(f"key file {path} is corrupt ({len(data)} bytes, expected 32)")
        import time

        time.sleep(0.01)
    raise KeyError_(f"key file {path} is empty")
