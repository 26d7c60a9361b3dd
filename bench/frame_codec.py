"""Benchmark: our WebSocket frame codec (harness.protocol.wsframes) next to the libraries' codecs.

One run, one process, no network; it prints two tables (ratios are the library's time
per operation over ours: above 1 = ours is faster):

(a) encode one frame, unmasked (server -> client) and masked (client -> server), for a
    20-byte payload (a small control/JSON message), 4800 bytes (one 25 ms chunk of
    48 kHz 16-bit stereo PCM) and 256 KiB (one artwork fragment):
      ours        encode_frame(BINARY, payload, mask=...)
      websockets  Frame(Opcode.BINARY, payload).serialize(mask=..., extensions=[])
      wsproto     FrameProtocol(client=...).send_data(payload, fin=True)  (masks when client)
(b) parse a stream of server frames (unmasked) fed in 64 KiB reads:
      ours        FrameScanner.split(read): frame boundaries as memoryview slices, no copy
      websockets  Frame.parse(StreamReader.read_exact, mask=False) per frame
      wsproto     FrameProtocol(client=True).receive_bytes(read) + received_frames()
    on two streams: "audio" (4809-byte binary audio frames with a ~100-byte JSON text
    frame after every 4th: a player's downstream) and "small" (20-byte binary frames:
    the per-frame cost). MiB/s of wire bytes and frames/s.

Each figure is the best of 3 runs of at least 0.25 s (time.perf_counter). Not a test: it
judges nothing. Takes about 20 s.

    .venv/bin/python bench/frame_codec.py [--repeat 3] [--min-time 0.25]   (or: ./run bench frame_codec)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable

import websockets
import wsproto
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader
from wsproto.frame_protocol import FrameProtocol

from harness.protocol.wsframes import BINARY, TEXT, FrameScanner, encode_frame

MiB = 1024 * 1024
READ = 64 * 1024
SIZES = (("20 B", 20), ("4800 B", 4800), ("256 KiB", 256 * 1024))


def best_per_op(fn: Callable[[], object], ops_per_call: int, repeat: int, min_time: float) -> float:
    """Seconds per operation: the best of `repeat` timed loops of at least `min_time` s each."""
    n = 1
    while True:  # calibrate: calls per loop so that one loop lasts about min_time
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_time / 4:
            n = max(1, int(n * min_time / dt))
            break
        n *= 4
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best / ops_per_call


# ---------------------------------------------------------------------------------------------- (a) encode


def encoders(payload: bytes, mask: bool) -> dict[str, Callable[[], object]]:
    wp = FrameProtocol(client=mask, extensions=[])
    return {
        "ours": lambda: encode_frame(BINARY, payload, mask=mask),
        "websockets": lambda: Frame(Opcode.BINARY, payload).serialize(mask=mask, extensions=[]),
        "wsproto": lambda: wp.send_data(payload, fin=True),
    }


# ---------------------------------------------------------------------------------------------- (b) parse


def audio_stream(seconds: float) -> tuple[bytes, int]:
    """A player's downstream: 40 audio frames per second, a JSON text frame after every 4th."""
    out, frames = bytearray(), 0
    pcm = os.urandom(4800)
    for i in range(int(seconds * 40)):
        out += encode_frame(BINARY, b"\x04" + (1_700_000_000_000_000 + i * 25_000).to_bytes(8, "big") + pcm)
        frames += 1
        if i % 4 == 3:
            msg = {"type": "server/time", "payload": {"client_transmitted": 1_700_000_000_000 + i,
                                                      "server_received": 1_700_000_000_100 + i,
                                                      "server_transmitted": 1_700_000_000_200 + i}}
            out += encode_frame(TEXT, json.dumps(msg).encode())
            frames += 1
    return bytes(out), frames


def small_stream(count: int) -> tuple[bytes, int]:
    payload = os.urandom(20)
    return encode_frame(BINARY, payload) * count, count


def reads(stream: bytes) -> list[bytes]:
    return [stream[i:i + READ] for i in range(0, len(stream), READ)]


def parse_ours(chunks: list[bytes]) -> int:
    scanner = FrameScanner()
    for chunk in chunks:
        scanner.split(chunk)
    return scanner.frames


