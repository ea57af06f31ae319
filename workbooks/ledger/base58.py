"""Base58 (Bitcoin alphabet), as used by multibase `z` (base58btc). Written here, no dependency."""

from __future__ import annotations

ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}


class Base58Error(ValueError):
    pass


def b58encode(data: bytes) -> str:
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(ALPHABET[r])
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str, max_len: int = 1024) -> bytes:
    if not isinstance(text, str):
        raise Base58Error("base58 input must be text")
    if len(text) > max_len:
        raise Base58Error("base58 input too long")
    n = 0
    for ch in text:
        v = _INDEX.get(ch)
        if v is None:
            raise Base58Error(f"character {ch!r} is not in the base58btc alphabet")
        n = n * 58 + v
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body
