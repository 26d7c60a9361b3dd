"""orphan_header: the first part of a two-part unit arrives and the second never does.

docs/architecture.md §4. Three variants, each a different "first part":

`binary` (a): a selected binary message keeps only its first `keep_bytes` bytes
(9 = type byte + int64 timestamp: a header with no payload; fewer = not even a whole
header). It arrives as a complete message. A correct receiver rejects it with a
logged reason and keeps the session.

`fragment` (b): a selected data message is opened with its first fragment (FIN=0;
`head_bytes` payload bytes, default: the sender's own first fragment, or half the
message) and its remaining fragments are dropped. Nothing else of this direction's
data follows until the sender's next data message M (control frames still pass: RFC
6455 allows them between fragments). What happens at M is `fragment_end`:

  * `none`: M's first frame goes out as it came, with its own opcode, while the
    fragmented message is still open. RFC 6455 §5.4 allows only continuation (or
    control) frames there, so a correct receiver fails the connection (close 1002,
    protocol error): it must neither deliver the partial message nor take M as its
    continuation. This is the literal "opened and never closed before another
    message"; a receiver that stays up has glued or lost data silently.
  * `empty_fin`: an empty FIN=1 continuation closes the sequence just before M, so
    the WebSocket stream stays valid: the receiver gets a complete message that
    holds only the orphaned first fragment, then M intact. The Sendspin layer must
    reject the short message (a header-only binary, truncated JSON) and handle M.
  * `splice`: M's payload is sent as the continuation (FIN=1): the receiver sees ONE
    message, first fragment + M's bytes, with the first one's opcode; M itself never
    arrives. WebSocket cannot tell; a Sendspin receiver must (a binary with JSON in
    it, a JSON parse error) and must not act on M.

M itself is never made an orphan. If the fault is removed while a sequence is
open, an empty FIN continuation closes it, so the stream is valid again.

`announce` (c): a JSON message that announces binary data (by default `stream/start`
or an application message whose type starts with `_` and mentions `upload`, e.g.
`_harness/upload`; the selector's `json_type` overrides that) is forwarded and the
binary message(s) that follow are dropped: `binaries` of them (null: every binary
until the next text message), optionally only those whose type byte is `data_type`.
The next thing the receiver gets is the next JSON message instead of the data; a
correct receiver must not take anything later as the announced payload.

The event log gets one `fault` event per orphan made, when it is complete (the
message after it passed, or the announced data was dropped), with `opened_us` for
the first part; `count` counts orphans.
"""

from __future__ import annotations

from typing import Any

from harness.protocol import now_us
from harness.protocol import wsframes as fr

from ..relay.connection import Channel
from ..relay.message import Msg
from .fault import LEGACY, NOISE_OPAQUE, NOISE_TERMINATED, Fault, FaultState
from .params import FaultSpecError, Param

HEADER_BYTES = 9  # binary message: type byte + big-endian int64 timestamp
NOISE_AUDIO_HEADER_BYTES = 13  # a noise session's player audio adds a uint32 send_ahead (--noise terminate)


def is_announcement_type(t: str | None) -> bool:
    """Default announcements: stream/start, or an application (`_`) upload header."""
    return t == "stream/start" or (t is not None and t.startswith("_") and "upload" in t)