def parse_websockets(chunks: list[bytes]) -> int:
    reader = StreamReader()
    frames = 0
    parser = None
    for chunk in chunks:
        reader.feed_data(chunk)
        while True:
            if parser is None:
                parser = Frame.parse(reader.read_exact, mask=False, max_size=None, extensions=[])
            try:
                next(parser)
            except StopIteration:
                frames += 1
                parser = None
                continue
            break  # the parser waits for more bytes: keep it for the next read
    return frames


def parse_wsproto(chunks: list[bytes]) -> int:
    proto = FrameProtocol(client=True, extensions=[])
    frames = 0
    for chunk in chunks:
        proto.receive_bytes(chunk)
        for frame in proto.received_frames():  # a frame split over reads comes in parts
            frames += frame.frame_finished
    return frames


PARSERS: dict[str, Callable[[list[bytes]], int]] = {
    "ours": parse_ours, "websockets": parse_websockets, "wsproto": parse_wsproto}


# ---------------------------------------------------------------------------------------------- report


def fmt_time(s: float) -> str:
    return f"{s * 1e9:,.0f} ns" if s < 1e-6 else f"{s * 1e6:,.2f} µs" if s < 1e-3 else f"{s * 1e3:,.2f} ms"


def table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True))))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per figure, best kept (default 3)")
    ap.add_argument("--min-time", type=float, default=0.25, help="seconds per timed run (default 0.25)")
    a = ap.parse_args(argv)
    t_start = time.monotonic()
    print(f"frame_codec: Python {platform.python_version()}, websockets {websockets.__version__}, "
          f"wsproto {wsproto.__version__}; best of {a.repeat} runs of >= {a.min_time} s; "
          f"ratio = library time / ours (> 1: ours faster)")

    print("\n(a) encode one binary frame: time per frame")
    rows = []
    for mask in (False, True):
        for label, size in SIZES:
            payload = os.urandom(size)
            fns = encoders(payload, mask)
            if not mask:  # sanity: the unmasked bytes must be the same
                same = fns["ours"]() == fns["websockets"]() == fns["wsproto"]()
                if not same:
                    print(f"  note: unmasked {label}: the encoders' bytes differ")
            t = {name: best_per_op(fn, 1, a.repeat, a.min_time) for name, fn in fns.items()}
            rows.append([f"{label} {'masked' if mask else 'unmasked'}", fmt_time(t["ours"]),
                         fmt_time(t["websockets"]), f"{t['websockets'] / t['ours']:.2f}x",
                         fmt_time(t["wsproto"]), f"{t['wsproto'] / t['ours']:.2f}x"])
    table(["payload", "ours", "websockets", "ratio", "wsproto", "ratio"], rows)

    print(f"\n(b) parse a stream of server frames fed in {READ // 1024} KiB reads")
    rows = []
    streams = {"audio (4809 B + JSON)": audio_stream(10.0), "small (20 B)": small_stream(20_000)}
    for label, (stream, nframes) in streams.items():
        chunks = reads(stream)
        counts = {name: fn(chunks) for name, fn in PARSERS.items()}
        if len(set(counts.values())) != 1 or counts["ours"] != nframes:
            print(f"  note: {label}: frame counts differ: {counts} (built {nframes})")
        t = {name: best_per_op(lambda fn=fn, chunks=chunks: fn(chunks), 1, a.repeat, a.min_time)
             for name, fn in PARSERS.items()}
        cells = [f"{label}, {len(stream) / MiB:.1f} MiB, {nframes} frames"]
        for name in PARSERS:
            cells += [f"{len(stream) / MiB / t[name]:,.0f}", f"{nframes / t[name] / 1e3:,.0f}k"]
            if name != "ours":
                cells.append(f"{t[name] / t['ours']:.1f}x")
        rows.append(cells)
    table(["stream", "ours MiB/s", "frames/s", "websockets MiB/s", "frames/s", "ratio",
           "wsproto MiB/s", "frames/s", "ratio"], rows)
    print("\nours only finds frame boundaries (payloads stay memoryview slices of the read); websockets and "
          "wsproto copy\neach payload into a frame object (and wsproto decodes text frames as UTF-8): "
          "what a relay does not need.")
    print(f"(run took {time.monotonic() - t_start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
