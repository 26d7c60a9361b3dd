"""One audio timeline for every session, in every process.

The `Producer` (in the coordinator, or in the one process of embedded mode)
is the timeline's clock: chunk k covers frames [k*F, (k+1)*F) and its
timestamp comes from the sample count, ``origin_us + (frame - origin_frame) *
1e6 // rate``, so no rounding accumulates. It runs `max_lead_ms` ahead of real
time and hands the chunks, with the source's canonical bytes, to a sink in
batches of `batch_ms`: one write per listener per batch instead of per chunk
(the batch only decides when chunks are sent, never their timestamps).

A `ChunkStore` is what sessions read: the recent chunks of the timeline, each
rendered and prepared by the wire profile once per format, no matter how many
sessions send it (legacy: down to the WebSocket frame, which is the same bytes
for every listener). Each session pulls from it at its own cursor, so nothing
queues per session.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from harness.protocol import EventLog, Profile, now_us

from .sources import Source, render

HISTORY_US = 2_000_000  # chunks kept after they played, for sessions catching up


@dataclass(frozen=True, slots=True)
class Chunk:
    seq: int
    start_frame: int
    frames: int
    ts_us: int
    end_us: int


Batch = list[tuple[Chunk, bytes]]  # chunks in timeline order, each with its canonical bytes
ChunkSink = Callable[[Batch], None]


class Producer:
    def __init__(self, source: Source, chunk_ms: int, max_lead_ms: int, start_delay_ms: int, batch_ms: int,
                 log: EventLog, sink: ChunkSink) -> None:
        self.source = source
        self.rate = source.sample_rate
        self.frames_per_chunk = source.sample_rate * chunk_ms // 1000
        self.chunk_us = chunk_ms * 1000
        self.batch_s = max(batch_ms, chunk_ms) / 1000
        self.max_lead_us = max_lead_ms * 1000
        self.start_delay_us = start_delay_ms * 1000
        self.log = log
        self.sink = sink
        self._next_seq = 0
        self._origin_us = 0
        self._origin_frame = 0
        self._last_end = 0  # end of the last chunk produced, kept across pauses
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        """(Re)start: the next chunk plays `start_delay_ms` from now, or right
        after the last one produced if that is later, so the timeline never
        overlaps itself and a quick pause/resume continues it seamlessly."""
        if self._task is not None:
            return
        self._origin_us = max(now_us() + self.start_delay_us, self._last_end)
        self._origin_frame = self._next_seq * self.frames_per_chunk
        self.log.emit("timeline_start", origin_us=self._origin_us, origin_frame=self._origin_frame, rate=self.rate,
                      frames_per_chunk=self.frames_per_chunk, source=self.source.description)
        self._task = asyncio.create_task(self._produce(), name="timeline")

    def stop(self) -> asyncio.Task[None] | None:
        """Pause now (a start() right after restarts cleanly); returns the task to await."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            self.log.emit("timeline_stop", next_seq=self._next_seq)
        return task

    def _ts(self, frame: int) -> int:
        return self._origin_us + (frame - self._origin_frame) * 1_000_000 // self.rate

    async def _produce(self) -> None:
        while True:
            horizon = now_us() + self.max_lead_us
            batch: Batch = []
            while self._last_end - self.chunk_us < horizon:
                start = self._next_seq * self.frames_per_chunk
                end = start + self.frames_per_chunk
                chunk = Chunk(self._next_seq, start, self.frames_per_chunk, self._ts(start), self._ts(end))
                self._next_seq += 1
                self._last_end = chunk.end_us
                batch.append((chunk, self.source.canonical(start, self.frames_per_chunk)))
            if batch:
                self.sink(batch)
            await asyncio.sleep(self.batch_s)


