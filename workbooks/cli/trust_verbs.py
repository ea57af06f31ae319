"""Trust verbs: init, whoami, sign, verify, ledger seal|verify, bundle, unbundle, mirror, federate, repo.

All work on the local data dir (`--data`, default $WB_DATA or ./wb-data) for `--tenant` (default
$WB_TENANT or `dev`); no server needed. Verification failures exit 5.

Reading never creates: `whoami`, `repo log|diff|oplog` and `ledger verify` exit 4 with a hint
when the data dir or the tenant does not exist, and create no directory and no key; nor do the
verbs that work on a tenant's existing history (`mirror`, `federate`, `repo commit|reconcile`). A tenant
exists in a data dir when it has a signing key there, a repo there, or a row in the control
plane's index; the primary tenant's identity may also come from WB_SIGNING_KEY alone. `wbx init`
creates the data dir, the tenant's key and its repo; the writing verbs (sign, bundle,
ledger seal, repo commit) create what they need on first use, as before.
"""

from __future__ import annotations

import os
import zipfile

from workbooks.cli.output import Output, Style
from workbooks.errors import EXIT_VERIFY, NotFound


def _data(ns) -> str:
    return ns.data or os.environ.get("WB_DATA") or os.path.abspath("wb-data")


def _tenant(ns) -> str:
    from workbooks.gitstore import validate_tenant

    return validate_tenant(ns.tenant or os.environ.get("WB_TENANT") or "dev")


def _ident(ns):
    from workbooks.ledger.identity import load_identity

    return load_identity(_data(ns), _tenant(ns))


_CREATE_HINT = "create it with `wbx init{t}` (or `wbx serve`), or point at another with --data or WB_DATA"


def _existing_data(ns) -> str:
    """The data dir, which must exist already (NotFound, exit 4, otherwise)."""
    data = _data(ns)
    if not os.path.isdir(data):
        t = f" --tenant {ns.tenant}" if getattr(ns, "tenant", None) else ""
        raise NotFound(f"no data dir at {data}", hint=_CREATE_HINT.format(t=t))
    return data


def _registered(data: str, tenant: str) -> bool:
    """Whether the control plane's index lists `tenant` (opened read-only: never created)."""
    from workbooks.store.db import db_path

    path = db_path(data)
    if not path.is_file():
        return False
    import sqlite3
    from urllib.parse import quote

    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT 1 FROM tenants WHERE name=?", (tenant,)).fetchone() is not None
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def _env_identity(tenant: str):
    """The primary tenant's identity from WB_SIGNING_KEY (no data dir needed), else None."""
    from workbooks.ledger.identity import load_identity, primary_tenant

    if os.environ.get("WB_SIGNING_KEY", "").strip() and tenant == primary_tenant():
        return load_identity(os.devnull, tenant)  # the env key wins before any path is used
    return None


def _existing_tenant(ns) -> tuple[str, str]:
    """(data dir, tenant) when both exist; NotFound (exit 4) with a hint otherwise."""
    tenant = _tenant(ns)
    data = _existing_data(ns)
    from workbooks.ledger.identity import key_path

    if key_path(data, tenant).is_file() or os.path.isdir(os.path.join(data, tenant)) or _registered(data, tenant):
        return data, tenant
    raise NotFound(f"no tenant {tenant!r} in {data}",
                   hint=f"create it with `wbx init --tenant {tenant}` (or `wbx tenant create {tenant}` on a running control plane)")


def _existing_ident(ns):
    """The tenant's identity, read only: from WB_SIGNING_KEY, or its existing key file."""
    ident = _env_identity(_tenant(ns))
    if ident is not None:
        return ident
    data, tenant = _existing_tenant(ns)
    from workbooks.ledger.identity import key_path, load_identity

    if not key_path(data, tenant).is_file():
        raise NotFound(f"tenant {tenant!r} has no signing key in {data}",
                       hint=f"create it with `wbx init --tenant {tenant}`")
    return load_identity(data, tenant)


def _existing_store(ns):
    from workbooks.gitstore import GitStore

    data, tenant = _existing_tenant(ns)
    return GitStore(data, tenant)


def _common(p) -> None:
    p.add_argument("--tenant", help="tenant (default $WB_TENANT or dev)")
    p.add_argument("--data", help="data dir (default $WB_DATA or ./wb-data)")


