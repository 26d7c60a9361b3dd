"""Binary messages: header layout, role/slot ids, artwork ids, fragmentation.

Spec: byte 0 uint8 type, bytes 1-8 big-endian int64 timestamp (µs), rest payload;
"Binary Message ID Structure" for the id -> role/slot mapping.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from harness.protocol import (
    ARTWORK_CHANNEL_0,
    HEADER_SIZE,
    PLAYER_AUDIO,
    VISUALIZER_DATA,
    BinaryMessage,
    ProtocolError,
    artwork_type,
    binary_role,
    binary_slot,
    decode_binary,
    encode_binary,
    encode_json,
    fragment,
    get_profile,
)
from harness.protocol import messages as m
from harness.protocol.wsframes import BINARY, encode_frame, parse_header

PHASES = (Phase.explicit, Phase.generate, Phase.shrink)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


# --- header layout ---------------------------------------------------------------------------


def test_constants_match_the_spec() -> None:
    assert HEADER_SIZE == 9
    assert PLAYER_AUDIO == 4
    assert ARTWORK_CHANNEL_0 == 8
    assert VISUALIZER_DATA == 16


def test_header_layout_byte_by_byte() -> None:
    data = encode_binary(4, 0x0102030405060708, b"xyz")
    assert data == b"\x04\x01\x02\x03\x04\x05\x06\x07\x08xyz"
    assert data[0] == 4
    assert data[1:9] == bytes([1, 2, 3, 4, 5, 6, 7, 8])  # big-endian: most significant byte first
    assert data[9:] == b"xyz"


TIMESTAMP_HEADERS = [
        (0, b"\x00" * 8),
        (1, b"\x00" * 7 + b"\x01"),
        (256, b"\x00" * 6 + b"\x01\x00"),
        (-1, b"\xff" * 8),
        (-2, b"\xff" * 7 + b"\xfe"),
        (-256, b"\xff" * 6 + b"\xff\x00"),
        (INT64_MAX, b"\x7f" + b"\xff" * 7),
        (INT64_MIN, b"\x80" + b"\x00" * 7),
        (1_700_000_000_000_000, bytes.fromhex("00060A24181E4000")),  # a µs epoch-ish value
]


def test_timestamp_is_big_endian_signed_int64() -> None:
    for timestamp, header in TIMESTAMP_HEADERS:
        data = encode_binary(16, timestamp)
        assert data == b"\x10" + header
        decoded = decode_binary(data)
        assert decoded.timestamp_us == timestamp
        assert decoded.type == 16
        assert bytes(decoded.payload) == b""


@settings(max_examples=200, deadline=None, phases=PHASES)
@given(st.integers(0, 255), st.integers(INT64_MIN, INT64_MAX), st.binary(max_size=64))
def test_round_trip_hypothesis(message_type: int, timestamp: int, payload: bytes) -> None:
    data = encode_binary(message_type, timestamp, payload)
    assert isinstance(data, bytes)
    assert len(data) == HEADER_SIZE + len(payload)
    assert data[0] == message_type
    assert int.from_bytes(data[1:9], "big", signed=True) == timestamp
    assert data[9:] == payload
    decoded = decode_binary(data)
    assert decoded == BinaryMessage(message_type, timestamp, decoded.payload)
    assert (decoded.type, decoded.timestamp_us) == (message_type, timestamp)
    assert isinstance(decoded.payload, memoryview)
    assert decoded.payload.tobytes() == payload
    # memoryview input decodes the same, and a memoryview payload encodes the same.
    again = decode_binary(memoryview(data))
    assert (again.type, again.timestamp_us, again.payload.tobytes()) == (message_type, timestamp, payload)
    assert encode_binary(message_type, timestamp, memoryview(payload)) == data


def test_payload_is_a_zero_copy_view() -> None:
    buffer = bytearray(encode_binary(4, 7, b"abcd"))
    decoded = decode_binary(buffer)
    assert isinstance(decoded.payload, memoryview)
    assert decoded.payload.nbytes == 4
    buffer[HEADER_SIZE] = ord("Z")
    assert decoded.payload.tobytes() == b"Zbcd"  # it views the input, it did not copy it


def test_header_only_message_has_empty_payload() -> None:
    """Spec: an artwork message with no image data clears the channel."""
    data = encode_binary(artwork_type(2), 99)
    assert len(data) == HEADER_SIZE
    decoded = decode_binary(data)
    assert decoded.type == 10
    assert decoded.payload.tobytes() == b""
    assert len(decoded.payload) == 0


def test_decode_short_message_names_the_header_rule() -> None:
    for length in range(HEADER_SIZE):
        data = encode_binary(4, 123, b"payload")[:length]
        with pytest.raises(ProtocolError) as info:
            decode_binary(data)
        err = info.value
        assert err.message_type == "binary"
        assert err.field == "header"
        assert "9 bytes" in err.rule
        assert f"got {length}" in err.rule
        assert str(err) == f"binary.header: {err.rule}"
        with pytest.raises(ProtocolError):
            decode_binary(memoryview(data))


def test_encode_rejects_non_uint8_type() -> None:
    for message_type in (-1, 256, 1000, -(2**40)):
        with pytest.raises(ProtocolError) as info:
            encode_binary(message_type, 0, b"")
        assert info.value.message_type == "binary"
        assert info.value.field == "type"
        assert f"got {message_type}" in info.value.rule


def test_encode_accepts_the_whole_uint8_range() -> None:
    for message_type in range(256):
        assert encode_binary(message_type, 0)[0] == message_type


# --- Binary Message ID Structure ---------------------------------------------------------------


def _spec_role_and_slot(message_id: int) -> tuple[str, int]:
    """The spec's table, written from its bit patterns."""
    role_bits = message_id >> 2  # bits 7-2
    if role_bits == 0b000000:  # 000000xx (0-3)
        return "reserved", message_id & 0b11
    if role_bits == 0b000001:  # 000001xx (4-7)
        return "player", message_id & 0b11
    if role_bits == 0b000010:  # 000010xx (8-11)
        return "artwork", message_id & 0b11
    if role_bits == 0b000011:  # 000011xx (12-15), reserved for a future role
        return "reserved", message_id & 0b11
    if message_id >> 3 == 0b00010:  # 00010xxx (16-23): expanded allocation, bits 2-0
        return "visualizer", message_id & 0b111
    if 6 <= role_bits <= 47:  # ids 24-191
        return "reserved", message_id & 0b11
    assert 48 <= role_bits <= 63  # ids 192-255, application-specific roles
    return "application", message_id & 0b11


