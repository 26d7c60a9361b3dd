"""drop: selected messages never arrive."""

from __future__ import annotations

from ..relay.message import Msg
from .fault import LEGACY, NOISE_OPAQUE, NOISE_TERMINATED, Fault, FaultState


class DropState(FaultState["Drop"]):
    def on_message(self, msg: Msg) -> list[Msg | bytes] | None:
        if not self.selects(msg):
            return None
        self.record(msg)
        return []


class Drop(Fault):
    """Drop the data messages that match the selector (the rest pass untouched)."""

    kind = "drop"
    modes = {LEGACY: "", NOISE_TERMINATED: ""}  # noqa: RUF012 - class-level declaration, never mutated
    refusals = {NOISE_OPAQUE: (  # noqa: RUF012
        "on a noise session a dropped message is never a lost one: the receiver's next message fails "
        "authentication (its nonce counts messages), a silent close one message late, or nothing if none "
        "follows; nor can the proxy select by JSON or binary type (encrypted). A tampered message: "
        "corrupt or truncate"
    )}
    needs_messages = True
    default_direction = "downstream"
    State = DropState