# -- identity -----------------------------------------------------------------------------------
def _whoami_human(d, st) -> str:
    return f"{st.bold(d['tenant'])}  {d['did']}\n  {st.dim('key: ' + d['key'])}"


def cmd_init(ns) -> Output:
    """Create the data dir, the tenant's signing key and its repo (idempotent)."""
    from workbooks.gitstore import GitStore

    data, tenant = _data(ns), _tenant(ns)
    existed = os.path.isdir(data)
    os.makedirs(data, exist_ok=True)
    ident = _ident(ns)
    store = GitStore(data, tenant).ensure()
    out = {"tenant": ident.tenant, "did": ident.did, "data": os.path.abspath(data), "repo": str(store.path),
           "key": "WB_SIGNING_KEY" if ident.source == "WB_SIGNING_KEY" else ident.source, "created_data_dir": not existed}
    return Output(data=out, human=lambda d, st: _whoami_human(d, st) + f"\n  {st.dim('repo: ' + d['repo'])}")


def cmd_whoami(ns) -> Output:
    ident = _existing_ident(ns)
    data = {"tenant": ident.tenant, "did": ident.did, "key": "WB_SIGNING_KEY" if ident.source == "WB_SIGNING_KEY" else ident.source}
    return Output(data=data, human=_whoami_human)


def cmd_sign(ns) -> Output:
    from workbooks.ledger.signing import sign_file

    res = sign_file(ns.file, _ident(ns), ns.out)
    return Output(data=res, human=lambda d, st: f"{st.green('signed')} {ns.file} → {d['sig_file']}\n  {st.dim(d['did'])}")


def _is_bundle(path: str) -> bool:
    if path.endswith(".wbundle"):
        return True
    try:
        return os.path.isfile(path) and zipfile.is_zipfile(path) and not os.path.exists(path + ".sig")
    except OSError:
        return False


def cmd_verify(ns) -> Output:
    if ns.file == "-":
        raise NotFound("verify wants a real path, not stdin (-)")
    if not os.path.exists(ns.file):
        raise NotFound(f"read {ns.file}: No such file or directory")
    if _is_bundle(ns.file) and not ns.sig:
        from workbooks.bundle import verify_bundle

        res = verify_bundle(ns.file, expected_did=ns.did)
        return Output(data=res, human=lambda d, st: f"{st.green('valid bundle')} {d['bundle']} ({len(d['files'])} files)\n  {st.dim('signed by ' + d['did'])}")
    from workbooks.ledger.signing import verify_file

    res = verify_file(ns.file, ns.sig, expected_did=ns.did)
    return Output(data=res, human=lambda d, st: f"{st.green('valid')} {d['file']}\n  {st.dim('signed by ' + d['did'])}")


# -- ledger -------------------------------------------------------------------------------------
def cmd_ledger_seal(ns) -> Output:
    from workbooks.ledger.api import seal_run

    if not os.path.isdir(ns.run_dir):
        raise NotFound(f"run folder {ns.run_dir} does not exist")
    res = seal_run(_data(ns), _tenant(ns), ns.run_dir)

    def human(d, st: Style) -> str:
        return (
            f"{st.green('sealed')} {d['run']}: {d['count']} line(s), head {d['head'][:16]}…\n"
            f"  {st.dim('signed by ' + d['did'])}\n  {st.dim('checkpoint ledger-' + d['run'] + ' at ' + str(d['checkpoint'])[:12])}"
        )

    return Output(data=res, human=human)


def cmd_ledger_verify(ns) -> Output:
    from workbooks.ledger.api import resolve_run, verify_run
    from workbooks.ledger.seal import ok

    if "/" not in ns.run and not os.path.isdir(ns.run):
        _existing_tenant(ns)  # a run name: it lives in the tenant's repo, which must exist
    did = ns.did or _existing_ident(ns).did  # the tenant's key is read, never created here
    folder = resolve_run(_data(ns), _tenant(ns), ns.run)
    res = verify_run(_data(ns), _tenant(ns), folder, require_anchor=not ns.no_anchor, expected_did=did)

    def human(d, st: Style) -> str:
        if ok(d):
            return f"{st.green('intact')} {d['run']}: {d['count']} line(s), head {d['head'][:16]}…, signed by {d['did']}"
        lines = [f"{st.red('TAMPERED' if not d['tamper_evident'] else 'NOT ATTRIBUTABLE')} {d['run']}: {d['reason']}"]
        for p in d.get("problems", [])[1:6]:
            lines.append("  " + st.dim(p))
        return "\n".join(lines)

    out = {k: res[k] for k in ("tamper_evident", "attributable", "did", "count", "head")}
    out.update({k: v for k, v in res.items() if k not in out})
    return Output(data=out, human=human, exit_code=0 if ok(res) else EXIT_VERIFY)


