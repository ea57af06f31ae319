"""The render options a caller may pass to the kernel's `render_with`, and their check.

Why a check on the host: the kernel ignores what it does not know (and an options JSON it cannot
parse), so a misspelt option (`"tok": true`) would silently render with the defaults. Every
entry point that takes options from a user (`wbx render --options`, the control plane's
`POST /api/oql/render?options=...`) refuses an unknown key by name instead.

RENDER_OPTION_KEYS is the one list: the JSON keys that `apply_json_options` in
`kernel/src/render/options.rs` reads, as documented in `kernel/src/render/README.md`
(`headline_levels` is the parser's alias of `H`). tests/test_cli_render_options.py checks the list
against both files, so a new kernel option cannot be forgotten here.
"""

from __future__ import annotations

from workbooks.errors import BadRequest

RENDER_OPTION_KEYS = frozenset(
    {
        "raw_html",
        "toc",
        "num",
        "H",
        "headline_levels",
        "sup",
        "todo",
        "tags",
        "pri",
        "planning",
        "drawers",
        "footnotes",
        "broken_links",
        "emphasis",
        "special_strings",
        "entities",
        "smart_quotes",
        "latex",
        "timestamps",
        "highlight",
        "base_url",
        "macros",
        "metadata",
    }
)


class UnknownRenderOption(BadRequest):
    """A render option the kernel does not have (or options that are not a JSON object)."""

    code = "bad_request"


def check_render_options(options: object) -> dict:
    """`options` unchanged when it is a JSON object of known keys; UnknownRenderOption otherwise."""
    if not isinstance(options, dict):
        raise UnknownRenderOption(
            f"render options must be a JSON object, not {type(options).__name__}",
            hint='for example {"toc": true, "num": false}',
        )
    for key in options:
        if key not in RENDER_OPTION_KEYS:
            shown = key if len(key) <= 60 else key[:60] + "..."
            raise UnknownRenderOption(
                f"unknown render option {shown!r}",
                hint="known options: " + ", ".join(sorted(RENDER_OPTION_KEYS, key=str.lower)),
            )
    return options
