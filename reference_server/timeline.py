"""One audio timeline for every session.

Chunk k covers frames [k*F, (k+1)*F). Its timestamp comes from the sample
count, ``origin_us + (frame - origin_frame) * 1e6 // rate``, so no rounding
accumulates. The producer keeps the timeline `max_lead_ms` ahead of real time
and wakes the sessions; each session pulls chunks at its own cursor. Encoded
messages are cached per format, so each chunk is framed once per format no
matter how many sessions send it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from harness.protocol import PLAYER_AUDIO, EventLog, encode_binary, now_us

from .config import ServerConfig
from .sources import Source

HISTORY_US = 2_000_000  # chunks kept after they played, for sessions catching up


@dataclass(frozen=True, slots=True)
class Chunk:
    seq: int
    start_frame: int
    frames: int
    ts_us: int
    end_us: int


class Timeline:
    def __init__(self, source: Source, config: ServerConfig, log: EventLog) -> None:
        self.source = source
        self.rate = source.sample_rate
        self.frames_per_chunk = source.sample_rate * config.chunk_ms // 1000
        self.max_lead_us = config.max_lead_ms * 1000
        self.start_delay_us = config.start_delay_ms * 1000
        self.chunk_us = config.chunk_ms * 1000
        self.log = log
        self.chunks: deque[Chunk] = deque()
        self._cache: dict[int, dict[tuple[int, int], bytes]] = {}
        self._next_seq = 0
        self._origin_us = 0
        self._origin_frame = 0
        self._listeners: set[Callable[[], None]] = set()
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        """(Re)start playing: the next chunk plays `start_delay_ms` from now."""
        if self._task is not None:
            return
        self._origin_us = now_us() + self.start_delay_us
        self._origin_frame = self._next_seq * self.frames_per_chunk
        self.chunks.clear()
        self._cache.clear()
        self.log.emit("timeline_start", origin_us=self._origin_us, origin_frame=self._origin_frame,
                      rate=self.rate, frames_per_chunk=self.frames_per_chunk, source=self.source.description)
        self._task = asyncio.create_task(self._produce(), name="timeline")

    def stop(self) -> asyncio.Task[None] | None:
        """Pause now (a start() right after restarts cleanly); returns the task to await."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            self.log.emit("timeline_stop", next_seq=self._next_seq)
        return task

    def subscribe(self, wake: Callable[[], None]) -> None:
        self._listeners.add(wake)

    def unsubscribe(self, wake: Callable[[], None]) -> None:
        self._listeners.discard(wake)

    # --- queries used by sessions -----------------------------------------------

    def chunk(self, seq: int) -> Chunk | None:
        if not self.chunks or seq < self.chunks[0].seq or seq > self.chunks[-1].seq:
            return None
        return self.chunks[seq - self.chunks[0].seq]

    @property
    def first_seq(self) -> int | None:
        return self.chunks[0].seq if self.chunks else None

    def first_seq_at_or_after(self, t_us: int) -> int:
        """The first chunk that starts at or after `t_us` (may not exist yet)."""
        for c in self.chunks:
            if c.ts_us >= t_us:
                return c.seq
        return self._next_seq

    def message(self, chunk: Chunk, channels: int, bit_depth: int) -> bytes:
        """The framed audio message for `chunk` in one format, encoded once."""
        formats = self._cache.setdefault(chunk.seq, {}) if chunk.seq >= (self.first_seq or 0) else {}
        data = formats.get((channels, bit_depth))
        if data is None:
            pcm = self.source.encode(chunk.start_frame, chunk.frames, channels, bit_depth)
            data = formats[(channels, bit_depth)] = encode_binary(PLAYER_AUDIO, chunk.ts_us, pcm)
        return data

    def position_us(self) -> int:
        """Position of the playhead in the stream, for metadata progress."""
        frame = self._origin_frame + (now_us() - self._origin_us) * self.rate // 1_000_000
        return max(0, frame) * 1_000_000 // self.rate

    # --- producer ----------------------------------------------------------------

    def _ts(self, frame: int) -> int:
        return self._origin_us + (frame - self._origin_frame) * 1_000_000 // self.rate

    async def _produce(self) -> None:
        while True:
            now = now_us()
            produced = False
            while not self.chunks or self.chunks[-1].ts_us < now + self.max_lead_us:
                start = self._next_seq * self.frames_per_chunk
                end = start + self.frames_per_chunk
                self.chunks.append(Chunk(self._next_seq, start, self.frames_per_chunk, self._ts(start), self._ts(end)))
                self._next_seq += 1
                produced = True
            while self.chunks and self.chunks[0].end_us < now - HISTORY_US:
                self._cache.pop(self.chunks.popleft().seq, None)
            if produced:
                for wake in list(self._listeners):
                    wake()
            await asyncio.sleep(self.chunk_us / 1_000_000)
