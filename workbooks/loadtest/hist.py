"""Latency histograms: recorded per second on the generator's hot path, merged exactly across
generator processes, summarised as percentiles and written as an HdrHistogram interval log.

Values are whole microseconds in HDR histograms of 1 µs..120 s at 3 significant digits (the
`hdrhistogram` package; one decoded histogram is 18,432 counters, ~150 KB).

- `Recorder` (one per generator process) keeps, per open one-second interval, sparse bucket counts
  per key `"metric|op|size"` and the interval's counters. Recording a request is a few dict updates
  (no histogram object on the hot path); `take()` turns closed intervals into encoded snapshots and
  forgets them, so memory holds only the open seconds.
- `Merger` (the coordinator) adds snapshots from any number of members in any order. Merging is
  histogram addition, so the result is exactly what one recorder would have recorded.
  Retention: the whole-run histogram per key and the whole-run counters are kept for the whole
  run; a second is held in full (its members' encoded snapshots and merged per-metric histograms)
  while it is within `keep_s` seconds of the newest second seen, after which it is sealed: it
  keeps only its per-metric percentiles and counters (and, if the Merger has an `HlogWriter`, its
  histograms are written to the .hlog first: one interval per key, tagged `metric|op|size`, and one
  per metric over every op and size, tagged with the metric's name). A snapshot that arrives for a sealed second still
  counts in the totals and in the second's counters, but not in its percentiles; the second says
  so with `late` > 0.

Which second a value belongs to: `int(done - t0)` for request histograms, `int(intended - t0)` for
`dropped` and `lag`. Counters are kept where their event happened: `intended` and `dropped` at the
intended start, `sent` at the send, `ok`/`errors`/`bytes`/`status`/`error` at completion. A request
that spans a second boundary therefore updates an interval that may already have been taken; that
update comes out as another snapshot for the same second on the next `take()`, and the Merger sums.

Failed requests are recorded in `latency` and (when they were sent) `service` as well as in the
error counters: a timeout took its timeout, a refused request took its time, and hiding either
would flatter the percentiles.
"""

from __future__ import annotations

import base64
import ctypes
import math
import re
import threading
import time
import weakref
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from hdrh.codec import ExternalHeader, PayloadHeader, get_cookie_base
from hdrh.histogram import HdrHistogram
from pyhdrh import add_array as _add_array  # the hdrhistogram package's C helpers
from pyhdrh import decode as _c_decode

LOWEST_US = 1
HIGHEST_US = 120_000_000
DIGITS = 3
METRICS = ("latency", "service", "ttfb", "conn_wait", "lag", "failed")
#: `failed` is the latency (done - intended) of failed requests only, also counted in `latency`:
#: `latency` minus `failed` is the latency of the requests the server admitted and answered.
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9), ("p99.99", 99.99))

# The bucket layout of (1, HIGHEST_US, 3): sub-buckets of 2048 (half 1024), unit magnitude 0.
_HALF_MAG = 10
_MASK = 2047
COUNTS_LEN = 18432
_LAG_KEY = "lag|-|-"

#: an encoded histogram of our layout is at most a few tens of KB; anything much larger is hostile
MAX_ENCODED = 512 * 1024
_MAX_PAYLOAD = 40 + COUNTS_LEN * 9 + 64


class BadSnapshot(ValueError):
    """A snapshot or encoded histogram that is not one of ours (malformed, hostile, other layout)."""


def _acyclic(h: HdrHistogram) -> HdrHistogram:
    """hdrhistogram's histogram and its encoder point at each other, so a dropped histogram (150 KB)
    waits for the cyclic garbage collector; a weak back-reference frees it at once."""
    enc = h.encoder
    if type(enc.histogram) is not weakref.ProxyType:
        enc.histogram = weakref.proxy(h)
    return h


def new() -> HdrHistogram:
    """An empty histogram of the shared layout (1 µs..120 s, 3 digits)."""
    return _acyclic(HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS))


def index_of(us: int) -> int:
    """The counts index of a value in µs (the same as HdrHistogram's, computed inline)."""
    b = (us | _MASK).bit_length() - 11
    return ((b + 1) << _HALF_MAG) + (us >> b) - 1024


def _lowest_of(i: int) -> int:
    b = (i >> _HALF_MAG) - 1
    sub = (i & 1023) + 1024
    if b < 0:
        b, sub = 0, sub - 1024
    return sub << b


