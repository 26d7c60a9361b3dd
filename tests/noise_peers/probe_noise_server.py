"""A minimal `noise` Sendspin server for the probe's tests: our sans-I/O server side
(`NoiseSession` + `NoiseServerFlow`) over websockets, in the test's own event loop.

It serves (`serve()`: the probe dials) or dials a listening probe (`dial(url)`:
server-initiated; the probe still sends `client/init` first and this side is still
the Noise initiator). Each connection: handshake, `server/hello`, `client/hello`,
`server/activate`, `server/time` for every `client/time`, and once `client/state`
says `available`, `stream/start` and CHUNKS watermark chunks (48 kHz, 16-bit,
stereo), each `lead_us` ahead of its play time, then `stream/end`. Scripted
trouble, on the first connection only: a server-initiated re-handshake after
`rehandshake_after` chunks; a silent close (TCP dropped, no message, no close
frame) after `drop_after` chunks; a tampered ciphertext after `tamper_after`
chunks (the probe must close); `deaf`: no `server/time` at all on the first
connection (the probe's dead-session watchdog must give up); `big_state_bytes`: a
`server/state` that large, in Sendspin fragments, before the stream. Not a reference server: just enough to drive the
probe's noise path over real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, serve
from websockets.exceptions import ConnectionClosed

from harness.protocol import messages as m
from harness.protocol import watermark
from harness.protocol.clock import now_us
from harness.protocol.noise import NoiseProfile
from harness.protocol.noise_flow import NoiseServerFlow

RATE = 48_000
CHUNK_FRAMES = 1200  # 25 ms


@dataclass
class Connection:
    """What one connection saw, for the test's assertions."""

    client_id: str | None = None
    suite: str | None = None
    received: list[str] = field(default_factory=list)
    states: list[m.NoiseClientState] = field(default_factory=list)
    sent_chunks: int = 0
    rehandshakes: int = 0
    deferred_times: int = 0  # client/time answered only after a re-handshake's server/activate
    error: str | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class ProbeNoiseServer:
    chunks: int = 40
    lead_us: int = 200_000
    rehandshake_after: int | None = None
    drop_after: int | None = None
    tamper_after: int | None = None
    deaf: bool = False
    big_state_bytes: int = 0  # > 0: a server/state this large (Sendspin fragments) before the stream
    profile: NoiseProfile = field(default_factory=NoiseProfile)
    connections: list[Connection] = field(default_factory=list)

    @property
    def server_id(self) -> str:
        return self.profile.identity.peer_id

    async def serve(self) -> tuple[Server, str]:
        server = await serve(self._handle, "127.0.0.1", 0, compression=None, max_size=None)
        return server, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/sendspin"

    async def dial(self, url: str) -> None:
        """Server-initiated: dial a listening probe and run one session on that connection."""
        async with connect(url, open_timeout=5, close_timeout=2, compression=None, max_size=None) as ws:
            await self._handle(ws)

    async def _handle(self, ws: Any) -> None:
        conn = Connection()
        first = not self.connections
        self.connections.append(conn)
        try:
            await _Session(self, ws, conn, first).run()
        except ConnectionClosed:
            pass
        except Exception as exc:  # the test reads it: a broken rule is a finding, not a crash of the fixture
            conn.error = f"{type(exc).__name__}: {exc}"
        finally:
            conn.ended.set()


