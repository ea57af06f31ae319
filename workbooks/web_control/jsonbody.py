"""Strict JSON request bodies for the control plane's JSON routes.

A JSON route takes `application/json` or `application/*+json` (charset UTF-8 if one is named)
and nothing else (415 `unsupported_media_type`), so a form or XML post is never half-read as
JSON. The parser refuses what Python's `json` would otherwise accept or crash on: NaN and
Infinity, floats that overflow to infinity, and integers longer than MAX_INT_DIGITS (Python
raises a bare ValueError past 4300 digits, which would be a 500). All are 400 `bad_json`.
"""

from __future__ import annotations

import json
import math
import re

from workbooks.web_control.httperrors import HttpError

JSON_MIME = re.compile(r"application/(?:json|[a-z0-9!#$&^_.-]+\+json)")
MAX_INT_DIGITS = 1000  # far beyond any count or size a route takes


def is_json_type(content_type: str | None) -> bool:
    """`application/json` or `application/*+json`, with no parameter but an optional UTF-8 charset."""
    if not content_type:
        return False
    mime, *params = [p.strip() for p in content_type.split(";")]
    mime = mime.lower()
    if not JSON_MIME.fullmatch(mime):
        return False
    return all(is_utf8_charset(p) for p in params)


def is_utf8_charset(param: str) -> bool:
    """A media-type parameter that says `charset=utf-8` (the only one our text and JSON bodies take)."""
    name, _, value = param.partition("=")
    return name.strip().lower() == "charset" and value.strip().strip('"').lower() in ("utf-8", "utf8")


def require_json_type(ctype: str | None) -> None:
    """415 unless the request says its body is JSON (a JSON route never guesses)."""
    if not is_json_type(ctype):
        got = f"Content-Type {ctype[:100]!r}" if ctype else "no Content-Type"
        raise HttpError(415, "unsupported_media_type", f"this route takes a JSON body; the request has {got}",
                        hint="send Content-Type: application/json")


class _BadNumber(ValueError):
    pass


def _no_constant(name: str):
    raise _BadNumber(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise _BadNumber(f"the number {text[:40]}{'...' if len(text) > 40 else ''} is out of range")
    return v


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _BadNumber(f"an integer of {len(text.lstrip('-'))} digits is out of range "
                         f"(at most {MAX_INT_DIGITS})")
    return int(text)


def parse_json(body: bytes):
    """Strict JSON: UTF-8, finite numbers of sane size, no NaN/Infinity; malformed input is a 400."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite_float,
                          parse_int=_bounded_int)
    except UnicodeDecodeError:
        raise HttpError(400, "bad_json", "the body is not UTF-8 JSON") from None
    except json.JSONDecodeError as e:
        raise HttpError(400, "bad_json", f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise HttpError(400, "bad_json", "the JSON body is nested too deeply") from None
    except ValueError as e:  # _BadNumber, or any other limit of the number parsers
        msg = str(e) if isinstance(e, _BadNumber) else "a number in the JSON body is out of range"
        raise HttpError(400, "bad_json", msg) from None
