"""The one WebSocket (RFC 6455) frame codec, sans-I/O, used by the proxy, the
reference server, the benchmarks and the tests.

`FrameScanner` tracks frame and message boundaries of a byte stream without copying
or unmasking payloads (memoryview slices), so a relay's no-fault path costs
O(frames) Python work, not O(bytes). `MessageAssembler` rebuilds whole messages,
used only while a message-aware fault might act on the current message.
`encode_frame` builds frames.

Where a library's codec is used and where not (`./run bench frame_codec`, 2-core VM):
masking is websockets' C `apply_mask` (the pure-Python XOR it replaced took 5x
longer on a 4800-byte audio chunk). Header packing is ours: websockets'
`Frame.serialize` took 3.6 us per 4800-byte audio frame where ours takes 1.3 us,
and with per-session encryption a frame is built per listener per chunk. Parsing is
ours: websockets' `Frame.parse` and wsproto's decoder read and unmask whole
payloads (701 and 430 MiB/s on an audio stream, ours 1250 MiB/s), while a relay
must find boundaries without copying them.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from websockets.frames import apply_mask  # the C speedup when built, else websockets' own fallback

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0, 1, 2, 8, 9, 10
MAX_HEADER = 14  # 2 + 8 (64-bit length) + 4 (mask)


@dataclass(slots=True)
class Header:
    fin: bool
    opcode: int
    masked: bool
    length: int  # payload bytes
    mask: bytes
    size: int  # header bytes
    rsv: int = 0  # RSV1..3 bits (0x70 of the first byte); RSV1 = permessage-deflate

    @property
    def is_control(self) -> bool:
        return self.opcode >= 8


@dataclass(slots=True)
class Piece:
    """A slice of the stream that never straddles a frame boundary."""

    data: memoryview  # raw wire bytes (the header included when `header` is set)
    header: Header | None  # set when this piece starts a frame
    frame_end: bool


def parse_header(buf: bytes | bytearray | memoryview) -> Header | None:
    """The frame header at the start of `buf`, or None if `buf` holds only part of it."""
    n = len(buf)
    if n < 2:
        return None
    b0, b1 = buf[0], buf[1]
    length = b1 & 0x7F
    pos = 2
    if length == 126:
        if n < 4:
            return None
        (length,) = struct.unpack_from("!H", buf, 2)
        pos = 4
    elif length == 127:
        if n < 10:
            return None
        (length,) = struct.unpack_from("!Q", buf, 2)
        pos = 10
    masked = bool(b1 & 0x80)
    mask = b""
    if masked:
        if n < pos + 4:
            return None
        mask = bytes(buf[pos:pos + 4])
        pos += 4
    return Header(bool(b0 & 0x80), b0 & 0x0F, masked, length, mask, pos, b0 & 0x70)


def mask_bytes(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """XOR with the 4-byte mask key (also unmasks)."""
    return apply_mask(data, key) if len(data) else b""


class FrameScanner:
    """Frame/message boundaries of one direction, plus the last close frame's payload."""

    def __init__(self) -> None:
        self.pending = bytearray()  # an incomplete header carried to the next chunk
        self.remaining = 0  # bytes (header included) still to come in the current frame
        self.header: Header | None = None  # header of the current (or last) frame
        self.in_fragmented = False  # a data message opened with FIN=0 and not yet finished
        self.frames = 0
        self.messages = 0  # completed data messages (FIN=1 data/continuation frames)
        self.close_payload: bytes | None = None  # unmasked payload of the last close frame
        self._capture: bytearray | None = None

    @property
    def at_frame_boundary(self) -> bool:
        return self.remaining == 0 and not self.pending

    @property
    def at_message_boundary(self) -> bool:
        return self.at_frame_boundary and not self.in_fragmented

    @property
    def close_code(self) -> int | None:
        p = self.close_payload
        return struct.unpack("!H", p[:2])[0] if p is not None and len(p) >= 2 else None

    @property
    def close_reason(self) -> str:
        p = self.close_payload
        return p[2:].decode("utf-8", "replace") if p is not None and len(p) > 2 else ""

    def advance(self, data: bytes | memoryview) -> None:
        """Update the state only (the no-fault fast path)."""
        self._scan(data, None)

    def split(self, data: bytes | memoryview) -> list[Piece]:
        out: list[Piece] = []
        self._scan(data, out)
        return out

    def _scan(self, data: bytes | memoryview, out: list[Piece] | None) -> None:
        mv = memoryview(data)
        if self.pending:  # rare: a header straddled two reads; one small copy
            mv = memoryview(bytes(self.pending) + bytes(mv))
            self.pending.clear()
        i, n = 0, len(mv)
        while i < n:
            if self.remaining:
                take = min(self.remaining, n - i)
                if self._capture is not None:
                    self._capture += mv[i:i + take]
                self.remaining -= take
                if out is not None:
                    out.append(Piece(mv[i:i + take], None, self.remaining == 0))
                i += take
                if self.remaining == 0:
                    self._end_frame()
                continue
            h = parse_header(mv[i:i + MAX_HEADER])
            if h is None:
                self.pending += mv[i:]
                return
            self._begin_frame(h)
            total = h.size + h.length
            take = min(total, n - i)
            if self._capture is not None:
                self._capture += mv[i + h.size:i + take]
            self.remaining = total - take
            if out is not None:
                out.append(Piece(mv[i:i + take], h, self.remaining == 0))
            i += take
            if self.remaining == 0:
                self._end_frame()

    def _begin_frame(self, h: Header) -> None:
        self.header = h
        self.frames += 1
        if h.opcode == CLOSE:
            self._capture = bytearray()
        elif h.opcode < 8:
            if h.fin:
                self.in_fragmented = False
                self.messages += 1
            else:
                self.in_fragmented = True

    def _end_frame(self) -> None:
        if self._capture is not None:
            h = self.header
            payload = bytes(self._capture)
            self.close_payload = mask_bytes(payload, h.mask) if h is not None and h.masked else payload
            self._capture = None