class OrphanHeaderState(FaultState["OrphanHeader"]):
    def __init__(self, fault: OrphanHeader, conn: Channel) -> None:
        super().__init__(fault, conn)
        # fragment: open = an orphan FIN=0 fragment is on the wire; announce: armed =
        # dropping the data after an announcement
        self.open = False
        self.opened_us = 0
        self.index = -1
        self.dropped_bytes = 0
        self.armed = False
        self.remaining: int | None = None
        self.dropped: list[tuple[int, int | None, int]] = []
        self.json_type: str | None = None

    # --- which messages to buffer ----------------------------------------------------------
    def might_act(self, opcode: int, prefix: bytes | memoryview, header: fr.Header) -> bool:
        if self.open or self.armed:
            return True  # the message after an orphan: needed even once retired
        f = self.fault
        if not f.active:
            return False
        if f.variant == "binary":
            return opcode == fr.BINARY and f.sel.might_match(opcode, prefix, header)
        if f.variant == "announce":
            return opcode == fr.TEXT and f.sel.might_match(opcode, prefix, header)
        return f.sel.might_match(opcode, prefix, header)

    def on_message(self, msg: Msg) -> list[Msg | bytes] | None:
        variant = self.fault.variant
        if variant == "binary":
            return self._binary(msg)
        if variant == "fragment":
            return self._fragment(msg)
        return self._announce(msg)

    # --- (a) header-only binary --------------------------------------------------------------
    def _binary(self, msg: Msg) -> list[Msg | bytes] | None:
        keep = self.fault.keep_bytes
        if msg.opcode != fr.BINARY or not self.selects(msg) or len(msg.payload) <= keep:
            return None
        self.record(variant="binary", index=msg.index, binary_type=msg.binary_type(), size=len(msg.payload),
                    kept=keep, opened_us=now_us())
        return [msg.replace(msg.payload[:keep])]

    # --- (b) fragment sequence opened, never continued --------------------------------------
    def _fragment(self, msg: Msg) -> list[Msg | bytes] | None:
        f, conn = self.fault, self.conn
        if self.open:  # msg is the next message: it ends the orphan, and is not made one itself
            self.open = False
            self._log_fragment(closed_by=f.fragment_end, next_index=msg.index)
            if f.fragment_end == "none":
                return None  # as it came: a new message inside an open one
            if f.fragment_end == "empty_fin":
                return [conn.encode(fr.CONT, b"", True), msg]
            return [conn.encode(fr.CONT, msg.payload, True)]  # splice
        if not self.selects(msg):
            return None
        p = msg.payload
        if f.head_bytes is not None:
            n = min(f.head_bytes, len(p))
        elif len(msg.sizes) > 1:
            n = msg.sizes[0]  # the sender's own first fragment
        else:
            n = len(p) // 2
        self.open, self.opened_us, self.index, self.dropped_bytes = True, now_us(), msg.index, len(p) - n
        return [conn.encode(msg.opcode, p[:n], False, msg.rsv)]

    def _log_fragment(self, **fields: Any) -> None:
        self.record(variant="fragment", index=self.index, opened_us=self.opened_us,
                    dropped_bytes=self.dropped_bytes, **fields)

    # --- (c) announcing JSON, data dropped ----------------------------------------------------
    def _is_announcement(self, msg: Msg) -> bool:
        if msg.opcode != fr.TEXT:
            return False
        if self.fault.sel.json_type is None and not is_announcement_type(msg.json_type()):
            return False
        return self.selects(msg)

    def _announce(self, msg: Msg) -> list[Msg | bytes] | None:
        f = self.fault
        if self.armed and msg.opcode == fr.BINARY:
            if f.data_type is not None and msg.binary_type() != f.data_type:
                return None  # not the announced data (e.g. audio while artwork was announced)
            self.dropped.append((msg.index, msg.binary_type(), len(msg.payload)))
            if self.remaining is not None:
                self.remaining -= 1
                if self.remaining <= 0:
                    self._end_announce()
            return []
        if msg.opcode == fr.TEXT:
            if self.armed:  # the next JSON arrives instead of (the rest of) the data
                self._end_announce()
            if self._is_announcement(msg):
                self.armed, self.remaining, self.dropped = True, f.binaries, []
                self.index, self.opened_us, self.json_type = msg.index, now_us(), msg.json_type()
        return None

    def _end_announce(self) -> None:
        self.armed = False
        if self.dropped:  # nothing dropped (JSON followed JSON anyway): nothing was injected
            self.record(variant="announce", index=self.index, json_type=self.json_type, opened_us=self.opened_us,
                        dropped=[i for i, _, _ in self.dropped], dropped_bytes=sum(n for _, _, n in self.dropped))
        self.dropped = []

    # --- removal ---------------------------------------------------------------------------------
    def detach(self) -> None:
        if self.open:
            # close the open sequence so the stream is valid again (at a boundary)
            self.open = False
            self.conn.inject(self.conn.encode(fr.CONT, b"", True))
            self._log_fragment(closed_by="removed")
        if self.armed:
            self._end_announce()


