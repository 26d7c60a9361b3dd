"""Load generator for bench/multiworker.py: many cheap Sendspin PCM listeners in one process.

Raw WebSocket over asyncio.Protocol (frames built by harness.protocol.wsframes;
of what arrives only the frame headers are parsed, inline: this loop runs once per
chunk per listener, thousands of times a second), each listener doing the legacy
handshake as a PCM player, plus what a side-by-side needs:

- `client/state` is sent after `server/hello` arrives (sendspin 7.5.0 wants it
  after the hello; ours takes it either way);
- the per-sample watermark is checked cheaply: the first and last sample index
  of every chunk give missing samples inside and between chunks (a backwards
  jump, e.g. a looping source, is counted apart as `back`);
- it is driven over stdin so the caller can measure a window after everyone
  streams: it prints `{"event": "ready", ...}` once all listeners got audio (or
  the timeout passed), then answers `mark` (zero the counters) and `report`
  (counters since the mark, and its own CPU), and leaves on `quit`, EOF, or
  after --max-seconds whatever happens.

    python bench/_mw_load.py --urls ws://127.0.0.1:P1/sendspin,ws://127.0.0.1:P2/sendspin --count N
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import struct
import sys
import time
from urllib.parse import urlsplit

from harness.protocol.wsframes import BINARY, CLOSE, PING, PONG, TEXT, encode_frame

CHUNK_US = 25_000        # 1200 frames at 48 kHz
FRAME_BYTES = 4          # 16-bit stereo
AUDIO_TYPE = 4           # binary message type of player audio (legacy profile)
MAX_PENDING_UPGRADES = 50
_HH = struct.Struct("<HH")
_TS = struct.Struct(">q")


def client_frame(opcode: int, data: bytes) -> bytes:
    """A masked client-to-server frame (harness.protocol.wsframes)."""
    return encode_frame(opcode, data, mask=True)


def hello(name: str) -> bytes:
    payload = {"client_id": name, "name": name, "version": 1, "supported_roles": ["player@v1"],
               "player@v1_support": {"supported_formats": [{"codec": "pcm", "channels": 2, "sample_rate": 48000,
                                                            "bit_depth": 16}],
                                     "buffer_capacity": 32_000_000, "supported_commands": ["volume", "mute"]}}
    return client_frame(TEXT, json.dumps({"type": "client/hello", "payload": payload}).encode())


STATE = client_frame(TEXT, json.dumps({"type": "client/state", "payload": {
    "state": "synchronized", "player": {"volume": 100, "muted": False}}}).encode())


class Listener(asyncio.Protocol):
    __slots__ = (
        "back",
        "buf",
        "chunks",
        "dup",
        "exp",
        "gap_us",
        "hello",
        "host",
        "last_ts",
        "lost",
        "lost_mark",
        "mark",
        "missing",
        "path",
        "state_sent",
        "status",
        "transport",
        "ts_gaps",
        "upgraded",
        "upgraded_cb",
    )

    def __init__(self, name: str, host: str, path: str, upgraded_cb) -> None:
        self.hello, self.host, self.path, self.upgraded_cb = hello(name), host, path, upgraded_cb
        self.buf = bytearray()
        self.upgraded = self.state_sent = False
        self.status = 0
        self.exp: int | None = None
        self.last_ts: int | None = None
        self.chunks = self.missing = self.dup = self.back = self.ts_gaps = self.gap_us = self.lost = 0
        self.lost_mark = 0
        self.mark = (0, 0, 0, 0, 0, 0)

    def counters(self) -> tuple[int, int, int, int, int, int]:
        return self.chunks, self.missing, self.dup, self.back, self.ts_gaps, self.gap_us

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                             .encode())

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            line = bytes(buf[: buf.find(b"\r\n")]).split()
            self.status = int(line[1]) if len(line) > 1 and line[1].isdigit() else -1
            del buf[: end + 4]
            self.upgraded = True
            self.upgraded_cb(self)
            if self.status != 101:
                self.transport.abort()
                return
            self.transport.write(self.hello)
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, n = buf[pos], buf[pos + 1] & 0x7F
            hdr = 2
            if n == 126:
                if size - pos < 4:
                    break
                n, hdr = (buf[pos + 2] << 8) | buf[pos + 3], 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, hdr = struct.unpack_from(">Q", buf, pos + 2)[0], 10
            if size - pos < hdr + n:
                break
            p = pos + hdr
            op = b0 & 0x0F
            if op == BINARY and n >= 13 and buf[p] == AUDIO_TYPE:
                ts = _TS.unpack_from(buf, p + 1)[0]
                frames = (n - 9) // FRAME_BYTES
                lo, hi = _HH.unpack_from(buf, p + 9)
                first = lo | (hi << 16)
                lo, hi = _HH.unpack_from(buf, p + 9 + (frames - 1) * FRAME_BYTES)
                last = lo | (hi << 16)
                exp = self.exp
                if exp is not None:
                    if first > exp:
                        self.missing += first - exp
                    elif first < exp:
                        if first + frames > exp:
                            self.dup += exp - first
                        else:
                            self.back += 1
                if last - first + 1 > frames:
                    self.missing += last - first + 1 - frames
                self.exp = last + 1
                if self.last_ts is not None and ts - self.last_ts > CHUNK_US + 1:
                    self.ts_gaps += 1
                    self.gap_us += ts - self.last_ts - CHUNK_US
                self.last_ts = ts
                self.chunks += 1
            elif op == TEXT and not self.state_sent and b'"server/hello"' in buf[p : p + n]:
                self.state_sent = True
                self.transport.write(STATE)
            elif op == PING:  # ping: answer, or a keepalive drops us
                self.transport.write(client_frame(PONG, bytes(buf[p : p + n])))
            elif op == CLOSE:
                self.transport.close()
            pos = p + n
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost += 1
        if not self.upgraded:
            self.upgraded = True
            self.upgraded_cb(self)


async def connect_all(urls: list[str], count: int, make, ready_timeout: float,
                      deadline: float) -> tuple[list, dict]:
    """Open `count` listeners round-robin over `urls` (`make(i, parts, upgraded_cb)` builds
    listener i), at most MAX_PENDING_UPGRADES upgrading at once, then wait until every
    one got audio or was lost (at most `ready_timeout` s). Returns them and the
    `ready` event's common fields (also bench/_noise_load.py's)."""
    loop = asyncio.get_running_loop()
    pending = asyncio.Semaphore(MAX_PENDING_UPGRADES)
    listeners: list = []
    failed = 0

    def upgraded(_: Listener) -> None:
        pending.release()

    t0 = time.monotonic()
    for i in range(count):
        parts = urlsplit(urls[i % len(urls)])
        await asyncio.wait_for(pending.acquire(), 30)
        try:
            _, proto = await asyncio.wait_for(loop.create_connection(
                lambda i=i, parts=parts: make(i, parts, upgraded), parts.hostname, parts.port), 10)
        except (OSError, TimeoutError):
            failed += 1
            pending.release()
            continue
        listeners.append(proto)
    t_connected = time.monotonic()
    end = min(loop.time() + ready_timeout, deadline)
    while loop.time() < end and not all(x.chunks or x.lost for x in listeners):
        await asyncio.sleep(0.05)
    return listeners, {"event": "ready", "count": count, "connected": len(listeners), "failed": failed,
                       "refused": sum(1 for x in listeners if x.status not in (0, 101)),
                       "streaming": sum(1 for x in listeners if x.chunks), "lost": sum(x.lost for x in listeners),
                       "connect_s": round(t_connected - t0, 2), "ready_s": round(time.monotonic() - t0, 2)}


async def serve_commands(deadline: float, on_mark, on_report) -> None:
    """The caller's commands on stdin until `quit`, EOF or `deadline`: `mark` runs
    on_mark() and answers {"event": "marked"}; `report` prints what on_report() returns."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        try:
            line = await asyncio.wait_for(reader.readline(), max(0.1, deadline - loop.time()))
        except TimeoutError:
            break
        cmd = line.decode().strip()
        if cmd in ("", "quit"):
            break
        if cmd == "mark":
            on_mark()
            emit({"event": "marked"})
        elif cmd == "report":
            emit(await on_report())


