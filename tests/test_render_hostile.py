"""Hostile inputs never hang `render` and never break its output.

Each family from the kernel issue (thousands of unclosed openers, a 1 MB line, 10,000 nested
list levels, 10,000 stars, ...) renders 1 MB inside the kernel's wall-time deadline, and a
64 KB instance renders well-formed. Timings and growth ratios are figures, printed by
load/render_bench.py, not asserted here.
"""

from __future__ import annotations

import json

import pytest

from workbooks.oql import Kernel
try:
    from tests.hostile_docs import FAMILIES
except ImportError:  # tests/ itself on sys.path
    from hostile_docs import FAMILIES
try:
    from tests.test_render_safety import wellformed_errors
except ImportError:  # tests/ itself on sys.path
    from test_render_safety import wellformed_errors

MB = 1 << 20


@pytest.fixture(scope="module")
def kernel():
    # A hang would hit this deadline (KernelDeadline) instead of the test timing out.
    return Kernel(deadline_ms=5000)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_megabyte_renders_within_the_deadline(kernel, family):
    doc = FAMILIES[family](MB)
    out = kernel.call_raw("render_with", doc, json.dumps({"raw_html": False}))
    assert out  # rendered, no trap, no deadline


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hostile_output_is_well_formed(kernel, family):
    doc = FAMILIES[family](64 * 1024)
    html = kernel.call_raw("render_with", doc, json.dumps({"raw_html": False, "toc": True})).decode()
    assert wellformed_errors(html) == []