def encode_frame(opcode: int, payload: bytes | bytearray | memoryview = b"", fin: bool = True,
                 mask: bool = False, rsv: int = 0) -> bytes:
    """One frame. `mask=True` for frames sent towards a server (RFC 6455 §5.3)."""
    b0 = (0x80 if fin else 0) | (rsv & 0x70) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + bytes(payload)
    key = os.urandom(4)
    return head + key + mask_bytes(payload, key)


def close_frame(code: int | None, reason: str = "", mask: bool = False) -> bytes:
    """A close frame; `code=None` sends an empty one (no status code)."""
    payload = b"" if code is None else struct.pack("!H", code) + reason.encode()[:123]
    return encode_frame(CLOSE, payload, True, mask)


class MessageAssembler:
    """Rebuilds whole data messages (unmasked payload) from pieces of data frames.

    Control frames must not be fed (the caller passes them through); only used while
    a message-aware fault might act on the current message."""

    def __init__(self) -> None:
        self.cur: bytearray | None = None
        self.cur_opcode = 0
        self.cur_rsv = 0
        self.sizes: list[int] = []  # payload size of each fragment of the current message
        self._frame = bytearray()
        self._header: Header | None = None

    def feed(self, p: Piece) -> Iterator[tuple[int, bytes, list[int], int]]:
        """Yields (opcode, payload, fragment sizes, rsv) when a message completes."""
        data = p.data
        if p.header is not None:
            self._header = p.header
            self._frame = bytearray()
            data = data[p.header.size:]
        self._frame += data
        if not p.frame_end:
            return
        h = self._header
        assert h is not None
        payload = mask_bytes(self._frame, h.mask) if h.masked else bytes(self._frame)
        self._frame = bytearray()
        if h.opcode != CONT or self.cur is None:  # a continuation without a start: keep it anyway
            self.cur = bytearray()
            self.cur_opcode = h.opcode if h.opcode != CONT else BINARY
            self.cur_rsv = h.rsv
            self.sizes = []
        self.cur += payload
        self.sizes.append(len(payload))
        if h.fin:
            msg, self.cur = bytes(self.cur), None
            yield self.cur_opcode, msg, self.sizes, self.cur_rsv

    def reset(self) -> None:
        self.cur = None
        self._frame = bytearray()
        self._header = None
