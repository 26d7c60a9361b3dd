"""reset_peer: the connection ends with a TCP RST."""

from __future__ import annotations

from ..relay.connection import Channel
from .fault import LEGACY, NOISE_OPAQUE, NOISE_TERMINATED, Fault, FaultState
from .params import Param


class ResetPeerState(FaultState["ResetPeer"]):
    def __init__(self, fault: ResetPeer, conn: Channel) -> None:
        super().__init__(fault, conn)
        if fault.after_s > 0:
            conn.later(fault.after_s, self._fire)
        else:
            conn.soon(self._fire)  # not synchronously: attaching may run inside the relay's start-up

    def _fire(self) -> None:
        conn = self.conn
        if not self.fault.active or conn.finished or conn.closing(conn.dst):
            return
        self.record(side=conn.dst, after_s=self.fault.after_s)
        conn.abort(conn.dst)


class ResetPeer(Fault):
    """Reset the connection with a TCP RST (SO_LINGER 0 + abort) `after_s` seconds after
    the fault meets it (the WebSocket upgrade for new connections, the fault's addition for
    existing ones). The direction picks who gets the RST first: downstream = the client,
    upstream = the server, both = both at once; the proxy then mirrors the loss to the
    other side as a RST too, as a dying network path would."""

    kind = "reset_peer"
    modes = {LEGACY: "", NOISE_TERMINATED: "", NOISE_OPAQUE: ""}  # noqa: RUF012 - class-level declaration, never mutated
    uses_selector = False
    default_direction = "both"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "after_s": Param(float, 0.0, min=0.0, help="delay before the RST"),
    }
    State = ResetPeerState
    after_s: float
