"""HTTP preconditions on a workbook (RFC 9110 section 13): If-Match and If-None-Match.

Evaluated under the tenant's repo lock against the workbook's current sha (its ETag), so the
check and the write are one step. A false precondition is a 412 whose details carry the current
sha; it is never confused with a 409 (a real conflict such as a taken name).

- `If-Match: *` holds when the workbook exists; `If-Match: "sha", ...` when one of the tags
  equals the current sha by strong comparison (a weak tag `W/"..."` never matches). A workbook
  that does not exist matches no tag.
- `If-None-Match: *` holds when the workbook does not exist; a tag list holds when none of the
  tags equals the current sha by weak comparison. It is evaluated only when If-Match is absent
  or held (the RFC's order).
A bare sha without quotes is taken as that tag (clients often forget the quotes).
"""

from __future__ import annotations

from workbooks.web_control.httperrors import HttpError

MAX_TAGS = 64


def parse_tags(value: str) -> tuple[bool, list[tuple[bool, str]]]:
    """(is `*`, [(weak, opaque tag)]) of an If-Match / If-None-Match field value."""
    v = value.strip()
    if v == "*":
        return True, []
    tags: list[tuple[bool, str]] = []
    for part in v.split(","):
        t = part.strip()
        if not t:
            continue
        weak = t[:2].upper() == "W/"
        if weak:
            t = t[2:].strip()
        if len(t) >= 2 and t[0] == '"' and t[-1] == '"':
            t = t[1:-1]
        tags.append((weak, t))
        if len(tags) >= MAX_TAGS:
            break
    return False, tags


def if_match_holds(value: str, current: str | None) -> bool:
    star, tags = parse_tags(value)
    if current is None:
        return False
    if star:
        return True
    return any(not weak and tag == current for weak, tag in tags)


def if_none_match_holds(value: str, current: str | None) -> bool:
    star, tags = parse_tags(value)
    if current is None:
        return True
    if star:
        return False
    return not any(tag == current for _, tag in tags)


def check(what: str, current: str | None, if_match: str | None, if_none_match: str | None) -> None:
    """Raise 412 precondition_failed when a given precondition does not hold for `current`."""
    if if_match is not None and not if_match_holds(if_match, current):
        _fail(what, current, "If-Match", if_match)
    if if_none_match is not None and not if_none_match_holds(if_none_match, current):
        _fail(what, current, "If-None-Match", if_none_match)


def _fail(what: str, current: str | None, header: str, value: str) -> None:
    state = f"is at {current}" if current is not None else "does not exist"
    shown = value.strip()[:100]
    raise HttpError(412, "precondition_failed", f"{what} {state}; {header}: {shown} does not hold",
                    hint="GET it, merge your change and deploy again with its ETag in If-Match",
                    data={"current": current})
