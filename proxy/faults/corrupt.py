"""corrupt: selected messages arrive with one payload byte flipped."""

from __future__ import annotations

from ..relay.message import Msg
from .fault import LEGACY, NOISE_OPAQUE, NOISE_TERMINATED, Fault, FaultState
from .params import Param


class CorruptState(FaultState["Corrupt"]):
    def on_message(self, msg: Msg) -> list[Msg | bytes] | None:
        if not self.selects(msg):
            return None
        n = len(msg.payload)
        offset = self.fault.offset
        i = offset + n if offset < 0 else offset
        if not 0 <= i < n:
            return None
        b = bytearray(msg.payload)
        b[i] ^= self.fault.xor
        self.record(msg, at=i, was=msg.payload[i], now=b[i])
        return [msg.replace(bytes(b))]


class Corrupt(Fault):
    """XOR one payload byte of each selected data message with `xor` (the length and the
    framing stay intact, so only a content check can notice). `offset` counts from the
    start, or from the end when negative (-1 = the last byte); messages too short to have
    that byte pass untouched. Binary offset 0 is the type byte, 1..8 the timestamp; a
    flipped byte in text usually breaks the JSON or the UTF-8 (a correct receiver then
    rejects the message, or fails the connection with 1007)."""

    kind = "corrupt"
    modes = {LEGACY: "", NOISE_TERMINATED: (  # noqa: RUF012 - class-level declaration, never mutated
        "on the plaintext: the receiver gets a well-authenticated message with the changed bytes"
    ), NOISE_OPAQUE: (
        "a tampered message: a flipped ciphertext byte fails the receiver's AEAD check at that very "
        "message, a guaranteed silent close (in the cleartext handshake: a malformed init or a failed "
        "handshake)"
    )}
    needs_messages = True
    default_direction = "downstream"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "offset": Param(int, -1, help="payload byte to flip; negative counts from the end"),
        "xor": Param(int, 0xFF, min=1, max=255, help="the byte is XORed with this (never 0: that changes nothing)"),
    }
    State = CorruptState
    offset: int
    xor: int
