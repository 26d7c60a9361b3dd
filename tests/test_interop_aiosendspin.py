"""Interop with the real peer aiosendspin 6.1.1, over real sockets on 127.0.0.1.

1. aiosendspin's client plays from our reference server. Every sample arrives exactly
   once and in order, the timestamps follow the sample count, and the server's event
   log shows the accept and a clean close after the goodbye.
2. Our probe plays from aiosendspin's server (in process, no zeroconf). The probe's
   AudioTracker sees every watermark sample that was pushed, once and in order.

The scenarios run in `asyncio.run` inside plain test functions, and every wait is
bounded. Each test checks that it leaves no task, socket or child process behind.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from interop_peers import (
    RATE,
    AiosendspinPlayer,
    AiosendspinServer,
    LogCapture,
    ReceivedChunk,
    StreamRecord,
    child_pids,
    socket_inodes,
    verify_watermark,
)

from harness.probe import ProbeClient, ProbeConfig
from harness.protocol import EventLog, now_us, watermark
from harness.protocol import messages as m
from harness.topology import reference_server

FORMATS = [(2, 16), (1, 16), (2, 24), (1, 24)]
FORMAT_IDS = [f"{'stereo' if c == 2 else 'mono'}-{b}bit" for c, b in FORMATS]


# --- shared plumbing -----------------------------------------------------------------------


def run_clean[T](scenario: Callable[[], Awaitable[T]], timeout: float) -> T:
    """asyncio.run with an overall bound; fails if the scenario leaves a task behind.
    asyncio.run would cancel stray tasks silently, which would hide a leak."""
    async def main() -> T:
        result = await asyncio.wait_for(scenario(), timeout)
        await asyncio.sleep(0)   # let completed callbacks run before counting tasks
        stray = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not stray, f"tasks left running: {stray}"
        return result
    return asyncio.run(main())


@contextmanager
def nothing_left_behind() -> Iterator[None]:
    """No new socket and no child process may outlive the test."""
    sockets, children = socket_inodes(), child_pids()
    yield
    leaked_sockets = socket_inodes() - sockets
    assert not leaked_sockets, f"sockets left open: {leaked_sockets}"
    leaked_children = child_pids() - children
    assert not leaked_children, f"child processes left behind: {leaked_children}"


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    # A line may be half written while the peer process runs: skip it.
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


async def wait_event(path: Path, match: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    """Poll a JSON-lines event log (another process writes it) for a matching record."""
    async with asyncio.timeout(timeout):
        while True:
            for event in read_events(path):
                if match(event):
                    return event
            await asyncio.sleep(0.02)


def raw_minus_monotonic_us() -> int:
    """aiosendspin stamps with CLOCK_MONOTONIC_RAW, the harness with CLOCK_MONOTONIC."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW) // 1000 - now_us()


# --- 1. aiosendspin client -> reference server ----------------------------------------------------

CLIENT_SECONDS = 5.0


