"""pytest plugin of agl-core (registered through ``pytest11``): shared fixtures."""

from __future__ import annotations

import pytest

from agl.core.testing.clock import ManualClock


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock()
