"""Real aiosendspin 6.1.1 peers for the interop tests, and the checks they share.

- `AiosendspinPlayer`: aiosendspin's `SendspinClient` as a headless player@v1
  that keeps every audio chunk (server timestamp and raw PCM) instead of playing it.
- `AiosendspinServer`: aiosendspin's `SendspinServer` mounted on our own aiohttp
  site on 127.0.0.1 with an ephemeral port. `start_server()` is never called,
  because it always starts zeroconf (NOTES gotcha 2). It streams watermark PCM.
- `verify_watermark`: every sample arrives exactly once and in order, and the
  timestamps follow the sample count.
- `LogCapture`, `socket_inodes`, `child_pids`: evidence for clean runs and for
  "nothing left behind".

Only tests/test_interop_aiosendspin.py uses this module. Other suites can reuse it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

# The server needs PyAV. Import it here, because aiosendspin would otherwise import it
# lazily on the first commit_audio() and block the loop for about 100 ms (NOTES gotcha 3).
import av  # noqa: F401
from aiohttp import web
from aiosendspin.client import AudioFormat as ClientAudioFormat
from aiosendspin.client import SendspinClient
from aiosendspin.models.core import GroupUpdateServerPayload, ServerHelloPayload, StreamStartMessage
from aiosendspin.models.player import ClientHelloPlayerSupport, StreamStartPlayer, SupportedAudioFormat
from aiosendspin.models.types import AudioCodec, GoodbyeReason, PlayerCommand, Roles
from aiosendspin.server import AudioFormat as ServerAudioFormat
from aiosendspin.server import ClientAddedEvent, SendspinServer

from harness.protocol import watermark

RATE = 48_000


# --- checks ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReceivedChunk:
    ts_us: int
    pcm: bytes


@dataclass
class WatermarkReport:
    chunks: int = 0
    frames: int = 0
    first_index: int | None = None
    problems: list[str] = field(default_factory=list)

    def seconds(self, rate: int = RATE) -> float:
        return self.frames / rate


def verify_watermark(chunks: list[ReceivedChunk], *, rate: int, channels: int, bit_depth: int,
                     origin: tuple[int, int] | None = None, max_problems: int = 20) -> WatermarkReport:
    """Check every sample index and every timestamp of a run of watermark chunks.

    Sample n of the stream must play at ``origin_us + (n - origin_frame) * 1e6 // rate``.
    With `origin` = (origin_us, origin_frame) this must hold exactly. Without it the
    first chunk is the origin: each difference to it may then exceed the floored sample
    time by 1 µs, because floor(a + b) - floor(a) is floor(b) or floor(b) + 1.
    Mono carries only ``n mod 2**bit_depth``. The timestamp gives an estimate of n
    (`watermark.unwrap`), so a gap of a whole period cannot hide.
    """
    report = WatermarkReport()
    period = 1 << bit_depth
    expected: int | None = None   # index of the next sample
    prev_ts: int | None = None
    prev_frames = 0
    ts0 = idx0 = 0

    def problem(text: str) -> None:
        if len(report.problems) < max_problems:
            report.problems.append(text)

    for k, chunk in enumerate(chunks):
        low = watermark.decode(chunk.pcm, channels, bit_depth)
        frames = len(low)
        if frames == 0:
            problem(f"chunk {k} (ts {chunk.ts_us}): empty payload")
            continue
        steps = (low[1:] - low[:-1]) % period if channels == 1 else low[1:] - low[:-1]
        if frames > 1 and not bool((steps == 1).all()):
            bad = int((steps != 1).argmax())
            problem(f"chunk {k} (ts {chunk.ts_us}): samples {bad} -> {bad + 1} are not consecutive "
                    f"(indices {int(low[bad])} -> {int(low[bad + 1])})")
        # Estimate of this chunk's first index from its timestamp (for mono's high bits).
        if origin is not None:
            estimate = origin[1] + (chunk.ts_us - origin[0]) * rate // 1_000_000
        elif report.first_index is not None:
            estimate = idx0 + (chunk.ts_us - ts0) * rate // 1_000_000
        else:
            estimate = int(low[0])
        first = int(low[0]) if channels > 1 else watermark.unwrap(int(low[0]), estimate, bit_depth)
        if report.first_index is None:
            report.first_index, ts0, idx0 = first, chunk.ts_us, first
        # Continuity across chunks: exactly where the previous one ended.
        if expected is not None and first != expected:
            kind = "gap" if first > expected else "duplicate/overlap"
            problem(f"chunk {k} (ts {chunk.ts_us}): {kind}: starts at sample {first}, expected {expected} "
                    f"({first - expected:+d} samples)")
        # Timestamps follow the sample count.
        if origin is not None:
            want = origin[0] + (first - origin[1]) * 1_000_000 // rate
            if chunk.ts_us != want:
                problem(f"chunk {k}: ts {chunk.ts_us} != origin {origin[0]} + ({first} - {origin[1]}) "
                        f"* 1e6 // {rate} = {want} ({chunk.ts_us - want:+d} µs)")
        else:
            floor = (first - idx0) * 1_000_000 // rate
            if chunk.ts_us - ts0 - floor not in (0, 1):
                problem(f"chunk {k}: ts advanced {chunk.ts_us - ts0} µs over {first - idx0} samples, "
                        f"expected {floor} (+1) µs")
        if prev_ts is not None:
            step = prev_frames * 1_000_000 // rate
            if chunk.ts_us - prev_ts - step not in (0, 1):
                problem(f"chunk {k}: ts stepped {chunk.ts_us - prev_ts} µs after a {prev_frames}-frame chunk, "
                        f"expected {step} (+1) µs")
        expected = first + frames
        prev_ts, prev_frames = chunk.ts_us, frames
        report.chunks += 1
        report.frames += frames
    return report


class LogCapture(logging.Handler):
    """Collects aiosendspin's own warnings and errors: a clean interop run has none."""

    def __init__(self, logger: str = "aiosendspin", level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []
        self._logger = logging.getLogger(logger)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        return [f"{r.levelname} {r.name}: {r.getMessage()}" for r in self.records]

    def __enter__(self) -> LogCapture:
        # Make sure warnings reach us even if someone raised the logger's level.
        self._saved_level = self._logger.level
        if self._logger.getEffectiveLevel() > self.level:
            self._logger.setLevel(self.level)
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._saved_level)


