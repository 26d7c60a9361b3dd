"""Sendspin fragments and the 13-byte audio header of the `noise` revision
(harness/protocol/fragments.py, noise_plaintext.py, noise_session.py).

Spec: `messaging.md` "Fragmentation" (65535-byte Noise messages, 16-byte tag,
type byte: at most 65518 payload bytes; `[1][flags][orig_type][data]` then
`[1][flags][data]`; flags bit 1 first, bit 0 last, bits 2-7 zero; the malformed
sequences close the connection) and `roles/player/v1.md` "Audio Chunks" (type 4,
int64 timestamp, uint32 `send_ahead`, saturating).
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise_support import handshake, pair

from harness.protocol import ConnectionFatal, ProtocolError
from harness.protocol import messages as m
from harness.protocol.fragments import (
    FIRST_DATA,
    FLAG_FIRST,
    FLAG_LAST,
    MAX_PAYLOAD,
    MAX_PLAINTEXT,
    NEXT_DATA,
    RULE_CAP,
    RULE_FIRST_IN_FLIGHT,
    RULE_NEXT_WITHOUT_FIRST,
    RULE_ORIG_TYPE_1,
    RULE_OTHER_IN_FLIGHT,
    RULE_RESERVED_FLAGS,
    Reassembler,
    fragment_count,
    fragment_plaintexts,
)
from harness.protocol.noise import AudioChunk, Identity, NoiseSession, Phase, RawBinary
from harness.protocol.noise_plaintext import (
    AUDIO_HEADER_SIZE,
    SEND_AHEAD_MAX,
    decode_audio,
    encode_audio,
    saturate_send_ahead,
    stamp_send_ahead,
)

MiB = 1024 * 1024


# --- sizes and layout ------------------------------------------------------------------------------


def test_sizes_follow_the_noise_limit() -> None:
    assert MAX_PLAINTEXT == 65535 - 16 == 65519
    assert MAX_PAYLOAD == 65518
    assert FIRST_DATA == 65516 and NEXT_DATA == 65517


@pytest.mark.parametrize("size", [0, 1, MAX_PAYLOAD])
def test_a_message_that_fits_is_not_fragmented(size: int) -> None:
    payload = os.urandom(size)
    assert list(fragment_plaintexts(0, payload)) == [b"\x00" + payload]
    assert fragment_count(size) == 1


def test_fragment_layout_byte_by_byte() -> None:
    payload = os.urandom(MAX_PAYLOAD + 1 + NEXT_DATA)  # first, one full middle... then the rest
    plaintexts = list(fragment_plaintexts(16, payload))
    assert len(plaintexts) == fragment_count(len(payload)) == 3
    first, middle, last = plaintexts
    assert first[:3] == bytes([1, FLAG_FIRST, 16]) and len(first) == MAX_PLAINTEXT
    assert middle[:2] == bytes([1, 0]) and len(middle) == MAX_PLAINTEXT
    assert last[:2] == bytes([1, FLAG_LAST])
    assert first[3:] + middle[2:] + last[2:] == payload
    assert all(len(p) <= MAX_PLAINTEXT for p in plaintexts)


def test_a_sender_never_uses_orig_type_1() -> None:
    with pytest.raises(ProtocolError, match="orig_type"):
        list(fragment_plaintexts(1, b"x" * 70_000))


@settings(max_examples=40, deadline=None)
@given(size=st.one_of(st.integers(0, 3 * MAX_PAYLOAD),
                      st.sampled_from([MAX_PAYLOAD - 1, MAX_PAYLOAD, MAX_PAYLOAD + 1, FIRST_DATA + NEXT_DATA,
                                       FIRST_DATA + NEXT_DATA + 1])),
       message_type=st.integers(0, 255).filter(lambda t: t != 1))
def test_reassembly_round_trip(size: int, message_type: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    reassembler = Reassembler()
    results = [reassembler.feed(p) for p in fragment_plaintexts(message_type, payload)]
    assert results[:-1] == [None] * (len(results) - 1)
    assert results[-1] == (message_type, payload)
    assert not reassembler.in_flight


# --- every malformed sequence the spec names -------------------------------------------------------

FIRST = bytes([1, FLAG_FIRST, 0]) + b"a"
NEXT = bytes([1, 0]) + b"b"
LAST = bytes([1, FLAG_LAST]) + b"c"
PLAIN = b"\x00{}"


@pytest.mark.parametrize(("sequence", "rule"), [
    ([FIRST, FIRST], RULE_FIRST_IN_FLIGHT),
    ([FIRST, NEXT, bytes([1, FLAG_FIRST | FLAG_LAST, 0])], RULE_FIRST_IN_FLIGHT),
    ([NEXT], RULE_NEXT_WITHOUT_FIRST),
    ([LAST], RULE_NEXT_WITHOUT_FIRST),
    ([FIRST, LAST, LAST], RULE_NEXT_WITHOUT_FIRST),
    ([FIRST, PLAIN], RULE_OTHER_IN_FLIGHT),
    ([FIRST, NEXT, b"\x04" + bytes(12)], RULE_OTHER_IN_FLIGHT),
    *[([bytes([1, FLAG_FIRST | (1 << bit), 0])], RULE_RESERVED_FLAGS) for bit in range(2, 8)],
    ([FIRST, bytes([1, 0x80])], RULE_RESERVED_FLAGS),
    ([bytes([1, FLAG_FIRST, 1]) + b"x"], RULE_ORIG_TYPE_1),
    ([bytes([1, FLAG_FIRST | FLAG_LAST, 1])], RULE_ORIG_TYPE_1),
])
def test_malformed_sequences_are_refused(sequence: list[bytes], rule: str) -> None:
    reassembler = Reassembler()
    *prefix, bad = sequence
    for plaintext in prefix:
        reassembler.feed(plaintext)
    with pytest.raises(ProtocolError) as info:
        reassembler.feed(bad)
    assert rule in info.value.rule


@pytest.mark.parametrize(("sequence", "rule"), [
    ([FIRST, FIRST], RULE_FIRST_IN_FLIGHT),
    ([NEXT], RULE_NEXT_WITHOUT_FIRST),
    ([FIRST, PLAIN], RULE_OTHER_IN_FLIGHT),
    ([bytes([1, FLAG_FIRST | 0x04, 0])], RULE_RESERVED_FLAGS),
    ([bytes([1, FLAG_FIRST, 1])], RULE_ORIG_TYPE_1),
])
def test_a_malformed_sequence_closes_the_session(sequence: list[bytes], rule: str) -> None:
    """Through real encryption: the session refuses with ConnectionFatal and is CLOSED."""
    server, client = pair()
    *prefix, bad = [server._encrypt(p) for p in sequence]
    for wire in prefix:
        assert client.decode(wire) is None
    with pytest.raises(ConnectionFatal) as info:
        client.decode(bad)
    assert rule in info.value.rule and client.phase is Phase.CLOSED


def test_a_single_fragment_with_both_flags_is_a_whole_message() -> None:
    assert Reassembler().feed(bytes([1, FLAG_FIRST | FLAG_LAST, 8]) + b"img") == (8, b"img")


def test_empty_fragments_are_allowed() -> None:
    reassembler = Reassembler()
    assert reassembler.feed(bytes([1, FLAG_FIRST, 0])) is None
    assert reassembler.feed(bytes([1, 0])) is None
    assert reassembler.feed(bytes([1, FLAG_LAST]) + b"{}") == (0, b"{}")


def test_the_reassembly_cap() -> None:
    payload = bytes(200_000)
    at_cap = Reassembler(cap=len(payload))
    assert [r for r in (at_cap.feed(p) for p in fragment_plaintexts(192, payload)) if r] == [(192, payload)]
    over = Reassembler(cap=len(payload) - 1)
    with pytest.raises(ProtocolError, match=RULE_CAP):
        for plaintext in fragment_plaintexts(192, payload):
            over.feed(plaintext)
    assert not over.in_flight and over.buffered == 0  # the buffer is dropped, not kept


def test_the_reassembly_cap_closes_the_session() -> None:
    server = NoiseSession("server", Identity.generate())
    client = NoiseSession("client", Identity.generate(), reassembly_cap=100_000)
    handshake(server, client)
    with pytest.raises(ConnectionFatal, match="reassembly cap"):
        for wire in server.encode_raw(192, bytes(150_000)):
            client.decode(wire)
    assert client.phase is Phase.CLOSED


# --- large messages through the session ------------------------------------------------------------


@pytest.mark.parametrize("suite", ["25519_ChaChaPoly_SHA256", "25519_AESGCM_SHA256"])
def test_a_message_over_1_mib_round_trips_byte_identical(suite: str) -> None:
    server, client = pair(suite)
    image = os.urandom(MiB + 12_345)
    wires = server.encode_raw(8, image)
    assert len(wires) == fragment_count(len(image)) == 17
    assert all(isinstance(w, bytes) and len(w) <= 65535 for w in wires)
    results = [client.decode(w) for w in wires]
    assert results[:-1] == [None] * 16
    last = results[-1]
    assert isinstance(last, RawBinary) and last.type == 8 and bytes(last.data) == image
    # JSON as well: a 1.5 MiB _harness/error (any message: fragments carry type 0 too).
    big = m.HarnessError(message_type="x", field="y", rule="z" * (3 * MiB // 2))
    wires = client.encode_messages(big)
    assert len(wires) > 1
    assert [server.decode(w) for w in wires][-1] == big
    assert client.encoded_size(big) == sum(len(w) for w in wires)
    with pytest.raises(ProtocolError, match="encode_messages"):
        client.encode(big)


def test_audio_larger_than_one_transport_message_is_fragmented() -> None:
    server, client = pair()
    pcm = os.urandom(100_000)
    prepared = encode_audio(5_000_000, 0, pcm)
    messages = server.audio_messages(prepared, transmit_us=4_000_000)
    assert len(messages) == 2
    assert client.decode(messages[0]) is None
    chunk = client.decode(messages[1])
    assert isinstance(chunk, AudioChunk) and bytes(chunk.payload) == pcm and chunk.send_ahead_us == 1_000_000


# --- the 13-byte audio header --------------------------------------------------------------------


def test_audio_header_layout_byte_by_byte() -> None:
    data = encode_audio(0x0102030405060708, 0x0A0B0C0D, b"pcm")
    assert AUDIO_HEADER_SIZE == 13
    assert data == b"\x04" + bytes([1, 2, 3, 4, 5, 6, 7, 8]) + bytes([0x0A, 0x0B, 0x0C, 0x0D]) + b"pcm"
    chunk = decode_audio(data[0], data[1:])
    assert (chunk.type, chunk.timestamp_us, chunk.send_ahead_us, bytes(chunk.payload)) == (
        4, 0x0102030405060708, 0x0A0B0C0D, b"pcm")
    negative = encode_audio(-1, 0, b"")
    assert negative[1:9] == b"\xff" * 8 and decode_audio(4, negative[1:]).timestamp_us == -1


@pytest.mark.parametrize(("timestamp", "transmit", "expected"), [
    (1_000_000, 750_000, 250_000),
    (1_000_000, 999_999, 1),
    (1_000_000, 1_000_000, 0),  # at the timestamp: 0
    (1_000_000, 1_000_001, 0),  # after it: 0, never negative or wrapped
    (0, 2**40, 0),
    (SEND_AHEAD_MAX, 0, SEND_AHEAD_MAX),
    (SEND_AHEAD_MAX + 1, 0, SEND_AHEAD_MAX),  # too far ahead: 4294967295, never wrapped
    (2**62, -(2**62), SEND_AHEAD_MAX),
])
def test_send_ahead_saturates(timestamp: int, transmit: int, expected: int) -> None:
    assert saturate_send_ahead(timestamp, transmit) == expected
    stamped = stamp_send_ahead(encode_audio(timestamp, 0, b"x"), transmit)
    assert struct.unpack(">I", stamped[9:13])[0] == expected
    assert decode_audio(4, bytes(stamped[1:])).lead_measured == (0 < expected < SEND_AHEAD_MAX)


def test_audio_header_bounds() -> None:
    with pytest.raises(ProtocolError, match="uint32"):
        encode_audio(0, SEND_AHEAD_MAX + 1, b"")
    with pytest.raises(ProtocolError, match="uint32"):
        encode_audio(0, -1, b"")
    with pytest.raises(ProtocolError, match="int64"):
        encode_audio(2**63, 0, b"")
    for short in range(12):
        with pytest.raises(ProtocolError, match="13-byte header"):
            decode_audio(4, bytes(short))
    assert decode_audio(4, bytes(12)).payload.nbytes == 0


def test_a_9_byte_legacy_header_is_not_accepted_as_audio() -> None:
    """FACTS: aiosendspin 10.2.1's client misreads a legacy 9-byte header. Ours refuses
    a message too short for 13 bytes, and reads bytes 9-12 as send_ahead, not audio."""
    server, client = pair()
    (wire,) = server.encode_raw(4, struct.pack(">q", 123))  # type + int64 timestamp only
    with pytest.raises(ProtocolError, match="13-byte header"):
        client.decode(wire)


# --- fuzz: a peer's bytes never raise anything but ProtocolError -----------------------------------


@settings(max_examples=150, deadline=None)
@given(plaintexts=st.lists(st.one_of(
    st.binary(max_size=40),
    st.tuples(st.sampled_from([0, 1, 4, 8, 16, 192]), st.integers(0, 255), st.binary(max_size=30)).map(
        lambda t: bytes([t[0], t[1]]) + t[2]),
    st.sampled_from([b'\x00{"type":"server/activate","payload":{"activities":["x"]}}', b"\x00\xff\xfe",
                     b'\x00{"type":"noise/handshake","payload":{"data":"@@"}}', b"\x00[" * 30])),
    min_size=1, max_size=6))
def test_decoding_any_plaintext_raises_only_protocol_errors(plaintexts: list[bytes]) -> None:
    server, client = pair()
    for plaintext in plaintexts:
        wire = server._encrypt(plaintext)
        try:
            client.decode(wire)
        except ProtocolError:
            if client.phase is Phase.CLOSED:
                return