# -- bundles ------------------------------------------------------------------------------------
def cmd_bundle(ns) -> Output:
    from workbooks.bundle import make_bundle

    res = make_bundle(ns.file, _ident(ns), ns.out)
    return Output(data=res, human=lambda d, st: f"{st.green('bundled')} {d['bundle']} ({', '.join(d['files'])})\n  {st.dim('signed by ' + d['did'])}")


def cmd_unbundle(ns) -> Output:
    from workbooks.bundle import unbundle

    res = unbundle(ns.file, ns.out)
    return Output(data=res, human=lambda d, st: f"{st.green('unbundled')} into {d['out']}/ ({len(d['files'])} files, signed by {d['did']})")


# -- leaving and coming back --------------------------------------------------------------------
def cmd_mirror(ns) -> Output:
    from workbooks.mirror import mirror

    res = mirror(_existing_store(ns), ns.target, allow_local=True)  # pushes history: never makes a tenant
    return Output(data=res, human=lambda d, st: f"{st.green('mirrored')} {d['head'][:12]} → {d['url']}")


def cmd_federate(ns) -> Output:
    from workbooks.mirror import federate

    res = federate(_existing_store(ns))
    return Output(data=res, human=lambda d, st: f"{st.green('federated')} {d.get('rid') or ''}\n{d['output']}")


def cmd_repo_log(ns) -> Output:
    rows = _existing_store(ns).log(limit=ns.limit)
    return Output(data=rows, human=lambda d, st: "\n".join(f"{st.yellow(r['sha'][:7])} {r['msg']}  {st.dim(r['author'])}" for r in d) or st.dim("(no commits)"))


def cmd_repo_fsck(ns) -> Output:
    from workbooks.gitstore.fsck import cmd_repo_fsck as run

    return run(ns)


def cmd_repo_diff(ns) -> Output:
    diff = _existing_store(ns).diff_last()
    return Output(data={"diff": diff}, human=lambda d, st: d["diff"] or st.dim("(no commits)"))


def cmd_repo_commit(ns) -> Output:
    from workbooks.mirror import commit_and_push

    data, tenant = _existing_tenant(ns)  # commits in the tenant's tree: never makes a tenant
    receipt = commit_and_push(tenant, ns.message, data_dir=data)
    return Output(data={"receipt": receipt}, human=lambda d, st: d["receipt"])


def cmd_repo_reconcile(ns) -> Output:
    from workbooks.mirror import reconcile

    res = reconcile(_existing_store(ns), ns.remote)

    def human(d, st: Style) -> str:
        s = f"{st.green('reconciled')} {str(d['before'])[:7]} → {str(d['head'])[:7]}" if d["merged"] else "already up to date"
        if d["snapshot"]:
            s += f"\n  {st.dim('snapshot ' + d['snapshot'][:7] + ' (wip: snapshot before reconcile)')}"
        return s

    return Output(data=res, human=human)


def cmd_repo_oplog(ns) -> Output:
    from workbooks.gitstore import jj

    store = _existing_store(ns)
    if not store.exists():
        raise NotFound(f"tenant {store.tenant!r} has no repo yet", hint=f"create it with `wbx init --tenant {store.tenant}`")
    text = jj.op_log(store, limit=ns.limit)
    data = {"jj": text is not None, "op_log": text}
    return Output(data=data, human=lambda d, st: d["op_log"] if d["jj"] else st.dim("jj is not on PATH: no operation log (git history still applies)"))


