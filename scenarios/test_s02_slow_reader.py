"""S02 — slow reader.

One client stops reading (small receive buffer, so TCP backpressure reaches
the server) while others stream.
Expectation: the server keeps reading the slow client (its client/time are
read promptly), the other players see no gap and no lead-time drop, and the
server holds bounded memory for the slow one. A client that pauses and
resumes keeps its session; one that never resumes is closed with 4001
(slow reader) within the documented limit.
"""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from harness.checkers import (
    closed_by_policy,
    healthy_players,
    held_bounded,
    proxy_fault_applied,
    reads_prompt,
    require,
    session_alive,
)
from harness.probe import ProbeConfig
from harness.protocol import closecodes, now_us
from harness.pytest_plugin import examples
from harness.scenario import Scenario

SLOW_RCVBUF = 16 * 1024
SLOW_READER_CLOSE_S = 3.0


@examples(2)
@given(others=st.integers(1, 3), pause_s=st.floats(2.0, 5.0), read_rate=st.sampled_from([0, 2_000, 20_000]))
def test_s02_slow_reader_pauses_and_resumes(run, fresh_dir, bounds, others, pause_s, read_rate):
    async def scenario() -> None:
        async with Scenario(fresh_dir()) as sc:
            server = await sc.server()
            url = server.ready["url"]
            start = now_us()
            players = [await sc.probe(url, ProbeConfig(name=f"player-{i + 1}")) for i in range(others)]
            slow = await sc.probe(url, ProbeConfig(name="slow", rcvbuf=SLOW_RCVBUF))
            await asyncio.sleep(1.0)
            slow.set_read_rate(read_rate)
            slow_from = now_us()
            await asyncio.sleep(pause_s)
            slow.set_read_rate(None)
            await asyncio.sleep(2.5)
            end = now_us()
            events = sc.events()
            require(
                *healthy_players(events, players, bounds, start, end, fault_us=slow_from),
                reads_prompt(events, "slow", bounds, end, start_us=slow_from),
                session_alive(events, "slow", bounds, end),
                held_bounded(events, "slow", bounds.slow_session_held_bytes),
            )

    run(scenario())


@examples(1)
@given(others=st.integers(1, 2))
def test_s02_slow_reader_that_never_resumes_is_closed(run, fresh_dir, bounds, others):
    async def scenario() -> None:
        async with Scenario(fresh_dir()) as sc:
            server = await sc.server("--slow-reader-close", str(SLOW_READER_CLOSE_S))
            url = server.ready["url"]
            start = now_us()
            players = [await sc.probe(url, ProbeConfig(name=f"player-{i + 1}")) for i in range(others)]
            slow = await sc.probe(url, ProbeConfig(name="slow", rcvbuf=SLOW_RCVBUF))
            await asyncio.sleep(1.0)  # baseline for the isolation check
            slow.set_read_rate(0)
            stopped = now_us()
            limit_us = int(SLOW_READER_CLOSE_S * 1e6) + bounds.policy_close_slack_us
            await asyncio.wait_for(slow.closed.wait(), limit_us / 1e6 + 1)
            await asyncio.sleep(0.5)
            end = now_us()
            events = sc.events()
            require(
                *healthy_players(events, players, bounds, start, end, fault_us=stopped),
                reads_prompt(events, "slow", bounds, end, start_us=stopped),
                closed_by_policy(events, "slow", closecodes.SLOW_READER, stopped, limit_us),
                held_bounded(events, "slow", bounds.slow_session_held_bytes),
            )

    run(scenario())


@examples(2)
@given(others=st.integers(1, 2), pause_s=st.floats(2.0, 4.0), read_rate=st.sampled_from([0, 2_000, 20_000]))
def test_s02_proxy_makes_a_client_a_slow_reader(run, fresh_dir, bounds, others, pause_s, read_rate):
    """The same family with the fault made by the proxy in front of a multi-worker
    server: an unmodified client, whose connection the proxy reads slowly or not at all."""
    async def scenario() -> None:
        async with Scenario(fresh_dir()) as sc:
            _, proxy = await sc.cluster_behind_proxy(2)
            start = now_us()
            players = [await sc.probe(proxy.url, ProbeConfig(name=f"player-{i + 1}")) for i in range(others)]
            slow = await sc.probe(proxy.url, ProbeConfig(name="slow"))
            await asyncio.sleep(1.0)
            slow_from = now_us()
            # No rcvbuf_bytes: shrinking SO_RCVBUF of a live connection makes the kernel drop
            # in-window segments and both directions back off (NOTES.md), which is no slow reader.
            fault = await proxy.add({"type": "slow_reader", "direction": "downstream", "rate_bps": read_rate,
                                     "connections": {"client_port": slow.local_port}})
            await asyncio.sleep(pause_s)
            await proxy.remove(fault["name"])
            await asyncio.sleep(2.5)
            end = now_us()
            events = sc.events()
            require(
                proxy_fault_applied(events, "slow_reader", slow_from),
                *healthy_players(events, players, bounds, start, end, fault_us=slow_from),
                reads_prompt(events, "slow", bounds, end, start_us=slow_from),
                session_alive(events, "slow", bounds, end),
                held_bounded(events, "slow", bounds.slow_session_held_bytes),
            )

    run(scenario())


@examples(1)
@given(others=st.integers(1, 2))
def test_s02_proxy_never_reads_again_and_the_server_closes(run, fresh_dir, bounds, others):
    """The proxy stops reading one client's downstream for good: the server closes that
    session with 4001, the others play on. The proxy's kernel buffers hold seconds of
    audio (autotuned while it read), so the policy clock starts when the server's own
    send buffer stops draining (its session_stats), not when the fault was added."""
    async def scenario() -> None:
        async with Scenario(fresh_dir()) as sc:
            _, proxy = await sc.cluster_behind_proxy(2, "--slow-reader-close", str(SLOW_READER_CLOSE_S))
            start = now_us()
            players = [await sc.probe(proxy.url, ProbeConfig(name=f"player-{i + 1}")) for i in range(others)]
            slow = await sc.probe(proxy.url, ProbeConfig(name="slow"))
            await asyncio.sleep(1.0)  # baseline for the isolation check
            stopped = now_us()
            await proxy.add({"type": "slow_reader", "direction": "downstream", "rate_bps": 0,
                             "connections": {"client_port": slow.local_port}})
            closed = await _server_closes(sc, "slow", timeout_s=20.0)
            await asyncio.sleep(0.5)
            end = now_us()
            events = sc.events()
            proc, session = events.server_session("slow")
            backlog = next((r["t_us"] for r in events.select("session_stats", proc=proc, session=session)
                            if r["t_us"] > stopped and r["write_buffer"] > 0), closed)
            limit_us = int(SLOW_READER_CLOSE_S * 1e6) + bounds.policy_close_slack_us
            require(
                proxy_fault_applied(events, "slow_reader", stopped),
                *healthy_players(events, players, bounds, start, end, fault_us=stopped),
                reads_prompt(events, "slow", bounds, closed, start_us=stopped),
                closed_by_policy(events, "slow", closecodes.SLOW_READER, backlog, limit_us),
                held_bounded(events, "slow", bounds.slow_session_held_bytes),
            )

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
