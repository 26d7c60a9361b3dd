"""bandwidth: a direction is forwarded at no more than `rate_bps` bytes per second."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .base import Fault, Param

if TYPE_CHECKING:
    from ..relay.pipe import Pipe

MIN_QUANTUM = 1
MAX_QUANTUM = 64 * 1024
TICKS_PER_S = 20  # pacing granularity: about 20 writes a second, so small rates stay smooth


class Bandwidth(Fault):
    """Forward a direction at most `rate_bps` bytes/s (a token bucket, Toxiproxy's
    `bandwidth`). The proxy keeps reading the sender until `max_buffer_bytes` are queued
    (default: one second of data, at least 64 KiB), then holds the sender's socket, so
    the sender meets real TCP backpressure and the proxy's memory stays bounded. Order
    is kept and the FIN follows the queued data. `rate_bps` 0 forwards nothing. Removal
    (or `count`/`duration` retirement) sends what is queued at once."""

    kind = "bandwidth"
    byte_level = True
    uses_selector = False  # bytes, not messages
    default_direction = "downstream"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "rate_bps": Param(float, min=0.0, help="bytes per second (0: nothing is forwarded)"),
        "max_buffer_bytes": Param(int, None, min=0, nullable=True,
                                  help="queued bytes above which the sender is held (default: 1 s, >= 64 KiB)"),
    }
    rate_bps: float
    max_buffer_bytes: int | None

    # --- the pacing engine (slow_reader reuses it with a zero buffer) --------------------------
    def buffer_limit(self) -> int:
        if self.max_buffer_bytes is not None:
            return self.max_buffer_bytes
        return max(int(self.rate_bps), MAX_QUANTUM)

    def quantum(self) -> int:
        return max(MIN_QUANTUM, min(MAX_QUANTUM, int(self.rate_bps / TICKS_PER_S)))

    def hold_key(self) -> str:
        return f"{self.kind}:{self.name}"

    def new_state(self, pipe: Pipe) -> Any:
        # q holds (data, nxt) for bytes and (None, eof_nxt) for the FIN, in arrival order
        return SimpleNamespace(q=deque(), buffered=0, timer=None)

    def on_attach(self, pipe: Pipe) -> None:
        self.record(pipe, rate_bps=self.rate_bps)

    def on_bytes(self, pipe: Pipe, data: bytes | memoryview, nxt: Callable[[Any], None]) -> None:
        st = self.state(pipe)
        st.q.append((bytes(data), nxt))  # a copy: a view would pin the transport's whole read chunk
        st.buffered += len(data)
        if st.buffered > self.buffer_limit():
            pipe.hold(self.hold_key())
        if st.timer is None:
            self._pump(pipe, st)

    def on_eof(self, pipe: Pipe, nxt: Callable[[], None]) -> None:
        st = self.state(pipe)
        if not st.q:
            nxt()
            return
        st.q.append((None, nxt))  # the FIN waits for the data before it

    def _pump(self, pipe: Pipe, st: Any) -> None:
        """Send one quantum, then sleep for as long as it takes at `rate_bps`."""
        st.timer = None
        while st.q and st.q[0][0] is None:  # a FIN at the head goes at once
            st.q.popleft()[1]()
        if not st.q or self.rate_bps <= 0:
            self._maybe_release(pipe, st)
            return
        data, nxt = st.q[0]
        n = self.quantum()
        if len(data) > n:
            st.q[0] = (data[n:], nxt)
            data = data[:n]
        else:
            st.q.popleft()
        st.buffered -= len(data)
        self._maybe_release(pipe, st)
        nxt(data)
        st.timer = pipe.later(len(data) / self.rate_bps, self._pump, pipe, st)

    def _maybe_release(self, pipe: Pipe, st: Any) -> None:
        # hysteresis: read again once half the allowance is free (a zero allowance: once
        # empty); at rate 0 nothing drains, so a hold (slow_reader's from on_attach) stays
        if self.rate_bps > 0 and st.buffered <= self.buffer_limit() // 2:
            pipe.release(self.hold_key())

    def on_detach(self, pipe: Pipe) -> None:
        # removed or retired: nothing is lost, what is queued goes out now, in order
        st = self.state(pipe)
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None
        while st.q:
            data, _nxt = st.q.popleft()
            if data is None:
                pipe.emit_eof(after=self)
            else:
                pipe.emit(data, after=self)
        st.buffered = 0
        pipe.release(self.hold_key())
