"""Sendspin fragmentation of the `noise` revision (spec `messaging.md`, "Fragmentation").

One Noise transport message carries at most 65535 bytes, 16 of them the AEAD
tag, so a plaintext is at most 65519 bytes: its type byte and at most 65518
payload bytes. A larger message travels as fragments, each the plaintext of its
own transport message:

- first fragment: `[1][flags][orig_type][data]`
- later fragments: `[1][flags][data]`

`flags` bit 1 (0x02) marks the first fragment, bit 0 (0x01) the last; bits 2-7
are reserved and must be zero. The `data` of all fragments, concatenated, is
the original message's payload (what followed its type byte).

This is distinct from WebSocket fragmentation (RFC 6455 frames of one message).
Sans-I/O: plaintexts in, plaintexts out; no encryption here.
"""

from __future__ import annotations

from collections.abc import Iterator

from .errors import ProtocolError

FRAGMENT = 1
FLAG_LAST = 0x01
FLAG_FIRST = 0x02
FLAGS_RESERVED = 0xFC
TAG_SIZE = 16
MAX_TRANSPORT_MESSAGE = 65535  # one Noise message (Noise spec §3)
MAX_PLAINTEXT = MAX_TRANSPORT_MESSAGE - TAG_SIZE  # 65519: type byte + payload
MAX_PAYLOAD = MAX_PLAINTEXT - 1  # 65518 bytes after the type byte
FIRST_DATA = MAX_PAYLOAD - 2  # a first fragment's data: after flags and orig_type
NEXT_DATA = MAX_PAYLOAD - 1  # a later fragment's data: after flags
# Not in the spec: the most a receiver buffers for one fragmented message. aiosendspin
# 10.2.1 uses 64 MiB; our default matches it, and a caller may lower or raise it.
DEFAULT_REASSEMBLY_CAP = 64 * 1024 * 1024

RULE_FIRST_IN_FLIGHT = "a first fragment arrived while a fragmented message is in flight"
RULE_NEXT_WITHOUT_FIRST = "a non-first fragment arrived with no fragmented message in flight"
RULE_OTHER_IN_FLIGHT = "a non-fragment binary message arrived while a fragmented message is in flight"
RULE_RESERVED_FLAGS = "reserved flag bits 2-7 must be zero"
RULE_ORIG_TYPE_1 = "orig_type must not be 1 (fragment)"
RULE_TOO_SHORT = "a fragment needs its flags byte, and a first fragment its orig_type"
RULE_CAP = "the reassembled message exceeds the reassembly cap"


def fragment_plaintexts(message_type: int, payload: bytes | memoryview) -> Iterator[bytes]:
    """The plaintexts that carry one message of `message_type` with `payload`:
    one plaintext `[type][payload]` if it fits, else its fragments in order."""
    if not 0 <= message_type <= 255:
        raise ProtocolError("binary", "type", f"must be a uint8, got {message_type}")
    if message_type == FRAGMENT:
        raise ProtocolError("fragment", "orig_type", RULE_ORIG_TYPE_1)
    view = memoryview(payload).cast("B")
    if len(view) <= MAX_PAYLOAD:
        yield bytes([message_type]) + view
        return
    first = view[:FIRST_DATA]
    yield bytes([FRAGMENT, FLAG_FIRST, message_type]) + first
    for start in range(FIRST_DATA, len(view), NEXT_DATA):
        chunk = view[start : start + NEXT_DATA]
        last = start + NEXT_DATA >= len(view)
        yield bytes([FRAGMENT, FLAG_LAST if last else 0]) + chunk


def fragment_count(payload_size: int) -> int:
    """How many transport messages `fragment_plaintexts` makes for a payload of this size."""
    if payload_size <= MAX_PAYLOAD:
        return 1
    return 1 + -(-(payload_size - FIRST_DATA) // NEXT_DATA)


class Reassembler:
    """The receiver's single reassembly buffer (one fragmented message in flight at
    a time per direction). `feed(plaintext)` returns `(type, payload)` of a complete
    message, or None while a fragmented one is still open; a malformed sequence
    raises ProtocolError naming the rule, and the connection must be closed."""

    def __init__(self, cap: int = DEFAULT_REASSEMBLY_CAP) -> None:
        self.cap = cap
        self._type: int | None = None
        self._buffer = bytearray()

    @property
    def in_flight(self) -> bool:
        return self._type is not None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, plaintext: bytes) -> tuple[int, bytes] | None:
        if not plaintext:
            raise ProtocolError("binary", "type", "an empty plaintext has no type byte")
        if plaintext[0] != FRAGMENT:
            if self._type is not None:
                self._reset()
                raise ProtocolError("fragment", "", RULE_OTHER_IN_FLIGHT)
            return plaintext[0], plaintext[1:]
        if len(plaintext) < 2:
            self._reset()
            raise ProtocolError("fragment", "flags", RULE_TOO_SHORT)
        flags = plaintext[1]
        if flags & FLAGS_RESERVED:
            self._reset()
            raise ProtocolError("fragment", "flags", f"{RULE_RESERVED_FLAGS}, got 0x{flags:02x}")
        if flags & FLAG_FIRST:
            if self._type is not None:
                self._reset()
                raise ProtocolError("fragment", "flags", RULE_FIRST_IN_FLIGHT)
            if len(plaintext) < 3:
                raise ProtocolError("fragment", "orig_type", RULE_TOO_SHORT)
            if plaintext[2] == FRAGMENT:
                raise ProtocolError("fragment", "orig_type", RULE_ORIG_TYPE_1)
            self._type = plaintext[2]
            data = memoryview(plaintext)[3:]
        else:
            if self._type is None:
                raise ProtocolError("fragment", "flags", RULE_NEXT_WITHOUT_FIRST)
            data = memoryview(plaintext)[2:]
        if len(self._buffer) + len(data) > self.cap:
            size = len(self._buffer) + len(data)
            self._reset()
            raise ProtocolError("fragment", "", f"{RULE_CAP} ({size} > {self.cap} bytes)")
        self._buffer += data
        if not flags & FLAG_LAST:
            return None
        message_type, payload = self._type, bytes(self._buffer)
        self._reset()
        return message_type, payload

    def _reset(self) -> None:
        self._type = None
        self._buffer = bytearray()
