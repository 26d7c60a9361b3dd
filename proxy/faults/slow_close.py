"""slow_close: a peer's FIN reaches the other peer `delay_ms` late."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .base import Fault, Param

if TYPE_CHECKING:
    from ..relay.pipe import Pipe


class SlowClose(Fault):
    """Delay the TCP FIN of a direction by `delay_ms` (Toxiproxy's `slow_close`): the
    data before it, close frames included, goes through at once; the end of the stream
    arrives late. A correct peer that finished the close handshake does not hang on it
    (it closes the socket after its own close timeout). A RST is never delayed.
    Removal sends a delayed FIN at once."""

    kind = "slow_close"
    byte_level = True
    uses_selector = False
    default_direction = "both"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "delay_ms": Param(float, 1000.0, min=0.0, help="how late the FIN is passed on"),
    }
    delay_ms: float

    def new_state(self, pipe: Pipe) -> Any:
        return SimpleNamespace(nxt=None, timer=None)

    def on_eof(self, pipe: Pipe, nxt: Callable[[], None]) -> None:
        st = self.state(pipe)
        self.record(pipe, delay_ms=self.delay_ms)
        st.nxt = nxt
        st.timer = pipe.later(self.delay_ms / 1000.0, self._fire, st)

    @staticmethod
    def _fire(st: Any) -> None:
        st.timer = None
        nxt, st.nxt = st.nxt, None
        if nxt is not None:
            nxt()

    def on_detach(self, pipe: Pipe) -> None:
        if self.retired == "count":
            return  # a counted delay runs its course
        st = self.state(pipe)
        if st.timer is not None:
            st.timer.cancel()
            self._fire(st)