@pytest.mark.timeout(40)
@pytest.mark.parametrize(("channels", "bit_depth"), FORMATS, ids=FORMAT_IDS)
def test_aiosendspin_client_plays_from_reference_server(tmp_path: Path, channels: int, bit_depth: int) -> None:
    client_id = f"aiosendspin-{channels}ch-{bit_depth}bit"
    log_path = tmp_path / "server.jsonl"

    async def scenario(url: str) -> tuple[AiosendspinPlayer, bool, dict[str, Any]]:
        player = AiosendspinPlayer(client_id, channels=channels, bit_depth=bit_depth)
        try:
            await player.connect(url)
            await player.wait_frames(int(CLIENT_SECONDS * RATE), timeout=CLIENT_SECONDS + 5)
        finally:
            server_closed = await player.close()
        # The session logs its close after the socket is down; the log is another process's.
        close = await wait_event(log_path, lambda e: e["event"] == "close" and e["session"] is not None, 5)
        return player, server_closed, close

    with nothing_left_behind(), LogCapture() as aiosendspin_log, reference_server(tmp_path) as server:
        player, server_closed, close = run_clean(lambda: scenario(server.ready["url"]), 25)
        assert server.stop() == 0, server.stderr_path.read_text()   # a clean shutdown on SIGTERM
    assert not aiosendspin_log.lines(), "aiosendspin logged warnings or errors"

    # Handshake: aiosendspin accepted our server/hello and got the format it asked for.
    assert player.server_hello is not None and player.server_hello.server_id == "reference-server"
    assert [(s.codec.value, s.sample_rate, s.channels, s.bit_depth) for s in player.stream_starts] == \
        [("pcm", RATE, channels, bit_depth)]
    assert [(f.pcm_format.sample_rate, f.pcm_format.channels, f.pcm_format.bit_depth) for f in player.formats] == \
        [(RATE, channels, bit_depth)]
    assert any(u.playback_state is not None and u.playback_state.value == "playing" for u in player.group_updates)

    # The audio, sample by sample, against the timeline origin the server logged.
    events = read_events(log_path)
    starts = [e for e in events if e["event"] == "timeline_start"]
    assert len(starts) == 1, starts
    origin = (starts[0]["origin_us"], starts[0]["origin_frame"])
    report = verify_watermark(player.chunks, rate=RATE, channels=channels, bit_depth=bit_depth, origin=origin)
    assert report.problems == []
    assert report.seconds() >= CLIENT_SECONDS

    # The event log: this client's session was accepted, said goodbye and closed cleanly.
    hello = next(e for e in events if e["event"] == "recv" and e.get("type") == "client/hello")
    session = hello["session"]
    assert hello["client_id"] == client_id
    mine = [e for e in events if e["session"] == session]
    kinds = [e["event"] for e in mine]
    assert kinds[0] == "accept"
    assert [e for e in mine if e["event"] == "reject"] == [], "the server refused a message aiosendspin sent"
    assert [e for e in mine if e["event"] == "audio_skip"] == []
    goodbye = next(e for e in mine if e["event"] == "goodbye")
    assert goodbye["reason"] == "shutdown"
    assert close["session"] == session and kinds[-1] == "close"
    assert (close["code"], close["sent_code"]) == (1000, 1000), close
    assert close["t_us"] >= goodbye["t_us"]
    assert server_closed, "the server did not close the connection after client/goodbye"
    assert close["audio_sent"] == len(player.chunks), "chunks sent != chunks aiosendspin delivered"


# --- 2. probe -> aiosendspin server ----------------------------------------------------------------

STREAM_SECONDS = 3.5
PROBE_SECONDS = 3.0


