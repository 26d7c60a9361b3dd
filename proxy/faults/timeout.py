"""timeout: a half-open path; nothing is forwarded, the sockets stay open."""

from __future__ import annotations

import asyncio
from typing import Any

from ..relay.connection import Channel
from .fault import LEGACY, NOISE_OPAQUE, NOISE_TERMINATED, Fault, FaultState
from .params import Param

DRAIN_S = 0.05  # after timeout_s: time to read and discard what the peers sent, before the FIN


class TimeoutState(FaultState["Timeout"]):
    def __init__(self, fault: Timeout, conn: Channel) -> None:
        super().__init__(fault, conn)
        self.applied = False
        self.timer: asyncio.TimerHandle | None = None
        self.expired = False
        # the fault's states on both directions of this connection, and whether one applied
        self.both: Any = conn.shared(fault, lambda: _Both())
        self.both.states.append(self)
        # `count` counts connections: the second direction of a counted one still applies
        sibling = self.both.applied
        if not (fault.active or sibling):
            return
        self.applied = self.both.applied = True
        key = fault.key()
        conn.withhold(key)
        conn.hold(key)
        if fault.timeout_s is not None:
            self.timer = conn.later(fault.timeout_s, self._expire)
        if not sibling:
            self.record(timeout_s=fault.timeout_s, end=fault.end)

    def _expire(self) -> None:
        conn = self.conn
        if conn.finished or not conn.forwarding:
            return  # the other direction's timer ended it already
        for st in self.both.states:
            st.expired = True
        if self.fault.end == "rst":
            conn.abort()
            return
        # A socket closed with unread bytes in its receive buffer sends a RST, not a FIN:
        # read and discard what the peers sent meanwhile, then close.
        conn.stop_forwarding()
        for st in self.both.states:
            st.conn.release(self.fault.key())
        # then close both sockets: FIN once each socket's own buffer is out; the withheld data never is
        conn.later(DRAIN_S, conn.shutdown)

    def detach(self) -> None:
        if not self.applied or self.expired or self.fault.retired == "count":
            return  # a counted timeout keeps its connection silent (and its timer); an expired one is over
        if self.timer is not None:
            self.timer.cancel()
        key = self.fault.key()
        self.conn.release(key)
        self.conn.unwithhold(key)  # everything held back, in order


class _Both:
    """A timeout's view of one connection: its states there, and whether it applied."""

    def __init__(self) -> None:
        self.states: list[TimeoutState] = []
        self.applied = False


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
    modes = {LEGACY: "", NOISE_TERMINATED: "", NOISE_OPAQUE: ""}  # noqa: RUF012 - class-level declaration, never mutated
    uses_selector = False
    default_direction = "both"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "timeout_s": Param(float, None, min=0.0, nullable=True, help="then the connection is ended; null = never"),
        "end": Param(str, "fin", choices=("fin", "rst"), help="how the connection ends after timeout_s"),
    }
    State = TimeoutState
    timeout_s: float | None
    end: str

    def key(self) -> str:
        return f"timeout:{self.name}"
