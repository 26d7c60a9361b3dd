"""pytest plugin: options, bounds, scenario directories and the leak guard."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings

from .settings import DEFAULT_BOUNDS, Bounds
from .topology import live_children

# Scenarios take seconds per example, so shrinking (re-running dozens of
# examples) is opt-in: --shrink. Derandomized so that CI runs are repeatable.
_PROFILE = dict(deadline=None, database=None, derandomize=True, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("sendspin", phases=[Phase.explicit, Phase.generate], **_PROFILE)
settings.register_profile("sendspin-shrink", **_PROFILE)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sendspin", "sendspin-harness")
    group.addoption("--bound", action="append", default=[], metavar="NAME=VALUE",
                    help="override a correctness bound from harness/settings.py (repeatable)")
    group.addoption("--shrink", action="store_true",
                    help="let Hypothesis shrink a failing scenario to its smallest schedule (slow)")
    group.addoption("--examples", type=int, default=None,
                    help="Hypothesis examples per scenario (default: each scenario's own small budget)")


def pytest_configure(config: pytest.Config) -> None:
    settings.load_profile("sendspin-shrink" if config.getoption("shrink") else "sendspin")
    if config.getoption("examples") is not None:
        os.environ["SENDSPIN_EXAMPLES"] = str(config.getoption("examples"))
    config.addinivalue_line("markers", "scenario: a conformance scenario (scenarios/)")


@pytest.fixture(scope="session")
def bounds(pytestconfig: pytest.Config) -> Bounds:
    try:
        return DEFAULT_BOUNDS.with_overrides(pytestconfig.getoption("bound"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture
def fresh_dir(tmp_path: Path) -> Callable[[], Path]:
    """A new empty directory per call: one per Hypothesis example."""
    counter = itertools.count(1)
    return lambda: tmp_path / f"run-{next(counter)}"


@pytest.fixture
def run() -> Callable[..., Any]:
    """Run a coroutine to completion with a hard timeout."""
    def runner(coro: Coroutine[Any, Any, Any], timeout: float = 120.0) -> Any:
        return asyncio.run(asyncio.wait_for(coro, timeout))
    return runner


def examples(default: int) -> Callable[[Any], Any]:
    """Hypothesis settings for a scenario: its own small budget unless --examples says otherwise."""
    override = os.environ.get("SENDSPIN_EXAMPLES")
    return settings(max_examples=int(override) if override else default)


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Every process a test spawns must be reaped by the time it ends."""
    before = set(live_children())
    yield
    left = [pid for pid in live_children() if pid not in before]
    if left:
        pytest.fail(f"test left child processes behind: {left}")
