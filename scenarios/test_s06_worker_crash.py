"""S06 — worker crash.

A multi-worker server streams to clients spread over its workers; one worker
is killed (SIGKILL) or hangs (SIGSTOP).
Expectation: the coordinator notices (a kill within the crash bound, a hang
within its heartbeat timeout plus slack) and takes the worker out of the pool;
sessions on the other workers lose no sample and stay prompt; clients of the
dead worker reconnect through the coordinator and stream again within the
recovery bound; the listener count converges; no process is left behind.

Both variants share one skeleton (`worker_crash`): the harness signals the
worker itself, clients connected to each worker directly (`HarnessKills`), or
the proxy's `worker_crash` fault does, in front of 2 workers whose clients know
only the proxy's URL (`ProxyKills`). Both run in both wire revisions: `worker_crash`
is a network fault, and a noise client reconnects with the same identity to a fresh
handshake on a live worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request
from dataclasses import dataclass

from faultsite import BehindProxy, Direct
from hypothesis import example, given
from hypothesis import strategies as st

from harness.checkers import crash_detected, healthy_players, require, streams_again
from harness.probe import ProbeClient, ProbeConfig
from harness.protocol import now_us
from harness.pytest_plugin import examples
from harness.scenario import Scenario
from harness.settings import Bounds
from harness.topology import ManagedProcess

HEARTBEAT_TIMEOUT_S = 0.5


def _status(http: str) -> dict:
    with urllib.request.urlopen(f"{http}/api/status", timeout=5) as r:
        return json.loads(r.read())


@dataclass
class Crash:
    """What a crash did: which worker, when, whose clients it dropped, what to expect."""

    victim: int
    t_fault: int
    movers: list[ProbeClient]  # clients of the victim: they must stream again
    survivors: list[ProbeClient]  # the others: they must not notice
    detect_us: int  # bound for the coordinator to notice (0 when it has nothing to notice)
    dies: bool  # the worker is gone (not a reset of its flows)


class HarnessKills(Direct):
    """The harness signals the victim worker (SIGKILL or SIGSTOP); each client is connected
    to its worker directly and comes back through the coordinator's redirect."""

    def __init__(self, workers: int, victim: int, how: str, profile: str) -> None:
        self.workers, self.victim, self.how, self.profile = workers, victim, how, profile

    def server_args(self) -> tuple[str, ...]:
        return ("--workers", str(self.workers))

    async def clients(self, sc: Scenario, server: ManagedProcess, url: str, per_worker: int) -> list[ProbeClient]:
        probes = []
        for w in range(self.workers):
            for i in range(per_worker):
                p = await sc.probe(server.ready["workers"][w]["url"], ProbeConfig(name=f"w{w}-{i}", reconnect=True,
                                                                                         profile=self.profile))
                p.url = url  # reconnect through the coordinator's redirect
                probes.append(p)
        return probes

    async def crash(self, server: ManagedProcess, probes: list[ProbeClient], bounds: Bounds) -> Crash:
        t_fault = now_us()
        os.kill(server.ready["workers"][self.victim]["pid"], getattr(signal, self.how))
        detect_us = bounds.crash_detect_us if self.how == "SIGKILL" else \
            int(HEARTBEAT_TIMEOUT_S * 1e6) + bounds.hang_detect_slack_us
        movers = [p for p in probes if p.name.startswith(f"w{self.victim}-")]
        return Crash(self.victim, t_fault, movers, [p for p in probes if p not in movers], detect_us, True)


