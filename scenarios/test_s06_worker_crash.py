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

from hypothesis import example, given
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


@examples(1)
@example(action="kill", seed=0, per_worker=1, after_s=1.0)  # every action, every run
@example(action="stop", seed=1, per_worker=2, after_s=0.5)
@example(action="reset", seed=2, per_worker=1, after_s=1.5)
@given(action=st.sampled_from(["kill", "stop", "reset"]), seed=st.integers(0, 1000), per_worker=st.integers(1, 2),
       after_s=st.floats(0.5, 1.5))
def test_s06_proxy_crashes_a_worker(run, fresh_dir, bounds, action, seed, per_worker, after_s):
    """The same family with the crash made by the proxy's `worker_crash` fault (it
    signals a worker whose pid the harness registered, or RSTs every flow of that
    upstream) in front of 2 workers; the clients know only the proxy's URL, and its load
    balancer sends their reconnections to a live worker."""
    workers = 2

    async def scenario() -> None:
        async with Scenario(fresh_dir()) as sc:
            server, proxy = await sc.cluster_behind_proxy(workers, "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT_S))
            start = now_us()
            probes = [await sc.probe(proxy.url, ProbeConfig(name=f"p{i}", reconnect=True))
                      for i in range(workers * per_worker)]
            await asyncio.sleep(after_s)
            before = {c["client_port"]: c["upstream_index"] for c in await proxy.connections()}
            t_fault = now_us()
            fault = await proxy.add({"type": "worker_crash", "action": action, "seed": seed, "count": 1})
            victim = (await proxy.applied(fault["name"]))["upstream"]
            movers = [p for p in probes if before.get(p.local_port) == victim]
            survivors = [p for p in probes if p not in movers]
            detect_us = {"kill": bounds.crash_detect_us, "reset": 0,
                         "stop": int(HEARTBEAT_TIMEOUT_S * 1e6) + bounds.hang_detect_slack_us}[action]
            await asyncio.sleep((detect_us + bounds.recovery_us) / 1e6 + 1.0)
            end = now_us()
            status = await asyncio.to_thread(_status, server.ready["http"])
            events = sc.events()
            assert movers, f"no client was on worker {victim}: {before}"
            require(
                *((crash_detected(events, victim, t_fault, detect_us),) if action != "reset" else ()),
                *(streams_again(events, p.name, t_fault, detect_us + bounds.recovery_us) for p in movers),
                *healthy_players(events, survivors, bounds, start, end, fault_us=t_fault),
            )
            assert status["live_workers"] == (workers if action == "reset" else workers - 1), status
            assert status["listeners"] == len(probes), f"listener count did not converge: {status}"

    run(scenario())
