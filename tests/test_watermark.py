"""The sample-index watermark: layout (spec PCM convention), round trips, wrap, unwrap."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import Phase, assume, given, settings
from hypothesis import strategies as st

from harness.protocol import decode_binary, encode_binary, watermark

PHASES = (Phase.explicit, Phase.generate, Phase.shrink)
BIT_DEPTHS = (16, 24)


def _expected_index(n: int, channels: int, bit_depth: int) -> int:
    """What decode() reports: n mod 2**b for mono, n mod 2**(2b) with two or more channels."""
    return n % (1 << (bit_depth * min(channels, 2)))


def _samples(data: bytes, channels: int, bit_depth: int) -> list[list[int]]:
    """Independent reader of the spec's PCM convention: little-endian signed two's complement."""
    width = bit_depth // 8
    values = [int.from_bytes(data[i : i + width], "little", signed=True) for i in range(0, len(data), width)]
    return [values[i : i + channels] for i in range(0, len(values), channels)]


# --- byte layout -----------------------------------------------------------------------------


LAYOUT_EXAMPLES: list[tuple[int, int, int, int, str]] = [
        (0x1234, 2, 1, 16, "3412 3512"),
        (0xFFFE, 3, 1, 16, "feff ffff 0000"),  # 16-bit wrap: 65534, 65535, 0
        (0x1FFFF, 2, 2, 16, "ffff 0100 0000 0200"),  # ch0 = low 16 bits, ch1 = next 16 bits
        (5, 1, 3, 16, "0500 0000 0000"),  # channels beyond the second hold 0
        (0x123456, 1, 1, 24, "563412"),  # 3 bytes per sample, packed
        (0xFFFFFF, 2, 1, 24, "ffffff 000000"),  # 24-bit wrap
        (0x0123456789AB, 1, 2, 24, "ab8967 452301"),
        (0, 0, 2, 16, ""),
]


def test_hand_computed_layout() -> None:
    for start, frames, channels, bit_depth, hex_bytes in LAYOUT_EXAMPLES:
        data = watermark.encode(start, frames, channels, bit_depth)
        assert data == bytes.fromhex(hex_bytes), (start, frames, channels, bit_depth)
        assert watermark.decode(data, channels, bit_depth).tolist() == [
            _expected_index(start + i, channels, bit_depth) for i in range(frames)
        ]


def test_samples_read_as_signed_little_endian() -> None:
    # 0x8000 is the most negative int16; 0xFFFF is -1; 0x7FFF the most positive.
    data = watermark.encode(0x7FFF, 3, 1, 16)
    assert data == bytes.fromhex("ff7f 0080 0180")
    assert np.frombuffer(data, dtype="<i2").tolist() == [32767, -32768, -32767]
    assert _samples(data, 1, 16) == [[32767], [-32768], [-32767]]
    data24 = watermark.encode(0x7FFFFF, 2, 1, 24)
    assert _samples(data24, 1, 24) == [[2**23 - 1], [-(2**23)]]
    assert _samples(watermark.encode(2**24 - 1, 1, 1, 24), 1, 24) == [[-1]]


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("bit_depth", BIT_DEPTHS)
def test_wrap_boundaries(channels: int, bit_depth: int) -> None:
    for boundary_exp in (1, 2):  # 2**b (mono wrap) and 2**(2b) (stereo wrap)
        boundary = 1 << (bit_depth * boundary_exp)
        start = boundary - 3
        data = watermark.encode(start, 6, channels, bit_depth)
        decoded = watermark.decode(data, channels, bit_depth).tolist()
        assert decoded == [_expected_index(n, channels, bit_depth) for n in range(start, start + 6)]
        if channels == 2 and boundary_exp == 1:
            assert decoded == list(range(start, start + 6))  # stereo is exact across the 2**b wrap
        else:
            top = (1 << (bit_depth * min(channels, 2))) - 1  # the largest index this layout can carry
            assert decoded[2:4] == [top, 0]


@settings(max_examples=300, deadline=None, phases=PHASES)
@given(
    start=st.integers(0, 2**40),
    frames=st.integers(0, 200),
    channels=st.integers(1, 3),
    bit_depth=st.sampled_from(BIT_DEPTHS),
)
def test_round_trip_hypothesis(start: int, frames: int, channels: int, bit_depth: int) -> None:
    data = watermark.encode(start, frames, channels, bit_depth)
    assert isinstance(data, bytes)
    assert len(data) == frames * channels * bit_depth // 8
    decoded = watermark.decode(data, channels, bit_depth)
    assert decoded.tolist() == [_expected_index(start + i, channels, bit_depth) for i in range(frames)]
    # Independent check of every sample against the documented layout.
    period = 1 << bit_depth
    for i, frame in enumerate(_samples(data, channels, bit_depth)):
        n = start + i
        expected = [n % period, (n >> bit_depth) % period, *[0] * (channels - 2)][:channels]
        assert [v % period for v in frame] == expected


@settings(max_examples=100, deadline=None, phases=PHASES)
@given(start=st.integers(0, 2**40), frames=st.integers(1, 50), bit_depth=st.sampled_from(BIT_DEPTHS))
def test_decode_from_a_binary_message_payload(start: int, frames: int, bit_depth: int) -> None:
    """decode() reads the (unaligned, offset 9) memoryview payload of a decoded audio chunk."""
    pcm = watermark.encode(start, frames, 2, bit_depth)
    message = decode_binary(encode_binary(4, 0, pcm))
    assert watermark.decode(message.payload, 2, bit_depth).tolist() == [
        _expected_index(start + i, 2, bit_depth) for i in range(frames)
    ]


def test_stereo_24_bit_is_exact_for_large_indices() -> None:
    start = 2**40 + 12345
    decoded = watermark.decode(watermark.encode(start, 4, 2, 24), 2, 24)
    assert decoded.tolist() == [start, start + 1, start + 2, start + 3]


# --- rejection ---------------------------------------------------------------------------------


def test_decode_rejects_partial_frames() -> None:
    cases = [(1, 16, 1), (1, 16, 3), (2, 16, 2), (2, 16, 5), (1, 24, 4), (2, 24, 3), (2, 24, 9), (3, 16, 4)]
    for channels, bit_depth, length in cases:
        with pytest.raises(ValueError, match="whole number"):
            watermark.decode(b"\x00" * length, channels, bit_depth)
        with pytest.raises(ValueError, match="whole number"):  # a valid chunk with a stray byte
            watermark.decode(watermark.encode(0, 3, channels, bit_depth) + b"\x00", channels, bit_depth)


def test_decode_accepts_empty_payload() -> None:
    assert watermark.decode(b"", 2, 24).tolist() == []


def test_unsupported_formats_are_rejected() -> None:
    for channels, bit_depth in [(1, 8), (2, 32), (1, 20), (0, 16), (-1, 24)]:
        with pytest.raises(ValueError):
            watermark.encode(0, 4, channels, bit_depth)
        with pytest.raises(ValueError):
            watermark.decode(b"\x00" * 12, channels, bit_depth)


# --- unwrap ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bit_depth", BIT_DEPTHS)
def test_unwrap_examples(bit_depth: int) -> None:
    period = 1 << bit_depth
    half = period // 2
    n = 5 * period + 100
    low = n % period
    assert watermark.unwrap(low, n, bit_depth) == n
    assert watermark.unwrap(low, n + half, bit_depth) == n  # estimate half a period late
    assert watermark.unwrap(low, n - half + 1, bit_depth) == n  # just under half a period early
    assert watermark.unwrap(low, n + half + 1, bit_depth) == n + period  # past half: the next period
    assert watermark.unwrap(low, n - half - 1, bit_depth) == n - period
    assert watermark.unwrap(3, -10, bit_depth) == 3  # estimate before zero
    assert watermark.unwrap(period - 2, 1, bit_depth) == -2


@settings(max_examples=300, deadline=None, phases=PHASES)
@given(n=st.integers(0, 2**40), bit_depth=st.sampled_from(BIT_DEPTHS), data=st.data())
def test_unwrap_within_half_a_period(n: int, bit_depth: int, data: st.DataObject) -> None:
    period = 1 << bit_depth
    error = data.draw(st.integers(-(period // 2) + 1, period // 2))  # estimate - truth
    assert watermark.unwrap(n % period, n + error, bit_depth) == n


@settings(max_examples=300, deadline=None, phases=PHASES)
@given(bit_depth=st.sampled_from(BIT_DEPTHS), estimate=st.integers(-(2**41), 2**41), data=st.data())
def test_unwrap_returns_the_nearest_congruent_index(bit_depth: int, estimate: int, data: st.DataObject) -> None:
    period = 1 << bit_depth
    low = data.draw(st.integers(0, period - 1))
    result = watermark.unwrap(low, estimate, bit_depth)
    assert result % period == low
    assert abs(result - estimate) <= period // 2


@settings(max_examples=100, deadline=None, phases=PHASES)
@given(
    start=st.integers(0, 2**40),
    frames=st.integers(1, 100),
    bit_depth=st.sampled_from(BIT_DEPTHS),
    jitter=st.integers(-1000, 1000),
)
def test_mono_receiver_recovers_exact_indices(start: int, frames: int, bit_depth: int, jitter: int) -> None:
    assume(abs(jitter) < (1 << bit_depth) // 2 - frames)
    lows = watermark.decode(watermark.encode(start, frames, 1, bit_depth), 1, bit_depth).tolist()
    assert all(0 <= v < (1 << bit_depth) for v in lows)
    recovered = [watermark.unwrap(low, start + i + jitter, bit_depth) for i, low in enumerate(lows)]
    assert recovered == list(range(start, start + frames))