def _width_of(i: int) -> int:
    b = (i >> _HALF_MAG) - 1
    return 1 << (b if b > 0 else 0)


_HIGH: list[int] | None = None  # highest equivalent value per index (lazily built)
_MED: list[int] | None = None  # median equivalent value per index (HdrHistogram's mean uses it)


def _tables() -> tuple[list[int], list[int]]:
    global _HIGH, _MED
    if _HIGH is None:
        lows = [_lowest_of(i) for i in range(COUNTS_LEN)]
        widths = [_width_of(i) for i in range(COUNTS_LEN)]
        _MED = [lo + (w >> 1) for lo, w in zip(lows, widths)]
        _HIGH = [lo + w - 1 for lo, w in zip(lows, widths)]
    return _HIGH, _MED


_UNSAFE = re.compile(r"[|\x00-\x1f\x7f]")


def _token(x, empty: str = "-") -> str:
    s = _UNSAFE.sub("_", str(x))[:64]
    return s or empty


def _us(seconds: float) -> int:
    v = int(seconds * 1e6 + 0.5)
    if v < 0:
        return 0
    return v if v < HIGHEST_US else HIGHEST_US


class _Interval:
    __slots__ = ("hists", "intended", "sent", "ok", "errors", "dropped", "bytes", "status", "error", "by_op")

    def __init__(self):
        self.hists: dict[str, dict[int, int]] = {}
        self.intended = self.sent = self.ok = self.errors = self.dropped = self.bytes = 0
        self.status: dict[str, int] = {}
        self.error: dict[str, int] = {}
        self.by_op: dict[str, list[int]] = {}  # op -> [ok, errors, dropped]

    def counts(self) -> dict:
        return {"intended": self.intended, "sent": self.sent, "ok": self.ok, "errors": self.errors,
                "dropped": self.dropped, "bytes": self.bytes, "status": dict(self.status),
                "error": dict(self.error),
                "by_op": {op: {"ok": v[0], "errors": v[1], "dropped": v[2]} for op, v in self.by_op.items()}}


