"""latency: every byte of a direction arrives `latency_ms` (± `jitter_ms`) late."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .base import Fault, FaultSpecError, Param

if TYPE_CHECKING:
    from ..relay.pipe import Pipe


class Latency(Fault):
    """Delay every chunk of a direction by latency ± jitter, keeping the order (a chunk
    never overtakes an earlier one, so jitter only stretches gaps). The queue is bounded:
    above `max_buffer_bytes` the source socket is held (real TCP backpressure)."""

    kind = "latency"
    byte_level = True
    uses_selector = False  # bytes, not messages: a selector would mean nothing
    default_direction = "both"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "latency_ms": Param(float, 100.0, min=0.0, help="added one-way delay"),
        "jitter_ms": Param(float, 0.0, min=0.0, help="uniform ± around latency_ms (order kept)"),
        "max_buffer_bytes": Param(int, 4 << 20, min=1, help="queued bytes above which the source is held"),
        "seed": Param(int, 0, help="random stream for the jitter (per connection and direction)"),
    }
    latency_ms: float
    jitter_ms: float
    max_buffer_bytes: int
    seed: int

    def validate(self) -> None:
        if self.jitter_ms > self.latency_ms:
            raise FaultSpecError(f"latency: jitter_ms ({self.jitter_ms}) must not exceed latency_ms "
                                 f"({self.latency_ms})")

    def new_state(self, pipe: Pipe) -> Any:
        # queue of (due time, data or None for EOF, continuation)
        return SimpleNamespace(q=deque(), buffered=0, last_due=0.0, timer=None,
                               rng=random.Random(f"{self.seed}/{pipe.relay.seq}/{pipe.direction}"))

    def on_attach(self, pipe: Pipe) -> None:
        self.record(pipe, latency_ms=self.latency_ms, jitter_ms=self.jitter_ms)

    def _due(self, pipe: Pipe, st: Any) -> float:
        now = pipe.loop.time()
        j = st.rng.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0
        st.last_due = max(now + (self.latency_ms + j) / 1000.0, st.last_due)
        return st.last_due

    def on_bytes(self, pipe: Pipe, data: bytes | memoryview, nxt: Callable[[Any], None]) -> None:
        st = self.state(pipe)
        if self.latency_ms == 0 and not st.q:
            nxt(data)
            return
        st.q.append((self._due(pipe, st), bytes(data), nxt))
        st.buffered += len(data)
        if st.buffered > self.max_buffer_bytes:
            pipe.hold(f"latency:{self.name}")
        self._arm(pipe, st)

    def on_eof(self, pipe: Pipe, nxt: Callable[[], None]) -> None:
        st = self.state(pipe)
        if not st.q:
            nxt()
            return
        st.q.append((st.last_due, None, nxt))  # the FIN follows the queued data
        self._arm(pipe, st)

    def _arm(self, pipe: Pipe, st: Any) -> None:
        # one timer per pipe, for the head of the queue (not one per chunk)
        if st.timer is None and st.q:
            st.timer = pipe.later(max(0.0, st.q[0][0] - pipe.loop.time()), self._pop, pipe, st)

    def _pop(self, pipe: Pipe, st: Any) -> None:
        st.timer = None
        now = pipe.loop.time()
        while st.q and st.q[0][0] <= now + 0.0005:
            _, data, nxt = st.q.popleft()
            if data is None:
                nxt()
                continue
            st.buffered -= len(data)
            nxt(data)
        if st.buffered <= self.max_buffer_bytes // 2:
            pipe.release(f"latency:{self.name}")
        self._arm(pipe, st)

    def on_detach(self, pipe: Pipe) -> None:
        # removed: what is queued goes out now, in order (nothing is lost)
        st = self.state(pipe)
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None
        while st.q:
            _, data, _nxt = st.q.popleft()
            if data is None:
                pipe.emit_eof(after=self)
            else:
                pipe.emit(data, after=self)
        st.buffered = 0
        pipe.release(f"latency:{self.name}")
