"""Tell the supervisor a child is in service (the `WB_READY_FD` contract of workbooks.supervisor).

Kept in its own module, free of imports, because a worker's start-up time is the pool's recovery time and
importing the supervisor module (trio, the actor layer) would add a quarter of a second.
"""

from __future__ import annotations

import os

READY_FD_ENV = "WB_READY_FD"


def notify_ready() -> bool:
    """Called by a child once it can do its job; a no-op when not supervised with readiness."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if not fd:
        return False
    try:
        os.write(int(fd), b"R")
        os.close(int(fd))
        return True
    except (OSError, ValueError):
        return False
