"""Deploy = validate + render through the kernel, then commit `<id>.org` and write the index, all or nothing.

The kernel work happens first and outside any lock (it may take a while and changes nothing).
The write half runs on a thread holding the tenant repo's lock (threads and processes), so
deploys to one tenant are serialised across every control-plane process: the preconditions
(If-Match / If-None-Match, 412 when false), the commit and the index row are one step. If the
index write fails after the commit, or the process dies, the unit is rolled back
(`workbooks.gitstore.unit`, `workbooks.gitstore.fsck`) so git and the index never disagree.
"""

from __future__ import annotations

import json
import re

from workbooks.errors import BadRequest, NotFound, WorkbooksError
from workbooks.gitstore import fsck, unit
from workbooks.log import get_logger
from workbooks.store import Store, resolve_for_page, templates
from workbooks.store.names import validate_workbook_id
from workbooks.web_control import preconditions
from workbooks.web_control.httperrors import HttpError

RENDER_OPTIONS = json.dumps({"metadata": True})
# The operator turned author HTML off (WB_RAW_HTML=0, globally or as the tenant's variable).
RENDER_OPTIONS_NO_RAW_HTML = json.dumps({"metadata": True, "raw_html": False})
KEYWORD_RE = re.compile(r"^[ \t]*#\+([A-Za-z_]+):[ \t]*(.*?)[ \t]*$", re.M)
MAX_META = 300


def org_meta(source: str) -> dict:
    """Title, description, author and language from the document's `#+KEYWORD:` lines."""
    meta: dict = {}
    head = source.split("\n*", 1)[0] if not source.startswith("*") else ""
    for m in KEYWORD_RE.finditer(head):
        k = m.group(1).lower()
        if k in ("title", "description", "author", "language") and k not in meta:
            meta[k] = m.group(2)[:MAX_META]
    return meta


def decode_source(body: bytes) -> str:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"the body is not valid UTF-8 (first bad byte at offset {e.start})",
                         hint="send the Org source as UTF-8 text") from None
    if "\x00" in text:
        raise BadRequest("the body contains a NUL byte", hint="Org source is text")
    return text


def build_page(fragment: str, meta: dict, wid: str, plain_vars: dict[str, str]) -> str:
    from workbooks.page import render_page

    def text(v: str) -> str:  # render_page escapes: variables go in as plain text
        return templates.resolve_text(v, plain_vars)

    return render_page(resolve_for_page(fragment, plain_vars), title=text(meta.get("title") or wid),
                       description=text(meta.get("description", "")), lang=_lang(meta.get("language")),
                       subtitle=text(meta.get("subtitle", "")), author=text(meta.get("author", "")))


def _lang(v: str | None) -> str:
    return v if v and re.fullmatch(r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*", v) else "en"


async def prepare(oql, wid: str, text: str, deadline_ms: int, *, parse_text: str | None = None,
                  render_text: str | None = None, file_diagnostics: list | None = None,
                  raw_html: bool = True) -> dict:
    """Everything the kernel says about a document (three pool calls at once), or a 422 with its
    diagnostics. `parse_text`/`render_text`: the document with its setup files' keywords / with
    its SETUPFILE and INCLUDE files inlined (`deploy_includes.views`), whose refused lines are
    `file_diagnostics` (warnings, listed first). `raw_html=False` drops author HTML
    (`workbooks.author_html`)."""
    import trio

    parse_text = text if parse_text is None else parse_text
    protected, tokens = templates.protect(text if render_text is None else render_text)
    out: dict = {}

    async def one(key: str, op: str, arg: str) -> None:
        out[key] = await oql.call(op, [arg], deadline_ms=deadline_ms)

    async def one2(key: str, op: str, arg: str, arg2: str) -> None:
        out[key] = await oql.call(op, [arg, arg2], deadline_ms=deadline_ms)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "validate", "validate", parse_text)
            nursery.start_soon(one2, "render", "render_with", protected,
                               RENDER_OPTIONS if raw_html else RENDER_OPTIONS_NO_RAW_HTML)
            nursery.start_soon(one, "headlines", "parse_headlines", parse_text)
    except BaseExceptionGroup as group:  # the first typed error is the answer (all three failed alike)
        typed = _first_typed(group)
        if typed is None:
            raise
        raise typed from None
    diags = _json(out["validate"], "validate")
    if not isinstance(diags, list):
        raise HttpError(502, "kernel_output", "validate did not return a list of diagnostics")
    errors = [d for d in diags if isinstance(d, dict) and d.get("level") == "error"]
    diags = list(file_diagnostics or []) + diags
    if errors:
        raise HttpError(422, "invalid_workbook", f"the workbook has {len(errors)} error(s); nothing was deployed",
                        data=diags, hint="fix the diagnostics (wbx lint FILE shows them) and deploy again")
    rendered = _json(out["render"], "render_with")
    if not isinstance(rendered, dict) or not isinstance(rendered.get("html"), str):
        raise HttpError(502, "kernel_output", "render_with did not return {html, meta}")
    fragment = templates.restore(rendered["html"], tokens)
    headlines = _json(out["headlines"], "parse_headlines")
    return {"fragment": fragment, "headlines": headlines, "meta": page_meta(rendered, text, tokens),
            "diagnostics": diags}