def register(subs) -> None:
    p = subs.add_parser("init", help="create the data dir, the tenant's signing key and its repo (idempotent)")
    _common(p)
    p.set_defaults(func=cmd_init)

    p = subs.add_parser("whoami", help="this tenant and its did:key (exit 4 when it does not exist)")
    _common(p)
    p.set_defaults(func=cmd_whoami)

    p = subs.add_parser("sign", help="sign FILE with the tenant's key (detached FILE.sig)")
    p.add_argument("file", help="the file to sign (a real path)")
    p.add_argument("--out", help="where to write the signature (default FILE.sig)")
    _common(p)
    p.set_defaults(func=cmd_sign)

    p = subs.add_parser("verify", help="verify FILE against FILE.sig, or a .wbundle's signed manifest (exit 5 when it fails)")
    p.add_argument("file", help="a signed file or a .wbundle")
    p.add_argument("--sig", help="the signature file (default FILE.sig)")
    p.add_argument("--did", help="also require this signer")
    _common(p)
    p.set_defaults(func=cmd_verify)

    led = subs.add_parser("ledger", help="the run ledger: seal a run, verify it (exit 5 naming the first bad line)")
    lsubs = led.add_subparsers(dest="ledger_cmd", parser_class=type(led), required=True)
    p = lsubs.add_parser("seal", help="seal RUN_DIR/_steps.jsonl into _ledger.json and commit a signed checkpoint")
    p.add_argument("run_dir", help="the run folder holding _steps.jsonl")
    _common(p)
    p.set_defaults(func=cmd_ledger_seal)
    p = lsubs.add_parser("verify", help="check a run: {tamper_evident, attributable, did, count, head}")
    p.add_argument("run", help="a run folder, or a run name under <data>/<tenant>/runs/")
    p.add_argument("--did", help="the DID the run must be signed by (default: the tenant's)")
    p.add_argument("--no-anchor", action="store_true", help="do not require the git checkpoint (a run from elsewhere)")
    _common(p)
    p.set_defaults(func=cmd_ledger_verify)

    p = subs.add_parser("bundle", help="FILE.org (or a folder) → signed .wbundle with workbook.org + workbook.html")
    p.add_argument("file", help="an .org file or a folder holding workbook.org")
    p.add_argument("--out", help="the .wbundle to write (default NAME.wbundle beside it)")
    _common(p)
    p.set_defaults(func=cmd_bundle)

    p = subs.add_parser("unbundle", help="verify a .wbundle and extract it into a diffable tree")
    p.add_argument("file", help="the .wbundle")
    p.add_argument("--out", help="folder to create (default: the bundle name without .wbundle)")
    _common(p)
    p.set_defaults(func=cmd_unbundle)

    p = subs.add_parser("mirror", help="push the tenant's history: a URL (plain git push) or github|gitlab|gitea")
    p.add_argument("target", help="a remote URL (contains :// or starts with git@), or github, gitlab, gitea")
    _common(p)
    p.set_defaults(func=cmd_mirror)

    p = subs.add_parser("federate", help="publish the tenant repo on Radicle (rad init) when rad is installed")
    _common(p)
    p.set_defaults(func=cmd_federate)

    repo = subs.add_parser("repo", help="the tenant's git repo: log, fsck, diff, commit (the agent's hand), reconcile, oplog")
    rsubs = repo.add_subparsers(dest="repo_cmd", parser_class=type(repo), required=True)
    p = rsubs.add_parser("log", help="newest first")
    p.add_argument("--limit", type=int, default=30, help="how many commits (default 30)")
    _common(p)
    p.set_defaults(func=cmd_repo_log)
    p = rsubs.add_parser("fsck", help="check git HEAD against the index for every workbook (exit 5 when they disagree)")
    p.add_argument("--repair", action="store_true", help="roll git back to what the index holds (the acknowledged deploys)")
    _common(p)
    p.set_defaults(func=cmd_repo_fsck)
    p = rsubs.add_parser("diff", help="the last commit as a unified diff")
    _common(p)
    p.set_defaults(func=cmd_repo_diff)
    p = rsubs.add_parser("commit", help="add everything not private, commit, push to origin, publish content/ and blog/")
    p.add_argument("message", help="the commit message (the host decides everything else)")
    _common(p)
    p.set_defaults(func=cmd_repo_commit)
    p = rsubs.add_parser("reconcile", help="pull upstream (dirty tree snapshotted first; conflicts abort cleanly, exit 6)")
    p.add_argument("--remote", default="origin", help="the upstream remote (default origin)")
    _common(p)
    p.set_defaults(func=cmd_repo_reconcile)
    p = rsubs.add_parser("oplog", help="jj's operation log when jj is on PATH")
    p.add_argument("--limit", type=int, default=50, help="how many operations (default 50)")
    _common(p)
    p.set_defaults(func=cmd_repo_oplog)
