"""Whether author HTML (`#+HTML:`, `#+begin_export html`, `@@html:…@@`) reaches rendered pages.

Operators decide, not writers: `WB_RAW_HTML=0` in the environment turns it off everywhere that
process renders (the control plane's deploys and `/api/oql/render`, `wbx render`), and a tenant
variable `WB_RAW_HTML` set to `0` turns it off for that tenant (its published pages are
re-rendered when the variable changes). Off is passed to the
kernel as the render option `raw_html: false`, which drops author HTML entirely. On (the
default) lets it through, balanced by the kernel so it cannot break the page around it.

A value that is not one of 1/0, true/false, on/off, yes/no counts as off: a typo in a safety
switch must not open it.
"""

from __future__ import annotations

import os
from typing import Mapping

VAR = "WB_RAW_HTML"
_ON = {"1", "true", "on", "yes"}
_OFF = {"0", "false", "off", "no"}


def switch_value(value: str | None) -> bool | None:
    """True/False for a recognised value, None for junk; an unset or empty value is on."""
    if value is None or not value.strip():
        return True
    v = value.strip().lower()
    if v in _ON:
        return True
    if v in _OFF:
        return False
    return None


def enabled_globally(env: Mapping[str, str] | None = None) -> bool:
    """The operator's switch for this process (`WB_RAW_HTML`, default on)."""
    return switch_value((os.environ if env is None else env).get(VAR)) is True


def enabled_for_tenant(store, tenant: str, env: Mapping[str, str] | None = None) -> bool:
    """Global switch and the tenant's own variable `WB_RAW_HTML` (a plain, non-secret variable)."""
    if not enabled_globally(env):
        return False
    return switch_value(store.plain_vars(tenant).get(VAR)) is True
