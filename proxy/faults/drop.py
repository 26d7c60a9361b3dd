"""drop: selected messages never arrive."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Fault, Msg

if TYPE_CHECKING:
    from ..relay.pipe import Pipe


class Drop(Fault):
    """Drop the data messages that match the selector (the rest pass untouched)."""

    kind = "drop"
    needs_messages = True
    default_direction = "downstream"

    def on_message(self, pipe: Pipe, msg: Msg) -> list[Msg | bytes] | None:
        if not self.selects(pipe, msg):
            return None
        self.record(pipe, index=msg.index, json_type=msg.json_type(), binary_type=msg.binary_type(),
                    size=len(msg.payload))
        return []
