"""S02 — slow reader.

One client stops reading (small receive buffer, so TCP backpressure reaches
the server) while others stream.
Expectation: the server keeps reading the slow client (its client/time are
read promptly), the other players see no gap and no lead-time drop, and the
server holds bounded memory for the slow one. A client that pauses and
resumes keeps its session; one that never resumes is closed with 4001
(slow reader) within the documented limit.

Each case runs twice: the probe itself stops reading (`SlowProbe`), or the
proxy in front of a multi-worker server stops reading an unmodified client's
downstream (`SlowByProxy`); both share one skeleton per case. All four run in both
wire revisions: a slow reader is a TCP matter, and `slow_reader` is a network fault,
which the proxy applies to an opaque noise session as to a legacy one.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from faultsite import BehindProxy, Direct
from hypothesis import given
from hypothesis import strategies as st

from harness.checkers import closed_by_policy, healthy_players, held_bounded, reads_prompt, require, session_alive
from harness.events import Events
from harness.probe import ProbeClient, ProbeConfig
from harness.protocol import closecodes, now_us
from harness.pytest_plugin import examples
from harness.scenario import Scenario
from harness.settings import Bounds

SLOW_READER_CLOSE_S = 3.0
SLOW_RCVBUF = 16 * 1024
FAULT = "slow_reader"


class SlowProbe(Direct):
    """The slow client is the probe: a small receive buffer, then it reads slowly or not at all."""

    config: ClassVar[dict[str, Any]] = {"rcvbuf": SLOW_RCVBUF}

    async def slow_down(self, slow: ProbeClient, rate: int) -> int:
        """Start reading at `rate` B/s; returns when the fault began (t_us)."""
        slow.set_read_rate(rate)
        return now_us()

    async def resume(self, slow: ProbeClient) -> None:
        slow.set_read_rate(None)

    async def closed(self, sc: Scenario, slow: ProbeClient, limit_us: int) -> int | None:
        """Waits for the policy close (here: the probe sees it); the server's close time if known."""
        await asyncio.wait_for(slow.closed.wait(), limit_us / 1e6 + 1)
        return None

    def policy_clock(self, events: Events, stopped: int, closed: int | None) -> int:
        """When the slow-reader policy clock started: when the probe stopped reading."""
        return stopped


class SlowByProxy(BehindProxy):
    """The proxy reads an unmodified client's downstream slowly or not at all."""

    # No rcvbuf_bytes: shrinking SO_RCVBUF of a live connection makes the kernel drop
    # in-window segments and both directions back off (NOTES.md), which is no slow reader.
    config: ClassVar[dict[str, Any]] = {}
    fault: dict[str, Any]  # the slow_reader fault as the proxy holds it

    async def slow_down(self, slow: ProbeClient, rate: int) -> int:
        began = now_us()
        self.fault = await self.proxy.add({"type": FAULT, "direction": "downstream", "rate_bps": rate,
                                           "connections": {"client_port": slow.local_port}})
        return began

    async def resume(self, slow: ProbeClient) -> None:
        await self.proxy.remove(self.fault["name"])

    async def closed(self, sc: Scenario, slow: ProbeClient, limit_us: int) -> int | None:
        return await _server_closes(sc, "slow", timeout_s=20.0)

    def policy_clock(self, events: Events, stopped: int, closed: int | None) -> int:
        """The proxy's kernel buffers hold seconds of audio (autotuned while it read), so the
        policy clock starts when the server's own send buffer stops draining (its
        session_stats), not when the fault was added."""
        proc, session = events.server_session("slow")
        return next((r["t_us"] for r in events.select("session_stats", proc=proc, session=session)
                     if r["t_us"] > stopped and r["write_buffer"] > 0), closed or stopped)


async def pauses_and_resumes(sc: Scenario, bounds: Bounds, site: SlowProbe | SlowByProxy, profile: str,
                             others: int, pause_s: float, read_rate: int) -> None:
    _, url = await site.start(sc)
    start = now_us()
    players = [await sc.probe(url, ProbeConfig(name=f"player-{i + 1}", profile=profile)) for i in range(others)]
    slow = await sc.probe(url, ProbeConfig(name="slow", profile=profile, **site.config))
    await asyncio.sleep(1.0)
    slow_from = await site.slow_down(slow, read_rate)
    await asyncio.sleep(pause_s)
    await site.resume(slow)
    await asyncio.sleep(2.5)
    end = now_us()
    events = sc.events()
    require(
        *site.fault_logged(events, FAULT, slow_from),
        *healthy_players(events, players, bounds, start, end, fault_us=slow_from),
        reads_prompt(events, "slow", bounds, end, start_us=slow_from),
        session_alive(events, "slow", bounds, end),
        held_bounded(events, "slow", bounds.slow_session_held_bytes),
    )


