"""truncate: selected messages arrive cut to their first `keep_bytes` bytes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Fault, Msg, Param

if TYPE_CHECKING:
    from ..relay.pipe import Pipe


class Truncate(Fault):
    """Cut each selected data message to its first `keep_bytes` payload bytes; it arrives
    as one complete (FIN=1) message, so only its length betrays it. 9 keeps a binary
    message's type byte and timestamp (an orphan binary header, see `orphan_header`).
    A cut text message may end inside a UTF-8 character: a correct receiver then fails
    the connection with 1007. Messages already no longer than `keep_bytes` pass as they are."""

    kind = "truncate"
    needs_messages = True
    default_direction = "downstream"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "keep_bytes": Param(int, 9, min=0, help="payload bytes kept (9 = binary type + timestamp)"),
    }
    keep_bytes: int

    def on_message(self, pipe: Pipe, msg: Msg) -> list[Msg | bytes] | None:
        if not self.selects(pipe, msg) or len(msg.payload) <= self.keep_bytes:
            return None
        self.record(pipe, index=msg.index, json_type=msg.json_type(), binary_type=msg.binary_type(),
                    size=len(msg.payload), kept=self.keep_bytes)
        return [msg.replace(msg.payload[:self.keep_bytes])]
