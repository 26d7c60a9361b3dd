"""The harness's pytest plugin stays out of other projects' test suites: installing
sendspin-harness adds no options and no autouse leak guard to them. This
repository loads it from its root conftest.py."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

LEAKY_TEST = """
import subprocess, sys

def test_leaves_a_child_running():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    open("child.pid", "w").write(str(child.pid))
"""


def pytest_in(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=directory,
                          capture_output=True, text=True, timeout=120)


def kill_the_leaked_child(directory: Path) -> None:
    """The inner pytest exited, so init adopted (and reaps) its child; we only end it."""
    pid_file = directory / "child.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        pid_file.unlink()


def test_another_project_sees_no_harness_options(tmp_path: Path) -> None:
    out = pytest_in(tmp_path, "--help")
    assert out.returncode == 0, out.stderr
    assert "sendspin" not in out.stdout and "--bound" not in out.stdout


def test_another_project_gets_no_leak_guard_and_this_one_does(tmp_path: Path) -> None:
    (tmp_path / "test_leaky.py").write_text(LEAKY_TEST)
    try:
        elsewhere = pytest_in(tmp_path, "-q", "test_leaky.py")
        assert elsewhere.returncode == 0, elsewhere.stdout + elsewhere.stderr
    finally:
        kill_the_leaked_child(tmp_path)
    try:
        guarded = pytest_in(tmp_path, "-q", "-p", "harness.pytest_plugin", "test_leaky.py")
        assert guarded.returncode == 1, guarded.stdout + guarded.stderr
        assert "test left child processes behind" in guarded.stdout
    finally:
        kill_the_leaked_child(tmp_path)
