"""Identity (Ed25519 did:key per tenant) and the run ledger (hash chain, seal, git checkpoint)."""

from workbooks.ledger.chain import LEDGER_FILE, STEPS_FILE, append_step, chain, genesis_hash, head_of, split_lines
from workbooks.ledger.identity import (
    Identity,
    InvalidDid,
    did_from_public_key,
    identity_from_seed,
    load_identity,
    public_key_from_did,
    verify_signature,
)
from workbooks.ledger.seal import seal, verify
from workbooks.ledger.api import ledger_report

# GET /api/ledger/:run — ledger_http(data_dir, tenant, run) -> {tamper_evident, attributable, did, count, head, ...}
ledger_http = ledger_report

__all__ = [
    "ledger_http",
    "ledger_report",
    "LEDGER_FILE",
    "STEPS_FILE",
    "Identity",
    "InvalidDid",
    "append_step",
    "chain",
    "did_from_public_key",
    "genesis_hash",
    "head_of",
    "identity_from_seed",
    "load_identity",
    "public_key_from_did",
    "seal",
    "split_lines",
    "verify",
    "verify_signature",
]
