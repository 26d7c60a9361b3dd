"""The project's tests: the plugin's leftover-process check, aware of module-owned gate runs."""

from __future__ import annotations

from collections.abc import Iterator

import gate_runs
import pytest


@pytest.fixture(autouse=True)
def no_leftover_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    yield from gate_runs.no_leftover_processes(request)