class ProxyKills(BehindProxy):
    """The proxy's `worker_crash` fault signals a worker whose pid the harness registered, or
    RSTs every flow of that upstream; its load balancer sends reconnections to a live worker."""

    def __init__(self, action: str, seed: int, profile: str) -> None:
        super().__init__()
        self.action, self.seed, self.profile = action, seed, profile

    def server_args(self) -> tuple[str, ...]:
        return ()

    async def clients(self, sc: Scenario, server: ManagedProcess, url: str, per_worker: int) -> list[ProbeClient]:
        return [await sc.probe(url, ProbeConfig(name=f"p{i}", reconnect=True, profile=self.profile))
                for i in range(self.workers * per_worker)]

    async def crash(self, server: ManagedProcess, probes: list[ProbeClient], bounds: Bounds) -> Crash:
        before = {c["client_port"]: c["upstream_index"] for c in await self.proxy.connections()}
        t_fault = now_us()
        fault = await self.proxy.add({"type": "worker_crash", "action": self.action, "seed": self.seed, "count": 1})
        victim = (await self.proxy.applied(fault["name"]))["upstream"]
        movers = [p for p in probes if before.get(p.local_port) == victim]
        assert movers, f"no client was on worker {victim}: {before}"
        detect_us = {"kill": bounds.crash_detect_us, "reset": 0,
                     "stop": int(HEARTBEAT_TIMEOUT_S * 1e6) + bounds.hang_detect_slack_us}[self.action]
        return Crash(victim, t_fault, movers, [p for p in probes if p not in movers], detect_us,
                     self.action != "reset")


async def worker_crash(sc: Scenario, bounds: Bounds, site: HarnessKills | ProxyKills, per_worker: int,
                       after_s: float) -> None:
    server, url = await site.start(sc, *site.server_args(), "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT_S))
    workers = len(server.ready["workers"])
    start = now_us()
    probes = await site.clients(sc, server, url, per_worker)
    await asyncio.sleep(after_s)
    crash = await site.crash(server, probes, bounds)
    await asyncio.sleep((crash.detect_us + bounds.recovery_us) / 1e6 + 1.0)
    end = now_us()
    status = await asyncio.to_thread(_status, server.ready["http"])
    events = sc.events()
    require(
        *((crash_detected(events, crash.victim, crash.t_fault, crash.detect_us),) if crash.dies else ()),
        *(streams_again(events, p.name, crash.t_fault, crash.detect_us + bounds.recovery_us) for p in crash.movers),
        *healthy_players(events, crash.survivors, bounds, start, end, fault_us=crash.t_fault),
    )
    assert status["live_workers"] == (workers - 1 if crash.dies else workers), status
    assert status["listeners"] == len(probes), f"listener count did not converge: {status}"
    if crash.dies:
        assert not status["workers"][crash.victim]["alive"]


@examples(3, noise=1)
@given(workers=st.integers(2, 3), victim=st.integers(0, 2), how=st.sampled_from(["SIGKILL", "SIGSTOP"]),
       per_worker=st.integers(1, 2), after_s=st.floats(0.5, 2.0))
def test_s06_worker_crash(run, fresh_dir, bounds, profile, workers, victim, how, per_worker, after_s):
    async def scenario() -> None:
        async with Scenario(fresh_dir()) as sc:
            await worker_crash(sc, bounds, HarnessKills(workers, victim % workers, how, profile), per_worker, after_s)

    run(scenario())


@examples(1, noise=2)  # noise: the first two explicit ones, reset (RSTs of the noise flows) and kill
@example(action="reset", seed=2, per_worker=1, after_s=1.5)  # every action, every run (legacy)
@example(action="kill", seed=0, per_worker=1, after_s=1.0)
@example(action="stop", seed=1, per_worker=2, after_s=0.5)
@given(action=st.sampled_from(["kill", "stop", "reset"]), seed=st.integers(0, 1000), per_worker=st.integers(1, 2),
       after_s=st.floats(0.5, 1.5))
def test_s06_proxy_crashes_a_worker(run, fresh_dir, bounds, profile, action, seed, per_worker, after_s):
    """The same family with the crash made by the proxy's `worker_crash` fault (it
    signals a worker whose pid the harness registered, or RSTs every flow of that
    upstream) in front of 2 workers; the clients know only the proxy's URL, and its load
    balancer sends their reconnections to a live worker."""
    async def scenario() -> None:
        async with Scenario(fresh_dir()) as sc:
            await worker_crash(sc, bounds, ProxyKills(action, seed, profile), per_worker, after_s)

    run(scenario())
