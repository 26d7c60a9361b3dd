"""aiosendspin's client as a Sendspin client under test, through its public API only.
One script for both pinned versions; the installed one decides the wire revision:
aiosendspin 6.1.1 speaks `legacy`, aiosendspin 10.2.1 speaks only `noise`.

    python clients/aiosendspin_client.py --url ws://HOST:PORT/sendspin [--client-id ID] [--client-name NAME]
        [--duration S] [--reconnect] [--summary F] [--ready F] [--log-level LEVEL]
        [--identity FILE] [--suite chacha|aesgcm]                      # 10.2.1 (noise) only

A headless player@v1 (PCM, 48 kHz stereo/mono 16-bit, 44.1 kHz stereo, 8 kHz mono):
`SendspinClient` does the handshake and the time sync; this script consumes the audio
(counts it, and hashes it for a summary), answers `server/command` volume/mute with
`client/state`, says `client/goodbye` (shutdown) when told to stop, and writes what it
saw. It also takes the Sendspin/conformance client adapter flags
(docs/adapter-contract.md): `--initiator-role client` finds the server in
`--registry` under `--server-name`; `--initiator-role server` listens on
127.0.0.1:`--port` `--path` (aiosendspin's `ClientListener`, no mDNS) for the server
to dial in. Scenarios: client-initiated-pcm and server-initiated-pcm; any other
writes an error summary and exits 1, as conformance's placeholder does.

Noise (10.2.1): the client_id is the X25519 public key (base64url), so `--client-id`
cannot be honoured: it is ignored, and the summary says so (`client_id` is the key's,
`client_id_requested` and a note name the ignored value); the ready file carries the
real `client_id`. `--identity FILE` keeps the key across runs (the base64url private
key on one line, the format of the probe's and the reference server's `--identity`;
created, mode 0600, if missing); without it a fresh key per run. Unpaired access is
enabled (the Sentinel PSK): a server must admit an unpaired client.

Connection loss: neither version reconnects. Its reader loop ends, it disconnects and
calls the disconnect listeners, and that is all. By default this script does the same
and its run ends with the session. `--reconnect` (off by default, so the library's own
behaviour is what is tested) connects again with a 0.1 s backoff doubling to 3.2 s, or
in listen mode waits for the server's next dial.

Exit status: 0 = stopped (SIGTERM, SIGINT, `--duration`) while in a session, or the
session ended with a clean close from the server (1000/1001); 1 = anything else
(never connected, lost the session, `--timeout-seconds` reached, unsupported
scenario, an aiosendspin version other than the two pinned), with one line on
stderr; 2 = bad arguments (also `--identity`/`--suite` under 6.1.1, or an unreadable
`--identity` file). stdout: the summary as one JSON line.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, ClassVar

LEGACY, NOISE = "6.1.1", "10.2.1"
PROFILE_OF = {LEGACY: "legacy", NOISE: "noise"}   # the pinned versions, and the wire revision each speaks
SUITES = {"chacha": "25519_ChaChaPoly_SHA256", "aesgcm": "25519_AESGCM_SHA256"}
DEFAULT_CLIENT_ID = "aiosendspin-client"
SCENARIOS = ("client-initiated-pcm", "server-initiated-pcm")
CLEAN_CLOSES = (1000, 1001)
BACKOFF_S = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2)   # the probe's: first retry at 100 ms, doubling, then every 3.2 s
CONNECT_TIMEOUT_S = 10.0                     # 6.1.1's SendspinClient.connect has none of its own
GOODBYE_WAIT_S = 3.0
ADMISSION_POLL_S = 0.02
FORMATS = ((2, 48_000), (1, 48_000), (2, 44_100), (1, 8_000))   # (channels, rate), all 16-bit PCM


# --- arguments ----------------------------------------------------------------------------------


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a TCP port 1-65535 (ClientListener cannot report "
                                         f"the port 0 picked), got {text!r}")
    return int(text)


def _ws_url(text: str) -> str:
    if not text.startswith("ws://") or len(text) <= len("ws://"):
        raise argparse.ArgumentTypeError(f"expected a ws:// URL, got {text!r}")
    return text


def _suite(text: str) -> str:
    """chacha, aesgcm, or the suite's full name (as the probe's --suite takes it)."""
    if text in SUITES.values():
        return text
    if text not in SUITES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join([*SUITES, *SUITES.values()])}, got {text!r}")
    return SUITES[text]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aiosendspin_client.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", type=_ws_url, help="the server's WebSocket URL (else --registry or listen mode)")
    p.add_argument("--client-id", default=None,
                   help=f"client/hello client_id (legacy; default {DEFAULT_CLIENT_ID}); "
                        "noise: ignored, the client_id is the identity's public key")
    p.add_argument("--client-name", "--name", dest="client_name", default=None,
                   help="client/hello name (default: the --client-id, else aiosendspin-client)")
    p.add_argument("--duration", type=_positive, default=None, help="stop after S seconds (default: until a signal)")
    p.add_argument("--reconnect", action="store_true",
                   help="after a lost session, connect again (listen mode: wait for the next dial); "
                        "aiosendspin does not do this itself")
    p.add_argument("--log-level", default="WARNING", help="aiosendspin's logging level, on stderr")
    n = p.add_argument_group("noise (aiosendspin 10.2.1 only)")
    n.add_argument("--identity", type=Path, default=None, metavar="FILE",
                   help="the X25519 private key (base64url, one line), created if missing (default: a fresh key)")
    n.add_argument("--suite", type=_suite, default=None,
                   help="the Noise suite: chacha (default) or aesgcm")
    c = p.add_argument_group("Sendspin/conformance adapter flags (docs/adapter-contract.md)")
    c.add_argument("--summary", type=Path, default=None, help="write the summary JSON here")
    c.add_argument("--ready", type=Path, default=None,
                   help="write a ready file: at start (registry), once listening (listen) or connected (--url)")
    c.add_argument("--registry", type=Path, default=None, help="discovery file {name: {url}}")
    c.add_argument("--scenario-id", default="client-initiated-pcm")
    c.add_argument("--initiator-role", choices=("client", "server"), default="client")
    c.add_argument("--preferred-codec", default="pcm")
    c.add_argument("--server-name", default="Sendspin Conformance Server", help="registry key of the server")
    c.add_argument("--server-id", default="conformance-server")
    c.add_argument("--timeout-seconds", type=_positive, default=None,
                   help="deadline for the whole run; reaching it is a failure (default: none with --url, else 30)")
    c.add_argument("--port", type=_port, default=8928, help="listen mode: the port to listen on")
    c.add_argument("--path", default="/sendspin", help="listen mode: the WebSocket path")
    # Other scenarios' extras: accepted so that a strict parse does not fail, not used.
    for extra in ("title", "artist", "album-artist", "album", "artwork-url", "year", "track", "repeat",
                  "shuffle", "track-progress", "track-duration", "playback-speed"):
        c.add_argument(f"--metadata-{extra}", help=argparse.SUPPRESS)
    for extra in ("controller-command", "artwork-format", "artwork-width", "artwork-height"):
        c.add_argument(f"--{extra}", help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    args.client_id_given = args.client_id is not None
    args.client_id = args.client_id or DEFAULT_CLIENT_ID
    args.client_name = args.client_name or args.client_id
    args.listen = args.url is None and args.initiator_role == "server"
    if args.url is None and not args.listen and args.registry is None:
        p.error("where is the server? give --url, or --registry (with --server-name), "
                "or --initiator-role server to listen")
    if not args.path.startswith("/"):
        p.error(f"--path must start with '/', got {args.path!r}")
    if args.timeout_seconds is None and args.url is None:
        args.timeout_seconds = 30.0   # conformance adapters' default
    return args


# --- the installed aiosendspin ------------------------------------------------------------------


@dataclasses.dataclass
class Pinned:
    """The installed aiosendspin and what it makes of the arguments."""

    version: str            # "" when missing
    client_id: str          # the one on the wire (noise: the identity's peer id)
    suite: str | None = None
    identity: Any = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def profile(self) -> str | None:
        return PROFILE_OF.get(self.version)

    @property
    def noise(self) -> bool:
        return self.version == NOISE


def installed_version() -> tuple[str, str | None]:
    """(version or "", why it cannot be used or None)."""
    try:
        installed = importlib.metadata.version("aiosendspin")
    except importlib.metadata.PackageNotFoundError:
        return "", f"aiosendspin is not installed (pip install aiosendspin=={LEGACY}, or aiosendspin=={NOISE})"
    if installed not in PROFILE_OF:
        return installed, (f"aiosendspin {installed} is installed; this adapter is written for "
                           f"{LEGACY} (legacy) and {NOISE} (noise)")
    return installed, None


def load_identity(path: Path | None) -> Any:
    """The key in `path` (base64url of 32 bytes), or a fresh one, written there (mode 0600)
    when the file does not exist. OSError/ValueError for a bad file."""
    from aiosendspin.noise.keys import Identity, b64url_decode

    if path is None:
        return Identity.generate()
    if not path.exists():
        identity = Identity.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(identity.private_b64u + "\n")
        return identity
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        return Identity.from_private_bytes(b64url_decode(text))
    except ValueError as exc:   # binascii.Error is a ValueError too
        raise ValueError(f"not a base64url X25519 private key ({exc})") from None


def pin(args: argparse.Namespace, version: str) -> Pinned:
    """What the installed version makes of the arguments; exits 2 on what it cannot take."""
    if version != NOISE:
        for option in ("identity", "suite"):
            if getattr(args, option) is not None:
                parser().error(f"--{option} is for the noise profile (aiosendspin {NOISE}); "
                               f"aiosendspin {version or 'none'} is installed")
        return Pinned(version, args.client_id)
    try:
        identity = load_identity(args.identity)
    except (OSError, ValueError) as exc:
        parser().error(f"--identity {args.identity}: {exc}")
    pinned = Pinned(version, identity.peer_id, suite=args.suite or SUITES["chacha"], identity=identity)
    if args.client_id_given and args.client_id != pinned.client_id:
        pinned.notes.append(f"--client-id {args.client_id!r} ignored: in noise the client_id is the identity's "
                            f"public key ({pinned.client_id}); keep one with --identity FILE")
    return pinned


# --- what the client saw ------------------------------------------------------------------------


def canonical_float32(pcm: bytes, bit_depth: int) -> bytes:
    """Sendspin/conformance's canonical PCM: each little-endian sample as float32 of
    int / 2**(bits-1), so that hashes compare across implementations."""
    if bit_depth == 24:
        ints = [int.from_bytes(pcm[i:i + 3], "little", signed=True) for i in range(0, len(pcm) - 2, 3)]
    else:
        ints = array.array({16: "h", 32: "i"}[bit_depth], pcm[:len(pcm) - len(pcm) % (bit_depth // 8)])
        if sys.byteorder == "big":
            ints.byteswap()
    scale = float(1 << (bit_depth - 1))
    floats = array.array("f", (s / scale for s in ints))
    if sys.byteorder == "big":
        floats.byteswap()
    return floats.tobytes()


@dataclasses.dataclass
class Seen:
    """Everything the summary reports."""

    hash_pcm: bool
    sessions: int = 0
    dials: int = 0
    audio_chunks: int = 0
    audio_bytes: int = 0
    samples: int = 0
    first_frame: bytes | None = None
    send_ahead: list[int] = dataclasses.field(default_factory=list)   # noise: [min, max] µs
    commands: int = 0
    peer_hello: dict[str, Any] | None = None
    server: dict[str, Any] | None = None
    stream: dict[str, Any] | None = None
    close_code: int | None = None
    time_synchronized: bool = False
    encoded: Any = dataclasses.field(default_factory=hashlib.sha256)
    pcm: Any = dataclasses.field(default_factory=hashlib.sha256)

    def on_hello(self, payload: Any) -> None:
        """6.1.1: its server/hello listener."""
        self.sessions += 1
        self.peer_hello = {"type": "server/hello", "payload": payload.to_dict()}
        self.server = {"server_id": payload.server_id, "name": payload.name, "version": payload.version,
                       "connection_reason": getattr(payload.connection_reason, "value", payload.connection_reason)}

    def on_admitted(self, info: Any) -> None:
        """10.2.1 has no server/hello listener: its `server_info` once admitted (the server_id
        comes from the handshake, not the hello), as conformance's adapter reports it."""
        self.sessions += 1
        if info is None:   # closed again before we looked: a session, with nothing to report of it
            return
        codecs = None if info.source_codecs is None else sorted(c.value for c in info.source_codecs)
        self.server = {"server_id": info.server_id, "name": info.name, "languages": list(info.languages),
                       "source_codecs": codecs}
        self.peer_hello = {"type": "server/hello", "payload": dict(self.server)}

    def on_stream_start(self, message: Any) -> None:
        player = message.payload.player
        if player is not None:
            self.stream = {"codec": player.codec.value, "sample_rate": player.sample_rate,
                           "channels": player.channels, "bit_depth": player.bit_depth,
                           "codec_header": player.codec_header}

    def on_audio(self, _ts_us: int, payload: bytes, fmt: Any, send_ahead: int | None = None) -> None:
        """Both versions' audio listener: 10.2.1 adds the chunk's `send_ahead` (µs)."""
        self.audio_chunks += 1
        self.audio_bytes += len(payload)
        bits = fmt.pcm_format.bit_depth
        if self.first_frame is None:
            self.first_frame = payload[:bits // 8 * fmt.pcm_format.channels]
        self.samples += len(payload) // (bits // 8)
        if send_ahead is not None:
            self.send_ahead = [min(self.send_ahead[0], send_ahead), max(self.send_ahead[1], send_ahead)] \
                if self.send_ahead else [send_ahead, send_ahead]
        self.encoded.update(payload)
        if self.hash_pcm and fmt.codec.value == "pcm":   # pure Python: only when a summary wants it
            self.pcm.update(canonical_float32(payload, bits))


# --- aiosendspin ------------------------------------------------------------------------------------


def recording_websocket_class() -> type:
    """An aiohttp client WebSocket that remembers the last instance: SendspinClient drops
    its reference in disconnect(), and we still want the close code the server sent."""
    from aiohttp import ClientWebSocketResponse

    class Recording(ClientWebSocketResponse):
        last: ClassVar[Recording | None] = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            Recording.last = self

    return Recording


class Adapter:
    """One SendspinClient, its listeners, and the run around it."""

    def __init__(self, args: argparse.Namespace, pinned: Pinned, stop: asyncio.Event) -> None:
        from aiosendspin.models.player import ClientHelloPlayerSupport, SupportedAudioFormat
        from aiosendspin.models.types import AudioCodec, PlayerCommand

        self.args = args
        self.pinned = pinned
        self.stop = stop
        self.seen = Seen(hash_pcm=args.summary is not None)
        self.session_over = asyncio.Event()
        self.volume, self.muted = 100, False
        self._tasks: set[asyncio.Task[None]] = set()
        self.http = None
        self.listener: Any = None
        if not args.listen:
            from aiohttp import ClientSession
            self.ws_class = recording_websocket_class()
            self.http = ClientSession(ws_response_class=self.ws_class)
        formats = [SupportedAudioFormat(codec=AudioCodec.PCM, channels=ch, sample_rate=rate, bit_depth=16)
                   for ch, rate in FORMATS]
        commands = [PlayerCommand.VOLUME, PlayerCommand.MUTE]
        if pinned.noise:
            self.client = self._noise_client(ClientHelloPlayerSupport(supported_formats=formats,
                                                                      buffer_capacity=1_000_000), commands)
        else:
            self.client = self._legacy_client(ClientHelloPlayerSupport(
                supported_formats=formats, buffer_capacity=1_000_000, supported_commands=commands))
        c = self.client
        c.add_stream_start_listener(self.seen.on_stream_start)
        c.add_audio_chunk_listener(self.seen.on_audio)
        c.add_server_command_listener(self._on_command)
        c.add_disconnect_listener(self.session_over.set)

    def _legacy_client(self, player_support: Any) -> Any:
        from aiosendspin.client import SendspinClient
        from aiosendspin.models.types import Roles

        client = SendspinClient(client_id=self.pinned.client_id, client_name=self.args.client_name,
                                roles=[Roles.PLAYER], player_support=player_support, session=self.http,
                                initial_volume=self.volume, initial_muted=self.muted)
        client.add_server_hello_listener(self.seen.on_hello)
        return client

    def _noise_client(self, player_support: Any, commands: list[Any]) -> Any:
        """10.2.1: player commands go in client/state (`state_supported_commands`); the
        library ignores a server/command it has not reported there."""
        from aiosendspin.client import SendspinClient
        from aiosendspin.models.types import Roles
        from aiosendspin.noise.session import NoiseCipherSuite
        from aiosendspin.noise.trust_store import InMemoryClientPairingStore

        return SendspinClient(self.pinned.identity, self.args.client_name, [Roles.PLAYER],
                              pairing_store=InMemoryClientPairingStore(), player_support=player_support,
                              session=self.http, initial_volume=self.volume, initial_muted=self.muted,
                              state_supported_commands=commands, cipher_suite=NoiseCipherSuite(self.pinned.suite))

    async def prepare(self) -> None:
        if self.pinned.noise:   # the harness's servers admit unpaired clients on the Sentinel PSK
            await self.client.set_unpaired_access(enabled=True)

    # server/command: the library applies only the output delay; a player reports volume and mute itself
    def _on_command(self, payload: Any) -> None:
        command = payload.player
        if command is None:
            return
        self.seen.commands += 1
        if command.command.value == "volume" and command.volume is not None:
            self.volume = command.volume
        elif command.command.value == "mute" and command.mute is not None:
            self.muted = command.mute
        else:
            return
        task = asyncio.get_running_loop().create_task(self._report_state())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report_state(self) -> None:
        # 10.2.1 sends `available: false` itself while its clock is not synchronized
        state: dict[str, Any] = {"available": True} if self.pinned.noise else {"state": _synchronized()}
        with contextlib.suppress(RuntimeError, ConnectionError):   # the session may be gone meanwhile
            await self.client.send_player_state(volume=self.volume, muted=self.muted, **state)

    # --- where the server is

    async def server_url(self) -> str | None:
        """--url, or the conformance registry's entry for --server-name (polled every
        100 ms until stopped)."""
        if self.args.url is not None:
            return self.args.url
        while not self.stop.is_set():
            with contextlib.suppress(OSError, ValueError):
                entry = json.loads(self.args.registry.read_text()).get(self.args.server_name)
                if isinstance(entry, dict) and isinstance(entry.get("url"), str):
                    return entry["url"]
            await self._until_stop_or(asyncio.Event(), 0.1)
        return None

    async def connect(self, url: str) -> str:
        """One attempt; '' or why it failed."""
        self.session_over.clear()
        try:
            await asyncio.wait_for(self.client.connect(url), CONNECT_TIMEOUT_S)
        except Exception as exc:   # OSError, TimeoutError, aiohttp's WSServerHandshakeError, ...
            with contextlib.suppress(Exception):
                await self.client.disconnect()
            return f"{url}: {type(exc).__name__}: {exc}"
        if self.pinned.noise:   # connect() returns once admitted
            self.seen.on_admitted(self.client.server_info)
        return ""

    def record_close(self) -> None:
        ws = self.ws_class.last if self.http is not None else None
        if ws is not None and ws.close_code is not None:
            self.seen.close_code = int(ws.close_code)

    async def _until_stop_or(self, event: asyncio.Event, timeout: float | None = None) -> None:
        waits = [asyncio.ensure_future(self.stop.wait()), asyncio.ensure_future(event.wait())]
        _, pending = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def run_dialling(self) -> str:
        """Client-initiated: connect, stay; with --reconnect, connect again after a loss."""
        if self.args.url is None and self.args.ready is not None:
            write_json(self.args.ready, ready_payload(self.args, self.pinned))   # conformance: ready before the lookup
        url = await self.server_url()
        if url is None:
            return f"no {self.args.server_name!r} in the registry {self.args.registry}"
        failures = 0   # in a row; the backoff starts again after a session
        while True:
            error = await self.connect(url)
            if error:
                failures += 1
            else:
                if self.args.url is not None and self.args.ready is not None and self.seen.sessions == 1:
                    write_json(self.args.ready, {**ready_payload(self.args, self.pinned), "url": url,
                                                 "pid": os.getpid()})
                failures = 0
                await self._until_stop_or(self.session_over)
                self.record_close()
            if self.stop.is_set() or not self.args.reconnect:
                return error
            await self._until_stop_or(asyncio.Event(), BACKOFF_S[min(max(failures - 1, 0), len(BACKOFF_S) - 1)])
            if self.stop.is_set():
                return error

    async def _serve(self, ws: Any) -> None:
        """One dialled-in connection, for as long as its session lasts."""
        if not self.pinned.noise:
            await self.client.attach_websocket(ws)   # raises if already in a session: the listener closes ws 1011
            await self.session_over.wait()
            return
        # 10.2.1's attach_websocket returns when the session ends (or its bring-up failed), and
        # no listener tells when it was admitted: watch `connected` meanwhile.
        attach = asyncio.ensure_future(self.client.attach_websocket(ws))
        while not attach.done() and not self.client.connected:
            await asyncio.sleep(ADMISSION_POLL_S)
        if self.client.connected:
            self.seen.on_admitted(self.client.server_info)
        await attach

    async def run_listening(self) -> str:
        """Server-initiated: ClientListener on 127.0.0.1:--port --path, no mDNS; the server dials."""
        from aiosendspin.client import ClientListener

        args = self.args
        url = f"ws://127.0.0.1:{args.port}{args.path}"

        async def on_connection(ws: Any) -> None:
            self.session_over.clear()
            self.seen.dials += 1
            await self._serve(ws)
            if ws.close_code is not None:
                self.seen.close_code = int(ws.close_code)
            # 10.2.1 lets a second dial displace the session (goodbye another_server): the run goes on with it
            if not args.reconnect and not self.client.connected:
                self.stop.set()

        self.listener = ClientListener(client_id=self.pinned.client_id, on_connection=on_connection,
                                       port=args.port, path=args.path, host="127.0.0.1", advertise_mdns=False,
                                       client_name=args.client_name)
        try:
            await self.listener.start()
        except OSError as exc:
            return f"cannot listen on 127.0.0.1:{args.port}: {exc}"
        if args.registry is not None:
            register(args.registry, args.client_name, url)
        if args.ready is not None:
            write_json(args.ready, {**ready_payload(args, self.pinned), "url": url, "pid": os.getpid()})
        await self.stop.wait()
        if self.seen.sessions:
            return ""
        return f"a server dialled {url} {self.seen.dials} time(s), no session came of it" if self.seen.dials \
            else f"no server dialled {url}"

    async def goodbye(self) -> None:
        """Stopping while in a session: client/goodbye (shutdown), then the socket released.
        6.1.1: the goodbye alone, then the server's close awaited (≤ 3 s) before disconnect().
        10.2.1 has no public goodbye without a close: disconnect() sends it and closes at once."""
        if self.client.connected and not self.pinned.noise:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.send_goodbye(_shutdown()), GOODBYE_WAIT_S)
                await asyncio.wait_for(self.session_over.wait(), GOODBYE_WAIT_S)
        await asyncio.wait_for(self.client.disconnect(), GOODBYE_WAIT_S)

    async def close(self) -> None:
        if self.pinned.noise:
            # 10.2.1's disconnect() cancels its reader mid-receive, so aiohttp marks the socket 1006
            # and closes without the server's close frame: that code says nothing about the server
            self.record_close()
            await self.goodbye()
        else:
            await self.goodbye()
            self.record_close()
        if self.listener is not None:
            await self.listener.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.http is not None:
            await self.http.close()


