"""Binary messages: 1 type byte + big-endian int64 timestamp (µs) + payload."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import ProtocolError

HEADER = struct.Struct(">Bq")
HEADER_SIZE = HEADER.size  # 9

PLAYER_AUDIO = 4
ARTWORK_CHANNEL_0 = 8
VISUALIZER_DATA = 16


@dataclass(frozen=True, slots=True)
class BinaryMessage:
    type: int
    timestamp_us: int
    payload: bytes | memoryview

    @property
    def role(self) -> str:
        return binary_role(self.type)

    @property
    def slot(self) -> int:
        return binary_slot(self.type)


def encode_binary(message_type: int, timestamp_us: int, payload: bytes | memoryview = b"") -> bytes:
    if not 0 <= message_type <= 255:
        raise ProtocolError("binary", "type", f"must be a uint8, got {message_type}")
    if not -(2**63) <= timestamp_us < 2**63:
        raise ProtocolError("binary", "timestamp", f"must fit an int64, got {timestamp_us}")
    return HEADER.pack(message_type, timestamp_us) + payload


def decode_binary(data: bytes | memoryview) -> BinaryMessage:
    if len(data) < HEADER_SIZE:
        raise ProtocolError(
            "binary", "header", f"needs {HEADER_SIZE} bytes (type + int64 timestamp), got {len(data)}"
        )
    message_type, timestamp = HEADER.unpack_from(data)
    return BinaryMessage(message_type, timestamp, memoryview(data)[HEADER_SIZE:])


def binary_role(message_type: int) -> str:
    """Which role family a binary id belongs to (spec: Binary Message ID Structure)."""
    if 4 <= message_type <= 7:
        return "player"
    if 8 <= message_type <= 11:
        return "artwork"
    if 16 <= message_type <= 23:
        return "visualizer"
    if message_type >= 192:
        return "application"
    return "reserved"


def binary_slot(message_type: int) -> int:
    """Slot within the role: bits 2-0 for the expanded visualizer range, else bits 1-0."""
    return message_type & 0b111 if binary_role(message_type) == "visualizer" else message_type & 0b11


def artwork_type(channel: int) -> int:
    if not 0 <= channel <= 3:
        raise ProtocolError("binary", "type", f"artwork channel must be 0..3, got {channel}")
    return ARTWORK_CHANNEL_0 + channel


def fragment(data: bytes | memoryview, size: int, header: bytes = b"") -> list[bytes | memoryview]:
    """Split the message `header + data` into WebSocket fragment payloads of at
    most `size` bytes. Only the first fragment is a copy; the rest are views of
    `data`, so a large shared payload is never duplicated per send."""
    if size <= len(header):
        raise ValueError(f"fragment size must exceed the header ({len(header)} bytes), got {size}")
    view = memoryview(data)
    first = size - len(header)
    head: bytes | memoryview = header + view[:first] if header else view[:first]
    return [head, *(view[i : i + size] for i in range(first, len(view), size))]
