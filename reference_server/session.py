"""One client connection: a reader, a writer and a watchdog, never sharing a wait.

The reader stamps and handles every inbound message as it completes; it never
waits on the writer. The writer sends control messages first, then artwork,
then audio pulled from the shared timeline; anything larger than
`fragment_bytes` goes out as fragments, draining between them, so pings and
the peer's inbound traffic are never held behind one big write.

Messages are encoded and decoded by the connection's `SessionCodec` (from the
wire profile), in wire order; which audio goes when is the `AudioPacer`'s
call. The session reaches playback only through `PlaybackPort`, and playback
reaches the session only as a `playback.Listener`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from harness.protocol import (
    UNSET,
    BinaryMessage,
    EventLog,
    Message,
    ProtocolError,
    ServerHandshake,
    SessionCodec,
    activate_roles,
    artwork_type,
    closecodes,
    fragment,
    now_us,
    peek_type,
    wsframes,
)
from harness.protocol import messages as m
from harness.protocol.handshake import IMPLEMENTED_ROLES, support_objects, unknown_roles

from .artwork import make_image
from .config import ServerConfig
from .groups import Group
from .pacing import AudioPacer
from .timeline import Chunk, ChunkStore


class PlaybackPort(Protocol):
    """What a session asks of playback (groups, commands, the timeline)."""

    @property
    def timeline(self) -> ChunkStore: ...

    def join(self, session: Session) -> None: ...

    def leave(self, session: Session) -> None: ...

    def group_changed(self, group: Group | None) -> None: ...

    def controller_command(self, session: Session, cmd: m.ControllerCommand) -> None: ...

    def external_source(self, session: Session) -> None: ...

    def choose_format(self, formats: list[m.AudioFormat]) -> m.PlayerStream | None: ...


@dataclass
class Split:
    """A scripted send (control endpoint): the next `count` messages (of `type`, if
    set) go out as `frames` frames each, or in frames of `fragment_bytes`, with a ping
    between each two frames if `pings`. Exactly those frames: no empty closing frame."""

    frames: int = 1
    pings: bool = False
    type: str | None = None
    count: int = 1
    fragment_bytes: int | None = None


class StalledPayload(Exception):
    def __init__(self, fragments: int, received: int) -> None:
        super().__init__(f"message stalled after {fragments} fragment(s), {received} bytes")
        self.fragments = fragments
        self.received = received


class Session:
    def __init__(self, ws: Connection, session_id: str, playback: PlaybackPort, codec: SessionCodec,
                 config: ServerConfig, log: EventLog, dialled: bool = False,
                 connection_reason: str = "playback") -> None:
        self.playback = playback
        self.codec = codec
        self.config = config
        self.log = log
        self.ws = ws  # accepted (ServerConnection) or dialled by us (ClientConnection): the session is the same
        self.dialled = dialled
        self.connection_reason = connection_reason  # server/hello's: why the server connects (dialer.py)
        self.goodbye_reason: str | None = None  # the client's client/goodbye reason, once it said goodbye
        self.session_id = session_id
        self.handshake = ServerHandshake()
        self.hello: m.ClientHello | None = None
        self.active_roles: list[str] = []
        self.group: Group | None = None
        # client state (merged from client/state)
        self.state = "synchronized"
        self.volume = 100
        self.muted = False
        # outbound
        self._control: deque[tuple[Message, int]] = deque()
        self._control_bytes = 0
        # channel -> (binary type, timestamp µs, shared image bytes); encoded when sent, in wire order
        self._artwork: dict[int, tuple[int, int, bytes]] = {}
        self._artwork_split: dict[int, Split] = {}  # how a scripted image goes out
        self._splits: list[Split] = []  # scripted sends of the next JSON messages
        self._pings = itertools.count(1)
        self._wake = asyncio.Event()
        self.player_format: m.PlayerStream | None = None
        self._pacer = AudioPacer(playback.timeline, config.start_delay_ms * 1000, self._skipped,
                                 None if codec.shared_audio else codec.audio_frame)
        # progress tracking for the slow-reader watchdog
        self._sending = False
        self._unsent = 0  # bytes of the message being sent not yet handed to the transport (shared storage)
        self._progress_us = now_us()
        self._last_buffer = 0
        self._pending_upload: tuple[m.HarnessUpload, int] | None = None

    # --- roles -------------------------------------------------------------------

    def has_role(self, family: str) -> bool:
        return any(r.split("@", 1)[0] == family for r in self.active_roles)

    @property
    def is_player(self) -> bool:
        return self.has_role("player")

    @property
    def audio_sent(self) -> int:
        return self._pacer.sent

    @property
    def audio_skipped(self) -> int:
        return self._pacer.skipped

    # --- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        self.log.emit("accept", self.session_id, remote=str(self.ws.remote_address),
                      **({"dialled": True} if self.dialled else {}))
        tasks: list[asyncio.Task[None]] = []
        try:
            if not await self._handshake():
                return
            tasks = [
                asyncio.create_task(self._writer(), name=f"{self.session_id}-writer"),
                asyncio.create_task(self._watchdog(), name=f"{self.session_id}-watchdog"),
            ]
            self.playback.timeline.subscribe(self.on_chunks)
            self.playback.join(self)
            await self._reader()
        except ConnectionClosed:
            pass
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.playback.timeline.unsubscribe(self.on_chunks)
            self.playback.leave(self)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ws.wait_closed(), 3.0)
            sent = self.ws.protocol.close_sent
            self.log.emit("close", self.session_id, code=self.ws.close_code, reason=self.ws.close_reason or "",
                          sent_code=sent.code if sent else None, audio_sent=self.audio_sent,
                          audio_skipped=self.audio_skipped)

    async def close(self, code: int, reason: str) -> None:
        self.log.emit("close_begin", self.session_id, code=code, reason=reason)
        try:
            await asyncio.wait_for(self.ws.close(code, reason), timeout=2.0)
        except TimeoutError:
            self.ws.transport.abort()

    async def _handshake(self) -> bool:
        try:
            data, t_received, _ = await self._read_message(first_timeout=self.config.hello_timeout_s)
        except TimeoutError:
            await self._reject_and_close(closecodes.HELLO_TIMEOUT, ProtocolError(
                "client/hello", "", f"no client/hello within {self.config.hello_timeout_s} s"))
            return False
        try:
            if isinstance(data, bytes):
                self.handshake.receive_binary()
            message = self.codec.decode(data)
            assert isinstance(message, Message)
            self.handshake.receive(message)
        except ProtocolError as exc:
            await self._reject_and_close(closecodes.PROTOCOL_ERROR, exc)
            return False
        assert isinstance(message, m.ClientHello)
        self.hello = message
        self._pacer.capacity = message.player_support.buffer_capacity if message.player_support else 0
        self.log.emit("recv", self.session_id, t_us=t_received, type=message.TYPE, client_id=message.client_id,
                      roles=message.supported_roles, supports=support_objects(message), **_player_support(message))
        self.active_roles = activate_roles(message.supported_roles, IMPLEMENTED_ROLES)
        if m.HARNESS_ROLE in message.supported_roles:
            self.active_roles.append(m.HARNESS_ROLE)
        newer = unknown_roles(message.supported_roles, IMPLEMENTED_ROLES)
        if newer:
            self.log.emit("outdated_server", self.session_id, roles=newer)
        reply = m.ServerHello(server_id=self.config.server_id, name=self.config.name,
                              active_roles=self.active_roles,
                              connection_reason=self.connection_reason)  # type: ignore[arg-type]
        await self._send_now(reply)
        return True

    async def _reject_and_close(self, code: int, exc: ProtocolError) -> None:
        self.log.emit("reject", self.session_id, type=exc.message_type, field=exc.field, rule=exc.rule,
                      action="close", code=code)
        await self.close(code, str(exc)[:120])

    # --- reading -------------------------------------------------------------------------

    async def _read_message(self, first_timeout: float | None = None) -> tuple[str | bytes, int, int]:
        """One whole message, its completion time and fragment count.

        Waiting for a message to start may take as long as the peer likes
        (unless `first_timeout`); once started, each further fragment must come
        within `payload_timeout_s` or StalledPayload is raised.
        """
        frames = self.ws.recv_streaming()
        try:
            first = await asyncio.wait_for(anext(frames), first_timeout)
            parts = [first]
            received = len(first)
            while True:
                try:
                    part = await asyncio.wait_for(anext(frames), self.config.payload_timeout_s)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise StalledPayload(len(parts), received) from None
                parts.append(part)
                received += len(part)
        finally:
            await frames.aclose()
        t_received = now_us()
        data: str | bytes = "".join(parts) if isinstance(first, str) else b"".join(parts)  # type: ignore[arg-type]
        return data, t_received, len(parts)

    async def _reader(self) -> None:
        while True:
            timeout = None
            if self._pending_upload is not None:
                timeout = max(0.0, (self._pending_upload[1] - now_us()) / 1e6)
            try:
                data, t_received, fragments = await self._read_message(first_timeout=timeout)
            except TimeoutError:
                header, _ = self._pending_upload  # type: ignore[misc]
                self._pending_upload = None
                self.reject(ProtocolError(header.TYPE, "", f"orphan header: upload {header.upload_id!r} announced "
                                           f"{header.size} bytes, no payload within {self.config.payload_timeout_s} s"))
                continue
            except StalledPayload as exc:
                self.log.emit("reject", self.session_id, type="?", field="", action="close",
                              code=closecodes.STALLED_PAYLOAD, fragments=exc.fragments, bytes=exc.received,
                              rule=f"stalled payload: {exc} for {self.config.payload_timeout_s} s")
                await self.close(closecodes.STALLED_PAYLOAD, f"stalled payload: {exc}")
                return
            if isinstance(data, bytes):
                self._handle_binary(data, t_received, fragments)
            else:
                if not await self._handle_text(data, t_received, fragments):
                    return

    def reject(self, exc: ProtocolError, **fields: object) -> None:
        """Log why a message was refused and tell a harness-aware client; stay open."""
        self.log.emit("reject", self.session_id, type=exc.message_type, field=exc.field, rule=exc.rule,
                      action="ignore", **fields)
        if m.HARNESS_ROLE in self.active_roles:
            self.enqueue(m.HarnessError(message_type=exc.message_type, field=exc.field, rule=exc.rule))

    def _handle_binary(self, data: bytes, t_received: int, fragments: int) -> None:
        pending, self._pending_upload = self._pending_upload, None
        self.log.emit("recv", self.session_id, t_us=t_received, type="binary", bytes=len(data), fragments=fragments)
        try:
            message = self.codec.decode(data)
        except ProtocolError as exc:
            self.reject(exc, bytes=len(data))
            return
        assert isinstance(message, BinaryMessage)
        if pending is None or message.type != m.UPLOAD_BINARY_TYPE:
            self.reject(ProtocolError("binary", "type", f"unexpected binary message type {message.type}: "
                                       "clients send binary only as an announced _harness/upload"))
            return
        header = pending[0]
        payload = bytes(message.payload)
        digest = hashlib.sha256(payload).hexdigest()
        if len(payload) != header.size or digest != header.sha256:
            self.reject(ProtocolError(header.TYPE, "sha256", f"upload {header.upload_id!r}: got {len(payload)} "
                                       f"bytes sha256 {digest[:16]}…, announced {header.size} / {header.sha256[:16]}…"))
            return
        self.log.emit("upload", self.session_id, upload_id=header.upload_id, bytes=len(payload), sha256=digest)
        self.enqueue(m.HarnessUploadResult(upload_id=header.upload_id, size=len(payload), sha256=digest))

    async def _handle_text(self, data: str, t_received: int, fragments: int) -> bool:
        """Handle one JSON message; False when the session must end."""
        pending, self._pending_upload = self._pending_upload, None
        if pending is not None:
            # The announced payload never came: refuse the header and treat this
            # message as what it is, never as the payload.
            header = pending[0]
            self.reject(ProtocolError(header.TYPE, "", f"orphan header: upload {header.upload_id!r} announced a "
                                       f"binary payload, next message was JSON {peek_type(data)}"))
        try:
            message = self.codec.decode(data)
            assert isinstance(message, Message)
            self.handshake.receive(message)
        except ProtocolError as exc:
            self.log.emit("recv", self.session_id, t_us=t_received, type=peek_type(data), bytes=len(data),
                          fragments=fragments)
            self.reject(exc)
            return True
        fields: dict[str, object] = {}
        if isinstance(message, m.ClientTime):
            fields["client_transmitted"] = message.client_transmitted
        elif isinstance(message, m.ClientState):
            fields = _state_fields(message)
        self.log.emit("recv", self.session_id, t_us=t_received, type=message.TYPE, bytes=len(data),
                      fragments=fragments, **fields)
        return await self._dispatch(message, t_received)

    async def _dispatch(self, message: Message, t_received: int) -> bool:
        match message:
            case m.ClientTime():
                self.enqueue(m.ServerTime(client_transmitted=message.client_transmitted,
                                          server_received=t_received, server_transmitted=0))
            case m.ClientState():
                self._merge_state(message)
            case m.ClientCommand(controller=cmd) if cmd is not UNSET:
                if not self.has_role("controller"):
                    self.reject(ProtocolError(message.TYPE, "payload.controller", "client has no controller role"))
                else:
                    self.playback.controller_command(self, cmd)
            case m.StreamRequestFormat():
                self._request_format(message)
            case m.HarnessUpload():
                self._pending_upload = (message, now_us() + int(self.config.payload_timeout_s * 1e6))
            case m.ClientGoodbye():
                self.log.emit("goodbye", self.session_id, reason=message.reason)
                self.goodbye_reason = message.reason
                await self.close(closecodes.NORMAL, f"goodbye: {message.reason}")
                return False
            case m.ClientHello():
                pass  # refused by the handshake state machine already
            case _:
                self.reject(ProtocolError(message.TYPE, "", "not a client-to-server message"))
        return True

    def _merge_state(self, message: m.ClientState) -> None:
        state = message.state or (message.player.state if message.player else UNSET)
        if state is not UNSET:
            previous, self.state = self.state, state
            if state == "external_source" and previous != "external_source":
                self.playback.external_source(self)
        if message.player is not UNSET:
            if message.player.volume is not UNSET:
                self.volume = message.player.volume
            if message.player.muted is not UNSET:
                self.muted = message.player.muted
            self.playback.group_changed(self.group)

    def _request_format(self, message: m.StreamRequestFormat) -> None:
        if message.player is not UNSET:
            if not self.is_player:
                self.reject(ProtocolError(message.TYPE, "payload.player", "client has no player role"))
            else:
                req = message.player
                current = self.player_format or m.PlayerStream(codec="pcm", sample_rate=self.playback.timeline.rate,
                                                                 channels=2, bit_depth=16)
                fmt = m.AudioFormat(
                    codec=req.codec or current.codec, sample_rate=req.sample_rate or current.sample_rate,  # type: ignore[arg-type]
                    channels=req.channels or current.channels, bit_depth=req.bit_depth or current.bit_depth)
                chosen = self.playback.choose_format([fmt])
                if chosen is None:
                    self.reject(ProtocolError(message.TYPE, "payload.player", f"cannot serve {fmt}; the server "
                                               f"serves pcm at {self.playback.timeline.rate} Hz, 16/24-bit"))
                else:
                    self.start_player_stream(chosen)
        if message.artwork is not UNSET:
            if not self.has_role("artwork"):
                self.reject(ProtocolError(message.TYPE, "payload.artwork", "client has no artwork role"))
            elif message.artwork.source != "none":
                self.send_artwork(message.artwork.channel, message.artwork.format or "png")

    # --- outbound API used by playback -----------------------------------------------------

    def enqueue(self, message: Message) -> None:
        size = self.codec.encoded_size(message)
        self._control.append((message, size))
        self._control_bytes += size
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def start_player_stream(self, fmt: m.PlayerStream) -> None:
        self.player_format = fmt
        self._pacer.restart()
        self.enqueue(m.StreamStart(player=fmt))

    def end_streams(self, roles: list[str] | None = None) -> None:
        if roles is None or "player" in roles:
            self.player_format = None
            self._pacer.restart()
        self.enqueue(m.StreamEnd(roles=roles if roles is not None else UNSET))

    def clear_player(self) -> None:
        self._pacer.restart()
        self.enqueue(m.StreamClear(roles=["player"]))

    def send_artwork(self, channel: int, image_format: str, size: int | None = None,
                     split: Split | None = None) -> None:
        """stream/start for the channel, then its image (of `size` bytes: a scripted
        one, made beforehand off the event loop; else --artwork-bytes)."""
        image = make_image(image_format, size or self.config.artwork_bytes)
        self.enqueue(m.StreamStart(artwork=m.ArtworkStream(channels=[m.ArtworkStreamChannel(
            source="album", format=image.format, width=image.width, height=image.height)])))  # type: ignore[arg-type]
        self._artwork[channel] = (artwork_type(channel), now_us(), image.data)
        if split is not None:
            self._artwork_split[channel] = split
        else:
            self._artwork_split.pop(channel, None)
        self.log.emit("artwork_queued", self.session_id, channel=channel, bytes=len(image.data), sha256=image.sha256)
        self._wake.set()

    # --- writing -----------------------------------------------------------------------------

    def split_next(self, split: Split) -> None:
        """Scripted: the next JSON message(s) matching `split` go out as it says."""
        self._splits.append(split)

    def _take_split(self, kind: str) -> Split | None:
        for split in self._splits:
            if split.type is None or split.type == kind:
                split.count -= 1
                if split.count <= 0:
                    self._splits.remove(split)
                return split
        return None

    async def _send_now(self, message: Message) -> None:
        split = self._take_split(message.TYPE) if self._splits else None
        if split is None:
            await self._send(self.codec.encode(message), message.TYPE)
        else:
            await self._send_split(self.codec.encode(message), message.TYPE, split)

    async def _send(self, data: str | bytes, kind: str, payload: bytes | memoryview = b"") -> None:
        """Send `data` + `payload` as one message; `payload` (shared, possibly
        large) is fragmented by views, never copied whole."""
        size = len(data) + len(payload)
        pieces = 1 if size <= self.config.fragment_bytes else -(-size // self.config.fragment_bytes)
        if kind != "audio":
            self.log.emit("send_begin", self.session_id, type=kind, bytes=size, fragments=pieces)
        self._sending = True
        self._progress_us = now_us()
        try:
            if pieces == 1:
                await self.ws.send(data + payload if payload else data)
            elif isinstance(data, str):
                await self.ws.send(self._text_fragments(data))
            else:
                header, body = (data, payload) if payload else (b"", data)
                await self.ws.send(self._tracked(fragment(body, self.config.fragment_bytes, header), size))
        finally:
            self._sending = False
            self._unsent = 0
        if kind != "audio":
            self.log.emit("send_end", self.session_id, type=kind, bytes=size)

    async def _send_split(self, data: str | bytes, kind: str, split: Split, payload: bytes | memoryview = b"") -> None:
        """Send `data` + `payload` as exactly the frames `split` asks for, written
        as frames like audio is (websockets would add an empty closing frame), a
        ping between each two if asked; the writer is the only sender of data
        frames, so nothing else can come between them but control frames."""
        opcode = wsframes.TEXT if isinstance(data, str) else wsframes.BINARY
        pieces = _split_pieces(data.encode() if isinstance(data, str) else data, payload, split)
        size = sum(len(piece) for piece in pieces)
        self.log.emit("send_begin", self.session_id, type=kind, bytes=size, fragments=len(pieces), pings=split.pings)
        self._sending = True
        self._unsent = size
        try:
            for i, piece in enumerate(pieces):
                if self.ws.protocol.state is not State.OPEN:
                    raise ConnectionClosed(None, None)
                last = i == len(pieces) - 1
                self._progress_us = now_us()
                self.ws.transport.write(wsframes.encode_frame(wsframes.CONT if i else opcode, piece, last))
                self._unsent -= len(piece)
                if split.pings and not last:
                    await self.ws.ping(f"split {next(self._pings)}")  # its own send drains the transport
                elif self.ws.paused:
                    await self.ws.drain()
        finally:
            self._sending = False
            self._unsent = 0
        self.log.emit("send_end", self.session_id, type=kind, bytes=size)

    def _tracked(self, pieces: list[bytes | memoryview], size: int) -> Iterator[bytes | memoryview]:
        self._unsent = size
        for piece in pieces:
            self._progress_us = now_us()  # websockets asks for the next fragment once the previous drained
            self._unsent -= len(piece)
            yield piece

    def _text_fragments(self, data: str) -> Iterator[str]:
        # Text fragments must split on characters; JSON this large is only ever a test's.
        step = self.config.fragment_bytes
        for i in range(0, len(data), step):
            self._progress_us = now_us()
            yield data[i : i + step]

    async def _writer(self) -> None:
        while True:
            if self._control:
                message, size = self._control.popleft()
                self._control_bytes -= size
                if isinstance(message, m.ServerTime):
                    message.server_transmitted = now_us()
                await self._send_now(message)
                continue
            if self._artwork:
                channel = next(iter(self._artwork))
                header, body = self.codec.encode_binary(*self._artwork.pop(channel))
                split = self._artwork_split.pop(channel, None)
                if split is None:
                    await self._send(header, f"artwork/{channel}", body)
                else:
                    await self._send_split(header, f"artwork/{channel}", split, body)
                continue
            audio, wait_s = self._next_audio()
            if audio is not None:
                await self._send_frame(audio)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)

    def _next_audio(self) -> tuple[bytes | None, float | None]:
        """The audio frame due now, else (None, how long to wait; None = until woken)."""
        fmt = self.player_format
        if fmt is None or self.group is None or self.group.playback_state != "playing":
            return None, None
        return self._pacer.next_due(fmt, now_us())

    def on_chunks(self, chunks: list[Chunk]) -> None:
        """The store has new chunks. A caught-up, idle session writes their
        frames right here in one write — no task switch, and with a codec of
        `shared_audio` (legacy) the very bytes the store prepared, no copy;
        anything else wakes the writer task, which catches up by the pacer's
        rules. Stops at the first chunk the fast path may not take."""
        fmt = self.player_format
        if (fmt is None or self._pacer.cursor != chunks[0].seq or self._sending or self._control
                or self._artwork or self.group is None or self.group.playback_state != "playing"
                or self.ws.protocol.state is not State.OPEN
                or self.ws.transport.get_write_buffer_size() > self.config.write_limit_bytes):
            self._wake.set()
            return
        frames = self._pacer.take(chunks, fmt, now_us())
        if len(frames) < len(chunks):
            self._wake.set()
        if frames:
            self.ws.transport.writelines(frames)

    async def _send_frame(self, frame: bytes) -> None:
        """Write a pre-framed audio message; wait, as ws.send() would, while the
        transport is over its high-water mark."""
        if self.ws.protocol.state is not State.OPEN:
            raise ConnectionClosed(None, None)
        self.ws.transport.write(frame)
        if self.ws.paused:
            self._sending = True
            self._progress_us = now_us()
            try:
                await self.ws.drain()
            finally:
                self._sending = False

    def _skipped(self, count: int, total: int) -> None:
        self.log.emit("audio_skip", self.session_id, chunks=count, total=total)

    # --- watchdog: stats and the slow-reader policy -----------------------------------------

    def held_bytes(self) -> int:
        """Memory this session holds of its own: transport buffer and control
        queue. Payloads being sent are views of shared data (`unsent` in stats)."""
        return self.ws.transport.get_write_buffer_size() + self._control_bytes

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval_s)
            buffered = self.ws.transport.get_write_buffer_size()
            now = now_us()
            if buffered < self._last_buffer:
                self._progress_us = now
            self._last_buffer = buffered
            self.log.emit("session_stats", self.session_id, write_buffer=buffered, control_bytes=self._control_bytes,
                          artwork_pending=sum(len(image) for _, _, image in self._artwork.values()),
                          unsent=self._unsent, held=self.held_bytes(),
                          audio_sent=self.audio_sent, audio_skipped=self.audio_skipped)
            stuck_s = (now - self._progress_us) / 1e6
            if self._sending and stuck_s > self.config.slow_reader_close_s:
                reason = f"slow reader: nothing read for {stuck_s:.1f} s"
            elif self._control_bytes > self.config.control_queue_bytes:
                reason = f"slow reader: control queue over {self.config.control_queue_bytes} bytes"
            else:
                continue
            self.log.emit("reject", self.session_id, type="?", field="", rule=reason, action="close",
                          code=closecodes.SLOW_READER)
            await self.close(closecodes.SLOW_READER, reason)
            return



def _split_pieces(data: bytes, payload: bytes | memoryview, split: Split) -> list[bytes | memoryview]:
    """The frames' payloads: `split.frames` about equal ones, or of `split.fragment_bytes`;
    a large payload is cut into views, never copied whole."""
    size = len(data) + len(payload)
    step = split.fragment_bytes or max(1, -(-size // split.frames))
    if payload:
        return fragment(payload, max(step, len(data) + 1), data)
    view = memoryview(data)
    return [view[i : i + step] for i in range(0, len(data), step)]


def _player_support(hello: m.ClientHello) -> dict[str, object]:
    """What the log keeps of a player's support object: its formats and commands."""
    support = hello.player_support
    if support is UNSET or support is None:
        return {}
    return {"formats": [f"{f.codec}/{f.sample_rate}/{f.channels}/{f.bit_depth}" for f in support.supported_formats],
            "commands": list(support.supported_commands)}


def _state_fields(message: m.ClientState) -> dict[str, object]:
    """client/state's values, for the log: what a judge checks a command's answer by."""
    fields: dict[str, object] = {}
    if message.state is not UNSET:
        fields["state"] = message.state
    player = message.player
    if player is not UNSET:
        for name in ("state", "volume", "muted"):
            value = getattr(player, name)
            if value is not UNSET:
                fields["player_" + name if name == "state" else name] = value
    return fields
