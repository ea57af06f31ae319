"""`python -m workbooks.web_public`: one public-plane process (run N of them on one port)."""

from __future__ import annotations

import sys

from workbooks.web_control.runtime import common_args, run


def main(argv: list[str] | None = None) -> int:
    ns = common_args("workbooks.web_public", 4001).parse_args(argv)

    def make_app(ns):
        from workbooks.web_public.app import create_app

        return create_app(ns.data_dir)

    return run("public", make_app, ns)


if __name__ == "__main__":
    sys.exit(main())
