"""Cheap Sendspin listeners for fan-out benchmarks: many connections in one
process, each doing the legacy handshake as a PCM player and then only
parsing WebSocket frame headers to count audio chunks and timestamp gaps.

Run as a separate process so its CPU is not the server's:
    python bench/listeners.py URL N SECONDS  -> prints one JSON line
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import sys
import time
from urllib.parse import urlsplit

CHUNK_US = 25_000  # 1200 frames at 48 kHz: timestamps step by exactly this


def hello(name: str) -> bytes:
    payload = {"client_id": name, "name": name, "version": 1, "supported_roles": ["player@v1"],
               "player@v1_support": {"supported_formats": [{"codec": "pcm", "channels": 2, "sample_rate": 48000,
                                                            "bit_depth": 16}],
                                     "buffer_capacity": 1_000_000, "supported_commands": []}}
    return json.dumps({"type": "client/hello", "payload": payload}).encode()


def client_frame(opcode: int, data: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(data)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return head + mask + masked


class Listener(asyncio.Protocol):
    def __init__(self, stats: dict[str, int], name: str, host: str, path: str) -> None:
        self.stats, self.name, self.host, self.path = stats, name, host, path
        self.buf = bytearray()
        self.upgraded = False
        self.last_ts: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                             .encode())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            del self.buf[: end + 4]
            self.upgraded = True
            self.transport.write(client_frame(1, hello(self.name)))
            self.transport.write(client_frame(1, json.dumps(
                {"type": "client/state", "payload": {"state": "synchronized",
                                                      "player": {"volume": 100, "muted": False}}}).encode()))
        buf = self.buf
        pos = 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, hdr = b1 & 0x7F, 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n, hdr = struct.unpack_from(">H", buf, pos + 2)[0], 4
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                n, hdr = struct.unpack_from(">Q", buf, pos + 2)[0], 10
            if len(buf) - pos < hdr + n:
                break
            if b0 & 0x0F == 2 and n >= 9 and buf[pos + hdr] == 4:
                ts = struct.unpack_from(">q", buf, pos + hdr + 1)[0]
                self.stats["chunks"] += 1
                if self.last_ts is not None and ts - self.last_ts > CHUNK_US + 1:
                    self.stats["gaps"] += 1
                    self.stats["gap_us"] += ts - self.last_ts - CHUNK_US
                self.last_ts = ts
            elif b0 & 0x0F == 9:  # ping: answer, or the server's keepalive drops us
                self.transport.write(client_frame(10, bytes(buf[pos + hdr : pos + hdr + n])))
            pos += hdr + n
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats["lost"] += 1


async def main(url: str, count: int, seconds: float) -> dict[str, int]:
    parts = urlsplit(url)
    stats = {"chunks": 0, "gaps": 0, "gap_us": 0, "lost": 0, "connected": 0}
    loop = asyncio.get_running_loop()
    transports = []
    for i in range(count):
        t, _ = await asyncio.wait_for(loop.create_connection(
            lambda i=i: Listener(stats, f"load-{i}", parts.netloc, parts.path), parts.hostname, parts.port), 10)
        transports.append(t)
        stats["connected"] += 1
    print(json.dumps({"ready": count}), flush=True)
    await asyncio.sleep(seconds)
    for t in transports:
        t.abort()
    return stats


if __name__ == "__main__":
    started = time.monotonic()
    result = asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
    result["seconds"] = round(time.monotonic() - started, 2)
    print(json.dumps(result), flush=True)
