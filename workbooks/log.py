"""structlog JSON lines on stdout, one per event, with the process's role and id bound."""

from __future__ import annotations

import logging
import os
import sys

import structlog

_configured = False


def configure(role: str, stream=None, level: str | None = None, **bind) -> structlog.stdlib.BoundLogger:
    """Configure this process's logging once and return a logger with role, pid and `bind` bound."""
    global _configured
    lvl = getattr(logging, (level or os.environ.get("WB_LOG_LEVEL", "INFO")).upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(role=role, pid=os.getpid(), **bind)
    _configured = True
    return structlog.get_logger()


def get_logger(**bind) -> structlog.stdlib.BoundLogger:
    if not _configured:
        configure(os.environ.get("WB_ROLE", "cli"), stream=sys.stderr)
    return structlog.get_logger().bind(**bind)
