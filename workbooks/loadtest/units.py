"""Durations, rates and byte sizes as people write them in plans and flags ("250ms", "1m30s",
"24000/m", "8KiB"), parsed once into seconds, requests per second and bytes.

Every bad value is a `UsageError` that names the value (and the key, when the caller says which)
and whose hint lists what is accepted, so a plan file with a typo fails before any load is sent.
"""

from __future__ import annotations

import math
import re

from workbooks.errors import UsageError

DURATION_HINT = "a number of seconds, or a number with a unit: 500us, 250ms, 10s, 1.5s, 2m, 1m30s, 2h"
RATE_HINT = "requests per second: 400, 400/s, 24000/m (per minute), 36000/h (per hour); not negative"
BYTES_HINT = "a byte count, or a number with a unit: 512B, 8KB (1000), 8KiB (1024), 1MB, 1MiB, 1GiB"

_DURATION_UNITS = {"us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0,
                   "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?\s*(us|µs|μs|ms|min|s|m|h)", re.IGNORECASE)
_NUMBER = re.compile(r"[+]?(\d+(?:\.\d*)?|\.\d+)(e[+-]?\d+)?", re.IGNORECASE)
_RATE_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 1 / 60, "min": 1 / 60, "h": 1 / 3600}
_BYTE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def _label(what: str | None, value) -> str:
    return f"{what} {value!r}" if what else repr(value)


def _plain_number(value, what: str | None, hint: str) -> float | None:
    """A real int/float (not a bool) as float, else None; NaN, infinities and negatives refused."""
    if isinstance(value, bool):
        raise UsageError(f"{_label(what, value)}: a boolean is not a number", hint=hint)
    if isinstance(value, (int, float)):
        x = float(value)
        if not math.isfinite(x) or x < 0:
            raise UsageError(f"{_label(what, value)}: must be a finite number >= 0", hint=hint)
        return x
    return None


def _text(value, what: str | None, hint: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{_label(what, value)}: expected a string or a number, got {type(value).__name__}",
                         hint=hint)
    if len(value) > 64:
        raise UsageError(f"{_label(what, value[:64] + '…')}: too long", hint=hint)
    return value.strip()


def parse_duration(value, what: str | None = None) -> float:
    """`"250ms"|"10s"|"1m30s"|"2h"|"1.5s"|3` -> seconds (a bare number is seconds)."""
    x = _plain_number(value, what, DURATION_HINT)
    if x is not None:
        return x
    text = _text(value, what, DURATION_HINT)
    if _NUMBER.fullmatch(text):
        x = float(text)
    else:
        pos, x, parts = 0, 0.0, 0
        compact = text.replace(" ", "")
        while pos < len(compact):
            m = _DURATION_PART.match(compact, pos)
            if not m:
                raise UsageError(f"{_label(what, value)} is not a duration", hint=DURATION_HINT)
            number = compact[m.start():m.end() - len(m.group(2))]
            x += float(number) * _DURATION_UNITS[m.group(2).lower()]
            pos, parts = m.end(), parts + 1
        if not parts:
            raise UsageError(f"{_label(what, value)} is not a duration", hint=DURATION_HINT)
    if not math.isfinite(x):
        raise UsageError(f"{_label(what, value)}: the duration is too large", hint=DURATION_HINT)
    return x


def parse_rate(value, what: str | None = None) -> float:
    """`"400"|"400/s"|"24000/m"|"36000/h"|400` -> requests per second."""
    x = _plain_number(value, what, RATE_HINT)
    if x is not None:
        return x
    text = _text(value, what, RATE_HINT)
    number, _, unit = text.partition("/")
    number, unit = number.strip(), unit.strip().lower()
    if not _NUMBER.fullmatch(number) or unit not in _RATE_UNITS or (_ and not unit):
        raise UsageError(f"{_label(what, value)} is not a rate", hint=RATE_HINT)
    x = float(number) * _RATE_UNITS[unit]
    if not math.isfinite(x):
        raise UsageError(f"{_label(what, value)}: the rate is too large", hint=RATE_HINT)
    return x


def parse_bytes(value, what: str | None = None) -> int:
    """`"8KB"|"8KiB"|"1MiB"|"512"|512` -> bytes (KB = 1000, KiB = 1024)."""
    x = _plain_number(value, what, BYTES_HINT)
    if x is None:
        text = _text(value, what, BYTES_HINT)
        m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)", text)
        if not m or m.group(2).lower() not in _BYTE_UNITS:
            raise UsageError(f"{_label(what, value)} is not a byte size", hint=BYTES_HINT)
        x = float(m.group(1)) * _BYTE_UNITS[m.group(2).lower()]
    if not math.isfinite(x) or x > 2**62:
        raise UsageError(f"{_label(what, value)}: the size is too large", hint=BYTES_HINT)
    if x != int(x):
        raise UsageError(f"{_label(what, value)}: not a whole number of bytes", hint=BYTES_HINT)
    return int(x)


def fmt_ms(x: float | None) -> str:
    """A millisecond figure for people: 0.25 -> "250µs", 12.345 -> "12.3ms", 1234 -> "1.23s"."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x < 1:
        return f"{x * 1000:.0f}µs"
    if x < 10:
        return f"{x:.2f}ms"
    if x < 1000:
        return f"{x:.1f}ms"
    if x < 60_000:
        return f"{x / 1000:.2f}s"
    return f"{x / 60_000:.1f}min"