def test_role_and_slot_for_every_id() -> None:
    mismatches = []
    for message_id in range(256):
        expected = _spec_role_and_slot(message_id)
        got = (binary_role(message_id), binary_slot(message_id))
        if got != expected:
            mismatches.append((message_id, got, expected))
        message = decode_binary(encode_binary(message_id, 0))
        assert (message.role, message.slot) == expected
    assert not mismatches


SPOT_CHECKS = [
        (0, "reserved", 0), (3, "reserved", 3),
        (4, "player", 0), (5, "player", 1), (7, "player", 3),
        (8, "artwork", 0), (9, "artwork", 1), (10, "artwork", 2), (11, "artwork", 3),
        (12, "reserved", 0), (15, "reserved", 3),
        (16, "visualizer", 0), (19, "visualizer", 3), (20, "visualizer", 4), (23, "visualizer", 7),
        (24, "reserved", 0), (191, "reserved", 3),
        (192, "application", 0), (193, "application", 1), (255, "application", 3),
]


def test_role_and_slot_spot_checks() -> None:
    assert [(i, binary_role(i), binary_slot(i)) for i, _, _ in SPOT_CHECKS] == SPOT_CHECKS


def test_role_id_ranges_have_the_spec_sizes() -> None:
    counts: dict[str, int] = {}
    for message_id in range(256):
        role = binary_role(message_id)
        counts[role] = counts.get(role, 0) + 1
    assert counts == {"player": 4, "artwork": 4, "visualizer": 8, "application": 64, "reserved": 176}


