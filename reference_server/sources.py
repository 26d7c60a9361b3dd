"""Audio sources: the timeline's samples, decoded or generated once, and
rendering them into the formats we serve."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Protocol

import numpy as np

from harness.protocol import watermark


class Source(Protocol):
    """Produces the timeline's samples once, as `canonical` bytes; `render`
    turns those into any served format (in whichever process serves it)."""

    sample_rate: int
    description: str
    kind: str  # tells render() how to read canonical bytes

    def canonical(self, start_frame: int, frames: int) -> bytes: ...


class WatermarkSource:
    """Every sample carries its absolute index (harness/protocol/watermark.py).
    The index is the whole signal, so the canonical form is empty: each
    format is rendered straight from the frame range."""

    description = "watermark"
    kind = "watermark"

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate

    def canonical(self, start_frame: int, frames: int) -> bytes:
        return b""


class WavSource:
    """A PCM WAV file, decoded once at start, looped. Canonical form:
    interleaved int32 samples at full scale."""

    def __init__(self, path: Path) -> None:
        with wave.open(str(path), "rb") as wav:
            if wav.getcomptype() != "NONE":
                raise ValueError(f"{path}: only uncompressed PCM WAV is supported, got {wav.getcomptype()}")
            width = wav.getsampwidth()
            if width not in (2, 3):
                raise ValueError(f"{path}: sample width must be 16 or 24 bit, got {8 * width}")
            self.sample_rate = wav.getframerate()
            channels = wav.getnchannels()
            raw = wav.readframes(wav.getnframes())
        if not raw:
            raise ValueError(f"{path}: no audio frames")
        if width == 2:
            samples = np.frombuffer(raw, dtype="<i2").astype(np.int32) << 16
        else:
            b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
            samples = (b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24)
        self._samples = samples.reshape(-1, channels)
        self.description = f"wav:{path.name}"
        self.kind = f"pcm32/{channels}"

    def canonical(self, start_frame: int, frames: int) -> bytes:
        idx = np.arange(start_frame, start_frame + frames) % len(self._samples)
        return self._samples[idx].astype("<i4").tobytes()


def render(kind: str, canonical: bytes, start_frame: int, frames: int, channels: int, bit_depth: int) -> bytes:
    """Served PCM (little-endian signed, 16 or 24 bit) from a source's canonical bytes."""
    if bit_depth not in (16, 24):
        raise ValueError(f"bit_depth must be 16 or 24, got {bit_depth}")
    if kind == "watermark":
        return watermark.encode(start_frame, frames, channels, bit_depth)
    source_channels = int(kind.removeprefix("pcm32/"))
    block = np.frombuffer(canonical, dtype="<i4").reshape(-1, source_channels)
    if source_channels != channels:
        mono = (block.astype(np.int64).sum(axis=1) // source_channels).astype(np.int32)
        block = np.repeat(mono[:, None], channels, axis=1)
    if bit_depth == 16:
        return (block >> 16).astype("<i2").tobytes()
    return (block >> 8).astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()


def open_source(spec: str, sample_rate: int) -> Source:
    if spec == "watermark":
        return WatermarkSource(sample_rate)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--source: {spec!r} is neither 'watermark' nor an existing WAV file")
    return WavSource(path)