async def run(urls: list[str], count: int, prefix: str, ready_timeout: float, max_seconds: float) -> None:
    deadline = asyncio.get_running_loop().time() + max_seconds
    listeners, ready = await connect_all(
        urls, count, lambda i, parts, cb: Listener(f"{prefix}-{i}", parts.netloc, parts.path, cb),
        ready_timeout, deadline)
    emit(ready)
    mark = [time.monotonic(), time.process_time()]

    def on_mark() -> None:
        for x in listeners:
            x.mark = x.counters()
            x.lost_mark = x.lost
        mark[:] = time.monotonic(), time.process_time()

    async def on_report() -> dict:
        deltas = [tuple(a - b for a, b in zip(x.counters(), x.mark, strict=True)) for x in listeners]
        return {"event": "report", "seconds": round(time.monotonic() - mark[0], 3),
                "cpu_s": round(time.process_time() - mark[1], 3),
                "listeners": len(listeners), "with_chunks": sum(1 for d in deltas if d[0]),
                "chunks": sum(d[0] for d in deltas), "missing": sum(d[1] for d in deltas),
                "dup": sum(d[2] for d in deltas), "back": sum(d[3] for d in deltas),
                "ts_gaps": sum(d[4] for d in deltas), "gap_us": sum(d[5] for d in deltas),
                "with_missing": sum(1 for d in deltas if d[1]),
                "lost": sum(x.lost - x.lost_mark for x in listeners), "lost_total": sum(x.lost for x in listeners)}

    await serve_commands(deadline, on_mark, on_report)
    for x in listeners:
        x.transport.abort()


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--urls", required=True, help="comma-separated WebSocket URLs; listeners go round-robin")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--prefix", default="load")
    ap.add_argument("--ready-timeout", type=float, default=20.0)
    ap.add_argument("--max-seconds", type=float, default=120.0, help="leave after this long whatever happens")
    a = ap.parse_args()
    asyncio.run(run(a.urls.split(","), a.count, a.prefix, a.ready_timeout, a.max_seconds))


if __name__ == "__main__":
    main()