def socket_inodes() -> set[str]:
    """The sockets this process holds open now (from /proc/self/fd)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:"):
                found.add(target)
    return found


def child_pids() -> set[int]:
    """Direct children of this process that still exist (zombies included)."""
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (task / "children").read_text().split())
    return pids


# --- aiosendspin client --------------------------------------------------------------------


class AiosendspinPlayer:
    """A headless aiosendspin player@v1 that offers exactly one PCM format.

    Construct it inside the running loop: SendspinClient calls get_running_loop()
    (NOTES gotcha 11).
    """

    def __init__(self, client_id: str, *, channels: int, bit_depth: int, rate: int = RATE,
                 buffer_capacity: int = 1_000_000) -> None:
        self.client = SendspinClient(
            client_id=client_id, client_name=client_id, roles=[Roles.PLAYER],
            player_support=ClientHelloPlayerSupport(
                supported_formats=[SupportedAudioFormat(codec=AudioCodec.PCM, channels=channels,
                                                        sample_rate=rate, bit_depth=bit_depth)],
                buffer_capacity=buffer_capacity,
                supported_commands=[PlayerCommand.VOLUME, PlayerCommand.MUTE]),
            initial_volume=100, initial_muted=False,
        )
        self.chunks: list[ReceivedChunk] = []
        self.formats: list[ClientAudioFormat] = []   # the format each chunk arrived in, when it changed
        self.frames = 0
        self.server_hello: ServerHelloPayload | None = None
        self.stream_starts: list[StreamStartPlayer] = []
        self.stream_ends = 0
        self.group_updates: list[GroupUpdateServerPayload] = []
        self.disconnected = asyncio.Event()
        self._want: tuple[int, asyncio.Future[None]] | None = None
        c = self.client
        c.add_audio_chunk_listener(self._on_audio)
        c.add_stream_start_listener(self._on_stream_start)
        c.add_stream_end_listener(self._on_stream_end)
        c.add_group_update_listener(self.group_updates.append)
        c.add_server_hello_listener(self._on_hello)
        c.add_disconnect_listener(self.disconnected.set)

    def _on_audio(self, ts_us: int, pcm: bytes, fmt: ClientAudioFormat) -> None:
        if not self.formats or self.formats[-1] != fmt:
            self.formats.append(fmt)
        self.chunks.append(ReceivedChunk(ts_us, bytes(pcm)))
        self.frames += len(pcm) // fmt.pcm_format.frame_size
        if self._want is not None and self.frames >= self._want[0] and not self._want[1].done():
            self._want[1].set_result(None)

    def _on_stream_start(self, message: StreamStartMessage) -> None:
        if message.payload.player is not None:
            self.stream_starts.append(message.payload.player)

    def _on_stream_end(self, roles: list[str] | None) -> None:
        self.stream_ends += 1

    def _on_hello(self, payload: ServerHelloPayload) -> None:
        self.server_hello = payload

    async def connect(self, url: str, timeout: float = 10.0) -> None:
        # ws_connect itself has no timeout (NOTES §1).
        await asyncio.wait_for(self.client.connect(url), timeout)

    async def wait_frames(self, frames: int, timeout: float) -> None:
        """Wait until at least `frames` audio frames have arrived."""
        if self.frames >= frames:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._want = (frames, fut)
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            self._want = None

    async def close(self, timeout: float = 3.0) -> bool:
        """Say goodbye and let the server close first (a clean 1000, NOTES gotcha 10),
        then release everything. True if the server closed the socket after the goodbye."""
        server_closed = False
        try:
            if self.client.connected:
                await asyncio.wait_for(self.client.send_goodbye(GoodbyeReason.SHUTDOWN), timeout)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.disconnected.wait(), timeout)
                server_closed = self.disconnected.is_set()
        finally:
            # Idempotent: cancels the time and reader tasks, closes the ws and the client's own session.
            await asyncio.wait_for(self.client.disconnect(), timeout)
        return server_closed


# --- aiosendspin server ---------------------------------------------------------------------


@dataclass
class StreamRecord:
    """What the server pushed: commits as (first frame, frames, play_start_us)."""

    commits: list[tuple[int, int, int]] = field(default_factory=list)
    frames: int = 0


class AiosendspinServer:
    """aiosendspin's server on 127.0.0.1:<ephemeral>, no zeroconf, streaming watermark PCM."""

    def __init__(self, server_id: str = "aiosendspin-interop") -> None:
        self.server_id = server_id
        self.server: SendspinServer | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._added: asyncio.Queue[str] = asyncio.Queue()

    async def start(self) -> str:
        # The loop argument is positional and required.
        self.server = SendspinServer(asyncio.get_running_loop(), self.server_id, "aiosendspin interop server")
        self.server.add_event_listener(self._on_event)
        app = web.Application()
        app.router.add_get(SendspinServer.API_PATH, self.server.on_client_connect)
        self._runner = web.AppRunner(app, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        port = self._runner.addresses[0][1]
        self.url = f"ws://127.0.0.1:{port}{SendspinServer.API_PATH}"
        return self.url

    def _on_event(self, _server: SendspinServer, event: object) -> None:
        # Fires after client/hello and the initial client/state (NOTES gotcha 7).
        if isinstance(event, ClientAddedEvent):
            self._added.put_nowait(event.client_id)

    async def wait_client(self, timeout: float) -> str:
        return await asyncio.wait_for(self._added.get(), timeout)

    async def stream(self, client_id: str, *, seconds: float, channels: int, bit_depth: int,
                     rate: int = RATE, block_ms: int = 50, max_ahead_ms: int = 500,
                     record: StreamRecord | None = None) -> StreamRecord:
        """Push `seconds` of watermark from sample 0 into the client's group, wait until
        it has been sent and has played, then stop (stream/end)."""
        assert self.server is not None
        client = self.server.get_client(client_id)
        assert client is not None, f"aiosendspin server has no client {client_id!r}"
        group = client.group   # each client starts in its own solo group
        push = group.start_stream()
        fmt = ServerAudioFormat(sample_rate=rate, bit_depth=bit_depth, channels=channels)
        block = rate * block_ms // 1000
        total = int(rate * seconds)
        record = record if record is not None else StreamRecord()
        try:
            async with asyncio.timeout(seconds + 10):
                frame = last_end_us = 0
                while frame < total:
                    n = min(block, total - frame)
                    push.prepare_audio(watermark.encode(frame, n, channels, bit_depth), fmt)
                    start_us = await push.commit_audio()
                    record.commits.append((frame, n, start_us))
                    frame += n
                    record.frames = frame
                    last_end_us = start_us + n * 1_000_000 // rate
                    # The server does not pace by itself (NOTES gotcha 6).
                    await push.sleep_to_limit_buffer(max_ahead_ms * 1000)
                # stream/end drops queued chunks that are not yet sent (NOTES gotcha 5):
                # wait until the last one is due to play.
                await asyncio.sleep(min(3.0, max(0.0, (last_end_us - push.now_us()) / 1e6)))
        finally:
            await asyncio.wait_for(group.stop(), 5)
        return record

    async def close(self) -> None:
        # close() first: it closes the websockets, then the site can shut down quickly.
        if self.server is not None:
            await asyncio.wait_for(self.server.close(), 5)
        if self._runner is not None:
            await asyncio.wait_for(self._runner.cleanup(), 5)
