"""Audio sources: PCM for any frame range, in any of the formats we serve."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Protocol

import numpy as np

from harness.protocol import watermark


class Source(Protocol):
    sample_rate: int
    description: str

    def encode(self, start_frame: int, frames: int, channels: int, bit_depth: int) -> bytes: ...


class WatermarkSource:
    """Every sample carries its absolute index (harness/protocol/watermark.py)."""

    description = "watermark"

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate

    def encode(self, start_frame: int, frames: int, channels: int, bit_depth: int) -> bytes:
        return watermark.encode(start_frame, frames, channels, bit_depth)


class WavSource:
    """A PCM WAV file, looped. Samples are held as int32 at full scale."""

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

    def encode(self, start_frame: int, frames: int, channels: int, bit_depth: int) -> bytes:
        total = len(self._samples)
        idx = np.arange(start_frame, start_frame + frames) % total
        block = self._samples[idx]
        if block.shape[1] != channels:
            mono = (block.astype(np.int64).sum(axis=1) // block.shape[1]).astype(np.int32)
            block = np.repeat(mono[:, None], channels, axis=1)
        if bit_depth == 16:
            return (block >> 16).astype("<i2").tobytes()
        if bit_depth == 24:
            return (block >> 8).astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
        raise ValueError(f"bit_depth must be 16 or 24, got {bit_depth}")


def open_source(spec: str, sample_rate: int) -> Source:
    if spec == "watermark":
        return WatermarkSource(sample_rate)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--source: {spec!r} is neither 'watermark' nor an existing WAV file")
    return WavSource(path)
