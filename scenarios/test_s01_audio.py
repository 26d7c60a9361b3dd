"""S01 — handshake and steady audio.

Runs against the single-process server and the multi-worker one, in both wire
revisions (`--profile`): in noise each listener's audio is sealed for it alone.
Expectation: every client completes the handshake, stays connected, gets a
server/time for every client/time, reads are prompt, and the watermark audio
arrives with zero gaps, duplicates or reordering, ahead of its play time.
"""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from harness.checkers import healthy_player, require
from harness.probe import ProbeConfig
from harness.protocol import messages as m
from harness.protocol import now_us
from harness.pytest_plugin import examples
from harness.scenario import Scenario

AUDIO_SECONDS = 10.0

formats = st.builds(lambda ch, bits: m.AudioFormat(codec="pcm", channels=ch, sample_rate=48_000, bit_depth=bits),
                    st.sampled_from([1, 2]), st.sampled_from([16, 24]))


@examples(3, noise=2)
@given(fmts=st.lists(formats, min_size=1, max_size=3), stagger_ms=st.integers(0, 1500),
       workers=st.sampled_from([None, 2]))
def test_s01_handshake_and_ten_seconds_of_audio(run, fresh_dir, bounds, profile, fmts, stagger_ms, workers):
    async def scenario() -> None:
        async with Scenario(fresh_dir()) as sc:
            # One process, or a coordinator whose URL redirects each client to a worker.
            server = await sc.server(*(("--workers", str(workers)) if workers else ()))
            start = now_us()
            probes = []
            for i, fmt in enumerate(fmts):
                probes.append(await sc.probe(server.ready["url"], ProbeConfig(name=f"probe-{i + 1}", formats=[fmt],
                                                                                 profile=profile)))
                await asyncio.sleep(stagger_ms / 1000 / max(1, len(fmts) - 1))
            await asyncio.sleep(AUDIO_SECONDS)
            end = now_us()
            events = sc.events()
            audio_s = (end - start) / 1e6 - stagger_ms / 1000 - 0.5
            require(*(v for p in probes for v in healthy_player(events, p.name, bounds, start, end, audio_s)))

    run(scenario())
