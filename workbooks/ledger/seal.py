"""Seal and verify a run's ledger, with a signed checkpoint witnessed by the tenant's git repo.

`seal()` writes `_ledger.json` {v, did, count, head, sig, ts} next to `_steps.jsonl` (sig = the
tenant's Ed25519 signature over the head's hex) and commits a signed checkpoint
`ledger/<run>.json` (origin DID, count, head, digest of the previous checkpoint, and a short
prefix of every h_i so verification can name the first bad line) with the message `ledger-<run>`.

`verify()` recomputes the chain over the current bytes and checks, in this order: the seal's
shape, that the log still matches the seal (naming the first bad line), that every checkpoint in
git history is still a prefix of the log (so truncating and re-sealing is caught), the chain of
checkpoints, and the signatures against the tenant's DID.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

from workbooks.errors import BadRequest, NotFound, VerificationFailed
from workbooks.fsutil import atomic_write
from workbooks.gitstore import GitStore
from workbooks.gitstore.events import emit
from workbooks.ledger.chain import LEDGER_FILE, STEPS_FILE, chain, genesis_hash, read_steps, split_lines
from workbooks.ledger.identity import Identity, InvalidDid, public_key_from_did, verify_signature

RUN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
HEX64 = re.compile(r"[0-9a-f]{64}")
HEX128 = re.compile(r"[0-9a-f]{128}")
PREFIX = 16  # hex chars of each h_i kept in the checkpoint (locates lines; security rests on the full head)
CHECKPOINT_KIND = "workbooks-ledger-checkpoint"


def canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def run_name(run_dir: str | os.PathLike) -> str:
    name = Path(os.path.abspath(run_dir)).name
    validate_run(name)
    return name


def validate_run(name: object) -> str:
    if not isinstance(name, str) or not RUN_RE.fullmatch(name) or name.endswith(".lock"):
        raise BadRequest(
            f"invalid run name {str(name)[:80]!r}",
            hint="a run is 1-128 chars of letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def checkpoint_path(run: str) -> str:
    return f"ledger/{validate_run(run)}.json"


def load_checkpoints(store: GitStore, run: str) -> list[dict]:
    """Every checkpoint of `run` in git history, oldest first: {commit, raw, doc|None, error|None}."""
    path = checkpoint_path(run)
    out = []
    for entry in reversed(store.log(limit=10_000, path=path)):
        raw = store.read_file(path, rev=entry["sha"])
        if raw is None:  # the commit deleted it; later checks notice the gap
            out.append({"commit": entry["sha"], "raw": None, "doc": None, "error": "checkpoint deleted"})
            continue
        doc, err = _parse_checkpoint(raw)
        out.append({"commit": entry["sha"], "raw": raw, "doc": doc, "error": err})
    return out


def _parse_checkpoint(raw: bytes) -> tuple[dict | None, str | None]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, "checkpoint is not JSON"
    if not isinstance(doc, dict) or doc.get("kind") != CHECKPOINT_KIND or doc.get("v") != 1:
        return None, "not a ledger checkpoint"
    count, head, lines = doc.get("count"), doc.get("head"), doc.get("lines")
    if not (isinstance(count, int) and count >= 0 and isinstance(head, str) and HEX64.fullmatch(head)):
        return None, "checkpoint count/head malformed"
    if not (isinstance(lines, list) and len(lines) == count and all(isinstance(x, str) for x in lines)):
        return None, "checkpoint line index malformed"
    if not isinstance(doc.get("origin"), str) or not isinstance(doc.get("sig"), str):
        return None, "checkpoint origin/sig missing"
    return doc, None


def _sig_ok(did: str, message: bytes, sig_hex: object) -> bool:
    if not isinstance(sig_hex, str) or not HEX128.fullmatch(sig_hex):
        return False
    return verify_signature(did, message, bytes.fromhex(sig_hex))


def _checkpoint_sig_ok(doc: dict) -> bool:
    body = {k: v for k, v in doc.items() if k != "sig"}
    return _sig_ok(doc["origin"], canonical(body), doc["sig"])


def _first_divergence(hashes: list[str], ref_prefixes: list[str]) -> int | None:
    """Index of the first entry whose chain value differs from the reference (len if the log is short)."""
    for i, ref in enumerate(ref_prefixes):
        if i >= len(hashes):
            return i
        if hashes[i][:PREFIX] != ref:
            return i
    return None


def seal(run_dir: str | os.PathLike, store: GitStore, ident: Identity, *, force: bool = False, now: int | None = None) -> dict:
    """Seal `run_dir`'s steps and anchor the checkpoint in git. Refuses to seal a log that no longer
    extends the last checkpoint (that would be a rewrite) unless `force` (what an attacker holding
    the key could do by hand; verify still catches it against git history)."""
    run_dir = Path(run_dir)
    run = run_name(run_dir)
    if not run_dir.is_dir():
        raise NotFound(f"run folder {run_dir} does not exist")
    raw = read_steps(run_dir)
    if raw is None:
        raise NotFound(f"no {STEPS_FILE} in {run_dir}", hint="a run writes its steps to _steps.jsonl before it is sealed")
    entries = split_lines(raw)
    hashes = chain([line for _, line in entries])
    head = hashes[-1] if hashes else genesis_hash()
    ts = int(now if now is not None else time.time())
    with store.locked():
        history = load_checkpoints(store, run)
        latest = history[-1] if history else None
        prev_digest = None
        if latest is not None and latest["raw"] is not None:
            prev_digest = hashlib.sha256(latest["raw"]).hexdigest()
            if latest["doc"] is not None and not force:
                idx = _first_divergence(hashes, latest["doc"]["lines"])
                if idx is not None:
                    raise VerificationFailed(
                        f"refusing to seal {run}: entry {idx + 1} no longer matches the checkpoint committed "
                        f"at {latest['commit'][:12]} ({latest['doc']['count']} lines); the log was rewritten",
                        hint="run `wbx ledger verify` to see what changed",
                    )
        sig = ident.sign(head.encode("ascii")).hex()
        ledger = {"v": 1, "did": ident.did, "count": len(entries), "head": head, "sig": sig, "ts": ts}
        checkpoint = {
            "v": 1,
            "kind": CHECKPOINT_KIND,
            "run": run,
            "tenant": store.tenant,
            "origin": ident.did,
            "count": len(entries),
            "head": head,
            "prev": prev_digest,
            "ts": ts,
            "lines": [h[:PREFIX] for h in hashes],
        }
        checkpoint["sig"] = ident.sign(canonical(checkpoint)).hex()
        atomic_write(run_dir / LEDGER_FILE, canonical(ledger) + b"\n")
        commit = store.commit_file(checkpoint_path(run), canonical(checkpoint) + b"\n", f"ledger-{run}")
    emit("ledger_sealed", tenant=store.tenant, run=run, count=len(entries), head=head, checkpoint=commit)
    return {**ledger, "run": run, "checkpoint": commit}


def _read_seal(run_dir: Path) -> tuple[dict | None, str | None]:
    path = run_dir / LEDGER_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, f"missing seal: no {LEDGER_FILE} in the run"
    except OSError as e:
        return None, f"cannot read {LEDGER_FILE}: {e.strerror}"
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(1 << 20)
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, f"malformed seal: {LEDGER_FILE} is not JSON"
    if not isinstance(doc, dict) or doc.get("v") != 1:
        return None, f"malformed seal: {LEDGER_FILE} is not a v1 ledger"
    ok = (
        isinstance(doc.get("did"), str)
        and isinstance(doc.get("count"), int)
        and not isinstance(doc.get("count"), bool)
        and doc["count"] >= 0
        and isinstance(doc.get("head"), str)
        and HEX64.fullmatch(doc["head"]) is not None
        and isinstance(doc.get("sig"), str)
        and isinstance(doc.get("ts"), int)
    )
    if not ok:
        return None, f"malformed seal: {LEDGER_FILE} fields have the wrong shape"
    return doc, None


def verify(
    run_dir: str | os.PathLike,
    store: GitStore,
    *,
    expected_did: str | None = None,
    require_anchor: bool = True,
) -> dict:
    """The verdict on a run: {tamper_evident, attributable, did, count, head} plus why, and where.

    Never raises for a tampered run (the verdict says so); raises NotFound when there is no run.
    """
    run_dir = Path(run_dir)
    run = run_name(run_dir)
    if not run_dir.is_dir():
        raise NotFound(f"run folder {run_dir} does not exist")
    raw = read_steps(run_dir)
    entries = split_lines(raw or b"")
    phys = [n for n, _ in entries]
    hashes = chain([line for _, line in entries])
    result: dict = {
        "run": run,
        "tamper_evident": False,
        "attributable": False,
        "did": None,
        "count": None,
        "head": None,
        "lines": len(entries),
        "anchored": False,
        "first_bad_line": None,
        "reason": None,
        "checkpoints": 0,
    }
    problems: list[tuple[int | None, str]] = []  # (entry index, message) in order found

    def line_no(idx: int) -> int:
        """Physical line number for entry idx (one past the last line for a missing entry)."""
        if idx < len(phys):
            return phys[idx]
        return (phys[-1] + 1) if phys else 1

    seal_doc, seal_err = _read_seal(run_dir)
    if raw is None:
        problems.append((None, f"no {STEPS_FILE} in the run"))
    history = load_checkpoints(store, run) if store is not None else []
    result["checkpoints"] = len(history)
    valid_cps = [c for c in history if c["doc"] is not None]

    # 1. the seal against the current bytes
    matching_cp = None
    if seal_doc is None:
        problems.append((None, seal_err or "missing seal"))
    else:
        result.update(did=seal_doc["did"], count=seal_doc["count"], head=seal_doc["head"])
        count, head = seal_doc["count"], seal_doc["head"]
        for c in reversed(valid_cps):
            if c["doc"]["head"] == head and c["doc"]["count"] == count:
                matching_cp = c
                break
        sealed_head_now = hashes[count - 1] if 0 < count <= len(hashes) else (genesis_hash() if count == 0 else None)
        if sealed_head_now == head and len(entries) == count:
            pass
        elif sealed_head_now == head and len(entries) > count:
            problems.append((count, f"line {line_no(count)}: appended after seal ({len(entries) - count} line(s) beyond the {count} sealed)"))
        else:
            ref = matching_cp["doc"]["lines"] if matching_cp else (valid_cps[-1]["doc"]["lines"] if valid_cps else None)
            idx = _first_divergence(hashes, ref) if ref is not None else None
            if idx is None and ref is not None and len(ref) < count:
                idx = len(ref)
            if idx is not None and idx >= len(entries):
                problems.append((idx, f"line {line_no(idx)}: missing — the log has {len(entries)} line(s), the seal covers {count} (truncated)"))
            elif idx is not None:
                problems.append((idx, f"line {line_no(idx)}: does not match the sealed chain (edited, inserted, deleted or reordered)"))
            elif len(entries) < count:
                problems.append((len(entries), f"line {line_no(len(entries))}: missing — the log has {len(entries)} line(s), the seal covers {count} (truncated)"))
            else:
                problems.append((None, "the log does not match the sealed head (no git checkpoint to locate the line)"))

    # 2. every checkpoint ever committed must still be a prefix of the log, and the checkpoints a chain
    prev_raw = None
    for c in history:
        short = c["commit"][:12]
        if c["doc"] is None:
            if c["error"] == "checkpoint deleted":
                problems.append((None, f"ledger checkpoint deleted from git at {short}"))
            else:
                problems.append((None, f"checkpoint at {short} is malformed: {c['error']}"))
            prev_raw = c["raw"]
            continue
        doc = c["doc"]
        expect_prev = hashlib.sha256(prev_raw).hexdigest() if prev_raw is not None else None
        if doc.get("prev") != expect_prev:
            problems.append((None, f"checkpoint at {short} does not link to the previous checkpoint"))
        if not _checkpoint_sig_ok(doc):
            problems.append((None, f"checkpoint at {short} has an invalid signature"))
        idx = _first_divergence(hashes, doc["lines"])
        full_ok = doc["count"] == 0 or (len(hashes) >= doc["count"] and hashes[doc["count"] - 1] == doc["head"])
        if idx is not None or not full_ok:
            if idx is None:
                idx = 0
            what = "missing (log truncated below it)" if idx >= len(entries) else "rewritten"
            problems.append(
                (idx, f"line {line_no(idx)}: {what} — git checkpoint {short} sealed {doc['count']} line(s) with head {doc['head'][:12]}…")
            )
        prev_raw = c["raw"]

    if seal_doc is not None:
        result["anchored"] = matching_cp is not None
        if matching_cp is None and require_anchor:
            problems.append((None, f"seal is not anchored: no ledger-{run} checkpoint in git has this head and count"))

    # 3. attribution
    if seal_doc is not None:
        sig_ok = _sig_ok(seal_doc["did"], seal_doc["head"].encode("ascii"), seal_doc["sig"])
        try:
            public_key_from_did(seal_doc["did"])
            did_ok = True
        except InvalidDid:
            did_ok = False
        foreign = expected_did is not None and seal_doc["did"] != expected_did
        if not did_ok:
            problems.append((None, f"seal names an invalid DID {seal_doc['did'][:60]!r}"))
        elif not sig_ok:
            problems.append((None, "seal signature does not verify for its DID (forged or altered)"))
        elif foreign:
            problems.append((None, f"sealed by {seal_doc['did']}, which is not this tenant's DID {expected_did}"))
        if matching_cp is not None and matching_cp["doc"]["origin"] != seal_doc["did"]:
            problems.append((None, "seal DID differs from the DID of its git checkpoint"))
        attributable = did_ok and sig_ok and not foreign
    else:
        attributable = False

    tamper_problems = [p for p in problems if not _is_attribution(p[1])]
    result["tamper_evident"] = seal_doc is not None and not tamper_problems
    result["attributable"] = bool(attributable) and result["tamper_evident"]
    if problems:
        located = [p for p in problems if p[0] is not None]
        first = min(located, key=lambda p: p[0]) if located else problems[0]
        result["reason"] = first[1]
        if first[0] is not None:
            result["first_bad_line"] = line_no(first[0])
        result["problems"] = [p[1] for p in problems]
    return result


def _is_attribution(msg: str) -> bool:
    return msg.startswith(("seal signature", "sealed by ", "seal names an invalid DID", "seal DID differs"))


def ok(result: dict) -> bool:
    return bool(result.get("tamper_evident") and result.get("attributable"))
