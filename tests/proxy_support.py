"""Raw WebSocket peers for the proxy tests: they write and see individual frames (FIN,
opcode, exact sizes, masks) and tell EOF, RST and close frames apart, which a WebSocket
library hides. Plus `in_process_proxy`, the proxy embedded in the test's own loop.
127.0.0.1 only; every wait has a timeout."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from harness.protocol.wsframes import BINARY, CLOSE, CONT, PING, PONG, TEXT, encode_frame, mask_bytes

__all__ = ["BINARY", "CLOSE", "CONT", "PING", "PONG", "TEXT", "Frame", "RawUpstream", "Trace", "client_connect",
           "collect", "echo", "encode_frame", "in_process_proxy", "read_end", "read_frame", "rst"]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes
    masked: bool = False

    @property
    def close_code(self) -> int | None:
        if self.opcode == CLOSE and len(self.payload) >= 2:
            return int(struct.unpack("!H", self.payload[:2])[0])
        return None

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode() if self.opcode == CLOSE else ""

    def __repr__(self) -> str:
        extra = f" code={self.close_code}" if self.opcode == CLOSE else ""
        return f"Frame(fin={int(self.fin)} op={self.opcode} len={len(self.payload)}{extra})"


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    key = await reader.readexactly(4) if b1 & 0x80 else None
    payload = await reader.readexactly(n) if n else b""
    if key:
        payload = mask_bytes(payload, key)
    return Frame(bool(b0 & 0x80), b0 & 0x0F, payload, key is not None)


@dataclass
class Trace:
    """What one side observed: frames, then how the stream ended."""

    frames: list[Frame] = field(default_factory=list)
    end: str = ""  # close-frame | eof | rst | timeout | until

    def sizes(self) -> list[int]:
        return [len(f.payload) for f in self.frames if f.opcode in (TEXT, BINARY, CONT)]

    def data(self) -> list[bytes]:
        return [f.payload for f in self.frames if f.opcode in (TEXT, BINARY, CONT)]

    def close_codes(self) -> list[int | None]:
        return [f.close_code for f in self.frames if f.opcode == CLOSE]


async def collect(reader: asyncio.StreamReader, timeout: float, *, stop_after_close: bool = False,
                  until: Callable[[Trace], bool] | None = None) -> Trace:
    """Frames until EOF/RST/timeout (or the first close frame, or until(trace))."""
    t = Trace()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            t.end = "timeout"
            return t
        try:
            f = await asyncio.wait_for(read_frame(reader), left)
        except TimeoutError:
            t.end = "timeout"
            return t
        except asyncio.IncompleteReadError:
            t.end = "eof"
            return t
        except ConnectionResetError:
            t.end = "rst"
            return t
        t.frames.append(f)
        if f.opcode == CLOSE and stop_after_close:
            t.end = "close-frame"
            return t
        if until is not None and until(t):
            t.end = "until"
            return t


async def read_end(reader: asyncio.StreamReader, timeout: float) -> str:
    """Read raw bytes until the stream ends: 'eof', 'rst' or 'timeout'."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
        return "eof"
    except ConnectionResetError:
        return "rst"
    except TimeoutError:
        return "timeout"


def nodelay(writer: asyncio.StreamWriter) -> None:
    s = writer.get_extra_info("socket")
    if s is not None:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def client_connect(port: int, path: str = "/", host: str = "127.0.0.1", limit: int = 2**24,
                         rcvbuf: int | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw WebSocket client: the handshake, then the bare stream."""
    sock = None
    if rcvbuf is not None:  # before connect, so the window really is small
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), 5)
        reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
    else:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=limit), 5)
    nodelay(writer)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        writer.close()
        raise RuntimeError(f"handshake failed: {head!r}")
    return reader, writer


def rst(writer: asyncio.StreamWriter) -> None:
    """Abort with a TCP RST (SO_LINGER 0)."""
    s = writer.get_extra_info("socket")
    if s is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict[str, Any]], Awaitable[None]]


class RawUpstream:
    """A WebSocket server on 127.0.0.1:0 that hands each upgraded connection to
    `script(reader, writer, info)`; info has the request path."""

    def __init__(self, script: Script, greeting: bytes = b"") -> None:
        self.script = script
        self.greeting = greeting  # bytes written in the same write() as the 101
        self.server: asyncio.Server | None = None
        self.port = 0
        self.accepted: list[dict[str, Any]] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RawUpstream:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, limit=2**24)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            nodelay(writer)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode().split("\r\n")
            path = lines[0].split(" ")[1]
            hdrs = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
            acc = base64.b64encode(hashlib.sha1(hdrs["sec-websocket-key"].encode() + GUID).digest()).decode()
            writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Accept: {acc}\r\n\r\n").encode() + self.greeting)
            info: dict[str, Any] = {"path": path, "port": self.port, "headers": hdrs}
            self.accepted.append(info)
            await self.script(reader, writer, info)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, TimeoutError, KeyError):
            pass
        finally:
            if not writer.is_closing():
                writer.close()
            self.tasks.discard(task)

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=3)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.server.wait_closed(), 2)
        self.server = None

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
    """Echo every data frame as it came (same FIN/opcode/size, unmasked); answer a close."""
    while True:
        f = await read_frame(reader)
        if f.opcode == CLOSE:
            writer.write(encode_frame(CLOSE, f.payload))
            await writer.drain()
            return
        if f.opcode == PING:
            writer.write(encode_frame(PONG, f.payload))
        else:
            writer.write(encode_frame(f.opcode, f.payload, f.fin))
        await writer.drain()


@contextlib.asynccontextmanager
async def in_process_proxy(upstreams: list[str], **kw: Any) -> AsyncIterator[Any]:
    """The proxy in this loop (one at a time per process: mitmproxy's ctx is global)."""
    from proxy.master import EmbeddedProxy

    kw.setdefault("health_interval", 0)
    px = EmbeddedProxy(upstreams, **kw)
    async with px:
        yield px