class Recorder:
    """Per-second histograms and counters of one generator process (see the module docstring).

    Not thread-safe: one trio task tree records into it. `t0` is the perf_counter time of the run's
    start; every time argument is a perf_counter reading.
    """

    def __init__(self, t0: float):
        self.t0 = t0
        self._iv: dict[int, _Interval] = {}
        self._keys: dict[tuple[str, str], tuple[str, str, str, str, str]] = {}
        self._status_s: dict[int, str] = {}
        self._scratch: HdrHistogram | None = None

    def _interval(self, s: int) -> _Interval:
        iv = self._iv.get(s)
        if iv is None:
            iv = self._iv[s] = _Interval()
        return iv

    def _keys_for(self, op: str, size: str) -> tuple[str, str, str, str, str, str]:
        """The four histogram keys of (op, size) and the op's name in counters, made safe once:
        no `|` or control characters, 1..64 characters (the Merger refuses anything else)."""
        ks = self._keys.get((op, size))
        if ks is None:
            op_s, size_s = _token(op), _token(size)
            ks = self._keys[(op, size)] = (*(f"{m}|{op_s}|{size_s}" for m in METRICS[:4]), op_s,
                                           f"failed|{op_s}|{size_s}")
        return ks

    def ok(self, op: str, size: str, intended: float, sent: float, first_byte: float, done: float,
           status: int, nbytes: int) -> None:
        """A request that completed with a response the target counts as success."""
        t0 = self.t0
        ks = self._keys.get((op, size)) or self._keys_for(op, size)
        s = int(done - t0)
        if s < 0:
            s = 0
        ivs = self._iv
        iv = ivs.get(s) or self._interval(s)
        h = iv.hists
        for key, secs in ((ks[0], done - intended), (ks[1], done - sent), (ks[2], first_byte - sent),
                          (ks[3], sent - intended)):
            us = int(secs * 1e6 + 0.5)
            if us < 0:
                us = 0
            elif us > HIGHEST_US:
                us = HIGHEST_US
            b = (us | 2047).bit_length() - 11
            i = ((b + 1) << 10) + (us >> b) - 1024
            d = h.get(key)
            if d is None:
                h[key] = {i: 1}
            else:
                d[i] = d.get(i, 0) + 1
        iv.ok += 1
        iv.bytes += nbytes
        st = self._status_s.get(status)
        if st is None:
            st = self._status_s[status] = str(status)
        iv.status[st] = iv.status.get(st, 0) + 1
        bo = iv.by_op.get(ks[4])
        if bo is None:
            bo = iv.by_op[ks[4]] = [0, 0, 0]
        bo[0] += 1
        si = int(intended - t0)
        if si == s:
            iv.intended += 1
        else:
            (ivs.get(si if si > 0 else 0) or self._interval(si if si > 0 else 0)).intended += 1
        ss = int(sent - t0)
        if ss == s:
            iv.sent += 1
        else:
            (ivs.get(ss if ss > 0 else 0) or self._interval(ss if ss > 0 else 0)).sent += 1

    def fail(self, op: str, size: str, intended: float, sent: float | None, done: float, error: str,
             status: int | None = None) -> None:
        """A request that failed: an error status (`http_503`) or a transport error (`connect`,
        `timeout`, `reset`, …). Recorded in `latency` (and `service` when it was sent)."""
        t0 = self.t0
        ks = self._keys.get((op, size)) or self._keys_for(op, size)
        s = max(int(done - t0), 0)
        iv = self._interval(s)
        lat = _us(done - intended)
        self._add(iv, ks[0], lat)
        self._add(iv, ks[5], lat)
        if sent is not None:
            self._add(iv, ks[1], _us(done - sent))
        iv.errors += 1
        kind = _token(error, "error")
        iv.error[kind] = iv.error.get(kind, 0) + 1
        if status is not None:
            st = self._status_s.get(status) or self._status_s.setdefault(status, str(status))
            iv.status[st] = iv.status.get(st, 0) + 1
        bo = iv.by_op.get(ks[4]) or iv.by_op.setdefault(ks[4], [0, 0, 0])
        bo[1] += 1
        self._interval(max(int(intended - t0), 0)).intended += 1
        if sent is not None:
            self._interval(max(int(sent - t0), 0)).sent += 1

    def dropped(self, op: str, size: str, intended: float) -> None:
        """An arrival that was not sent because `max_inflight` requests were in flight."""
        ks = self._keys.get((op, size)) or self._keys_for(op, size)
        iv = self._interval(max(int(intended - self.t0), 0))
        iv.intended += 1
        iv.dropped += 1
        bo = iv.by_op.get(ks[4]) or iv.by_op.setdefault(ks[4], [0, 0, 0])
        bo[2] += 1

    def lag(self, intended: float, actual: float) -> None:
        """How late the scheduler started one arrival (its own lateness, not the server's)."""
        iv = self._interval(max(int(intended - self.t0), 0))
        self._add(iv, _LAG_KEY, _us(actual - intended))

    @staticmethod
    def _add(iv: _Interval, key: str, us: int) -> None:
        i = index_of(us)
        d = iv.hists.get(key)
        if d is None:
            iv.hists[key] = {i: 1}
        else:
            d[i] = d.get(i, 0) + 1

    def open_seconds(self) -> list[int]:
        """Seconds with data not yet taken."""
        return sorted(self._iv)

    def take(self, upto_second: int) -> list[dict]:
        """Remove and return every interval before `upto_second` as a snapshot
        `{"t", "hists": {key: encoded}, "counts": {...}}` (oldest first)."""
        out = []
        for s in sorted(k for k in self._iv if k < upto_second):
            iv = self._iv.pop(s)
            out.append({"t": s, "hists": {k: self._encode(d) for k, d in iv.hists.items()}, "counts": iv.counts()})
        return out

    def take_all(self) -> list[dict]:
        """Every interval, open or not (at the end of a run)."""
        return self.take(1 << 62)

    def _encode(self, d: dict[int, int]) -> str:
        h = self._scratch
        if h is None:
            h = self._scratch = new()
        c = h.counts
        for i, n in d.items():
            c[i] = n
        h.set_internal_tacking_values(min(d), max(d), sum(d.values()))
        enc = h.encode().decode("ascii")
        for i in d:
            c[i] = 0
        h.total_count, h.max_value, h.min_value = 0, 0, 2**63 - 1
        return enc