async def never_resumes(sc: Scenario, bounds: Bounds, site: SlowProbe | SlowByProxy, profile: str,
                        others: int) -> None:
    _, url = await site.start(sc, "--slow-reader-close", str(SLOW_READER_CLOSE_S))
    start = now_us()
    players = [await sc.probe(url, ProbeConfig(name=f"player-{i + 1}", profile=profile)) for i in range(others)]
    slow = await sc.probe(url, ProbeConfig(name="slow", profile=profile, **site.config))
    await asyncio.sleep(1.0)  # baseline for the isolation check
    stopped = await site.slow_down(slow, 0)
    limit_us = int(SLOW_READER_CLOSE_S * 1e6) + bounds.policy_close_slack_us
    closed = await site.closed(sc, slow, limit_us)
    await asyncio.sleep(0.5)
    end = now_us()
    events = sc.events()
    require(
        *site.fault_logged(events, FAULT, stopped),
        *healthy_players(events, players, bounds, start, end, fault_us=stopped),
        reads_prompt(events, "slow", bounds, end if closed is None else closed, start_us=stopped),
        closed_by_policy(events, "slow", closecodes.SLOW_READER, site.policy_clock(events, stopped, closed),
                         limit_us),
        held_bounded(events, "slow", bounds.slow_session_held_bytes),
    )


@examples(2, noise=1)
@given(others=st.integers(1, 3), pause_s=st.floats(2.0, 5.0), read_rate=st.sampled_from([0, 2_000, 20_000]))
def test_s02_slow_reader_pauses_and_resumes(run, fresh_dir, bounds, profile, others, pause_s, read_rate):
    async def scenario() -> None:
        async with Scenario(fresh_dir()) as sc:
            await pauses_and_resumes(sc, bounds, SlowProbe(), profile, others, pause_s, read_rate)

    run(scenario())


@examples(1)
@given(others=st.integers(1, 2))
def test_s02_slow_reader_that_never_resumes_is_closed(run, fresh_dir, bounds, profile, others):
    async def scenario() -> None:
        async with Scenario(fresh_dir()) as sc:
            await never_resumes(sc, bounds, SlowProbe(), profile, others)

    run(scenario())


@examples(2, noise=1)
@given(others=st.integers(1, 2), pause_s=st.floats(2.0, 4.0), read_rate=st.sampled_from([0, 2_000, 20_000]))
def test_s02_proxy_makes_a_client_a_slow_reader(run, fresh_dir, bounds, profile, others, pause_s, read_rate):
    """The same family with the fault made by the proxy in front of a multi-worker
    server: an unmodified client, whose connection the proxy reads slowly or not at all."""
    async def scenario() -> None:
        async with Scenario(fresh_dir()) as sc:
            await pauses_and_resumes(sc, bounds, SlowByProxy(), profile, others, pause_s, read_rate)

    run(scenario())


@examples(1)
@given(others=st.integers(1, 2))
def test_s02_proxy_never_reads_again_and_the_server_closes(run, fresh_dir, bounds, profile, others):
    """The proxy stops reading one client's downstream for good: the server closes that
    session with 4001, the others play on (policy clock: see SlowByProxy.policy_clock)."""
    async def scenario() -> None:
        async with Scenario(fresh_dir()) as sc:
            await never_resumes(sc, bounds, SlowByProxy(), profile, others)

    run(scenario())


async def _server_closes(sc: Scenario, probe: str, timeout_s: float) -> int:
    """When the server began closing this probe's session (t_us); waits for it."""
    deadline = now_us() + int(timeout_s * 1e6)
    while now_us() < deadline:
        events = sc.events()
        found = events.server_session(probe)
        closes = events.select("close_begin", proc=found[0], session=found[1]) if found else []
        if closes:
            return closes[0]["t_us"]
        await asyncio.sleep(0.1)
    raise AssertionError(f"the server did not close {probe}'s session within {timeout_s} s")
