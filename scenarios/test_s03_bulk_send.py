"""S03 — bulk send.

A >= 32 MiB artwork image goes to a client that reads slowly and sends
client/time every 50 ms, while another client plays audio.
Expectation: the server keeps reading during the send (read latency under
the bound), the image arrives byte-identical as many fragments of at most
256 KiB, and the other player is unaffected.

Legacy only: the noise revision has no 32 MiB artwork in one message. Its artwork
is an announce plus parts of at most 65519 bytes each, paced and never fragmented
(roles/artwork/v1.md), and the reference server does not serve it yet; a large
fragmented noise message is the client gate's 10.3.
"""

from __future__ import annotations

import asyncio

from faultsite import only_in
from hypothesis import given
from hypothesis import strategies as st

from harness.checkers import artwork_intact, healthy_player, reads_prompt, require, session_alive
from harness.probe import ProbeConfig
from harness.protocol import messages as m
from harness.protocol import now_us
from harness.pytest_plugin import examples
from harness.scenario import Scenario

MiB = 1024 * 1024
FRAGMENT_BYTES = 256 * 1024


@only_in("legacy", "noise has no artwork in one message (an announce and parts of at most 65519 bytes, paced, "
                   "never fragmented: roles/artwork/v1.md), and the reference server does not serve noise artwork")
@examples(2)
@given(size=st.integers(32 * MiB, 36 * MiB), read_rate=st.sampled_from([6 * MiB, 12 * MiB, None]))
def test_s03_bulk_send_keeps_reads_prompt(run, fresh_dir, bounds, profile, size, read_rate):
    async def scenario() -> None:
        async with Scenario(fresh_dir()) as sc:
            server = await sc.server("--artwork-bytes", str(size))
            url = server.ready["url"]
            start = now_us()
            player = await sc.probe(url, ProbeConfig(name="player"))
            bulk = await sc.probe(url, ProbeConfig(
                name="bulk", roles=["artwork@v1", m.HARNESS_ROLE], rcvbuf=64 * 1024, read_rate=read_rate,
                time_interval_s=0.05))
            deadline = size / (read_rate or 50 * MiB) + 15
            while 0 not in bulk.artwork and not bulk.closed.is_set():
                await asyncio.sleep(0.05)
                assert now_us() - start < deadline * 1e6, f"artwork not received within {deadline:.0f} s"
            await asyncio.sleep(2.5)  # longer than the reply grace, so every check has samples to judge
            end = now_us()
            events = sc.events()
            art = artwork_intact(events, "bulk")
            require(
                art, reads_prompt(events, "bulk", bounds, end), session_alive(events, "bulk", bounds, end),
                *healthy_player(events, player.name, bounds, start, end, (end - start) / 1e6 - 1),
            )
            assert art.figures["fragments"] >= size // FRAGMENT_BYTES, art.explain()
            assert art.figures["fragment_max"] <= FRAGMENT_BYTES, art.explain()

    run(scenario(), timeout=180)
