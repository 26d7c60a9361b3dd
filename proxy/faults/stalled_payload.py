"""stalled_payload: a message starts and stops partway, for `stall_s` or forever."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from harness.protocol import wsframes as fr

from ..relay.connection import Channel
from ..relay.message import Msg
from .fault import LEGACY, NOISE_OPAQUE, NOISE_TERMINATED, Fault, FaultState
from .params import Param

WATCH_S = 0.25  # while stalled, how often the receiver's end is looked for


class StalledPayloadState(FaultState["StalledPayload"]):
    def __init__(self, fault: StalledPayload, conn: Channel) -> None:
        super().__init__(fault, conn)
        self.cuts: deque[bytes] = deque()  # first parts sent, not yet through on_bytes
        self.stalled = False
        self.q: deque[tuple[bytes | None, Callable[..., None]]] = deque()  # output held while stalled
        self.timer: asyncio.TimerHandle | None = None
        self.handed_over = False

    def might_act(self, opcode: int, prefix: bytes | memoryview, header: fr.Header) -> bool:
        return not (self.stalled or self.cuts) and super().might_act(opcode, prefix, header)

    def on_message(self, msg: Msg) -> list[Msg | bytes] | None:
        if self.stalled or self.cuts or not self.selects(msg):
            return None  # one stall at a time per direction; what follows waits behind it
        f, conn = self.fault, self.conn
        p = msg.payload
        if f.mode == "frame":
            n = min(f.head_bytes, len(p))
            first = conn.encode(msg.opcode, p[:n], False, msg.rsv)
            rest = conn.encode(fr.CONT, p[n:], True)
        else:
            wire = conn.encode(msg.opcode, p, True, msg.rsv)
            n = min(f.head_bytes, len(wire) - 1)  # at least one byte withheld
            first, rest = wire[:n], wire[n:]
        self.record(msg, mode=f.mode, sent_bytes=n, stall_s=f.stall_s)
        if not first:  # nothing goes before the stall
            self._begin()
            return [rest]
        self.cuts.append(first)
        return [first, rest]

    def on_bytes(self, data: bytes | memoryview, nxt: Callable[[Any], None]) -> None:
        if self.stalled:
            self.q.append((bytes(data), nxt))  # bounded: the sender is held
            return
        if self.cuts:
            cut = self.cuts[0]
            # found by identity, or by its bytes when a byte fault before us copied it
            if data is cut or (len(data) == len(cut) and data == cut):
                self.cuts.popleft()
                nxt(data)
                self._begin()
                return
        nxt(data)

    def on_eof(self, nxt: Callable[[], None]) -> None:
        if self.stalled:
            self.q.append((None, nxt))
        else:
            nxt()

    def _begin(self) -> None:
        stall_s = self.fault.stall_s
        self.stalled = True
        self.conn.hold(self.fault.hold_key())
        if stall_s is not None:
            self.timer = self.conn.later(stall_s, self._resume)
        if stall_s is None or stall_s > WATCH_S:
            self.conn.later(WATCH_S, self._watch)

    def _watch(self) -> None:
        """The sender is held, so the proxy cannot see it leave. Once the receiver has ended
        its side (it timed the message out and closed, as it should), nothing can use the
        rest any more: end the connection, rather than keep a dead relay for ever."""
        if not self.stalled:
            return
        if self.conn.peer_ended(self.conn.dst):
            self.conn.shutdown()
            return
        self.conn.later(WATCH_S, self._watch)

    def _resume(self) -> None:
        self.timer = None
        self.stalled = False
        key = self.fault.hold_key()
        if self.handed_over:  # we left the chain: the rest waits in the pipe's withheld output
            self.conn.release(key)
            self.conn.unwithhold(key)
            return
        q, self.q = self.q, deque()
        for data, nxt in q:  # in order; the continuation first
            if data is None:
                nxt()
            else:
                nxt(data)
        self.conn.release(key)

    def detach(self) -> None:
        if not self.stalled:
            return
        if self.fault.retired != "count":
            if self.timer is not None:
                self.timer.cancel()
            self._resume()
            return
        # A counted stall outlives the fault, but data arriving after we leave the chain
        # would bypass our queue: move the queue into the pipe's withheld output (after
        # the faults behind us, in order) and keep the output withheld until the timer.
        self.conn.withhold(self.fault.hold_key())
        while self.q:
            data, _nxt = self.q.popleft()
            if data is None:
                self.conn.emit_eof(after=self)
            else:
                self.conn.emit(data, after=self)
        self.handed_over = True


class StalledPayload(Fault):
    """A selected data message starts and then stops partway; after `stall_s` the rest
    follows intact (null: never).

    `mode: frame` (WebSocket level): the first `head_bytes` payload bytes go out as a
    FIN=0 frame, the continuation (FIN=1) is withheld. `mode: bytes` (TCP level): the
    message goes out as one frame of which only the first `head_bytes` wire bytes
    (header included) are sent. While stalled nothing else of this direction is sent
    either (RFC 6455 allows only control frames between fragments, and a stalled TCP
    stream carries nothing) and the sender's socket is held, so the sender sees a
    stalled path. The other direction is untouched: a correct receiver keeps sending,
    pinging and timing out (the reference server closes with 4002).

    The cut is made in the byte chain at this fault's place, so byte faults added
    before it delay the first part as usual. Removal, reset or `duration` expiry resumes
    a stall at once (transparent again); a stall counted by `count` runs its course
    (forever means the rest of that connection). Once the receiver has closed its side
    during a stall (it gave up on the message, as it should), the proxy ends the
    connection: the held sender's end cannot be seen, and the rest can no longer matter."""

    kind = "stalled_payload"
    modes = {LEGACY: "", NOISE_TERMINATED: (  # noqa: RUF012 - class-level declaration, never mutated
        "on the plaintext: mode frame opens a Noise fragment sequence and withholds the rest; in "
        "mode bytes the whole message waits, as half a message cannot be sealed"
    ), NOISE_OPAQUE: (
        "a stall of the raw bytes: the rest follows intact, so the session survives a timed "
        "stall; select by size, nth or a cleartext handshake type (a handshake that stalls)"
    )}
    needs_messages = True
    byte_level = True
    default_direction = "downstream"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "mode": Param(str, "frame", choices=("frame", "bytes"),
                      help="frame: FIN=0 fragment then the continuation withheld; bytes: part of a frame's bytes"),
        "head_bytes": Param(int, 100, min=0,
                            help="frame: payload bytes in the FIN=0 fragment; bytes: wire bytes sent before the stall"),
        "stall_s": Param(float, None, min=0.0, nullable=True, help="stall length; null = forever"),
    }
    State = StalledPayloadState
    mode: str
    head_bytes: int
    stall_s: float | None

    def hold_key(self) -> str:
        return f"stall:{self.name}"