def test_slots_within_a_role_are_distinct() -> None:
    by_role: dict[str, list[int]] = {}
    for message_id in range(256):
        if binary_role(message_id) in ("player", "artwork", "visualizer"):
            by_role.setdefault(binary_role(message_id), []).append(binary_slot(message_id))
    assert by_role == {"player": [0, 1, 2, 3], "artwork": [0, 1, 2, 3], "visualizer": list(range(8))}


# --- artwork ids --------------------------------------------------------------------------------


def test_artwork_type() -> None:
    assert [artwork_type(c) for c in range(4)] == [8, 9, 10, 11]
    for channel in range(4):
        assert binary_role(artwork_type(channel)) == "artwork"
        assert binary_slot(artwork_type(channel)) == channel


def test_artwork_type_out_of_bounds() -> None:
    for channel in (-1, 4, 5, 100):
        with pytest.raises(ProtocolError) as info:
            artwork_type(channel)
        assert info.value.message_type == "binary"
        assert "0..3" in info.value.rule
        assert f"got {channel}" in info.value.rule


# --- fragment ------------------------------------------------------------------------------------


def _joined(parts: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(p) for p in parts)


def test_fragment_exact_split() -> None:
    parts = fragment(b"abcdefghij", 5)
    assert [bytes(p) for p in parts] == [b"abcde", b"fghij"]
    assert all(isinstance(p, memoryview) for p in parts)  # no header: every part is a view


def test_fragment_last_part_smaller() -> None:
    parts = fragment(b"abcdefghij", 3)
    assert [bytes(p) for p in parts] == [b"abc", b"def", b"ghi", b"j"]


def test_fragment_size_at_least_length_gives_one_part() -> None:
    for size in (10, 11, 10**9):
        parts = fragment(b"abcdefghij", size)
        assert [bytes(p) for p in parts] == [b"abcdefghij"]


def test_fragment_size_one() -> None:
    assert [bytes(p) for p in fragment(b"abc", 1)] == [b"a", b"b", b"c"]


def test_fragment_empty_input_gives_one_empty_fragment() -> None:
    parts = fragment(b"", 4)
    assert len(parts) == 1
    assert bytes(parts[0]) == b""


def test_fragment_invalid_size() -> None:
    for size in (0, -1, -1000):
        with pytest.raises(ValueError, match=f"got {size}$"):
            fragment(b"abc", size)
        with pytest.raises(ValueError):
            fragment(b"", size)


def test_fragment_size_must_exceed_header() -> None:
    for header, size in [(b"123456789", 9), (b"123456789", 5), (b"h", 1), (b"h", 0)]:
        with pytest.raises(ValueError, match="header"):
            fragment(b"abc", size, header)
    assert [bytes(p) for p in fragment(b"abc", 10, b"123456789")] == [b"123456789a", b"bc"]


def test_fragment_is_zero_copy() -> None:
    data = bytearray(b"abcdef")
    parts = fragment(data, 4)
    data[5] = ord("Z")
    assert bytes(parts[1]) == b"eZ"


def test_fragment_with_header_layout() -> None:
    header = encode_binary(8, 7)  # the 9-byte binary header, sent before a shared image
    image = bytes(range(20))
    parts = fragment(image, 12, header)
    assert [bytes(p) for p in parts] == [header + image[:3], image[3:15], image[15:]]
    assert decode_binary(_joined(parts)).payload.tobytes() == image


def test_fragment_with_header_fits_in_one() -> None:
    assert [bytes(p) for p in fragment(b"abc", 12, b"HEADER")] == [b"HEADERabc"]
    assert [bytes(p) for p in fragment(b"", 12, b"HEADER")] == [b"HEADER"]
    assert [bytes(p) for p in fragment(b"abc", 7, b"HEADER")] == [b"HEADERa", b"bc"]


