"""Raw WebSocket peers for the proxy tests: they write and see individual frames (FIN,
opcode, exact sizes, masks) and tell EOF, RST and close frames apart, which a WebSocket
library hides. Plus `in_process_proxy`, the proxy embedded in the test's own loop.
127.0.0.1 only; every wait has a timeout.

Then the helpers of the fault tests (test_proxy_faults_*.py): upstream scripts, the
control API, event filters, and the transparency check after `POST /reset`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

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
                         rcvbuf: int | None = None,
                         headers: str = "") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw WebSocket client: the handshake (plus `headers`, "Name: value\r\n" lines),
    then the bare stream."""
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
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
                  ).encode())
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

    def __init__(self, script: Script, greeting: bytes = b"", headers: str = "") -> None:
        self.script = script
        self.greeting = greeting  # bytes written in the same write() as the 101
        self.headers = headers  # more header lines of the 101 ("Name: value\r\n")
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
                          f"Sec-WebSocket-Accept: {acc}\r\n{self.headers}\r\n").encode() + self.greeting)
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


KiB = 1024
MiB = 1024 * KiB
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict[str, Any]], Awaitable[None]]


# --- fault tests: helpers ------------------------------------------------------------------------------------


def jmsg(t: str, **kw: Any) -> bytes:
    return json.dumps({"type": t, "payload": kw}).encode()


def audio(i: int, n: int = 1000, btype: int = 4) -> bytes:
    return struct.pack(">Bq", btype, i * 25_000) + bytes([i % 256]) * n


STREAM = [encode_frame(BINARY, audio(0)), encode_frame(BINARY, audio(1)), encode_frame(BINARY, audio(2)),
          encode_frame(TEXT, jmsg("server/state"))]  # three audio chunks and a JSON message


def desc(frames: list[Frame]) -> list[tuple[int, int, int]]:
    """(FIN, opcode, payload size) of each frame."""
    return [(int(f.fin), f.opcode, len(f.payload)) for f in frames]


def sender(frames: list[bytes], gap_s: float = 0.0) -> Script:
    """Upstream: on the client's first frame ("go"), send `frames` (gap_s apart), then stay."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        await read_frame(reader)
        for f in frames:
            writer.write(f)
            await writer.drain()
            if gap_s:
                await asyncio.sleep(gap_s)
        tr = await collect(reader, 10, stop_after_close=True)
        if tr.end == "close-frame":  # answer a close, as a server does
            writer.write(encode_frame(CLOSE, tr.frames[-1].payload))
    return script


class Recorder:
    """Upstream that echoes and records what it received and when (and how it ended)."""

    def __init__(self) -> None:
        self.got: list[tuple[float, Frame]] = []
        self.ends: list[str] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        try:
            while True:
                f = await read_frame(reader)
                self.got.append((time.monotonic(), f))
                if f.opcode == CLOSE:
                    writer.write(encode_frame(CLOSE, f.payload))
                    await writer.drain()
                    self.ends.append("close-frame")
                    await read_end(reader, 3)
                    return
                writer.write(encode_frame(f.opcode, f.payload, f.fin))
                await writer.drain()
        except asyncio.IncompleteReadError:
            self.ends.append("eof")
        except ConnectionResetError:
            self.ends.append("rst")

    def payloads(self) -> list[bytes]:
        return [f.payload for _, f in self.got if f.opcode in (TEXT, BINARY, CONT)]


@contextlib.asynccontextmanager
async def routed_proxy(routes: dict[str, Script] | None = None) -> AsyncIterator[Any]:
    """A raw upstream (path -> script; anything else echoes) behind the in-process proxy."""
    table = dict(routes or {})

    async def dispatch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        await table.get(info["path"], echo)(reader, writer, info)

    async with RawUpstream(dispatch) as up, in_process_proxy([f"ws://127.0.0.1:{up.port}"]) as px:
        yield px


async def api(px: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as s, s.request(method, px.control.url + path, json=body) as r:
        return r.status, await r.json()


async def post_fault(px: Any, spec: dict[str, Any]) -> dict[str, Any]:
    status, body = await api(px, "POST", "/faults", spec)
    assert status == 201, body
    return dict(body["fault"])


def fault_events(px: Any, kind: str) -> list[dict[str, Any]]:
    return [e for e in px.events.since(0, limit=10_000) if e["event"] == "fault" and e["type"] == kind]


async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def reset_and_check_transparent(px: Any) -> None:
    """POST /reset, then: no fault left on any live pipe, and a new connection carries
    fragments, a ping, text and a close handshake exactly as sent."""
    status, body = await api(px, "POST", "/reset")
    assert status == 200, body
    assert not px.state.faults
    for relay in px.state.relays():
        for pipe in relay.pipes.values():
            assert not pipe.faults and not pipe.withholding, pipe.stats()
            assert not (pipe.holds - {"write-buffer"}), pipe.stats()
    reader, writer = await client_connect(px.port, "/echo")
    try:
        text = "h\u00e9llo".encode()
        writer.write(encode_frame(BINARY, b"F" * 3000, fin=False, mask=True)
                     + encode_frame(CONT, b"G" * 2000, fin=False, mask=True) + encode_frame(CONT, b"H" * 10, mask=True)
                     + encode_frame(PING, b"p", mask=True) + encode_frame(TEXT, text, mask=True)
                     + encode_frame(CLOSE, struct.pack("!H", 4001) + b"bye", mask=True))
        tr = await collect(reader, 3)
        assert desc(tr.frames) == [(0, BINARY, 3000), (0, CONT, 2000), (1, CONT, 10), (1, PONG, 1),
                                   (1, TEXT, len(text)), (1, CLOSE, 5)], tr.frames
        assert tr.frames[4].payload == text and (tr.frames[5].close_code, tr.frames[5].close_reason) == (4001, "bye")
        assert tr.end == "eof"
    finally:
        writer.close()


class Flood:
    """Upstream: pushes 64 KiB binary frames (up to `total`) as fast as the socket takes
    them, while recording every frame the client sends (the other direction)."""

    def __init__(self, total: int = 16 * MiB) -> None:
        self.total = total
        self.pushed = 0
        self.got: list[tuple[float, bytes]] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        chunk = encode_frame(BINARY, b"f" * (64 * KiB))

        async def push() -> None:
            with contextlib.suppress(ConnectionError):
                while self.pushed < self.total:
                    writer.write(chunk)
                    await writer.drain()
                    self.pushed += len(chunk)

        task = asyncio.create_task(push())
        try:
            while True:
                f = await read_frame(reader)
                self.got.append((time.monotonic(), f.payload))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Drain:
    """A client reader that reads everything as fast as it can and counts it."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.n = 0
        self.task = asyncio.create_task(self._run(reader))

    async def _run(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(256 * KiB):
                self.n += len(data)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
