"""The project's tests: the gate modules' runs are theirs to reap, not a test's leftovers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from gate_runs import GateRuns


@pytest.fixture
def processes_owned_elsewhere(request: pytest.FixtureRequest) -> Callable[[], set[int]]:
    """A gate module's runs start during any test that waits for one (`runs`, module-scoped),
    and the module's fixture reaps them at its end."""
    runs = request.getfixturevalue("runs") if "runs" in request.fixturenames else None
    return runs.pids if isinstance(runs, GateRuns) else set
