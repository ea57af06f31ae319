"""HTML to the readable text the fetch tool gives the model.

What the original stripped (script, style, noscript, nav, footer) is dropped with its content,
along with template, svg, iframe and object; every other tag becomes a space, character references
(named, decimal, hex) are decoded, and runs of whitespace become one space. The stdlib parser is
forgiving: broken markup gives text, never an error.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

SKIPPED = frozenset({"script", "style", "noscript", "nav", "footer", "template", "svg", "iframe", "object"})
_SPACE = re.compile(r"\s+")


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip: list[str] = []

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in SKIPPED:
            self.skip.append(tag)
        self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs) -> None:
        self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIPPED and tag in self.skip:
            while self.skip and self.skip.pop() != tag:
                pass
        self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    p = _Text()
    try:
        p.feed(html)
        p.close()
    except Exception:  # noqa: BLE001 - the parser is lenient; anything it still chokes on is dropped
        pass
    return _SPACE.sub(" ", "".join(p.parts)).strip()


def looks_like_html(content_type: str, body: str) -> bool:
    if "html" in content_type:  # text/html, application/xhtml+xml
        return True
    head = body[:512].lstrip().lower()
    return head.startswith(("<!doctype html", "<html", "<head", "<body"))
