"""drop: selected messages never arrive."""

from __future__ import annotations

from ..relay.message import Msg
from .fault import Fault, FaultState


class DropState(FaultState["Drop"]):
    def on_message(self, msg: Msg) -> list[Msg | bytes] | None:
        if not self.selects(msg):
            return None
        self.record(msg)
        return []


class Drop(Fault):
    """Drop the data messages that match the selector (the rest pass untouched)."""

    kind = "drop"
    needs_messages = True
    default_direction = "downstream"
    State = DropState
