"""`wbx toolkit list|show|search|verify|sign`: the toolkits on the search path, read and vouched for.

The search path is `--path` (else $WB_TOOLKITS_PATH, a colon list), then `$WB_DATA/toolkits`, then
the tenant repo's `toolkits/` (`--tenant`, default $WB_TENANT or dev; `--data`, default $WB_DATA or
./wb-data); see `workbooks.agent.toolkits`. Human output is the original's text; piped, the data.

Exit codes: 4 for an unknown toolkit or skill; `verify` exits 5 when a check fails, including a
missing or bad signature or one by another signer than the tenant (or `--did`). `sign` writes
`#+AUTHOR_DID:`/`#+SIGNATURE:` into the manifest with the tenant's key (created on first use, like
`wbx sign`). Nothing here runs toolkit code (`CLI_BIN`, `#+EXEC`, `:role` blocks): default-deny.
"""

from __future__ import annotations

import os

from workbooks.cli.output import Output
from workbooks.errors import EXIT_VERIFY, NotFound


def _data(ns) -> str:
    return ns.data or os.environ.get("WB_DATA") or os.path.abspath("wb-data")


def _tenant(ns) -> str:
    from workbooks.gitstore.tenant import validate_tenant

    return validate_tenant(ns.tenant or os.environ.get("WB_TENANT") or "dev")


def _roots(ns):
    from workbooks.agent.toolkits import search_path

    return search_path(data_dir=_data(ns), tenant=_tenant(ns), path=ns.path)


def _where(ns, roots) -> str:
    from workbooks.agent.toolkits import describe_roots

    if roots:
        return describe_roots(roots)
    listed = ns.path if ns.path is not None else os.environ.get("WB_TOOLKITS_PATH", "")
    return ":".join([p for p in listed.split(":") if p] + [os.path.join(_data(ns), "toolkits")])


def _all(ns):
    from workbooks.agent import toolkits as tk

    roots = _roots(ns)
    return roots, tk.discover(roots)


def _one(ns):
    from workbooks.agent import toolkits as tk

    _, found = _all(ns)
    t = tk.find(found, ns.id)
    if t is None:
        raise tk.no_such_toolkit(ns.id)
    return t


def cmd_list(ns) -> Output:
    from workbooks.agent import toolkits as tk

    roots, found = _all(ns)
    rows = []
    for t in sorted(found, key=lambda t: t.id):
        d = t.to_dict()
        d["skills"] = tk.skills(t)
        rows.append(d)
    where = _where(ns, roots)
    return Output(data=rows, human=lambda d, st: tk.list_text(sorted(found, key=lambda t: t.id), where))


def cmd_show(ns) -> Output:
    from workbooks.agent import toolkits as tk

    t = _one(ns)
    if ns.skill is None:
        data = {"id": t.id, "dir": t.dir, "manifest": tk.manifest_text(t), "skills": tk.skills(t)}
        text = tk.show_text(t)
        return Output(data=data, human=lambda d, st: text)
    body = tk.skill_body(t, ns.skill)
    if body is None:
        raise NotFound(f"no such skill: {ns.id}/{ns.skill}", hint=f"`wbx toolkit show {ns.id}` lists its skills")
    data = {"id": t.id, "skill": ns.skill, "toc": tk.captions(body), "body": body}
    return Output(data=data, human=lambda d, st: tk.skill_text(body))


def cmd_search(ns) -> Output:
    from workbooks.agent import toolkits as tk

    _, found = _all(ns)
    hits = tk.search(found, ns.query)
    return Output(data=hits, human=lambda d, st: tk.search_text(hits, ns.query))


def _expected_did(ns) -> tuple[str | None, str | None]:
    """(the DID the signature must name, a failure note when there is none to hold it to).
    The tenant's key is read, never created, by verify."""
    from workbooks.agent.toolkits import check_did

    if ns.did:
        return check_did(ns.did), None
    tenant, data = _tenant(ns), _data(ns)
    from workbooks.ledger.identity import key_path, load_identity, primary_tenant

    if (os.environ.get("WB_SIGNING_KEY", "").strip() and tenant == primary_tenant()) or key_path(data, tenant).is_file():
        return load_identity(data, tenant).did, None
    return None, (f"signer not checked: tenant {tenant!r} has no key in {data} "
                  "(pass --did DID, or create the key with `wbx init`)")


def cmd_verify(ns) -> Output:
    from workbooks.agent import toolkits as tk

    expected, note = _expected_did(ns)
    t = _one(ns)
    res = tk.verify(t, expected, pin_note=note)
    res["expected_did"] = expected
    return Output(data=res, human=lambda d, st: tk.verify_text(res), exit_code=0 if res["ok"] else EXIT_VERIFY)


def cmd_sign(ns) -> Output:
    from workbooks.agent import toolkits as tk
    from workbooks.ledger.identity import load_identity

    t = _one(ns)
    res = tk.sign(t, load_identity(_data(ns), _tenant(ns)))
    return Output(data=res, human=lambda d, st: f"signed {d['id']} as {d['did']}")


def _guarded(fn):
    """An OSError (a toolkit changed or vanished under us, a read-only root) is a clear error, not a trace."""

    def run(ns):
        from workbooks.agent.toolkits import ToolkitError

        try:
            return fn(ns)
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            raise ToolkitError(f"{where}{e.strerror or e}") from None

    return run


def _common(p) -> None:
    p.add_argument("--path", help="toolkit roots, a colon list (default $WB_TOOLKITS_PATH)")
    p.add_argument("--tenant", help="tenant whose repo's toolkits/ is searched last (default $WB_TENANT or dev)")
    p.add_argument("--data", help="data dir (default $WB_DATA or ./wb-data)")


def register(subs) -> None:
    top = subs.add_parser("toolkit", help="toolkits on the search path: list, show, search, verify, sign (nothing is run)")
    tsubs = top.add_subparsers(dest="toolkit_cmd", parser_class=type(top), required=True)
    p = tsubs.add_parser("list", help="every toolkit: id, status, tagline")
    _common(p)
    p.set_defaults(func=_guarded(cmd_list))
    p = tsubs.add_parser("show", help="a toolkit's manifest and skill index, or one skill (with its #+CAPTION TOC)")
    p.add_argument("id", help="the toolkit id")
    p.add_argument("skill", nargs="?", help="a skill slug")
    _common(p)
    p.set_defaults(func=_guarded(cmd_show))
    p = tsubs.add_parser("search", help="case-insensitive substring over every skill (path:line: text)")
    p.add_argument("query", help="the text to find (literal, not a pattern)")
    _common(p)
    p.set_defaults(func=_guarded(cmd_search))
    p = tsubs.add_parser("verify", help="structure and signature checks (exit 5 when one fails; nothing is run)")
    p.add_argument("id", help="the toolkit id")
    p.add_argument("--did", help="the signer to require (default: the tenant's did:key)")
    _common(p)
    p.set_defaults(func=_guarded(cmd_verify))
    p = tsubs.add_parser("sign", help="sign every file of a toolkit with the tenant's key (#+AUTHOR_DID/#+SIGNATURE)")
    p.add_argument("id", help="the toolkit id")
    _common(p)
    p.set_defaults(func=_guarded(cmd_sign))