def page_meta(rendered: dict, text: str, tokens: dict) -> dict:
    """Title (as text), description, author, language, subtitle: the kernel's document metadata,
    falling back to the `#+KEYWORD:` lines when the kernel gives none."""
    from workbooks.page import html_to_text

    kmeta = rendered.get("meta") if isinstance(rendered.get("meta"), dict) else {}
    meta = org_meta(text)
    title_html = rendered.get("title_html")
    if isinstance(title_html, str) and title_html.strip():
        meta["title"] = templates.restore_text(html_to_text(title_html), tokens)[:MAX_META]
    for k in ("description", "author", "language", "subtitle"):
        v = kmeta.get(k)
        if isinstance(v, str) and v.strip():
            v = html_to_text(v) if k == "subtitle" else v
            meta[k] = templates.restore_text(v, tokens)[:MAX_META]
    return meta


def _first_typed(group: BaseExceptionGroup):
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            inner = _first_typed(e)
            if inner is not None:
                return inner
        elif isinstance(e, WorkbooksError):
            return e
    return None


def _json(raw: bytes, op: str):
    try:
        return json.loads(raw)
    except ValueError:
        raise HttpError(502, "kernel_output", f"{op} returned output that is not JSON") from None


def commit_and_index(store: Store, gs, tenant: str, wid: str, text: str, prepared: dict,
                     if_match: str | None, *, message: str | None = None, if_none_match: str | None = None) -> dict:
    """The write half (runs on a thread): preconditions (412), commit, index row; {sha} or {nochange}."""
    log = get_logger(tenant=tenant, workbook=wid)
    path = f"{wid}.org"
    data = text.encode("utf-8")
    gs.ensure()
    with gs.locked():
        fsck.before_write(store, gs)  # a dead writer's half-done unit is rolled back first
        cur = store.workbook_sha(tenant, wid)
        preconditions.check(f"workbook {wid!r}", cur[0] if cur else None, if_match, if_none_match)
        old = cur[1].encode("utf-8") if cur is not None else None
        if cur is not None and unit.unchanged(gs, path, data, old):
            return {"nochange": True, "sha": cur[0]}

        def index(sha: str, head: str | None) -> None:
            _index(store, tenant, wid, text, prepared, sha, head or sha)

        sha = unit.write(store, gs, wid, path, data, old, message or f"deploy {wid}", index)
    log.info("deployed", sha=sha, bytes=len(data))
    return {"sha": sha}


def rerender_index(store: Store, gs, tenant: str, wid: str, text: str, prepared: dict) -> bool:
    """Replace a published workbook's fragment and page with a new render of the SAME source (no
    commit: git holds the source, which has not changed). False when the workbook was redeployed
    or deleted meanwhile (that deploy's render stands)."""
    with gs.locked():
        cur = store.workbook_sha(tenant, wid)
        if cur is None or cur[1] != text:
            return False
        _index(store, tenant, wid, text, prepared, cur[0], None)
    return True


def _index(store: Store, tenant: str, wid: str, text: str, prepared: dict, sha: str, head: str | None) -> None:
    """The index row of one rendered workbook (its page built with the tenant's plain variables)."""
    page = build_page(prepared["fragment"], prepared["meta"], wid, store.plain_vars(tenant))
    store.put_workbook(tenant, wid, source=text, fragment=prepared["fragment"], page=page,
                       headlines=prepared["headlines"], meta=prepared["meta"], sha=sha, head=head)


def delete(store: Store, gs, tenant: str, wid: str, if_match: str | None, *, if_none_match: str | None = None) -> dict:
    validate_workbook_id(wid)
    path = f"{wid}.org"
    gs.ensure()
    with gs.locked():
        fsck.before_write(store, gs)
        cur = store.workbook_sha(tenant, wid)
        if cur is None:  # a 404 without preconditions stays a 404 with them (RFC 9110 13.2.1)
            raise NotFound(f"no workbook {wid!r}")
        preconditions.check(f"workbook {wid!r}", cur[0], if_match, if_none_match)
        sha = unit.delete(store, gs, wid, path, cur[1].encode("utf-8"), f"delete {wid}",
                          lambda head: store.delete_workbook(tenant, wid, head=head))
    get_logger(tenant=tenant, workbook=wid).info("deleted", sha=sha)
    return {"sha": sha, "deleted": True}
