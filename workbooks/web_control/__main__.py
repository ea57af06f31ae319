"""`python -m workbooks.web_control`: one control-plane process (run N of them on one port)."""

from __future__ import annotations

import os
import sys

from workbooks.web_control.runtime import common_args, run


def main(argv: list[str] | None = None) -> int:
    p = common_args("workbooks.web_control", 4000)
    p.add_argument("--pool", default=os.environ.get("WB_POOL_ENDPOINT") or None,
                   help="the OQL pool's client endpoint (default: the in-process kernel)")
    p.add_argument("--supervisor", default=os.environ.get("WB_SUPERVISOR_ENDPOINT") or None,
                   help="the supervisor's control endpoint (for the ops routes)")
    ns = p.parse_args(argv)

    def make_app(ns):
        from workbooks.web_control.app import create_app

        return create_app(ns.data_dir, pool_endpoint=ns.pool, supervisor_endpoint=ns.supervisor)

    return run("control", make_app, ns)


if __name__ == "__main__":
    sys.exit(main())
