"""The payload corpus: Org documents in size classes, picked by weight, optionally with hostile ones.

Why classes: a render's cost grows with the document, so a latency figure means something only
next to the sizes that produced it; the recorder keeps histograms per class. A document's class
is its size in bytes: S < 4 KiB, M < 32 KiB, L < 256 KiB, XL >= 256 KiB. The default corpus is
shipped in `workbooks/loadtest/corpus/` (pieces of the project's conformance corpus in
tests/fixtures/conformance/corpus — the Org manual, the compact guide and Worg pages, GNU FDL as
there — cut at headline boundaries, `#+SETUPFILE`/`#+INCLUDE` lines left out so every piece
stands alone; named `<class>-<source>-<n>.org`) plus the demo workbook. `hostile_share` mixes in the documents of
workbooks.loadtest.hostile (class "hostile"), so a run can show what they cost everyone else.

`pick(rng)` draws with a `random.Random`; `wheel(seed)` is the hot path's table: WHEEL_SLOTS
entries apportioned exactly by weight and shuffled by seed, so request k's document is a pure
function of (k, seed) at the cost of one index.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from workbooks.errors import UsageError

CLASSES = ("S", "M", "L", "XL")
HOSTILE = "hostile"
LIMITS = {"S": 4 * 1024, "M": 32 * 1024, "L": 256 * 1024}  # upper bounds, exclusive
DEFAULT_WEIGHTS = {"S": 0.5, "M": 0.3, "L": 0.15, "XL": 0.05}
HOSTILE_BYTES = 16 * 1024  # each hostile family's document: big enough to bite, small enough to be common
MAX_FILE_BYTES = 64 * 1024 * 1024
WHEEL_SLOTS = 1 << 14


@dataclass(frozen=True)
class Doc:
    name: str
    size_class: str
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def size_class(n: int) -> str:
    for cls in ("S", "M", "L"):
        if n < LIMITS[cls]:
            return cls
    return "XL"


def _default_files() -> list[tuple[str, bytes]]:
    root = resources.files("workbooks.loadtest").joinpath("corpus")
    out = [(p.name, p.read_bytes()) for p in sorted(root.iterdir(), key=lambda p: p.name) if p.name.endswith(".org")]
    out.append(("demo.org", resources.files("workbooks.samples").joinpath("demo.org").read_bytes()))
    return out


def _dir_files(d: Path) -> list[tuple[str, bytes]]:
    if not d.is_dir():
        raise UsageError(f"corpus {d} is not a directory", hint="pass a directory of .org files, or nothing for the shipped corpus")
    out = []
    for p in sorted(d.rglob("*.org")):
        if not p.is_file():
            continue
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise UsageError(f"corpus file {p} is {size} bytes, over the {MAX_FILE_BYTES >> 20} MiB a payload may be")
        body = p.read_bytes()
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"corpus file {p} is not UTF-8 (byte {e.start})", hint="Org payloads are UTF-8 text") from None
        out.append((str(p.relative_to(d)), body))
    if not out:
        raise UsageError(f"corpus {d} holds no .org file", hint="put Org documents (*.org) in it")
    return out


def _hostile_docs() -> list[Doc]:
    from workbooks.loadtest.hostile import FAMILIES

    return [Doc(f"hostile:{name}", HOSTILE, fn(HOSTILE_BYTES).encode("utf-8")) for name, fn in FAMILIES.items()]


def _apportion(weights: dict[str, float], slots: int) -> dict[str, int]:
    """Largest-remainder apportionment of `slots` by weight (every positive weight gets >= 1)."""
    total = sum(weights.values())
    raw = {k: w / total * slots for k, w in weights.items() if w > 0}
    n = {k: max(1, int(v)) for k, v in raw.items()}
    left = slots - sum(n.values())
    for k in sorted(raw, key=lambda k: raw[k] - int(raw[k]), reverse=True):
        if left <= 0:
            break
        n[k] += 1
        left -= 1
    while left < 0:  # the minimum of 1 overshot: take from the largest
        k = max(n, key=n.get)
        n[k] -= 1
        left += 1
    return n


class Corpus:
    def __init__(self, docs: dict[str, list[Doc]], weights: dict[str, float], hostile: list[Doc],
                 hostile_share: float, source: str):
        self.docs = docs
        self.weights = weights
        self.hostile = hostile
        self.hostile_share = hostile_share
        self.source = source
        self._classes = [c for c in CLASSES if weights.get(c, 0) > 0]
        cum, acc = [], 0.0
        total = sum(weights[c] for c in self._classes)
        for c in self._classes:
            acc += weights[c] / total
            cum.append(acc)
        self._cum = cum

    @classmethod
    def load(cls, dir: str | Path | None = None, sizes: dict | None = None, hostile_share: float = 0.0,
             seed: int = 0) -> "Corpus":  # noqa: A002 - the interface's name
        files = _default_files() if dir is None else _dir_files(Path(dir))
        docs: dict[str, list[Doc]] = {c: [] for c in CLASSES}
        for name, body in files:
            c = size_class(len(body))
            docs[c].append(Doc(name, c, body))
        present = {c for c in CLASSES if docs[c]}
        if sizes:
            bad = [k for k in sizes if k not in CLASSES]
            if bad:
                raise UsageError(f"unknown size class {bad[0]!r}", hint=f"size classes: {', '.join(CLASSES)}")
            weights = {}
            for k, v in sizes.items():
                try:
                    w = float(v)
                except (TypeError, ValueError):
                    raise UsageError(f"size weight {k}={v!r} is not a number") from None
                if not w >= 0 or w == float("inf"):
                    raise UsageError(f"size weight {k}={v!r} must be a finite number >= 0")
                if w > 0 and k not in present:
                    raise UsageError(f"size class {k} has weight {v} but the corpus has no {k} document",
                                     hint=f"classes present: {', '.join(c for c in CLASSES if c in present)}")
                weights[k] = w
            if not any(weights.values()):
                raise UsageError("every size weight is 0", hint="give at least one class a positive weight")
        else:  # the default mix, over the classes this corpus has
            weights = {c: DEFAULT_WEIGHTS[c] for c in CLASSES if c in present}
        try:
            share = float(hostile_share or 0.0)
        except (TypeError, ValueError):
            raise UsageError(f"hostile share {hostile_share!r} is not a number") from None
        if not 0.0 <= share <= 1.0:
            raise UsageError(f"hostile share {hostile_share!r} must be within 0..1")
        hostile = _hostile_docs() if share > 0 else []
        return cls(docs, weights, hostile, share, "shipped" if dir is None else str(dir))

    def pick(self, rng: random.Random) -> Doc:
        if self.hostile_share and rng.random() < self.hostile_share:
            return self.hostile[rng.randrange(len(self.hostile))]
        u = rng.random()
        for c, edge in zip(self._classes, self._cum):
            if u < edge:
                break
        docs = self.docs[c]
        return docs[rng.randrange(len(docs))]

    def wheel(self, seed: int = 0, slots: int = WHEEL_SLOTS) -> list[Doc]:
        """`slots` documents in exact weight proportions, shuffled by seed (index it by a hash of k)."""
        share = {c: w * (1 - self.hostile_share) for c, w in self.weights.items() if w > 0}
        total = sum(share.values())
        weights = {c: v / total * (1 - self.hostile_share) for c, v in share.items()}
        if self.hostile_share:
            weights[HOSTILE] = self.hostile_share
        counts = _apportion(weights, slots)
        out: list[Doc] = []
        rng = random.Random(seed)
        for c in sorted(counts):
            docs = self.hostile if c == HOSTILE else self.docs[c]
            out.extend(docs[i % len(docs)] for i in range(counts[c]))
        rng.shuffle(out)
        return out

    def describe(self) -> dict:
        total = sum(self.weights.values())
        classes = {}
        for c in CLASSES:
            ds = self.docs[c]
            if ds or self.weights.get(c):
                classes[c] = {"files": len(ds), "bytes": sum(len(d.body) for d in ds),
                              "weight": round(self.weights.get(c, 0) / total * (1 - self.hostile_share), 6),
                              "names": [d.name for d in ds]}
        if self.hostile:
            classes[HOSTILE] = {"files": len(self.hostile), "bytes": sum(len(d.body) for d in self.hostile),
                                "weight": self.hostile_share, "names": [d.name for d in self.hostile]}
        return {"source": self.source, "classes": classes,
                "files": sum(len(v) for v in self.docs.values()),
                "bytes": sum(len(d.body) for v in self.docs.values() for d in v),
                "weights": {c: v["weight"] for c, v in classes.items()},
                "hostile_share": self.hostile_share}
