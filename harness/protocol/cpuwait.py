"""Timeouts on another process that do not count the time it waited for a CPU.

A timeout on a process we start or stop is there to catch one that hangs, not one that
a busy machine (a shared CI runner) left runnable but unscheduled. Linux counts, for
every thread, the nanoseconds it was runnable and waiting for a CPU
(/proc/PID/task/TID/schedstat, its second field). `FairTimeout` moves its deadline on
by the longest such wait since it started, up to a cap: a hung process waits for
nothing and times out on time, a starved one gets its share of the machine.

The harness waits so for the processes it starts (`harness.topology.StartupClock`), the
reference server's coordinator for its workers; a late event-loop tick says how much of its
lateness was such a wait (`looplag.py`). Linux only, like the rest.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path


def _schedstat(path: str, field: int) -> int:
    """Field `field` of a schedstat file: 0 = ns on a CPU, 1 = ns runnable, waiting for one."""
    return int(Path(path).read_text().split()[field])


def _threads_schedstat(pids: Iterable[int], field: int) -> dict[tuple[int, int], int]:
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    out[pid, int(tid)] = _schedstat(f"/proc/{pid}/task/{tid}/schedstat", field)
    return out


def runqueue_waits(pids: Iterable[int]) -> dict[tuple[int, int], int]:
    """Nanoseconds each thread of `pids` has spent runnable but waiting for a CPU, by
    (pid, tid): a process starved by a busy machine, told apart from one busy with its
    own work or blocked."""
    return _threads_schedstat(pids, 1)


def cpu_ns(pids: Iterable[int]) -> dict[tuple[int, int], int]:
    """Nanoseconds each thread of `pids` has run on a CPU, by (pid, tid): exact, where
    /proc/PID/stat counts whole clock ticks (10 ms), too coarse for a window of a second."""
    return _threads_schedstat(pids, 0)


def own_runqueue_ns() -> int | None:
    """Nanoseconds the calling thread has spent runnable but waiting for a CPU (None where
    /proc does not say)."""
    try:
        return _schedstat("/proc/thread-self/schedstat", 1)
    except (OSError, ValueError, IndexError):
        return None


class FairTimeout:
    """`timeout` s for the processes `pids()` names, plus the longest time any one of their
    threads has waited for a CPU since, `cap` s at most in all. The threads are read only
    once a deadline has passed, at most every RECHECK_S."""

    RECHECK_S = 0.25

    def __init__(self, pids: Callable[[], Iterable[int]], timeout: float, cap: float) -> None:
        self.pids, self.timeout, self.cap = pids, timeout, max(timeout, cap)
        self.start = time.monotonic()
        self.deadline = self.start + timeout
        self.base = runqueue_waits(pids())
        self.waited_s = 0.0

    def expired(self) -> bool:
        now = time.monotonic()
        if now <= self.deadline:
            return False
        if now - self.start >= self.cap:
            return True
        delays = runqueue_waits(self.pids())
        self.waited_s = max((d - self.base.get(k, 0) for k, d in delays.items()), default=0) / 1e9
        self.deadline = max(self.start + self.timeout + self.waited_s, now + self.RECHECK_S)
        return now - self.start - self.waited_s > self.timeout

    def remaining(self) -> float:
        """Seconds until the next look at the deadline (0 once it has passed)."""
        return max(0.0, self.deadline - time.monotonic())

    def __str__(self) -> str:
        excused = f", not counting {self.waited_s:.1f} s it waited for a CPU" if self.waited_s >= 0.05 else ""
        return f"within {self.timeout:g} s{excused} ({time.monotonic() - self.start:.1f} s in all)"
