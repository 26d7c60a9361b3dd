"""The seam between wire revisions. Callers hold a Profile and never look at
framing themselves, so the `noise` revision slots in beside `legacy`."""

from __future__ import annotations

from typing import Protocol

from .binary import BinaryMessage, decode_binary, encode_binary
from .codec import decode_json, encode_json
from .messages import Message

WireData = str | bytes  # str = WebSocket text message, bytes = binary message


class Profile(Protocol):
    name: str

    def encode(self, message: Message) -> WireData: ...

    def encode_binary(self, message_type: int, timestamp_us: int, payload: bytes | memoryview) -> bytes: ...

    def decode(self, data: WireData) -> Message | BinaryMessage: ...


class LegacyProfile:
    """Cleartext revision: JSON in text messages, binary = type + int64 µs + payload."""

    name = "legacy"

    def encode(self, message: Message) -> WireData:
        return encode_json(message)

    def encode_binary(self, message_type: int, timestamp_us: int, payload: bytes | memoryview) -> bytes:
        return encode_binary(message_type, timestamp_us, payload)

    def decode(self, data: WireData) -> Message | BinaryMessage:
        if isinstance(data, str):
            return decode_json(data)
        return decode_binary(data)


PROFILES: dict[str, Profile] = {"legacy": LegacyProfile()}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown protocol profile {name!r}; known: {sorted(PROFILES)}") from None