@pytest.mark.timeout(40)
@pytest.mark.parametrize(("channels", "bit_depth"), FORMATS, ids=FORMAT_IDS)
def test_probe_plays_from_aiosendspin_server(tmp_path: Path, channels: int, bit_depth: int) -> None:
    name = f"probe-{channels}ch-{bit_depth}bit"
    log_path = tmp_path / "probe.jsonl"
    record = StreamRecord()

    async def scenario() -> tuple[ProbeClient, tuple[bool, str]]:
        peer = AiosendspinServer()
        probe: ProbeClient | None = None
        pending: list[asyncio.Future[Any]] = []
        try:
            url = await peer.start()
            config = ProbeConfig(name=name, formats=[m.AudioFormat(codec="pcm", channels=channels,
                                                                   sample_rate=RATE, bit_depth=bit_depth)])
            probe = ProbeClient(url, config, EventLog(log_path, name))
            await probe.connect()   # the WebSocket upgrade and client/hello -> server/hello, bounded inside
            assert await peer.wait_client(5) == name
            # Listen before streaming starts, so neither message can slip past.
            started = asyncio.ensure_future(probe.wait_type(m.StreamStart, 5))
            ended = asyncio.ensure_future(probe.wait_type(m.StreamEnd, STREAM_SECONDS + 10))
            stream = asyncio.create_task(peer.stream(name, seconds=STREAM_SECONDS, channels=channels,
                                                     bit_depth=bit_depth, record=record))
            pending += [started, ended, stream]
            await started
            async with asyncio.timeout(STREAM_SECONDS + 5):
                while probe.audio.samples < PROBE_SECONDS * RATE:
                    await asyncio.sleep(0.02)
            await asyncio.wait_for(stream, 10)
            await ended
            # aiosendspin's view of the probe: player role active, client/state understood.
            assert peer.server is not None
            view = peer.server.get_client(name)
            assert view is not None
            return probe, (view.role("player@v1") is not None, view.client_state.value)
        finally:
            # On failure, nothing may keep running: stop waiters and the producer first.
            for fut in pending:
                fut.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if probe is not None:
                await probe.close()
                probe.log.close()
            await peer.close()

    offset_us = raw_minus_monotonic_us()
    with nothing_left_behind(), LogCapture() as aiosendspin_log:
        probe, server_view = run_clean(scenario, 25)
    assert not aiosendspin_log.lines(), "aiosendspin logged warnings or errors"
    assert server_view == (True, "synchronized")

    # The handshake and the stream as the probe saw them.
    assert probe.handshake is not None and probe.handshake.server_hello is not None
    assert probe.handshake.server_hello.server_id == "aiosendspin-interop"
    assert "player@v1" in probe.handshake.server_hello.active_roles
    starts = [msg.player for msg in probe.messages if isinstance(msg, m.StreamStart)]
    assert starts == [m.PlayerStream(codec="pcm", sample_rate=RATE, channels=channels, bit_depth=bit_depth)]

    # Every pushed sample arrived once and in order.
    audio = probe.audio
    assert (audio.gaps, audio.duplicates, audio.reordered, audio.corrupt) == (0, 0, 0, 0)
    assert audio.samples == record.frames >= PROBE_SECONDS * RATE
    assert probe.close_code == 1000, (probe.close_code, probe.close_reason)

    # The probe decoded everything aiosendspin sent, and the timestamps follow the sample
    # count from the first commit's play time.
    events = read_events(log_path)
    assert [e for e in events if e["event"] == "reject"] == []
    chunks = [e for e in events if e["event"] == "audio"]
    assert chunks[0]["first"] == 0
    origin_us = record.commits[0][2]
    bad_ts = [(e["first"], e["ts_us"]) for e in chunks if e["ts_us"] != origin_us + e["first"] * 1_000_000 // RATE]
    assert bad_ts == []
    # Nothing arrived after its play time (lead measured in aiosendspin's clock). With the
    # probe's client/state (no min_buffer_ms) the server still streams steadily, paced by
    # the producer (2 chunks per 50 ms commit), not in sparse bursts.
    leads = [e["ts_us"] - (e["t_us"] + offset_us) for e in chunks]
    assert min(leads) > 0, f"a chunk arrived {-min(leads)} µs after its play time"
    arrivals = [e["t_us"] for e in chunks]
    pause = max(b - a for a, b in itertools.pairwise(arrivals))
    assert pause < 250_000, f"aiosendspin paused {pause} µs between chunks"


def test_watermark_check_catches_faults() -> None:
    """The checker itself: a clean run passes; a gap, a repeat and a wrong timestamp fail."""
    def run(starts: list[int], ts: list[int], channels: int = 1, bit_depth: int = 16) -> list[str]:
        chunks = [ReceivedChunk(t, watermark.encode(s, 1200, channels, bit_depth)) for s, t in zip(starts, ts,
                                                                                                  strict=True)]
        return verify_watermark(chunks, rate=RATE, channels=channels, bit_depth=bit_depth).problems

    clean = [70_000 + 1200 * k for k in range(4)]
    ts = [1_000_000 + 25_000 * k for k in range(4)]
    assert run(clean, ts) == []
    assert run(clean, ts, channels=2) == []
    # A gap of one whole 16-bit period leaves mono's low bits unchanged; the timestamps
    # (which move with it) must still expose it.
    period_us = 65_536 * 1_000_000 // RATE
    gap = [*clean[:2], clean[2] + 65_536, clean[3] + 65_536]
    assert any("gap" in p for p in run(gap, [*ts[:2], ts[2] + period_us, ts[3] + period_us]))
    assert any("duplicate" in p for p in run([clean[0], clean[0], clean[1], clean[2]], ts))
    assert any("ts stepped" in p for p in run(clean, [*ts[:3], ts[3] + 40]))
    # Against a known origin the timestamps must be exact: 1 µs off fails.
    chunks = [ReceivedChunk(t, watermark.encode(s, 1200, 2, 16)) for s, t in zip(clean, ts, strict=True)]
    assert verify_watermark(chunks, rate=RATE, channels=2, bit_depth=16, origin=(ts[0], clean[0])).problems == []
    late = [*chunks[:3], ReceivedChunk(ts[3] + 1, chunks[3].pcm)]
    assert len(verify_watermark(late, rate=RATE, channels=2, bit_depth=16, origin=(ts[0], clean[0])).problems) == 1
