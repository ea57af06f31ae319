"""Operator verbs. Until the pool lands, `serve` runs the kernel verbs on the sample workbook."""

from __future__ import annotations

import json
from importlib import resources

from workbooks.cli.output import Output


def cmd_serve(ns) -> Output:
    from workbooks.oql import default_kernel

    org = resources.files("workbooks.samples").joinpath("demo.org").read_text("utf-8")
    k = default_kernel()
    data = {
        "query": k.parse_headlines(org),
        "tangle": k.tangle_plan(org),
        "lint": k.validate(org),
    }
    return Output(data=data, human=lambda d, st: json.dumps(d, indent=2))


def register(subs) -> None:
    p = subs.add_parser("serve", help="start the service (for now: run the kernel verbs on the sample workbook)")
    p.set_defaults(func=cmd_serve)
