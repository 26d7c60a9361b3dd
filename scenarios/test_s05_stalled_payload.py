"""S05 — stalled payload from a client.

A client sends the first fragment of a message (FIN=0) and withholds the rest.
Expectation: the server's read of that message times out after its payload
timeout, it closes that session with 4002 (stalled payload: the stream cannot
be resynchronised mid-message) within the bound, and other sessions stream on
unaffected.

Both variants share one skeleton (`stalled_payload_closed`): the probe itself
sends the first fragment and withholds the rest (`ProbeStalls`), or an
unmodified client sends a whole upload and the proxy in front of a
multi-worker server forwards only its first fragment (`ProxyStalls`).

In the noise profile the probe's variant runs as is, with a binary first frame: a
WebSocket message is one noise transport message, and its frames stall below the
Noise layer as they do in legacy (a text frame would be cleartext after the switch
to transport mode, its own failure). The noise revision's own partial message, a
first Sendspin fragment whose last never comes, has no timeout in the spec; what
follows it is a malformed sequence (S04's `test_s04_malformed_fragment_sequence_closes`).
`ProxyStalls` stalls an upload, the `_harness` role's: legacy only.
"""

from __future__ import annotations

import asyncio

from faultsite import BehindProxy, Direct, only_in
from hypothesis import given
from hypothesis import strategies as st

from harness.checkers import closed_by_policy, healthy_players, rejected, require
from harness.probe import ProbeClient, ProbeConfig
from harness.protocol import closecodes, now_us
from harness.protocol import messages as m
from harness.pytest_plugin import examples
from harness.scenario import Scenario
from harness.settings import Bounds

FAULT = "stalled_payload"


class ProbeStalls(Direct):
    """The probe sends the first fragment (FIN=0) of a message and never the rest."""

    def __init__(self, first_bytes: int, text: bool) -> None:
        self.first_bytes, self.text = first_bytes, text

    async def arm(self, staller: ProbeClient) -> None:
        pass

    def stall(self, staller: ProbeClient) -> None:
        staller.start_fragmented(b"{" * self.first_bytes if self.text else b"\xc0" * self.first_bytes,
                                 text=self.text)


class ProxyStalls(BehindProxy):
    """The client sends a whole upload; the proxy forwards its first fragment (FIN=0) and
    withholds the rest for good."""

    def __init__(self, head_bytes: int, text: bool) -> None:
        super().__init__()
        self.head_bytes, self.text = head_bytes, text

    async def arm(self, staller: ProbeClient) -> None:
        # text: the upload's JSON header is cut; binary: its payload message
        selector = {"json_type": "_harness/upload"} if self.text else {"binary_type": m.UPLOAD_BINARY_TYPE}
        await self.proxy.add({"type": FAULT, "direction": "upstream", "head_bytes": self.head_bytes,
                              "selector": selector, "connections": {"client_port": staller.local_port}})

    def stall(self, staller: ProbeClient) -> None:
        staller.send_upload(bytes(range(256)) * 40, upload_id="stalled")


async def stalled_payload_closed(sc: Scenario, bounds: Bounds, site: ProbeStalls | ProxyStalls, timeout_s: float,
                                 others: int, profile: str = "legacy") -> None:
    _, url = await site.start(sc, "--payload-timeout", str(timeout_s))
    start = now_us()
    players = [await sc.probe(url, ProbeConfig(name=f"player-{i + 1}", profile=profile)) for i in range(others)]
    staller = await sc.probe(url, ProbeConfig(name="staller", profile=profile))
    await asyncio.sleep(1.0)  # baseline for the isolation check
    await site.arm(staller)
    stalled_at = now_us()
    site.stall(staller)
    limit_us = int(timeout_s * 1e6) + bounds.policy_close_slack_us
    await asyncio.wait_for(staller.closed.wait(), limit_us / 1e6 + 1)
    assert staller.close_code == closecodes.STALLED_PAYLOAD, (staller.close_code, staller.close_reason)
    await asyncio.sleep(1.0)
    end = now_us()
    events = sc.events()
    require(
        *site.fault_logged(events, FAULT, stalled_at),
        closed_by_policy(events, "staller", closecodes.STALLED_PAYLOAD, stalled_at, limit_us),
        rejected(events, "staller", "stalled payload", after_us=stalled_at),
        *healthy_players(events, players, bounds, start, end, fault_us=stalled_at),
    )


@examples(2, noise=1)
@given(first_bytes=st.integers(1, 64 * 1024), text=st.booleans(), timeout_s=st.sampled_from([0.5, 1.0, 2.0]),
       others=st.integers(1, 2))
def test_s05_stalled_payload_times_out(run, fresh_dir, bounds, profile, first_bytes, text, timeout_s, others):
    """In noise the first frame is binary (in transport mode every message is)."""
    text = text and profile == "legacy"

    async def scenario() -> None:
        async with Scenario(fresh_dir()) as sc:
            await stalled_payload_closed(sc, bounds, ProbeStalls(first_bytes, text), timeout_s, others, profile)

    run(scenario())


@only_in("legacy", "the stalled upload is the _harness role's, which noise sessions do not activate; the noise "
                   "form of a stalled message is an unfinished Sendspin fragment sequence, for which the spec sets no "
                   "timeout")
@examples(2)
@given(head_bytes=st.integers(0, 4096), text=st.booleans(), timeout_s=st.sampled_from([0.5, 1.0]),
       others=st.integers(1, 2))
def test_s05_proxy_stalls_a_clients_message(run, fresh_dir, bounds, profile, head_bytes, text, timeout_s, others):
    """The same family with the stall made by the proxy in front of a multi-worker server:
    an unmodified client sends a whole upload; the proxy forwards its first fragment
    (FIN=0) and withholds the rest for good."""
    async def scenario() -> None:
        async with Scenario(fresh_dir()) as sc:
            await stalled_payload_closed(sc, bounds, ProxyStalls(head_bytes, text), timeout_s, others)

    run(scenario())
