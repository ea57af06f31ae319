"""Which functions a wasm module exports, read from its export section without compiling it.

A build's `kind` follows from its exports (`_start`: a WASI command; `run`: a reactor), and a
cache hit must not cost a compilation, so we walk the binary's sections (skipping all but the
export section by their sizes) instead of asking wasmtime.
"""

from __future__ import annotations

from typing import BinaryIO

MAGIC = b"\x00asm\x01\x00\x00\x00"
EXPORT_SECTION = 7
FUNC_KIND = 0


class NotWasm(ValueError):
    pass


def _uleb(f: BinaryIO) -> int:
    result = shift = 0
    while True:
        b = f.read(1)
        if not b:
            raise NotWasm("truncated module")
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 35:
            raise NotWasm("bad LEB128 number")


def func_exports(f: BinaryIO) -> set[str]:
    """The names of the exported functions; NotWasm when this is not a wasm core module."""
    if f.read(8) != MAGIC:
        raise NotWasm("not a wasm core module (bad magic or version)")
    names: set[str] = set()
    while True:
        head = f.read(1)
        if not head:
            return names
        size = _uleb(f)
        if head[0] != EXPORT_SECTION:
            f.seek(size, 1)
            continue
        body_start = f.tell()
        for _ in range(_uleb(f)):
            n = _uleb(f)
            name = f.read(n)
            if len(name) != n:
                raise NotWasm("truncated export name")
            kind = f.read(1)
            if not kind:
                raise NotWasm("truncated export")
            _uleb(f)
            if kind[0] == FUNC_KIND:
                names.add(name.decode("utf-8", "replace"))
        if f.tell() - body_start != size:
            raise NotWasm("export section size mismatch")


def kind_of(exports: set[str]) -> str | None:
    """"command" (has `_start`), "reactor" (has `run`), or None (runnable neither way)."""
    if "_start" in exports:
        return "command"
    if "run" in exports:
        return "reactor"
    return None
