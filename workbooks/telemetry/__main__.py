"""`python -m workbooks.telemetry --data D`: the supervised indexer (one per data dir).

Exits 0 on SIGTERM/SIGINT after the pass in progress, 78 when another indexer holds the data
dir's lock (`telemetry.db.lock`): two writers would only fight over the same rows.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sys
from pathlib import Path

from workbooks.telemetry import DB_FILE

EX_CONFIG = 78


def main(argv=None) -> int:
    from workbooks.log import configure

    p = argparse.ArgumentParser(prog="python -m workbooks.telemetry",
                                description="Index run folders into $WB_DATA/telemetry.db (supervised).")
    p.add_argument("--data", default=os.environ.get("WB_DATA") or "wb-data")
    p.add_argument("--interval", type=float, default=float(os.environ.get("WB_TELEMETRY_INTERVAL_S", "0.5")),
                   help="seconds between scans (default 0.5, $WB_TELEMETRY_INTERVAL_S)")
    ns = p.parse_args(argv)
    log = configure("telemetry", id=os.environ.get("WB_CHILD_ID") or "telemetry")
    if not 0.01 <= ns.interval <= 60:
        log.error("telemetry_bad_interval", interval=ns.interval, hint="from 0.01 to 60 seconds")
        return EX_CONFIG
    data = Path(ns.data).expanduser().resolve()
    data.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(data / (DB_FILE + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.error("telemetry_already_running", data_dir=str(data),
                  hint="another telemetry indexer serves this data dir")
        return EX_CONFIG
    stopping = []

    def on_signal(signum, _frame):
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    from workbooks.readiness import notify_ready
    from workbooks.telemetry.indexer import run_forever

    log.info("telemetry_starting", data_dir=str(data), interval_s=ns.interval)
    run_forever(data, ns.interval, lambda: bool(stopping), log, on_ready=notify_ready)
    log.info("telemetry_stopped")
    os.close(lock_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
