"""slicer: selected messages are re-fragmented into small WebSocket frames."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from harness.protocol import wsframes as fr

from .base import Fault, FaultSpecError, Msg, Param

if TYPE_CHECKING:
    from ..relay.pipe import Pipe


class Slicer(Fault):
    """Re-send each selected data message as RFC 6455 fragments of `frame_bytes` payload
    bytes (± `variation_bytes`, seeded): the first frame keeps the opcode, the others are
    continuations, the last has FIN. The message's bytes are unchanged, so a correct
    receiver reassembles it (text may be split inside a UTF-8 character: legal, UTF-8 is
    checked on the whole message). Control frames are never split (RFC 6455 §5.5)."""

    kind = "slicer"
    needs_messages = True
    default_direction = "downstream"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "frame_bytes": Param(int, 1024, min=1, help="payload bytes per fragment"),
        "variation_bytes": Param(int, 0, min=0, help="each fragment is frame_bytes ± up to this (seeded)"),
        "seed": Param(int, 0, help="random stream for the variation (per connection and direction)"),
    }
    frame_bytes: int
    variation_bytes: int
    seed: int

    def validate(self) -> None:
        if self.variation_bytes >= self.frame_bytes:
            raise FaultSpecError(f"slicer: variation_bytes ({self.variation_bytes}) must be smaller than "
                                 f"frame_bytes ({self.frame_bytes}) (a fragment has at least 1 byte)")

    def new_state(self, pipe: Pipe) -> Any:
        return random.Random(f"{self.seed}/{pipe.relay.seq}/{pipe.direction}")

    def on_message(self, pipe: Pipe, msg: Msg) -> list[Msg | bytes] | None:
        if not self.selects(pipe, msg):
            return None
        rng = self.state(pipe)
        p = msg.payload
        sizes: list[int] = []
        i = 0
        while True:
            n = self.frame_bytes
            if self.variation_bytes:
                n += rng.randint(-self.variation_bytes, self.variation_bytes)
            sizes.append(min(n, len(p) - i))
            i += sizes[-1]
            if i >= len(p):
                break
        out: list[Msg | bytes] = []
        i = 0
        for k, n in enumerate(sizes):
            first, last = k == 0, k == len(sizes) - 1
            # RSV1 (compression) belongs on the first frame only (RFC 7692 §6.1)
            out.append(fr.encode_frame(msg.opcode if first else fr.CONT, p[i:i + n], last, pipe.mask,
                                       msg.rsv if first else 0))
            i += n
        self.record(pipe, index=msg.index, json_type=msg.json_type(), binary_type=msg.binary_type(),
                    size=len(p), frames=len(sizes))
        return out
