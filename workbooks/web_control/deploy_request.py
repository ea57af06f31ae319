"""What a deploy request (`PUT /api/workbooks/:id`) carries: the Org source and the commit message.

Two body forms, told apart by Content-Type:
- Org text: `text/plain`, `text/org` or `text/x-org` (charset UTF-8 if any); also a body with no
  Content-Type at all, which is how plain `curl --data-binary @f.org` and older clients send it.
  The commit message is `deploy <id>`.
- JSON (`application/json`, `application/*+json`): `{"source": "...", "message": "..."}`, where
  `message` (optional, default `deploy <id>`) becomes the git commit message.
Anything else is a 415. A message is text of at most MAX_MESSAGE characters whose first line
(the subject, what the log shows) is not blank and at most MAX_SUBJECT long; control characters
other than newline and tab, Unicode line separators and bidi controls are refused, since the
message is shown in logs and changelogs.
"""

from __future__ import annotations

import unicodedata

from workbooks.web_control.httperrors import HttpError
from workbooks.web_control.jsonbody import is_json_type, is_utf8_charset

ORG_TYPES = ("text/plain", "text/org", "text/x-org")
MAX_MESSAGE = 2000
MAX_SUBJECT = 200
MAX_LINES = 50
BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}


def body_kind(content_type: str | None) -> str:
    """"org" or "json" for a deploy body's Content-Type; 415 for anything else."""
    if content_type is None or not content_type.strip():
        return "org"
    if is_json_type(content_type):
        return "json"
    mime, *params = [p.strip() for p in content_type.split(";")]
    if mime.lower() in ORG_TYPES and all(is_utf8_charset(p) for p in params):
        return "org"
    raise HttpError(415, "unsupported_media_type",
                    f"a deploy takes Org text ({', '.join(ORG_TYPES)}) or JSON {{source, message}}, "
                    f"not {content_type[:100]!r}",
                    hint="send Content-Type: text/org, or application/json with {\"source\": ..., \"message\": ...}")


def default_message(wid: str) -> str:
    return f"deploy {wid}"


def check_message(message: object) -> str:
    """The commit message as git will get it (CRLF made LF, trailing blanks dropped), or a 400."""
    if not isinstance(message, str):
        raise HttpError(400, "bad_field", "'message' must be a string")
    msg = message.replace("\r\n", "\n")
    lines = [ln.rstrip() for ln in msg.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    msg = "\n".join(lines)
    if len(msg) > MAX_MESSAGE:
        raise HttpError(400, "bad_field", f"'message' is longer than {MAX_MESSAGE} characters")
    if not lines or not lines[0].strip():
        raise HttpError(400, "bad_field", "'message' needs a first line (the subject) that is not blank")
    if len(lines[0]) > MAX_SUBJECT:
        raise HttpError(400, "bad_field", f"the first line of 'message' is longer than {MAX_SUBJECT} characters",
                        hint="put details on the lines after a blank line")
    if len(lines) > MAX_LINES:
        raise HttpError(400, "bad_field", f"'message' has more than {MAX_LINES} lines")
    for ch in msg:
        if ch in "\n\t":
            continue
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cs", "Zl", "Zp") or ch in BIDI:
            what = "a NUL byte" if ch == "\0" else f"the control character U+{ord(ch):04X}"
            raise HttpError(400, "bad_field", f"'message' contains {what}")
    return msg


def check_source(source: object) -> str:
    if not isinstance(source, str):
        raise HttpError(400, "bad_field" if source is not None else "missing_field",
                        "'source' must be a string (the Org text)")
    if "\x00" in source:
        raise HttpError(400, "bad_request", "'source' contains a NUL byte", hint="Org source is text")
    return source


def from_json(data: dict, wid: str) -> tuple[str, str]:
    """(source, message) from a JSON deploy body; unknown fields are refused, not ignored."""
    unknown = sorted(set(data) - {"source", "message"})
    if unknown:
        raise HttpError(400, "unknown_field", f"unknown field {unknown[0][:64]!r}; a deploy takes source and message")
    if "source" not in data:
        raise HttpError(400, "missing_field", "the JSON body needs 'source' (the Org text)")
    source = check_source(data["source"])
    message = check_message(data["message"]) if "message" in data else default_message(wid)
    return source, message
