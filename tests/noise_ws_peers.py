"""A noise server and clients over websockets, driven by our sans-I/O codec: the peers of
the proxy's noise tests (opaque and terminating)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from harness.protocol import ConnectionFatal, ProtocolError, now_us, peek_type
from harness.protocol import messages as m
from harness.protocol.noise import AudioChunk, NoiseProfile
from harness.protocol.noise_flow import NoiseClientFlow, NoiseServerFlow

WAIT_S = 10.0  # generous: each step normally takes milliseconds
RATE = 48_000
CHUNK_FRAMES = 1200  # 25 ms of stereo 16-bit PCM: 4800 bytes, a 13-byte header, a 16-byte tag
CHUNKS = 40


def watermark(first: int, frames: int) -> bytes:
    """Frame n holds n (low 16 bits left, high 16 bits right): every sample says where it belongs."""
    return b"".join((i & 0xFFFF).to_bytes(2, "little") + (i >> 16 & 0xFFFF).to_bytes(2, "little")
                    for i in range(first, first + frames))


class DualServer:
    """Answers a `client/init` as a noise server (handshake, server/hello, server/activate,
    server/time, a stream of CHUNKS audio chunks on `client/state` available, stream/end)
    and a `client/hello` as a legacy one (server/hello, server/time)."""

    def __init__(self) -> None:
        self.profile = NoiseProfile()
        self.sealed: dict[str, list[tuple[int, bytes]]] = {}  # client_id -> (timestamp, pcm) of each chunk sent
        self.port = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[DualServer]:
        async with serve(self.handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            yield self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def handler(self, ws: ServerConnection) -> None:
        # ConnectionFatal: a message that must end the session (a tampered one): a silent end here
        with contextlib.suppress(ConnectionClosed, TimeoutError, ConnectionFatal):
            first = await asyncio.wait_for(ws.recv(), WAIT_S)
            if isinstance(first, str) and peek_type(first) == "client/hello":
                await self.legacy(ws)
            else:
                await self.noise(ws, first)

    async def legacy(self, ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "server/hello", "payload": {
            "server_id": "dual", "name": "dual", "version": 1, "active_roles": [], "connection_reason": "playback"}}))
        async for text in ws:
            obj = json.loads(text)
            if obj["type"] == "client/time":
                t = now_us()
                await ws.send(json.dumps({"type": "server/time", "payload": {
                    "client_transmitted": obj["payload"]["client_transmitted"], "server_received": t,
                    "server_transmitted": t}}))

    async def noise(self, ws: ServerConnection, first: str | bytes) -> None:
        codec, flow = self.profile.session("server"), NoiseServerFlow()
        lock = asyncio.Lock()  # encrypt and write in one order: the nonces are the wire order

        async def send(message: m.Message) -> None:
            async with lock:
                flow.sent(message)
                for wire in codec.encode_messages(message):
                    await ws.send(wire)

        step = codec.handshake(first)
        while True:
            for wire in step.send:
                await ws.send(wire)
            if step.close or codec.ready:
                break
            step = codec.handshake(await asyncio.wait_for(ws.recv(), WAIT_S))
        if not codec.ready:
            return  # a refused client/init (server/error sent) or a failed handshake: the connection ends
        await send(m.NoiseServerHello(name="dual"))
        sent = self.sealed.setdefault(str(codec.peer_id), [])
        async for wire in ws:
            decoded = codec.decode(wire)
            if decoded is None:  # a fragment of a message still open
                continue
            message = flow.receive(decoded)
            if isinstance(message, m.NoiseClientHello):
                await send(m.ServerActivate(activities=["playback"], active_roles=["player@v1"]))
            elif isinstance(message, m.ClientTime):
                t = now_us()
                await send(m.ServerTime(client_transmitted=message.client_transmitted, server_received=t,
                                        server_transmitted=t))
            elif isinstance(message, m.NoiseClientState) and message.available:
                await send(m.NoiseStreamStart(server_transmitted=now_us(), player=m.PlayerStream(
                    codec="pcm", sample_rate=RATE, channels=2, bit_depth=16)))
                start = now_us() + 500_000
                for k in range(CHUNKS):
                    ts, pcm = start + k * CHUNK_FRAMES * 1_000_000 // RATE, watermark(k * CHUNK_FRAMES, CHUNK_FRAMES)
                    async with lock:
                        for wire in codec.audio_messages(self.profile.prepare_audio(ts, pcm)):
                            await ws.send(wire)
                    sent.append((ts, pcm))
                await send(m.StreamEnd())
            elif isinstance(message, m.NoiseClientGoodbye):
                return


class NoiseClient:
    """Our sans-I/O noise client over a websockets connection, up to `server/activate`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.codec = NoiseProfile().session("client")
        self.flow = NoiseClientFlow()
        self.ws: ClientConnection | None = None

    @property
    def port(self) -> int:
        assert self.ws is not None
        return int(self.ws.local_address[1])

    async def open(self) -> NoiseClient:
        self.ws = await ws_connect(self.url, open_timeout=WAIT_S, close_timeout=3, compression=None, max_size=None)
        for wire in self.codec.handshake(None).send:
            await self.ws.send(wire)
        while not self.codec.ready:
            step = self.codec.handshake(await asyncio.wait_for(self.ws.recv(), WAIT_S))
            assert not step.close, step
            for wire in step.send:
                await self.ws.send(wire)
        assert isinstance(await self.recv(), m.NoiseServerHello)
        await self.send(m.NoiseClientHello(
            name="proxy noise test", supported_roles=["player@v1"], supported_pair_methods={},
            player_support=m.NoisePlayerSupport(supported_formats=[m.AudioFormat(
                codec="pcm", channels=2, sample_rate=RATE, bit_depth=16)], buffer_capacity=2_000_000),
            unpaired_access=m.UnpairedAccess(enabled=True)))
        assert isinstance(await self.recv(), m.ServerActivate)
        return self

    async def send(self, message: m.Message) -> None:
        assert self.ws is not None
        self.flow.sent(message)
        for wire in self.codec.encode_messages(message):
            await self.ws.send(wire)

    async def recv(self) -> Any:
        """The next whole message, decrypted (ConnectionFatal: one that must close the session)."""
        assert self.ws is not None
        while True:
            message = self.codec.decode(await asyncio.wait_for(self.ws.recv(), WAIT_S))
            if message is not None:
                return self.flow.receive(message)

    async def time_sync(self, n: int) -> tuple[list[int], list[int]]:
        """Send `n` client/time; the stamps sent, and those of the replies until the last one's."""
        sent = [now_us() + i for i in range(n)]
        for t in sent:
            await self.send(m.ClientTime(client_transmitted=t))
        got: list[int] = []
        while not got or got[-1] != sent[-1]:
            message = await self.recv()
            if isinstance(message, m.ServerTime):
                got.append(message.client_transmitted)
        return sent, got

    async def play(self) -> list[tuple[int, bytes]]:
        """Announce the player available; (timestamp, pcm) of every chunk until stream/end."""
        await self.send(m.NoiseClientState(available=True, player=m.NoisePlayerState(
            volume=100, muted=False, output_delay_ms=0, required_lead_time_ms=100, min_buffer_ms=250,
            supported_commands=["volume", "mute"])))
        chunks = []
        while not isinstance(message := await self.recv(), m.StreamEnd):
            if isinstance(message, AudioChunk):
                chunks.append((message.timestamp_us, bytes(message.payload)))
        return chunks

    async def close(self) -> None:
        if self.ws is None:
            return
        with contextlib.suppress(ConnectionClosed, ProtocolError):  # a session already broken sends nothing
            await self.send(m.NoiseClientGoodbye(reason="shutdown"))
        await self.ws.close()


class LegacyClient:
    """A legacy client as JSON text: client/hello, then client/time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ws: ClientConnection | None = None

    async def open(self) -> LegacyClient:
        self.ws = await ws_connect(self.url, open_timeout=WAIT_S, close_timeout=3, compression=None)
        await self.ws.send(json.dumps({"type": "client/hello", "payload": {
            "client_id": "legacy-1", "name": "legacy-1", "version": 1, "supported_roles": ["controller@v1"]}}))
        assert json.loads(await asyncio.wait_for(self.ws.recv(), WAIT_S))["type"] == "server/hello"
        return self

    @property
    def port(self) -> int:
        assert self.ws is not None
        return int(self.ws.local_address[1])

    async def time_sync(self, n: int) -> tuple[list[int], list[int]]:
        assert self.ws is not None
        sent = [now_us() + i for i in range(n)]
        for t in sent:
            await self.ws.send(json.dumps({"type": "client/time", "payload": {"client_transmitted": t}}))
        got: list[int] = []
        while not got or got[-1] != sent[-1]:
            obj = json.loads(await asyncio.wait_for(self.ws.recv(), WAIT_S))
            if obj["type"] == "server/time":
                got.append(obj["payload"]["client_transmitted"])
        return sent, got
