"""The page shell shared by `wbx render --page` and the public plane. (Filled in by the render work.)"""

from __future__ import annotations

import html as _html


def page_from_org(org: str, fragment: str) -> str:
    return render_page(fragment, title="", description="")


def render_page(fragment: str, *, title: str, description: str, lang: str = "en") -> str:
    t = _html.escape(title)
    d = _html.escape(description)
    return (
        f'<!DOCTYPE html>\n<html lang="{_html.escape(lang)}"><head><meta charset="utf-8">'
        f'<meta name="description" content="{d}"><title>{t}</title></head>'
        f"<body>{fragment}</body></html>\n"
    )
