"""Telemetry: every run folder (agent `run-<n>`, workflow and TODO outline `wf-<n>`) indexed into SQLite.

One writer, the supervised `telemetry` child (`python -m workbooks.telemetry --data D`), tails each
run's `_steps.jsonl` by byte offset and re-reads `_status.json` when it changes, into
`$WB_DATA/telemetry.db` (WAL). Readers (the control plane's `/api/telemetry` routes, `/metrics`)
open it read-only and answer from what is indexed, saying how fresh it is. See README.md here.
"""

DB_FILE = "telemetry.db"
