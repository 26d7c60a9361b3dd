"""Send stalls of our own sockets while we hold their reads (Linux 6.17 and later).

A socket whose reader stopped fills its receive queue up to the window it advertised.
Linux sizes that window from the bytes-per-buffer ratio of the segments seen so far;
smaller segments later cost more memory than promised, and with a fixed SO_RCVBUF the
kernel drops them (`TcpExtTCPRcvQDrop`, drop reason PROTO_MEM). The peer has then sent
past our receive point, so each later segment from it, its ACKs included, lies beyond
our full window and is discarded unread (`TcpExtBeyondWindow`, TCP_INVALID_SEQUENCE).
What we send meanwhile is never acknowledged: retransmission backoff until we read
again. Traced with tracefs on the proxy in front of a worker (NOTES.md §6): the client's
`client/time` reached the worker 0.3-1.2 s late while the worker read all it was given.

So a process that holds a socket's reads (the proxy's `slow_reader`, a probe that reads
slowly) watches that socket's sending and logs such a stall as `tcp_stall`, like a loop
stall: our instrument, not the peer, delayed what it carried. It counts only while the
peer's last advertised window was open: a peer that stops reading closes its window, and
that stall is the peer's own finding.

`SendStallMeter` is the sans-I/O part (fed `TcpInfo` samples); `SendStallWatch` polls a
socket on a running event loop while started. Like looplag.py it is handed the loop and the
socket, so this module imports neither asyncio nor socket.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Protocol

from .clock import now_us
from .looplag import Emitter

POLL_INTERVAL_US = 20_000
# No ACK accepted for this long with data in flight: loopback's RTT is tens of µs and the
# minimum retransmission timeout 200 ms, so this is a lost ACK, not a slow one.
STALL_THRESHOLD_US = 100_000

IPPROTO_TCP, TCP_INFO = 6, 11  # getsockopt level and option (Linux)
# byte offsets in struct tcp_info (linux/tcp.h)
_UNACKED, _LAST_ACK_RECV, _SND_WND = 24, 56, 228  # tcpi_snd_wnd: Linux 5.4 and later


@dataclass(frozen=True)
class TcpInfo:
    unacked: int  # segments sent and not yet acknowledged
    last_ack_recv_us: int  # since the peer's last ACK was accepted
    snd_wnd: int  # the peer's last accepted receive window (bytes)


class _Socket(Protocol):
    def getsockopt(self, level: int, option: int, buflen: int) -> bytes: ...
    def getsockname(self) -> Any: ...
    def fileno(self) -> int: ...


def tcp_info(sock: _Socket) -> TcpInfo | None:
    """The fields of TCP_INFO this module needs; None where the kernel does not give them."""
    try:
        raw = sock.getsockopt(IPPROTO_TCP, TCP_INFO, 256)
    except OSError:
        return None
    if len(raw) < _SND_WND + 4:
        return None
    def u32(at: int) -> int:
        return int(struct.unpack_from("=I", raw, at)[0])

    return TcpInfo(unacked=u32(_UNACKED), last_ack_recv_us=u32(_LAST_ACK_RECV) * 1000, snd_wnd=u32(_SND_WND))


@dataclass(frozen=True)
class SendStall:
    t_us: int  # when it was seen to end
    lag_us: int  # how long nothing we sent was acknowledged
    interval_us: int


class SendStallMeter:
    """Fed a socket's `TcpInfo` at times; says when a send stall ended (or the watch did)."""

    def __init__(self, threshold_us: int = STALL_THRESHOLD_US, interval_us: int = POLL_INTERVAL_US) -> None:
        self.threshold_us = threshold_us
        self.interval_us = interval_us
        self.since_us: int | None = None  # the last accepted ACK before a stall in progress

    def sample(self, t_us: int, info: TcpInfo) -> SendStall | None:
        stalled = info.unacked > 0 and info.snd_wnd > 0 and info.last_ack_recv_us >= self.threshold_us
        if stalled:
            if self.since_us is None:
                self.since_us = t_us - info.last_ack_recv_us
            return None
        return self.end(t_us)

    def end(self, t_us: int) -> SendStall | None:
        """The stall in progress, if any, ends here (an ACK came, or the watch stops)."""
        if self.since_us is None:
            return None
        stall = SendStall(t_us, t_us - self.since_us, self.interval_us)
        self.since_us = None
        return stall


class _Loop(Protocol):
    def call_later(self, delay: float, callback: Any, *args: Any) -> Any: ...


class SendStallWatch:
    """Polls `sock` every `POLL_INTERVAL_US` from `start()` until `stop()`, and past it while a
    stall goes on (it outlasts the hold until the peer's next ACK lands in the reopened window),
    until `close()` at the latest. A send stall is a `tcp_stall_begin` record in `log` once it is
    seen, and a `tcp_stall` once it ends (`t_us` = when it ended, `lag_us` = its length)."""

    def __init__(self, loop: _Loop, sock: _Socket, log: Emitter, session: str | None, peer: str) -> None:
        self.loop, self.sock, self.log, self.session, self.peer = loop, sock, log, session, peer
        self.port: int = sock.getsockname()[1]  # the peer saw our connection come from this port
        self.meter = SendStallMeter()
        self._timer: Any = None
        self._stopping = False

    def start(self) -> None:
        self._stopping = False
        if self._timer is None:
            self._arm()

    def stop(self) -> None:
        self._stopping = True
        if self.meter.since_us is None:
            self.close()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._record(self.meter.end(now_us()))

    def _arm(self) -> None:
        self._timer = self.loop.call_later(self.meter.interval_us / 1e6, self._tick)

    def _tick(self) -> None:
        self._timer = None
        info = tcp_info(self.sock) if self.sock.fileno() >= 0 else None
        if info is None:
            self.close()
            return
        t_us, before = now_us(), self.meter.since_us
        self._record(self.meter.sample(t_us, info))
        if before is None and self.meter.since_us is not None:
            # a hold never released (a slow reader at 0 B/s) keeps the stall going past
            # every check of the run: say at once that it began, so a check sees it
            self.log.emit("tcp_stall_begin", session=self.session, t_us=t_us, peer=self.peer, port=self.port,
                          since_us=self.meter.since_us)
        if self._stopping and self.meter.since_us is None:
            return
        self._arm()

    def _record(self, stall: SendStall | None) -> None:
        if stall is not None:
            self.log.emit("tcp_stall", session=self.session, t_us=stall.t_us, peer=self.peer, port=self.port,
                          lag_us=stall.lag_us, interval_us=stall.interval_us)
