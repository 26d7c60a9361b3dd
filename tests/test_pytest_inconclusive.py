"""The pytest plugin's INCONCLUSIVE outcome, seen from outside: an inner pytest with
the plugin runs tests whose checkers raise InconclusiveViolation (always, or once)
and an ordinary failure, and we read its outcomes, its summary and its exit code.
Counter files show how often each test ran."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = '''
from pathlib import Path

from hypothesis import given, strategies as st

from harness.checkers import Stall, Verdict, require


def inconclusive():
    require(Verdict("I2 reads never starve", "probe-1", False, "read latency over the bound",
                    stalls=[Stall("harness", 412_000, 12.3)]))


def runs(name):
    path = Path(name + ".count")
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    return n


def test_always_inconclusive():
    runs("always")
    inconclusive()


def test_inconclusive_once_then_passes():
    if runs("once") == 1:
        inconclusive()


@given(st.integers(0, 3))
def test_hypothesis_inconclusive_once(n):
    # Hypothesis replays the failing example, which passes: a FlakyFailure around the violation.
    if runs("hypothesis") == 1:
        inconclusive()


def test_real_failure():
    runs("real")
    require(Verdict("I6 bounded resources", "probe-2", False, "held 9 MiB"))
'''


def inner_pytest(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (directory / "test_inner.py").write_text(TESTS)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "harness.pytest_plugin",
                           "-v", "test_inner.py", *args], cwd=directory, capture_output=True, text=True, timeout=120)


def runs(directory: Path, name: str) -> int:
    return int((directory / f"{name}.count").read_text())


def outcome(text: str, test: str) -> str:
    """The outcome word pytest -v printed for `test`, in or out of xdist (its lines read
    "[gw0] [ 50%] PASSED test_inner.py::test")."""
    found = re.search(rf"^(?:\[gw\d+\] \[ *\d+%\] ([A-Z]+) test_inner\.py::{test} *$"
                      rf"|test_inner\.py::{test} ([A-Z]+)\b)", text, re.M)
    assert found is not None, text
    return found[1] or found[2]


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["alone", "xdist"])
def test_inconclusive_twice_is_reported_as_inconclusive_and_a_passing_re_run_passes(tmp_path: Path,
                                                                                     xdist: list[str]) -> None:
    out = inner_pytest(tmp_path, "-k", "not real", *xdist)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text  # nothing failed
    assert outcome(text, "test_always_inconclusive") == "INCONCLUSIVE"
    assert outcome(text, "test_inconclusive_once_then_passes") == "PASSED"
    assert outcome(text, "test_hypothesis_inconclusive_once") == "PASSED"
    assert re.search(r"\b2 passed, (1 deselected, )?1 inconclusive\b", text), text
    stalled = "harness's own event loop stalled 412 ms at 12.3 s"
    # under xdist a worker ran them: the re-runs reach the controller's summary on their reports
    assert f"test_inner.py::test_always_inconclusive: inconclusive (I2 reads never starve (probe-1): {stalled}), " \
        f"re-run once; the re-run was INCONCLUSIVE again: I2 reads never starve (probe-1): {stalled}" in text
    assert f"test_inner.py::test_inconclusive_once_then_passes: inconclusive (I2 reads never starve (probe-1): " \
        f"{stalled}), re-run once; the re-run passed" in text
    assert (runs(tmp_path, "always"), runs(tmp_path, "once")) == (2, 2)
    assert runs(tmp_path, "hypothesis") > 2  # the examples of the first run, its replay, then the re-run's


def test_a_real_failure_is_not_re_run_and_fails(tmp_path: Path) -> None:
    out = inner_pytest(tmp_path, "-k", "real")
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "test_inner.py::test_real_failure FAILED" in text
    assert "[FAIL] I6 bounded resources (probe-2): held 9 MiB" in text
    assert "re-run once" not in text and "inconclusive: our own instrument stalled" not in text
    assert runs(tmp_path, "real") == 1
