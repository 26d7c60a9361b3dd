"""slow_close: a peer's FIN reaches the other peer `delay_ms` late."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..relay.connection import Channel
from .fault import LEGACY, NOISE_OPAQUE, NOISE_TERMINATED, Fault, FaultState
from .params import Param


class SlowCloseState(FaultState["SlowClose"]):
    def __init__(self, fault: SlowClose, conn: Channel) -> None:
        super().__init__(fault, conn)
        self.nxt: Callable[[], None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def on_eof(self, nxt: Callable[[], None]) -> None:
        delay_ms = self.fault.delay_ms
        self.record(delay_ms=delay_ms)
        self.nxt = nxt
        self.timer = self.conn.later(delay_ms / 1000.0, self._fire)

    def _fire(self) -> None:
        self.timer = None
        nxt, self.nxt = self.nxt, None
        if nxt is not None:
            nxt()

    def detach(self) -> None:
        if self.fault.retired == "count":
            return  # a counted delay runs its course
        if self.timer is not None:
            self.timer.cancel()
            self._fire()


class SlowClose(Fault):
    """Delay the TCP FIN of a direction by `delay_ms` (Toxiproxy's `slow_close`): the
    data before it, close frames included, goes through at once; the end of the stream
    arrives late. A correct peer that finished the close handshake does not hang on it
    (it closes the socket after its own close timeout). A RST is never delayed.
    Removal sends a delayed FIN at once."""

    kind = "slow_close"
    modes = {LEGACY: "", NOISE_TERMINATED: "", NOISE_OPAQUE: ""}  # noqa: RUF012 - class-level declaration, never mutated
    byte_level = True
    uses_selector = False
    default_direction = "both"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "delay_ms": Param(float, 1000.0, min=0.0, help="how late the FIN is passed on"),
    }
    State = SlowCloseState
    delay_ms: float
