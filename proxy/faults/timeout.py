"""timeout: a half-open path; nothing is forwarded, the sockets stay open."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .base import Fault, Param

if TYPE_CHECKING:
    from ..relay.pipe import Pipe

DRAIN_S = 0.05  # after timeout_s: time to read and discard what the peers sent, before the FIN


class Timeout(Fault):
    """Stop forwarding (Toxiproxy's `timeout`): both sockets stay open, nothing of the
    direction reaches the other peer, and the sender's socket is held so it meets
    backpressure, as on a path that went silent. The data is kept, not dropped (TCP
    would retransmit it): removing the fault (or `POST /reset`, or `duration` expiry)
    delivers it intact and in order. After `timeout_s` (null: never) the proxy ends the
    connection instead: `end: fin` closes both sockets (EOF, no close frame; what the
    peers sent is read and discarded first, else the kernel would send a RST), `end: rst`
    resets them; what was held back is discarded. A correct peer notices the silence by
    its own timers (ping/pong, `client/time`, payload timeouts)."""

    kind = "timeout"
    uses_selector = False
    default_direction = "both"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "timeout_s": Param(float, None, min=0.0, nullable=True, help="then the connection is ended; null = never"),
        "end": Param(str, "fin", choices=("fin", "rst"), help="how the connection ends after timeout_s"),
    }
    timeout_s: float | None
    end: str

    def new_state(self, pipe: Pipe) -> Any:
        return SimpleNamespace(applied=False, timer=None, expired=False)

    def key(self) -> str:
        return f"timeout:{self.name}"

    def on_attach(self, pipe: Pipe) -> None:
        # `count` counts connections: the second direction of a counted one still applies
        other = pipe.relay.pipes["downstream" if pipe.direction == "upstream" else "upstream"]
        sibling = self in other.faults and self.state(other).applied
        if not (self.active or sibling):
            return
        st = self.state(pipe)
        st.applied = True
        pipe.withhold(self.key())
        pipe.hold(self.key())
        if self.timeout_s is not None:
            st.timer = pipe.later(self.timeout_s, self._expire, pipe)
        if not sibling:
            self.record(pipe, timeout_s=self.timeout_s, end=self.end)

    def _expire(self, pipe: Pipe) -> None:
        relay = pipe.relay
        if relay.finished or all(p.closed_input for p in relay.pipes.values()):
            return  # the other direction's timer ended it already
        for p in relay.pipes.values():
            if self in p.faults:
                self.state(p).expired = True
        if self.end == "rst":
            for side in ("client", "server"):
                relay.reset(side)
            return
        # A socket closed with unread bytes in its receive buffer sends a RST, not a FIN:
        # read and discard what the peers sent meanwhile, then close.
        for p in relay.pipes.values():
            p.close_input()
            p.release(self.key())
        relay.later(DRAIN_S, self._close, relay)

    @staticmethod
    def _close(relay: Any) -> None:
        for side in ("client", "server"):
            tr = relay.tr[side]
            if not tr.is_closing():
                tr.close()  # FIN once the socket's own buffer is out; the withheld data never is

    def on_detach(self, pipe: Pipe) -> None:
        st = self.state(pipe)
        if not st.applied or st.expired or self.retired == "count":
            return  # a counted timeout keeps its connection silent (and its timer); an expired one is over
        if st.timer is not None:
            st.timer.cancel()
        pipe.release(self.key())
        pipe.unwithhold(self.key())  # everything held back, in order
