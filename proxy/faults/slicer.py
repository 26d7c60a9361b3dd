"""slicer: selected messages are re-fragmented into small WebSocket frames."""

from __future__ import annotations

from harness.protocol import wsframes as fr

from ..relay.connection import Channel
from ..relay.message import Msg
from .fault import LEGACY, NOISE_OPAQUE, NOISE_TERMINATED, Fault, FaultState
from .params import FaultSpecError, Param


class SlicerState(FaultState["Slicer"]):
    def __init__(self, fault: Slicer, conn: Channel) -> None:
        super().__init__(fault, conn)
        self.rng = conn.rng(fault.seed)

    def on_message(self, msg: Msg) -> list[Msg | bytes] | None:
        if not self.selects(msg):
            return None
        f, conn = self.fault, self.conn
        p = msg.payload
        sizes: list[int] = []
        i = 0
        while True:
            n = f.frame_bytes
            if f.variation_bytes:
                n += self.rng.randint(-f.variation_bytes, f.variation_bytes)
            sizes.append(min(n, len(p) - i))
            i += sizes[-1]
            if i >= len(p):
                break
        out: list[Msg | bytes] = []
        i = 0
        for k, n in enumerate(sizes):
            first, last = k == 0, k == len(sizes) - 1
            # RSV1 (compression) belongs on the first frame only (RFC 7692 §6.1)
            out.append(conn.encode(msg.opcode if first else fr.CONT, p[i:i + n], last, msg.rsv if first else 0))
            i += n
        self.record(msg, frames=len(sizes))
        return out


class Slicer(Fault):
    """Re-send each selected data message as RFC 6455 fragments of `frame_bytes` payload
    bytes (± `variation_bytes`, seeded): the first frame keeps the opcode, the others are
    continuations, the last has FIN. The message's bytes are unchanged, so a correct
    receiver reassembles it (text may be split inside a UTF-8 character: legal, UTF-8 is
    checked on the whole message). Control frames are never split (RFC 6455 §5.5)."""

    kind = "slicer"
    modes = {LEGACY: "", NOISE_TERMINATED: (  # noqa: RUF012 - class-level declaration, never mutated
        "WebSocket fragments of the plaintext become Noise fragments with the same cuts"
    ), NOISE_OPAQUE: (
        "WebSocket fragments, below the encryption: each ciphertext still arrives whole and intact, "
        "so the session survives; select by size or nth (JSON and binary types are encrypted)"
    )}
    needs_messages = True
    default_direction = "downstream"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "frame_bytes": Param(int, 1024, min=1, help="payload bytes per fragment"),
        "variation_bytes": Param(int, 0, min=0, help="each fragment is frame_bytes ± up to this (seeded)"),
        "seed": Param(int, 0, help="random stream for the variation (per connection and direction)"),
    }
    State = SlicerState
    frame_bytes: int
    variation_bytes: int
    seed: int

    def validate(self) -> None:
        if self.variation_bytes >= self.frame_bytes:
            raise FaultSpecError(f"slicer: variation_bytes ({self.variation_bytes}) must be smaller than "
                                 f"frame_bytes ({self.frame_bytes}) (a fragment has at least 1 byte)")
