"""Synthetic artwork of a configured size in bytes (large sends on demand).

Real, decodable images: BMP (24-bit, uncompressed) and PNG (zlib level 0), so
the byte size follows the pixel count. JPEG requests are answered with PNG and
say so in stream/start (we ship no JPEG encoder).
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass
from functools import cache

import numpy as np

WIDTH = 1024


@dataclass(frozen=True)
class Image:
    format: str
    width: int
    height: int
    data: bytes
    sha256: str


def _pixels(width: int, height: int) -> np.ndarray:
    # uint8 arithmetic wraps mod 256 and broadcasts rows against columns: only the image
    # itself is allocated (int64 grids cost a 32 MiB artwork ~0.7 GiB and 1.6 s per worker)
    x = (np.arange(width) & 0xFF).astype(np.uint8)
    y = (np.arange(height) & 0xFF).astype(np.uint8)
    pixels = np.empty((height, width, 3), np.uint8)
    np.add((x * np.uint8(7))[None, :], y[:, None], out=pixels[..., 0])
    pixels[..., 1] = (y * np.uint8(3))[:, None]
    np.bitwise_xor(x[None, :], y[:, None], out=pixels[..., 2])
    return pixels


def _bmp(pixels: np.ndarray) -> bytes:
    height, width, _ = pixels.shape
    row = width * 3
    pad = (-row) % 4
    body = np.pad(pixels[::-1, :, ::-1].reshape(height, row), ((0, 0), (0, pad))).tobytes()
    header = struct.pack("<2sIHHI", b"BM", 54 + len(body), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(body), 2835, 2835, 0, 0)
    return header + info + body


def _png(pixels: np.ndarray) -> bytes:
    height, width, _ = pixels.shape
    raw = np.concatenate([np.zeros((height, 1), np.uint8), pixels.reshape(height, width * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(raw.tobytes(), 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def make_image(format: str, size_bytes: int) -> Image:
    """An image of about `size_bytes` (whole rows of WIDTH pixels, at least one)."""
    return _make_image("bmp" if format == "bmp" else "png", size_bytes)


@cache
def _make_image(served: str, size_bytes: int) -> Image:
    height = max(1, -(-size_bytes // (WIDTH * 3)))
    pixels = _pixels(WIDTH, height)
    data = _bmp(pixels) if served == "bmp" else _png(pixels)
    return Image(served, WIDTH, height, data, hashlib.sha256(data).hexdigest())
