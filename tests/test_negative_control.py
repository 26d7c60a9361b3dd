"""Negative control for I2 (reads never starve) during a bulk send.

A checker that never fails proves nothing. The same probe (artwork role,
16 KiB SO_RCVBUF, reading at 4 MiB/s, client/time every 50 ms) receives a
32 MiB artwork image from two servers, one after the other:

* the reference server, which sends it as 256 KiB fragments: `reads_prompt`
  must PASS;
* tests/bad_servers/sync_bulk_server.py, which sends it as one frame through
  websockets' synchronous API, whose connection lock is held across
  `sendall`: `reads_prompt` must FAIL, with a worst read latency of seconds
  (about the time the probe takes to read the image), far over the bound.

Both must deliver the image byte-identical (the bug is starvation, not loss).
On the wire the probe sees what each server really sent: 129 frames of
256 KiB or less plus an empty closing frame from the reference server, ONE
32 MiB frame from the bad one.

Both runs happen once per module (about 25 s); the tests below judge them. A
reference run that a stall of our own instruments leaves INCONCLUSIVE is measured
once more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from bad_servers.sync_bulk_server import spawn_sync_bulk_server

from harness.checkers import Verdict, artwork_intact, judge, reads_prompt, require
from harness.events import Events
from harness.probe import ProbeClient, ProbeConfig
from harness.protocol import HEADER_SIZE, now_us
from harness.protocol import messages as m
from harness.scenario import Scenario
from harness.settings import DEFAULT_BOUNDS

MiB = 1024 * 1024
ARTWORK_BYTES = 32 * MiB
FRAGMENT_BYTES = 256 * 1024
READ_RATE = 4 * MiB
PROBE = "bulk"
ARTWORK_TIMEOUT_S = 30.0     # 32 MiB at 4 MiB/s is 8 s
REPLY_TIMEOUT_S = 5.0
RUN_TIMEOUT_S = 50.0


def probe_config() -> ProbeConfig:
    return ProbeConfig(name=PROBE, roles=["artwork@v1", m.HARNESS_ROLE], rcvbuf=16384, read_rate=READ_RATE,
                       time_interval_s=0.05)


@dataclass
class BulkRun:
    events: Events
    arrived_us: int      # when the probe had the whole image
    end_us: int          # judge every client/time sent before the image arrived

    def reads(self) -> Verdict:
        return reads_prompt(self.events, PROBE, DEFAULT_BOUNDS, self.end_us)

    def artwork(self) -> Verdict:
        return artwork_intact(self.events, PROBE)


async def _wait(condition: Callable[[], bool], timeout: float, what: str, probe: ProbeClient) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert not probe.closed.is_set(), f"{what}: the session closed ({probe.close_code} {probe.close_reason!r})"
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.05)


async def bulk_send(directory: Path, bad: bool) -> BulkRun:
    async with Scenario(directory) as sc:
        if bad:
            server = await asyncio.to_thread(spawn_sync_bulk_server, directory, "--artwork-bytes", str(ARTWORK_BYTES))
            sc.servers.append(server)   # the Scenario reaps it
        else:
            server = await sc.server("--artwork-bytes", str(ARTWORK_BYTES))
        probe = await sc.probe(server.ready["url"], probe_config())
        await _wait(lambda: 0 in probe.artwork, ARTWORK_TIMEOUT_S, "artwork", probe)
        arrived = now_us()
        # Every client/time sent before the image arrived must have been read (and
        # answered) before we judge; the bad server reads its backlog only now.
        await _wait(lambda: all(t in probe.time_replies for t in probe.time_sent if t < arrived),
                    REPLY_TIMEOUT_S, "server/time replies", probe)
    events = Events.load(directory)
    arrived_us = events.select("artwork", proc=PROBE)[-1]["t_us"]
    return BulkRun(events, arrived_us, arrived_us + DEFAULT_BOUNDS.time_reply_grace_us)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BulkRun]:
    # One after the other, not together: each measurement has the machine to itself.
    async def both() -> dict[str, BulkRun]:
        reference = await bulk_send(tmp_path_factory.mktemp("reference"), bad=False)
        if judge(reference.reads()).inconclusive:  # our own instrument stalled: measure once more, as a re-run would
            reference = await bulk_send(tmp_path_factory.mktemp("reference"), bad=False)
        return {"reference": reference, "sync_bulk": await bulk_send(tmp_path_factory.mktemp("sync-bulk"), bad=True)}
    return asyncio.run(asyncio.wait_for(both(), 3 * RUN_TIMEOUT_S))


def test_reference_server_keeps_reading_during_bulk_send(runs: dict[str, BulkRun]) -> None:
    verdict = runs["reference"].reads()
    require(verdict)  # INCONCLUSIVE (twice: see `runs`) when a stall of our own instruments can account for it
    assert verdict.figures["n"] >= 100, verdict.explain()   # ≈ 8 s of client/time every 50 ms


def test_sync_bulk_server_starves_reads(runs: dict[str, BulkRun]) -> None:
    run = runs["sync_bulk"]
    verdict = run.reads()
    assert judge(verdict).status == "FAIL", f"the negative control passed I2: {verdict.explain()}"
    bound = DEFAULT_BOUNDS.read_latency_us
    assert verdict.figures["unread"] == 0, verdict.explain()   # starved, not lost: all read in the end
    assert verdict.figures["max_us"] > 10 * bound, verdict.explain()
    # The stall spans most of the transfer (server send_begin -> probe has it all; the
    # probe's own t_first_us is no help: an unfragmented frame is seen only when complete).
    # The last MiB or so fit into kernel buffers, so sendall returns a little early.
    send_begin = run.events.select("send_begin", type="artwork/0")[-1]["t_us"]
    transfer_us = run.arrived_us - send_begin
    assert verdict.figures["max_us"] > 0.5 * transfer_us, (transfer_us, verdict.explain())
    # And reads resumed exactly when the one-frame send returned: the lock, nothing else.
    send_end = run.events.select("send_end", type="artwork/0")[-1]["t_us"]
    worst_read = max(run.events.select("recv", type="client/time"), key=lambda r: r["t_us"] - r["client_transmitted"])
    assert abs(worst_read["t_us"] - send_end) < bound, (worst_read, send_end)


def test_artwork_arrives_intact_from_both(runs: dict[str, BulkRun]) -> None:
    for name, run in runs.items():
        verdict = run.artwork()
        assert verdict.ok, f"{name}: {verdict.explain()}"
        assert verdict.figures["bytes"] >= ARTWORK_BYTES, f"{name}: {verdict.explain()}"


def test_wire_framing_is_what_each_server_sent(runs: dict[str, BulkRun]) -> None:
    ref = runs["reference"].artwork().figures
    pieces = -(-(ref["bytes"] + HEADER_SIZE) // FRAGMENT_BYTES)   # 129 for the 32 MiB PNG
    # websockets' asyncio send(iterable) cannot know which piece is last, so it ends the
    # message with an empty FIN frame: 130 frames on the wire, the last one 0 bytes.
    assert pieces <= ref["fragments"] <= pieces + 1, ref
    assert ref["fragment_max"] <= FRAGMENT_BYTES, ref
    bad = runs["sync_bulk"].artwork().figures
    # websockets' ws.send(bytes) is one frame (FIN=1) however large; TCP segments it,
    # but no WebSocket fragmentation happens anywhere on the way.
    assert bad["fragments"] == 1, bad
    assert bad["fragment_max"] == bad["bytes"] + HEADER_SIZE, bad