def encode(h: HdrHistogram) -> str:
    """The hdrhistogram V2 compressed, base64 encoding of `h` as text."""
    return h.encode().decode("ascii")


def _payload(encoded) -> bytes:
    """The decompressed payload of an encoded histogram of our layout, checked before anything
    large is allocated: size, cookies, bounded decompression, the layout (1 µs..120 s, 3 digits)."""
    if isinstance(encoded, str):
        try:
            encoded = encoded.encode("ascii")
        except UnicodeEncodeError:
            raise BadSnapshot("an encoded histogram is not ASCII base64") from None
    if not isinstance(encoded, (bytes, bytearray)):
        raise BadSnapshot(f"an encoded histogram must be text, got {type(encoded).__name__}")
    if len(encoded) > MAX_ENCODED:
        raise BadSnapshot(f"an encoded histogram of {len(encoded)} bytes is larger than {MAX_ENCODED}")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (ValueError, TypeError):
        raise BadSnapshot("an encoded histogram is not base64") from None
    if len(raw) < _EH:
        raise BadSnapshot("an encoded histogram is too short")
    header = ExternalHeader.from_buffer_copy(raw[:_EH])
    if get_cookie_base(header.cookie) != 0x1C849304 or header.length != len(raw) - _EH:
        raise BadSnapshot("an encoded histogram has a bad header")
    z = zlib.decompressobj()
    try:
        payload = z.decompress(raw[_EH:], _MAX_PAYLOAD)
    except zlib.error:
        raise BadSnapshot("an encoded histogram does not decompress") from None
    if z.unconsumed_tail or len(payload) < _PH:
        raise BadSnapshot("an encoded histogram's payload has a bad size")
    ph = PayloadHeader.from_buffer_copy(payload[:_PH])
    if (ph.lowest_trackable_value, ph.highest_trackable_value, ph.significant_figures) != (LOWEST_US, HIGHEST_US, DIGITS):
        raise BadSnapshot(f"a histogram of another layout ({ph.lowest_trackable_value}..{ph.highest_trackable_value},"
                          f" {ph.significant_figures} digits)")
    if get_cookie_base(ph.cookie) != 0x1C849303 or ph.payload_len > len(payload) - _PH:
        raise BadSnapshot("an encoded histogram has a bad payload header")
    return payload


class _Scratch:
    """One reusable counts array to decode into (a decoded histogram is a 150 KB allocation; the
    Merger decodes every key of every member every second). Not thread-safe: one per Merger."""

    def __init__(self):
        self.counts = (ctypes.c_ulonglong * COUNTS_LEN)()
        self.addr = ctypes.addressof(self.counts)

    def load(self, payload: bytes) -> tuple[int, int, int]:
        """Decode into the array: (total, lowest index, highest index); the caller must `clear(hi)`.
        Every counter must be below 2**48 (so the sum cannot wrap) and the total at most 2**53."""
        try:
            r = _c_decode(payload, _PH, self.addr, COUNTS_LEN, 8)
            total, lo, hi = int(r["total"]), int(r["min_nonzero_index"]), int(r["max_nonzero_index"])
        except Exception as e:  # the codec's C errors
            self.clear(COUNTS_LEN - 1)
            raise BadSnapshot(f"an encoded histogram does not decode: {type(e).__name__}") from None
        if total == 0 and hi < 0:
            return 0, -1, -1
        ok = 0 < total <= 2**53 and 0 <= lo <= hi < COUNTS_LEN
        if ok:
            n = hi + 1
            raw = ctypes.string_at(self.addr, n * 8)  # little-endian u64s: bytes 6 and 7 must be 0
            ok = raw[6::8].count(0) == n and raw[7::8].count(0) == n
        if not ok:
            self.clear(COUNTS_LEN - 1)
            raise BadSnapshot("an encoded histogram has impossible counters")
        return total, lo, hi

    def clear(self, hi: int) -> None:
        if hi >= 0:
            ctypes.memset(self.addr, 0, (hi + 1) * 8)

    def add_to(self, h: HdrHistogram, total: int, lo: int, hi: int) -> None:
        """h += the loaded histogram (what HdrHistogram.add does, over the used prefix only)."""
        if total == 0:
            return
        _add_array(ctypes.addressof(h.counts), self.addr, hi + 1, 8)
        h.total_count += total
        high, _ = _tables()
        if high[hi] > h.max_value:
            h.max_value = high[hi]
        low = 0 if lo == 0 else _lowest_of(lo)
        if low < h.min_value:
            h.min_value = low

    def merge(self, h: HdrHistogram, encoded) -> None:
        """h += decode(encoded), without allocating a histogram."""
        total, lo, hi = self.load(_payload(encoded))
        try:
            self.add_to(h, total, lo, hi)
        finally:
            self.clear(hi)