class ChunkStore:
    def __init__(self, rate: int, source_kind: str, profile: Profile) -> None:
        self.rate = rate
        self.source_kind = source_kind
        self._prepare = profile.prepare_audio
        self.chunks: deque[Chunk] = deque()   # in timeline order; seqs may skip (IPC drops)
        self._by_seq: dict[int, Chunk] = {}
        self._canonical: dict[int, bytes] = {}
        self._prepared: dict[int, dict[tuple[int, int, str], bytes]] = {}
        self._listeners: set[Callable[[list[Chunk]], None]] = set()
        self.running = False

    def subscribe(self, on_chunks: Callable[[list[Chunk]], None]) -> None:
        self._listeners.add(on_chunks)

    def unsubscribe(self, on_chunks: Callable[[list[Chunk]], None]) -> None:
        self._listeners.discard(on_chunks)

    def add_batch(self, batch: Batch) -> None:
        """Store a batch of chunks, then tell every listener once."""
        for chunk, canonical in batch:
            self._add(chunk, canonical)
        chunks = [chunk for chunk, _ in batch]
        for on_chunks in list(self._listeners):
            on_chunks(chunks)

    def _add(self, chunk: Chunk, canonical: bytes) -> None:
        """The next chunk of the timeline. One that does not continue the last
        one's time is a restart: what was queued for the old one is dropped."""
        if self.chunks:
            last = self.chunks[-1]
            expected_ts = last.end_us + (chunk.seq - last.seq - 1) * (last.end_us - last.ts_us)
            if chunk.seq <= last.seq or abs(chunk.ts_us - expected_ts) > 1 + chunk.seq - last.seq:
                self.clear()
        self.chunks.append(chunk)
        self._by_seq[chunk.seq] = chunk
        self._canonical[chunk.seq] = canonical
        now = now_us()
        while self.chunks and self.chunks[0].end_us < now - HISTORY_US:
            self._forget(self.chunks.popleft().seq)

    def clear(self) -> None:
        self.chunks.clear()
        self._by_seq.clear()
        self._canonical.clear()
        self._prepared.clear()

    def _forget(self, seq: int) -> None:
        self._by_seq.pop(seq, None)
        self._canonical.pop(seq, None)
        self._prepared.pop(seq, None)

    # --- queries used by sessions ---------------------------------------------------

    def chunk_at_or_after(self, seq: int) -> Chunk | None:
        """Chunk `seq`, or the next one the store has (chunks lost on the way are skipped)."""
        found = self._by_seq.get(seq)
        if found is not None or not self.chunks or seq > self.chunks[-1].seq:
            return found
        return next((c for c in self.chunks if c.seq >= seq), None)

    def first_seq_at_or_after(self, t_us: int) -> int:
        """The first chunk that starts at or after `t_us` (may not exist yet)."""
        for c in self.chunks:
            if c.ts_us >= t_us:
                return c.seq
        return self.chunks[-1].seq + 1 if self.chunks else 0

    def prepared(self, chunk: Chunk, channels: int, bit_depth: int, profile: Profile | None = None) -> bytes:
        """`chunk` in one format as a wire profile (default: the store's) prepares
        audio for every session of that profile (legacy: the complete WebSocket
        binary frame, the same bytes for every listener; noise: the plaintext
        message, which each session seals). Made once per format and profile."""
        formats = self._prepared.setdefault(chunk.seq, {}) if chunk.seq in self._canonical else {}
        key = (channels, bit_depth, profile.name if profile is not None else "")
        data = formats.get(key)
        if data is None:
            pcm = render(self.source_kind, self._canonical.get(chunk.seq, b""), chunk.start_frame, chunk.frames,
                         channels, bit_depth)
            prepare = profile.prepare_audio if profile is not None else self._prepare
            data = formats[key] = prepare(chunk.ts_us, pcm)
        return data

    def position_us(self) -> int:
        """Stream position of the playhead, for metadata progress."""
        now = now_us()
        for c in self.chunks:
            if c.ts_us <= now < c.end_us:
                return (c.start_frame + (now - c.ts_us) * self.rate // 1_000_000) * 1_000_000 // self.rate
        return 0
