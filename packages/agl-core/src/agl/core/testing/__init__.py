"""Test helpers shipped with agl-core, so backends and plugins test against the same contract.

`ManualClock` drives deadlines deterministically; `StoreConformance` is the suite every
store backend passes (subclass it in a ``Test*`` class and provide a ``make_store`` fixture);
`ranks` states an expected span order without the clock's values.
"""

from agl.core.testing.clock import ManualClock
from agl.core.testing.conformance import StoreConformance
from agl.core.testing.order import ranks

__all__ = ["ManualClock", "StoreConformance", "ranks"]
