"""delay: selected messages arrive `delay_ms` late (holding the line, or overtaken)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .base import Fault, Msg, Param

if TYPE_CHECKING:
    import asyncio

    from ..relay.pipe import Pipe


class Delay(Fault):
    """Hold each selected data message back for `delay_ms`.

    `reorder: false` (head of line): the message and everything after it in this
    direction wait (output withheld, the sender's socket held: real backpressure, as a
    stalled path would give); then all of it goes out in order. `reorder: true`: only
    that message waits; later messages overtake it and it is sent at the first message
    boundary after the delay (a reordering the receiver's checks must detect).

    Removal (or `duration` expiry) sends what is held back at once. A delay counted by
    `count` still runs its course after the fault retires."""

    kind = "delay"
    needs_messages = True
    default_direction = "downstream"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "delay_ms": Param(float, 1000.0, min=0.0, help="how long each selected message is held back"),
        "reorder": Param(bool, False, help="false: everything behind it waits too; true: later messages overtake it"),
    }
    delay_ms: float
    reorder: bool

    def new_state(self, pipe: Pipe) -> Any:
        # pending: timer handle -> the action that ends that delay (run early on removal)
        return SimpleNamespace(pending={})

    def on_message(self, pipe: Pipe, msg: Msg) -> list[Msg | bytes] | None:
        if not self.selects(pipe, msg):
            return None
        self.record(pipe, index=msg.index, json_type=msg.json_type(), binary_type=msg.binary_type(),
                    size=len(msg.payload), delay_ms=self.delay_ms, reorder=self.reorder)
        st = self.state(pipe)
        holder: list[asyncio.TimerHandle] = []
        if self.reorder:
            frame = pipe.encode(msg.opcode, msg.payload)

            def send() -> None:
                st.pending.pop(holder[0], None)
                pipe.inject(frame)  # at a message boundary: never inside another message

            holder.append(pipe.later(self.delay_ms / 1000.0, send))
            st.pending[holder[0]] = send
            return []
        # Head of line: the message goes into the withheld output, with whatever follows.
        # One key per delayed message, so overlapping delays each keep the line closed.
        key = f"delay:{self.name}:{msg.index}"
        pipe.withhold(key)
        pipe.hold(key)

        def lift() -> None:
            st.pending.pop(holder[0], None)
            pipe.release(key)
            pipe.unwithhold(key)

        holder.append(pipe.later(self.delay_ms / 1000.0, lift))
        st.pending[holder[0]] = lift
        return None  # unchanged: its original bytes, masks and fragments, just later

    def on_detach(self, pipe: Pipe) -> None:
        if self.retired == "count":
            return  # counted applications run their course (their timers do not need us)
        st = self.state(pipe)
        for handle, action in list(st.pending.items()):
            handle.cancel()
            action()
