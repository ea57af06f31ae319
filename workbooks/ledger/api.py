"""Plain functions behind the control plane's ledger route and the `wbx ledger` verbs.

Runs live at `$WB_DATA/<tenant>/runs/<run>/` (their `_steps.jsonl`/`_ledger.json` are private, so
never committed), and agent runs at `$WB_DATA/wb-runs/<tenant>/run-<n>/` (workbooks.agent.runs);
a checkpoint per run is committed as `ledger/<run>.json`.
"""

from __future__ import annotations

import os
from pathlib import Path

from workbooks.errors import NotFound
from workbooks.gitstore import GitStore
from workbooks.ledger.identity import load_identity
from workbooks.ledger.seal import seal, validate_run, verify

RUNS_DIR = "runs"


def runs_root(data_dir: str | os.PathLike, tenant: str) -> Path:
    return GitStore(data_dir, tenant).path / RUNS_DIR


def run_dir(data_dir: str | os.PathLike, tenant: str, run: str) -> Path:
    """The folder of run `run` (a validated name, never a path): an agent run's (run-<n>) or a
    workflow run's (wf-<n>) when one has that id, else the tenant's hand-sealed runs/ folder."""
    from workbooks.agent.runs import ANY_RUN_RE, tenant_root

    validate_run(run)
    if ANY_RUN_RE.fullmatch(run):
        agent_run = tenant_root(data_dir, tenant) / run
        if agent_run.is_dir():
            return agent_run
    return runs_root(data_dir, tenant) / run


def resolve_run(data_dir: str | os.PathLike, tenant: str, run_or_dir: str) -> Path:
    """CLI convenience: an existing folder path as given, else a run name under the tenant's runs/."""
    if os.path.isdir(run_or_dir) or "/" in run_or_dir:
        p = Path(run_or_dir)
    else:
        p = run_dir(data_dir, tenant, run_or_dir)
    if not p.is_dir():
        raise NotFound(f"no run {run_or_dir!r} (not a folder, and not under {runs_root(data_dir, tenant)})")
    return p


def seal_run(data_dir: str | os.PathLike, tenant: str, folder: str | os.PathLike, *, force: bool = False) -> dict:
    store = GitStore(data_dir, tenant)
    return seal(folder, store, load_identity(data_dir, tenant), force=force)


def verify_run(data_dir: str | os.PathLike, tenant: str, folder: str | os.PathLike, *, require_anchor: bool = True, expected_did: str | None = None) -> dict:
    store = GitStore(data_dir, tenant)
    did = expected_did or load_identity(data_dir, tenant).did
    return verify(folder, store, expected_did=did, require_anchor=require_anchor)


def ledger_report(data_dir: str | os.PathLike, tenant: str, run: str) -> dict:
    """GET /api/ledger/:run — the verdict for the tenant's run `run`.

    Returns {tamper_evident, attributable, did, count, head, run, lines, anchored, first_bad_line,
    reason, checkpoints[, problems]}; raises BadRequest (400) for a bad run name and NotFound (404)
    when the run does not exist. A tampered run is a 200 with tamper_evident/attributable false:
    the verdict is the answer.
    """
    folder = run_dir(data_dir, tenant, run)
    if not folder.is_dir():
        raise NotFound(f"no run {run!r} for tenant {tenant}")
    return verify_run(data_dir, tenant, folder)