def test_fragment_with_header_views_the_payload_after_the_first_part() -> None:
    image = bytearray(b"0123456789abcdef")
    parts = fragment(image, 6, b"HDR")
    assert all(isinstance(p, memoryview) for p in parts[1:])
    image[-1] = ord("Z")
    assert bytes(parts[-1]).endswith(b"Z")  # a view, not a copy


@settings(max_examples=200, deadline=None, phases=PHASES)
@given(st.binary(max_size=300), st.integers(1, 100))
def test_fragment_hypothesis(data: bytes, size: int) -> None:
    parts = fragment(data, size)
    assert _joined(parts) == data
    assert len(parts) == max(1, -(-len(data) // size))
    assert all(len(p) == size for p in parts[:-1])
    assert 1 <= len(parts[-1]) <= size or data == b""
    assert _joined(fragment(memoryview(data), size)) == data


@settings(max_examples=200, deadline=None, phases=PHASES)
@given(st.binary(max_size=300), st.binary(max_size=20), st.integers(1, 100))
def test_fragment_with_header_hypothesis(data: bytes, header: bytes, extra: int) -> None:
    size = len(header) + extra  # always larger than the header
    parts = fragment(data, size, header)
    whole = header + data
    assert _joined(parts) == whole
    assert len(parts) == max(1, -(-len(whole) // size))
    assert all(len(p) == size for p in parts[:-1])
    assert 1 <= len(parts[-1]) <= size or whole == b""
    assert bytes(parts[0]).startswith(header)


# --- the legacy profile's binary side -----------------------------------------------------------


def test_legacy_profile_binary() -> None:
    codec = get_profile("legacy").session("server")
    head, body = codec.encode_binary(8, -5, b"img")
    data = head + body
    assert data == encode_binary(8, -5, b"img")
    decoded = codec.decode(data)
    assert isinstance(decoded, BinaryMessage)
    assert (decoded.type, decoded.timestamp_us, bytes(decoded.payload)) == (8, -5, b"img")
    with pytest.raises(ProtocolError):
        codec.decode(b"\x04\x00")


def test_legacy_binary_body_is_the_callers_payload_never_a_copy() -> None:
    image = bytes(300_000)
    head, body = get_profile("legacy").session("server").encode_binary(artwork_type(1), 42, image)
    assert head == encode_binary(artwork_type(1), 42)
    assert body is image


def test_legacy_audio_is_prepared_once_as_a_shared_websocket_frame() -> None:
    profile = get_profile("legacy")
    pcm = bytes(range(256)) * 20  # > 125 bytes: a 16-bit length
    frame = profile.prepare_audio(1_234_567, pcm)
    header = parse_header(frame)
    assert header is not None
    assert (header.fin, header.opcode, header.masked) == (True, BINARY, False)
    assert header.size + header.length == len(frame)
    message = decode_binary(frame[header.size:])
    assert (message.type, message.timestamp_us, bytes(message.payload)) == (PLAYER_AUDIO, 1_234_567, pcm)
    assert frame == encode_frame(BINARY, encode_binary(PLAYER_AUDIO, 1_234_567, pcm))
    for side in ("server", "client"):
        codec = profile.session(side)
        assert codec.shared_audio
        assert codec.audio_frame(frame) is frame  # every listener writes the same bytes


def test_legacy_session_codec_sizes_without_sending() -> None:
    codec = get_profile("legacy").session("server")
    message = m.ServerTime(client_transmitted=1, server_received=2, server_transmitted=3)
    assert codec.encoded_size(message) == len(codec.encode(message)) == len(encode_json(message))


def test_header_struct_is_network_order() -> None:
    """Cross-check with an independent packing of the spec layout."""
    for message_type, timestamp in [(4, 123456789), (255, -987654321), (0, INT64_MIN)]:
        assert encode_binary(message_type, timestamp) == struct.pack("!Bq", message_type, timestamp)