def decode(encoded: str | bytes) -> HdrHistogram:
    """An encoded histogram of our layout as an HdrHistogram; `BadSnapshot` for anything else
    (malformed, hostile, another layout, impossible counters)."""
    payload = _payload(encoded)
    sc = getattr(_LOCAL, "scratch", None)
    if sc is None:
        sc = _LOCAL.scratch = _Scratch()
    h = new()
    total, lo, hi = sc.load(payload)
    try:
        sc.add_to(h, total, lo, hi)
    finally:
        sc.clear(hi)
    return h


_EH = ctypes.sizeof(ExternalHeader)
_PH = ctypes.sizeof(PayloadHeader)
_LOCAL = threading.local()  # decode()'s scratch array, one per thread; Mergers have their own


def difference(a: HdrHistogram | None, b: HdrHistogram | None) -> HdrHistogram:
    """`a` minus `b` (b's counts must be part of a's): e.g. the latency of the requests that
    succeeded, from `latency` (all) and `failed`. Exact, bucket by bucket."""
    out = new()
    if a is None:
        return out
    minus: dict[int, int] = {}
    if b is not None and b.get_total_count():
        for it in b.get_recorded_iterator():
            minus[it.value_iterated_to] = minus.get(it.value_iterated_to, 0) + it.count_at_value_iterated_to
    for it in a.get_recorded_iterator():
        n = it.count_at_value_iterated_to - minus.get(it.value_iterated_to, 0)
        if n > 0:
            out.record_value(it.value_iterated_to, n)
    return out


def percentiles(h: HdrHistogram | None) -> dict:
    """{"p50","p90","p99","p99.9","p99.99","max","mean","count"}: milliseconds with 3 decimals
    (HdrHistogram's own definitions: the highest value equivalent to the percentile's bucket);
    None for every figure of an empty histogram."""
    count = h.get_total_count() if h is not None else 0
    if not count:
        return {**{name: None for name, _ in PERCENTILES}, "max": None, "mean": None, "count": 0}
    if (h.lowest_trackable_value, h.highest_trackable_value, h.significant_figures) != (LOWEST_US, HIGHEST_US, DIGITS):
        out = {name: round(h.get_value_at_percentile(p) / 1000, 3) for name, p in PERCENTILES}  # another layout
        return {**out, "max": round(h.get_max_value() / 1000, 3), "mean": round(h.get_mean_value() / 1000, 3),
                "count": count}
    high, med = _tables()
    top = index_of(h.max_value) + 1
    counts = h.counts[:top]
    targets = [(name, max(int(p * count / 100 + 0.5), 1)) for name, p in PERCENTILES]
    out: dict = {}
    run, j, total_med = 0, 0, 0
    for i, n in enumerate(counts):
        if not n:
            continue
        run += n
        total_med += n * med[i]
        while j < len(targets) and run >= targets[j][1]:
            out[targets[j][0]] = round(high[i] / 1000, 3)
            j += 1
    for name, _ in targets[j:]:
        out[name] = round(h.get_max_value() / 1000, 3)
    out["max"] = round(h.get_max_value() / 1000, 3)
    out["mean"] = round(total_med / count / 1000, 3)
    out["count"] = count
    return out


def spectrum(h: HdrHistogram | None, ticks: int = 5) -> list[list[float]]:
    """[[percentile, ms], …] on HdrHistogram's percentile ladder (for the report's spectrum chart)."""
    if h is None or not h.get_total_count():
        return []
    out = []
    for item in h.get_percentile_iterator(ticks):
        out.append([round(item.percentile_level_iterated_to, 5), round(item.value_iterated_to / 1000, 3)])
        if len(out) > 400:
            break
    return out


def _sum_counts(into: dict, add: dict) -> None:
    for k, v in add.items():
        if isinstance(v, dict):
            _sum_counts(into.setdefault(k, {}), v)
        else:
            into[k] = into.get(k, 0) + v


