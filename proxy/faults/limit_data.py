"""limit_data: the connection is closed once a direction has carried `limit_bytes`."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .base import Fault, Param

if TYPE_CHECKING:
    from ..relay.pipe import Pipe


class LimitData(Fault):
    """Forward the first `limit_bytes` wire bytes of a direction (counted per connection
    from when the fault meets it), then end the connection from the proxy: FIN to both
    peers and forwarding stops (Toxiproxy's `limit_data`). The cut is byte-exact, so the
    receiver may see a frame cut short before the EOF, as on a dropped link; it must
    treat it as an abnormal end (no close frame), never as a whole message."""

    kind = "limit_data"
    byte_level = True
    uses_selector = False  # bytes, not messages
    default_direction = "downstream"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "limit_bytes": Param(int, min=0, help="wire bytes forwarded in this direction before the connection ends"),
    }
    limit_bytes: int

    def new_state(self, pipe: Pipe) -> Any:
        return SimpleNamespace(sent=0, done=False)

    def on_bytes(self, pipe: Pipe, data: bytes | memoryview, nxt: Callable[[Any], None]) -> None:
        st = self.state(pipe)
        if st.done:
            return  # past the limit: nothing more goes out
        room = self.limit_bytes - st.sent
        d = data[:room]
        st.sent += len(d)
        if len(d):
            nxt(d)
        if st.sent >= self.limit_bytes:
            st.done = True
            self.record(pipe, limit_bytes=self.limit_bytes, sent=st.sent)
            pipe.relay.shutdown()  # FIN both ways; the FIN follows what we let through
