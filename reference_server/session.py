"""One client connection: a reader, a writer and a watchdog, never sharing a wait.

The reader stamps and handles every inbound message as it completes; it never
waits on the writer. The writer sends control messages first, then artwork,
then audio pulled from the shared timeline; anything larger than
`fragment_bytes` goes out as fragments, draining between them, so pings and
the peer's inbound traffic are never held behind one big write.

Messages are encoded and decoded by the connection's `SessionCodec` (from the
wire profile its first message picks: profiles.py), in wire order; which audio
goes when is the `AudioPacer`'s call. The session reaches playback only through
`PlaybackPort`, and playback reaches the session only as a `playback.Listener`.

The `noise` profile: the cleartext init and the Noise handshake (each step
bounded by a config timeout; a stall or a bad message is a silent close), then
`server/hello` -> `client/hello` -> `server/activate`. Playback stays
profile-free: it sends legacy messages, which `_to_noise` rewrites into the
revision's shape when they are queued. Every message is encrypted when it is
written, never when queued: the Noise nonce is the send order. JSON messages
are encrypted and written in one synchronous step, all fragments of one message
together; audio is sealed per listener from the chunk prepared once per format
(`NoiseProfile.prepare_audio`), with `send_ahead` stamped at that moment, by
the pacer when it hands the frame over to be written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar, Protocol

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from harness.protocol import (
    UNSET,
    BinaryMessage,
    ConnectionFatal,
    EventLog,
    HandshakeStep,
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
from harness.protocol.noise import NoiseSession
from harness.protocol.noise_flow import NoiseServerFlow

from .artwork import make_image
from .config import ServerConfig
from .groups import Group
from .pacing import AudioPacer
from .profiles import ServedProfiles
from .timeline import Chunk, ChunkStore

# Roles a noise session activates: the player only. The revision's metadata, controller
# and artwork objects differ from legacy's, and a role must not be activated before the
# server can give its complete state (messaging.md, server/state).
NOISE_ROLES = ("player@v1",)
SILENT = closecodes.NORMAL  # a silent failure (connection.md): no message, a bare close


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
    # The control endpoint's hook into a noise handshake (actions.scripted_handshake): awaited
    # before each handshake-phase message the server sends, with its type; None: nothing scripted.
    handshake_script: ClassVar[Callable[[Session, str], Awaitable[None]] | None] = None

    def __init__(self, ws: Connection, session_id: str, playback: PlaybackPort, profiles: ServedProfiles,
                 config: ServerConfig, log: EventLog, dialled: bool = False,
                 connection_reason: str = "playback") -> None:
        self.playback = playback
        self.profiles = profiles
        # legacy until the first message says otherwise; having dialled, frames are masked (profile.py)
        self.codec: SessionCodec = profiles.legacy.session("server", masked=dialled)
        self.profile: str | None = None  # the profile the client speaks, once its first message is read
        self.noise: NoiseSession | None = None  # the codec, when the session speaks noise
        self.flow: NoiseServerFlow | None = None
        # noise: a re-handshake we started (actions.py) awaits the client's message 2; until
        # then nothing else goes out, then server/activate first (connection.md)
        self.rehandshaking = False
        self._rehandshake_until_us = 0  # then, without message 2, a silent close (the watchdog)
        self.audio_open = True  # noise: False until client/state carried the player object (messaging.md)
        self.available: bool | None = True  # noise: client/state's `available` (None: not reported yet)
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
                                 None if self.codec.shared_audio else self.codec.audio_frame)
        self._accepted_us = now_us()
        self._accept_logged = False
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

    def _log_accept(self) -> None:
        """The session's open event, stamped when the connection was accepted but
        written once the first message named the profile (None: none came)."""
        if not self._accept_logged:
            self._accept_logged = True
            remote = self.ws.remote_address
            self.log.emit("accept", self.session_id, t_us=self._accepted_us, remote=str(remote),
                          port=remote[1] if remote else None, profile=self.profile,
                          **({"dialled": True} if self.dialled else {}))

    async def run(self) -> None:
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
        except StalledPayload as exc:  # the reader handles its own; this is a handshake message's
            self.log.emit("reject", self.session_id, type="?", field="", action="close",
                          code=closecodes.STALLED_PAYLOAD, fragments=exc.fragments, bytes=exc.received,
                          rule=f"stalled payload: {exc} for {self.config.payload_timeout_s} s")
            await self.close(closecodes.STALLED_PAYLOAD, f"stalled payload: {exc}")
        finally:
            self._log_accept()
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
        """Read the first message, pick the profile by it, run that profile's handshake."""
        try:
            data, t_received, _ = await self._read_message(first_timeout=self.config.hello_timeout_s)
        except TimeoutError:
            self._log_accept()
            if "legacy" not in self.profiles.names:
                await self._silent_close("client/init", f"handshake stalled: no client/init within "
                                                        f"{self.config.hello_timeout_s} s")
                return False
            await self._reject_and_close(closecodes.HELLO_TIMEOUT, ProtocolError(
                "client/hello", "", f"no client/hello within {self.config.hello_timeout_s} s"))
            return False
        self.profile = self.profiles.spoken(data)
        self._log_accept()
        if self.profile in self.profiles.names:
            if self.profile == "noise":
                return await self._noise_handshake(data, t_received)
            return await self._legacy_handshake(data, t_received)
        if self.profile == "noise":  # legacy has no message for it: a close that says why
            await self._reject_and_close(closecodes.PROTOCOL_ERROR, ProtocolError(
                "client/init", "", f"this server does not speak the noise profile (--profiles "
                                   f"{','.join(self.profiles.names)}): send client/hello"))
            return False
        # Not client/init on a noise-only server: the noise codec's init failure (server/error malformed).
        return await self._noise_handshake(data, t_received)

    async def _legacy_handshake(self, data: str | bytes, t_received: int) -> bool:
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

    async def _silent_close(self, message_type: str, rule: str) -> None:
        """A silent failure (connection.md, Failure Handling): no further message, a
        close frame without a reason; the log says why."""
        self.log.emit("reject", self.session_id, type=message_type, field="", rule=rule, action="close", code=SILENT)
        await self.close(SILENT, "")

    # --- the noise profile: handshake ---------------------------------------------------

    async def _noise_handshake(self, first: str | bytes, t_received: int) -> bool:
        """client/init (already read) -> server/init + message 1 -> message 2, then
        server/hello -> client/hello -> server/activate. False: the session ended."""
        assert self.profiles.noise is not None
        codec = self.noise = self.profiles.noise.session("server")
        self.codec = codec
        self.log.emit("recv", self.session_id, t_us=t_received, type=peek_type(first) if isinstance(first, str)
                      else "binary", bytes=len(first))
        if not await self._handshake_step(codec.handshake(first), "client/init"):
            return False
        while not codec.ready:
            try:
                data, t_received, _ = await self._read_message(first_timeout=self.config.handshake_step_timeout_s)
            except TimeoutError:
                await self._silent_close("noise/handshake", f"handshake stalled: no Noise message 2 within "
                                                            f"{self.config.handshake_step_timeout_s} s")
                return False
            self.log.emit("recv", self.session_id, t_us=t_received, type="noise/handshake", bytes=len(data))
            if not await self._handshake_step(codec.handshake(data), "noise/handshake"):
                return False
        self.flow = NoiseServerFlow()
        self.audio_open = False
        self.available = None
        self._pacer.seal, self._pacer.profile = self._seal_noise, self.profiles.noise
        await self._write_noise(m.NoiseServerHello(name=self.config.name))
        hello = await self._noise_client_hello()
        if hello is None:
            return False
        return await self._activate(hello)

    async def _handshake_step(self, step: HandshakeStep, kind: str) -> bool:
        """Write what a codec step sends (cleartext text messages); False if it closed."""
        for wire in step.send:
            if self.handshake_script is not None and isinstance(wire, str):
                await self.handshake_script(self, peek_type(wire) or "?")
            await self.ws.send(wire)
        if not step.close:
            return True
        error = step.error or ProtocolError(kind, "", "handshake failed")
        if not step.send:
            await self._silent_close(error.message_type, error.rule)
        elif self.profile == "legacy":  # a legacy client on a noise-only server
            await self._reject_and_close(closecodes.PROTOCOL_ERROR, ProtocolError(
                error.message_type, error.field, f"server/error malformed: this server speaks only the noise "
                                                 f"profile (--profiles {','.join(self.profiles.names)})"))
        else:  # an init failure: server/error went out, then the close
            await self._reject_and_close(closecodes.PROTOCOL_ERROR, error)
        return False

    async def _noise_client_hello(self) -> m.NoiseClientHello | None:
        """The first message after server/hello, which must be client/hello (within one
        step's timeout, however many refused messages come first)."""
        deadline_us = now_us() + int(self.config.handshake_step_timeout_s * 1e6)
        while True:
            try:
                data, t_received, fragments = await self._read_message(
                    first_timeout=max(0.0, (deadline_us - now_us()) / 1e6))
            except TimeoutError:
                await self._silent_close("client/hello", f"handshake stalled: no client/hello within "
                                                         f"{self.config.handshake_step_timeout_s} s")
                return None
            message = await self._decode_noise(data, t_received, fragments)
            if message is False:
                return None
            if message is None:
                continue
            if isinstance(message, m.NoiseClientHello):
                return message
            if isinstance(message, m.NoiseClientGoodbye):
                await self._dispatch(message, t_received)
                return None
            await self._reject_and_close(closecodes.PROTOCOL_ERROR, ProtocolError(
                getattr(message, "TYPE", "binary"), "", "the client's first message after server/hello must be "
                                                        "client/hello"))
            return None

    async def _activate(self, hello: m.NoiseClientHello) -> bool:
        """Activate the roles we serve. With the Sentinel PSK (unpaired) playback needs the
        client's unpaired access (messaging.md, server/activate); with a PSK from `--psks`
        (paired) it does not; without either, or on a credential mismatch, the session
        stays idle."""
        assert self.noise is not None
        support = hello.player_support
        self.hello = m.ClientHello(  # the legacy view playback reads (profile-free)
            client_id=self.noise.peer_id or "", name=hello.name, supported_roles=hello.supported_roles,
            player_support=m.PlayerSupport(supported_formats=support.supported_formats,
                                           buffer_capacity=support.buffer_capacity,
                                           supported_commands=[]) if support else UNSET)  # from client/state
        self._pacer.capacity = support.buffer_capacity if support else 0
        paired = self.noise.psk is not None and self.noise.psk.category != "sn"  # --psks: no unpaired access needed
        playback = (hello.unpaired_access.enabled or paired) and not self.noise.credential_mismatch
        self.active_roles = activate_roles(hello.supported_roles, NOISE_ROLES) if playback else []
        if self.has_role("player") and not support:
            self.active_roles = [r for r in self.active_roles if not r.startswith("player@")]
        await self._write_noise(m.ServerActivate(activities=["playback"] if playback else [],
                                                 active_roles=list(self.active_roles)))
        return True

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
            if self.noise is not None:
                message = await self._decode_noise(data, t_received, fragments)
                if message is False:
                    return
                if message is not None and not await self._dispatch(message, t_received):
                    return
            elif isinstance(data, bytes):
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
        """Act on one message of either profile (their classes differ where shapes do)."""
        match message:
            case m.ClientTime():
                self.enqueue(m.ServerTime(client_transmitted=message.client_transmitted,
                                          server_received=t_received, server_transmitted=0))
            case m.ClientState():
                self._merge_state(message)
            case m.NoiseClientState():
                self._merge_noise_state(message)
            case m.ClientCommand(controller=cmd) if cmd is not UNSET:
                if not self.has_role("controller"):
                    self.reject(ProtocolError(message.TYPE, "payload.controller", "client has no controller role"))
                else:
                    self.playback.controller_command(self, cmd)
            case m.ClientLeave():
                # messaging.md: handled as when the client becomes unavailable (a solo group, stopped)
                self.playback.external_source(self)
            case m.StreamRequestFormat():
                self._request_format(message)
            case m.HarnessUpload() if self.noise is None:
                self._pending_upload = (message, now_us() + int(self.config.payload_timeout_s * 1e6))
            case m.ClientGoodbye() | m.NoiseClientGoodbye():
                self.log.emit("goodbye", self.session_id, reason=message.reason)
                self.goodbye_reason = message.reason
                await self.close(closecodes.NORMAL, f"goodbye: {message.reason}")
                return False
            case m.ClientHello() | m.NoiseClientHello():
                pass  # refused by the handshake state machine already
            case _:
                self.reject(ProtocolError(message.TYPE, "", "not a client-to-server message"))
        return True

    # --- the noise profile: transport ----------------------------------------------------

    async def _decode_noise(self, data: str | bytes, t_received: int, fragments: int) -> Message | bool | None:
        """One received transport message: the message, None (a fragment, or one
        refused and ignored), or False when the connection was closed (silently)."""
        assert self.noise is not None and self.flow is not None

        def refuse(kind: str, exc: ProtocolError) -> None:  # logged, ignored; the session stays open
            self.log.emit("recv", self.session_id, t_us=t_received, type=kind, bytes=len(data), fragments=fragments)
            self.reject(exc)

        try:
            decoded = self.noise.decode(data)
        except ConnectionFatal as exc:
            self.log.emit("recv", self.session_id, t_us=t_received, type="?", bytes=len(data), fragments=fragments)
            await self._silent_close(exc.message_type, exc.rule)
            return False
        except ProtocolError as exc:  # a whole, authentic message of a shape we refuse
            refuse(exc.message_type, exc)
            return None
        if decoded is None:
            return None
        if isinstance(decoded, m.NoiseHandshake) and self.rehandshaking:
            self.log.emit("recv", self.session_id, t_us=t_received, type=decoded.TYPE, bytes=len(data),
                          fragments=fragments)
            return await self._rehandshake_done(decoded)
        if not isinstance(decoded, Message):
            refuse("binary", ProtocolError("binary", "type", f"binary message type {getattr(decoded, 'type', '?')}: "
                                                             "no role this session activated receives binary"))
            return None
        try:
            self.flow.receive(decoded)
        except ProtocolError as exc:
            refuse(decoded.TYPE, exc)
            return None
        fields: dict[str, object] = {}
        if isinstance(decoded, m.ClientTime):
            fields["client_transmitted"] = decoded.client_transmitted
        elif isinstance(decoded, m.NoiseClientState) and decoded.player is not UNSET:
            fields = {k: v for k in ("volume", "muted") if (v := getattr(decoded.player, k)) is not UNSET}
        elif isinstance(decoded, m.NoiseClientHello):
            fields = {"client_id": self.noise.peer_id, "roles": decoded.supported_roles}
            if decoded.player_support is not UNSET:
                support = decoded.player_support
                fields["supports"] = ["player@v1_support"]
                fields["formats"] = [f"{f.codec}/{f.sample_rate}/{f.channels}/{f.bit_depth}"
                                     for f in support.supported_formats]
        self.log.emit("recv", self.session_id, t_us=t_received, type=decoded.TYPE, bytes=len(data),
                      fragments=fragments, **fields)
        return decoded

    def begin_rehandshake(self) -> None:
        """Message 1 of our re-handshake went out: hold everything until message 2, which
        is a handshake step like any other (`handshake_step_timeout_s`)."""
        self.rehandshaking = True
        self._rehandshake_until_us = now_us() + int(self.config.handshake_step_timeout_s * 1e6)

    async def _rehandshake_done(self, message_2: m.NoiseHandshake) -> bool | None:
        """The client's message 2 of our re-handshake: the new keys, server/activate first
        under them (as the activation stands), then the writer resumes. False: a silent close."""
        assert self.noise is not None
        step = self.noise.handshake(message_2)
        if step.close:
            await self._silent_close("noise/handshake", str(step.error or "the re-handshake failed"))
            return False
        self.rehandshaking = False
        activities = ["playback"] if self.active_roles else []
        await self._write_noise(m.ServerActivate(activities=activities, active_roles=list(self.active_roles)))
        self._wake.set()
        return None

    def _merge_noise_state(self, message: m.NoiseClientState) -> None:
        """A player reports `available: false` until its clock is synchronized
        (messaging.md), so only a change from true to false is the external-source case."""
        previous, self.available = self.available, message.available
        self.state = "synchronized" if message.available else "external_source"
        if message.player is not UNSET:
            if message.player.volume is not UNSET:
                self.volume = message.player.volume
            if message.player.muted is not UNSET:
                self.muted = message.player.muted
            self.audio_open = True  # the player's state object came: its binary data may flow
            support = self.hello.player_support if self.hello is not None else None
            if support:  # the revision declares a player's commands in its state object
                support.supported_commands = [c for c in message.player.supported_commands if c in ("volume", "mute")]
            self.playback.group_changed(self.group)
        if previous is True and not message.available:
            self.playback.external_source(self)
        self._wake.set()

    def _to_noise(self, message: Message) -> Message | None:
        """Playback's (legacy) message in the noise revision's shape; None: nothing to
        send (a role the noise session never activates)."""
        match message:
            case m.GroupUpdate():  # the revision always carries all three fields
                group = self.group
                state = message.playback_state if isinstance(message.playback_state, str) else None
                group_id = message.group_id if isinstance(message.group_id, str) else None
                name = message.group_name if isinstance(message.group_name, str) else None
                return m.NoiseGroupUpdate(playback_state=state or (group.playback_state if group else "stopped"),
                                          group_id=group_id or (group.group_id if group else ""),
                                          group_name=name or (group.name if group else ""))
            case m.StreamStart():
                return None if message.player is UNSET else m.NoiseStreamStart(server_transmitted=0,
                                                                                 player=message.player)
            case m.StreamClear():
                return m.NoiseStreamClear(server_transmitted=0, roles=message.roles)
            case m.ServerCommand():
                p = message.player
                return None if p is UNSET else m.NoiseServerCommand(
                    player=m.NoisePlayerCommand(command=p.command, volume=p.volume, mute=p.mute))
            case m.ServerState() | m.HarnessError() | m.HarnessUploadResult():
                return None
        return message

    async def _write_noise(self, message: Message) -> None:
        """Encrypt and write one message now, all its fragments in one write: the nonce
        is the send order, and transmit timestamps are taken here (messaging.md)."""
        assert self.noise is not None and self.flow is not None
        if self.handshake_script is not None and isinstance(message, m.NoiseServerHello | m.ServerActivate):
            await self.handshake_script(self, message.TYPE)
        if isinstance(message, m.NoiseStreamStart | m.NoiseStreamClear | m.ServerTime):
            message.server_transmitted = now_us()
        self.flow.sent(message)
        wires = self.noise.encode_messages(message)
        size = sum(len(w) for w in wires)
        self.log.emit("send_begin", self.session_id, type=message.TYPE, bytes=size, fragments=len(wires))
        await self._write_frames([wsframes.encode_frame(wsframes.BINARY, w, mask=self.dialled) for w in wires])
        self.log.emit("send_end", self.session_id, type=message.TYPE, bytes=size)

    def _seal_noise(self, prepared: bytes) -> bytes:
        """The pacer's per-listener step: this chunk's AEAD, `send_ahead` stamped now."""
        assert self.noise is not None
        transmit_us = now_us()
        if not self.dialled:
            return self.noise.audio_frame(prepared, transmit_us)
        return b"".join(wsframes.encode_frame(wsframes.BINARY, w, mask=True)
                        for w in self.noise.audio_messages(prepared, transmit_us))

    def writelines(self, frames: list[bytes]) -> bool:
        """Write `frames` in one `transport.write`, only while the connection is alive.
        Not `transport.writelines`: in Python 3.12.1 it registers a writer even after the
        connection was lost (a RST), so the socket was closed later with its fd still in
        the selector, and the next socket given that number failed in epoll_ctl (seen in
        S06, reset); nor does it pause the protocol over the high-water mark, so `ws.paused`
        never turned true and a noise session (every message of which goes through here)
        buffered without bound and was never closed as a slow reader (S02 in noise)."""
        if self.ws.protocol.state is not State.OPEN or self.ws.transport.is_closing():
            return False
        self.ws.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        return True

    async def _write_frames(self, frames: list[bytes]) -> None:
        """Write whole, pre-framed messages (audio; noise's encrypted messages) now;
        wait, as ws.send() would, while the transport is over its high-water mark."""
        if not self.writelines(frames):
            raise ConnectionClosed(None, None)
        if self.ws.paused:
            self._sending = True
            self._progress_us = now_us()
            try:
                await self.ws.drain()
            finally:
                self._sending = False

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
        if self.noise is not None:
            translated = self._to_noise(message)
            if translated is None:
                return
            message = translated
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
        if self.noise is not None:  # the revision's artwork (announce + parts) is not served
            return
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
        if self.noise is not None:
            await self._write_noise(message)
            return
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
                # having dialled we are the WebSocket client: our frames are masked (RFC 6455 §5.3)
                self.ws.transport.write(wsframes.encode_frame(wsframes.CONT if i else opcode, piece, last,
                                                              mask=self.dialled))
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
            if self._control and not self.rehandshaking:
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
                await self._write_frames([audio])
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)

    def _next_audio(self) -> tuple[bytes | None, float | None]:
        """The audio frame due now, else (None, how long to wait; None = until woken)."""
        fmt = self.player_format
        if (fmt is None or self.group is None or self.group.playback_state != "playing" or not self.audio_open
                or not self.available or self.rehandshaking):
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
                or self._artwork or self.rehandshaking or self.group is None or self.group.playback_state != "playing"
                or not self.audio_open or not self.available
                or self.ws.protocol.state is not State.OPEN
                or self.ws.transport.get_write_buffer_size() > self.config.write_limit_bytes):
            self._wake.set()
            return
        frames = self._pacer.take(chunks, fmt, now_us())
        if len(frames) < len(chunks):
            self._wake.set()
        if frames:
            self.writelines(frames)

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
            if self.rehandshaking and now > self._rehandshake_until_us:
                await self._silent_close("noise/handshake", "re-handshake stalled: no Noise message 2 within "
                                                            f"{self.config.handshake_step_timeout_s} s")
                return
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
