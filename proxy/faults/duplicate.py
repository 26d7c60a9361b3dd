"""duplicate: selected messages arrive more than once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Fault, Msg, Param

if TYPE_CHECKING:
    from ..relay.pipe import Pipe


class Duplicate(Fault):
    """Send each selected data message `copies` extra times, back to back (each copy a
    complete single-frame message). A correct receiver notices duplicated audio by its
    timestamps/sample indices, and must not double-apply a command."""

    kind = "duplicate"
    needs_messages = True
    default_direction = "downstream"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "copies": Param(int, 1, min=1, max=1000, help="extra copies after the original"),
    }
    copies: int

    def on_message(self, pipe: Pipe, msg: Msg) -> list[Msg | bytes] | None:
        if not self.selects(pipe, msg):
            return None
        self.record(pipe, index=msg.index, json_type=msg.json_type(), binary_type=msg.binary_type(),
                    size=len(msg.payload), copies=self.copies)
        # the copies keep msg.index, so later faults' selectors answer for them as for the original
        return [msg] * (1 + self.copies)
