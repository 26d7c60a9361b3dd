"""stalled_payload: a message starts and stops partway, for `stall_s` or forever."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from harness.protocol import wsframes as fr

from .base import Fault, Msg, Param

if TYPE_CHECKING:
    from ..relay.pipe import Pipe

WATCH_S = 0.25  # while stalled, how often the receiver's end is looked for


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
    mode: str
    head_bytes: int
    stall_s: float | None

    def new_state(self, pipe: Pipe) -> Any:
        # cuts: first parts sent, not yet through on_bytes; q: output held while stalled
        return SimpleNamespace(cuts=deque(), stalled=False, q=deque(), timer=None, handed_over=False)

    def hold_key(self) -> str:
        return f"stall:{self.name}"

    def might_act(self, pipe: Pipe, opcode: int, prefix: bytes | memoryview, header: fr.Header) -> bool:
        st = self.state(pipe)
        return not (st.stalled or st.cuts) and super().might_act(pipe, opcode, prefix, header)

    def on_message(self, pipe: Pipe, msg: Msg) -> list[Msg | bytes] | None:
        st = self.state(pipe)
        if st.stalled or st.cuts or not self.selects(pipe, msg):
            return None  # one stall at a time per direction; what follows waits behind it
        p = msg.payload
        if self.mode == "frame":
            n = min(self.head_bytes, len(p))
            first = fr.encode_frame(msg.opcode, p[:n], False, pipe.mask, msg.rsv)
            rest = fr.encode_frame(fr.CONT, p[n:], True, pipe.mask)
        else:
            wire = fr.encode_frame(msg.opcode, p, True, pipe.mask, msg.rsv)
            n = min(self.head_bytes, len(wire) - 1)  # at least one byte withheld
            first, rest = wire[:n], wire[n:]
        self.record(pipe, index=msg.index, json_type=msg.json_type(), binary_type=msg.binary_type(), size=len(p),
                    mode=self.mode, sent_bytes=n, stall_s=self.stall_s)
        if not first:  # nothing goes before the stall
            self._begin(pipe, st)
            return [rest]
        st.cuts.append(first)
        return [first, rest]

    def on_bytes(self, pipe: Pipe, data: bytes | memoryview, nxt: Callable[[Any], None]) -> None:
        st = self.state(pipe)
        if st.stalled:
            st.q.append((bytes(data), nxt))  # bounded: the sender is held
            return
        if st.cuts:
            cut = st.cuts[0]
            # found by identity, or by its bytes when a byte fault before us copied it
            if data is cut or (len(data) == len(cut) and data == cut):
                st.cuts.popleft()
                nxt(data)
                self._begin(pipe, st)
                return
        nxt(data)

    def on_eof(self, pipe: Pipe, nxt: Callable[[], None]) -> None:
        st = self.state(pipe)
        if st.stalled:
            st.q.append((None, nxt))
        else:
            nxt()

    def _begin(self, pipe: Pipe, st: Any) -> None:
        st.stalled = True
        pipe.hold(self.hold_key())
        if self.stall_s is not None:
            st.timer = pipe.later(self.stall_s, self._resume, pipe, st)
        if self.stall_s is None or self.stall_s > WATCH_S:
            pipe.later(WATCH_S, self._watch, pipe, st)

    def _watch(self, pipe: Pipe, st: Any) -> None:
        """The sender is held, so the proxy cannot see it leave. Once the receiver has ended
        its side (it timed the message out and closed, as it should), nothing can use the
        rest any more: end the connection, rather than keep a dead relay for ever."""
        if not st.stalled:
            return
        if pipe.dst in pipe.relay.ended:
            pipe.relay.shutdown()
            return
        pipe.later(WATCH_S, self._watch, pipe, st)

    def _resume(self, pipe: Pipe, st: Any) -> None:
        st.timer = None
        st.stalled = False
        if st.handed_over:  # we left the chain: the rest waits in the pipe's withheld output
            pipe.release(self.hold_key())
            pipe.unwithhold(self.hold_key())
            return
        q, st.q = st.q, deque()
        for data, nxt in q:  # in order; the continuation first
            if data is None:
                nxt()
            else:
                nxt(data)
        pipe.release(self.hold_key())

    def on_detach(self, pipe: Pipe) -> None:
        st = self.state(pipe)
        if not st.stalled:
            return
        if self.retired != "count":
            if st.timer is not None:
                st.timer.cancel()
            self._resume(pipe, st)
            return
        # A counted stall outlives the fault, but data arriving after we leave the chain
        # would bypass our queue: move the queue into the pipe's withheld output (after
        # the faults behind us, in order) and keep the output withheld until the timer.
        pipe.withhold(self.hold_key())
        while st.q:
            data, _nxt = st.q.popleft()
            if data is None:
                pipe.emit_eof(after=self)
            else:
                pipe.emit(data, after=self)
        st.handed_over = True
