"""The loop-lag meter (harness/protocol/looplag.py): its sans-I/O rule, its driver on a
real event loop, and a real server that writes `loop_lag` when its loop cannot run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.protocol import EventLog, LagMeter, LateTick, LoopLagMonitor, now_us
from harness.protocol.looplag import LATE_THRESHOLD_US, TICK_INTERVAL_US, stall_window
from harness.scenario import Scenario


def test_a_tick_on_time_or_within_the_threshold_is_not_late() -> None:
    meter = LagMeter(interval_us=20_000, threshold_us=30_000)
    assert meter.tick(due_us=1_000_000, ran_us=1_000_400) is None
    assert meter.tick(due_us=1_020_000, ran_us=1_050_000) is None  # exactly the threshold
    assert (meter.ticks, meter.late, meter.worst_us) == (2, 0, 30_000)


def test_a_tick_later_than_the_threshold_is_reported_with_when_it_ran() -> None:
    meter = LagMeter(interval_us=20_000, threshold_us=30_000)
    assert meter.tick(due_us=1_000_000, ran_us=1_412_000) == LateTick(t_us=1_412_000, lag_us=412_000,
                                                                      interval_us=20_000)
    assert (meter.late, meter.worst_us) == (1, 412_000)


def test_the_next_tick_is_due_one_interval_after_the_last_ran_so_a_stall_is_reported_once() -> None:
    meter = LagMeter(interval_us=20_000, threshold_us=30_000)
    assert meter.tick(1_000_000, 1_500_000) is not None
    due = meter.next_due(1_500_000)
    assert due == 1_520_000
    assert meter.tick(due, 1_520_500) is None


def test_the_stall_window_reaches_back_one_interval_before_the_tick_was_due() -> None:
    assert stall_window(t_us=1_412_000, lag_us=412_000, interval_us=20_000) == (980_000, 1_412_000)


def test_the_meter_refuses_a_non_positive_interval_or_threshold() -> None:
    with pytest.raises(ValueError, match="positive"):
        LagMeter(interval_us=0)
    with pytest.raises(ValueError, match="positive"):
        LagMeter(threshold_us=-1)


def test_the_defaults_catch_every_stall_longer_than_80_ms() -> None:
    # the least-noticed stall starts right as a tick ran: the next one is late by S - interval
    meter = LagMeter()
    ran = 1_000_000
    due = meter.next_due(ran)
    assert meter.tick(due, ran + 81_000) is not None
    assert meter.tick(due, ran + 80_000) is None
    assert TICK_INTERVAL_US + LATE_THRESHOLD_US == 80_000


def _records(path: Path, event: str = "loop_lag") -> list[dict]:
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == event]


def test_the_monitor_writes_loop_lag_when_its_loop_is_blocked(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "harness.jsonl", "harness")

    async def ticks_reach(monitor: LoopLagMonitor, n: int) -> None:
        # waits for ticks, never for a time: a busy machine may run fewer per second
        deadline = time.monotonic() + 10
        while monitor.meter.ticks < n:
            assert time.monotonic() < deadline, f"the monitor ticked {monitor.meter.ticks} times in 10 s"
            await asyncio.sleep(0.01)

    async def body() -> int:
        monitor = LoopLagMonitor(asyncio.get_running_loop(), log).start()
        await ticks_reach(monitor, 2)
        blocked_at = now_us()
        time.sleep(0.15)  # the loop cannot run
        await ticks_reach(monitor, monitor.meter.ticks + 1)
        monitor.stop()
        ticks = monitor.meter.ticks
        await asyncio.sleep(0.1)
        assert monitor.meter.ticks == ticks, "a stopped monitor must not tick"
        return blocked_at

    blocked_at = asyncio.run(body())
    log.close()
    lags = _records(tmp_path / "harness.jsonl")
    assert {r["proc"] for r in lags} == {"harness"} and {r["interval_us"] for r in lags} == {TICK_INTERVAL_US}
    # the block is reported once, by the first tick after it; a busy machine may add other
    # stalls, but no other record's window may claim the block
    [lag] = [r for r in lags if stall_window(r["t_us"], r["lag_us"], r["interval_us"])[0] <= blocked_at
             <= r["t_us"]]
    # the tick was due at most one interval after the block began and ran after it ended
    assert lag["lag_us"] >= 150_000 - TICK_INTERVAL_US, lag
    assert lag["t_us"] >= blocked_at + 150_000, lag
    # a loop blocked by its own sleep was not waiting for a CPU meanwhile
    assert 0 <= lag["runqueue_us"] < lag["lag_us"], lag


STARVED = """
import asyncio, os, subprocess, sys
from harness.protocol import EventLog, LoopLagMonitor
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one CPU, shared with the spinner
spinner = subprocess.Popen([sys.executable, "-c", "import sys, time\\nsys.stdin.readline()\\n"
                            "end = time.monotonic() + 0.5\\nwhile time.monotonic() < end: pass"], stdin=subprocess.PIPE)
# SCHED_IDLE: this thread runs only when nothing else wants its CPU (nice 19 is not enough: a
# waking nice-19 thread is still served within milliseconds on a quiet machine)
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
log = EventLog(sys.argv[1], "server")

async def main():
    monitor = LoopLagMonitor(asyncio.get_running_loop(), log).start()
    await asyncio.sleep(0.2)
    spinner.stdin.write(b"go\\n")
    spinner.stdin.flush()
    await asyncio.sleep(0.8)
    monitor.stop()

asyncio.run(main())
log.close()
spinner.wait(10)
"""


def test_a_loop_kept_from_a_cpu_says_it_was_waiting_for_one(tmp_path: Path) -> None:
    """Not its own work: a busy machine (here a spinner on the loop's one CPU, the loop's
    thread at SCHED_IDLE). Each late tick says how much of its lateness was that wait."""
    path = tmp_path / "server.jsonl"
    # ~1.6 s on a quiet machine; beside `stress-ng --cpu 2` 15 s (a SCHED_IDLE thread waits for
    # every other one on its CPU, the neighbour's too)
    child = subprocess.run([sys.executable, "-c", STARVED, str(path)], cwd=Path(__file__).resolve().parent.parent,
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    lags = _records(path)
    assert lags, "a loop kept from its CPU for 0.5 s logged no loop_lag"
    worst = max(lags, key=lambda r: r["lag_us"])
    assert worst["runqueue_us"] >= worst["lag_us"] // 2, lags


def test_a_server_writes_loop_lag_when_it_is_stopped_for_300_ms(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server()
            await asyncio.sleep(0.2)
            os.kill(server.ready["pid"], signal.SIGSTOP)
            try:
                await asyncio.sleep(0.3)
            finally:
                os.kill(server.ready["pid"], signal.SIGCONT)
            deadline = time.monotonic() + 5  # a busy machine may log shorter stalls first: wait for the stop's
            while max((r["lag_us"] for r in _records(tmp_path / "server.jsonl")), default=0) < 250_000 \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            lags = _records(tmp_path / "server.jsonl")
            assert lags, "the server logged no loop_lag after a 300 ms SIGSTOP"
            assert max(r["lag_us"] for r in lags) >= 250_000, lags
            assert {r["proc"] for r in lags} == {"server"}

    run(body(), 30)
