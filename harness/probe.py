"""The probe client: a Sendspin client that records everything and can misbehave.

Thin asyncio I/O around two sans-I/O cores: websockets' ClientProtocol for
WebSocket framing (so every frame, its FIN bit and size is visible) and
`harness.protocol` for Sendspin. Reading and writing never wait on each other:
the transport's write() never blocks, and reading is paced or paused only by
`set_read_rate` (with a small SO_RCVBUF the backpressure reaches the server).

Both wire revisions (`ProbeConfig.profile`): `legacy` (cleartext JSON in text
messages) and `noise` (`client/init`, the Noise handshake, then every message one
encrypted binary message). Every whole WebSocket message goes through the
connection's codec: to `codec.handshake()` while it is not ready or when it hands
back a re-handshake, to `codec.decode()` otherwise. Encoding happens when a message
is written, on the one event-loop thread, so the wire order is the encryption order
(the Noise nonce). In `noise` the session is `server/hello` → `client/hello` →
`server/activate`, then `client/state` with `available`; the client_id is the
probe's X25519 public key, and access is unpaired (the Sentinel PSK).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from .protocol import (
    UNSET,
    BinaryMessage,
    ClientHandshake,
    ConnectionFatal,
    EventLog,
    HandshakeStep,
    Message,
    ProtocolError,
    binary_role,
    get_profile,
    now_us,
    peek_type,
    watermark,
)
from .protocol import messages as m
from .protocol.noise_flow import NoiseClientFlow
from .protocol.noise_plaintext import AudioChunk, RawBinary
from .protocol.tcpstall import SendStallWatch

if TYPE_CHECKING:
    from .protocol.noise import Identity

PROFILES = ("legacy", "noise")
NOISE_SUITES = ("25519_ChaChaPoly_SHA256", "25519_AESGCM_SHA256")  # noise_crypto.SUITES, without its import cost


@dataclass(kw_only=True)
class ProbeConfig:
    name: str = "probe-1"
    roles: list[str] = field(default_factory=lambda: ["player@v1", m.HARNESS_ROLE])
    formats: list[m.AudioFormat] = field(
        default_factory=lambda: [m.AudioFormat(codec="pcm", channels=2, sample_rate=48_000, bit_depth=16)])
    buffer_capacity: int = 1_000_000
    artwork_channels: list[m.ArtworkChannelSupport] = field(
        default_factory=lambda: [m.ArtworkChannelSupport(source="album", format="png", media_width=1024,
                                                         media_height=1024)])
    time_interval_s: float | None = 0.1   # None: send no client/time by itself
    rcvbuf: int | None = None             # SO_RCVBUF, set before connect, for real backpressure
    read_rate: float | None = None        # bytes/s; 0 = do not read; None = as fast as possible
    connect_timeout_s: float = 5.0
    reconnect: bool = False               # after losing the connection, connect again (RECONNECT_BACKOFF_S)
    max_message_bytes: int | None = 256 * 1024 * 1024
    profile: str = "legacy"               # the wire revision: legacy or noise
    suite: str = NOISE_SUITES[0]          # noise: the suite client/init announces
    identity: Identity | None = None      # noise: the static X25519 key (None: a fresh one per probe)
    client_id: str | None = None          # legacy: client/hello's client_id (None: the name); noise: the key's
    answer_commands: bool = False         # apply server/command volume/mute and report it in client/state
    # No server/time reply for this long while sending client/time: the session is dead (a
    # stalled or blackholed path: TCP alone may never say so), so drop the connection and,
    # with `reconnect`, connect again. None: wait for ever (tests that stall the server on
    # purpose rely on that). The probe CLI turns it on.
    dead_session_s: float | None = None

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; the probe speaks {list(PROFILES)}")
        if self.suite not in NOISE_SUITES:
            raise ValueError(f"unknown suite {self.suite!r}; Sendspin defines {list(NOISE_SUITES)}")
        if self.profile == "noise":
            from .protocol.noise import Identity  # cryptography's import cost only for noise

            self.identity = self.identity or Identity.generate()
            if self.client_id not in (None, self.identity.peer_id):
                raise ValueError(f"in the noise profile the client_id is the identity's public key "
                                 f"({self.identity.peer_id}), not {self.client_id!r}")
            self.client_id = self.identity.peer_id


MAX_REDIRECTS = 3
REDIRECTS = (301, 302, 303, 307, 308)
RECONNECT_BACKOFF_S = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2)  # first retry at 100 ms, doubling, then every 3.2 s


class AudioTracker:
    """Exact per-sample continuity from the watermark (gaps, duplicates, reordering)."""

    def __init__(self) -> None:
        self.reset()
        self.gaps = 0         # missing samples
        self.duplicates = 0   # samples received twice
        self.reordered = 0    # samples older than expected but never seen
        self.corrupt = 0      # chunks whose samples are not consecutive
        self.samples = 0

    def reset(self) -> None:
        """A new stream (or a clear): the next sample may be anything."""
        self.expected: int | None = None
        self.last_ts: int | None = None
        self._last_frames = 0
        self._seen_until = -1

    def add(self, payload: bytes | memoryview, fmt: m.PlayerStream, ts_us: int) -> dict[str, int]:
        index = watermark.decode(payload, fmt.channels, fmt.bit_depth)
        if len(index) == 0:
            return {"first": -1, "frames": 0, "gap": 0, "dup": 0, "reorder": 0, "corrupt": 0}
        if fmt.channels == 1:
            last_ts = ts_us if self.last_ts is None else self.last_ts
            estimate = 0 if self.expected is None else self.expected + (
                (ts_us - last_ts) * fmt.sample_rate // 1_000_000 - self._last_frames)
            first = watermark.unwrap(int(index[0]), estimate if self.expected is not None else int(index[0]),
                                     fmt.bit_depth)
            index = first + ((index - index[0]) % (1 << fmt.bit_depth))
        first, frames = int(index[0]), len(index)
        corrupt = int(frames > 1 and not bool((index[1:] - index[:-1] == 1).all()))
        self.corrupt += corrupt
        gap = dup = reorder = 0
        if self.expected is not None:
            if first > self.expected:
                gap = first - self.expected
            elif first < self.expected:
                overlap = min(frames, self.expected - first)
                if first + overlap - 1 <= self._seen_until:
                    dup = overlap
                else:
                    reorder = overlap
        self.gaps += gap
        self.duplicates += dup
        self.reordered += reorder
        self.samples += frames
        self.expected = max(self.expected or 0, first + frames)
        self._seen_until = max(self._seen_until, first + frames - 1)
        self.last_ts = ts_us
        self._last_frames = frames
        return {"first": first, "frames": frames, "gap": gap, "dup": dup, "reorder": reorder, "corrupt": corrupt}


class _Stream(asyncio.Protocol):
    def __init__(self, probe: ProbeClient) -> None:
        self.probe = probe

    def data_received(self, data: bytes) -> None:
        self.probe._on_data(data)

    def eof_received(self) -> bool | None:
        self.probe._on_eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.probe._on_lost(exc)


class ProbeClient:
    def __init__(self, url: str, config: ProbeConfig | None = None, log: EventLog | None = None) -> None:
        self.url = url
        self.config = config or ProbeConfig()
        self.name = self.config.name
        self.log = log or EventLog(None, self.name)
        self.noise = self.config.profile == "noise"
        if self.noise:
            from .protocol.noise import NoiseProfile

            # the probe's own identity and suite, the same on every reconnect (a server may have approved it)
            self.profile: Any = NoiseProfile(identity=self.config.identity, suite=self.config.suite)  # type: ignore[arg-type]
        else:
            self.profile = get_profile(self.config.profile)
        self.codec = self.profile.session("client")  # per connection: a new one on every (re)connect
        self.flow: NoiseClientFlow | None = None  # noise: who may send what after the handshake
        self.server_id: str | None = None
        self.ws: ClientProtocol | ServerProtocol = ClientProtocol(parse_uri(url),
                                                                  max_size=self.config.max_message_bytes)
        self.transport: asyncio.Transport | None = None
        self.handshake: ClientHandshake | None = None
        self.read_rate = self.config.read_rate
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self.messages: list[Message] = []
        self.errors: list[m.HarnessError] = []
        self.artwork: dict[int, tuple[str, int, list[int]]] = {}   # channel -> (sha256, bytes, fragment sizes)
        self.audio = AudioTracker()
        self.audio_chunks = 0
        self.player_format: m.PlayerStream | None = None
        self.time_replies: dict[int, m.ServerTime] = {}
        self.time_sent: list[int] = []
        self._server_hello = asyncio.Event()
        self._codec_ready = asyncio.Event()   # noise: the handshake completed
        self._activated = asyncio.Event()     # noise: the first server/activate arrived
        self._silenced = False                # noise: closing silently, read nothing more
        self._handshake_error = ""            # noise: why the codec's handshake closed (server/error, ...)
        self._rehandshaking = False           # noise: message 2 of a re-handshake sent, no server/activate yet
        self._pending_sizes: list[int] = []   # noise: frame sizes of a Sendspin-fragmented message still open
        self._opened = asyncio.Event()
        self._message_waiters: list[tuple[Callable[[Message], bool], asyncio.Future[Message]]] = []
        self._frames: list[Frame] = []
        self._first_frame_us = 0
        self._paused_until: asyncio.TimerHandle | None = None
        self._send_watch: SendStallWatch | None = None  # while it holds its reads (tcpstall.py)
        self._tasks: list[asyncio.Task[None]] = []
        self._reconnecting = False
        self._fragment_open = False
        self._silent_close = False
        self._closing = False
        self.connected_url = url
        self.clock_offset_us = 0
        self._best_rtt_us = 1 << 62
        self.volume = 100
        self.muted = False
        self._accept_path: str | None = None   # set while the connection is one a server dialled (accept())
        self._last_reply_us = 0   # the last server/time (or server/hello) read: the session's pulse

    # --- connection ------------------------------------------------------------------

    @property
    def in_session(self) -> bool:
        """Connected, upgraded and past server/hello (noise: the first server/activate), and not closed."""
        started = self._activated if self.noise else self._server_hello
        return (self.transport is not None and not self.closed.is_set() and started.is_set()
                and self.ws.state is State.OPEN)

    @property
    def local_port(self) -> int | None:
        """This connection's TCP source port (how a proxy fault targets one client)."""
        name = self.transport.get_extra_info("sockname") if self.transport is not None else None
        return name[1] if name else None

    def hello(self) -> m.ClientHello | m.NoiseClientHello:
        c = self.config
        if self.noise:
            return m.NoiseClientHello(
                name=self.name, supported_roles=c.roles,
                device_info=m.NoiseDeviceInfo(product_name="sendspin-harness probe"),
                player_support=m.NoisePlayerSupport(supported_formats=c.formats, buffer_capacity=c.buffer_capacity)
                if "player@v1" in c.roles else UNSET,
                supported_pair_methods={}, unpaired_access=m.UnpairedAccess(enabled=True))
        roles = c.roles
        return m.ClientHello(
            client_id=c.client_id or self.name, name=self.name, supported_roles=roles,
            device_info=m.DeviceInfo(product_name="sendspin-harness probe"),
            player_support=m.PlayerSupport(supported_formats=c.formats, buffer_capacity=c.buffer_capacity,
                                           supported_commands=["volume", "mute"])
            if "player@v1" in roles else UNSET,
            artwork_support=m.ArtworkSupport(channels=c.artwork_channels) if "artwork@v1" in roles else UNSET,
        )

    def _new_connection(self, url: str, accept_path: str | None = None) -> None:
        """Fresh per-connection state; what the probe measured so far stays.
        `accept_path`: a server dialled us, so we speak the WebSocket server side."""
        self._accept_path = accept_path
        self.ws = ClientProtocol(parse_uri(url), max_size=self.config.max_message_bytes) if accept_path is None \
            else ServerProtocol(max_size=self.config.max_message_bytes)
        self.transport = None
        self.codec = self.profile.session("client")  # noise: new keys, a new handshake
        self.handshake = None
        self.flow = None
        self.closed = asyncio.Event()
        self._opened = asyncio.Event()
        self._server_hello = asyncio.Event()
        self._codec_ready = asyncio.Event()
        self._activated = asyncio.Event()
        self._rehandshaking = False
        self._silenced = False
        self._handshake_error = ""
        self._pending_sizes = []
        self._frames = []
        self._fragment_open = False
        self.player_format = None
        self.audio.reset()

    async def connect(self, send_hello: bool = True) -> None:
        """TCP connect and WebSocket upgrade (following HTTP redirects, as a
        coordinator sends clients to a worker), then the Sendspin handshake."""
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            self._new_connection(url)
            await self._open(url)
            exc = self.ws.handshake_exc
            if exc is None:
                break
            response = getattr(exc, "response", None)
            location = response.headers.get("Location") if response is not None else None
            if response is None or response.status_code not in REDIRECTS or not location:
                raise ConnectionError(f"{self.name}: WebSocket upgrade refused: {exc}")
            self.log.emit("redirect", self.name, url=url, location=location)
            await self._drop_silently()  # its close must land before the next connection's state exists
            url = location
        else:
            raise ConnectionError(f"{self.name}: more than {MAX_REDIRECTS} redirects from {self.url}")
        self.connected_url = url
        if self.read_rate == 0:
            assert self.transport is not None
            self.transport.pause_reading()
        self._watch_sends()
        if send_hello:
            await self.sendspin_handshake()

    def _tune(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        # asyncio sets TCP_NODELAY only for sockets it creates; without it a small
        # client/time can wait ~40 ms for a delayed ACK (Nagle).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.config.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.rcvbuf)

    async def _open(self, url: str) -> None:
        uri = parse_uri(url)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tune(sock)
        timeout = self.config.connect_timeout_s
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (uri.host, uri.port)), timeout)
        except BaseException:
            sock.close()
            raise
        self._silent_close = False
        self.transport, _ = await loop.create_connection(lambda: _Stream(self), sock=sock)
        self.log.emit("connect", self.name, url=url, rcvbuf=sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        assert isinstance(self.ws, ClientProtocol)
        self.ws.send_request(self.ws.connect())
        self._flush()
        await asyncio.wait_for(self._opened.wait(), timeout)
        if self.ws.state is not State.OPEN and self.ws.handshake_exc is None:
            raise ConnectionError(f"{self.name}: connection lost during the WebSocket upgrade")

    async def accept(self, sock: socket.socket, path: str = "/sendspin", send_hello: bool = True) -> None:
        """A server-initiated connection (the spec's discovery path: the client listens,
        the server dials): answer the WebSocket upgrade on an accepted socket (404 for
        any other `path`), then run the same client session; we still say client/hello
        first. Never reconnects: after a loss it is the server's turn to dial again."""
        self._new_connection(self.url, accept_path=path)
        self._tune(sock)
        self._silent_close = False
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.connect_accepted_socket(lambda: _Stream(self), sock)
        host, port = sock.getpeername()[:2]
        self.connected_url = f"ws://{host}:{port}"
        self.log.emit("accepted", self.name, peer=f"{host}:{port}",
                      rcvbuf=sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        try:
            await asyncio.wait_for(self._opened.wait(), self.config.connect_timeout_s)
            if self.ws.state is not State.OPEN:
                raise ConnectionError(f"{self.name}: refused the upgrade from {host}:{port}: "
                                      f"{self.ws.handshake_exc or 'wrong path or closed'}")
        except BaseException:
            self._silent_close = True  # no upgrade, no session: nothing to log as a close
            self.transport.abort()
            raise
        if self.read_rate == 0:
            self.transport.pause_reading()
        self._watch_sends()
        if send_hello:
            await self.sendspin_handshake()

    def _answer_upgrade(self, request: Request) -> None:
        assert isinstance(self.ws, ServerProtocol)
        wanted = self._accept_path
        if request.path.split("?", 1)[0] != wanted:
            response = self.ws.reject(404, f"no Sendspin endpoint at {request.path} (this client serves {wanted})\n")
        else:
            response = self.ws.accept(request)
        self.ws.send_response(response)
        self._opened.set()

    async def _until(self, event: asyncio.Event, what: str) -> None:
        """Wait for `event` (connect_timeout_s at most); ConnectionError if the connection closes first."""
        waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self.closed.wait())]
        try:
            await asyncio.wait(waits, timeout=self.config.connect_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if event.is_set():
            return
        if self.closed.is_set():
            why = f"; {self._handshake_error}" if self._handshake_error else ""
            raise ConnectionError(f"{self.name}: the connection closed while waiting for {what} "
                                  f"({self.close_code} {self.close_reason!r}{why})")
        raise TimeoutError(f"{self.name}: no {what} within {self.config.connect_timeout_s} s")

    async def _drop_silently(self) -> None:
        """Abort this connection without a `close` event or a reconnect (a redirect, or a
        handshake the caller gives up on and reports itself)."""
        if self.transport is None or self.closed.is_set():
            return
        self._silent_close = True
        self.transport.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), 1.0)

    async def sendspin_handshake(self) -> None:
        try:
            await self._sendspin_handshake()
        except TimeoutError:
            await self._drop_silently()  # a stale connection must not outlive the attempt
            raise

    async def _sendspin_handshake(self) -> None:
        if self.noise:
            await self._noise_session_start()
        else:
            hello = self.hello()
            assert isinstance(hello, m.ClientHello)
            self.handshake = ClientHandshake(hello)
            self.send(hello)
            await self._until(self._server_hello, "server/hello")
            self.send(m.ClientState(state="synchronized", player=m.PlayerState(volume=self.volume, muted=self.muted)
                                    if "player@v1" in self.config.roles else UNSET))
        if self.config.time_interval_s:
            self._tasks.append(asyncio.create_task(self._time_loop(), name=f"{self.name}-time"))

    async def _noise_session_start(self) -> None:
        """client/init, the Noise handshake (the reader answers each step), then
        server/hello → client/hello → server/activate → client/state (available)."""
        self.flow = NoiseClientFlow()
        self._write_step(self.codec.handshake(None))  # client/init: the client speaks first, whoever dialled
        await self._until(self._codec_ready, "the Noise handshake")
        await self._until(self._server_hello, "server/hello")
        self.send(self.hello())
        await self._until(self._activated, "server/activate")
        self.send(self.noise_state())

    def noise_state(self) -> m.NoiseClientState:
        """client/state as the noise revision has it: `available`, and the player's full state."""
        player = m.NoisePlayerState(volume=self.volume, muted=self.muted, output_delay_ms=0,
                                    required_lead_time_ms=0, min_buffer_ms=0, supported_commands=["volume", "mute"])
        return m.NoiseClientState(available=True, player=player if "player@v1" in self.config.roles else UNSET)

    async def close(self, goodbye: bool = True, timeout: float = 3.0) -> None:
        """Say goodbye (if still open), wait for the server to close, then drop the socket."""
        self._closing = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.transport is None:
            return
        self.set_read_rate(None)
        if goodbye and self.ws.state is State.OPEN and not self._fragment_open:
            if not self.noise:
                self.send(m.ClientGoodbye(reason="shutdown"))
            elif self.codec.ready and not self._rehandshaking:  # the codec refuses anything mid re-handshake
                if self._activated.is_set():  # client/leave: a member's; before activation it is in no group
                    self.send(m.ClientLeave())
                self.send(m.NoiseClientGoodbye(reason="shutdown"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), timeout)
        if not self.closed.is_set():
            self.transport.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), timeout)

    # --- sending ---------------------------------------------------------------------

    def send(self, message: Message) -> None:
        """Encode now and write at once: the encryption order is the wire order."""
        if self.flow is not None:
            self.flow.sent(message)
        for data in self.codec.encode_messages(message):
            if isinstance(data, str):
                self.ws.send_text(data.encode())
            else:
                self.ws.send_binary(data)
        self._flush()
        fields: dict[str, Any] = {"client_transmitted": message.client_transmitted} \
            if isinstance(message, m.ClientTime) else {}
        self.log.emit("send", self.name, type=message.TYPE, **fields)

    def send_time(self) -> int:
        t = now_us()
        self.time_sent.append(t)
        self.send(m.ClientTime(client_transmitted=t))
        return t

    def _write_step(self, step: HandshakeStep) -> None:
        """Write what a codec handshake step sends, in order; close after it if it says so."""
        for data in step.send:
            self.ws.send_text(data.encode()) if isinstance(data, str) else self.ws.send_binary(data)
            # cleartext: client/init, message 2; encrypted: a re-handshake's message 2
            self.log.emit("send", self.name, type=_peek(data) if isinstance(data, str) else m.NoiseHandshake.TYPE)
        self._flush()
        if step.error is not None:
            self.log.emit("reject", self.name, type=step.error.message_type, field=step.error.field,
                          rule=step.error.rule)
        if step.close:
            self._close_silently()

    def _close_silently(self) -> None:
        """The noise revision's silent close: no Sendspin message, just the WebSocket close
        (and the TCP connection dropped if the peer does not answer it)."""
        self._silenced = True
        if self.ws.state is State.OPEN:
            self.ws.send_close(1002)
            self._flush()
        transport = self.transport
        if transport is not None:
            asyncio.get_running_loop().call_later(1.0, transport.abort)

    def _flush(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        for data in self.ws.data_to_send():
            if data:
                self.transport.write(data)
            else:
                self.transport.write_eof() if self.transport.can_write_eof() else None

    async def _time_loop(self) -> None:
        assert self.config.time_interval_s
        ws = self.ws  # this connection's loop ends with it, also when a reconnect replaces it
        while self.ws is ws and ws.state is State.OPEN:
            if self._dead_session():
                return
            if not self._fragment_open and not self._rehandshaking:  # noise: nothing new until server/activate
                self.send_time()
            await asyncio.sleep(self.config.time_interval_s)

    def _dead_session(self) -> bool:
        """With `dead_session_s`: True, after dropping the connection, once the server has
        answered no client/time for that long. Replies are the one thing a live Sendspin
        server always sends; a stalled message or a blackholed path sends nothing, and a
        server that only answers pings is no better."""
        limit = self.config.dead_session_s
        silent = now_us() - self._last_reply_us
        if limit is None or silent <= limit * 1_000_000 or self.transport is None:
            return False
        self.log.emit("dead_session", self.name, silent_us=silent)
        self.transport.abort()  # no close handshake: nothing would answer it (_on_lost reconnects)
        return True

    # --- misbehaviour (for testing servers) ---------------------------------------------

    def send_raw(self, data: str | bytes, note: str) -> None:
        """Send one whole message exactly as given (no Sendspin encoding)."""
        if isinstance(data, str):
            self.ws.send_text(data.encode())
        else:
            self.ws.send_binary(data)
        self._flush()
        self.log.emit("misbehave", self.name, kind=note, bytes=len(data), type=peek_type(data)
                      if isinstance(data, str) else "binary")

    def send_upload(self, data: bytes, upload_id: str = "u1", payload: bool = True) -> None:
        """An application upload: JSON header then the binary payload (or, with
        payload=False, the header alone: an orphan header)."""
        self.send(m.HarnessUpload(upload_id=upload_id, size=len(data), sha256=hashlib.sha256(data).hexdigest()))
        if payload:
            head, body = self.codec.encode_binary(m.UPLOAD_BINARY_TYPE, now_us(), data)
            self.send_raw(head + body, "upload_payload")
        else:
            self.log.emit("misbehave", self.name, kind="orphan_header", upload_id=upload_id, bytes=len(data))

    def start_fragmented(self, first: bytes, text: bool = False) -> None:
        """Send the first fragment (FIN=0) of a message and withhold the rest."""
        (self.ws.send_text if text else self.ws.send_binary)(first, fin=False)
        self._fragment_open = True
        self._flush()
        self.log.emit("misbehave", self.name, kind="stalled_payload", bytes=len(first))

    def ping(self, data: str) -> None:
        self.ws.send_ping(data.encode())
        self._flush()
        self.log.emit("ping", self.name, data=data)

    def set_read_rate(self, rate: float | None) -> None:
        """None: read freely; 0: stop reading; R: read about R bytes/s."""
        self.read_rate = rate
        self.log.emit("read_rate", self.name, rate=rate)
        if self.transport is None or self.transport.is_closing():
            return
        if self._paused_until is not None:
            self._paused_until.cancel()
            self._paused_until = None
        if rate == 0:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()
        self._watch_sends()

    def _watch_sends(self) -> None:
        """While this probe holds its reads (a read rate), what it sends can stall on its own
        socket (tcpstall.py): logged as `tcp_stall`, ours, not the server's."""
        holding = self.read_rate is not None and self.transport is not None and not self.transport.is_closing()
        if holding and self._send_watch is None:
            assert self.transport is not None
            self._send_watch = SendStallWatch(asyncio.get_running_loop(), self.transport.get_extra_info("socket"),
                                              self.log, self.name, "server")
        if self._send_watch is not None:
            self._send_watch.start() if holding else self._send_watch.stop()

    # --- receiving -------------------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        t = now_us()
        self.ws.receive_data(data)
        self._process_events(t)
        self._flush()
        if self.read_rate and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
            loop = asyncio.get_running_loop()
            self._paused_until = loop.call_later(len(data) / self.read_rate, self._resume)

    def _resume(self) -> None:
        self._paused_until = None
        if self.read_rate != 0 and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _on_eof(self) -> None:
        self.ws.receive_eof()
        self._process_events(now_us())
        self._flush()

    def _on_lost(self, exc: Exception | None) -> None:
        if self._paused_until is not None:
            self._paused_until.cancel()
        if self._send_watch is not None:  # a reconnect watches its own socket
            self._send_watch.close()
            self._send_watch = None
        if self._silent_close:  # a redirect, not a session
            self.closed.set()
            return
        if self.ws.state is not State.CLOSED:
            self.ws.receive_eof() if self.ws.state is not State.CONNECTING else None
        code = self.ws.close_code if self.ws.close_rcvd is not None else 1006
        self.close_code = code
        self.close_reason = self.ws.close_rcvd.reason if self.ws.close_rcvd else ""
        self.log.emit("close", self.name, code=code, reason=self.close_reason,
                      error=str(exc) if exc else None, audio_samples=self.audio.samples, gaps=self.audio.gaps,
                      duplicates=self.audio.duplicates, reordered=self.audio.reordered)
        self._opened.set()
        self.closed.set()
        for _, fut in self._message_waiters:
            if not fut.done():
                fut.set_exception(ConnectionError(f"{self.name}: connection closed ({code} {self.close_reason})"))
        # one reconnect loop at a time: a failed attempt that got as far as TCP ends here too
        if self.config.reconnect and not self._closing and self._accept_path is None and not self._reconnecting:
            self._reconnecting = True
            self._tasks.append(asyncio.get_running_loop().create_task(self._reconnect(), name=f"{self.name}-reconnect"))

    async def _reconnect(self) -> None:
        """Back off (RECONNECT_BACKOFF_S, then its last value) and connect to the
        original URL again until it works or close() is called."""
        lost = now_us()
        try:
            for attempt in itertools.count(1):
                delay = RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S)) - 1]
                await asyncio.sleep(delay)
                try:
                    await self.connect()
                except (OSError, ConnectionError, TimeoutError) as exc:
                    self.log.emit("reconnect_failed", self.name, attempt=attempt,
                                  error=str(exc) or type(exc).__name__)
                    continue
                self.log.emit("reconnected", self.name, attempt=attempt, url=self.connected_url,
                              down_us=now_us() - lost)
                return
        finally:
            self._reconnecting = False

    def _process_events(self, t: int) -> None:
        for event in self.ws.events_received():
            if isinstance(event, Response):
                self._opened.set()
                continue
            if isinstance(event, Request):
                self._answer_upgrade(event)
                continue
            assert isinstance(event, Frame)
            if event.opcode is Opcode.PONG:
                # mid_message: the pong came between two fragments of one message.
                self.log.emit("pong", self.name, t_us=t, data=bytes(event.data).decode(errors="replace"),
                              mid_message=bool(self._frames))
            elif event.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                if not self._frames:
                    self._first_frame_us = t
                self._frames.append(event)
                if event.fin:
                    frames, self._frames = self._frames, []
                    self._on_message(frames, t)

    def _on_message(self, frames: list[Frame], t: int) -> None:
        """One whole WebSocket message, through the codec (text or binary is its business)."""
        sizes = [len(f.data) for f in frames]
        data = b"".join(f.data for f in frames)
        wire: str | bytes = data.decode(errors="replace") if frames[0].opcode is Opcode.TEXT else data
        if self._silenced:
            return  # a silent close is under way: nothing more is read
        if not self.codec.ready:
            self._on_handshake(wire, len(data))
            return
        try:
            decoded = self.codec.decode(wire)
        except ConnectionFatal as exc:
            self.log.emit("reject", self.name, type=exc.message_type, field=exc.field, rule=exc.rule,
                          action="close", bytes=len(data))
            self._close_silently()
            return
        except ProtocolError as exc:  # an unknown type or a bad field: refused, the session goes on
            self.log.emit("reject", self.name, type=exc.message_type, field=exc.field, rule=exc.rule, bytes=len(data))
            return
        if decoded is None:  # noise: a Sendspin fragment of a message still open
            self._pending_sizes += sizes
            return
        if self._pending_sizes:
            sizes, self._pending_sizes = self._pending_sizes + sizes, []
        if isinstance(decoded, m.NoiseHandshake):  # noise: the server starts a re-handshake
            self._on_handshake(decoded, len(data))
        elif isinstance(decoded, Message):
            self._on_json(decoded, t, sum(sizes), sizes)
        else:
            self._on_binary(decoded, t, len(data), sizes)

    def _on_handshake(self, data: str | bytes | m.NoiseHandshake, size: int) -> None:
        """A message of the codec's own handshake (noise): answer it in order."""
        rehandshake = isinstance(data, m.NoiseHandshake)
        try:
            step = self.codec.handshake(data)
        except ProtocolError as exc:  # nothing was expected now (e.g. a message after the close began)
            self.log.emit("reject", self.name, type=exc.message_type, field=exc.field, rule=exc.rule, bytes=size)
            self._close_silently()
            return
        self.log.emit("recv", self.name, type=m.NoiseHandshake.TYPE if rehandshake else _peek(data), bytes=size,
                      fragments=1)
        if step.error is not None:
            self._handshake_error = str(step.error)
        if step.done:
            self.server_id = self.codec.peer_id
            self._rehandshaking = rehandshake
            psk = self.codec.psk
            self.log.emit("noise_handshake", self.name, suite=self.codec.suite, server_id=self.server_id,
                          client_id=self.config.client_id, psk_category=psk.category if psk else None,
                          rehandshake=rehandshake, notes=list(step.notes))
        self._write_step(step)
        if step.done:
            self._codec_ready.set()

    def _on_json(self, message: Message, t: int, size: int, sizes: list[int]) -> None:
        try:
            if self.handshake is not None:
                self.handshake.receive(message)
            if self.flow is not None:
                self.flow.receive(message)
        except ProtocolError as exc:
            self.log.emit("reject", self.name, type=exc.message_type, field=exc.field, rule=exc.rule)
            return
        self.messages.append(message)
        fields: dict[str, Any] = {}
        obey: m.PlayerCommand | None = None
        match message:
            case m.ServerHello():
                fields = {"server_id": message.server_id, "active_roles": message.active_roles}
                self._last_reply_us = t
                self._server_hello.set()
            case m.NoiseServerHello():
                fields = {"server_id": self.server_id}
                self._last_reply_us = t
                self._server_hello.set()
            case m.ServerActivate():
                fields = {"active_roles": self.flow.active_roles if self.flow else message.active_roles,
                          "activities": message.activities}
                self._rehandshaking = False  # the re-handshake's keys are in use: the client may speak again
                self._activated.set()
            case m.ServerTime():
                self._last_reply_us = t
                self.time_replies[message.client_transmitted] = message
                self._update_clock_offset(message, t)
                fields = {"client_transmitted": message.client_transmitted,
                          "server_received": message.server_received,
                          "server_transmitted": message.server_transmitted,
                          "rtt_us": t - message.client_transmitted}
            case m.StreamStart(player=player) | m.NoiseStreamStart(player=player) if player is not UNSET:
                self.player_format = player
                self.audio.reset()
                fields = {"player": {"channels": player.channels, "bit_depth": player.bit_depth,
                                     "sample_rate": player.sample_rate}}
            case m.StreamClear() | m.NoiseStreamClear() | m.StreamEnd():
                roles = message.roles
                if roles is UNSET or "player" in roles:
                    self.audio.reset()
                    if isinstance(message, m.StreamEnd):
                        self.player_format = None
            case m.HarnessError():
                self.errors.append(message)
                fields = {"rule": message.rule, "message_type": message.message_type}
            case m.ServerCommand(player=command) | m.NoiseServerCommand(player=command) \
                    if command is not UNSET and self.config.answer_commands:
                obey = command
        self.log.emit("recv", self.name, t_us=t, type=message.TYPE, bytes=size, fragments=len(sizes), **fields)
        if obey is not None:
            self._obey(obey)
        for matcher, fut in list(self._message_waiters):
            if not fut.done() and matcher(message):
                fut.set_result(message)

    def _obey(self, command: m.PlayerCommand | m.NoisePlayerCommand) -> None:
        """What a player does with server/command: take the volume or mute and report
        its new state, so the server's group state follows the player."""
        if command.command == "volume" and command.volume is not UNSET:
            self.volume = command.volume
        elif command.command == "mute" and command.mute is not UNSET:
            self.muted = command.mute
        else:
            return
        if self.noise:
            if not self._rehandshaking:
                self.send(self.noise_state())
            return
        self.send(m.ClientState(player=m.PlayerState(volume=self.volume, muted=self.muted)))

    def _on_binary(self, message: BinaryMessage | AudioChunk | RawBinary, t: int, size: int,
                   sizes: list[int]) -> None:
        try:
            if self.handshake is not None:
                self.handshake.receive_binary()
            if self.flow is not None:
                self.flow.receive(message)
        except ProtocolError as exc:
            self.log.emit("reject", self.name, type=exc.message_type, field=exc.field, rule=exc.rule, bytes=size)
            return
        role = binary_role(message.type)
        if role == "player" and not isinstance(message, RawBinary):
            self._on_audio(message, t, len(sizes))
        elif isinstance(message, RawBinary):  # noise: artwork parts, visualizer, application roles: not parsed
            self.log.emit("recv", self.name, t_us=t, type="binary", binary_type=message.type, bytes=size,
                          fragments=len(sizes))
        elif role == "artwork":
            digest = hashlib.sha256(message.payload).hexdigest()
            self.artwork[message.slot] = (digest, len(message.payload), sizes)
            self.log.emit("artwork", self.name, t_us=t, t_first_us=self._first_frame_us, channel=message.slot,
                          bytes=len(message.payload), sha256=digest, fragments=len(sizes),
                          fragment_max=max(sizes), fragment_min=min(sizes), fragment_sizes=sizes[:64])
        else:
            self.log.emit("recv", self.name, t_us=t, type="binary", binary_type=message.type, bytes=size)

    def _on_audio(self, message: BinaryMessage | AudioChunk, t: int, fragments: int) -> None:
        fmt = self.player_format
        if fmt is None:
            self.log.emit("reject", self.name, type="binary", field="type", rule="audio chunk without an active stream")
            return
        self.audio_chunks += 1
        try:
            stats = self.audio.add(message.payload, fmt, message.timestamp_us)
        except ValueError as exc:
            self.log.emit("reject", self.name, type="binary", field="payload", rule=str(exc))
            return
        extra = {"send_ahead_us": message.send_ahead_us} if isinstance(message, AudioChunk) else {}
        self.log.emit("audio", self.name, t_us=t, ts_us=message.timestamp_us,
                      lead_us=message.timestamp_us - (t + self.clock_offset_us),
                      bytes=len(message.payload), fragments=fragments, **stats, **extra)

    def _update_clock_offset(self, reply: m.ServerTime, t_received: int) -> None:
        """NTP-style offset (server clock - our clock) from the reply with the
        shortest round trip so far. Zero against our own server, which shares
        the clock; needed for foreign servers (aiosendspin uses MONOTONIC_RAW)."""
        rtt = (t_received - reply.client_transmitted) - (reply.server_transmitted - reply.server_received)
        if rtt < self._best_rtt_us:
            self._best_rtt_us = rtt
            self.clock_offset_us = ((reply.server_received - reply.client_transmitted)
                                    + (reply.server_transmitted - t_received)) // 2

    # --- waiting ----------------------------------------------------------------------------

    def wait_for(self, matcher: Callable[[Message], bool], timeout: float) -> Coroutine[Any, Any, Message]:
        """The next message for which matcher() is true, counting from this call
        (not from the first await), so a reply cannot slip past the waiter."""
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        entry = (matcher, fut)
        self._message_waiters.append(entry)

        async def wait() -> Message:
            try:
                return await asyncio.wait_for(fut, timeout)
            finally:
                self._message_waiters.remove(entry)

        return wait()

    def wait_type(self, cls: type[Message], timeout: float) -> Coroutine[Any, Any, Message]:
        return self.wait_for(lambda msg: isinstance(msg, cls), timeout)


def _peek(data: str | bytes) -> str:
    return peek_type(data) if isinstance(data, str) else "binary"


if __name__ == "__main__":  # python -m harness.probe: the command line lives in probe_cli.py
    from harness.probe_cli import main

    raise SystemExit(main())