def _synchronized() -> Any:
    from aiosendspin.models.types import PlayerStateType  # 6.1.1 only

    return PlayerStateType.SYNCHRONIZED


def _shutdown() -> Any:
    from aiosendspin.models.types import GoodbyeReason

    return GoodbyeReason.SHUTDOWN


# --- files ------------------------------------------------------------------------------------------


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically, so a polling reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def register(registry: Path, name: str, url: str) -> None:
    """Conformance's discovery handoff: {name: {"url": url}} merged into the file."""
    try:
        entries = json.loads(registry.read_text())
    except (OSError, ValueError):
        entries = {}
    entries[name] = {"url": url}
    write_json(registry, entries)


def ready_payload(args: argparse.Namespace, pinned: Pinned) -> dict[str, Any]:
    """Conformance's ready fields, plus the client_id on the wire and the profile (a caller
    cannot know a noise client's id before it exists)."""
    return {"status": "ready", "implementation": "aiosendspin", "scenario_id": args.scenario_id,
            "initiator_role": args.initiator_role, "client_id": pinned.client_id, "profile": pinned.profile}


def summary(args: argparse.Namespace, pinned: Pinned, seen: Seen, reason: str) -> dict[str, Any]:
    """Conformance's client summary fields, plus what the gate wants (profile, sessions,
    close code, ...)."""
    return {
        "status": "error" if reason else "ok", "reason": reason or None,
        "implementation": "aiosendspin", "implementation_version": pinned.version or None, "role": "client",
        "profile": pinned.profile, "suite": pinned.suite,
        "client_name": args.client_name, "client_id": pinned.client_id,
        "client_id_requested": args.client_id if args.client_id_given and args.client_id != pinned.client_id
        else None,   # noise: a --client-id that could not be honoured
        "scenario_id": args.scenario_id,
        "initiator_role": args.initiator_role, "preferred_codec": args.preferred_codec,
        "peer_hello": seen.peer_hello, "server": seen.server, "stream": seen.stream,
        "audio": {"audio_chunk_count": seen.audio_chunks, "audio_bytes": seen.audio_bytes,
                  "received_encoded_sha256": seen.encoded.hexdigest(),
                  "received_pcm_sha256": seen.pcm.hexdigest() if seen.hash_pcm else None,
                  "received_sample_count": seen.samples,
                  "first_frame_hex": seen.first_frame.hex() if seen.first_frame is not None else None,
                  "send_ahead_us": seen.send_ahead or None},
        "sessions": seen.sessions, "server_commands": seen.commands, "close_code": seen.close_code,
        "time_synchronized": seen.time_synchronized, "notes": pinned.notes,
    }


