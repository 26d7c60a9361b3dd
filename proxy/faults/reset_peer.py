"""reset_peer: the connection ends with a TCP RST."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Fault, Param

if TYPE_CHECKING:
    from ..relay.pipe import Pipe


class ResetPeer(Fault):
    """Reset the connection with a TCP RST (SO_LINGER 0 + abort) `after_s` seconds after
    the fault meets it (the WebSocket upgrade for new connections, the fault's addition for
    existing ones). The direction picks who gets the RST first: downstream = the client,
    upstream = the server, both = both at once; the proxy then mirrors the loss to the
    other side as a RST too, as a dying network path would."""

    kind = "reset_peer"
    uses_selector = False
    default_direction = "both"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "after_s": Param(float, 0.0, min=0.0, help="delay before the RST"),
    }
    after_s: float

    def on_attach(self, pipe: Pipe) -> None:
        if self.after_s > 0:
            pipe.later(self.after_s, self._fire, pipe)
        else:
            # not synchronously: on_attach may run inside the relay's start-up
            pipe.loop.call_soon(self._fire, pipe)

    def _fire(self, pipe: Pipe) -> None:
        relay = pipe.relay
        if not self.active or relay.finished or relay.tr[pipe.dst].is_closing():
            return
        self.record(pipe, side=pipe.dst, after_s=self.after_s)
        relay.reset(pipe.dst)
