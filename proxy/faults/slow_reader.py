"""slow_reader: the proxy reads a direction's sender at `rate_bps` bytes/s, or not at all."""

from __future__ import annotations

from ..relay.connection import Channel
from .bandwidth import Bandwidth, BandwidthState
from .fault import LEGACY, NOISE_OPAQUE, NOISE_TERMINATED
from .params import Param


class SlowReader(Bandwidth):
    """Make the receiving peer of a direction look like a slow reader: the proxy reads
    that direction's sender at `rate_bps` bytes/s (0: never reads again), forwarding what
    it read at the same pace. Unlike `bandwidth` it reads nothing ahead: once a chunk is
    read the sender's socket is held until the chunk went out, so TCP backpressure
    reaches the sender at once (after the kernel buffers) and the proxy holds at most one
    read (<= 256 KiB) per direction. `direction: downstream` = the client looks slow to
    the server. `rcvbuf_bytes` shrinks the proxy's receive buffer on the sender's socket
    so the kernel buffers little too (irreversible for that connection; Linux doubles
    the value). Removal flushes what was read and lets the sender go at full speed.

    Shrinking SO_RCVBUF below the window already advertised makes Linux drop in-window
    segments; both directions then sit in retransmission backoff (measured: the sender's
    reads of the other direction delayed 1.4-2.8 s). That is packet loss, not a slow
    reader: leave `rcvbuf_bytes` unset unless that is what you want to study."""

    kind = "slow_reader"
    modes = {LEGACY: "", NOISE_TERMINATED: "", NOISE_OPAQUE: ""}  # noqa: RUF012 - class-level declaration, never mutated
    default_direction = "downstream"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "rate_bps": Param(float, min=0.0, help="bytes per second read from the sender (0: stop reading)"),
        "rcvbuf_bytes": Param(int, None, min=1024, nullable=True,
                              help="SO_RCVBUF of the proxy's socket towards the sender (default: unchanged)"),
    }
    rate_bps: float
    rcvbuf_bytes: int | None
    max_buffer_bytes = 0  # read nothing ahead: the sender is held while anything is queued

    def buffer_limit(self) -> int:
        return 0

    def attach(self, conn: Channel) -> BandwidthState:
        if self.rcvbuf_bytes is not None:
            conn.set_receive_buffer(self.rcvbuf_bytes)
        st = BandwidthState(self, conn)
        if self.rate_bps <= 0:
            conn.hold(self.hold_key())  # reads nothing from now on
        st.record(rate_bps=self.rate_bps, rcvbuf_bytes=self.rcvbuf_bytes)
        return st
