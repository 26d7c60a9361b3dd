"""Start-up and exit waits do not count the time a child waited for a CPU (`StartupClock`): a
starved child is given its share of the machine, a hung one still times out, and no
wait goes past the cap. The starvation is real: hogs pinned to the child's CPU."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.protocol.cpuwait import cpu_ns
from harness.topology import Child, StartupClock, StartupError, spawn_child, wait_ready_file

HOGS = 5  # the child gets about a sixth of its CPU
WORK_S = 0.5  # CPU time the child needs before it is ready


def child_program(ready: Path, work_s: float | None) -> list[str]:
    """A child that spins for `work_s` CPU-s (None: for ever) and then writes `ready`."""
    body = ("import os, time\n"
            f"while {work_s is None} or time.process_time() < {work_s}: pass\n"
            f"open({str(ready)!r} + '.tmp', 'w').write('{{}}')\n"
            f"os.replace({str(ready)!r} + '.tmp', {str(ready)!r})\n")  # whole, as our programs write it
    return [sys.executable, "-c", body]


@pytest.fixture
def one_cpu() -> Iterator[int]:
    """A CPU of ours with HOGS spinning processes pinned to it."""
    cpu = min(os.sched_getaffinity(0))
    hogs = [spawn_child(f"hog{i}", [sys.executable, "-c", "while True: pass"]) for i in range(HOGS)]
    try:
        for hog in hogs:
            os.sched_setaffinity(hog.pid, {cpu})
        yield cpu
    finally:
        for hog in hogs:
            hog.stop()


def pinned(tmp_path: Path, cpu: int, work_s: float | None) -> tuple[Child, Path]:
    ready = tmp_path / "ready.json"
    child = spawn_child("starved", child_program(ready, work_s), tmp_path / "starved.out")
    os.sched_setaffinity(child.pid, {cpu})
    return child, ready


def test_a_child_starved_of_cpu_is_given_the_time_it_waited(tmp_path: Path, one_cpu: int) -> None:
    child, ready = pinned(tmp_path, one_cpu, WORK_S)
    with child:
        start = time.monotonic()
        assert wait_ready_file(child, ready, timeout=3 * WORK_S) == {}
        elapsed = time.monotonic() - start
    assert elapsed > 3 * WORK_S, f"ready in {elapsed:.2f} s: the hogs did not starve it, this proves nothing"


def test_a_hung_child_still_times_out(tmp_path: Path) -> None:
    child = spawn_child("hung", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "hung.out")
    with child, pytest.raises(StartupError, match=r"hung wrote no readiness file within 0.5 s") as failed:
        wait_ready_file(child, tmp_path / "never.json", timeout=0.5)
    assert child.popen.returncode is not None, "the child was stopped and reaped"
    assert "in all" in str(failed.value)


def test_a_child_starved_for_ever_fails_at_the_cap(tmp_path: Path, one_cpu: int) -> None:
    child, _ = pinned(tmp_path, one_cpu, None)  # runs about a sixth of the time: 0.33 s of the 2 s cap
    with child:
        clock = StartupClock(child, timeout=1.0, cap=2.0)
        while not clock.expired():
            time.sleep(0.02)
        elapsed = time.monotonic() - clock.start
    assert elapsed >= 2.0, f"gave up after {elapsed:.2f} s, before the cap: the starvation was not excused"
    assert clock.waited_s > 1.0, "it spent most of its time waiting for a CPU"


def test_exits_within_tells_an_exit_from_a_process_that_stays(tmp_path: Path) -> None:
    quits = spawn_child("quits", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "quits.out")
    stays = spawn_child("stays", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "stays.out")
    with quits, stays:
        assert quits.exits_within(20) and quits.reap() == 3
        assert not stays.exits_within(0.5), "a sleeping process waits for no CPU: its timeout is not moved"


def test_cpu_ns_counts_a_thread_s_time_on_a_cpu_exactly() -> None:
    """Not in clock ticks (where /proc/PID/stat may say 0 or 60 ms for 50 ms): the kernel's
    count of this thread's run time, behind the current slice by a scheduler tick at most."""
    me = (os.getpid(), threading.get_native_id())
    before = cpu_ns([os.getpid()])[me]
    end = time.thread_time() + 0.05
    while time.thread_time() < end:
        pass
    spent = cpu_ns([os.getpid()])[me] - before
    assert 30_000_000 <= spent < 1_000_000_000, spent
