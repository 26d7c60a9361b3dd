"""duplicate: selected messages arrive more than once."""

from __future__ import annotations

from ..relay.message import Msg
from .fault import LEGACY, NOISE_OPAQUE, NOISE_TERMINATED, Fault, FaultState
from .params import Param


class DuplicateState(FaultState["Duplicate"]):
    def on_message(self, msg: Msg) -> list[Msg | bytes] | None:
        if not self.selects(msg):
            return None
        copies = self.fault.copies
        self.record(msg, copies=copies)
        # the copies keep msg.index, so later faults' selectors answer for them as for the original
        return [msg] * (1 + copies)


class Duplicate(Fault):
    """Send each selected data message `copies` extra times, back to back (each copy a
    complete single-frame message). A correct receiver notices duplicated audio by its
    timestamps/sample indices, and must not double-apply a command."""

    kind = "duplicate"
    modes = {LEGACY: "", NOISE_TERMINATED: ""}  # noqa: RUF012 - class-level declaration, never mutated
    refusals = {NOISE_OPAQUE: (  # noqa: RUF012
        "on a noise session a repeated ciphertext fails the receiver's authentication (its nonce is "
        "spent): a silent close, never a duplicate to detect by content; nor can the proxy select by "
        "JSON or binary type (encrypted). A tampered message: corrupt or truncate"
    )}
    needs_messages = True
    default_direction = "downstream"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "copies": Param(int, 1, min=1, max=1000, help="extra copies after the original"),
    }
    State = DuplicateState
    copies: int