_COUNT_KEYS = ("intended", "sent", "ok", "errors", "dropped", "bytes")
_KEY_RE = re.compile(r"(" + "|".join(METRICS) + r")\|[^|\x00-\x1f\x7f]{1,64}\|[^|\x00-\x1f\x7f]{1,64}")


def empty_counts() -> dict:
    return {"intended": 0, "sent": 0, "ok": 0, "errors": 0, "dropped": 0, "bytes": 0, "status": {},
            "error": {}, "by_op": {}}


def _check_counts(c) -> dict:
    if not isinstance(c, dict):
        raise BadSnapshot("counts must be an object")
    out = empty_counts()
    for k, v in c.items():
        if k in _COUNT_KEYS:
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 2**53:
                raise BadSnapshot(f"counts.{k} is not a count")
            out[k] = v
        elif k in ("status", "error"):
            if not isinstance(v, dict) or len(v) > 1000:
                raise BadSnapshot(f"counts.{k} must be a small object")
            for name, n in v.items():
                if not isinstance(name, str) or len(name) > 64 or isinstance(n, bool) or not isinstance(n, int) \
                        or not 0 <= n <= 2**53:
                    raise BadSnapshot(f"counts.{k} has a bad entry")
                out[k][name] = n
        elif k == "by_op":
            if not isinstance(v, dict) or len(v) > 1000:
                raise BadSnapshot("counts.by_op must be a small object")
            for op, row in v.items():
                if not isinstance(op, str) or len(op) > 64 or not isinstance(row, dict):
                    raise BadSnapshot("counts.by_op has a bad entry")
                r = {}
                for name in ("ok", "errors", "dropped"):
                    n = row.get(name, 0)
                    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 2**53:
                        raise BadSnapshot(f"counts.by_op.{op}.{name} is not a count")
                    r[name] = n
                if set(row) - {"ok", "errors", "dropped"}:
                    raise BadSnapshot("counts.by_op has an unknown field")
                out["by_op"][op] = r
        else:
            raise BadSnapshot(f"counts has an unknown field {str(k)[:40]!r}")
    return out


class _Second:
    __slots__ = ("encoded", "metrics", "counts", "members", "pct", "late")

    def __init__(self):
        self.encoded: dict[str, list[str]] = {}
        self.metrics: dict[str, HdrHistogram] = {}
        self.counts = empty_counts()
        self.members: set[str] = set()
        self.pct: dict | None = None  # per-metric percentiles, cached / kept after sealing
        self.late = 0


