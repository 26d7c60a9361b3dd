"""bandwidth: a direction is forwarded at no more than `rate_bps` bytes per second."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from ..relay.connection import Channel
from .fault import LEGACY, NOISE_OPAQUE, NOISE_TERMINATED, Fault, FaultState
from .params import Param

MIN_QUANTUM = 1
MAX_QUANTUM = 64 * 1024
TICKS_PER_S = 20  # pacing granularity: about 20 writes a second, so small rates stay smooth


class BandwidthState(FaultState["Bandwidth"]):
    """The pacing engine on one pipe (slow_reader reuses it with a zero buffer)."""

    def __init__(self, fault: Bandwidth, conn: Channel) -> None:
        super().__init__(fault, conn)
        # q holds (data, nxt) for bytes and (None, eof_nxt) for the FIN, in arrival order
        self.q: deque[tuple[bytes | None, Callable[..., None]]] = deque()
        self.buffered = 0
        self.timer: asyncio.TimerHandle | None = None

    def on_bytes(self, data: bytes | memoryview, nxt: Callable[[Any], None]) -> None:
        self.q.append((bytes(data), nxt))  # a copy: a view would pin the transport's whole read chunk
        self.buffered += len(data)
        if self.buffered > self.fault.buffer_limit():
            self.conn.hold(self.fault.hold_key())
        if self.timer is None:
            self._pump()

    def on_eof(self, nxt: Callable[[], None]) -> None:
        if not self.q:
            nxt()
            return
        self.q.append((None, nxt))  # the FIN waits for the data before it

    def _pump(self) -> None:
        """Send one quantum, then sleep for as long as it takes at `rate_bps`."""
        self.timer = None
        q = self.q
        while q and q[0][0] is None:  # a FIN at the head goes at once
            q.popleft()[1]()
        rate = self.fault.rate_bps
        if not q or rate <= 0:
            self._maybe_release()
            return
        data, nxt = q[0]
        assert data is not None
        n = self.fault.quantum()
        if len(data) > n:
            q[0] = (data[n:], nxt)
            data = data[:n]
        else:
            q.popleft()
        self.buffered -= len(data)
        self._maybe_release()
        nxt(data)
        self.timer = self.conn.later(len(data) / rate, self._pump)

    def _maybe_release(self) -> None:
        # hysteresis: read again once half the allowance is free (a zero allowance: once
        # empty); at rate 0 nothing drains, so a hold (slow_reader's from attach) stays
        if self.fault.rate_bps > 0 and self.buffered <= self.fault.buffer_limit() // 2:
            self.conn.release(self.fault.hold_key())

    def detach(self) -> None:
        # removed or retired: nothing is lost, what is queued goes out now, in order
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while self.q:
            data, _nxt = self.q.popleft()
            if data is None:
                self.conn.emit_eof(after=self)
            else:
                self.conn.emit(data, after=self)
        self.buffered = 0
        self.conn.release(self.fault.hold_key())


class Bandwidth(Fault):
    """Forward a direction at most `rate_bps` bytes/s (a token bucket, Toxiproxy's
    `bandwidth`). The proxy keeps reading the sender until `max_buffer_bytes` are queued
    (default: one second of data, at least 64 KiB), then holds the sender's socket, so
    the sender meets real TCP backpressure and the proxy's memory stays bounded. Order
    is kept and the FIN follows the queued data. `rate_bps` 0 forwards nothing. Removal
    (or `count`/`duration` retirement) sends what is queued at once."""

    kind = "bandwidth"
    modes = {LEGACY: "", NOISE_TERMINATED: "", NOISE_OPAQUE: ""}  # noqa: RUF012 - class-level declaration, never mutated
    byte_level = True
    uses_selector = False  # bytes, not messages
    default_direction = "downstream"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "rate_bps": Param(float, min=0.0, help="bytes per second (0: nothing is forwarded)"),
        "max_buffer_bytes": Param(int, None, min=0, nullable=True,
                                  help="queued bytes above which the sender is held (default: 1 s, >= 64 KiB)"),
    }
    State = BandwidthState
    rate_bps: float
    max_buffer_bytes: int | None

    def buffer_limit(self) -> int:
        if self.max_buffer_bytes is not None:
            return self.max_buffer_bytes
        return max(int(self.rate_bps), MAX_QUANTUM)

    def quantum(self) -> int:
        return max(MIN_QUANTUM, min(MAX_QUANTUM, int(self.rate_bps / TICKS_PER_S)))

    def hold_key(self) -> str:
        return f"{self.kind}:{self.name}"

    def attach(self, conn: Channel) -> BandwidthState:
        st = BandwidthState(self, conn)
        st.record(rate_bps=self.rate_bps)
        return st