# --- the run ----------------------------------------------------------------------------------------


def verdict(adapter: Adapter, error: str, timed_out: bool) -> str:
    """'' for a healthy run, else the one-line reason. Judged before the goodbye."""
    seen = adapter.seen
    if timed_out:
        return f"--timeout-seconds {adapter.args.timeout_seconds:g} reached before the run ended"
    if adapter.client.connected:
        return ""
    if seen.sessions == 0:
        return f"no Sendspin session was established ({error or 'no server'})"
    if seen.close_code in CLEAN_CLOSES:
        return ""
    return (f"session ended before the run did (close code {seen.close_code}); aiosendspin "
            f"{adapter.pinned.version} does not reconnect{'' if adapter.args.reconnect else ' (--reconnect retries)'}")


def _stop_event(duration: float | None) -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    return stop


def report(args: argparse.Namespace, pinned: Pinned, seen: Seen, reason: str) -> None:
    """The summary: to --summary (indented) and stdout (one line)."""
    data = summary(args, pinned, seen, reason)
    if args.summary is not None:
        write_json(args.summary, data)
    print(json.dumps(data, sort_keys=True), flush=True)


async def run(args: argparse.Namespace, pinned: Pinned) -> str:
    stop = _stop_event(args.duration)
    adapter = Adapter(args, pinned, stop)
    await adapter.prepare()
    work = asyncio.ensure_future(adapter.run_listening() if args.listen else adapter.run_dialling())
    timed_out = False
    try:
        error = await asyncio.wait_for(asyncio.shield(work), args.timeout_seconds)
    except TimeoutError:
        timed_out, error = True, ""
        stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(work, GOODBYE_WAIT_S * 3)
    adapter.seen.time_synchronized = adapter.client.is_time_synchronized()
    reason = verdict(adapter, error, timed_out)
    await adapter.close()
    report(args, pinned, adapter.seen, reason)
    return reason


def fail_early(args: argparse.Namespace, pinned: Pinned, reason: str) -> int:
    """Before any connection (version, scenario): an error summary, as conformance's placeholder."""
    if args.ready is not None:
        write_json(args.ready, ready_payload(args, pinned))
    report(args, pinned, Seen(hash_pcm=False), reason)
    print(f"aiosendspin_client: {reason}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)   # exits 2 on bad arguments
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.WARNING), stream=sys.stderr)
    version, problem = installed_version()
    if problem is not None:
        return fail_early(args, Pinned(version, args.client_id), problem)
    pinned = pin(args, version)   # exits 2 on what this version cannot take
    if args.scenario_id not in SCENARIOS:
        problem = f"scenario {args.scenario_id!r} is not supported by this adapter (only {', '.join(SCENARIOS)})"
    elif args.preferred_codec != "pcm":
        problem = f"codec {args.preferred_codec!r} is not offered by this adapter (PCM only)"
    if problem is not None:
        return fail_early(args, pinned, problem)
    reason = asyncio.run(run(args, pinned))
    if reason:
        print(f"aiosendspin_client: {reason}", file=sys.stderr)
    return 1 if reason else 0


if __name__ == "__main__":
    raise SystemExit(main())
