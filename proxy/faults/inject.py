"""inject: the proxy sends a message of its own to one peer, at a message boundary.

What a peer does with input its partner should never have sent (malformed JSON, an
unknown type, wrong field types, an oversized message, a header-only binary) is only
testable if something sends it: `inject` is that sender. The message goes in between
the relayed messages, never inside one (`Channel.inject`); every injection is a
`fault` event.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from harness.protocol import wsframes as fr

from ..relay.connection import Channel, Connection
from .fault import LEGACY, NOISE_OPAQUE, NOISE_TERMINATED, Fault, FaultState
from .params import FaultSpecError, Param

OPCODES = {"text": fr.TEXT, "binary": fr.BINARY}
MAX_PAD_BYTES = 256 * 1024 * 1024  # a bound on what one spec can make the proxy allocate
FILL = {fr.TEXT: b" ", fr.BINARY: b"\x00"}  # spaces: JSON followed by whitespace is still JSON


def claimed_type(payload: bytes) -> str | None:
    """The JSON `type` of a payload, if it is a JSON object with one."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    kind = doc.get("type") if isinstance(doc, dict) else None
    return kind if isinstance(kind, str) else None


class InjectState(FaultState["Inject"]):
    def __init__(self, fault: Inject, conn: Channel) -> None:
        super().__init__(fault, conn)
        self.timer: asyncio.TimerHandle | None = None
        if fault.active:
            self.timer = conn.later(fault.after_s, self._fire)

    def _fire(self) -> None:
        self.timer = None
        if not self.fault.active or self.conn.ending:
            return  # retired meanwhile, or the connection is ending: nothing to send into
        # one write of all its frames: nothing of the relayed stream can land between them
        frames = self.fault.frames(self.conn)
        self.conn.inject(frames[0] if len(frames) == 1 else b"".join(frames), then=self._sent)

    def _sent(self) -> None:
        f = self.fault
        self.record(json_type=f.json_type, binary_type=f.binary_type, size=len(f.message), frames=f.fragments)
        if f.every_s is not None and f.active:
            self.timer = self.conn.later(f.every_s, self._fire)

    def detach(self) -> None:
        # an injection not yet made is not made: removed, expired or counted out
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Inject(Fault):
    """Send a message of the proxy's own to one peer (`direction`: downstream = to the
    client, upstream = to the server, masked), at a message boundary: never inside another
    message or between its fragments. The payload is `text` (a string, UTF-8) or `hex`
    (bytes; they may be invalid UTF-8 in a text message, to test that), then `pad_bytes`
    of padding (spaces for text: a JSON message stays valid JSON; zero bytes for binary),
    sent as `opcode` (default: text for `text`, binary for `hex`) in `fragments` frames.

    When: `after_s` seconds after the fault meets the connection (its upgrade, or the
    fault's addition for live connections), then every `every_s` seconds; `count` (default
    1) injections in all, then the fault retires."""

    kind = "inject"
    modes = {LEGACY: "", NOISE_TERMINATED: (  # noqa: RUF012 - class-level declaration, never mutated
        "sealed like every message: text as a JSON message, binary as a plaintext (type byte "
        "first)"
    )}
    refusals = {NOISE_OPAQUE: (  # noqa: RUF012
        "a message of the proxy's own on a noise session is a forgery the receiver cannot "
        "authenticate (binary), or cleartext after the handshake (text): either closes the session "
        "whatever the message says, so it tests nothing its content was chosen for"
    )}
    default_direction = "downstream"
    allowed_directions = ("downstream", "upstream")
    uses_selector = False  # it sends at a time, not at a message
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "text": Param(str, None, nullable=True, help="the payload as a string (UTF-8); or give hex"),
        "hex": Param(str, None, nullable=True, help="the payload as bytes in hex; or give text"),
        "opcode": Param(str, None, choices=tuple(OPCODES), nullable=True,
                        help="text or binary (null: text for `text`, binary for `hex`)"),
        "fragments": Param(int, 1, min=1, max=4096, help="WebSocket frames to cut the message into"),
        "pad_bytes": Param(int, 0, min=0, max=MAX_PAD_BYTES,
                           help="padding appended (spaces for text, zero bytes for binary): a large message "
                                "from a small spec"),
        "after_s": Param(float, 0.0, min=0.0, help="the first injection, this long after meeting the connection"),
        "every_s": Param(float, None, min=0.001, nullable=True,
                         help="then again every every_s seconds (until count); null: once"),
    }
    State = InjectState
    text: str | None
    hex: str | None
    opcode: str | None
    fragments: int
    pad_bytes: int
    after_s: float
    every_s: float | None
    # made by validate() from the parameters
    message: bytes
    wire_opcode: int
    json_type: str | None
    binary_type: int | None

    def __init__(self, count: int | None = None, **kw: Any) -> None:
        super().__init__(count=1 if count is None else count, **kw)  # once, unless told otherwise

    def cannot_act_on(self, conn: Connection) -> str | None:
        # it reads nothing (an uncompressed message is valid even with permessage-deflate), but what it
        # sends means something only where the proxy may speak for a peer: not on a noise session
        return self.refused_by_mode(conn)

    def validate(self) -> None:
        if (self.text is None) == (self.hex is None):
            raise FaultSpecError("inject: give the payload as parameter 'text' (a string) or 'hex' (bytes), "
                                 "exactly one of them")
        if self.text is not None:
            payload = self.text.encode()
        else:
            assert self.hex is not None
            try:
                payload = bytes.fromhex(self.hex)
            except ValueError as e:
                raise FaultSpecError(f"inject: parameter 'hex' is not hex bytes: {e}") from None
        opcode = OPCODES[self.opcode or ("text" if self.text is not None else "binary")]
        self.message = payload + FILL[opcode] * self.pad_bytes
        self.wire_opcode = opcode
        # what the message claims to be, for its events
        self.json_type = claimed_type(payload) if opcode == fr.TEXT else None
        self.binary_type = self.message[0] if opcode == fr.BINARY and self.message else None
        if self.every_s is not None and self.count == 1:
            raise FaultSpecError("inject: parameter 'every_s' repeats an injection: give 'count' (> 1) as well")
        if self.fragments > max(1, len(self.message)):
            raise FaultSpecError(f"inject: parameter 'fragments' ({self.fragments}) must be at most the message's "
                                 f"size ({len(self.message)} bytes)")

    def frames(self, conn: Channel) -> list[bytes]:
        """The message cut into `fragments` frames of near-equal size, encoded for `conn`."""
        n, data = self.fragments, self.message
        size, extra = divmod(len(data), n)
        out, at = [], 0
        for i in range(n):
            end = at + size + (1 if i < extra else 0)
            out.append(conn.encode(self.wire_opcode if i == 0 else fr.CONT, data[at:end], i == n - 1))
            at = end
        return out
