"""limit_data: the connection is closed once a direction has carried `limit_bytes`."""

from __future__ import annotations

from collections.abc import Callable

from ..relay.connection import Channel
from .fault import LEGACY, NOISE_OPAQUE, NOISE_TERMINATED, Fault, FaultState
from .params import Param


class LimitDataState(FaultState["LimitData"]):
    def __init__(self, fault: LimitData, conn: Channel) -> None:
        super().__init__(fault, conn)
        self.sent = 0
        self.done = False

    def on_bytes(self, data: bytes | memoryview, nxt: Callable[[bytes | memoryview], None]) -> None:
        if self.done:
            return  # past the limit: nothing more goes out
        limit = self.fault.limit_bytes
        d = data[:limit - self.sent]
        self.sent += len(d)
        if len(d):
            nxt(d)
        if self.sent >= limit:
            self.done = True
            self.record(limit_bytes=limit, sent=self.sent)
            self.conn.shutdown()  # FIN both ways; the FIN follows what we let through


class LimitData(Fault):
    """Forward the first `limit_bytes` wire bytes of a direction (counted per connection
    from when the fault meets it), then end the connection from the proxy: FIN to both
    peers and forwarding stops (Toxiproxy's `limit_data`). The cut is byte-exact, so the
    receiver may see a frame cut short before the EOF, as on a dropped link; it must
    treat it as an abnormal end (no close frame), never as a whole message."""

    kind = "limit_data"
    modes = {LEGACY: "", NOISE_TERMINATED: "", NOISE_OPAQUE: ""}  # noqa: RUF012 - class-level declaration, never mutated
    byte_level = True
    uses_selector = False  # bytes, not messages
    default_direction = "downstream"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "limit_bytes": Param(int, min=0, help="wire bytes forwarded in this direction before the connection ends"),
    }
    State = LimitDataState
    limit_bytes: int