class Merger:
    """Merges snapshots from generator members (see the module docstring for what it keeps)."""

    MAX_SECOND = 10 * 24 * 3600

    def __init__(self, keep_s: int = 10, hlog: "HlogWriter | None" = None):
        self.keep_s = int(keep_s)
        self.hlog = hlog
        self._held: dict[int, _Second] = {}
        self._sealed: dict[int, _Second] = {}
        self._totals: dict[str, HdrHistogram] = {}
        self._counts = empty_counts()
        self._newest = -1
        self._members: set[str] = set()
        self._scratch = _Scratch()

    def add(self, snapshot: dict, member: str) -> None:
        """Merge one snapshot (all of it or, if anything in it is bad, none of it: `BadSnapshot`)."""
        if not isinstance(snapshot, dict):
            raise BadSnapshot("a snapshot must be an object")
        t = snapshot.get("t")
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= self.MAX_SECOND:
            raise BadSnapshot(f"a snapshot's t must be a second >= 0, got {str(t)[:40]!r}")
        hists = snapshot.get("hists") or {}
        if not isinstance(hists, dict) or len(hists) > 10_000:
            raise BadSnapshot("a snapshot's hists must be an object of encoded histograms")
        sc = self._scratch
        payloads = {}
        for key, enc in hists.items():  # check everything before merging anything
            if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
                raise BadSnapshot(f"a histogram key must be metric|op|size, got {str(key)[:80]!r}")
            payload = _payload(enc)
            _total, _lo, hi = sc.load(payload)
            sc.clear(hi)
            payloads[key] = (payload, enc)
        counts = _check_counts(snapshot.get("counts") or {})
        member = str(member)

        sec = self._sealed.get(t)
        late = sec is not None
        if not late:
            sec = self._held.get(t)
            if sec is None:
                sec = self._held[t] = _Second()
        for key, (payload, enc) in payloads.items():
            total, lo, hi = sc.load(payload)
            try:
                tot = self._totals.get(key)
                if tot is None:
                    tot = self._totals[key] = new()
                sc.add_to(tot, total, lo, hi)
                if not late:
                    sec.encoded.setdefault(key, []).append(enc)
                    metric = key.split("|", 1)[0]
                    m = sec.metrics.get(metric)
                    if m is None:
                        m = sec.metrics[metric] = new()
                    sc.add_to(m, total, lo, hi)
            finally:
                sc.clear(hi)
        _sum_counts(self._counts, counts)
        self._members.add(member)
        _sum_counts(sec.counts, counts)
        sec.members.add(member)
        if late:  # a sealed second: counters and totals only
            if payloads:
                sec.late += 1
            return
        sec.pct = None
        if t > self._newest:
            self._newest = t
            self._seal(self._newest - self.keep_s)

    def _seal(self, before: int) -> None:
        for t in sorted(s for s in self._held if s < before):
            sec = self._held.pop(t)
            if self.hlog is not None:
                self.hlog.write_second(t, {**sec.metrics, **self._merge_keys(sec)})
            sec.pct = {m: percentiles(h) for m, h in sec.metrics.items()}
            sec.encoded, sec.metrics = {}, {}
            self._sealed[t] = sec

    def seal_all(self) -> None:
        """Seal every held second (at the end of a run; writes them to the .hlog if there is one)."""
        self._seal(1 << 62)

    def _merge_keys(self, sec: _Second) -> dict[str, HdrHistogram]:
        out = {}
        for key, encs in sec.encoded.items():
            h = new()
            for enc in encs:
                self._scratch.merge(h, enc)
            out[key] = h
        return out

    def seconds(self) -> list[int]:
        """Every second any snapshot was merged for, oldest first."""
        return sorted([*self._held, *self._sealed])

    def members(self) -> list[str]:
        return sorted(self._members)

    def second(self, t: int) -> dict:
        """Second `t`: `{"t", "held", "hists": {key: HdrHistogram}, "metrics": {metric: HdrHistogram},
        "percentiles": {metric: percentiles}, "counts", "members", "late"}`. `hists` and `metrics` are
        filled only while the second is held (see the retention rule); `percentiles` and `counts`
        always. A second with no snapshot has empty ones."""
        sec = self._held.get(t)
        if sec is not None:
            if sec.pct is None:
                sec.pct = {m: percentiles(h) for m, h in sec.metrics.items()}
            return {"t": t, "held": True, "hists": self._merge_keys(sec), "metrics": dict(sec.metrics),
                    "percentiles": dict(sec.pct), "counts": _copy_counts(sec.counts),
                    "members": sorted(sec.members), "late": 0}
        sec = self._sealed.get(t)
        if sec is not None:
            return {"t": t, "held": False, "hists": {}, "metrics": {}, "percentiles": dict(sec.pct or {}),
                    "counts": _copy_counts(sec.counts), "members": sorted(sec.members), "late": sec.late}
        return {"t": t, "held": False, "hists": {}, "metrics": {}, "percentiles": {}, "counts": empty_counts(),
                "members": [], "late": 0}

    def keys(self) -> list[str]:
        """Every histogram key seen in the run."""
        return sorted(self._totals)

    def ops(self) -> list[str]:
        return sorted({k.split("|")[1] for k in self._totals if not k.startswith("lag|")})

    def sizes(self) -> list[str]:
        return sorted({k.split("|")[2] for k in self._totals if not k.startswith("lag|")})

    def total(self, metric: str, op: str | None = None, size: str | None = None) -> HdrHistogram:
        """The whole run's histogram of `metric`, over every op and size unless narrowed."""
        h = new()
        for key, th in self._totals.items():
            m, o, s = key.split("|")
            if m == metric and (op is None or o == op) and (size is None or s == size):
                h.add(th)
        return h

    def counts_total(self) -> dict:
        """The whole run's counters, summed over seconds and members."""
        return _copy_counts(self._counts)


def _copy_counts(c: dict) -> dict:
    return {k: (_copy_counts(v) if isinstance(v, dict) else v) for k, v in c.items()}


_TAG_RE = re.compile(r"[^,\s]{1,200}")


