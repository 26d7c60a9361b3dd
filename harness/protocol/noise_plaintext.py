"""What one decrypted message of the `noise` revision holds (spec `messaging.md`,
"Binary Message ID Structure"; `roles/player/v1.md`, "Audio Chunks").

Byte 0 is the message type:

| type | what follows |
|---|---|
| 0 | a JSON message body (UTF-8) |
| 1 | a fragment (`fragments.py`), never a message of its own |
| 4 | player audio: int64 timestamp (µs), uint32 `send_ahead` (µs), both big-endian, then the audio |
| 8-11 | artwork, channels 0-3 (announce / part / cancel: `roles/artwork/v1.md`) |
| 16-23 | visualizer |

`send_ahead` is the lead the server had when it sent the chunk, `timestamp -
transmit time`, saturating: 0 when sent at or after `timestamp`, 4294967295 when
the lead does not fit (about 71 minutes). Both are "no lead measured".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import ProtocolError

JSON_BODY = 0
PLAYER_AUDIO = 4
AUDIO_HEADER = struct.Struct(">BqI")  # type, int64 timestamp, uint32 send_ahead
AUDIO_HEADER_SIZE = AUDIO_HEADER.size  # 13
SEND_AHEAD_MAX = 2**32 - 1


def saturate_send_ahead(timestamp_us: int, transmit_us: int) -> int:
    """`timestamp - transmit`, clamped to 0 .. 4294967295 (player/v1.md: saturates, never wraps)."""
    lead = timestamp_us - transmit_us
    if lead <= 0:
        return 0
    return min(lead, SEND_AHEAD_MAX)


def encode_audio(timestamp_us: int, send_ahead_us: int, audio: bytes | memoryview) -> bytes:
    """The whole plaintext of one audio chunk: the 13-byte header, then the audio."""
    if not -(2**63) <= timestamp_us < 2**63:
        raise ProtocolError("binary", "timestamp", f"must fit an int64, got {timestamp_us}")
    if not 0 <= send_ahead_us <= SEND_AHEAD_MAX:
        raise ProtocolError("binary", "send_ahead", f"must fit a uint32 (saturate it), got {send_ahead_us}")
    return AUDIO_HEADER.pack(PLAYER_AUDIO, timestamp_us, send_ahead_us) + audio


def stamp_send_ahead(plaintext: bytes, transmit_us: int) -> bytearray:
    """A copy of an audio plaintext with `send_ahead` set for a transmission at `transmit_us`."""
    out = bytearray(plaintext)
    (timestamp,) = struct.unpack_from(">q", out, 1)
    struct.pack_into(">I", out, 9, saturate_send_ahead(timestamp, transmit_us))
    return out


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """A decoded player audio chunk (type 4)."""

    type: int
    timestamp_us: int
    send_ahead_us: int
    payload: bytes | memoryview

    @property
    def lead_measured(self) -> bool:
        """False for the two saturation values: not a delay sample (player/v1.md)."""
        return 0 < self.send_ahead_us < SEND_AHEAD_MAX

    @property
    def role(self) -> str:
        return "player"


@dataclass(frozen=True, slots=True)
class RawBinary:
    """A binary message this layer does not parse further (artwork, visualizer,
    application roles, reserved ids): its type byte and the bytes after it."""

    type: int
    data: bytes | memoryview


def decode_audio(message_type: int, payload: bytes | memoryview) -> AudioChunk:
    """A type-4 message from the bytes after its type byte."""
    if len(payload) < AUDIO_HEADER_SIZE - 1:
        raise ProtocolError("binary", "header",
                            f"player audio needs a {AUDIO_HEADER_SIZE}-byte header (type, int64 timestamp, "
                            f"uint32 send_ahead), got {1 + len(payload)} bytes")
    timestamp, send_ahead = struct.unpack_from(">qI", payload)
    return AudioChunk(message_type, timestamp, send_ahead, memoryview(payload)[AUDIO_HEADER_SIZE - 1 :])
