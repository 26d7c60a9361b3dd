"""Event-loop lag: how late a process's own loop ran a periodic tick.

A gate must not report FAILED because the harness's own probe or proxy stalled, so
every process we own measures its loop: one timer re-armed every `interval_us`; a
tick that runs more than `threshold_us` after it was due is a stall of the whole
loop, written to the process's event log as `loop_lag` (`t_us` = when the late tick
ran, `lag_us` = how late). The loop was blocked at most over
[t_us - lag_us - interval_us, t_us] (it may have stopped right after the previous
tick); `stall_window` gives that range, and the checkers compare it with a
violation's. `runqueue_us` says how much of that span the loop's thread was runnable
but waiting for a CPU (cpuwait.py): a loop late because the machine was busy, told
apart from one blocked by its own work or a sleep.

`LagMeter` is the sans-I/O part: it is fed times and says when a tick was late.
`LoopLagMonitor` drives it on a running event loop through `loop.call_later`; it
takes the loop as an argument, so this module imports no asyncio. Cost: one timer
callback per interval per process, no per-message work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .clock import now_us
from .cpuwait import own_runqueue_ns

# Every tick wakes the loop: at 20 ms that cost a 400-listener server 10 % more CPU per
# listener (A/B, NOTES.md §6); at 50 ms any stall longer than 80 ms (under every bound
# the checkers judge by) still makes a tick late by more than the threshold.
TICK_INTERVAL_US = 50_000
# Above the ~1 ms a timer normally runs late (epoll rounds its timeout to ms) and above
# ordinary scheduling jitter on a busy machine, below any bound the checkers judge by.
LATE_THRESHOLD_US = 30_000


@dataclass(frozen=True)
class LateTick:
    t_us: int  # when the tick ran
    lag_us: int  # how long after it was due
    interval_us: int


def stall_window(t_us: int, lag_us: int, interval_us: int) -> tuple[int, int]:
    """The widest span over which a loop whose tick ran `lag_us` late at `t_us` was blocked."""
    return t_us - lag_us - interval_us, t_us


class LagMeter:
    """Fed when each tick was due and when it ran; says which ticks were late."""

    def __init__(self, interval_us: int = TICK_INTERVAL_US, threshold_us: int = LATE_THRESHOLD_US) -> None:
        if interval_us <= 0 or threshold_us <= 0:
            raise ValueError(f"interval_us and threshold_us must be positive, got {interval_us}, {threshold_us}")
        self.interval_us = interval_us
        self.threshold_us = threshold_us
        self.ticks = 0
        self.late = 0
        self.worst_us = 0

    def next_due(self, ran_us: int) -> int:
        """When the tick after one that ran at `ran_us` is due (re-armed from when it ran,
        so a stall is reported once, not again by every tick it delayed)."""
        return ran_us + self.interval_us

    def tick(self, due_us: int, ran_us: int) -> LateTick | None:
        lag_us = ran_us - due_us
        self.ticks += 1
        self.worst_us = max(self.worst_us, lag_us)
        if lag_us <= self.threshold_us:
            return None
        self.late += 1
        return LateTick(ran_us, lag_us, self.interval_us)


class Emitter(Protocol):
    def emit(self, event: str, session: str | None = None, t_us: int | None = None, **fields: Any) -> None: ...


class LoopLagMonitor:
    """Runs a LagMeter on `loop` (an asyncio event loop, running) and writes each late
    tick as `loop_lag` to `log` (an EventLog, or the proxy's EventSink)."""

    def __init__(self, loop: Any, log: Emitter, meter: LagMeter | None = None,
                 runqueue_ns: Callable[[], int | None] = own_runqueue_ns) -> None:
        self.loop = loop
        self.log = log
        self.meter = meter or LagMeter()
        self.runqueue_ns = runqueue_ns  # called on the loop's thread, once a tick (~10 µs)
        self._due_us = 0
        self._waited_ns: int | None = None
        self._timer: Any = None

    def start(self) -> LoopLagMonitor:
        self._waited_ns = self.runqueue_ns()
        self._arm(now_us())
        return self

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, ran_us: int) -> None:
        self._due_us = self.meter.next_due(ran_us)
        self._timer = self.loop.call_later(self.meter.interval_us / 1e6, self._tick)

    def _tick(self) -> None:
        ran_us = now_us()
        before, self._waited_ns = self._waited_ns, self.runqueue_ns()
        late = self.meter.tick(self._due_us, ran_us)
        if late is not None:
            waited = {} if before is None or self._waited_ns is None else \
                {"runqueue_us": (self._waited_ns - before) // 1000}
            # stamped when the tick ran, not when the record is written: the stall window
            # (stall_window) is computed from it, and a slow write must not shift it
            self.log.emit("loop_lag", t_us=late.t_us, lag_us=late.lag_us, interval_us=late.interval_us, **waited)
        self._arm(ran_us)
