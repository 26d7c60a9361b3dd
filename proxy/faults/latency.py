"""latency: every byte of a direction arrives `latency_ms` (± `jitter_ms`) late."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from ..relay.connection import Channel
from .fault import LEGACY, NOISE_OPAQUE, NOISE_TERMINATED, Fault, FaultState
from .params import FaultSpecError, Param


class LatencyState(FaultState["Latency"]):
    def __init__(self, fault: Latency, conn: Channel) -> None:
        super().__init__(fault, conn)
        # queue of (due time, data or None for EOF, continuation)
        self.q: deque[tuple[float, bytes | None, Callable[..., None]]] = deque()
        self.buffered = 0
        self.last_due = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.rng = conn.rng(fault.seed)
        self.hold_key = f"latency:{fault.name}"
        self.record(latency_ms=fault.latency_ms, jitter_ms=fault.jitter_ms)

    def _due(self) -> float:
        f = self.fault
        now = self.conn.now()
        j = self.rng.uniform(-f.jitter_ms, f.jitter_ms) if f.jitter_ms else 0.0
        self.last_due = max(now + (f.latency_ms + j) / 1000.0, self.last_due)
        return self.last_due

    def on_bytes(self, data: bytes | memoryview, nxt: Callable[[Any], None]) -> None:
        if self.fault.latency_ms == 0 and not self.q:
            nxt(data)
            return
        self.q.append((self._due(), bytes(data), nxt))
        self.buffered += len(data)
        if self.buffered > self.fault.max_buffer_bytes:
            self.conn.hold(self.hold_key)
        self._arm()

    def on_eof(self, nxt: Callable[[], None]) -> None:
        if not self.q:
            nxt()
            return
        self.q.append((self.last_due, None, nxt))  # the FIN follows the queued data
        self._arm()

    def _arm(self) -> None:
        # one timer per pipe, for the head of the queue (not one per chunk)
        if self.timer is None and self.q:
            self.timer = self.conn.later(max(0.0, self.q[0][0] - self.conn.now()), self._pop)

    def _pop(self) -> None:
        self.timer = None
        now = self.conn.now()
        while self.q and self.q[0][0] <= now + 0.0005:
            _, data, nxt = self.q.popleft()
            if data is None:
                nxt()
                continue
            self.buffered -= len(data)
            nxt(data)
        if self.buffered <= self.fault.max_buffer_bytes // 2:
            self.conn.release(self.hold_key)
        self._arm()

    def detach(self) -> None:
        # removed: what is queued goes out now, in order (nothing is lost)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while self.q:
            _, data, _nxt = self.q.popleft()
            if data is None:
                self.conn.emit_eof(after=self)
            else:
                self.conn.emit(data, after=self)
        self.buffered = 0
        self.conn.release(self.hold_key)


class Latency(Fault):
    """Delay every chunk of a direction by latency ± jitter, keeping the order (a chunk
    never overtakes an earlier one, so jitter only stretches gaps). The queue is bounded:
    above `max_buffer_bytes` the source socket is held (real TCP backpressure)."""

    kind = "latency"
    modes = {LEGACY: "", NOISE_TERMINATED: "", NOISE_OPAQUE: ""}  # noqa: RUF012 - class-level declaration, never mutated
    byte_level = True
    uses_selector = False  # bytes, not messages: a selector would mean nothing
    default_direction = "both"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "latency_ms": Param(float, 100.0, min=0.0, help="added one-way delay"),
        "jitter_ms": Param(float, 0.0, min=0.0, help="uniform ± around latency_ms (order kept)"),
        "max_buffer_bytes": Param(int, 4 << 20, min=1, help="queued bytes above which the source is held"),
        "seed": Param(int, 0, help="random stream for the jitter (per connection and direction)"),
    }
    State = LatencyState
    latency_ms: float
    jitter_ms: float
    max_buffer_bytes: int
    seed: int

    def validate(self) -> None:
        if self.jitter_ms > self.latency_ms:
            raise FaultSpecError(f"latency: jitter_ms ({self.jitter_ms}) must not exceed latency_ms "
                                 f"({self.latency_ms})")
