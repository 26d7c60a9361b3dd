"""S06 — worker crash.

A multi-worker server streams to clients spread over its workers; one worker
is killed (SIGKILL) or hangs (SIGSTOP).
Expectation: the coordinator notices (a kill within the crash bound, a hang
within its heartbeat timeout plus slack) and takes the worker out of the pool;
sessions on the other workers lose no sample and stay prompt; clients of the
dead worker reconnect through the coordinator and stream again within the
recovery bound; the listener count converges; no process is left behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request

from hypothesis import given
from hypothesis import strategies as st

from harness.checkers import crash_detected, healthy_players, require, streams_again
from harness.probe import ProbeConfig
from harness.protocol import now_us
from harness.pytest_plugin import examples
from harness.scenario import Scenario

HEARTBEAT_TIMEOUT_S = 0.5


def _status(http: str) -> dict:
    with urllib.request.urlopen(f"{http}/api/status", timeout=5) as r:
        return json.loads(r.read())


@examples(3)
@given(workers=st.integers(2, 3), victim=st.integers(0, 2), how=st.sampled_from(["SIGKILL", "SIGSTOP"]),
       per_worker=st.integers(1, 2), after_s=st.floats(0.5, 2.0))
def test_s06_worker_crash(run, fresh_dir, bounds, workers, victim, how, per_worker, after_s):
    victim %= workers

    async def scenario() -> None:
        async with Scenario(fresh_dir()) as sc:
            server = await sc.server("--workers", str(workers), "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT_S))
            info = server.ready["workers"]
            start = now_us()
            survivors, movers = [], []
            for w in range(workers):
                for i in range(per_worker):
                    p = await sc.probe(info[w]["url"], ProbeConfig(name=f"w{w}-{i}", reconnect=True))
                    p.url = server.ready["url"]  # reconnect through the coordinator's redirect
                    (movers if w == victim else survivors).append(p)
            await asyncio.sleep(after_s)
            t_fault = now_us()
            os.kill(info[victim]["pid"], getattr(signal, how))
            detect_us = bounds.crash_detect_us if how == "SIGKILL" else \
                int(HEARTBEAT_TIMEOUT_S * 1e6) + bounds.hang_detect_slack_us
            await asyncio.sleep((detect_us + bounds.recovery_us) / 1e6 + 1.0)
            end = now_us()
            status = await asyncio.to_thread(_status, server.ready["http"])
            events = sc.events()
            require(
                crash_detected(events, victim, t_fault, detect_us),
                *(streams_again(events, p.name, t_fault, detect_us + bounds.recovery_us) for p in movers),
                *healthy_players(events, survivors, bounds, start, end, fault_us=t_fault),
            )
            assert status["live_workers"] == workers - 1, status
            assert status["listeners"] == workers * per_worker, f"listener count did not converge: {status}"
            assert not status["workers"][victim]["alive"]

    run(scenario())
