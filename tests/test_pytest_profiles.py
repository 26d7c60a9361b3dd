"""The pytest plugin's `--profile legacy|noise|both`, seen from outside: an inner pytest
with the plugin runs scenarios that take `profile`, one marked `skip_profile`, one with
a smaller noise budget (`examples(3, noise=1)`), and we read the ids, the outcomes and,
from counter files, how many examples ran in each profile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = '''
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from harness.pytest_plugin import examples


def count(name):
    path = Path(name + ".count")
    path.write_text(str(int(path.read_text()) + 1 if path.exists() else 1))


def test_plain(profile):
    count("plain-" + profile)


@pytest.mark.skip_profile("noise", reason="no noise form here")
def test_legacy_only(profile):
    count("legacy_only-" + profile)


@pytest.mark.parametrize(("version", "profile"), [("6.1.1", "legacy")])
def test_own_parametrization(version, profile):
    count("own-" + profile)


@examples(3, noise=1)
@given(n=st.integers(0, 1000))
def test_budget(run, profile, n):
    async def scenario():
        count("budget-" + profile)
    run(scenario())
'''


def inner_pytest(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (directory / "test_inner.py").write_text(TESTS)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "harness.pytest_plugin",
                           "-v", "-rs", "test_inner.py", *args], cwd=directory, capture_output=True, text=True,
                          timeout=120)


def counts(directory: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in directory.glob("*.count")}


def test_both_is_the_default_and_each_profile_has_its_id_and_budget(tmp_path: Path) -> None:
    done = inner_pytest(tmp_path)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    for line in ("test_plain[legacy] PASSED", "test_plain[noise] PASSED", "test_legacy_only[legacy] PASSED",
                 "test_legacy_only[noise] SKIPPED", "test_budget[legacy] PASSED", "test_budget[noise] PASSED"):
        assert line in out, out
    assert "no noise form here" in out
    assert "test_own_parametrization[6.1.1-legacy] PASSED" in out, out  # its own `profile`, left alone
    assert counts(tmp_path) == {"plain-legacy": 1, "plain-noise": 1, "legacy_only-legacy": 1, "own-legacy": 1,
                                "budget-legacy": 3, "budget-noise": 1}


def test_one_profile_and_the_examples_override(tmp_path: Path) -> None:
    """--profile noise runs only noise; --examples N gives noise N too, budget or not."""
    done = inner_pytest(tmp_path, "--profile", "noise", "--examples", "2", "-k", "not own")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "test_plain[noise] PASSED" in done.stdout and "[legacy]" not in done.stdout, done.stdout
    assert counts(tmp_path) == {"plain-noise": 1, "budget-noise": 2}


def test_an_unknown_profile_is_a_usage_error(tmp_path: Path) -> None:
    done = inner_pytest(tmp_path, "--profile", "tls")
    assert done.returncode == 4 and "--profile: invalid choice: 'tls'" in done.stderr, done.stderr
