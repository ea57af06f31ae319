"""Hostile Org documents for the render tests and benchmarks: each family builds ~`size` bytes.

The generators live in workbooks.loadtest.hostile (the load tester's hostile share uses them too);
this module keeps the names its importers use.
"""

from __future__ import annotations

from workbooks.loadtest.hostile import FAMILIES, MB, distinct_radios, nested_lists, repeat, stars

__all__ = ["FAMILIES", "MB", "distinct_radios", "nested_lists", "repeat", "stars"]
