"""down: the proxy refuses new connections (and, optionally, resets the live ones)."""

from __future__ import annotations

from .fault import LEGACY, NOISE_OPAQUE, NOISE_TERMINATED, ConnectInfo, Fault, ProxyServices
from .params import FaultSpecError, Param


class Down(Fault):
    """While active, every new TCP connection is reset right after accept (a RST; the
    listener stays bound, so the port is kept and comes back with the same address;
    a refused SYN would need the listener closed). `existing: reset` also resets every
    live connection when the fault is added, both peers, as if the proxy went away;
    `keep` leaves them running. `count` counts refused connections ("refuse the next
    3"). Removing the fault (or `POST /reset`) accepts connections again."""

    kind = "down"
    modes = {LEGACY: "", NOISE_TERMINATED: "", NOISE_OPAQUE: ""}  # noqa: RUF012 - class-level declaration, never mutated
    uses_selector = False
    default_direction = "both"
    allowed_directions = ("both",)  # it acts on connections, not on a direction
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "existing": Param(str, "keep", choices=("keep", "reset"), help="what happens to live connections"),
    }
    existing: str

    def validate(self) -> None:
        if self.connections is not None and self.connections.upstream is not None:
            raise FaultSpecError("down: 'connections.upstream' cannot apply: a refused connection has no upstream "
                                 "yet (client_port can)")

    def on_added(self, proxy: ProxyServices) -> None:
        if self.existing != "reset":
            return
        for conn in proxy.connections():
            if conn.finished or not self.affects(conn.seq, conn.client_port):
                continue
            self.record(None, session=conn.session, counted=False, action="reset_live")
            conn.abort()  # both peers

    def on_connect(self, info: ConnectInfo) -> str | None:
        if not self.active or not self.affects(info.seq, info.client[1]):
            return None
        self.record(None, action="refuse", client=f"{info.client[0]}:{info.client[1]}", conn_seq=info.seq)
        return f"down (fault {self.name!r})"
