"""Trust events as structlog lines, only where a process configured logging (servers, workers).

A CLI run has not configured logging, and its stdout is the verb's output: there the events
are dropped rather than mixed into it. Secrets never appear: callers pass redacted URLs.
"""

from __future__ import annotations


def emit(event: str, level: str = "info", **fields) -> None:
    from workbooks import log

    if not getattr(log, "_configured", False):
        return
    getattr(log.get_logger(), level)(event, **fields)
