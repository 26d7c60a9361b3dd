"""Watermark source files for bench/multiworker.py (run with an interpreter that has numpy and PyAV).

Writes, if missing, a 48 kHz 16-bit stereo watermark (sample n: channel 0 =
n mod 65536, channel 1 = (n >> 16) mod 65536, as in harness/protocol/watermark.py)
of SECONDS seconds into DIR as

- wm_<S>s.wav: PCM. sendspin 7.5.0 with --workers >= 2 loses every 4th
  4096-frame packet of it (its packet stamps are truncated to whole µs);
- wm_<S>s_4608.flac: the same samples, lossless, in 4608-frame blocks (96 000 µs
  each, so nothing is truncated): the source for its 2-worker figures.

    python bench/_mw_sources.py DIR SECONDS   -> prints {"wav": PATH, "flac": PATH}
"""

from __future__ import annotations

import json
import sys
import wave
from pathlib import Path

RATE = 48_000
BLOCK = 4608
STEP = RATE * 10  # frames written per step (bounded memory)


def _samples(n0: int, count: int):
    import numpy as np

    n = np.arange(n0, n0 + count, dtype=np.int64)
    s = np.empty((count, 2), dtype="<u2")
    s[:, 0] = n & 0xFFFF
    s[:, 1] = (n >> 16) & 0xFFFF
    return s


def make_wav(path: Path, total: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        for n0 in range(0, total, STEP):
            w.writeframes(_samples(n0, min(STEP, total - n0)).tobytes())
    tmp.rename(path)


def make_flac(path: Path, total: int) -> None:
    import av

    tmp = path.with_name(path.stem + ".tmp.flac")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("flac", rate=RATE, layout="stereo")
        stream.format = "s16"
        for n0 in range(0, total, BLOCK):
            k = min(BLOCK, total - n0)
            frame = av.AudioFrame.from_ndarray(_samples(n0, k).reshape(1, -1).view("<i2"), format="s16",
                                               layout="stereo")
            frame.sample_rate = RATE
            frame.pts = n0
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    # every packet but the last must be one 4608-frame block
    with av.open(str(tmp)) as check:
        durations = {p.duration for _, p in zip(range(50), check.demux(audio=0), strict=False) if p.size}
    if durations != {BLOCK}:
        tmp.unlink()
        raise RuntimeError(f"FLAC packets of {durations} frames, expected {BLOCK}")
    tmp.rename(path)


def main() -> None:
    directory, seconds = Path(sys.argv[1]), int(sys.argv[2])
    directory.mkdir(parents=True, exist_ok=True)
    wav, flac = directory / f"wm_{seconds}s.wav", directory / f"wm_{seconds}s_{BLOCK}.flac"
    if not wav.exists():
        make_wav(wav, RATE * seconds)
    if not flac.exists():
        make_flac(flac, RATE * seconds)
    print(json.dumps({"wav": str(wav), "flac": str(flac)}))


if __name__ == "__main__":
    main()
