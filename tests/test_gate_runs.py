"""The gate's own tests' run keeper: a slow run goes on, a hung one is killed with all under it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import gate_runs
import pytest
from gate_runs import GateRun, process_tree

from harness.topology import proc_stat

# a gate run's stand-in: its child has a session of its own, as a run's servers, proxies and
# clients do, and both only sleep
SCRIPT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)
"""


class Clock:
    """`time.monotonic` for `gate_runs`, moved on by the test: idleness is judged by the
    clock alone, so a busy machine cannot make this test lie."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def start(tmp_path: Path) -> tuple[GateRun, int]:
    run = GateRun(tmp_path, None)
    with open(tmp_path / "output.txt", "wb") as out:
        run.process = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=out)
    deadline = time.monotonic() + 30
    while not (text := (tmp_path / "output.txt").read_text()).endswith("\n"):
        assert time.monotonic() < deadline, "the stand-in printed no pid within 30 s"
        time.sleep(0.02)
    return run, int(text.split()[0])


def alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[0] != "Z"


def test_a_run_that_prints_is_not_hung_and_one_that_stops_printing_is(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(gate_runs, "time", clock)
    run, grandchild = start(tmp_path)
    try:
        run.progressed = clock.now
        for _ in range(5):  # a slow run: each case takes most of the idle limit, in all far more
            clock.now += gate_runs.GATE_IDLE_S * 0.9
            with open(tmp_path / "output.txt", "a") as out:
                out.write(".")
            assert not run.hung()
        clock.now += gate_runs.GATE_IDLE_S * 0.9
        assert not run.hung()
        clock.now += gate_runs.GATE_IDLE_S * 0.2
        assert run.hung()
        assert grandchild in process_tree(run.process.pid)
    finally:
        monkeypatch.undo()
        run.stop()
    assert run.process.returncode == -9
    deadline = time.monotonic() + 10
    while alive(grandchild):  # reparented to init, which reaps it
        assert time.monotonic() < deadline, "the run's child of another session outlived the kill"
        time.sleep(0.02)