class _Session:
    def __init__(self, server: ProbeNoiseServer, ws: Any, conn: Connection, first: bool) -> None:
        self.server, self.ws, self.conn, self.first = server, ws, conn, first
        self.codec = server.profile.session("server")
        self.flow = NoiseServerFlow()
        self.lock = asyncio.Lock()  # encode + write in one order: the nonce is the wire order
        self.keys_ready = asyncio.Event()  # cleared while a re-handshake runs: nothing may be sent
        self.keys_ready.set()
        self.available = asyncio.Event()
        self.deferred: list[int] = []  # client_transmitted of client/time received mid re-handshake

    async def send(self, message: m.Message) -> None:
        async with self.lock:
            self.flow.sent(message)
            for wire in self.codec.encode_messages(message):
                await self.ws.send(wire)

    async def run(self) -> None:
        while not self.codec.ready:
            step = self.codec.handshake(await asyncio.wait_for(self.ws.recv(), 10))
            for wire in step.send:
                await self.ws.send(wire)
            if step.close:
                self.conn.error = f"handshake: {step.error}"
                return
        self.conn.client_id, self.conn.suite = self.codec.peer_id, self.codec.suite
        await self.send(m.NoiseServerHello(name="probe test server"))
        reader = asyncio.create_task(self._read())
        available = asyncio.create_task(self.available.wait())
        try:
            await asyncio.wait([reader, available], timeout=10, return_when=asyncio.FIRST_COMPLETED)
            available.cancel()
            if self.available.is_set():
                await self._stream()
            await asyncio.wait_for(reader, 10)  # until the probe says goodbye and the connection closes
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await reader

    async def _read(self) -> None:
        async for wire in self.ws:
            message = self.codec.decode(wire)
            if message is None:
                continue
            if isinstance(message, m.NoiseHandshake):  # message 2 of our re-handshake
                step = self.codec.handshake(message)
                if step.close:
                    raise RuntimeError(f"re-handshake failed: {step.error}")
                self.conn.rehandshakes += 1
                await self.send(m.ServerActivate(activities=["playback"], active_roles=["player@v1"]))
                for sent in self.deferred:
                    await self._time_reply(sent)
                self.conn.deferred_times += len(self.deferred)
                self.deferred.clear()
                self.keys_ready.set()
                continue
            self.flow.receive(message)
            self.conn.received.append(getattr(message, "TYPE", "binary"))
            if isinstance(message, m.NoiseClientHello):
                await self.send(m.ServerActivate(activities=["playback"], active_roles=["player@v1"]))
            elif isinstance(message, m.ClientTime):
                if self.first and self.server.deaf:
                    continue
                if self.keys_ready.is_set():
                    await self._time_reply(message.client_transmitted)
                else:  # no application message from our message 1 to the new server/activate
                    self.deferred.append(message.client_transmitted)
            elif isinstance(message, m.NoiseClientState):
                self.conn.states.append(message)
                if message.available:
                    self.available.set()
            elif isinstance(message, m.NoiseClientGoodbye):
                await self.ws.close()
                return

    async def _time_reply(self, client_transmitted: int) -> None:
        received = now_us()
        await self.send(m.ServerTime(client_transmitted=client_transmitted, server_received=received,
                                     server_transmitted=now_us()))

    async def _stream(self) -> None:
        s = self.server
        if s.big_state_bytes:
            await self.send(m.NoiseServerState(metadata={"title": "x" * s.big_state_bytes}))
        await self.send(m.NoiseStreamStart(server_transmitted=now_us(), player=m.PlayerStream(
            codec="pcm", sample_rate=RATE, channels=2, bit_depth=16)))
        start = now_us() + s.lead_us
        for k in range(s.chunks):
            if self.first and k == s.drop_after:
                self.ws.transport.abort()  # silent: no goodbye, no close frame
                return
            if self.first and k == s.rehandshake_after:
                await self.keys_ready.wait()
                self.keys_ready.clear()
                async with self.lock:
                    for wire in self.codec.rehandshake().send:
                        await self.ws.send(wire)
            await asyncio.wait_for(self.keys_ready.wait(), 5)
            ts = start + k * CHUNK_FRAMES * 1_000_000 // RATE
            await asyncio.sleep(max(0.0, (ts - s.lead_us - now_us()) / 1e6))
            prepared = s.profile.prepare_audio(ts, watermark.encode(k * CHUNK_FRAMES, CHUNK_FRAMES, 2, 16))
            async with self.lock:
                wires = self.codec.audio_messages(prepared)
                if self.first and k == s.tamper_after:
                    wires = [w[:-1] + bytes([w[-1] ^ 1]) for w in wires]  # one flipped tag bit
                for wire in wires:
                    await self.ws.send(wire)
            self.conn.sent_chunks += 1
        await self.send(m.StreamEnd())
