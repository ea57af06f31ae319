"""`{{var:KEY}}` and `{{secret:KEY}}` templates.

Published pages resolve variables only (HTML-escaped); a secret's template stays literal text
in the page. Secrets resolve only at egress, when host code sends a request on the tenant's
behalf (`resolve_for_egress`), so no rendered HTML, git commit, log line or API response ever
contains one.
"""

from __future__ import annotations

import html
import re
from typing import Callable

from workbooks.errors import NotFound

TEMPLATE_RE = re.compile(r"\{\{(var|secret):([A-Za-z_][A-Za-z0-9_.-]{0,127})\}\}")


def substitute(text: str, lookup: Callable[[str, str], str | None]) -> str:
    """Replace each template whose lookup returns a value; others stay as written."""

    def repl(m: re.Match) -> str:
        v = lookup(m.group(1), m.group(2))
        return m.group(0) if v is None else v

    return TEMPLATE_RE.sub(repl, text)


def resolve_for_page(fragment: str, plain_vars: dict[str, str]) -> str:
    """An HTML fragment with `{{var:KEY}}` filled in (escaped); secrets never."""
    if "{{var:" not in fragment:
        return fragment
    return substitute(fragment, lambda kind, key: html.escape(plain_vars[key]) if kind == "var" and key in plain_vars else None)


def resolve_for_egress(store, tenant: str, text: str, *, strict: bool = True) -> str:
    """Text for an outbound request of host code (a URL, a header, a body), secrets included.

    With `strict`, an unknown variable or secret raises NotFound (naming the key, never a value)
    rather than sending the template text to a third party.
    """
    plain = store.plain_vars(tenant)

    def lookup(kind: str, key: str) -> str | None:
        if kind == "var":
            v = plain.get(key)
        else:
            v = store.secret_value(tenant, key)
        if v is None and strict:
            raise NotFound(f"no {kind} {key!r} for this tenant")
        return v

    return substitute(text, lookup)


def referenced_vars(text: str) -> set[str]:
    return {m.group(2) for m in TEMPLATE_RE.finditer(text) if m.group(1) == "var"}


def protect(source: str) -> tuple[str, dict[str, str]]:
    """Swap each template for an opaque alphanumeric token before rendering.

    Org markup would otherwise reach inside a template (`API_TOKEN` becomes a subscript); a
    token is one plain word that the renderer passes through untouched. `restore` puts the
    templates back into the rendered HTML.
    """
    import secrets as _secrets

    if "{{" not in source:
        return source, {}
    nonce = _secrets.token_hex(6)
    while nonce in source:
        nonce = _secrets.token_hex(6)
    tokens: dict[str, str] = {}

    def repl(m: re.Match) -> str:
        tok = f"wbtpl{nonce}n{len(tokens)}x"
        tokens[tok] = m.group(0)
        return tok

    return TEMPLATE_RE.sub(repl, source), tokens


def restore(fragment: str, tokens: dict[str, str]) -> str:
    for tok, template in tokens.items():
        fragment = fragment.replace(tok, html.escape(template, quote=True))
    return fragment


def restore_text(text: str, tokens: dict[str, str]) -> str:
    """Templates back into plain text (a title): no escaping, the page shell escapes."""
    for tok, template in tokens.items():
        text = text.replace(tok, template)
    return text


def resolve_text(text: str, plain_vars: dict[str, str]) -> str:
    """`{{var:KEY}}` in plain text (a title, a description) filled in unescaped; secrets never."""
    if "{{var:" not in text:
        return text
    return substitute(text, lambda kind, key: plain_vars.get(key) if kind == "var" else None)
