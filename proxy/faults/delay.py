"""delay: selected messages arrive `delay_ms` late (holding the line, or overtaken)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..relay.connection import Channel
from ..relay.message import Msg
from .fault import LEGACY, NOISE_OPAQUE, NOISE_TERMINATED, Fault, FaultState
from .params import Param


class DelayState(FaultState["Delay"]):
    def __init__(self, fault: Delay, conn: Channel) -> None:
        super().__init__(fault, conn)
        # timer handle -> the action that ends that delay (run early on removal)
        self.pending: dict[asyncio.TimerHandle, Callable[[], None]] = {}

    def on_message(self, msg: Msg) -> list[Msg | bytes] | None:
        if not self.selects(msg):
            return None
        f, conn = self.fault, self.conn
        self.record(msg, delay_ms=f.delay_ms, reorder=f.reorder)
        holder: list[asyncio.TimerHandle] = []
        if f.reorder:
            frame = conn.encode(msg.opcode, msg.payload)

            def send() -> None:
                self.pending.pop(holder[0], None)
                conn.inject(frame)  # at a message boundary: never inside another message

            holder.append(conn.later(f.delay_ms / 1000.0, send))
            self.pending[holder[0]] = send
            return []
        # Head of line: the message goes into the withheld output, with whatever follows.
        # One key per delayed message, so overlapping delays each keep the line closed.
        key = f"delay:{f.name}:{msg.index}"
        conn.withhold(key)
        conn.hold(key)

        def lift() -> None:
            self.pending.pop(holder[0], None)
            conn.release(key)
            conn.unwithhold(key)

        holder.append(conn.later(f.delay_ms / 1000.0, lift))
        self.pending[holder[0]] = lift
        return None  # unchanged: its original bytes, masks and fragments, just later

    def detach(self) -> None:
        if self.fault.retired == "count":
            return  # counted applications run their course (their timers do not need us)
        for handle, action in list(self.pending.items()):
            handle.cancel()
            action()


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
    modes = {LEGACY: "", NOISE_TERMINATED: "", NOISE_OPAQUE: (  # noqa: RUF012 - class-level declaration, never mutated
        "reorder false only: the held messages go out intact and in order; a reordered ciphertext "
        "fails the receiver's authentication (its nonce is out of order)"
    )}
    needs_messages = True
    default_direction = "downstream"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "delay_ms": Param(float, 1000.0, min=0.0, help="how long each selected message is held back"),
        "reorder": Param(bool, False, help="false: everything behind it waits too; true: later messages overtake it"),
    }
    State = DelayState
    delay_ms: float
    reorder: bool

    def mode_refusal(self, mode: str) -> str | None:
        if mode == NOISE_OPAQUE and self.reorder:
            return ("reorder on a noise session: a ciphertext sent out of order fails the receiver's authentication "
                    "(the nonce counts messages), a silent close, never a reordering to detect; reorder false "
                    "(a head-of-line delay) keeps the session")
        return super().mode_refusal(mode)
