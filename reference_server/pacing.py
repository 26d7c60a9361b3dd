"""Audio pacing for one session: which chunk goes next, and whether it may go now.

A session reads the shared `ChunkStore` at its own cursor. The rules, written
once here and used by both ways audio leaves a session (the writer task, and
the producer callback that writes a batch straight to a caught-up session):

- join (or rejoin after a clear) at the first chunk starting `start_delay`
  from now, so the client can buffer before it plays;
- skip what the store no longer has and what is due already (`on_skip`);
- keep the audio sent but not yet played within the client's
  `buffer_capacity` (in-flight accounting: drained as chunks' play ends pass).

No I/O here: the caller writes the frames it is given.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from harness.protocol import Profile
from harness.protocol import messages as m

from .timeline import Chunk, ChunkStore

SkipHook = Callable[[int, int], None]  # (chunks skipped now, total skipped)


class AudioPacer:
    def __init__(self, store: ChunkStore, start_delay_us: int, on_skip: SkipHook,
                 seal: Callable[[bytes], bytes] | None = None, profile: Profile | None = None) -> None:
        """`seal`: the session codec's per-listener step from prepared audio to
        the frame to write, run when the frame is taken to be written (noise: the
        AEAD, with `send_ahead` stamped then); None when the prepared bytes are
        written as they are. `profile`: whose prepared form (default: the store's)."""
        self.store = store
        self.profile = profile
        self.start_delay_us = start_delay_us
        self.capacity = 0  # the client's buffer_capacity
        self.sent = 0
        self.skipped = 0
        self._on_skip = on_skip
        self.seal = seal
        self.cursor: int | None = None  # the next chunk's seq; None: choose as on joining
        self._inflight: deque[tuple[int, int]] = deque()  # (play end µs, bytes) of audio sent, not yet due
        self._inflight_bytes = 0

    def restart(self) -> None:
        """A new stream or a clear: the next chunk is chosen as on joining."""
        self.cursor = None

    def next_due(self, fmt: m.PlayerStream, now: int) -> tuple[bytes | None, float | None]:
        """The frame to send now, else (None, how long to wait; None = until the store has more)."""
        store = self.store
        if self.cursor is None:
            self.cursor = store.first_seq_at_or_after(now + self.start_delay_us)
        # Skip what the store no longer (or never) had and what is due already.
        chunk = store.chunk_at_or_after(self.cursor)
        while chunk is not None and chunk.ts_us < now:
            chunk = store.chunk_at_or_after(chunk.seq + 1)
        if chunk is None:
            return None, None
        if chunk.seq > self.cursor:
            self.skipped += chunk.seq - self.cursor
            self._on_skip(chunk.seq - self.cursor, self.skipped)
            self.cursor = chunk.seq
        self._drain(now)
        frame = self._admit(chunk, fmt, now)
        if frame is None:  # over buffer_capacity: wait until the oldest chunk in flight has played
            return None, max(0.001, (self._inflight[0][0] - now) / 1e6)
        return frame, None

    def take(self, chunks: list[Chunk], fmt: m.PlayerStream, now: int) -> list[bytes]:
        """Frames for the new `chunks` (which continue at the cursor), in order,
        stopping at the first that is due already or does not fit; fewer frames
        than chunks means the rest is left to `next_due`."""
        self._drain(now)
        frames = []
        for chunk in chunks:
            frame = self._admit(chunk, fmt, now)
            if frame is None:
                break
            frames.append(frame)
        return frames

    def _drain(self, now: int) -> None:
        """Forget audio whose play time has passed: the client has played it."""
        inflight = self._inflight
        while inflight and inflight[0][0] <= now:
            self._inflight_bytes -= inflight.popleft()[1]

    def _admit(self, chunk: Chunk, fmt: m.PlayerStream, now: int) -> bytes | None:
        """The frame of `chunk`, counted as sent, if it may go now: not due yet,
        and within buffer_capacity (with nothing in flight, any chunk goes)."""
        prepared = self.store.prepared(chunk, fmt.channels, fmt.bit_depth, self.profile)
        if chunk.ts_us < now or (self._inflight and self._inflight_bytes + len(prepared) > self.capacity):
            return None
        frame = prepared if self.seal is None else self.seal(prepared)
        self.cursor = chunk.seq + 1
        self._inflight.append((chunk.end_us, len(frame)))
        self._inflight_bytes += len(frame)
        self.sent += 1
        return frame