class OrphanHeader(Fault):
    """The first part of a two-part unit arrives and the second never does (docs/architecture.md §4):
    variant `binary` (a header-only binary message), `fragment` (a FIN=0 first fragment
    whose continuation never comes before the next message) or `announce` (the binary
    data announced by `stream/start` / an upload header dropped)."""

    kind = "orphan_header"
    modes = {LEGACY: "", NOISE_TERMINATED: (  # noqa: RUF012 - class-level declaration, never mutated
        "the Noise form: variant fragment opens a Noise fragment sequence that is never finished "
        "(fragment_end none: the next message arrives while it is open, a malformed sequence); "
        "variant binary cuts a plaintext (the noise player-audio header is 13 bytes)"
    )}
    refusals = {NOISE_OPAQUE: (  # noqa: RUF012
        "the noise form of an orphan header is a malformed Sendspin fragment sequence, inside the "
        "encryption: making one needs the session's keys; cutting or splicing a ciphertext only "
        "fails its authentication (that is truncate or corrupt)"
    )}
    needs_messages = True
    default_direction = "downstream"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "variant": Param(str, "binary", choices=("binary", "fragment", "announce"),
                         help="binary: header-only binary; fragment: FIN=0 with no continuation; "
                              "announce: announcing JSON, data dropped"),
        "keep_bytes": Param(int, HEADER_BYTES, min=0, max=NOISE_AUDIO_HEADER_BYTES,
                            help="binary: bytes kept (9 = type + timestamp, fewer = a cut header; a terminated "
                                 "noise session's audio header is 13, with send_ahead)"),
        "head_bytes": Param(int, None, min=0, nullable=True,
                            help="fragment: payload bytes in the FIN=0 first fragment (null: the sender's "
                                 "first fragment, or half the message)"),
        "fragment_end": Param(str, "none", choices=("none", "empty_fin", "splice"),
                              help="fragment: what the next message does to the open sequence"),
        "binaries": Param(int, 1, min=1, nullable=True,
                          help="announce: binary messages dropped after it (null: all until the next text)"),
        "data_type": Param(int, None, min=0, max=255, nullable=True,
                           help="announce: only binaries with this type byte are the announced data"),
    }
    State = OrphanHeaderState
    variant: str
    keep_bytes: int
    head_bytes: int | None
    fragment_end: str
    binaries: int | None
    data_type: int | None

    _FOR = {"keep_bytes": "binary", "head_bytes": "fragment", "fragment_end": "fragment",  # noqa: RUF012
            "binaries": "announce", "data_type": "announce"}

    def validate(self) -> None:
        # spec() round-trips every parameter, so only a non-default value can be misplaced
        for p, variant in self._FOR.items():
            if variant != self.variant and self.params[p] != self.PARAMS[p].default:
                raise FaultSpecError(f"orphan_header: parameter {p!r} applies to variant {variant!r} only "
                                     f"(this one is {self.variant!r})")
        if self.variant == "binary" and self.sel.json_type is not None:
            raise FaultSpecError("orphan_header: variant 'binary' acts on binary messages; "
                                 "selector.json_type would never match")
        if self.variant == "announce" and self.sel.binary_type is not None:
            raise FaultSpecError("orphan_header: variant 'announce' selects the announcing JSON message; "
                                 "use data_type for the binary data, not selector.binary_type")
