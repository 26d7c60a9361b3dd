"""The reference audio signal: every sample carries its own absolute index.

For sample (frame) index n and bit depth b (16 or 24), channel 0 holds
``n mod 2**b`` and channel 1 holds ``(n >> b) mod 2**b``, each written as the
little-endian two's-complement PCM integer with those bits (the spec's PCM
convention). Further channels hold 0. A stereo receiver therefore reads the
exact index of every sample (2**32 samples = 24.8 h at 48 kHz with 16 bits);
a mono receiver reads ``n mod 2**b`` and resolves the high part from a nearby
estimate (`unwrap`). Gaps, duplicates and reordering become exact counts.
"""

from __future__ import annotations

import numpy as np

SUPPORTED_BIT_DEPTHS = (16, 24)


def _check(channels: int, bit_depth: int) -> None:
    if bit_depth not in SUPPORTED_BIT_DEPTHS:
        raise ValueError(f"watermark bit_depth must be one of {SUPPORTED_BIT_DEPTHS}, got {bit_depth}")
    if channels < 1:
        raise ValueError(f"watermark channels must be >= 1, got {channels}")


def encode(start_index: int, frames: int, channels: int, bit_depth: int) -> bytes:
    """PCM bytes for frames start_index .. start_index+frames-1."""
    _check(channels, bit_depth)
    n = np.arange(start_index, start_index + frames, dtype=np.int64)
    mask = (1 << bit_depth) - 1
    samples = np.zeros((frames, channels), dtype=np.uint32)
    samples[:, 0] = n & mask
    if channels > 1:
        samples[:, 1] = (n >> bit_depth) & mask
    if bit_depth == 16:
        return samples.astype("<u2").tobytes()
    # 24-bit: the low three bytes of each little-endian uint32.
    return samples.astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()


def decode(data: bytes | memoryview, channels: int, bit_depth: int) -> np.ndarray:
    """Per-frame index: exact for >= 2 channels, ``n mod 2**bit_depth`` for mono."""
    _check(channels, bit_depth)
    width = bit_depth // 8
    frame_bytes = width * channels
    if len(data) % frame_bytes:
        raise ValueError(f"PCM payload of {len(data)} bytes is not a whole number of {frame_bytes}-byte frames")
    if bit_depth == 16:
        samples = np.frombuffer(data, dtype="<u2").reshape(-1, channels).astype(np.int64)
    else:
        raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3)
        packed = raw[:, 0].astype(np.int64) | (raw[:, 1].astype(np.int64) << 8) | (raw[:, 2].astype(np.int64) << 16)
        samples = packed.reshape(-1, channels)
    index = samples[:, 0].copy()
    if channels > 1:
        index |= samples[:, 1] << bit_depth
    return index


def unwrap(low: int, estimate: int, bit_depth: int) -> int:
    """The index congruent to `low` modulo 2**bit_depth nearest to `estimate`."""
    period = 1 << bit_depth
    base = estimate - (estimate - low) % period
    return base + period if estimate - base > period // 2 else base
