"""truncate: selected messages arrive cut to their first `keep_bytes` bytes."""

from __future__ import annotations

from ..relay.message import Msg
from .fault import LEGACY, NOISE_OPAQUE, NOISE_TERMINATED, Fault, FaultState
from .params import Param


class TruncateState(FaultState["Truncate"]):
    def on_message(self, msg: Msg) -> list[Msg | bytes] | None:
        keep = self.fault.keep_bytes
        if not self.selects(msg) or len(msg.payload) <= keep:
            return None
        self.record(msg, kept=keep)
        return [msg.replace(msg.payload[:keep])]


class Truncate(Fault):
    """Cut each selected data message to its first `keep_bytes` payload bytes; it arrives
    as one complete (FIN=1) message, so only its length betrays it. 9 keeps a binary
    message's type byte and timestamp (an orphan binary header, see `orphan_header`).
    A cut text message may end inside a UTF-8 character: a correct receiver then fails
    the connection with 1007. Messages already no longer than `keep_bytes` pass as they are."""

    kind = "truncate"
    modes = {LEGACY: "", NOISE_TERMINATED: (  # noqa: RUF012 - class-level declaration, never mutated
        "on the plaintext: the receiver gets a well-authenticated, shorter message"
    ), NOISE_OPAQUE: (
        "a truncated ciphertext: its authentication tag is cut or no longer matches, so the "
        "receiver's AEAD check fails at that very message, a guaranteed silent close"
    )}
    needs_messages = True
    default_direction = "downstream"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "keep_bytes": Param(int, 9, min=0, help="payload bytes kept (9 = binary type + timestamp)"),
    }
    State = TruncateState
    keep_bytes: int