class HlogWriter:
    """The HdrHistogram interval log (format 1.3): a `#[StartTime: …]` and `#[BaseTime: …]` header,
    then one line per interval histogram `Tag=<tag>,<start s>,<length s>,<max ms>,<base64>`, start
    relative to the base time (the run's start). HdrHistogram's own log readers read it."""

    def __init__(self, path, start_wall: float | None = None):
        self.path = Path(path)
        self.start_wall = time.time() if start_wall is None else float(start_wall)
        # line-buffered: a run that dies keeps every interval written so far
        self._fh = open(self.path, "w", encoding="ascii", newline="\n", buffering=1)
        when = datetime.fromtimestamp(self.start_wall, timezone.utc).strftime("%a %b %d %H:%M:%S UTC %Y")
        self._fh.write("#[Histogram log format version 1.3]\n")
        self._fh.write(f"#[StartTime: {self.start_wall:.3f} (seconds since epoch), {when}]\n")
        self._fh.write(f"#[BaseTime: {self.start_wall:.3f} (seconds since epoch)]\n")
        self._fh.write("#[values in microseconds; Interval_Max in milliseconds; wbx loadtest]\n")
        self._fh.write('"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"\n')

    def write(self, tag: str, start_s: float, end_s: float, h: HdrHistogram | str) -> None:
        if not _TAG_RE.fullmatch(tag):
            raise ValueError(f"an hlog tag has no commas or spaces: {tag!r}")
        hist = decode(h) if isinstance(h, str) else h
        enc = encode(hist)
        self._fh.write(f"Tag={tag},{start_s:.3f},{end_s - start_s:.3f},{hist.get_max_value() / 1000:.3f},{enc}\n")

    def write_second(self, t: int, hists: dict[str, HdrHistogram]) -> None:
        """Every histogram of second t, in a stable order."""
        for tag in sorted(hists):
            if hists[tag].get_total_count():
                self.write(tag, float(t), float(t + 1), hists[tag])

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_LINE_RE = re.compile(r"(?:Tag=([^,\s]+),)?(-?\d+(?:\.\d*)?),(\d+(?:\.\d*)?),(\d+(?:\.\d*)?),([A-Za-z0-9+/=]+)")
MAX_HLOG_LINE = 2 * MAX_ENCODED


def read_hlog(path) -> Iterator[tuple[str | None, float, float, HdrHistogram]]:
    """(tag, start_s, end_s, histogram) per interval line, start relative to the log's start time.
    A line that is neither a comment, the legend nor an interval is a `UsageError` naming it."""
    from workbooks.errors import UsageError

    start = base = None
    with open(path, "r", encoding="ascii", errors="replace", newline="\n") as fh:
        for n, line in enumerate(fh, 1):
            if len(line) > MAX_HLOG_LINE:
                raise UsageError(f"{path}: line {n} is longer than {MAX_HLOG_LINE} bytes",
                                 hint="an .hlog written by wbx loadtest or HdrHistogram")
            line = line.rstrip("\n").rstrip("\r")
            if not line or line.startswith('"StartTimestamp"'):
                continue
            if line.startswith("#"):
                m = re.match(r"#\[StartTime: *([\d.]+)", line)
                if m:
                    start = float(m.group(1))
                m = re.match(r"#\[BaseTime: *([\d.]+)", line)
                if m:
                    base = float(m.group(1))
                continue
            m = _LINE_RE.fullmatch(line)
            if not m:
                raise UsageError(f"{path}: line {n} is not an interval histogram",
                                 hint="an .hlog written by wbx loadtest or HdrHistogram")
            ts, length = float(m.group(2)), float(m.group(3))
            if start is None:
                start = ts
            if base is None:  # HdrHistogram's rule: timestamps over a year before StartTime are relative
                base = start if ts < start - 365 * 24 * 3600.0 else 0.0
            try:
                h = decode(m.group(5))
            except BadSnapshot as e:
                raise UsageError(f"{path}: line {n}: {e}", hint="an .hlog written by wbx loadtest or HdrHistogram") \
                    from None
            rel = ts + base - start
            if not math.isfinite(rel):
                raise UsageError(f"{path}: line {n}: a timestamp out of range")
            h.set_tag(m.group(1))
            yield m.group(1), rel, rel + length, h
